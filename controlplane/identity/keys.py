"""What a node makes for itself: a key that never leaves it and the CSR the
control plane signs, and the name it verifies the control plane by. Shared by
the agent (which may import this and :mod:`proof`, not the CA) and the CA."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

#: The name agents verify the control plane's agent port by: a DNS name with
#: dots, which no service or node (DNS labels) can take.
CONTROL_PLANE_NAME = "control-plane.flotilla.internal"


def new_key_and_csr(identity: str = "") -> tuple[str, str]:
    """(key PEM, CSR PEM) for ``identity`` (or for whatever the CA decides,
    when empty): what an agent makes on its node."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if identity:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]),
            critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode(),
            csr.public_bytes(serialization.Encoding.PEM).decode())
