"""Handlers, token providers and senders used by the listener integration tests."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from gateway.devkit.relay_emulator import RelayEmulator
from gateway.hybridconnection.sas import parse_token
from gateway.relay.handlers import (
    AcceptInfo,
    AcceptStream,
    RejectStream,
    RelayedRequest,
    RelayedResponse,
    StreamDecision,
    StreamSocket,
)
from gateway.relay.listener import RelayListener
from gateway.relay.settings import ListenerSettings

HC = "hc-agent-1"
KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG="

Handler = Callable[[RelayedRequest], Awaitable[RelayedResponse]]


@dataclass
class Tokens:
    """A token provider backed by the emulator; counts how often it was asked."""

    relay: RelayEmulator
    ttl: int = 3600
    calls: int = 0

    async def __call__(self) -> tuple[str, float]:
        """Mint a token valid for ``ttl`` seconds."""
        self.calls += 1
        token = self.relay.token(HC, ttl=self.ttl)
        return token, float(parse_token(token).expiry)


async def static_token() -> tuple[str, float]:
    """A token provider for relays that do not check tokens (the scripted relay)."""
    return "SharedAccessSignature sr=x&sig=y&se=4102444800&skn=z", 4102444800.0


async def echo_handler(request: RelayedRequest) -> RelayedResponse:
    """Answers with what it got, so tests can see the request as the handler saw it."""
    headers = (
        ("Content-Type", "application/octet-stream"),
        ("X-Method", request.method),
        ("X-Target", request.target),
        ("X-Body-Length", str(len(request.body))),
    )
    return RelayedResponse(200, "OK", headers, request.body)


@dataclass
class Streams:
    """A stream handler: accepts (echoing messages) unless ``reject`` is set."""

    reject: tuple[int, str] | None = None
    seen: list[AcceptInfo] = field(default_factory=list)

    async def decide(self, info: AcceptInfo) -> StreamDecision:
        """Record the accept and answer per ``reject``."""
        self.seen.append(info)
        if self.reject is not None:
            return RejectStream(*self.reject)
        offered = dict((k.lower(), v) for k, v in info.connect_headers).get(
            "sec-websocket-protocol"
        )
        return AcceptStream(subprotocol=offered.split(",")[0].strip() if offered else None)

    async def serve(self, info: AcceptInfo, socket: StreamSocket) -> None:
        """Echo every message, upper-casing text, until the sender closes."""
        while (message := await socket.receive()) is not None:
            await socket.send(message.upper() if isinstance(message, str) else message)


def listener_settings(endpoint: str, **overrides: object) -> ListenerSettings:
    """Settings for a listener on a local relay at ``endpoint`` with fast timings for tests."""
    base = ListenerSettings(
        endpoint=endpoint,
        hc_path=HC,
        connections=1,
        ping_interval=5.0,
        ping_timeout=2.0,
        handshake_timeout=5.0,
        request_timeout=5.0,
        shutdown_grace=2.0,
        allow_insecure_dev_endpoint=endpoint.startswith("ws://"),
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


async def wait_until(predicate: Callable[[], bool], within: float = 60.0) -> None:
    """Poll ``predicate`` until true; fail the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def send_http(
    session: aiohttp.ClientSession,
    relay: RelayEmulator,
    path: str,
    *,
    method: str = "GET",
    data: bytes | AsyncIterator[bytes] | None = None,
    within: float = 60.0,
) -> tuple[int, str, dict[str, str], bytes]:
    """Send an HTTP request through the relay as the SaaS would; return status, reason,
    headers and body."""
    url = f"{relay.http_base}/{HC}{path}"
    headers = {"ServiceBusAuthorization": relay.token(HC)}
    async with session.request(
        method, url, data=data, headers=headers, timeout=aiohttp.ClientTimeout(total=within)
    ) as response:
        body = await response.read()
        return response.status, response.reason or "", dict(response.headers), body


def start_listener(
    relay: RelayEmulator,
    handler: Handler = echo_handler,
    streams: Streams | None = None,
    **overrides: object,
) -> RelayListener:
    """A listener (not yet started) with the emulator's tokens."""
    return RelayListener(
        listener_settings(relay.ws_base, **overrides),
        token_provider=Tokens(relay),
        request_handler=handler,
        stream_handler=streams or Streams(),
    )
