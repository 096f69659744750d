"""A local Azure Relay Hybrid Connections service for tests, demos and ``gateway dev relay``.

Speaks the real wire protocol (protocol notes ``hybrid-connections-protocol.md``, cited as
"section N"; the emulator checklist is section 8) on plain ``ws://``/``http://`` or with TLS:

* listener control channels: ``/$hc/{path}?sb-hc-action=listen`` (SAS token with Listen right);
* WebSocket senders: ``/$hc/{path}[/suffix]?...&sb-hc-action=connect`` (or no action);
* HTTP senders: any method on ``/{path}[/suffix][?query]``;
* rendezvous sockets: the single-use, expiring addresses handed out in ``accept``/``request``.

Requests are spread at random over up to 25 listeners per HC; bodies up to 64 KiB travel on the
control channel, larger or chunked uploads over a rendezvous socket; responses missing the
deadline become 504. Fault knobs for tests are the public methods under "fault knobs".

Choices where the notes leave room (section 12) are marked ``Choice (section N)`` in comments.
Known simplification: aiohttp reassembles WebSocket messages, so a response body arrives here
whole and is then sent to the sender in one piece; the 60 s deadline therefore covers the
complete response rather than only its JSON (section 5.3's streaming case is not modelled).

Never used by production code: the gateway imports nothing from ``gateway.devkit``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import logging
import random
import secrets
import signal
import ssl
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from aiohttp import WSCloseCode, WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.hybridconnection.connection import (
    CONNECTION_HEADERS,
    connection_tokens,
    fold_headers,
    split_query,
)
from gateway.hybridconnection.errors import TokenError, WrongResourceError
from gateway.hybridconnection.framing import (
    CONTROL_CHANNEL_BODY_LIMIT,
    ChannelLimits,
    Event,
    Frame,
    Opcode,
    ProtocolViolation,
    RelayChannel,
    ResponseReceived,
    SocketKind,
    TokenRenewalReceived,
    request_frames,
)
from gateway.hybridconnection.messages import (
    MAX_HEADER_METADATA,
    MAX_HEADERS,
    AcceptCommand,
    RemoteEndpoint,
    RendezvousRequestCommand,
    RequestCommand,
    encode_command,
    header_metadata_size,
)
from gateway.hybridconnection.sas import create_token, parse_token, resource_uri, validate_token

_log = logging.getLogger(__name__)

LISTEN: Final = "Listen"
SEND: Final = "Send"
# Section 7.
MAX_LISTENERS_PER_HC: Final = 25
RESPONSE_TIMEOUT: Final = 60.0
RENDEZVOUS_TTL: Final = 30.0
# Section 7: connections without traffic are dropped after about 4 minutes.
IDLE_TIMEOUT: Final = 240.0
DEFAULT_MAX_BODY: Final = 64 * 1024 * 1024
# Bound on outstanding rendezvous addresses, so a flood of senders cannot grow memory forever.
MAX_PENDING_RENDEZVOUS: Final = 10_000
# Bound on the journal of HTTP exchanges (RelayEmulator.exchanges): the oldest are forgotten.
MAX_JOURNAL: Final = 100_000
# hold_closes knob: a held close is answered after this long even if fewer commands came.
MAX_CLOSE_HOLD: Final = 60.0
# Choice (section 12.5): the status of a 26th listener is undocumented; .NET maps the service's
# answer to QuotaExceededException "MaximumListenersPerEndpoint".
QUOTA_TEXT: Final = "QuotaExceeded: MaximumListenersPerEndpoint"
TIMEOUT_TEXT: Final = (
    "The request was routed to the listener but the listener did not respond in the required time."
)

# Section 3.2: the service has added fields the protocol guide does not list (remoteEndpoint),
# and listeners must ignore members they do not know (.NET and Java do); with unknown_fields
# every accept and request carries this one, an object of mixed values, so a listener that
# refuses (or chokes on) an unknown member fails here rather than on the service's next field.
UNKNOWN_FIELD: Final = b'"emulatorUnknownField":{"list":[1,true,null,"x"],"nested":{"n":1.5}}'

_MID_MESSAGE_PING: Final = b"emulator"
# What a listener appends to an accept address to reject (section 4; the unprefixed pair is
# what hyco-ws' and hyco-https' reject path sends, section 8.2).
_REJECT_KEYS: Final = frozenset(
    {"sb-hc-statusCode", "sb-hc-statusDescription", "statusCode", "statusDescription"}
)

_TARGETING: Final = frozenset(
    {"microsoft-relay-allowedlisteners", "microsoft-relay-disallowedlisteners"}
)
_SB_AUTH: Final = "ServiceBusAuthorization"


@dataclass(frozen=True, slots=True)
class SasRule:
    """A shared access policy: rule name, key string and its rights (``Listen``, ``Send``)."""

    name: str
    key: str
    rights: frozenset[str] = frozenset({LISTEN, SEND})


@dataclass(frozen=True, slots=True)
class HybridConnectionSpec:
    """One Hybrid Connection entity. ``requires_client_authorization`` off = anonymous senders."""

    path: str
    requires_client_authorization: bool = True


@dataclass(eq=False, slots=True)
class RelayedExchange:
    """What became of one HTTP sender's request inside the relay (:attr:`RelayEmulator.exchanges`).

    ``target`` is the request target the relay relays (path and application query, no
    ``sb-hc-*`` parameter); ``request_id`` the id of its ``request`` command (the one listeners
    log), once it was routed. ``listener`` is the id of the listener it was routed to, and
    ``delivered`` says whether the request (or its rendezvous-only form) was handed to that
    listener. ``outcome``: ``pending`` while the relay holds it; then ``answered`` (the listener's
    response went to the sender), ``refused`` (the relay's own 4xx or 503 before routing),
    ``no_listener``, ``timeout`` (routed, no response before the deadline: the 504 of section
    5.1), ``listener_lost`` (its socket went before a complete response: 502), ``cut`` (the relay
    stopped while it held the request, so the sender's connection was closed without an answer)
    or ``sender_gone``. ``status`` is what the relay answered the sender with, if anything.
    """

    target: str
    request_id: str | None = None
    listener: str | None = None
    delivered: bool = False
    outcome: str = "pending"
    status: int | None = None


# --- internal state ------------------------------------------------------------------------


@dataclass(eq=False)
class _Pending:
    id: str
    method: str
    future: asyncio.Future[ResponseReceived]
    # Section 5.3: whether the control channel carried the request, so may carry its answer; a
    # rendezvous-delivered request is answered on its rendezvous socket only (the service drops
    # a response to it on the control channel: no sender gets it).
    on_control: bool = True


@dataclass(eq=False)
class _Listener:
    hc: str
    id: str
    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    token_expiry: float
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: dict[str, _Pending] = field(default_factory=dict)
    # Loop time of the last frame either way (section 7: idle connections are dropped).
    last_activity: float = 0.0
    # hold_closes knob: how many more commands go to this listener although its close frame has
    # been read (0: its close is not held), and the event that ends the hold.
    held_for: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True, slots=True)
class _Rejected:
    status: int
    description: str


@dataclass(frozen=True, slots=True)
class _Accepted:
    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    protocol: str | None
    # Resolved with the close code the listener's leg gets once the splice is over.
    done: asyncio.Future[int]


@dataclass(eq=False)
class _Rendezvous:
    hc: str
    kind: str  # "accept" or "request"
    expires: float  # loop time
    # request rendezvous: the pending request, and what to deliver if it was not sent inline
    pending: _Pending | None = None
    deliver: tuple[RequestCommand, bytes | None] | None = None
    # accept rendezvous: resolved when the listener accepts or rejects
    outcome: asyncio.Future[_Accepted | _Rejected] | None = None
    # request rendezvous: the sender's connection, for routing its later requests (section 5.3)
    sender: asyncio.BaseTransport | None = None
    # request rendezvous: deliver the request's JSON without the unknown_fields member
    as_given: bool = False
    # The address as handed out (section 1: listeners use it verbatim).
    address: str = ""


@dataclass(eq=False)
class _Reusable:
    """An open request rendezvous socket that later requests of its sender's connection use."""

    ws: web.WebSocketResponse
    # Not isinstance-checked anywhere: uvloop's transports do not derive from asyncio's.
    transport: asyncio.Transport | None
    pending: dict[str, _Pending] = field(default_factory=dict)
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class RelayEmulator:
    """The local relay. Use as ``async with RelayEmulator(...) as relay:`` (ephemeral port).

    ``hybrid_connections`` are HC paths or :class:`HybridConnectionSpec`; ``rules`` the SAS
    policies valid for every HC. ``namespace`` is the host name tokens must name and ``Via``
    carries; without it the host the client connected to (its ``Host`` header) is used, which is
    what node's ``createRelayToken`` signs for a ``ws://127.0.0.1:PORT`` URI (section 10).

    Like the service: ``rendezvous_host`` serves rendezvous addresses on another host (and port)
    than the namespace, as Azure's shared service nodes do (section 1), and only there; a
    control channel with no traffic either way for ``idle_timeout`` seconds is dropped without a
    close frame (section 7, about 4 minutes); with ``rendezvous_reuse`` a sender's later requests
    on the same connection go over its open request rendezvous socket (section 5.3); with
    ``fragment_bodies`` every request body goes out as one binary message cut into several
    frames at random offsets (section 3.2 allows it, so a listener must reassemble); with
    ``unknown_fields`` every ``accept`` and ``request`` carries a member no listener knows
    (:data:`UNKNOWN_FIELD`: the service adds fields, section 3.2); every
    service error carries a tracking id in its reason (section 3.1). The fault knobs are also
    reachable over HTTP on ``/$admin/...`` (see :meth:`_admin`) and from ``gateway dev relay``.
    """

    def __init__(
        self,
        hybrid_connections: Iterable[str | HybridConnectionSpec],
        rules: Iterable[SasRule],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        namespace: str | None = None,
        response_timeout: float = RESPONSE_TIMEOUT,
        rendezvous_ttl: float = RENDEZVOUS_TTL,
        max_listeners: int = MAX_LISTENERS_PER_HC,
        inline_body_limit: int = CONTROL_CHANNEL_BODY_LIMIT,
        max_body_size: int = DEFAULT_MAX_BODY,
        no_listener_status: int = 502,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
        rendezvous_host: str | None = None,
        idle_timeout: float | None = IDLE_TIMEOUT,
        rendezvous_reuse: bool = True,
        fragment_bodies: bool = True,
        unknown_fields: bool = True,
    ) -> None:
        specs = [
            hc if isinstance(hc, HybridConnectionSpec) else HybridConnectionSpec(hc)
            for hc in hybrid_connections
        ]
        self._hcs = {spec.path.strip("/").lower(): spec for spec in specs}
        if not self._hcs or any(not name for name in self._hcs):
            raise ValueError("at least one non-empty hybrid connection path is required")
        self._rules = {rule.name: rule for rule in rules}
        self._keys = {rule.name: rule.key for rule in self._rules.values()}
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._namespace = namespace
        self.response_timeout = response_timeout
        self.rendezvous_ttl = rendezvous_ttl
        self.max_listeners = max_listeners
        self._rendezvous_host = rendezvous_host
        self._rendezvous_port = 0
        self.idle_timeout = idle_timeout
        self.rendezvous_reuse = rendezvous_reuse
        self.fragment_bodies = fragment_bodies
        self.unknown_fields = unknown_fields
        self._reuse: dict[asyncio.BaseTransport, _Reusable] = {}
        # How requests reached listeners: inline, rendezvous (only form) or reused (section 5.3).
        self.deliveries: Counter[str] = Counter()
        # Every HTTP sender's request and what became of it, oldest first (bounded), so a test
        # can tell a request the relay itself dropped from one a listener never answered.
        self.exchanges: deque[RelayedExchange] = deque(maxlen=MAX_JOURNAL)
        # time.monotonic() at the start of each stop(): a sender's connection the relay closed
        # without reading its request can only have been closed after one of these.
        self.stop_instants: deque[float] = deque(maxlen=1000)
        self._stopping = False
        # Listeners whose control channel has gone, newest last (bounded), for expire_orphans().
        self._gone: deque[_Listener] = deque(maxlen=1000)
        # Control channels dropped for being idle (section 7).
        self.idle_drops = 0
        # Legs of accepted WebSocket streams dropped for being idle (section 7).
        self.stream_idle_drops = 0
        # Request rendezvous sockets this relay has closed (close handshake done or timed out).
        self.rendezvous_closed = 0
        self._inline_limit = inline_body_limit
        self._max_body = max_body_size
        self.no_listener_status = no_listener_status
        self._clock = clock
        self._random = random.Random(seed)  # noqa: S311 - load spreading, not security
        self._listeners: dict[str, list[_Listener]] = {name: [] for name in self._hcs}
        self._rendezvous: dict[str, _Rendezvous] = {}
        self._runner: web.AppRunner | None = None
        self._bound_port = 0
        self._listen_refusal: int | None = None
        # Close codes listeners sent when they closed their control channels, in order.
        self.listener_close_codes: list[int] = []
        # Sees every data message of every stream (what the relay could read); tests use it to
        # show that LDAP crosses the relay only inside the inner TLS.
        self.stream_tap: Callable[[bytes], None] | None = None
        self._listen_refusal_reason = ""
        self._delay = 0.0
        self._blackhole = False
        self._hold_closes = 0
        self._changed = asyncio.Condition()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start serving; afterwards :attr:`port` is the real port."""
        self._stopping = False
        app = web.Application(client_max_size=self._max_body)
        # '[\s\S]' rather than '.': a path with an encoded line break (%0A) decodes to one, and
        # must reach the listener (which refuses it) rather than end in the router's 404.
        app.router.add_route("*", r"/{tail:[\s\S]*}", self._dispatch)
        # Handlers are cancelled when their client goes away; a short shutdown timeout keeps
        # stop() from waiting out the 60 s response deadline of requests still in flight.
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, ssl_context=self._ssl)
        await site.start()
        self._runner = runner
        self._bound_port = int(runner.addresses[0][1])
        if self._rendezvous_host is not None:
            # A restart keeps the port, as the service's node names outlive a restart.
            nodes = web.TCPSite(
                runner, self._rendezvous_host, self._rendezvous_port, ssl_context=self._ssl
            )
            await nodes.start()
            self._rendezvous_port = int(runner.addresses[-1][1])

    async def stop(self) -> None:
        """Close every connection and stop serving.

        Like a relay node that goes down, this answers nothing it still holds: each request in the
        relay is ``cut`` in :attr:`exchanges` and its sender's connection closed, and a request
        still unread on a sender's connection is dropped with that connection (it never gets an
        entry).
        """
        if self._runner is None:
            return
        self._stopping = True
        self.stop_instants.append(time.monotonic())
        for listeners in self._listeners.values():
            for listener in list(listeners):
                await listener.ws.close(code=WSCloseCode.GOING_AWAY, message=b"relay stopping")
        await self._runner.cleanup()
        self._runner = None

    async def __aenter__(self) -> RelayEmulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- addresses and tokens for clients ----------------------------------------------------

    @property
    def port(self) -> int:
        """The bound TCP port (valid after :meth:`start`)."""
        return self._bound_port

    @property
    def ws_base(self) -> str:
        """``ws://host:port`` (``wss`` with TLS): the relay endpoint listeners connect to."""
        return f"{'wss' if self._ssl else 'ws'}://{self._advertised_host()}:{self._bound_port}"

    @property
    def rendezvous_base(self) -> str:
        """``ws://host:port`` of rendezvous addresses (the namespace's, unless
        ``rendezvous_host`` moved them to a node of their own)."""
        if self._rendezvous_host is None:
            return self.ws_base
        host = self._rendezvous_host
        host = f"[{host}]" if ":" in host else host
        return f"{'wss' if self._ssl else 'ws'}://{host}:{self._rendezvous_port}"

    @property
    def http_base(self) -> str:
        """``http://host:port`` (``https`` with TLS): where HTTP senders send."""
        return f"{'https' if self._ssl else 'http'}://{self._advertised_host()}:{self._bound_port}"

    def token(self, path: str, rule: str | None = None, *, ttl: int = 3600) -> str:
        """A valid token for HC ``path`` signed by ``rule`` (default: the first rule)."""
        chosen = self._rules[rule] if rule else next(iter(self._rules.values()))
        host = self._namespace or self._advertised_host()
        return create_token(
            resource_uri(host, path), chosen.name, chosen.key, ttl=ttl, clock=self._clock
        )

    def listener_count(self, path: str) -> int:
        """How many control channels are connected for HC ``path``."""
        return len(self._listeners[path.strip("/").lower()])

    async def wait_for_listeners(self, path: str, count: int, *, at_least: bool = False) -> None:
        """Wait until exactly ``count`` (or, with ``at_least``, ``count`` or more) listeners are
        connected to ``path``.

        Unbounded by itself: wrap it in ``asyncio.timeout``.
        """

        def reached() -> bool:
            connected = self.listener_count(path)
            return connected >= count if at_least else connected == count

        async with self._changed:
            await self._changed.wait_for(reached)

    # -- fault knobs -------------------------------------------------------------------------

    def refuse_listens(self, status: int | None, reason: str | None = None) -> None:
        """Answer new listen handshakes with HTTP ``status`` and ``reason`` (``None`` restores
        normal service). ``refuse_listens(403, QUOTA_TEXT)`` plays the listener quota."""
        self._listen_refusal = status
        self._listen_refusal_reason = reason or "Listen refused by the relay emulator"

    def set_delay(self, seconds: float) -> None:
        """Delay every ``accept``/``request`` sent to listeners by ``seconds``."""
        self._delay = seconds

    def set_blackhole(self, enabled: bool) -> None:
        """Blackhole control channels: send nothing, ignore everything, answer no pings."""
        self._blackhole = enabled

    def hold_closes(self, commands: int) -> None:
        """Keep routing to a listener after its close frame has arrived (0 turns it off).

        The service picks listeners for senders independently of reading their control channels,
        so a ``request`` or ``accept`` can be sent to a listener after that listener sent its
        close frame and before the service has read it; the listener receives it after its own
        close, when the control channel can carry nothing back (RFC 6455 section 5.5.1), and only
        the command's rendezvous address can still answer (sections 4 and 5.3). On loopback that
        window is a few microseconds; with this knob it is certain: when a listener's close frame
        is read, the listener stays routable and its close unanswered until ``commands`` more
        commands have been sent to it (or :data:`MAX_CLOSE_HOLD` seconds have passed, or its
        connection has gone), and only then is the close answered and the listener dropped.
        Nothing the listener sends after its close is read, as on the service; requests routed to
        it stay pending until their response deadline (a 504 unless answered over a rendezvous
        address). :meth:`wait_for_held_close` waits for such a hold to begin.
        """
        if commands < 0:
            raise ValueError("commands must not be negative")
        self._hold_closes = commands

    def expire_orphans(self) -> int:
        """Answer now, with the 504 of the response deadline (section 5.1), every request still
        waiting for a listener whose control channel has gone; returns how many.

        Such a request can still be answered over its rendezvous address until the deadline
        (section 5.3), so the relay waits for it; when a test knows its listener is dead (a
        killed process), this is that deadline brought forward, instead of the test waiting it
        out. Requests on connected listeners are not touched.
        """
        expired = 0
        for listener in self._gone:
            for pending in listener.pending.values():
                if not pending.future.done():
                    pending.future.set_exception(TimeoutError())
                    expired += 1
        return expired

    def held_closes(self, path: str) -> int:
        """How many listeners of HC ``path`` have a close held right now (:meth:`hold_closes`)."""
        return sum(1 for item in self._listeners[path.strip("/").lower()] if item.held_for > 0)

    async def wait_for_held_close(self, path: str, count: int = 1) -> None:
        """Wait until at least ``count`` listeners of ``path`` have their close held.

        Unbounded by itself: wrap it in ``asyncio.timeout``.
        """
        async with self._changed:
            await self._changed.wait_for(lambda: self.held_closes(path) >= count)

    async def drop_listeners(self, path: str | None = None) -> int:
        """Abort listener TCP connections without a close frame; returns how many."""
        victims = self._select(path)
        for listener in victims:
            if listener.transport is not None:
                listener.transport.abort()
        return len(victims)

    async def expire_tokens(self, path: str | None = None) -> int:
        """Treat listener tokens as expired now: close control channels with 1008 (section 3.4)."""
        return await self.close_listeners(WSCloseCode.POLICY_VIOLATION, "token expired", path)

    async def close_listeners(self, code: int, reason: str, path: str | None = None) -> int:
        """Close control channels with ``code`` (1011 recycle, 1001 HC deleted, ...)."""
        victims = self._select(path)
        for listener in victims:
            listener.token_expiry = 0.0
            await listener.ws.close(code=code, message=_tracked(reason.encode()))
        return len(victims)

    async def _admin(self, request: web.Request) -> web.Response:
        """The fault knobs over HTTP, for an emulator in another process (``gateway dev relay``).

        ``GET /$admin/state``; ``POST /$admin/close-listeners?code=1011&reason=...``,
        ``/$admin/drop-listeners``, ``/$admin/expire-tokens`` (each with an optional ``hc``),
        ``/$admin/refuse-listens?status=403&reason=...`` (``status=none`` restores service),
        ``/$admin/no-listener-status?status=503``, ``/$admin/hold-closes?commands=2``. Answers
        JSON; 400 for a bad parameter.
        """
        action = request.rel_url.raw_path[len("/$admin/") :]
        query = request.rel_url.query
        hc = query.get("hc")
        if hc is not None and hc.strip("/").lower() not in self._hcs:
            return web.json_response({"error": "unknown hybrid connection"}, status=400)
        if action == "state" and request.method == "GET":
            return web.json_response(self._state())
        if request.method != "POST":
            return web.json_response({"error": "use POST"}, status=405)
        try:
            if action == "close-listeners":
                code = _int_param(query.get("code", "1011"), 1000, 4999)
                reason = query.get("reason", "NameRenewalFailed")[:80]
                return web.json_response({"closed": await self.close_listeners(code, reason, hc)})
            if action == "drop-listeners":
                return web.json_response({"dropped": await self.drop_listeners(hc)})
            if action == "expire-tokens":
                return web.json_response({"closed": await self.expire_tokens(hc)})
            if action == "refuse-listens":
                raw = query.get("status", "")
                status = None if raw == "none" else _int_param(raw, 400, 599)
                self.refuse_listens(status, query.get("reason"))
                return web.json_response(self._state())
            if action == "no-listener-status":
                self.no_listener_status = _int_param(query.get("status", ""), 400, 599)
                return web.json_response(self._state())
            if action == "hold-closes":
                self.hold_closes(_int_param(query.get("commands", ""), 0, 1000))
                return web.json_response(self._state())
        except ValueError as error:
            return web.json_response({"error": str(error)}, status=400)
        return web.json_response({"error": "unknown admin action"}, status=404)

    def _state(self) -> dict[str, object]:
        return {
            "listeners": {name: len(group) for name, group in self._listeners.items()},
            "no_listener_status": self.no_listener_status,
            "refuse_listens": self._listen_refusal,
            "idle_timeout": self.idle_timeout,
            "rendezvous_reuse": self.rendezvous_reuse,
            "rendezvous_base": self.rendezvous_base,
            "deliveries": dict(self.deliveries),
            "idle_drops": self.idle_drops,
            "rendezvous_closed": self.rendezvous_closed,
            "listener_close_codes": list(self.listener_close_codes),
            "hold_closes": self._hold_closes,
        }

    def _select(self, path: str | None) -> list[_Listener]:
        if path is not None:
            return list(self._listeners[path.strip("/").lower()])
        return [item for group in self._listeners.values() for item in group]

    # -- dispatch ----------------------------------------------------------------------------

    def _advertised_host(self) -> str:
        if self._host in ("", "0.0.0.0"):  # noqa: S104 - mapping a wildcard bind to loopback
            return "127.0.0.1"
        if self._host == "::":
            return "[::1]"
        return f"[{self._host}]" if ":" in self._host else self._host

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.rel_url.raw_path
        on_node = self._on_rendezvous_node(request)
        if raw_path.startswith("/$admin/") and not on_node:
            return await self._admin(request)
        is_ws_path = raw_path.startswith("/$hc/")
        rest = raw_path[len("/$hc/") :] if is_ws_path else raw_path[1:]
        match = self._match_hc(rest)
        if match is None:
            return _error(404, "Endpoint does not exist.")
        hc, suffix = match
        service, _ = _split_query(request.rel_url.raw_query_string)
        if not is_ws_path:
            if on_node:
                return _error(404, "Endpoint does not exist.")
            return await self._http_sender(request, hc)
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return _error(400, "This endpoint is only for web-socket requests")
        action = service.get("sb-hc-action", "connect")
        if self._rendezvous_host is not None and on_node != (action in ("accept", "request")):
            # Rendezvous addresses live on their own node; nothing else does (section 1).
            return _error(404, "Endpoint does not exist.")
        if action == "listen":
            return await self._control_channel(request, hc, service)
        if action == "connect":
            return await self._ws_sender(request, hc, suffix, service)
        if action in ("accept", "request"):
            return await self._rendezvous_socket(request, hc, action, service)
        return _error(400, "Unknown sb-hc-action")

    def _on_rendezvous_node(self, request: web.Request) -> bool:
        if self._rendezvous_host is None or request.transport is None:
            return False
        local = request.transport.get_extra_info("sockname")
        return isinstance(local, tuple) and int(local[1]) == self._rendezvous_port

    def _match_hc(self, raw_rest: str) -> tuple[str, str] | None:
        raw_segments = raw_rest.split("/")
        decoded = [unquote(segment).lower() for segment in raw_segments]
        # Longest match wins: HC names may themselves contain '/' (section 1).
        for count in range(len(decoded), 0, -1):
            name = "/".join(decoded[:count])
            if name in self._hcs:
                tail = raw_segments[count:]
                return name, ("/" + "/".join(tail)) if tail else ""
        return None

    def _namespace_for(self, request: web.Request) -> str:
        if self._namespace:
            return self._namespace
        return (request.url.host or self._advertised_host()).lower()

    def _authorize(
        self, request: web.Request, hc: str, token: str | None, right: str
    ) -> web.Response | None:
        """Section 2: 401 for a missing/invalid token, 403 for a valid one without the right."""
        if token is None:
            return _error(401, "MissingToken: the request has no authorization token")
        try:
            parsed = validate_token(
                token,
                keys=self._keys,
                namespace_host=self._namespace_for(request),
                entity_path=hc,
                clock=self._clock,
            )
        except WrongResourceError:
            return _error(403, "InvalidSignature: the token's audience does not cover this path")
        except TokenError as error:
            return _error(401, f"InvalidSignature: {error}")
        if right not in self._rules[parsed.key_name].rights:
            return _error(403, f"Unauthorized: the signing rule lacks the {right} claim")
        return None

    # -- listener control channel (section 3) ----------------------------------------------

    async def _control_channel(
        self, request: web.Request, hc: str, service: Mapping[str, str]
    ) -> web.StreamResponse:
        if self._listen_refusal is not None:
            return _error(self._listen_refusal, self._listen_refusal_reason)
        token = request.headers.get(_SB_AUTH) or service.get("sb-hc-token")
        refusal = self._authorize(request, hc, token, LISTEN)
        if refusal is not None:
            return refusal
        assert token is not None
        if len(self._listeners[hc]) >= self.max_listeners:
            # Choice (section 12.5): the status for a 26th listener is undocumented; 403 quota.
            return _error(403, QUOTA_TEXT)
        # Section 3.1: decline permessage-deflate; pings are answered by hand (blackhole knob).
        # aiohttp refuses messages of max_msg_size bytes and more; RelayChannel enforces the
        # exact 64 KiB limit itself.
        # autoclose off: the listener's close is answered by _read_control (hold_closes knob).
        ws = web.WebSocketResponse(
            compress=False,
            autoping=False,
            autoclose=False,
            max_msg_size=CONTROL_CHANNEL_BODY_LIMIT + 1,
        )
        transport = request.transport
        await ws.prepare(request)
        listener = _Listener(
            hc=hc,
            id=service.get("sb-hc-id") or str(uuid.uuid4()),
            ws=ws,
            transport=transport,
            token_expiry=float(parse_token(token).expiry),
        )
        await self._register(listener)
        try:
            await self._read_control(request, listener)
        finally:
            # Like the service, requests routed to this listener stay pending when its control
            # channel goes (section 5.3): the listener may still answer them over their
            # rendezvous addresses, valid for rendezvous_ttl (section 7); otherwise their senders
            # get the 504 at the response deadline.
            await self._unregister(listener)
        return ws

    async def _register(self, listener: _Listener) -> None:
        async with self._changed:
            self._listeners[listener.hc].append(listener)
            self._changed.notify_all()

    async def _unregister(self, listener: _Listener) -> None:
        async with self._changed:
            self._listeners[listener.hc].remove(listener)
            self._gone.append(listener)
            self._changed.notify_all()

    async def _read_control(self, request: web.Request, listener: _Listener) -> None:
        ws = listener.ws
        channel = RelayChannel(SocketKind.CONTROL)
        loop = asyncio.get_running_loop()
        listener.last_activity = loop.time()
        while not ws.closed:
            remaining = listener.token_expiry - self._clock()
            if remaining <= 0:
                # Section 3.4: the token expired without a valid renewal.
                await ws.close(
                    code=WSCloseCode.POLICY_VIOLATION, message=_tracked(b"token expired")
                )
                return
            idle = self.idle_timeout
            wait = remaining
            if idle is not None:
                quiet = loop.time() - listener.last_activity
                if quiet >= idle:
                    # Section 7: the service's load balancer drops an idle connection silently.
                    self.idle_drops += 1
                    if listener.transport is not None:
                        listener.transport.abort()
                    return
                wait = min(wait, idle - quiet)
            try:
                message = await ws.receive(timeout=wait)
            except TimeoutError:
                continue

            listener.last_activity = loop.time()
            if message.type is WSMsgType.PING:
                if not self._blackhole:
                    await ws.pong(message.data)
                continue
            if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                if message.type is WSMsgType.CLOSE:
                    self.listener_close_codes.append(int(message.data))
                    await self._hold_close(listener)
                    await ws.close()
                if message.type is not WSMsgType.PONG:
                    return  # close, error or closed
                continue
            if self._blackhole:
                continue
            for event in channel.receive_message(message.data):
                if isinstance(event, ResponseReceived):
                    pending = listener.pending.get(event.command.request_id)
                    if pending is not None and pending.on_control and not pending.future.done():
                        pending.future.set_result(event)
                elif isinstance(event, TokenRenewalReceived):
                    if not self._renew(request, listener, event.command.token):
                        reason = _tracked(b"bad token")
                        await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=reason)
                        return
                elif isinstance(event, ProtocolViolation):
                    _log.info("listener protocol violation: %s", event.error.code)
                    if event.fatal:
                        reason = _tracked(b"protocol")
                        await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=reason)
                        return

    async def _hold_close(self, listener: _Listener) -> None:
        """The hold_closes knob: stay routable until enough commands were sent after the close."""
        if self._hold_closes <= 0:
            return
        async with self._changed:
            listener.held_for = self._hold_closes
            self._changed.notify_all()
        deadline = asyncio.get_running_loop().time() + MAX_CLOSE_HOLD
        transport = listener.transport
        try:
            while not listener.released.is_set():
                if transport is None or transport.is_closing():
                    return  # the listener gave up waiting for the close answer
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    return
                # The transport offers no event for its end: look again every 50 ms.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, 0.05)):
                        await listener.released.wait()
        finally:
            listener.held_for = 0

    def _renew(self, request: web.Request, listener: _Listener, token: str) -> bool:
        # Section 3.2: a valid token replaces the old one; an invalid one ends the channel.
        if self._authorize(request, listener.hc, token, LISTEN) is not None:
            return False
        listener.token_expiry = float(parse_token(token).expiry)
        return True

    def _pick_listener(self, hc: str, headers: Mapping[str, str]) -> _Listener | None:
        candidates = self._listeners[hc]
        allowed = _id_list(headers.get("Microsoft-Relay-AllowedListeners"))
        denied = _id_list(headers.get("Microsoft-Relay-DisallowedListeners"))
        if allowed:
            candidates = [item for item in candidates if item.id in allowed]
        if denied:
            candidates = [item for item in candidates if item.id not in denied]
        # Section 6: random spread over the connected listeners.
        return self._random.choice(candidates) if candidates else None

    async def _send_to_listener(self, listener: _Listener, frames: list[Frame]) -> bool:
        """Write ``frames`` to the listener's control channel; ``False`` if the blackhole knob
        swallowed them."""
        if self._delay:
            await asyncio.sleep(self._delay)
        if self._blackhole:
            return False
        # Section 5.4: nothing may come between a command and its body.
        try:
            async with listener.send_lock:
                listener.last_activity = asyncio.get_running_loop().time()
                await _send_frames(listener.ws, frames, listener.transport, self._cuts())
        finally:
            if listener.held_for > 0:
                # A command sent after the listener's close (hold_closes knob), or lost trying.
                listener.held_for -= 1
                if listener.held_for == 0:
                    listener.released.set()
        return True

    def _extend(self, frames: list[Frame]) -> list[Frame]:
        """With ``unknown_fields``, the command (the first frame) with :data:`UNKNOWN_FIELD`
        added to its payload object, after its command name (``{"request":{`` ...)."""
        if not self.unknown_fields:
            return frames
        command, *rest = frames
        head, sep, tail = command.payload.partition(b":{")
        if not sep or not tail.startswith(b'"'):
            return frames  # an empty payload object: nothing to put a comma after
        payload = head + sep + UNKNOWN_FIELD + b"," + tail
        return [Frame(command.opcode, payload, command.fin), *rest]

    def _cuts(self) -> Callable[[int], list[int]] | None:
        """Where to split the next body message (``fragment_bodies``), or ``None``: whole."""
        if not self.fragment_bodies:
            return None

        def cuts(size: int) -> list[int]:
            # One to three cuts anywhere, ends included: empty first or last frames are legal
            # (RFC 6455 section 5.4), and .NET ends its streamed bodies with an empty one.
            count = self._random.randint(1, 3)
            return sorted(self._random.randint(0, size) for _ in range(count))

        return cuts

    def _new_rendezvous(self, rendezvous: _Rendezvous) -> str:
        now = asyncio.get_running_loop().time()
        for key in [key for key, item in self._rendezvous.items() if item.expires <= now]:
            del self._rendezvous[key]
        if len(self._rendezvous) >= MAX_PENDING_RENDEZVOUS:
            raise _RendezvousTableFullError
        secret = secrets.token_urlsafe(24)
        self._rendezvous[secret] = rendezvous
        return secret

    # -- HTTP senders (section 5) ----------------------------------------------------------

    async def _http_sender(self, request: web.Request, hc: str) -> web.StreamResponse:
        _, app_query = _split_query(request.rel_url.raw_query_string)
        exchange = RelayedExchange(_raw_target(request.rel_url.raw_path, app_query))
        self.exchanges.append(exchange)
        try:
            response = await self._relay_http(request, hc, exchange)
        except BaseException:
            # Cancelled (aiohttp ends the handler when its sender hangs up, and stop() ends every
            # handler) or the answer could not be written: the sender got no answer from here.
            exchange.outcome = "cut" if self._stopping else "sender_gone"
            raise
        exchange.status = response.status
        if exchange.outcome == "pending":
            exchange.outcome = "refused"
        return response

    async def _relay_http(
        self, request: web.Request, hc: str, exchange: RelayedExchange
    ) -> web.StreamResponse:
        if request.method == "CONNECT" or "Upgrade" in request.headers:
            # Section 3.2: CONNECT and protocol upgrades are never relayed over HTTP.
            return _error(400, "CONNECT and protocol upgrades are not relayed")
        service, app_query = _split_query(request.rel_url.raw_query_string)
        used_authorization = False
        if self._hcs[hc].requires_client_authorization:
            # Section 2.3: sb-hc-token, then ServiceBusAuthorization, then Authorization.
            token = service.get("sb-hc-token") or request.headers.get(_SB_AUTH)
            if token is None and "Authorization" in request.headers:
                token, used_authorization = request.headers["Authorization"], True
            refusal = self._authorize(request, hc, token, SEND)
            if refusal is not None:
                return refusal
        headers = _forward_headers(request.headers, drop_authorization=used_authorization)
        headers["Via"] = _via(headers.get("Via"), self._namespace_for(request))
        if len(headers) > MAX_HEADERS or header_metadata_size(headers) > MAX_HEADER_METADATA:
            return _error(431, "Request header metadata exceeds 32 KB")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, "Request body too large for the relay emulator")
        listener = self._pick_listener(hc, request.headers)
        if listener is None:
            # Choice (section 12.1): 502 by default, configurable.
            exchange.outcome = "no_listener"
            return _error(self.no_listener_status, "There are no listeners connected.")
        command = RequestCommand(
            id=f"{uuid.uuid4()}_G1",
            request_target=_raw_target(request.rel_url.raw_path, app_query),
            method=request.method,
            request_headers=headers,
            body=bool(body),
            remote_endpoint=_remote(request),
        )
        # Section 5.3: small, fully known requests go inline; over 64 KB of headers plus body,
        # or chunked, by rendezvous.
        inline = not body or (
            request.content_length is not None
            and header_metadata_size(headers) + len(body) <= self._inline_limit
        )
        exchange.request_id = command.id
        sender = request.transport
        reusable = self._reuse.get(sender) if sender is not None else None
        try:
            if reusable is not None and not reusable.ws.closed and self.rendezvous_reuse:
                response = await self._exchange_reused(reusable, command, body, exchange)
            else:
                exchange.listener = listener.id
                response = await self._exchange(
                    listener, command, body, inline=inline, sender=sender, exchange=exchange
                )
        except _RendezvousTableFullError:
            exchange.outcome = "refused"
            return _error(503, "Too many pending rendezvous")
        except TimeoutError:
            exchange.outcome = "timeout"
            return _error(504, TIMEOUT_TEXT)
        except ConnectionError:
            exchange.outcome = "listener_lost"
            return _error(502, "The listener connection was lost.")
        exchange.outcome = "answered"
        return await self._reply(request, response)

    async def _exchange_reused(
        self,
        reusable: _Reusable,
        command: RequestCommand,
        body: bytes,
        exchange: RelayedExchange,
    ) -> ResponseReceived:
        """Send a request over its sender's open rendezvous socket and wait (section 5.3)."""
        self.deliveries["reused"] += 1
        pending = _Pending(command.id, command.method, asyncio.get_running_loop().create_future())
        reusable.pending[command.id] = pending
        try:
            async with reusable.send_lock:
                frames = self._extend(request_frames(command, body or None))
                await _send_frames(reusable.ws, frames, reusable.transport, self._cuts())
            exchange.delivered = True
            async with asyncio.timeout(self.response_timeout):
                return await pending.future
        finally:
            reusable.pending.pop(command.id, None)

    async def _exchange(
        self,
        listener: _Listener,
        command: RequestCommand,
        body: bytes,
        *,
        inline: bool,
        sender: asyncio.BaseTransport | None = None,
        exchange: RelayedExchange | None = None,
        as_given: bool = False,
    ) -> ResponseReceived:
        """Hand ``command`` (and ``body``) to ``listener`` and wait for its response; with
        ``as_given`` its JSON is sent without the ``unknown_fields`` member.

        Raises ``TimeoutError`` past the response deadline, ``ConnectionError`` when the listener
        goes away and :class:`_RendezvousTableFullError` when no rendezvous address is free.
        """
        loop = asyncio.get_running_loop()
        pending = _Pending(command.id, command.method, loop.create_future(), on_control=inline)
        payload = body if body else None
        rendezvous = _Rendezvous(
            hc=listener.hc,
            kind="request",
            expires=loop.time() + self.rendezvous_ttl,
            pending=pending,
            deliver=None if inline else (command, payload),
            sender=sender,
            as_given=as_given,
        )
        secret = self._new_rendezvous(rendezvous)
        address = self._rendezvous_address(listener.hc, "", "", "request", command.id, secret)
        rendezvous.address = address
        listener.pending[command.id] = pending
        self.deliveries["inline" if inline else "rendezvous"] += 1
        try:
            if inline:
                full = dataclasses.replace(command, address=address)
                frames = request_frames(full, payload)
                frames = frames if as_given else self._extend(frames)
                sent = await self._send_to_listener(listener, frames)
            else:
                only = RendezvousRequestCommand(address=address, id=command.id)
                sent = await self._send_to_listener(listener, self._extend(_command_frames(only)))
            if exchange is not None:
                exchange.delivered = sent
            async with asyncio.timeout(self.response_timeout):
                return await pending.future
        finally:
            listener.pending.pop(command.id, None)
            self._rendezvous.pop(secret, None)

    async def deliver_request(
        self,
        hc: str,
        *,
        method: str,
        request_target: str,
        headers: Mapping[str, str],
        body: bytes = b"",
    ) -> ResponseReceived:
        """Deliver a hand-built ``request`` command to a listener of ``hc``, exactly as given.

        The HTTP front door cannot carry what an HTTP/1.1 parser refuses (a CR in a header value,
        a space in the method, a raw NUL in the path) and it normalises what it relays
        (section 5.2: hop-by-hop headers removed, repeated names joined). This is the relay JSON
        such a request would become if a sender or relay let it through, so tests can show what
        the listener does with it. The body goes inline when it fits the control channel, else
        over a rendezvous socket (section 5.3). Raises ``LookupError`` when no listener is
        connected or no rendezvous address is free, and ``TimeoutError`` past the response
        deadline.
        """
        name = hc.strip("/").lower()
        listener = self._pick_listener(name, {})
        if listener is None:
            raise LookupError(f"no listener is connected to {hc!r}")
        command = RequestCommand(
            id=f"{uuid.uuid4()}_G1",
            request_target=request_target,
            method=method,
            request_headers=dict(headers),
            body=bool(body),
        )
        inline = header_metadata_size(command.request_headers) + len(body) <= self._inline_limit
        try:
            return await self._exchange(listener, command, body, inline=inline, as_given=True)
        except _RendezvousTableFullError:
            raise LookupError("too many pending rendezvous") from None

    async def _reply(self, request: web.Request, response: ResponseReceived) -> web.StreamResponse:
        command = response.command
        status = command.status_code
        if status < 200:
            # Choice: an interim (1xx) status cannot be a final answer over HTTP/1.1.
            return _error(502, "The listener sent an interim status code.")
        if header_metadata_size(command.response_headers) > MAX_HEADER_METADATA:
            # Section 5.2: the service carries at most 32 KB of header metadata, answers too.
            return _error(502, "The listener's response header metadata exceeds 32 KB.")
        reply = web.StreamResponse(status=status, reason=command.status_description or None)
        for name, value in command.response_headers.items():
            if name.lower() not in CONNECTION_HEADERS:
                reply.headers[name] = value
        # Section 5.2: the service adds (or appends to) Via on relayed responses.
        reply.headers["Via"] = _via(reply.headers.get("Via"), self._namespace_for(request))
        # Section 8.5: drop bodies of HEAD (hyco-https sends them anyway), 204 and 304.
        body = response.body or b""
        if request.method == "HEAD" or status in (204, 304):
            body = b""
        else:
            reply.content_length = len(body)
        await reply.prepare(request)
        if body:
            await reply.write(body)
        await reply.write_eof()
        return reply

    async def deliver_text(self, hc: str, text: str) -> None:
        """Send ``text`` as one control message to one listener of ``hc``, exactly as given.

        For tests of what a listener does with a defective command (a malformed ``accept``)
        that the emulator itself would never produce. Raises ``LookupError`` when no listener is
        connected.
        """
        listener = self._pick_listener(hc.strip("/").lower(), {})
        if listener is None:
            raise LookupError(f"no listener is connected to {hc!r}")
        await self._send_to_listener(
            listener, [Frame(Opcode.TEXT, text.encode("utf-8", "surrogatepass"))]
        )

    async def deliver_command(
        self, hc: str, command: AcceptCommand | RendezvousRequestCommand
    ) -> None:
        """Send ``command`` as given to one listener of ``hc`` and expect nothing back.

        For tests of what a listener does with an ``accept`` or rendezvous-only ``request`` whose
        ``address`` a real relay would never hand out (another host, no TLS): the listener must
        refuse to dial it (section 4, section 5.3). Raises ``LookupError`` when no listener is
        connected.
        """
        listener = self._pick_listener(hc.strip("/").lower(), {})
        if listener is None:
            raise LookupError(f"no listener is connected to {hc!r}")
        await self._send_to_listener(listener, _command_frames(command))

    # -- WebSocket senders (section 4) -----------------------------------------------------

    async def _ws_sender(
        self, request: web.Request, hc: str, suffix: str, service: Mapping[str, str]
    ) -> web.StreamResponse:
        if self._hcs[hc].requires_client_authorization:
            token = request.headers.get(_SB_AUTH) or service.get("sb-hc-token")
            refusal = self._authorize(request, hc, token, SEND)
            if refusal is not None:
                return refusal
        listener = self._pick_listener(hc, request.headers)
        if listener is None:
            return _error(404, "There are no listeners connected for the endpoint.")
        loop = asyncio.get_running_loop()
        sender_id = service.get("sb-hc-id") or f"{uuid.uuid4()}_G2"
        outcome: asyncio.Future[_Accepted | _Rejected] = loop.create_future()
        rendezvous = _Rendezvous(
            hc=hc, kind="accept", expires=loop.time() + self.rendezvous_ttl, outcome=outcome
        )
        try:
            secret = self._new_rendezvous(rendezvous)
        except _RendezvousTableFullError:
            return _error(503, "Too many pending rendezvous")
        _, app_query = _split_query(request.rel_url.raw_query_string)
        address = self._rendezvous_address(hc, suffix, app_query, "accept", sender_id, secret)
        rendezvous.address = address
        connect_headers = _joined(request.headers, _TARGETING | {_SB_AUTH.lower()})
        command = AcceptCommand(
            address=address,
            id=sender_id,
            connect_headers=connect_headers,
            remote_endpoint=_remote(request),
        )
        try:
            await self._send_to_listener(listener, self._extend(_command_frames(command)))
            # Choice (section 12.6): a listener that never answers the accept costs the sender
            # a 504 once the rendezvous address expires.
            async with asyncio.timeout(self.rendezvous_ttl):
                result = await outcome
        except TimeoutError:
            return _error(504, "The listener did not accept the connection in time.")
        except ConnectionError:
            return _error(502, "The listener connection was lost.")
        finally:
            self._rendezvous.pop(secret, None)
            outcome.cancel()
        if isinstance(result, _Rejected):
            return _error(result.status, result.description, tracked=False)
        offered = request.headers.get("Sec-WebSocket-Protocol", "")
        if result.protocol is not None and result.protocol not in _tokens(offered):
            # Section 4 step 4: the service finishes the sender's handshake with the listener's
            # choice, and a subprotocol the sender did not offer fails it there (RFC 6455
            # section 4.1). aiohttp cannot send one it was not offered, so the sender is refused
            # here and the listener's leg closed as a protocol error.
            result.done.set_result(WSCloseCode.PROTOCOL_ERROR)
            return _error(502, "The listener chose a subprotocol the sender did not offer.")
        try:
            sender = web.WebSocketResponse(
                protocols=(result.protocol,) if result.protocol else (),
                compress=False,
                autoping=False,
                max_msg_size=self._max_body + 1,
            )
            await sender.prepare(request)
            now = asyncio.get_running_loop().time()
            await _splice(
                _Leg(sender, request.transport, now),
                _Leg(result.ws, result.transport, now),
                self.stream_tap,
                idle_timeout=self.idle_timeout,
                on_idle=self._stream_idle_drop,
            )
        finally:
            # Also reached when aiohttp cancels this handler because the sender hung up: the
            # listener's leg then learns "sender closed" (1001, section 4) from its own handler.
            if not result.done.done():
                result.done.set_result(WSCloseCode.GOING_AWAY)
        return sender

    # -- rendezvous sockets ----------------------------------------------------------------

    def _rendezvous_address(
        self, hc: str, suffix: str, app_query: str, action: str, rid: str, secret: str
    ) -> str:
        # Section 8.2: the secret rides in an sb-hc- parameter, which SDK listeners strip
        # before showing the URL to applications.
        query = f"{app_query}&" if app_query else ""
        query += f"sb-hc-action={action}&sb-hc-id={quote(rid, safe='')}&sb-hc-rdv={secret}"
        return f"{self.rendezvous_base}/$hc/{quote(hc, safe='/')}{suffix}?{query}"

    async def _rendezvous_socket(
        self, request: web.Request, hc: str, action: str, service: Mapping[str, str]
    ) -> web.StreamResponse:
        # Section 4/5.3: single use, short-lived, no token needed: the address is the credential.
        rendezvous = self._rendezvous.pop(service.get("sb-hc-rdv", ""), None)
        now = asyncio.get_running_loop().time()
        if (
            rendezvous is None
            or rendezvous.kind != action
            or rendezvous.hc != hc
            or rendezvous.expires <= now
            or not _as_issued(rendezvous.address, request)
        ):
            return _error(403, "The rendezvous address is not valid or has expired.")
        if rendezvous.outcome is not None:
            return await self._accept_rendezvous(request, rendezvous.outcome, service)
        assert rendezvous.pending is not None
        return await self._request_rendezvous(request, rendezvous)

    async def _accept_rendezvous(
        self,
        request: web.Request,
        outcome: asyncio.Future[_Accepted | _Rejected],
        service: Mapping[str, str],
    ) -> web.StreamResponse:
        if outcome.done():
            return _error(403, "The sender is no longer waiting.")
        # hyco-* use the unprefixed names in their (broken) reject path (section 8.2).
        raw_status = service.get("sb-hc-statusCode") or service.get("statusCode")
        if raw_status is not None:
            description = service.get("sb-hc-statusDescription") or service.get(
                "statusDescription", "Rejected"
            )
            if not (raw_status.isdigit() and 400 <= int(raw_status) <= 599):
                return _error(400, "sb-hc-statusCode must be a 4xx or 5xx code")
            outcome.set_result(_Rejected(int(raw_status), description))
            # Section 4 step 6: the listener's reject handshake deliberately fails with 410.
            return _error(410, "Gone", tracked=False)
        offered = request.headers.get("Sec-WebSocket-Protocol", "")
        protocol = offered.split(",")[0].strip() or None
        # autoping off: the splice answers pings itself, as traffic that keeps the leg alive.
        ws = web.WebSocketResponse(
            protocols=(protocol,) if protocol else (),
            compress=False,
            autoping=False,
            max_msg_size=self._max_body + 1,
        )
        await ws.prepare(request)
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        outcome.set_result(_Accepted(ws, request.transport, protocol, done))
        code = await done  # the sender's handler splices and then releases this one
        if not ws.closed:
            await ws.close(code=code)
        return ws

    def _stream_idle_drop(self) -> None:
        self.stream_idle_drops += 1

    async def _request_rendezvous(
        self, request: web.Request, rendezvous: _Rendezvous
    ) -> web.StreamResponse:
        pending = rendezvous.pending
        assert pending is not None
        ws = web.WebSocketResponse(compress=False, max_msg_size=self._max_body + 1)
        await ws.prepare(request)
        if rendezvous.deliver is not None:
            command, body = rendezvous.deliver
            frames = request_frames(command, body)
            frames = frames if rendezvous.as_given else self._extend(frames)
            await _send_frames(ws, frames, request.transport, self._cuts())
        limits = ChannelLimits.for_socket(
            SocketKind.RENDEZVOUS, rendezvous_body_limit=self._max_body
        )
        channel = RelayChannel(SocketKind.RENDEZVOUS, limits=limits)
        reusable = _Reusable(ws, request.transport, {pending.id: pending})
        # Choice (section 8.8): only sockets that delivered their request are reused. A socket a
        # listener opened just to send a large response is not read by hyco-https afterwards
        # (section 5.3), and Microsoft's own listener works against Azure.
        sender = rendezvous.sender if rendezvous.deliver is not None else None
        try:
            await self._serve_request_rendezvous(reusable, channel, sender)
        finally:
            if sender is not None and self._reuse.get(sender) is reusable:
                del self._reuse[sender]
            for waiting in reusable.pending.values():
                if not waiting.future.done():
                    # The listener closed the socket (or went quiet) before a complete response:
                    # the service cannot answer with half a body, so the sender gets 502 now
                    # (the real service aborts the sender's stream).
                    waiting.future.set_exception(ConnectionError("rendezvous closed mid-response"))
            await ws.close()
            self.rendezvous_closed += 1
        return ws

    async def _serve_request_rendezvous(
        self, reusable: _Reusable, channel: RelayChannel, sender: asyncio.BaseTransport | None
    ) -> None:
        """Read responses from a request rendezvous socket until it is done.

        Section 5.3: the service keeps the socket for as long as the sender's connection lives
        and routes that connection's later requests over it; so, with ``rendezvous_reuse``,
        after the first response the socket is registered for its sender and read on until the
        listener closes it, the sender's connection ends, or nothing is pending for a response
        deadline. Without reuse (as .NET listeners expect) it is closed after one response.
        """
        ws = reusable.ws
        while True:
            try:
                message = await ws.receive(timeout=self.response_timeout)
            except TimeoutError:
                if reusable.pending:
                    return  # the listener went quiet with a request outstanding
                if sender is None or sender.is_closing():
                    return
                continue
            if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                return
            events = channel.receive_message(message.data)
            if await self._on_rendezvous_events(ws, reusable.pending, events):
                return
            if not reusable.pending:
                if not self.rendezvous_reuse or sender is None or sender.is_closing():
                    return
                self._reuse[sender] = reusable

    async def _on_rendezvous_events(
        self,
        ws: web.WebSocketResponse,
        pending: dict[str, _Pending],
        events: list[Event],
    ) -> bool:
        """Resolve answered requests; ``True`` when the socket must be given up."""
        for event in events:
            if isinstance(event, ResponseReceived):
                waiting = pending.pop(event.command.request_id, None)
                if waiting is not None and not waiting.future.done():
                    waiting.future.set_result(event)
                continue
            if isinstance(event, ProtocolViolation) and event.fatal:
                _log.info("rendezvous protocol violation: %s", event.error.code)
                await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=_tracked(b"protocol"))
                return True
        return False


