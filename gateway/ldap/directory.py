"""The gateway's own connection to the directory: dialled by the dial step, TLS by the gateway.

The SaaS never negotiates TLS with the directory: the gateway originates it (issue item 1), so
it can read every PDU and the directory's certificate is checked against what gateway.yaml pins.

* ``ldaps``: TLS from the first byte (RFC 8314 style implicit TLS; port 636).
* ``ldap``: the gateway sends a StartTLS extended request (RFC 4511 section 4.14) before any
  client PDU and starts TLS once the directory answers success; any other answer fails the
  stream closed. Only a target with ``cleartext`` skips it.

The socket comes from :func:`gateway.forward.streams.open_tcp`, i.e. from the dial step, so the
target's address policy holds; TLS verification uses the target's ``tls`` section (CA pinning,
host name verification against ``tls.server_name`` or the host) as for https targets. Every
read and write has a deadline and reads are bounded (:data:`READ_CHUNK`).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from gateway.errors import GatewayError
from gateway.forward.dial import close_stream
from gateway.ldap.codec import (
    DEFAULT_LIMITS,
    ResultCode,
    decode_response,
    encode_extended_request,
    pdu_length,
)
from gateway.ldap.errors import LdapError

READ_CHUNK = 64 * 1024
START_TLS = "1.3.6.1.4.1.1466.20037"  # RFC 4511 section 4.14.1
CLOSE_TIMEOUT = 2.0


class DirectoryError(GatewayError):
    """The directory could not be reached securely: ``code`` for the decision record."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class DirectoryTls:
    """How the gateway secures its connection to one directory.

    ``context`` is None only for a ``cleartext`` target; ``start_tls`` is True for scheme ldap
    (StartTLS first) and False for ldaps (TLS from the first byte).
    """

    context: ssl.SSLContext | None
    server_name: str
    start_tls: bool


class DirectoryConnection:
    """An open (and, unless cleartext, TLS-protected) connection to the directory."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, io_timeout: float
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._io_timeout = io_timeout
        self.closed = False

    @property
    def tls_version(self) -> str | None:
        """The TLS version in use, or None for a cleartext connection."""
        ssl_object = self._writer.get_extra_info("ssl_object")
        return ssl_object.version() if ssl_object is not None else None

    async def read(self) -> bytes:
        """Up to :data:`READ_CHUNK` bytes; empty at end of stream.

        No deadline here: a search may legitimately take long; the stream's idle timeout bounds
        how long nothing happens.
        """
        return await self._reader.read(READ_CHUNK)

    async def write(self, data: bytes) -> None:
        """Write and wait (at most the I/O timeout) until the directory takes the bytes."""
        self._writer.write(data)
        try:
            async with asyncio.timeout(self._io_timeout):
                await self._writer.drain()
        except TimeoutError:
            raise DirectoryError(
                "directory_timeout", f"the directory took no data for {self._io_timeout} s"
            ) from None

    async def close(self) -> None:
        """Close (bounded in time, never raises)."""
        if self.closed:
            return
        self.closed = True
        await close_stream(self._writer, CLOSE_TIMEOUT)


def tls_failure(exc: ssl.SSLError) -> str:
    """What went wrong in a handshake, in OpenSSL's words (a certificate's own reason first)."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"{exc.reason}: {exc.verify_message}"
    return str(exc.reason or exc)


async def secure(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    tls: DirectoryTls,
    *,
    within: float,
) -> DirectoryConnection:
    """Turn a freshly dialled connection into a :class:`DirectoryConnection` within ``within``
    seconds.

    Raises :class:`DirectoryError` (``directory_starttls_refused``, ``directory_tls_failed``,
    ``directory_timeout``); the connection is closed on failure.
    """
    connection = DirectoryConnection(reader, writer, io_timeout=within)
    try:
        async with asyncio.timeout(within):
            if tls.context is None:
                return connection
            if tls.start_tls:
                await _start_tls(reader, writer)
            await writer.start_tls(tls.context, server_hostname=tls.server_name)
    except TimeoutError:
        await connection.close()
        raise DirectoryError(
            "directory_timeout", f"no secure connection to the directory within {within} s"
        ) from None
    except ssl.SSLError as exc:
        await connection.close()
        raise DirectoryError(
            "directory_tls_failed", f"TLS to the directory failed: {tls_failure(exc)}"
        ) from None
    except (DirectoryError, LdapError, ConnectionError, OSError) as exc:
        await connection.close()
        if isinstance(exc, DirectoryError):
            raise
        raise DirectoryError("directory_tls_failed", f"StartTLS failed: {exc}") from None
    return connection


async def _start_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """RFC 4511 section 4.14: ask, and wait for a success answer before the TLS handshake.

    Message id 1 is free: nothing else was sent on this connection, and the client's own ids
    (which may reuse 1) only follow once this operation has ended (section 4.1.1.1).
    """
    writer.write(encode_extended_request(1, START_TLS))
    await writer.drain()
    buffer = bytearray()
    while True:
        length = pdu_length(buffer, DEFAULT_LIMITS.max_request_bytes)
        if length is not None and len(buffer) >= length:
            break
        chunk = await reader.read(READ_CHUNK)
        if not chunk:
            raise DirectoryError("directory_starttls_refused", "the directory closed")
        buffer += chunk
    response = decode_response(bytes(buffer[:length]))
    if len(buffer) > length:
        # Section 4.14.2: nothing may follow the StartTLS response before the TLS handshake.
        raise DirectoryError("directory_starttls_refused", "data after the StartTLS response")
    if response.kind != "extendedResp" or response.message_id != 1:
        raise DirectoryError("directory_starttls_refused", f"a {response.kind} answered StartTLS")
    if response.result_code != ResultCode.SUCCESS:
        raise DirectoryError(
            "directory_starttls_refused",
            f"the directory refused StartTLS with resultCode {response.result_code}",
        )
