"""The listener's WebSocket adapter (gateway/relay/websocket.py) on real relay sockets."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from gateway.devkit.relay_emulator import RelayEmulator
from gateway.hybridconnection.framing import Frame, Opcode
from gateway.outbound.proxy import OutboundProxy, ProxySettings
from gateway.relay.websocket import (
    HandshakeRefusedError,
    RelaySocketError,
    RelayWebSocket,
    open_relay_socket,
)

from .listener_support import HC, send_http, start_listener


async def test_no_token_reaches_the_log_even_at_debug(
    relay: RelayEmulator, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with start_listener(relay) as listener:
        await relay.wait_for_listeners(HC, 1)
        status, _, _, body = await send_http(http, relay, "/x", method="POST", data=b"hi")
        assert (status, body) == (200, b"hi")
    assert listener.metrics.requests["ok"] == 1
    assert "SharedAccessSignature" not in caplog.text
    assert "sig=" not in caplog.text


async def test_refused_handshake_reports_status_and_reason(relay: RelayEmulator) -> None:
    url = f"{relay.ws_base}/$hc/no-such-hc?sb-hc-action=listen"
    with pytest.raises(HandshakeRefusedError) as refused:
        await open_relay_socket(
            url,
            OutboundProxy(ProxySettings()),
            handshake_timeout=5,
            max_size=1024,
            close_timeout=1,
            headers={"ServiceBusAuthorization": relay.token(HC)},
        )
    assert refused.value.status == 404
    assert "Endpoint does not exist" in refused.value.reason


async def test_a_url_that_is_not_a_websocket_url_is_refused() -> None:
    with pytest.raises(RelaySocketError):
        await open_relay_socket(
            "https://127.0.0.1:1/x",
            OutboundProxy(ProxySettings()),
            handshake_timeout=5,
            max_size=1024,
            close_timeout=1,
        )


async def test_ping_on_a_closed_socket_is_not_an_error(relay: RelayEmulator) -> None:
    # The listener's ping timer may fire in the same moment the relay's close arrives; the
    # reader reports the close, the ping must not raise an error of its own.
    ws = await open_relay_socket(
        f"{relay.ws_base}/$hc/{HC}?sb-hc-action=listen",
        OutboundProxy(ProxySettings()),
        handshake_timeout=5,
        max_size=1024,
        close_timeout=2,
        headers={"ServiceBusAuthorization": relay.token(HC)},
    )
    assert ws.open
    await relay.close_listeners(1011, "recycle")
    assert await ws.receive_message() is None
    assert ws.close_code == 1011
    assert not ws.open
    ws.ping(b"gw")
    await ws.close()
    ws.ping(b"gw")


class _Recorder:
    """A loopback WebSocket server that records every message and the close it receives."""

    def __init__(self) -> None:
        self.messages: list[str | bytes] = []
        self.close_code: int | None = None
        self.done = asyncio.Event()

    async def handle(self, connection: ServerConnection) -> None:
        try:
            async for message in connection:
                self.messages.append(message)
        except ConnectionClosed:
            pass
        self.close_code = connection.close_code
        self.done.set()


async def _open_to(server: Server) -> RelayWebSocket:
    host, port = next(iter(server.sockets)).getsockname()[:2]
    return await open_relay_socket(
        f"ws://{host}:{port}/",
        OutboundProxy(ProxySettings()),
        handshake_timeout=5,
        max_size=1024,
        close_timeout=5,
    )


async def test_sends_of_one_loop_iteration_arrive_in_order_before_the_close() -> None:
    # Sends only queue and one flush per loop iteration writes them; the close that follows in
    # the same iteration must still come after every one of them (RFC 6455 section 5.5.1).
    recorder = _Recorder()
    async with serve(recorder.handle, "127.0.0.1", 0) as server:
        ws = await _open_to(server)
        ws.send([Frame(Opcode.TEXT, b"one")])
        ws.send([Frame(Opcode.BINARY, b"two", fin=False), Frame(Opcode.CONTINUATION, b"!")])
        ws.ping(b"gw")
        ws.send([Frame(Opcode.TEXT, b"three")])
        await ws.close(1000)
        async with asyncio.timeout(5):
            await recorder.done.wait()
    assert recorder.messages == ["one", b"two!", "three"]
    assert recorder.close_code == 1000
    with pytest.raises(ConnectionResetError):
        ws.send([Frame(Opcode.TEXT, b"after the close")])


async def test_a_last_answer_follows_the_queued_sends_and_precedes_the_close() -> None:
    recorder = _Recorder()
    async with serve(recorder.handle, "127.0.0.1", 0) as server:
        ws = await _open_to(server)
        ws.send([Frame(Opcode.TEXT, b"queued")])
        assert ws.send_last([Frame(Opcode.TEXT, b"last")])
        await ws.linger(5)
        async with asyncio.timeout(5):
            await recorder.done.wait()
    assert recorder.messages == ["queued", "last"]
    assert recorder.close_code == 1009


async def test_a_large_send_is_written_at_once_and_drains() -> None:
    # Past the coalescing limit a send writes at once, so drain() sees the transport's buffer.
    recorder = _Recorder()
    async with serve(recorder.handle, "127.0.0.1", 0, max_size=None) as server:
        ws = await _open_to(server)
        body = bytes(range(256)) * 1024
        for _ in range(8):
            ws.send([Frame(Opcode.BINARY, body)])
            await ws.drain()
        await ws.close(1000)
        async with asyncio.timeout(10):
            await recorder.done.wait()
    assert recorder.messages == [body] * 8
    assert recorder.close_code == 1000