class _RendezvousTableFullError(Exception):
    """Too many outstanding rendezvous addresses (internal signal, never escapes the module)."""


# --- helpers -------------------------------------------------------------------------------


def _command_frames(command: AcceptCommand | RendezvousRequestCommand) -> list[Frame]:
    """A command no body follows (section 3.2), as the core frames it."""
    return [Frame(Opcode.TEXT, encode_command(command).encode())]


async def _send_frames(
    ws: web.WebSocketResponse,
    frames: list[Frame],
    transport: asyncio.Transport | None = None,
    cuts: Callable[[int], list[int]] | None = None,
) -> None:
    """Send the core's (complete) frames; with ``transport`` and ``cuts``, each binary message
    goes out split at the offsets ``cuts(len(payload))`` gives, as one fragmented message.

    Section 3.2: the service's body message "may be split into several frames" (a binary frame,
    continuation frames, the last with FIN); aiohttp sends only whole messages, so those frames
    are written to the connection's transport directly. The caller holds the socket's send lock,
    and aiohttp writes an uncompressed frame synchronously, so nothing can come between them but
    control frames (a pong), which RFC 6455 section 5.4 allows inside a fragmented message.
    """
    for frame in frames:
        if frame.opcode is Opcode.TEXT:
            await ws.send_str(frame.payload.decode("utf-8", "surrogatepass"))
        elif transport is not None and cuts is not None:
            if transport.is_closing():
                raise ConnectionResetError("the socket is closed")
            transport.write(_fragments(frame.payload, cuts(len(frame.payload))))
        else:
            await ws.send_bytes(frame.payload)


