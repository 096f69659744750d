"""The listener's WebSocket adapter (gateway/relay/websocket.py) on real relay sockets."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hashlib
import logging
import types
from collections import deque
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from gateway.devkit.relay_emulator import RelayEmulator
from gateway.hybridconnection.framing import Frame, Opcode
from gateway.hybridconnection.messages import AcceptCommand
from gateway.outbound.proxy import OutboundProxy, ProxySettings
from gateway.relay.websocket import (
    HandshakeRefusedError,
    ReceivedFrame,
    RelaySocketError,
    RelayWebSocket,
    open_relay_socket,
)

from .listener_support import HC, Streams, send_http, start_listener


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


# --- the opening handshake on a raw server: what reaches websockets, what the frame reader -----

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3


def _accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()


def _text_frame(payload: bytes) -> bytes:
    return bytes((0x81, len(payload))) + payload  # unmasked: a server's frame (section 5.1)


async def _raw_server(answer: Callable[[str], list[bytes]]) -> asyncio.Server:
    """Reads the upgrade request, then writes ``answer(key)`` piece by piece, then lingers."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip().decode()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        for piece in answer(key):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0)
        with contextlib.suppress(ConnectionError):
            await reader.read()  # until the client goes
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def _open_raw(server: asyncio.Server) -> RelayWebSocket:
    host, port = server.sockets[0].getsockname()[:2]
    return await open_relay_socket(
        f"ws://{host}:{port}/$hc/x?sb-hc-action=accept",
        OutboundProxy(ProxySettings()),
        handshake_timeout=5,
        max_size=1024,
        close_timeout=1,
    )


def _upgrade(key: str, *extra: str) -> bytes:
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {_accept(key)}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize("split", ["one write", "head end split", "byte by byte"])
async def test_frames_right_behind_the_101_reach_the_frame_reader(split: str) -> None:
    # A rendezvous socket's request follows the 101 at once, often in the same TCP segment; the
    # head goes to websockets' handshake check, the frame to the frame reader, wherever the
    # reads happen to cut. Byte by byte, the frame arrives in many reads: a read that ends
    # inside a frame is not the end of the connection (receive() once returned [] for it, and
    # the listener took a control channel for closed when a large body arrived over TLS).
    def answer(key: str) -> list[bytes]:
        wire = _upgrade(key) + _text_frame(b'{"request":{}}')
        if split == "one write":
            return [wire]
        if split == "head end split":
            cut = wire.index(b"\r\n\r\n") + 2
            return [wire[:cut], wire[cut:]]
        return [wire[index : index + 1] for index in range(len(wire))]

    server = await _raw_server(answer)
    async with server:
        ws = await _open_raw(server)
        try:
            async with asyncio.timeout(10):  # a bound for the failure only
                received = await ws.receive()
            assert [
                (frame.opcode, frame.data) for frame in received if isinstance(frame, ReceivedFrame)
            ] == [(Opcode.TEXT, b'{"request":{}}')]
        finally:
            ws.abort()


@pytest.mark.parametrize(
    "answer",
    [
        # RFC 6455 section 4.1: the accept value must be the key's digest...
        lambda key: [_upgrade(key).replace(_accept(key).encode(), _accept(key + "x").encode())],
        # ...and present once
        lambda key: [_upgrade(key).replace(b"Sec-WebSocket-Accept", b"X-Accept")],
        # ...no extension the client did not offer (so no reserved bit has a meaning)
        lambda key: [_upgrade(key, "Sec-WebSocket-Extensions: permessage-deflate")],
        # ...and an upgrade to WebSocket
        lambda key: [_upgrade(key).replace(b"Upgrade: websocket", b"Upgrade: h2c")],
    ],
    ids=["wrong accept", "no accept", "unoffered extension", "not websocket"],
)
async def test_a_handshake_answer_that_fails_the_checks_is_refused(
    answer: Callable[[str], list[bytes]],
) -> None:
    server = await _raw_server(answer)
    async with server:
        with pytest.raises(RelaySocketError) as failed:
            await _open_raw(server)
    assert not isinstance(failed.value, HandshakeRefusedError)


