"""Raw LDAP bytes on a loopback port, for the cases no real client would send."""

from __future__ import annotations

import asyncio

from gateway.ldap.codec import Response, decode_response, encode_extended_request, pdu_length

IO_TIMEOUT = 30
START_TLS = "1.3.6.1.4.1.1466.20037"


def split(received: bytes) -> list[bytes]:
    """The PDUs in ``received`` (which must end on a PDU boundary)."""
    pdus = []
    while received:
        length = pdu_length(received, 1 << 24)
        assert length is not None
        pdus.append(received[:length])
        received = received[length:]
    return pdus


async def read_all(reader: asyncio.StreamReader) -> list[bytes]:
    """PDUs until the other side closes."""
    received = b""
    async with asyncio.timeout(IO_TIMEOUT):
        while chunk := await reader.read(65536):
            received += chunk
    return split(received)


async def exchange(port: int, data: bytes) -> list[bytes]:
    """Send ``data`` to ``port`` and read PDUs until the other side closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_all(reader)
    finally:
        writer.close()


async def start_tls(port: int) -> Response:
    """Ask ``port`` for StartTLS (RFC 4511 4.14) and return the first answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(encode_extended_request(1, START_TLS))
        await writer.drain()
        data = b""
        async with asyncio.timeout(IO_TIMEOUT):
            while (length := pdu_length(data, 1 << 20)) is None or len(data) < length:
                data += await reader.read(65536)
    finally:
        writer.close()
    return decode_response(data)