def _fragments(payload: bytes, cuts: list[int]) -> bytes:
    """``payload`` as one binary message of unmasked server frames (RFC 6455 sections 5.2 and
    5.4), cut at the ascending offsets ``cuts``: a binary frame, then continuation frames, with
    a ping after the first (section 5.4 lets control frames come between fragments; whether the
    service pings listeners is not documented, a listener must answer one wherever it comes)."""
    bounds = [0, *cuts, len(payload)]
    pieces = [payload[start:end] for start, end in itertools.pairwise(bounds)]
    out = bytearray()
    for index, piece in enumerate(pieces):
        if index == 1:
            out += bytes((0x80 | Opcode.PING, len(_MID_MESSAGE_PING))) + _MID_MESSAGE_PING
        opcode = Opcode.BINARY if index == 0 else Opcode.CONTINUATION
        fin = 0x80 if index == len(pieces) - 1 else 0
        size = len(piece)
        if size < 126:
            out += bytes((fin | opcode, size))
        elif size < 65536:
            out += bytes((fin | opcode, 126)) + size.to_bytes(2, "big")
        else:
            out += bytes((fin | opcode, 127)) + size.to_bytes(8, "big")
        out += piece
    return bytes(out)


def _int_param(raw: str, low: int, high: int) -> int:
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ValueError(f"expected a number from {low} to {high}")
    return int(raw)


