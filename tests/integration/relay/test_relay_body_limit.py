"""Request bodies over ``max_request_body`` are answered 413 on their rendezvous socket (item 150).

Protocol notes section 5.3: a request delivered over a rendezvous socket is answered on that
socket; RFC 9110 section 15.5.14: 413 Content Too Large, after which the server may close.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from gateway.devkit.relay_emulator import RelayEmulator
from gateway.relay.handlers import RelayedRequest, RelayedResponse
from gateway.relay.listener import RelayListener

from .listener_support import (
    HC,
    Streams,
    Tokens,
    echo_handler,
    listener_settings,
    send_http,
    wait_until,
)

LIMIT = 128 * 1024


@dataclass
class Upstream:
    """Stands in for the on-prem target behind the handler: records what reached it."""

    bodies: list[int] = field(default_factory=list)

    async def __call__(self, request: RelayedRequest) -> RelayedResponse:
        """Record the body size, then echo."""
        self.bodies.append(len(request.body))
        return await echo_handler(request)


async def test_oversize_uploads_get_413_and_never_reach_the_handler(
    relay: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    upstream = Upstream()
    settings = listener_settings(relay.ws_base, max_request_body=LIMIT)
    async with RelayListener(
        settings, token_provider=Tokens(relay), request_handler=upstream, stream_handler=Streams()
    ) as listener:
        async with asyncio.timeout(60):
            await relay.wait_for_listeners(HC, 1)
        status, _, _, body = await send_http(
            http, relay, "/upload", method="POST", data=b"a" * LIMIT
        )
        assert (status, len(body)) == (200, LIMIT)

        status, reason, _, _ = await send_http(
            http, relay, "/upload", method="POST", data=b"b" * (LIMIT + 1)
        )
        assert (status, reason) == (413, "Content Too Large")

        # 32x the limit: the relay is still writing when the listener has answered; the
        # listener keeps reading (and discarding) so the 413 is not lost to a reset.
        status, _, _, _ = await send_http(
            http, relay, "/upload", method="PUT", data=b"c" * (32 * LIMIT)
        )
        assert status == 413

        # The listener stays online and keeps serving.
        status, _, _, _ = await send_http(http, relay, "/after")
        assert status == 200
        assert upstream.bodies == [LIMIT, 0]
        assert listener.metrics.requests["body_too_large"] == 2
        assert listener.metrics.protocol_errors["message_too_large"] == 2
        assert listener.metrics.listeners_online == 1
        assert not listener.metrics.reconnects


@dataclass
class FragmentingRelay:
    """A relay that uploads a body in 64 KiB frames and stops once the limit is crossed.

    It sends only as many frames as needed to cross ``LIMIT`` and never the final one, then
    records what the listener sends back: proof that the answer comes as soon as the limit is
    crossed, without the listener waiting for (or buffering) the rest of the body.
    """

    port: int = 0
    answers: asyncio.Queue[str | bytes] = field(default_factory=asyncio.Queue)
    close_codes: asyncio.Queue[int | None] = field(default_factory=asyncio.Queue)
    frames_sent: int = 0

    @property
    def base(self) -> str:
        """The endpoint the listener is configured with."""
        return f"ws://127.0.0.1:{self.port}"


def _server_frame(opcode: int, payload: bytes, *, fin: bool) -> bytes:
    # RFC 6455 section 5.2: server frames are unmasked; 64-bit length for >= 64 KiB.
    return struct.pack("!BBQ", (0x80 if fin else 0) | opcode, 127, len(payload)) + payload


@pytest.fixture
async def fragmenting() -> AsyncIterator[FragmentingRelay]:
    """Start a :class:`FragmentingRelay` on 127.0.0.1."""
    relay = FragmentingRelay()

    async def handle(request: web.Request) -> web.WebSocketResponse:
        action = request.query.get("sb-hc-action")
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        if action == "listen":
            address = f"{relay.base}/$hc/{HC}?sb-hc-action=request&sb-hc-id=big-1"
            await ws.send_str(json.dumps({"request": {"address": address, "id": "big-1"}}))
            async for _ in ws:
                pass
            return ws
        command = {
            "id": "big-1",
            "requestTarget": f"/{HC}/upload",
            "method": "PUT",
            "requestHeaders": {"Content-Type": "application/octet-stream"},
            "body": True,
        }
        await ws.send_str(json.dumps({"request": command}))
        assert request.transport is not None
        chunk = b"z" * (64 * 1024)
        for index in range(LIMIT // len(chunk) + 1):
            opcode = 0x2 if index == 0 else 0x0
            request.transport.write(_server_frame(opcode, chunk, fin=False))
            relay.frames_sent += 1
        async with asyncio.timeout(60):
            answer = await ws.receive()
            await relay.answers.put(answer.data)
            if json.loads(answer.data)["response"]["body"]:
                await relay.answers.put((await ws.receive()).data)
            closing = await ws.receive()
            await relay.close_codes.put(closing.data if closing.type is WSMsgType.CLOSE else None)
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    relay.port = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    try:
        yield relay
    finally:
        await runner.cleanup()


async def test_413_comes_as_soon_as_a_fragmented_body_crosses_the_limit(
    fragmenting: FragmentingRelay,
) -> None:
    upstream = Upstream()

    async def tokens() -> tuple[str, float]:
        return "SharedAccessSignature sr=x&sig=y&se=4102444800&skn=k", 4102444800.0

    settings = listener_settings(fragmenting.base, max_request_body=LIMIT)
    async with RelayListener(
        settings, token_provider=tokens, request_handler=upstream, stream_handler=Streams()
    ) as listener:
        async with asyncio.timeout(60):
            answer = await fragmenting.answers.get()
            body = await fragmenting.answers.get()
            close_code = await fragmenting.close_codes.get()
        assert isinstance(answer, str)
        response = json.loads(answer)["response"]
        assert response["requestId"] == "big-1"
        assert response["statusCode"] == 413
        assert response["responseHeaders"]["x-gateway-reason"] == "body_too_large"
        assert isinstance(body, bytes)
        assert json.loads(body)["error"] == "body_too_large"
        assert close_code == 1009  # RFC 6455 section 7.4.1: message too big
        assert fragmenting.frames_sent == 3  # the body's final frame was never sent
        assert upstream.bodies == []
        await wait_until(lambda: listener.metrics.requests["body_too_large"] == 1)
