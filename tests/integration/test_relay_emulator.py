"""The local relay emulator, driven over real loopback sockets by a minimal test listener.

The listener here is a test double written on aiohttp's WebSocket client and the protocol core
(``gateway.hybridconnection``); the production listener lives elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from yarl import URL

from gateway.devkit.relay_emulator import (
    TIMEOUT_TEXT,
    HybridConnectionSpec,
    RelayEmulator,
    SasRule,
)
from gateway.hybridconnection.addresses import RelayEndpoint, RendezvousPolicy, reject_url
from gateway.hybridconnection.framing import (
    CONTROL_CHANNEL_BODY_LIMIT,
    AcceptReceived,
    Event,
    ListenerChannel,
    Opcode,
    ProtocolViolation,
    RendezvousRequested,
    RequestReceived,
    ResponseRoute,
    SocketKind,
    choose_response_route,
    response_frames,
)
from gateway.hybridconnection.messages import AcceptCommand, RequestCommand, ResponseCommand
from gateway.hybridconnection.sas import create_token, resource_uri

HC = "hyco"
KEY = "test-key-0123456789"
# Upper bound for any single wait in these tests (a process start on a busy machine included);
# each wait ends as soon as its answer comes, so the bound costs nothing when all is well.
STEP = 60.0

Reply = tuple[int, dict[str, str], bytes | None]
Handler = Callable[[RequestCommand, bytes | None], Awaitable[Reply]]


async def echo(request: RequestCommand, body: bytes | None) -> Reply:
    headers = {"Content-Type": "application/octet-stream", "X-Target": request.request_target}
    return 200, headers, body


@dataclass
class ListenerDouble:
    """A minimal Hybrid Connection listener: control channel, rendezvous, accept/reject."""

    relay: RelayEmulator
    session: aiohttp.ClientSession
    handler: Handler = echo
    reject_with: tuple[int, str] | None = None
    token: str | None = None
    listener_id: str | None = None
    requests: list[tuple[str, RequestCommand, bytes | None]] = field(default_factory=list)
    accepts: list[AcceptCommand] = field(default_factory=list)
    violations: list[ProtocolViolation] = field(default_factory=list)
    stream_close_codes: list[int | None] = field(default_factory=list)
    close_code: int | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    stream_closed: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def connect(self) -> aiohttp.ClientWebSocketResponse:
        url = f"{self.relay.ws_base}/$hc/{HC}?sb-hc-action=listen"
        if self.listener_id:
            url += f"&sb-hc-id={self.listener_id}"
        token = self.token or self.relay.token(HC)
        ws = await self.session.ws_connect(
            url, headers={"ServiceBusAuthorization": token}, compress=0, max_msg_size=0
        )
        self._spawn(self._control(ws))
        return ws

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _policy(self) -> RendezvousPolicy:
        return RendezvousPolicy(
            entity_path=HC, dev_endpoint=RelayEndpoint.parse(self.relay.ws_base)
        )

    async def _control(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        channel = ListenerChannel(SocketKind.CONTROL, check_address=self._policy().check)
        try:
            async for message in ws:
                if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    break
                for event in channel.receive_message(message.data):
                    self._dispatch(ws, event)
        finally:
            self.close_code = ws.close_code
            self.closed.set()

    def _dispatch(self, ws: aiohttp.ClientWebSocketResponse, event: Event) -> None:
        if isinstance(event, RequestReceived):
            self.requests.append(("control", event.command, event.body))
            self._spawn(self._answer_on_control(ws, event))
        elif isinstance(event, RendezvousRequested):
            self._spawn(self._serve_rendezvous(event.command.address))
        elif isinstance(event, AcceptReceived):
            self.accepts.append(event.command)
            self._spawn(self._accept(event.command))
        elif isinstance(event, ProtocolViolation):
            self.violations.append(event)

    async def _answer_on_control(
        self, ws: aiohttp.ClientWebSocketResponse, event: RequestReceived
    ) -> None:
        status, headers, body = await self.handler(event.command, event.body)
        response = ResponseCommand(event.command.id, status, body is not None, None, headers)
        route = choose_response_route(len(body or b""), arrived_on=SocketKind.CONTROL)
        if route is ResponseRoute.CONTROL:
            async with self._lock:  # section 5.4: JSON and body back to back
                await send_frames(ws, response, body)
            return
        assert event.command.address is not None
        async with self.session.ws_connect(event.command.address, compress=0) as rendezvous:
            await send_frames(rendezvous, response, body)
            await rendezvous.receive(timeout=STEP)  # the relay closes after the response

    async def _serve_rendezvous(self, address: str) -> None:
        channel = ListenerChannel(SocketKind.RENDEZVOUS, check_address=self._policy().check)
        async with self.session.ws_connect(address, compress=0, max_msg_size=0) as ws:
            async for message in ws:
                if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    break
                for event in channel.receive_message(message.data):
                    if isinstance(event, RequestReceived):
                        self.requests.append(("rendezvous", event.command, event.body))
                        status, headers, body = await self.handler(event.command, event.body)
                        response = ResponseCommand(
                            event.command.id, status, body is not None, None, headers
                        )
                        await send_frames(ws, response, body)

    async def _accept(self, command: AcceptCommand) -> None:
        if self.reject_with is not None:
            code, text = self.reject_with
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await self.session.ws_connect(reject_url(command.address, code, text))
            assert refused.value.status == 410
            return
        offered = command.connect_headers.get("Sec-WebSocket-Protocol", "")
        protocols = [offered.split(",")[0].strip()] if offered else []
        async with self.session.ws_connect(command.address, protocols=protocols) as ws:
            async for message in ws:  # echo, uppercasing text so the test sees a round trip
                if message.type is aiohttp.WSMsgType.TEXT:
                    await ws.send_str(message.data.upper())
                elif message.type is aiohttp.WSMsgType.BINARY:
                    await ws.send_bytes(message.data[::-1])
            self.stream_close_codes.append(ws.close_code)
            self.stream_closed.set()


async def send_frames(
    ws: aiohttp.ClientWebSocketResponse, response: ResponseCommand, body: bytes | None
) -> None:
    for frame in response_frames(response, body):
        if frame.opcode is Opcode.TEXT:
            await ws.send_str(frame.payload.decode())
        else:
            await ws.send_bytes(frame.payload)


def make_relay(**options: Any) -> RelayEmulator:
    return RelayEmulator(
        [
            HybridConnectionSpec(HC),
            HybridConnectionSpec("open", requires_client_authorization=False),
        ],
        [SasRule("root", KEY), SasRule("listen-only", KEY + "L", frozenset({"Listen"}))],
        seed=7,
        **options,
    )


@pytest.fixture
async def relay() -> AsyncIterator[RelayEmulator]:
    async with make_relay(response_timeout=STEP) as emulator:
        yield emulator


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=3 * STEP)
    async with aiohttp.ClientSession(timeout=timeout) as client:
        yield client


@contextlib.asynccontextmanager
async def listening(
    relay: RelayEmulator, session: aiohttp.ClientSession, count: int = 1, **options: Any
) -> AsyncIterator[list[ListenerDouble]]:
    listeners = [ListenerDouble(relay, session, **options) for _ in range(count)]
    sockets = []
    try:
        for listener in listeners:
            sockets.append(await listener.connect())
        async with asyncio.timeout(STEP):
            await relay.wait_for_listeners(HC, count)
        yield listeners
    finally:
        for ws in sockets:
            await ws.close()
        for listener in listeners:
            await listener.aclose()


def sender_headers(relay: RelayEmulator) -> dict[str, str]:
    return {"ServiceBusAuthorization": relay.token(HC)}


# --- HTTP senders --------------------------------------------------------------------------


async def test_small_request_travels_inline_and_is_echoed(
    relay: RelayEmulator, session: aiohttp.ClientSession
) -> None:
    async with listening(relay, session) as [listener]:
        url = f"{relay.http_base}/{HC}/orders/17"
        query = {"expand": "true", "sb-hc-token": relay.token(HC)}
        headers = {"X-Multi": "v1", "Connection": "keep-alive, X-Hop", "X-Hop": "secret"}
        async with session.post(url, params=query, data=b"hello", headers=headers) as response:
            assert response.status == 200
            assert await response.read() == b"hello"
            # Section 5.2: sb-hc-* removed from the target, which keeps the HC path.
            assert response.headers["X-Target"] == f"/{HC}/orders/17?expand=true"
            assert response.headers["Via"].endswith("1.1 127.0.0.1")
    [(route, command, body)] = listener.requests
    assert route == "control"
    assert body == b"hello"
    assert command.method == "POST"
    assert command.body is True
    forwarded = {name.lower() for name in command.request_headers}
    assert "x-multi" in forwarded
    assert forwarded.isdisjoint({"content-length", "connection", "x-hop"})
    # Choice (section 12.2): Host is kept, as Azure's own examples show it.
    assert command.request_headers["Host"] == f"127.0.0.1:{relay.port}"
    assert command.remote_endpoint is not None
    assert command.remote_endpoint.address == "127.0.0.1"


@pytest.mark.parametrize(
    ("raw_query", "target_query"),
    [
        # Section 5.2 (.NET live-test table): sb-hc-* with '=' removed, the rest byte for byte.
        ("?&&&", "?&&&"),
        ("?a=1&a=2&", "?a=1&a=2&"),
        ("?%2f%3a%3d%26", "?%2f%3a%3d%26"),
        ("?sb-hc-undefined", "?sb-hc-undefined"),
        ("?x=1&sb-hc-id=abc&y", "?x=1&y"),
        ("?sb-hc-whatever=1", ""),
    ],
)
async def test_query_reaches_the_listener_as_the_service_forwards_it(
    relay: RelayEmulator, session: aiohttp.ClientSession, raw_query: str, target_query: str
) -> None:
    async with listening(relay, session) as [listener]:
        url = URL(f"{relay.http_base}/{HC}/q{raw_query}", encoded=True)
        async with session.get(url, headers=sender_headers(relay)) as response:
            assert response.status == 200
    [(_, command, _)] = listener.requests
    assert command.request_target == f"/{HC}/q{target_query}"


async def test_service_bus_authorization_header_is_accepted_and_stripped(
    relay: RelayEmulator, session: aiohttp.ClientSession
) -> None:
    async with listening(relay, session) as [listener]:
        headers = {**sender_headers(relay), "Authorization": "Bearer app-level"}
        async with session.get(f"{relay.http_base}/{HC}", headers=headers) as response:
            assert response.status == 200
    [(_, command, body)] = listener.requests
    assert body is None
    assert command.body is False
    assert "ServiceBusAuthorization" not in command.request_headers
    # Section 5.2: Authorization passes untouched when another token form was used.
    assert command.request_headers["Authorization"] == "Bearer app-level"


async def test_inline_choice_counts_headers_plus_body(
    relay: RelayEmulator, session: aiohttp.ClientSession
) -> None:
    # Section 5.3: over 64 KB of headers plus body goes by rendezvous. A body of exactly 64 KiB
    # plus its headers is over; one that leaves room for them is inline.
    fits = os.urandom(CONTROL_CHANNEL_BODY_LIMIT - 4096)
    over = os.urandom(CONTROL_CHANNEL_BODY_LIMIT)
    async with listening(relay, session) as [listener]:
        url = f"{relay.http_base}/{HC}/upload"
        for payload in (fits, over):
            async with session.put(url, data=payload, headers=sender_headers(relay)) as response:
                assert response.status == 200
                assert await response.read() == payload
    assert [route for route, _, _ in listener.requests] == ["control", "rendezvous"]
    assert relay.deliveries["inline"] == 1
    assert relay.deliveries["rendezvous"] == 1


async def test_larger_than_64k_goes_over_rendezvous_both_ways(
    relay: RelayEmulator, session: aiohttp.ClientSession
) -> None:
    payload = os.urandom(CONTROL_CHANNEL_BODY_LIMIT + 1)
    async with listening(relay, session) as [listener]:
        url = f"{relay.http_base}/{HC}/upload?x=1"
        async with session.post(url, data=payload, headers=sender_headers(relay)) as response:
            assert response.status == 200
            assert await response.read() == payload
            assert response.headers["X-Target"] == f"/{HC}/upload?x=1"
    [(route, command, body)] = listener.requests
    assert route == "rendezvous"
    assert body == payload
    assert command.address is None


async def test_large_response_to_small_request_uses_the_request_address(
    relay: RelayEmulator, session: aiohttp.ClientSession
) -> None:
    big = os.urandom(200_000)

    async def large(request: RequestCommand, body: bytes | None) -> Reply:
        return 201, {"Content-Type": "application/x-big"}, big

    async with listening(relay, session, handler=large):
        url = f"{relay.http_base}/{HC}/big"
        async with session.get(url, headers=sender_headers(relay)) as response:
            assert response.status == 201
            assert response.headers["Content-Type"] == "application/x-big"
            assert await response.read() == big


async def test_chunked_upload_goes_over_rendezvous(
    relay: RelayEmulator, session: aiohttp.ClientSession
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"part1-"
        yield b"part2"

    async with listening(relay, session) as [listener]:
        url = f"{relay.http_base}/{HC}/stream"
        async with session.post(url, data=chunks(), headers=sender_headers(relay)) as response:
            assert await response.read() == b"part1-part2"
    assert [route for route, _, _ in listener.requests] == ["rendezvous"]


async def test_empty_body_and_head(relay: RelayEmulator, session: aiohttp.ClientSession) -> None:
    async def fixed(request: RequestCommand, body: bytes | None) -> Reply:
        return 200, {"X-Seen-Body": str(body is not None)}, b"content"

    async with listening(relay, session, handler=fixed):
        url = f"{relay.http_base}/{HC}"
        async with session.post(url, data=b"", headers=sender_headers(relay)) as response:
            assert response.headers["X-Seen-Body"] == "False"
            assert await response.read() == b"content"
        async with session.head(url, headers=sender_headers(relay)) as response:
            assert response.status == 200
            assert await response.read() == b""


async def test_listener_status_and_reason_reach_the_sender(
    relay: RelayEmulator, session: aiohttp.ClientSession
) -> None:
    async def teapot(request: RequestCommand, body: bytes | None) -> Reply:
        return 418, {}, None

    url = f"{relay.http_base}/{HC}"
    async with (
        listening(relay, session, handler=teapot),
        session.get(url, headers=sender_headers(relay)) as r,
    ):
        assert r.status == 418
        assert await r.read() == b""


@pytest.mark.parametrize(
    ("token_for", "expected"),
    [
        ("wrong-key", 401),
        ("expired", 401),
        ("other-hc", 403),
        ("listen-only", 403),
        ("none", 401),
    ],
)
async def test_http_sender_authorization(
    relay: RelayEmulator, session: aiohttp.ClientSession, token_for: str, expected: int
) -> None:
    host = "127.0.0.1"
    tokens = {
        "wrong-key": create_token(resource_uri(host, HC), "root", "not-the-key"),
        "expired": create_token(resource_uri(host, HC), "root", KEY, expiry=1_000),
        "other-hc": create_token(resource_uri(host, "open"), "root", KEY),
        "listen-only": create_token(resource_uri(host, HC), "listen-only", KEY + "L"),
    }
    headers = {"ServiceBusAuthorization": tokens[token_for]} if token_for in tokens else {}
    async with (
        listening(relay, session) as [listener],
        session.get(f"{relay.http_base}/{HC}", headers=headers) as response,
    ):
        assert response.status == expected
        assert "Via" not in response.headers
    assert listener.requests == []


async def test_anonymous_hc_and_no_listener_and_unknown_hc(
    relay: RelayEmulator, session: aiohttp.ClientSession
) -> None:
    async with session.get(f"{relay.http_base}/open/x") as response:
        assert response.status == 502  # HC allows anonymous senders, but nobody listens
    async with session.get(f"{relay.http_base}/nope/x") as response:
        assert response.status == 404
    async with session.get(f"{relay.http_base}/$hc/{HC}?sb-hc-action=connect") as response:
        assert response.status == 400


async def test_requests_spread_over_listeners(
    relay: RelayEmulator, session: aiohttp.ClientSession
) -> None:
    async with listening(relay, session, count=3) as listeners:
        for index in range(30):
            url = f"{relay.http_base}/{HC}/{index}"
            async with session.get(url, headers=sender_headers(relay)) as response:
                assert response.status == 200
    counts = [len(listener.requests) for listener in listeners]
    assert sum(counts) == 30
    assert all(count > 0 for count in counts), counts


async def test_targeting_header_restricts_the_choice(
    relay: RelayEmulator, session: aiohttp.ClientSession
) -> None:
    first = ListenerDouble(relay, session, listener_id="alpha")
    second = ListenerDouble(relay, session, listener_id="beta")
    ws1, ws2 = await first.connect(), await second.connect()
    try:
        async with asyncio.timeout(STEP):
            await relay.wait_for_listeners(HC, 2)
        headers = {**sender_headers(relay), "Microsoft-Relay-AllowedListeners": "beta"}
        for _ in range(5):
            async with session.get(f"{relay.http_base}/{HC}", headers=headers) as response:
                assert response.status == 200
        headers["Microsoft-Relay-AllowedListeners"] = "gamma"
        async with session.get(f"{relay.http_base}/{HC}", headers=headers) as response:
            assert response.status == 502
    finally:
        await ws1.close()
        await ws2.close()
        await first.aclose()
        await second.aclose()
    assert (len(first.requests), len(second.requests)) == (0, 5)


async def test_missing_response_becomes_504_after_the_deadline(
    session: aiohttp.ClientSession,
) -> None:
    never = asyncio.Event()

    async def silent(request: RequestCommand, body: bytes | None) -> Reply:
        await never.wait()
        raise AssertionError("unreachable")

    async with (
        make_relay(response_timeout=0.3) as relay,
        listening(relay, session, handler=silent),
        session.get(f"{relay.http_base}/{HC}", headers=sender_headers(relay)) as r,
    ):
        assert r.status == 504
        text = await r.text()
        assert text.startswith(TIMEOUT_TEXT)
        # Section 3.1: service errors carry a tracking id for support.
        assert " TrackingId:" in text
        assert " TrackingId:" in (r.reason or "")


async def test_rendezvous_address_is_single_use_and_expires(
    session: aiohttp.ClientSession,
) -> None:
    seen: list[str] = []

    async def remember(request: RequestCommand, body: bytes | None) -> Reply:
        assert request.address is not None
        seen.append(request.address)
        return 200, {}, os.urandom(CONTROL_CHANNEL_BODY_LIMIT + 10)  # forces the rendezvous

    async with (
        make_relay(rendezvous_ttl=STEP) as relay,
        listening(relay, session, handler=remember),
    ):
        async with session.get(f"{relay.http_base}/{HC}", headers=sender_headers(relay)) as r:
            assert r.status == 200
        with pytest.raises(aiohttp.WSServerHandshakeError) as reused:
            await session.ws_connect(seen[0])
        assert reused.value.status == 403

    async def slow(request: RequestCommand, body: bytes | None) -> Reply:
        await asyncio.sleep(0.3)  # longer than the rendezvous lifetime below
        return 200, {}, os.urandom(CONTROL_CHANNEL_BODY_LIMIT + 10)

    async with (
        make_relay(rendezvous_ttl=0.1, response_timeout=1.0) as relay,
        listening(relay, session, handler=slow),
        session.get(f"{relay.http_base}/{HC}", headers=sender_headers(relay)) as r,
    ):
        assert r.status == 504  # the listener's late rendezvous was refused


# --- WebSocket senders ---------------------------------------------------------------------


async def test_websocket_sender_is_accepted_and_spliced(
    relay: RelayEmulator, session: aiohttp.ClientSession
) -> None:
    async with listening(relay, session) as [listener]:
        url = f"{relay.ws_base}/$hc/{HC}/chat?room=1&sb-hc-action=connect"
        async with session.ws_connect(
            url, headers=sender_headers(relay), protocols=["chat", "superchat"]
        ) as ws:
            assert ws.protocol == "chat"
            await ws.send_str("hello")
            assert (await ws.receive(timeout=STEP)).data == "HELLO"
            await ws.send_bytes(b"\x01\x02\x03")
            assert (await ws.receive(timeout=STEP)).data == b"\x03\x02\x01"
        async with asyncio.timeout(STEP):
            await listener.stream_closed.wait()
    [accept] = listener.accepts
    assert "/$hc/hyco/chat?room=1&sb-hc-action=accept" in accept.address
    assert "ServiceBusAuthorization" not in accept.connect_headers
    assert {"Sec-WebSocket-Key", "Sec-WebSocket-Version"} <= set(accept.connect_headers)
    # Section 8.3: the sender closed, so the listener's leg saw 1001.
    assert listener.stream_close_codes == [1001]


async def test_websocket_sender_sees_the_listeners_rejection(
    relay: RelayEmulator, session: aiohttp.ClientSession
) -> None:
    async with listening(relay, session, reject_with=(403, "not on the allow-list")) as [listener]:
        url = f"{relay.ws_base}/$hc/{HC}?sb-hc-action=connect"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(url, headers=sender_headers(relay))
        assert refused.value.status == 403
        # aiohttp's WebSocket client hides the reason phrase; a plain upgrade request shows it.
        upgrade = {
            **sender_headers(relay),
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        }
        async with session.get(url, headers=upgrade) as response:
            assert response.status == 403
            assert response.reason == "not on the allow-list"
    assert len(listener.accepts) == 2


async def test_websocket_sender_without_listener_or_token(
    relay: RelayEmulator, session: aiohttp.ClientSession
) -> None:
    url = f"{relay.ws_base}/$hc/{HC}?sb-hc-action=connect"
    with pytest.raises(aiohttp.WSServerHandshakeError) as nobody:
        await session.ws_connect(url, headers=sender_headers(relay))
    assert nobody.value.status == 404
    with pytest.raises(aiohttp.WSServerHandshakeError) as anonymous:
        await session.ws_connect(url)
    assert anonymous.value.status == 401


# --- listeners, tokens and fault knobs ------------------------------------------------------


async def test_listen_with_wrong_sas_is_401_and_query_token_works(
    relay: RelayEmulator, session: aiohttp.ClientSession
) -> None:
    bad = create_token(resource_uri("127.0.0.1", HC), "root", "wrong")
    url = f"{relay.ws_base}/$hc/{HC}?sb-hc-action=listen"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await session.ws_connect(url, headers={"ServiceBusAuthorization": bad})
    assert refused.value.status == 401
    with pytest.raises(aiohttp.WSServerHandshakeError) as unknown:
        await session.ws_connect(f"{relay.ws_base}/$hc/nope?sb-hc-action=listen")
    assert unknown.value.status == 404
    good = relay.token(HC)
    async with session.ws_connect(url, params={"sb-hc-token": good}):
        async with asyncio.timeout(STEP):
            await relay.wait_for_listeners(HC, 1)


class ManualClock:
    """Wall-clock time that moves only when the test moves it: tokens expire on cue, however
    long a busy machine takes to open a socket."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def test_expired_token_closes_the_control_channel_with_1008(
    session: aiohttp.ClientSession,
) -> None:
    clock = ManualClock()
    async with make_relay(response_timeout=STEP, clock=clock) as relay:
        url = f"{relay.ws_base}/$hc/{HC}?sb-hc-action=listen"
        token = {"ServiceBusAuthorization": relay.token(HC, ttl=60)}
        async with session.ws_connect(url, headers=token, autoping=False) as ws:
            await ws.ping()
            assert (await ws.receive(timeout=STEP)).type is aiohttp.WSMsgType.PONG
            clock.now += 61
            # Any frame wakes the relay's read of the channel, which then finds the token expired.
            await ws.ping()
            message = await ws.receive(timeout=STEP)
            if message.type is aiohttp.WSMsgType.PONG:
                message = await ws.receive(timeout=STEP)
            assert message.type is aiohttp.WSMsgType.CLOSE
            assert message.data == 1008