def _tracking_id() -> str:
    return f"{uuid.uuid4()}_G{secrets.randbelow(30)}"


def _tracked(reason: bytes) -> bytes:
    """A close reason with a tracking id, within the 123 bytes a close frame allows."""
    return (reason + f" TrackingId:{_tracking_id()}".encode())[:123]


def _error(status: int, text: str, *, tracked: bool = True) -> web.Response:
    # Service errors put their text, with a tracking id for support, in the reason phrase
    # (section 3.1) and carry no Via. A listener's own rejection text is passed on unchanged.
    if tracked:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        text = f"{text} TrackingId:{_tracking_id()}, Timestamp:{stamp}"
    return web.Response(status=status, reason=text, text=text)


def _split_query(raw_query: str) -> tuple[dict[str, str], str]:
    """Section 5.2's split (the protocol core's), also reading the unprefixed ``statusCode`` /
    ``statusDescription`` that hyco-ws' and hyco-https' reject path sends (section 8.2)."""
    return split_query(raw_query, also_read=("statusCode", "statusDescription"))


def _raw_target(raw_path: str, app_query: str) -> str:
    """The ``requestTarget`` for a relayed HTTP request: path including the HC name + query."""
    return f"{raw_path}?{app_query}" if app_query else raw_path


def _joined(headers: CIMultiDictProxy[str], drop: frozenset[str] = frozenset()) -> dict[str, str]:
    # Section 3.2: repeated headers are comma-joined into one JSON string value (every name,
    # Set-Cookie included: the service has one value per name).
    return fold_headers(headers.items(), drop=drop, first_only=frozenset(), validate=False)


