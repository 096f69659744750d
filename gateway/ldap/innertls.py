"""TLS carried inside a relayed stream: the SaaS to the gateway, end to end through the relay.

Azure Relay terminates the TLS of both legs (hybrid-connections protocol, section 1), so a stream
whose messages carried plain LDAP would be readable by the relay, bind passwords included. An
LDAP stream therefore carries a TLS connection of its own: the SaaS is the TLS client, the
gateway the server, and every binary WebSocket message holds TLS records (any split; TLS frames
its own records, RFC 8446 section 5.1). The gateway presents its registration identity
certificate and the SaaS pins it (docs/relay-contract.md, "Inner TLS").

The TLS engine is the standard library's ``ssl.SSLObject`` over two ``ssl.MemoryBIO`` buffers
(public API, OpenSSL underneath): bytes from messages go into the incoming BIO, records the
engine writes are taken from the outgoing BIO and sent as one binary message. No socket is
involved, so the same class serves the gateway (over the listener's accepted stream) and the
devkit's SaaS client (over its WebSocket).

Bounds: the handshake has a deadline; each message is at most ``max_message`` bytes (larger
ones end the stream); a text message is not TLS and ends it. Reads return plaintext in chunks of
at most :data:`READ_CHUNK`, so memory per stream is one chunk plus what OpenSSL buffers for one
record (16 KiB, RFC 8446 section 5.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.errors import GatewayError
from gateway.identity.certs import san_uris
from gateway.identity.keys import gateway_uri
from gateway.identity.store import StoredIdentity

READ_CHUNK = 64 * 1024
HANDSHAKE_TIMEOUT = 10.0
# Seconds a close_notify may take to leave before the stream is closed without it.
CLOSE_TIMEOUT = 2.0
# TLS 1.2 suites: forward-secret AEAD only (RFC 7525 section 4.2); TLS 1.3 suites are all AEAD.
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class InnerTlsError(GatewayError):
    """The inner TLS failed: ``code`` is a stable reason for logs and decision records."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class MessageChannel(Protocol):
    """One side of a relayed stream, message by message (the listener's ``StreamSocket``)."""

    async def receive(self) -> str | bytes | None:
        """The next data message, or ``None`` once the stream ended."""
        ...

    async def send(self, data: str | bytes) -> None:
        """Send one message (``bytes``: binary)."""
        ...


def server_context(cert_path: Path, key_path: Path, passphrase: bytes | None) -> ssl.SSLContext:
    """The gateway's side: its identity certificate chain and key, TLS 1.2 or newer.

    No client certificate is asked for: the stream is already authenticated by its signed
    connect (docs/relay-contract.md); the TLS is there for confidentiality from the relay and to
    prove to the SaaS that it reached this gateway.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET
    # No session tickets in TLS 1.3 either: every stream is a full handshake, nothing to resume.
    context.num_tickets = 0
    secret = passphrase or b""
    try:
        context.load_cert_chain(cert_path, key_path, password=lambda: secret)
    except ssl.SSLError:
        raise InnerTlsError(
            "inner_tls_unavailable", f"{cert_path} and {key_path} cannot serve TLS"
        ) from None
    return context


def identity_context(identity: StoredIdentity, passphrase: bytes | None) -> ssl.SSLContext:
    """:func:`server_context` for the gateway's current identity certificate.

    The certificate must list the serverAuth extended key usage: RFC 5280 section 4.2.1.12 limits
    a certificate to the purposes it lists, and the SaaS's TLS client refuses one issued for
    client authentication only. Control planes issue both usages (schemas/
    controlplane.openapi.yaml); a certificate issued before they did serves no inner TLS until it
    is renewed, and the stream is refused (``inner_tls_unavailable``).
    """
    try:
        usage = identity.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        usage = None
    if usage is None or ExtendedKeyUsageOID.SERVER_AUTH not in usage.value:
        raise InnerTlsError(
            "inner_tls_unavailable",
            "the gateway certificate is not issued for TLS servers (serverAuth); LDAP streams "
            "are refused until the certificate is renewed by a control plane that issues it",
        )
    return server_context(identity.cert_path, identity.key_path, passphrase)


def client_context(ca_pem: bytes) -> ssl.SSLContext:
    """The SaaS's side: trust only the EmpowerID CA that issued gateway identities.

    The host name is not checked by OpenSSL (the certificate names the gateway by a SAN URI,
    which OpenSSL does not match); :func:`check_gateway_certificate` checks that URI once the
    handshake is done and before any LDAP byte is sent.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.load_verify_locations(cadata=ca_pem.decode("ascii"))
    return context


