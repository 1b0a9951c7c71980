"""Identity in the mesh: the certificate authority and its SPIFFE IDs."""