def _forward_headers(
    headers: CIMultiDictProxy[str], *, drop_authorization: bool
) -> CIMultiDict[str]:
    """Section 5.2: what the service strips from a relayed HTTP request.

    Choice (sections 3.2 and 12.2): ``Host`` is kept. The guide lists it among the headers the
    service removes, but its own example and the .NET SDK's doc comment show a ``Host`` entry,
    and azbridge skips one defensively; a listener must cope with it (and never forward it).
    """
    listed = connection_tokens(headers.get("Connection"))
    drop = (CONNECTION_HEADERS - {"host"}) | listed | _TARGETING | {_SB_AUTH.lower(), "expect"}
    if drop_authorization:
        drop = drop | {"authorization"}
    return CIMultiDict(_joined(headers, drop))


def _via(existing: str | None, namespace: str) -> str:
    entry = f"1.1 {namespace}"
    return f"{existing}, {entry}" if existing else entry


def _as_issued(address: str, request: web.Request) -> bool:
    """Whether ``request`` opened ``address`` as it was handed out (section 1: "listeners must
    never rebuild these addresses; use them exactly as received"): the same path and the same
    query parameters in the same order, percent-encoding aside (a WebSocket library may
    normalise it), plus nothing but a reject's status parameters at the end (section 4)."""
    if not address:
        return True  # not recorded (a table entry made elsewhere)
    issued = urlsplit(address)
    if unquote(request.rel_url.raw_path) != unquote(issued.path):
        return False
    expected = parse_qsl(issued.query, keep_blank_values=True)
    received = parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True)
    extra = received[len(expected) :]
    return received[: len(expected)] == expected and all(key in _REJECT_KEYS for key, _ in extra)