async def test_a_refusal_with_a_body_split_across_reads_reports_status_and_reason() -> None:
    def answer(key: str) -> list[bytes]:
        body = b"Endpoint does not exist. TrackingId:1234"
        head = (
            "HTTP/1.1 404 Endpoint does not exist\r\n"
            f"Content-Length: {len(body)}\r\nContent-Type: text/plain\r\n\r\n"
        ).encode()
        wire = head + body
        return [
            wire[:20],
            wire[20 : len(head) - 1],
            wire[len(head) - 1 : len(head) + 5],
            wire[len(head) + 5 :],
        ]

    server = await _raw_server(answer)
    async with server:
        with pytest.raises(HandshakeRefusedError) as refused:
            await _open_raw(server)
    assert (refused.value.status, refused.value.reason) == (404, "Endpoint does not exist")


# --- what an open socket keeps (memory per stream: a gateway holds one socket per stream) ------


def _reachable_instances(root: object, kinds: tuple[type, ...]) -> list[object]:
    """Instances of ``kinds`` reachable from ``root``, not following the event loop, modules,
    classes or functions (shared by every socket, and the way to everything else)."""
    stop = (asyncio.AbstractEventLoop, type, types.ModuleType, types.FunctionType)
    seen = {id(root)}
    todo = [root]
    found = []
    while todo:
        item = todo.pop()
        if isinstance(item, kinds):
            found.append(item)
        for referent in gc.get_referents(item):
            if id(referent) not in seen and not isinstance(referent, stop):
                seen.add(id(referent))
                todo.append(referent)
    return found


async def test_an_open_socket_keeps_neither_the_handshake_nor_empty_queues() -> None:
    # websockets' protocol, its Request/Response and Headers serve the handshake only, and an
    # empty deque costs about 600 bytes: none of them may stay with an open socket.
    recorder = _Recorder()
    async with serve(recorder.handle, "127.0.0.1", 0) as server:
        ws = await _open_to(server)
        ws.send([Frame(Opcode.TEXT, b"one")])
        kept = _reachable_instances(ws, (ClientProtocol, Request, Response, Headers, deque))
        await ws.close(1000)
        async with asyncio.timeout(5):
            await recorder.done.wait()
    assert kept == []
    assert recorder.messages == ["one"]


async def test_an_accepted_stream_does_not_hold_the_parsed_accept_command(
    relay: RelayEmulator,
) -> None:
    # The listener's task for a stream lives as long as the stream; the parsed accept (its
    # connect headers and the rendezvous address) is needed only until the socket is open.
    async with start_listener(relay, streams=Streams()) as listener:
        await relay.wait_for_listeners(HC, 1)
        url = f"{relay.ws_base}/$hc/{HC}/ldap?sb-hc-action=connect"
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(
                url,
                headers={"ServiceBusAuthorization": relay.token(HC), "X-Big": "x" * 512},
                timeout=aiohttp.ClientWSTimeout(ws_close=5),
            ) as ws,
        ):
            await ws.send_str("hello")
            assert (await ws.receive(timeout=5)).data == "HELLO"
            held = [
                value
                for frame in _stream_frames()
                for value in frame.f_locals.values()
                if isinstance(value, AcceptCommand)
            ]
        assert held == []
    assert listener.metrics.streams["accepted"] == 1


def _stream_frames() -> list[types.FrameType]:
    """The frames of the listener's running stream task, outermost first."""
    frames = []
    for task in asyncio.all_tasks():
        coro: Any = task.get_coro()
        if getattr(coro, "__qualname__", "") != "RelayListener._accept":
            continue
        while coro is not None and getattr(coro, "cr_frame", None) is not None:
            frames.append(coro.cr_frame)
            coro = coro.cr_await
    assert frames, "no running stream task found"
    return frames