async def test_renew_token_extends_and_a_bad_renewal_closes(
    session: aiohttp.ClientSession,
) -> None:
    clock = ManualClock()
    async with make_relay(response_timeout=STEP, clock=clock) as relay:
        url = f"{relay.ws_base}/$hc/{HC}?sb-hc-action=listen"
        short = {"ServiceBusAuthorization": relay.token(HC, ttl=10)}
        async with session.ws_connect(url, headers=short, autoping=False) as ws:
            renewal = json.dumps({"renewToken": {"token": relay.token(HC, ttl=60)}})
            await ws.send_str(renewal)
            clock.now += 11  # past the first token's expiry, inside the renewed one's
            # Two round trips: the relay looks at the token's expiry before reading the second
            # ping, so its answer proves the renewed token kept the channel open.
            for _ in range(2):
                await ws.ping()
                assert (await ws.receive(timeout=STEP)).type is aiohttp.WSMsgType.PONG
            await ws.send_str(json.dumps({"renewToken": {"token": "SharedAccessSignature sr=x"}}))
            message = await ws.receive(timeout=STEP)
            assert message.type is aiohttp.WSMsgType.CLOSE
            assert message.data == 1008


async def test_fault_knobs(relay: RelayEmulator, session: aiohttp.ClientSession) -> None:
    url = f"{relay.ws_base}/$hc/{HC}?sb-hc-action=listen"
    relay.refuse_listens(404)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await session.ws_connect(url, headers=sender_headers(relay))
    assert refused.value.status == 404
    relay.refuse_listens(None)

    async with listening(relay, session) as [listener]:
        assert await relay.drop_listeners(HC) == 1
        async with asyncio.timeout(STEP):
            await listener.closed.wait()
            await relay.wait_for_listeners(HC, 0)
        assert listener.close_code == 1006  # abnormal closure: no close frame was sent

    async with listening(relay, session) as [listener]:
        assert await relay.close_listeners(1011, "NameRenewalFailed") == 1
        async with asyncio.timeout(STEP):
            await listener.closed.wait()
        assert listener.close_code == 1011

    async with listening(relay, session) as [listener]:
        await relay.expire_tokens()
        async with asyncio.timeout(STEP):
            await listener.closed.wait()
        assert listener.close_code == 1008