def _tokens(value: str) -> list[str]:
    """The comma-separated tokens of a header value (``Sec-WebSocket-Protocol``)."""
    return [item.strip() for item in value.split(",") if item.strip()]


def _id_list(value: str | None) -> set[str]:
    return set(_tokens(value)) if value else set()


def _remote(request: web.Request) -> RemoteEndpoint | None:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return RemoteEndpoint(address=str(peer[0]), port=int(peer[1]))
    return None


@dataclass(eq=False)
class _Leg:
    """One side of an accepted stream: its socket, its connection and the loop time of the
    last frame either way on it."""

    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    last: float


async def _splice(
    sender: _Leg,
    listener: _Leg,
    tap: Callable[[bytes], None] | None = None,
    *,
    idle_timeout: float | None = None,
    on_idle: Callable[[], None] | None = None,
) -> None:
    """Relay data messages both ways until one side closes (section 8.3).

    Text stays text, binary stays binary; pings are answered per leg, here, and not passed on
    (section 4). When the listener closes, the sender sees 1000; when the sender closes, the
    listener sees 1001. ``tap`` sees every data message's bytes, as a relay operator could
    (both directions). A leg with no frame either way for ``idle_timeout`` seconds is dropped
    without a close frame, as the service's load balancer drops any idle connection (section 7,
    about 4 minutes), and the other leg is then closed as above; a leg that pings stays up.
    """
    loop = asyncio.get_running_loop()

    async def pump(source: _Leg, sink: _Leg) -> None:
        while True:
            wait = None
            if idle_timeout is not None:
                quiet = loop.time() - source.last
                if quiet >= idle_timeout:
                    if on_idle is not None:
                        on_idle()
                    if source.transport is not None:
                        source.transport.abort()
                    return
                wait = idle_timeout - quiet
            try:
                message = await source.ws.receive(timeout=wait)
            except TimeoutError:
                continue
            source.last = loop.time()
            if message.type is WSMsgType.PING:
                await source.ws.pong(message.data)
            elif message.type is WSMsgType.PONG:
                continue
            elif message.type is WSMsgType.TEXT:
                if tap is not None:
                    tap(message.data.encode())
                await sink.ws.send_str(message.data)
                sink.last = loop.time()
            elif message.type is WSMsgType.BINARY:
                if tap is not None:
                    tap(message.data)
                await sink.ws.send_bytes(message.data)
                sink.last = loop.time()
            else:
                return

    to_sender = asyncio.create_task(pump(listener, sender))
    to_listener = asyncio.create_task(pump(sender, listener))
    try:
        done, _ = await asyncio.wait({to_sender, to_listener}, return_when=asyncio.FIRST_COMPLETED)
        if to_sender in done:
            await sender.ws.close(code=WSCloseCode.OK)
        else:
            await listener.ws.close(code=WSCloseCode.GOING_AWAY)
    finally:
        for task in (to_sender, to_listener):
            task.cancel()
        await asyncio.gather(to_sender, to_listener, return_exceptions=True)


