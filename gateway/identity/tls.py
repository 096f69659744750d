"""TLS contexts for the control plane: trust pinned to the EmpowerID CA, no fallback.

The pinned factories start from an empty trust store (the system CAs are never loaded, so a
TLS-inspecting proxy's CA cannot be accepted), require TLS 1.2 or newer (RFC 8996 deprecates
1.0/1.1), verify the server certificate and always check the host name. Nothing in the gateway
turns these off: a failure is an error, never a retry with weaker settings.

One call may use the system trust store instead (:func:`system_context`, same settings): a
registration for which the operator pinned no CA (``empowerid.ca_file`` absent). It pins the CA
the control plane returns over that verified connection, and every later connection is pinned.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from gateway.identity.errors import IdentityError

# Forward-secret AEAD suites only for TLS 1.2 (RFC 7525 section 4.2); TLS 1.3 suites are all AEAD.
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def _pinned_context(ca_pem: bytes) -> ssl.SSLContext:
    context = _hardened()
    context.load_verify_locations(cadata=ca_pem.decode("ascii"))
    return context


def system_context() -> ssl.SSLContext:
    """Server-authenticated TLS trusting the system's CAs (OpenSSL's default locations, which
    ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` override), with the pinned contexts' settings."""
    context = _hardened()
    context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    return context


def _hardened() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    # Strict RFC 5280 checks in OpenSSL (the default from Python 3.13 on).
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.set_ciphers(_TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def registration_context(ca_pem: bytes) -> ssl.SSLContext:
    """Server-authenticated TLS pinned to ``ca_pem``, without a client certificate."""
    return _pinned_context(ca_pem)


def mtls_context(
    ca_pem: bytes, cert_path: Path, key_path: Path, passphrase: bytes | None
) -> ssl.SSLContext:
    """Mutual TLS pinned to ``ca_pem``, presenting the gateway's certificate chain and key.

    OpenSSL reads the key file itself and decrypts it with ``passphrase``; the files are in the
    state directory whose permissions the store has checked.
    """
    context = _pinned_context(ca_pem)
    secret = passphrase or b""
    try:
        context.load_cert_chain(cert_path, key_path, password=lambda: secret)
    except ssl.SSLError:
        # OpenSSL's text is not reused: a generic statement is enough and leaks nothing.
        raise IdentityError(
            "tls_credentials_unusable",
            f"{cert_path} and {key_path} cannot be loaded together for TLS "
            "(mismatched pair or wrong passphrase)",
        ) from None
    except OSError as exc:
        # Removed or made unreadable since the store checked them: an identity error like any
        # other, so the renewal loop reports it and retries instead of ending on it.
        raise IdentityError(
            "unreadable", f"{cert_path} or {key_path} cannot be read for TLS: {exc.strerror}"
        ) from None
    return context
