"""Identity in the mesh: the certificate authority and its SPIFFE IDs.

- :mod:`keys`: a node's key and CSR, and the control plane's name (shared
  with the agent);
- :mod:`proof`: join-token proofs that do not reveal the token (both sides);
- :mod:`ca`: the CA, its roots and leaves; :mod:`issuer`: who may get which
  certificate, records and rotation; :mod:`tokens`: the join token.
"""