async def test_blackhole_and_delay(session: aiohttp.ClientSession) -> None:
    async with make_relay(response_timeout=0.5) as relay, listening(relay, session) as [listener]:
        relay.set_blackhole(True)
        async with session.get(f"{relay.http_base}/{HC}", headers=sender_headers(relay)) as r:
            assert r.status == 504
        assert listener.requests == []
        relay.set_blackhole(False)
        relay.set_delay(0.2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with session.get(f"{relay.http_base}/{HC}", headers=sender_headers(relay)) as r:
            assert r.status == 200
        assert loop.time() - started >= 0.2


async def test_listener_quota(session: aiohttp.ClientSession) -> None:
    async with make_relay(max_listeners=2) as relay, listening(relay, session, count=2):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(
                f"{relay.ws_base}/$hc/{HC}?sb-hc-action=listen", headers=sender_headers(relay)
            )
        assert refused.value.status == 403


async def test_tls(tmp_path: Path) -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    connector = aiohttp.TCPConnector(ssl=client_context)
    async with (
        make_relay(ssl_context=server_context) as relay,
        aiohttp.ClientSession(connector=connector) as tls_session,
        listening(relay, tls_session),
    ):
        assert relay.ws_base.startswith("wss://")
        url = f"{relay.http_base}/{HC}/secure"
        async with tls_session.post(url, data=b"over tls", headers=sender_headers(relay)) as r:
            assert await r.read() == b"over tls"
        # A client that does not trust the test CA cannot connect.
        async with aiohttp.ClientSession() as untrusting:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await untrusting.get(url)


# --- command line ---------------------------------------------------------------------------


async def test_cli_serves_until_terminated(session: aiohttp.ClientSession) -> None:
    command = ["-m", "gateway", "dev", "relay", "--listen", "127.0.0.1:0", "--hc", HC]
    command += ["--key-name", "root", "--key", KEY]
    process = await asyncio.create_subprocess_exec(
        sys.executable, *command, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), STEP)).decode()
        base = line.split()[2]
        assert base.startswith("ws://127.0.0.1:")
        port = int(base.rsplit(":", 1)[1])
        token = create_token(resource_uri("127.0.0.1", HC), "root", KEY)
        url = f"{base}/$hc/{HC}?sb-hc-action=listen"
        async with (
            session.ws_connect(url, headers={"ServiceBusAuthorization": token}),
            session.get(
                f"http://127.0.0.1:{port}/{HC}", headers={"ServiceBusAuthorization": "x"}
            ) as response,
        ):
            assert response.status == 401
    finally:
        if process.returncode is None:
            process.terminate()
        code = await asyncio.wait_for(process.wait(), STEP)
    assert code == 0