# --- command line: `gateway dev relay` ------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``gateway dev relay``."""
    parser = subparsers.add_parser(
        "relay",
        help="run a local Azure Relay Hybrid Connections emulator",
        description="Serve listeners and senders on HOST:PORT speaking the Hybrid Connections "
        "protocol. Prints the relay's base URLs, then runs until interrupted.",
    )
    parser.add_argument(
        "--listen",
        required=True,
        metavar="HOST:PORT",
        type=_host_port,
        help="address to serve on (port 0 picks a free one; the URLs are printed)",
    )
    parser.add_argument(
        "--hc",
        required=True,
        action="append",
        metavar="NAME",
        dest="hcs",
        help="a Hybrid Connection to serve (repeatable)",
    )
    parser.add_argument(
        "--key-name", required=True, metavar="N", help="SAS rule name (listen and send rights)"
    )
    parser.add_argument("--key", required=True, metavar="K", help="SAS key string")
    parser.add_argument("--namespace", metavar="HOST", help="host name tokens must be for")
    parser.add_argument("--tls-cert", metavar="F", help="PEM certificate chain (enables TLS)")
    parser.add_argument("--tls-key", metavar="F", help="PEM private key for --tls-cert")
    parser.add_argument(
        "--response-timeout",
        type=float,
        default=RESPONSE_TIMEOUT,
        metavar="SECONDS",
        help=f"how long a sender waits for the listener's answer (default {RESPONSE_TIMEOUT:g})",
    )
    parser.add_argument(
        "--rendezvous-host",
        metavar="HOST",
        help="serve rendezvous addresses on this host (own port), as Azure's service nodes do",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=IDLE_TIMEOUT,
        metavar="SECONDS",
        help=f"drop control channels idle this long (default {IDLE_TIMEOUT:g}; 0: never)",
    )
    parser.add_argument(
        "--no-rendezvous-reuse",
        action="store_true",
        help="one request per rendezvous socket (.NET listeners) instead of Azure's reuse",
    )
    parser.add_argument(
        "--no-listener-status",
        type=int,
        default=502,
        choices=(404, 502, 503),
        help="status for an HTTP request while no listener is connected (default 502)",
    )
    parser.add_argument(
        "--refuse-listens", type=int, metavar="STATUS", help="refuse every listener with STATUS"
    )
    parser.add_argument(
        "--max-listeners",
        type=int,
        default=MAX_LISTENERS_PER_HC,
        metavar="N",
        help=f"listeners per Hybrid Connection before 403 QuotaExceeded "
        f"(default {MAX_LISTENERS_PER_HC})",
    )
    parser.set_defaults(handler=run)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError("expected HOST:PORT")
    return host.strip("[]"), int(port)


