"""Gateway key pairs, their PEM forms and the certificate signing request (RFC 2986).

The private key is generated on the host and never leaves it; only the CSR is sent. ECDSA P-256 is
the default: small, fast, and accepted by every TLS 1.2/1.3 stack the control plane may run.
"""

from __future__ import annotations

import re
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from gateway.identity.errors import IdentityError

KeyAlgorithm = Literal["ec-p256", "ec-p384", "rsa-3072"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

DEFAULT_KEY_ALGORITHM: KeyAlgorithm = "ec-p256"

# A DNS-label-like id (RFC 1035 section 2.3.1, lower case): safe in a CN, in a URN and in a path.
_GATEWAY_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")

# URN namespace used in the certificate's SAN URI; the control plane matches on it.
GATEWAY_URN_PREFIX = "urn:empowerid:gateway:"


def validate_gateway_id(gateway_id: str) -> str:
    """Return ``gateway_id`` if it is 1-63 lower-case letters, digits and inner hyphens."""
    if not _GATEWAY_ID.fullmatch(gateway_id):
        raise IdentityError(
            "invalid_gateway_id",
            "the gateway id must be 1-63 characters of a-z, 0-9 and '-' "
            "(no leading or trailing '-')",
        )
    return gateway_id


def gateway_uri(gateway_id: str) -> str:
    """The SAN URI that names the gateway in its certificate."""
    return GATEWAY_URN_PREFIX + validate_gateway_id(gateway_id)


def generate_private_key(algorithm: KeyAlgorithm = DEFAULT_KEY_ALGORITHM) -> PrivateKey:
    """A fresh private key of the given algorithm."""
    if algorithm == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=3072)


def build_csr(private_key: PrivateKey, gateway_id: str) -> bytes:
    """A PEM CSR naming the gateway as subject CN and as SAN URI, signed with ``private_key``."""
    uri = gateway_uri(gateway_id)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway_id)]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
        .sign(private_key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def serialize_private_key(private_key: PrivateKey, passphrase: bytes | None) -> bytes:
    """PKCS#8 PEM; encrypted with the library's best available scheme when a passphrase is given."""
    encryption: serialization.KeySerializationEncryption
    if passphrase:
        encryption = serialization.BestAvailableEncryption(passphrase)
    else:
        encryption = serialization.NoEncryption()
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def load_private_key(data: bytes, passphrase: bytes | None, *, source: str) -> PrivateKey:
    """Parse a PEM private key; every failure becomes an :class:`IdentityError` naming ``source``.

    The passphrase is never part of a message: the library's own exception text is not reused.
    """
    encrypted = b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data
    if encrypted and not passphrase:
        raise IdentityError(
            "passphrase_required", f"{source} is encrypted but no passphrase was supplied"
        )
    if not encrypted and passphrase:
        # Fail closed: the operator expects an encrypted key; a plain one means tampering or a
        # mix-up of state directories.
        raise IdentityError(
            "passphrase_unexpected", f"{source} is not encrypted although a passphrase was supplied"
        )
    try:
        key = serialization.load_pem_private_key(data, password=passphrase or None)
    except ValueError:
        if encrypted:
            raise IdentityError(
                "wrong_passphrase",
                f"{source} could not be decrypted: the passphrase is wrong or the file is damaged",
            ) from None
        raise IdentityError("corrupt_file", f"{source} is not a valid PEM private key") from None
    except (TypeError, UnsupportedAlgorithm):
        raise IdentityError("corrupt_file", f"{source} is not a valid PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise IdentityError("corrupt_file", f"{source} holds an unsupported key type")
    return key


def public_key_der(key: PrivateKey | x509.Certificate) -> bytes:
    """The DER SubjectPublicKeyInfo of a private key or of a certificate, for exact comparison."""
    public = key.public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
