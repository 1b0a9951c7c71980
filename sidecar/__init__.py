"""What runs on every Docker host: the node agent, the runtime drivers
(docker, process), health checks, the Envoy bootstrap and lifecycle, and the
local SDS server.

The agent arrives with the scheduling issue; this package holds its place in
the layout so the layering contract covers it from the start.
"""