def run(args: argparse.Namespace) -> int:
    """Run the emulator until SIGINT/SIGTERM; exit code 0, or 1 if it cannot start."""
    if bool(args.tls_cert) != bool(args.tls_key):
        print("gateway dev relay: --tls-cert and --tls-key go together", file=sys.stderr)
        return 1
    context: ssl.SSLContext | None = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as error:
            print(f"gateway dev relay: cannot load TLS files: {error}", file=sys.stderr)
            return 1
    host, port = args.listen
    emulator = RelayEmulator(
        args.hcs,
        [SasRule(args.key_name, args.key)],
        host=host,
        port=port,
        ssl_context=context,
        namespace=args.namespace,
        response_timeout=args.response_timeout,
        rendezvous_host=args.rendezvous_host,
        idle_timeout=args.idle_timeout or None,
        rendezvous_reuse=not args.no_rendezvous_reuse,
        no_listener_status=args.no_listener_status,
        max_listeners=args.max_listeners,
    )
    if args.refuse_listens is not None:
        emulator.refuse_listens(args.refuse_listens)
    try:
        asyncio.run(_serve(emulator))
    except OSError as error:
        print(f"gateway dev relay: cannot serve: {error}", file=sys.stderr)
        return 1
    return 0


async def _serve(emulator: RelayEmulator) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with emulator:
        print(f"relay listening: {emulator.ws_base} (HTTP senders: {emulator.http_base})")
        print(f"rendezvous: {emulator.rendezvous_base}")
        print(f"admin: {emulator.http_base}/$admin/state")
        print("listen URL: " + emulator.ws_base + "/$hc/{NAME}?sb-hc-action=listen", flush=True)
        await stop.wait()
