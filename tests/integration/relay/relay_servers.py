"""Small real servers on 127.0.0.1 used by the relay integration tests."""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web


@dataclass
class WsServer:
    """A local WebSocket echo server that records the request headers of every handshake."""

    port: int
    scheme: str
    seen_headers: list[dict[str, str]] = field(default_factory=list)

    def url(self, host: str = "127.0.0.1", path: str = "/ws") -> str:
        """URL of the echo endpoint under ``host``."""
        return f"{self.scheme}://{host}:{self.port}{path}"


async def start_ws_server(context: ssl.SSLContext | None) -> tuple[web.AppRunner, WsServer]:
    """Start an echo :class:`WsServer` (TLS when ``context`` is given); clean up the runner."""
    server = WsServer(port=0, scheme="wss" if context else "ws")

    async def echo(request: web.Request) -> web.WebSocketResponse:
        server.seen_headers.append(dict(request.headers))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server.port = sock.getsockname()[1]
    await web.SockSite(runner, sock, ssl_context=context).start()
    return runner, server


@dataclass
class ConnectionRecorder:
    """A TCP server on 127.0.0.1 that records every connection and closes it at once."""

    port: int
    connections: list[tuple[str, int]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, usable as a proxy URL or a base URL."""
        return f"http://127.0.0.1:{self.port}"


async def start_connection_recorder() -> tuple[asyncio.Server, ConnectionRecorder]:
    """Start a :class:`ConnectionRecorder`; the caller closes the returned server."""
    recorder = ConnectionRecorder(port=0)

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        recorder.connections.append(writer.get_extra_info("peername")[:2])
        writer.close()

    server = await asyncio.start_server(record, "127.0.0.1", 0)
    recorder.port = server.sockets[0].getsockname()[1]
    return server, recorder


@dataclass
class ScriptedRelay:
    """A stand-in relay whose control messages the test writes by hand.

    It accepts listen handshakes on ``/$hc/...`` and queues each control channel; the test sends
    arbitrary text (malformed JSON, commands with hostile addresses) and reads what the listener
    sends back. It answers pings like the real service.
    """

    port: int = 0
    channels: asyncio.Queue[web.WebSocketResponse] = field(default_factory=asyncio.Queue)
    received: asyncio.Queue[str | bytes] = field(default_factory=asyncio.Queue)
    listens: int = 0

    @property
    def base(self) -> str:
        """``ws://127.0.0.1:PORT``: the endpoint to configure on the listener."""
        return f"ws://127.0.0.1:{self.port}"

    async def next_channel(self, within: float = 30.0) -> web.WebSocketResponse:
        """The next control channel a listener opened."""
        async with asyncio.timeout(within):
            return await self.channels.get()

    async def next_message(self, within: float = 30.0) -> str | bytes:
        """The next data message any listener sent."""
        async with asyncio.timeout(within):
            return await self.received.get()


async def start_scripted_relay() -> tuple[web.AppRunner, ScriptedRelay]:
    """Start a :class:`ScriptedRelay`; the caller cleans up the runner."""
    relay = ScriptedRelay()

    async def listen(request: web.Request) -> web.WebSocketResponse:
        relay.listens += 1
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        await relay.channels.put(ws)
        async for msg in ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                await relay.received.put(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", listen)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    relay.port = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    return runner, relay