def check_gateway_certificate(der: bytes | None, gateway_id: str) -> None:
    """Raise :class:`InnerTlsError` unless the peer certificate names ``gateway_id``.

    The chain was verified against the pinned CA with the TLS server purpose during the
    handshake; this pins the identity: the SAN URI ``urn:empowerid:gateway:ID``, as the gateway's
    registration certificate carries it.
    """
    if der is None:
        raise InnerTlsError("inner_tls_no_certificate", "the gateway presented no certificate")
    if gateway_uri(gateway_id) not in san_uris(x509.load_der_x509_certificate(der)):
        raise InnerTlsError(
            "inner_tls_wrong_gateway", f"the certificate does not name gateway {gateway_id}"
        )


class TlsOverMessages:
    """A TLS connection whose records travel as binary messages of a :class:`MessageChannel`."""

    def __init__(
        self,
        channel: MessageChannel,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        max_message: int,
    ) -> None:
        self._channel = channel
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side)
        self._max_message = max_message
        # Records leave in the order the engine wrote them even when a reading and a writing
        # task both flush: taking bytes from the BIO and sending them is one step under the lock.
        self._send_lock = asyncio.Lock()
        self._channel_ended = False
        self.bytes_in = 0
        self.bytes_out = 0

    @property
    def peer_certificate(self) -> bytes | None:
        """The peer's certificate (DER) once the handshake is done."""
        return self._tls.getpeercert(binary_form=True)

    @property
    def version(self) -> str | None:
        """The negotiated TLS version, e.g. ``TLSv1.3``."""
        return self._tls.version()

    async def handshake(self, within: float = HANDSHAKE_TIMEOUT) -> None:
        """Complete the TLS handshake within ``within`` seconds; raises :class:`InnerTlsError`."""
        try:
            async with asyncio.timeout(within):
                while True:
                    try:
                        self._tls.do_handshake()
                        break
                    except ssl.SSLWantReadError:
                        await self._flush()
                        if not await self._fill():
                            raise InnerTlsError(
                                "inner_tls_handshake_failed", "the stream ended in the handshake"
                            ) from None
                await self._flush()
        except TimeoutError:
            raise InnerTlsError(
                "inner_tls_handshake_timeout", f"no TLS handshake within {within} s"
            ) from None
        except ssl.SSLError as exc:
            # Tell the peer why (the alert OpenSSL queued), then give up on the stream.
            await self._flush_quietly()
            reason = str(exc.reason or exc)
            if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
                reason = f"{reason}: {exc.verify_message}"
            raise InnerTlsError("inner_tls_handshake_failed", reason) from None

    async def receive(self) -> bytes | None:
        """The next plaintext (at most :data:`READ_CHUNK` bytes), or ``None`` at a clean end.

        A stream that ends without a TLS close_notify is an error (a truncation attack would
        look like a clean end otherwise, RFC 8446 section 6.1).
        """
        while True:
            try:
                data = self._tls.read(READ_CHUNK)
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    self._incoming.write_eof()
                continue
            except ssl.SSLZeroReturnError:
                return None
            except ssl.SSLError as exc:
                raise InnerTlsError("inner_tls_error", exc.reason or str(exc)) from None
            # TLS 1.3 may answer a record with one of its own (a key update, RFC 8446 4.6.3).
            await self._flush()
            if not data:
                # The standard library reports the peer's close_notify as an empty read.
                return None
            self.bytes_in += len(data)
            return data

    async def send(self, data: bytes) -> None:
        """Encrypt ``data`` and send the records as one message."""
        view = memoryview(data)
        while view:
            # One message carries at most one plaintext chunk, so each stays below max_message.
            chunk = view[:READ_CHUNK]
            try:
                written = self._tls.write(chunk)
            except ssl.SSLError as exc:
                raise InnerTlsError("inner_tls_error", exc.reason or str(exc)) from None
            view = view[written:]
            self.bytes_out += written
            await self._flush()

    async def close(self, within: float = CLOSE_TIMEOUT) -> None:
        """Send a TLS close_notify (RFC 8446 section 6.1); never raises, and gives up after
        ``within`` seconds (a peer that stopped reading would otherwise hold the stream)."""
        # SSLWantReadError: the peer's close_notify is not awaited (allowed by section 6.1).
        with contextlib.suppress(ssl.SSLError):
            self._tls.unwrap()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._flush_quietly()

    async def _fill(self) -> bool:
        """Feed the next message to the engine; False once the stream has ended."""
        if self._channel_ended:
            return False
        message = await self._channel.receive()
        if message is None:
            self._channel_ended = True
            return False
        if isinstance(message, str):
            raise InnerTlsError("inner_tls_text_message", "a text message is not TLS")
        if len(message) > self._max_message:
            raise InnerTlsError(
                "message_too_large", f"a message of {len(message)} bytes is over the bound"
            )
        self._incoming.write(message)
        return True

    async def _flush(self) -> None:
        async with self._send_lock:
            pending = self._outgoing.read()
            if pending:
                await self._channel.send(pending)

    async def _flush_quietly(self) -> None:
        try:
            await self._flush()
        except Exception:  # closing: the stream may already be gone
            return
