"""Splicing a relayed stream onto a real loopback TCP server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.config.model import GatewayConfig
from gateway.forward.dial import DialError, IPAddress
from gateway.forward.streams import SpliceResult, open_tcp, splice


class QueueSocket:
    """The relay side of a stream: what the SaaS sends is queued in, what it gets is recorded."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self.sent: list[bytes | str] = []
        self.got_data = asyncio.Event()
        self.closed: tuple[int, str] | None = None

    async def receive(self) -> str | bytes | None:
        return await self.incoming.get()

    async def send(self, data: str | bytes) -> None:
        self.sent.append(data)
        self.got_data.set()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)


def tcp_target(port: int) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "version": 1,
            "gateway": {"id": "agent-1"},
            "empowerid": {"url": "https://tenant.example"},
            "targets": {
                "ldap": {
                    "scheme": "tcp",
                    "host": "127.0.0.1",
                    "port": port,
                    "allow_special_addresses": True,
                }
            },
        }
    )


async def no_dns(host: str, port: int) -> list[IPAddress]:
    raise OSError("no DNS in this test")


@pytest.fixture
async def echo_server() -> AsyncIterator[tuple[int, list[bytes]]]:
    received: list[bytes] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.append(data)
            if data == b"quit":
                break
            writer.write(data.upper())
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], received
    server.close()
    await server.wait_closed()


async def run_splice(
    port: int, socket: QueueSocket, idle: float = 5.0
) -> asyncio.Task[SpliceResult]:
    target = tcp_target(port).targets["ldap"]
    reader, writer = await open_tcp(target, resolver=no_dns, connect_timeout=2)
    return asyncio.create_task(splice(socket, reader, writer, idle_timeout=idle, max_message=1024))


async def test_bytes_flow_both_ways_and_upstream_close_ends_the_stream(
    echo_server: tuple[int, list[bytes]],
) -> None:
    port, received = echo_server
    socket = QueueSocket()
    task = await run_splice(port, socket)
    await socket.incoming.put(b"search")
    await asyncio.wait_for(socket.got_data.wait(), 60)
    await socket.incoming.put(b"quit")
    result = await asyncio.wait_for(task, 60)
    assert socket.sent == [b"SEARCH"]
    assert received[0] == b"search"
    assert result.reason == "upstream_closed"
    assert socket.closed == (1000, "upstream_closed")


@pytest.mark.parametrize(
    ("message", "code", "reason"),
    [
        (b"x" * 2000, 1009, "message_too_large"),
        ("text", 1003, "text_message"),
        (None, 1000, "client_closed"),
    ],
)
async def test_relay_side_endings(
    echo_server: tuple[int, list[bytes]], message: bytes | str | None, code: int, reason: str
) -> None:
    port, received = echo_server
    socket = QueueSocket()
    task = await run_splice(port, socket)
    await socket.incoming.put(message)
    result = await asyncio.wait_for(task, 60)
    assert result.reason == reason
    assert socket.closed == (code, reason)
    assert received == []


async def test_idle_timeout(echo_server: tuple[int, list[bytes]]) -> None:
    port, _ = echo_server
    socket = QueueSocket()
    task = await run_splice(port, socket, idle=0.3)
    result = await asyncio.wait_for(task, 60)
    assert result.reason == "idle_timeout"


async def test_refused_upstream_is_a_dial_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(DialError) as caught:
        await open_tcp(tcp_target(port).targets["ldap"], resolver=no_dns, connect_timeout=2)
    assert caught.value.code == "upstream_unreachable"
