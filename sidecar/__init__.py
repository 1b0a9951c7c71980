"""What runs on every Docker host: the node agent, the runtime drivers
(docker, process), health checks, the Envoy bootstrap and lifecycle, and the
local SDS server.

It shares with the control plane only the model (proxy metadata, durations),
a node's key and CSR and the join proofs (``controlplane.identity.keys`` and
``.proof``), the generated API and the pure xDS stream SDS speaks; the
import-linter contracts in pyproject.toml keep its layers and that boundary.
"""
