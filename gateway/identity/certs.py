"""Certificate parsing, validation against the pinned CA, renewal timing and expiry alerts.

A returned client certificate is accepted only if all of these hold (checked before anything is
written to disk):

* its public key is exactly the one of the key pair we generated (no substituted key);
* the subject CN is the gateway id and a SAN URI names the gateway (``urn:empowerid:gateway:ID``);
* the extended key usage includes ``clientAuth`` (RFC 5280 section 4.2.1.12);
* it is within its validity period at ``now``;
* it chains to the pinned CA under the RFC 5280 path-validation rules implemented by
  ``cryptography.x509.verification``.

Renewal starts at two thirds of the lifetime; an alert is due once ``alert_fraction`` of the
lifetime has passed without a successful renewal.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from gateway.identity.errors import IdentityError
from gateway.identity.keys import PrivateKey, gateway_uri, public_key_der

# A client chain is leaf + a few intermediates; anything longer is a malformed or hostile answer.
MAX_CHAIN_CERTIFICATES = 8
MAX_PEM_BYTES = 64 * 1024

RENEWAL_FRACTION = 2 / 3
DEFAULT_ALERT_FRACTION = 0.9

_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"

HealthState = Literal["not_yet_valid", "valid", "renewal_due", "alert", "expired"]
Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    """The current time, timezone-aware: the default clock of the identity flows."""
    return dt.datetime.now(dt.UTC)


def answer_pem(text: str, *, source: str) -> bytes:
    """The bytes of a PEM document a control-plane answer carried as a JSON string.

    PEM is ASCII (RFC 7468 section 2); JSON allows any character, so a broken or hostile
    answer can hold others. They are ``corrupt_file`` like any other damage, never an exception
    of another type that would end the renewal loop or registration without a report.
    """
    try:
        return text.encode("ascii")
    except UnicodeEncodeError:
        raise IdentityError("corrupt_file", f"{source} is not ASCII PEM") from None


def parse_certificate_chain(pem: bytes, *, source: str) -> list[x509.Certificate]:
    """Parse 1..8 PEM certificates (leaf first); anything else is ``corrupt_file``."""
    if len(pem) > MAX_PEM_BYTES:
        raise IdentityError("corrupt_file", f"{source} is larger than {MAX_PEM_BYTES} bytes")
    if pem.count(_PEM_BEGIN) > MAX_CHAIN_CERTIFICATES:
        raise IdentityError(
            "corrupt_file", f"{source} holds more than {MAX_CHAIN_CERTIFICATES} certificates"
        )
    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise IdentityError(
            "corrupt_file", f"{source} is not a valid PEM certificate chain"
        ) from None
    # The loader ignores text after the last END line; a cut-off certificate would vanish
    # silently, so the number of BEGIN markers must match what was parsed.
    if len(chain) != pem.count(_PEM_BEGIN):
        raise IdentityError("corrupt_file", f"{source} holds a truncated certificate")
    return chain


def parse_ca_certificate(pem: bytes, *, source: str) -> x509.Certificate:
    """Parse exactly one CA certificate (basicConstraints cA=TRUE)."""
    chain = parse_certificate_chain(pem, source=source)
    if len(chain) != 1:
        raise IdentityError("corrupt_file", f"{source} must hold exactly one CA certificate")
    ca = chain[0]
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise IdentityError("certificate_invalid", f"{source} is not a CA certificate")
    return ca


def common_name(cert: x509.Certificate) -> str | None:
    """The single subject CN, or None if there is not exactly one."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        return None
    value = names[0].value
    return value if isinstance(value, str) else None


def san_uris(cert: x509.Certificate) -> list[str]:
    """The certificate's SAN URIs (none without the extension)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def validate_client_certificate(
    chain: list[x509.Certificate],
    *,
    private_key: PrivateKey,
    ca: x509.Certificate,
    gateway_id: str,
    now: dt.datetime,
) -> None:
    """Raise :class:`IdentityError` unless ``chain`` is a usable client certificate for us."""
    if not chain:
        raise IdentityError("certificate_invalid", "the certificate chain is empty")
    leaf = chain[0]
    if public_key_der(leaf) != public_key_der(private_key):
        raise IdentityError(
            "key_certificate_mismatch", "the certificate does not belong to the gateway's key"
        )
    if common_name(leaf) != gateway_id:
        raise IdentityError(
            "certificate_invalid", "the certificate subject CN is not the gateway id"
        )
    if gateway_uri(gateway_id) not in san_uris(leaf):
        raise IdentityError(
            "certificate_invalid", "the certificate has no SAN URI naming the gateway"
        )
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is None or ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise IdentityError(
            "certificate_invalid", "the certificate is not valid for TLS client authentication"
        )
    if now < leaf.not_valid_before_utc:
        raise not_yet_valid(leaf.not_valid_before_utc, now)
    if not now < leaf.not_valid_after_utc:
        raise IdentityError(
            "client_certificate_expired",
            f"the certificate is valid from {leaf.not_valid_before_utc.isoformat()} "
            f"to {leaf.not_valid_after_utc.isoformat()}, not at {now.isoformat()}",
        )
    verifier = (
        PolicyBuilder()
        .store(Store([ca]))
        .time(now)
        .max_chain_depth(MAX_CHAIN_CERTIFICATES)
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, chain[1:])
    except VerificationError as exc:
        raise IdentityError(
            "certificate_invalid", f"the certificate does not chain to the pinned CA ({exc})"
        ) from None


def not_yet_valid(not_before: dt.datetime, now: dt.datetime) -> IdentityError:
    """The error for a certificate whose validity starts after the local ``now``.

    The control plane backdates what it issues, so this is nearly always a local clock that is
    behind; calling it expired would send the operator to re-register, which cannot help.
    """
    return IdentityError(
        "certificate_not_yet_valid",
        f"the certificate is valid only from {not_before.isoformat()} but the local clock reads "
        f"{now.isoformat()}; the clock is probably behind: correct it (NTP)",
    )


def renewal_time(cert: x509.Certificate) -> dt.datetime:
    """When renewal should start: two thirds into the certificate's lifetime."""
    start = cert.not_valid_before_utc
    return start + (cert.not_valid_after_utc - start) * RENEWAL_FRACTION


@dataclass(frozen=True)
class CertificateHealth:
    """Where a certificate stands in its life at ``now``."""

    state: HealthState
    not_before: dt.datetime
    not_after: dt.datetime
    renew_at: dt.datetime
    alert_at: dt.datetime
    seconds_left: float

    @property
    def usable(self) -> bool:
        """True if a TLS handshake with this certificate may be attempted."""
        return self.state not in ("expired", "not_yet_valid")


def certificate_health(
    cert: x509.Certificate,
    now: dt.datetime,
    *,
    alert_fraction: float = DEFAULT_ALERT_FRACTION,
) -> CertificateHealth:
    """Classify ``cert`` at ``now``: valid, renewal due, alert (renewal overdue) or unusable."""
    start = cert.not_valid_before_utc
    end = cert.not_valid_after_utc
    renew_at = renewal_time(cert)
    alert_at = start + (end - start) * alert_fraction
    state: HealthState
    if now < start:
        state = "not_yet_valid"
    elif now >= end:
        state = "expired"
    elif now >= alert_at:
        state = "alert"
    elif now >= renew_at:
        state = "renewal_due"
    else:
        state = "valid"
    return CertificateHealth(
        state=state,
        not_before=start,
        not_after=end,
        renew_at=renew_at,
        alert_at=alert_at,
        seconds_left=max(0.0, (end - now).total_seconds()),
    )
