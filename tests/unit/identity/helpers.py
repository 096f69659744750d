"""Certificate builders for the identity unit tests (real keys, real signatures)."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.devkit.controlplane import DevCA
from gateway.identity.keys import PrivateKey, build_csr, gateway_uri

NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


def issue_for(
    ca: DevCA,
    key: PrivateKey,
    gateway_id: str = "gw-1",
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> x509.Certificate:
    """A proper client certificate for ``key`` from ``ca`` (through a real CSR)."""
    csr = x509.load_pem_x509_csr(build_csr(key, gateway_id))
    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    return ca.issue_client(
        csr, not_before=start, not_after=not_after or start + dt.timedelta(hours=3)
    )


def custom_leaf(
    ca: DevCA,
    key: PrivateKey,
    *,
    cn: str = "gw-1",
    uri: str | None = None,
    usage: x509.ObjectIdentifier | None = ExtendedKeyUsageOID.CLIENT_AUTH,
) -> x509.Certificate:
    """A leaf with chosen subject, SAN URI and EKU, to exercise each validation rule."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(uri if uri is not None else gateway_uri(cn))]
            ),
            critical=False,
        )
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key."""
    return ec.generate_private_key(ec.SECP256R1())
