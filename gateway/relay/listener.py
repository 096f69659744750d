"""The Hybrid Connection listener: the only production code that touches relay sockets.

It keeps ``connections`` control channels open to the relay (protocol notes section 9), turns
what arrives on them into calls of the handlers in :mod:`gateway.relay.handlers`, and answers.
Protocol parsing and framing decisions come from the sans-IO core in
:mod:`gateway.hybridconnection`; this module adds sockets, time and ownership of tasks.

Per control channel:

* Connect ``{endpoint}/$hc/{path}?sb-hc-action=listen&sb-hc-id={uuid}`` with the token in the
  ``ServiceBusAuthorization`` header (section 2.3), through the outbound proxy when configured.
* Send ``renewToken`` when ``renew_at`` of the token's lifetime has passed (section 3.2; catalogue
  item 126), and a WebSocket ping every ``ping_interval``; no pong within ``ping_timeout`` means a
  half-open socket (section 3.3; catalogue item 123): drop it and reconnect.
* Reconnect after any loss with :class:`gateway.relay.backoff.Backoff`; 401/403 and 404 get slow
  retries, 404 also an alert (catalogue items 122-125).

Per relayed request (section 5): the request is handled in its own task so the control-channel
reader never waits on a handler; at most ``max_concurrent_requests`` run at once. Every request
past that (or while draining) is answered 503 by the reader itself, without a task: one small
``response`` frame written under the channel's lock, so a burst of any size costs a bounded amount
of work per message and never goes unanswered (catalogue item 149). A handler that raises is
answered 500, one that overruns ``request_timeout`` 504, always before the relay's 60 s deadline
(section 5.1). Bodies up to 64 KiB go back on the control channel; larger and streamed ones over
the request's rendezvous address (section 5.3). A rendezvous-only request is fetched from its
address and answered there. A request body over ``max_request_body`` is answered ``413 Content
Too Large`` on its rendezvous socket as soon as the limit is crossed, without buffering more than
the limit; the socket is then closed with 1009 after a bounded lingering close (catalogue item
150; RFC 9112 section 9.6).

A request the core reports as malformed but addressable (a CR, LF or NUL in a header value or the
target, a method or header name that is not a token, a field over 16 KiB; see
:class:`gateway.hybridconnection.framing.MalformedRequestReceived`) is answered
``400`` with ``x-gateway-reason: malformed_request`` where it arrived - on the control channel or
on its rendezvous socket (sections 3.2, 5.3) - and the socket is kept: one bad request never costs
the requests in flight beside it. Its body has been consumed by the core, so the framing stays in
step. A socket that produces more than ``max_protocol_violations`` such defects within
``violation_window`` seconds is dropped (``too_many_violations``) and, for a control channel,
reconnected.

Per ``accept`` (section 4): the stream handler decides; a rejection opens the address with
``sb-hc-statusCode``/``sb-hc-statusDescription`` (the relay answers 410), an acceptance opens it
and hands the socket to the handler. Accepted streams' sockets are pinged every
``ping_interval``: the relay's load balancer drops a connection idle for about 4 minutes
(section 7).

A handler still running ``early_rendezvous_after`` seconds after its request arrived on the
control channel has the request's rendezvous address opened then, while it is valid (about
30 s, section 7), and its answer goes over that socket whatever its size.

Rendezvous addresses are dialled only after the core's address check
(:class:`gateway.hybridconnection.addresses.RendezvousPolicy`) has passed; a failing address is
logged as ``bad_rendezvous_address``, counted, and never dialled. A request that arrived whole
on the control channel with such an address is answered ``502 bad_rendezvous_address`` there.

A response due on a control channel that is gone by then (the relay recycles every listener
connection daily, section 3.4) goes over the request's rendezvous address instead, which stays
valid after the channel (section 5.3): the target has acted, so its answer must not be lost.

Every request or stream the listener refuses or answers itself, without the handler, is passed
to the ``on_refusal`` sink (:class:`gateway.relay.handlers.RelayRefusal`) so it reaches the
decision log. ``stop()`` closes the control channels with 1000 (section 3.4) before it cancels
what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from random import Random
from typing import Any, Final

import orjson

from gateway.hybridconnection.addresses import hc_path, listen_url, reject_url
from gateway.hybridconnection.connection import (
    ListenerConnection,
    PreparedResponse,
    TargetOutsideError,
    prepare_response,
    project_accept,
    project_request,
    renew_token_frames,
)
from gateway.hybridconnection.errors import BadRendezvousAddressError
from gateway.hybridconnection.framing import (
    CONTROL_CHANNEL_BODY_LIMIT,
    AcceptReceived,
    Event,
    Frame,
    MalformedRequestReceived,
    Opcode,
    ProtocolViolation,
    RendezvousRequested,
    RequestReceived,
    ResponseRoute,
    SocketKind,
)
from gateway.hybridconnection.messages import (
    MAX_CONTROL_MESSAGE_SIZE,
    AcceptCommand,
    RequestCommand,
)
from gateway.hybridconnection.refusals import (
    ListenRefusal,
    RefusalKind,
    classify_listen_refusal,
    clean_reason,
)
from gateway.outbound.proxy import OutboundProxy, ProxyAuthError, ProxyError
from gateway.relay.backoff import Backoff, FailureKind
from gateway.relay.handlers import (
    AcceptInfo,
    AcceptStream,
    RefusalSink,
    RejectStream,
    RelayedResponse,
    RelayRefusal,
    RequestHandler,
    StreamDecision,
    StreamHandler,
    TokenProvider,
)
from gateway.relay.settings import ListenerSettings
from gateway.relay.websocket import (
    HandshakeRefusedError,
    RelaySocketError,
    RelayWebSocket,
    TooLarge,
    open_relay_socket,
)

__all__ = ["AlertCallback", "ListenerMetrics", "RelayListener"]

log = logging.getLogger("gateway.relay")

AlertCallback = Callable[[str, str], None]
"""Called as ``on_alert(code, message)`` for conditions an operator must act on."""

# Room for the JSON of a request next to a 64 KiB body on the control channel (section 5.3).
_CONTROL_MAX_MESSAGE: Final = max(MAX_CONTROL_MESSAGE_SIZE, CONTROL_CHANNEL_BODY_LIMIT) + 1


@dataclass
class ListenerMetrics:
    """Counters for observability; plain attributes so any exporter can read them.

    ``listeners_online``: control channels currently connected. ``reconnects``: by
    :class:`FailureKind` value. ``protocol_errors``: by core error code (``bad_rendezvous_address``,
    ``malformed_message``, ``malformed_request``, ``message_too_large``, ``too_many_violations``
    ...). ``requests``: by outcome (``ok``, ``handler_error``, ``handler_timeout``, ``overloaded``,
    ``draining``, ``bad_target``, ``malformed_request``, ``invalid_response``, ``body_too_large``,
    ``send_failed``, ``dropped``; ``dropped`` counts only refusals that need a rendezvous socket,
    a stream's reject or a rendezvous-only request's 503, past their bound: see
    ``_spawn_overflow``). ``streams``: by outcome (``accepted``, ``rejected``, ``overloaded``,
    ``decide_error``, ``failed``). ``token_renewals``:
    ``renewToken`` messages sent. ``alerts``: by alert code. ``late_answers``: responses sent
    over a request's rendezvous address because its control channel was gone.
    ``early_rendezvous``: answers sent over a request's rendezvous socket opened while its handler
    still ran (``early_rendezvous_after``). ``listen_refusals``: refused listen handshakes by
    :class:`gateway.hybridconnection.refusals.RefusalKind` value (``quota``, ``unauthorized``,
    ``not_found``, ``other``).
    """

    listeners_online: int = 0
    reconnects: Counter[str] = field(default_factory=Counter)
    protocol_errors: Counter[str] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)
    streams: Counter[str] = field(default_factory=Counter)
    token_renewals: int = 0
    alerts: Counter[str] = field(default_factory=Counter)
    late_answers: int = 0
    early_rendezvous: int = 0
    listen_refusals: Counter[str] = field(default_factory=Counter)


async def _discard_dial(dial: asyncio.Task[_RelaySocket]) -> None:
    """Stop an early rendezvous dial that is no longer needed and close what it opened."""
    dial.cancel()
    try:
        socket = await dial
    except BaseException:  # cancelled or failed: nothing was opened
        return
    await socket.close()


class _HandshakeRefusedError(Exception):
    """The relay answered the listen handshake with an HTTP error status."""

    def __init__(self, refusal: ListenRefusal) -> None:
        super().__init__(f"relay refused the listen handshake with {refusal.status}")
        self.refusal = refusal


class _RelaySocket:
    """One relay WebSocket with the per-socket write lock of section 5.4."""

    def __init__(self, ws: RelayWebSocket, send_timeout: float) -> None:
        self.ws = ws
        self.lock = asyncio.Lock()
        self._send_timeout = send_timeout
        # The code of the close this side started, if it did.
        self.sent_close_code: int | None = None

    async def send_frames(self, frames: list[Frame]) -> None:
        """Send complete messages (JSON then body) as one critical section and one write."""
        if self.send_now(frames):
            return
        async with asyncio.timeout(self._send_timeout), self.lock:
            self.ws.send(frames)
            await self.ws.drain()

    def send_now(self, frames: list[Frame]) -> bool:
        """Send complete messages at once if nothing needs waiting for; ``False`` if it does or
        the socket is closed (then :meth:`send_frames` raises).

        With the lock free (no streamed body between its frames) and the transport taking
        writes, a synchronous send is already one critical section (section 5.4): no other task
        runs before it returns, so the lock, its timeout and a drain that would not wait are
        skipped.
        """
        return not self.lock.locked() and self.ws.try_send(frames)

    def send_answer_now(self, prepared: PreparedResponse) -> bool:
        """:meth:`send_now` of a complete response's frames (its JSON, then its body if any);
        ``False`` for a streamed one (see :meth:`send_streamed`)."""
        return (
            not prepared.streamed
            and not self.lock.locked()
            and self.ws.try_send_text_and_binary(prepared.payload, prepared.body)
        )

    async def send_streamed(
        self, prepared: PreparedResponse, chunks: AsyncIterator[bytes], idle_timeout: float
    ) -> None:
        """Send the JSON, then the body as one fragmented binary message (section 5.3).

        ``idle_timeout`` bounds the wait for each chunk: the relay aborts a body that stalls for
        60 s (section 7); each write waits for the transport to drain (``send_timeout``).
        """
        stream = prepared.body_stream()
        async with self.lock:
            async with asyncio.timeout(self._send_timeout):
                self.ws.send(prepared.head())
                await self.ws.drain()
            while True:
                async with asyncio.timeout(idle_timeout):
                    chunk = await anext(chunks, None)
                if chunk is None:
                    break
                async with asyncio.timeout(self._send_timeout):
                    self.ws.send(stream.chunk(chunk))
                    await self.ws.drain()
            async with asyncio.timeout(self._send_timeout):
                self.ws.send(stream.end())
                await self.ws.drain()

    async def close(self, code: int = 1000) -> None:
        """Close, bounded by the socket's close timeout; never raises."""
        if self.sent_close_code is None and self.ws.open:
            self.sent_close_code = code
        await self.ws.close(code)


class _StreamSocket:
    """The :class:`gateway.relay.handlers.StreamSocket` view of an accepted rendezvous socket."""

    def __init__(self, ws: RelayWebSocket) -> None:
        self._ws = ws
        self._lock = asyncio.Lock()

    async def receive(self) -> str | bytes | None:
        """Next data message, ``None`` once the socket is closed or failed."""
        return await self._ws.receive_message()

    async def send(self, data: str | bytes) -> None:
        """Send one text or binary message."""
        if isinstance(data, str):
            frame = Frame(Opcode.TEXT, data.encode("utf-8"))
        else:
            frame = Frame(Opcode.BINARY, bytes(data))
        async with self._lock:
            self._ws.send([frame])
            await self._ws.drain()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the socket (idempotent)."""
        await self._ws.close(code, reason)


class _Deadline:
    """When one handler's time is up (see :class:`_Deadlines`).

    For an early rendezvous (:meth:`RelayListener._dial_early`) ``address`` is the request's
    rendezvous address and ``dial`` the task opening it, once it is due.
    """

    __slots__ = ("address", "at", "dial", "expired", "task")

    def __init__(self, at: float, task: asyncio.Task[Any], address: str | None = None) -> None:
        self.at = at
        self.task: asyncio.Task[Any] | None = task  # None once the handler has returned
        self.expired = False
        self.address = address
        self.dial: asyncio.Task[_RelaySocket] | None = None


class _Deadlines:
    """The ``request_timeout`` of every running handler, with one timer for all of them.

    Every handler gets the same timeout, so deadlines fall due in the order the handlers
    started: a queue in that order and one timer for its head replace an ``asyncio.timeout``
    per request (a context manager and a timer heap entry each, about 6 us a request on the
    build machine). A handler past its deadline is cancelled, as ``asyncio.timeout`` does, and
    :attr:`_Deadline.expired` tells that cancellation from any other. Finished entries leave
    the queue from its head; a slow handler at the head would keep those behind it, so the
    queue is rebuilt past twice the running handlers (its memory stays bounded by them).

    With ``on_due`` a due entry is handed to it instead of cancelling its handler (the early
    rendezvous of :meth:`RelayListener._dial_early`).
    """

    def __init__(self, seconds: float, on_due: Callable[[_Deadline], None] | None = None) -> None:
        self._seconds = seconds
        self._on_due = on_due
        self._queue: deque[_Deadline] = deque()
        self._running = 0
        self._timer: asyncio.TimerHandle | None = None

    def start(self, task: asyncio.Task[Any], address: str | None = None) -> _Deadline:
        """The deadline of ``task``'s handler, which starts now."""
        # The task's own loop: asyncio.get_running_loop() makes a getpid() system call on every
        # call (Python 3.11 checks for a fork), and this runs once per request.
        loop = task.get_loop()
        deadline = _Deadline(loop.time() + self._seconds, task, address)
        self._queue.append(deadline)
        self._running += 1
        if self._timer is None:
            self._timer = loop.call_at(deadline.at, self._expire)
        return deadline

    def finish(self, deadline: _Deadline) -> None:
        """The handler has returned (or failed): its deadline no longer applies."""
        deadline.task = None
        self._running -= 1
        queue = self._queue
        while queue and queue[0].task is None:
            queue.popleft()
        if len(queue) > 2 * self._running + 64:
            self._queue = deque(entry for entry in queue if entry.task is not None)

    def _expire(self) -> None:
        # The timer may have been set for an entry that finished since: it then moves on to
        # the current head. So it fires about once per timeout, not once per request.
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        queue = self._queue
        while queue:
            head = queue[0]
            task = head.task
            if task is None:
                queue.popleft()
                continue
            if head.at > now:
                self._timer = loop.call_at(head.at, self._expire)
                return
            queue.popleft()
            head.expired = True
            if self._on_due is None:
                task.cancel()
            else:
                self._on_due(head)

    def cancel(self) -> None:
        """Stop the timer (the listener is stopping)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _busy(request_id: str, *, draining: bool) -> tuple[RelayedResponse, str]:
    """The 503 for a request the gateway will not start: it is stopping, or at its limit."""
    if draining:
        detail = (
            "the gateway is shutting down; send the request again (another gateway may take it)"
        )
        return _refusal(503, "draining", detail, request_id), "draining"
    detail = "too many requests in flight"
    return _refusal(503, "gateway_busy", detail, request_id), "overloaded"


def _malformed(event: MalformedRequestReceived) -> tuple[RelayedResponse, str]:
    """The answer to a request refused by the listener, shaped like the pipeline's refusals.

    400 ``malformed_request`` for a defective request; 502 ``bad_rendezvous_address`` for a
    sound one whose rendezvous address failed the address check (the relay, not the SaaS, is at
    fault: RFC 9110 section 15.6.3).
    """
    if isinstance(event.error.field_error, BadRendezvousAddressError):
        status, code = 502, "bad_rendezvous_address"
    else:
        status, code = 400, "malformed_request"
    return _refusal(status, code, str(event.error), event.request_id), code


def _refusal(
    status: int, code: str, detail: str, request_id: str, reason: str = ""
) -> RelayedResponse:
    """A small JSON refusal with ``x-gateway-reason`` (it always fits the control channel)."""
    body = orjson.dumps({"error": code, "detail": detail, "request_id": request_id})
    headers = (("content-type", "application/json"), ("x-gateway-reason", code))
    return RelayedResponse(status, reason, headers, body)


class RelayListener:
    """Listens on one Hybrid Connection with several control channels.

    Use ``async with RelayListener(...)`` or :meth:`start` / :meth:`stop`. ``metrics`` is
    readable at any time. ``on_alert(code, message)`` is called for conditions an operator must
    fix (``hybrid_connection_not_found``); it must not block.
    """

    def __init__(
        self,
        settings: ListenerSettings,
        *,
        token_provider: TokenProvider,
        request_handler: RequestHandler,
        stream_handler: StreamHandler,
        on_alert: AlertCallback | None = None,
        on_refusal: RefusalSink | None = None,
        rng: Random | None = None,
    ) -> None:
        """Prepare; nothing is connected until :meth:`start`."""
        self._on_refusal = on_refusal
        self.settings = settings
        self.metrics = ListenerMetrics()
        self._tokens = token_provider
        self._handler = request_handler
        self._streams = stream_handler
        self._on_alert = on_alert
        self._rng = rng or Random()  # noqa: S311 - jitter, not a secret
        self._endpoint = settings.relay_endpoint
        self._policy = settings.rendezvous_policy()
        self._path_prefix = "/" + hc_path(settings.hc_path).lower()
        self._proxy = OutboundProxy(settings.proxy)
        self._started = False
        self._channels: set[asyncio.Task[None]] = set()
        self._controls: set[_RelaySocket] = set()
        # Accepted streams' sockets, pinged by _keep_streams_alive.
        self._stream_sockets: set[RelayWebSocket] = set()
        self._work: set[asyncio.Task[None]] = set()
        # Refusals of work read once stop() has begun closing (see _spawn_overflow and the
        # reader): stop() waits for these, not for _work, which it has already cancelled.
        self._after_close: set[asyncio.Task[None]] = set()
        self._requests_in_flight = 0
        self._streams_in_flight = 0
        self._overflow_in_flight = 0
        self._draining = False
        self._stopping = asyncio.Event()
        self._deadlines = _Deadlines(settings.request_timeout)
        # Section 7: a request's rendezvous address is valid for about 30 s only, so an answer
        # ready later cannot open it: a handler still running after early_rendezvous_after has
        # the address opened then, and its answer goes there whatever its size (_dial_early).
        self._early = (
            _Deadlines(settings.early_rendezvous_after, on_due=self._dial_early)
            if settings.early_rendezvous_after < settings.request_timeout
            else None
        )
        # The loop the listener runs on, kept by start(): looking it up per request costs a
        # getpid() system call each time (see _Deadlines.start).
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def requests_in_flight(self) -> int:
        """Relayed requests being handled right now (bounded by ``max_concurrent_requests``)."""
        return self._requests_in_flight

    @property
    def streams_in_flight(self) -> int:
        """Accepted or pending WebSocket streams right now (bounded by the stream limit)."""
        return self._streams_in_flight

    async def __aenter__(self) -> RelayListener:
        """Start the control channels."""
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Drain and stop."""
        await self.stop()

    async def start(self) -> None:
        """Open the configured number of control channels (each reconnects on its own)."""
        if self._started:
            raise RuntimeError("listener already started")
        self._started = True
        self._loop = asyncio.get_running_loop()
        for index in range(self.settings.connections):
            task = asyncio.create_task(self._channel_loop(index), name=f"relay-control-{index}")
            self._channels.add(task)
            task.add_done_callback(self._channels.discard)
        # Cancelled by stop() with the control channels' tasks.
        keepalive = asyncio.create_task(self._keep_streams_alive(), name="relay-stream-pings")
        self._channels.add(keepalive)
        keepalive.add_done_callback(self._channels.discard)

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking new work, let in-flight work finish within ``grace``, then close.

        New requests get 503 and new streams a 503 rejection while draining. The control channels
        stay open until then, because small responses travel on them (section 5.3); after the
        grace period what is left is cancelled - a request still in its handler is answered 503
        ``draining`` on its channel rather than left to the relay's 504 - and every socket closed.
        """
        if not self._started:
            return
        self._draining = True
        wait = self.settings.shutdown_grace if grace is None else grace
        if self._work:
            await asyncio.wait(set(self._work), timeout=wait)
        self._stopping.set()
        work = set(self._work)
        for task in work:
            task.cancel()
        await asyncio.gather(*work, return_exceptions=True)
        # Section 3.4: a clean shutdown is the listener's close with 1000. Closing the control
        # channels first (bounded by the close timeout) lets their readers see the close and end;
        # cancelling them mid-read would end them with an abnormal 1006.
        await asyncio.gather(
            *(control.close(1000) for control in list(self._controls)),
            return_exceptions=True,
        )
        if self._after_close:
            # Requests the relay routed here before it read the close: each answer is one
            # rendezvous dial and one write, bounded by the handshake and send timeouts.
            bound = self.settings.handshake_timeout + self.settings.send_timeout
            await asyncio.wait(set(self._after_close), timeout=bound)
        pending = self._channels | self._work | self._after_close
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        # A request task cancelled before its first step never ran the code that takes it out
        # of _work (see _handle_request); a restarted listener must not find it there.
        self._work.difference_update([task for task in self._work if task.done()])
        self._deadlines.cancel()
        if self._early is not None:
            self._early.cancel()
        self._started = False

    # -- control channels -----------------------------------------------------------------

    async def _channel_loop(self, index: int) -> None:
        backoff = Backoff(self.settings.backoff, self._rng)
        while not self._stopping.is_set():
            kind = await self._connect_once(index, backoff)
            if self._stopping.is_set():
                return
            self.metrics.reconnects[kind.value] += 1
            delay = backoff.next_delay(kind)
            log.info(
                "relay_reconnect channel=%d reason=%s delay=%.2fs",
                index,
                kind.value,
                delay,
                extra={"event": "relay_reconnect", "channel": index},
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()

    async def _connect_once(self, index: int, backoff: Backoff) -> FailureKind:
        settings = self.settings
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that
            # arrives as the token provider returns, and stop() would then wait forever for a
            # channel that goes on to connect.
            async with asyncio.timeout(settings.token_timeout):
                token, expires_at = await self._tokens()
        except Exception as exc:
            log.warning(
                "token_provider_failed channel=%d error=%s",
                index,
                type(exc).__name__,
                extra={"event": "token_provider_failed", "channel": index},
            )
            return FailureKind.ERROR
        url = listen_url(self._endpoint, settings.hc_path, listener_id=str(uuid.uuid4()))
        try:
            ws = await self._dial_listen(url, token)
        except _HandshakeRefusedError as exc:
            return self._refused(index, exc.refusal)
        except ProxyAuthError as exc:
            log.warning(
                "proxy_auth_required channel=%d proxy=%s",
                index,
                exc.proxy,
                extra={"event": "proxy_auth_required", "channel": index},
            )
            return FailureKind.PROXY_AUTH
        except ProxyError as exc:
            log.warning(
                "%s channel=%d proxy=%s",
                exc.code,
                index,
                exc.proxy,
                extra={"event": "relay_proxy_error", "channel": index},
            )
            return FailureKind.ERROR
        except (RelaySocketError, OSError, TimeoutError) as exc:
            log.warning(
                "relay_connect_failed channel=%d error=%s",
                index,
                type(exc).__name__,
                extra={"event": "relay_connect_failed", "channel": index},
            )
            return FailureKind.ERROR
        socket = _RelaySocket(ws, settings.send_timeout)
        connected_at = time.monotonic()
        self.metrics.listeners_online += 1
        self._controls.add(socket)
        log.info(
            "relay_online channel=%d", index, extra={"event": "relay_online", "channel": index}
        )
        try:
            return await self._serve_control(index, socket, time.time(), expires_at)
        finally:
            self._controls.discard(socket)
            self.metrics.listeners_online -= 1
            backoff.connected_for(time.monotonic() - connected_at)
            await socket.close()
            stopping = self._stopping.is_set()
            close_code = ws.close_code if ws.close_code is not None else socket.sent_close_code
            log.info(
                "relay_offline channel=%d close_code=%s%s",
                index,
                close_code,
                " (stopping)" if stopping else "",
                extra={
                    "event": "relay_offline",
                    "channel": index,
                    "close_code": close_code,
                    "stopping": stopping,
                },
            )

    async def _dial_listen(self, url: str, token: str) -> RelayWebSocket:
        try:
            return await open_relay_socket(
                url,
                self._proxy,
                handshake_timeout=self.settings.handshake_timeout,
                max_size=_CONTROL_MAX_MESSAGE,
                close_timeout=self.settings.ping_timeout,
                headers={"ServiceBusAuthorization": token},
            )
        except HandshakeRefusedError as exc:
            raise _HandshakeRefusedError(classify_listen_refusal(exc.status, exc.reason)) from None

    def _refused(self, index: int, refusal: ListenRefusal) -> FailureKind:
        """Log, count and classify a refused listen handshake (section 3.1)."""
        self.metrics.listen_refusals[refusal.kind.value] += 1
        fields = {
            "channel": index,
            "status": refusal.status,
            "relay_reason": refusal.reason,
            "tracking_id": refusal.tracking_id,
        }
        if refusal.kind is RefusalKind.QUOTA:
            log.error(
                "relay_listener_quota_exceeded channel=%d: the relay refused this listener "
                "(HTTP 403 %s): the Hybrid Connection already has its 25 listeners. Lower "
                "relay.connections on this or other gateways of the HC "
                "(docs/high-availability.md)",
                index,
                refusal.reason,
                extra={"event": "relay_listener_quota_exceeded", **fields},
            )
            return FailureKind.QUOTA
        if refusal.kind is RefusalKind.UNAUTHORIZED:
            log.warning(
                "relay_unauthorized channel=%d status=%d %s",
                index,
                refusal.status,
                refusal.reason,
                extra={"event": "relay_unauthorized", **fields},
            )
            return FailureKind.UNAUTHORIZED
        if refusal.kind is RefusalKind.NOT_FOUND:
            message = f"hybrid connection {self.settings.hc_path!r} does not exist on the relay"
            log.error(
                "hybrid_connection_not_found channel=%d: %s",
                index,
                message,
                extra={"event": "hybrid_connection_not_found", **fields},
            )
            self.metrics.alerts["hybrid_connection_not_found"] += 1
            if self._on_alert is not None:
                try:
                    self._on_alert("hybrid_connection_not_found", message)
                except Exception:
                    log.exception("alert callback failed", extra={"event": "alert_failed"})
            return FailureKind.NOT_FOUND
        log.warning(
            "relay_handshake_refused channel=%d status=%d %s",
            index,
            refusal.status,
            refusal.reason,
            extra={"event": "relay_handshake_refused", **fields},
        )
        return FailureKind.ERROR

    async def _serve_control(
        self, index: int, socket: _RelaySocket, issued_at: float, expires_at: float
    ) -> FailureKind:
        pong = asyncio.Event()
        tasks = {
            asyncio.create_task(self._read_control(index, socket, pong)),
            asyncio.create_task(self._ping(socket, pong)),
            asyncio.create_task(self._renew(index, socket, issued_at, expires_at)),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            # Tasks that end in the same moment: the reader's verdict (a close code, a protocol
            # error) wins over a write that failed because the socket was already gone. A
            # failure that escaped here would end this channel's reconnect loop for good.
            for task in done:
                if task.exception() is None:
                    return task.result()
            error = next(iter(done)).exception()
            log.warning(
                "relay_channel_failed channel=%d error=%s",
                index,
                type(error).__name__,
                extra={"event": "relay_channel_failed", "channel": index},
            )
            return FailureKind.ERROR
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read_control(
        self, index: int, socket: _RelaySocket, pong: asyncio.Event
    ) -> FailureKind:
        connection = self._connection(SocketKind.CONTROL)
        ws = socket.ws
        while True:
            received = await ws.receive()
            if not received:
                return self._control_closed(index, socket)
            for frame in received:
                if isinstance(frame, TooLarge):
                    self.metrics.protocol_errors["message_too_large"] += 1
                    log.warning(
                        "relay_protocol_error channel=%d code=message_too_large fatal=True",
                        index,
                        extra={"event": "relay_protocol_error", "channel": index},
                    )
                    return FailureKind.ERROR
                opcode = frame.opcode
                if opcode is Opcode.PONG:
                    pong.set()
                    continue
                if opcode is Opcode.PING:
                    continue  # the WebSocket protocol has answered it
                if opcode is Opcode.CLOSE:
                    return self._control_closed(index, socket)
                events = connection.receive_frame(opcode, frame.data, fin=frame.fin)
                for event in events:
                    if isinstance(event, RequestReceived) and not self._overloaded():
                        # The common event first: a request within the bound, started now.
                        self._start_request(event, socket)
                    elif isinstance(event, ProtocolViolation):
                        self._violation(index, event)
                        if event.fatal:
                            return FailureKind.ERROR
                    elif isinstance(event, MalformedRequestReceived):
                        # Small, and nothing to wait for: answered right here (sections 3.2, 5.3).
                        self._count_malformed(event)
                        await self._answer_here(socket, event.request_id, *_malformed(event))
                    elif isinstance(event, RequestReceived):  # past the bound, or draining
                        # Catalogue item 149: a quick 503 for every request past the cap, written
                        # by the reader itself; no task, so a burst of any size is bounded work.
                        busy = _busy(event.command.id, draining=self._draining)
                        self._refused_here("http", event.command.id, busy, event.command.method)
                        if socket.sent_close_code is None:
                            await self._answer_here(socket, event.command.id, *busy)
                        else:
                            # Our close is on its way (stop): the relay routed this request
                            # before it read that close, and the channel can carry no more data
                            # (RFC 6455 section 5.5.1). The request's rendezvous address still can
                            # (section 5.3), so its sender gets 503 draining, not the relay's 504.
                            response, outcome = busy
                            answer = self._send_response(event.command, response, socket, outcome)
                            self._bounded(answer, self._after_close)
                    else:
                        self._dispatch(event)

    def _control_closed(self, index: int, socket: _RelaySocket) -> FailureKind:
        if socket.sent_close_code is not None:
            return FailureKind.CLOSED  # our own close (stop): no news from the relay
        ws = socket.ws
        # Sections 3.4: 1001 (entity gone/disabled), 1008 (token), 1011 (service, daily
        # recycle) and any other close all lead to a reconnect. The reason carries the
        # relay's tracking id, which Microsoft support asks for.
        reason = clean_reason(ws.close_reason)
        log.info(
            "relay_closed channel=%d code=%s %s",
            index,
            ws.close_code,
            reason,
            extra={
                "event": "relay_closed",
                "channel": index,
                "close_code": ws.close_code,
                "relay_reason": reason,
            },
        )
        if ws.close_code == 1008:
            return FailureKind.TOKEN_EXPIRED
        return FailureKind.CLOSED

    def _connection(self, kind: SocketKind) -> ListenerConnection:
        return ListenerConnection(
            kind,
            self.settings.hc_path,
            self._policy.check,
            limits=self.settings.channel_limits(kind),
        )

    def _count_malformed(self, event: MalformedRequestReceived) -> None:
        self._refused_here("http", event.request_id, _malformed(event))
        field_error = event.error.field_error
        if isinstance(field_error, BadRendezvousAddressError):
            self.metrics.protocol_errors[field_error.code] += 1
            log.warning(
                "bad_rendezvous_address request_id=%s: %s (not dialled; answered 502 on the "
                "control channel). If the relay is in another cloud, set relay.rendezvous_domain",
                event.request_id,
                field_error,
                extra={
                    "event": "bad_rendezvous_address",
                    "request_id": event.request_id,
                    "problem": str(field_error),
                },
            )
            return
        self.metrics.protocol_errors[event.error.code] += 1
        log.warning(
            "malformed_request request_id=%s field_error=%s: %s",
            event.request_id,
            field_error.code,
            event.error,
            extra={
                "event": "malformed_request",
                "request_id": event.request_id,
                "field_error": field_error.code,
            },
        )

    def _refused_here(
        self,
        kind: str,
        interaction_id: str | None,
        answer: tuple[RelayedResponse, str] | tuple[int, str],
        method: str | None = None,
    ) -> None:
        """Hand a refusal the listener made itself to the decision log (never raises).

        ``answer`` is what the sender is told (a response and its outcome code), or a status and
        a code; status ``0`` when nothing can be answered.
        """
        if self._on_refusal is None:
            return
        first, code = answer
        if isinstance(first, int):
            status = first
        else:
            status = first.status
            # The decision log names the reason the sender was told, where there is one.
            told = dict(first.headers).get("x-gateway-reason")
            code = told or code
        try:
            self._on_refusal(RelayRefusal(kind, interaction_id, status, code, method))
        except Exception:
            log.exception("refusal record failed", extra={"event": "refusal_record_failed"})

    async def _answer_here(
        self, socket: _RelaySocket, request_id: str, response: RelayedResponse, outcome: str
    ) -> bool:
        """Write an answer on the socket its request came on; a failed write is counted and
        logged, never raised (``False``).

        A socket that cannot take the write is lost anyway: the control channel's reader sees
        that next, and a rendezvous socket's loop stops reading it.
        """
        try:
            await self._write_response(socket, request_id, response, outcome)
        except Exception as exc:
            self.metrics.requests["send_failed"] += 1
            log.warning(
                "response_send_failed request_id=%s error=%s",
                request_id,
                type(exc).__name__,
                extra={"event": "response_send_failed", "request_id": request_id},
            )
            return False
        return True

    def _violation(self, index: int, event: ProtocolViolation) -> None:
        code = event.error.code
        self.metrics.protocol_errors[code] += 1
        if code in ("bad_rendezvous_address", "malformed_command"):
            # An accept or rendezvous-only request that cannot be answered: still a decision.
            self._refused_here("http", None, (0, code))
        if code == "bad_rendezvous_address":
            log.warning(
                "bad_rendezvous_address channel=%d: %s (not dialled)",
                index,
                event.error,
                extra={"event": "bad_rendezvous_address", "channel": index},
            )
        else:
            log.warning(
                "relay_protocol_error channel=%d code=%s fatal=%s: %s",
                index,
                code,
                event.fatal,
                event.error,
                extra={"event": "relay_protocol_error", "channel": index},
            )

    async def _ping(self, socket: _RelaySocket, pong: asyncio.Event) -> FailureKind:
        settings = self.settings
        while True:
            await asyncio.sleep(settings.ping_interval)
            pong.clear()
            socket.ws.ping(b"gw")
            try:
                async with asyncio.timeout(settings.ping_timeout):
                    await pong.wait()
            except TimeoutError:
                log.warning(
                    "relay_ping_timeout after %.1fs",
                    settings.ping_timeout,
                    extra={"event": "relay_ping_timeout"},
                )
                return FailureKind.PING_TIMEOUT

    async def _renew(
        self, index: int, socket: _RelaySocket, issued_at: float, expires_at: float
    ) -> FailureKind:
        settings = self.settings
        while True:
            due = issued_at + settings.renew_at * max(expires_at - issued_at, 0.0)
            await asyncio.sleep(max(due - time.time(), 0.0))
            while True:
                try:
                    async with asyncio.timeout(settings.token_timeout):
                        token, new_expiry = await self._tokens()
                    break
                except Exception as exc:
                    log.warning(
                        "token_renewal_failed channel=%d error=%s",
                        index,
                        type(exc).__name__,
                        extra={"event": "token_renewal_failed", "channel": index},
                    )
                    # Retry well before expiry; past it the relay closes with 1008 (section 3.4)
                    # and the reconnect mints a fresh token anyway.
                    await asyncio.sleep(min(max((expires_at - time.time()) / 4, 1.0), 30.0))
            await socket.send_frames(renew_token_frames(token))
            self.metrics.token_renewals += 1
            log.info(
                "relay_token_renewed channel=%d",
                index,
                extra={"event": "relay_token_renewed", "channel": index},
            )
            issued_at, expires_at = time.time(), new_expiry

    # -- work dispatch --------------------------------------------------------------------

    def _spawn(
        self, coro: Coroutine[Any, Any, None], into: set[asyncio.Task[None]] | None = None
    ) -> None:
        tasks = self._work if into is None else into
        task = (self._loop or asyncio.get_running_loop()).create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _overloaded(self) -> bool:
        return self._draining or self._requests_in_flight >= self.settings.max_concurrent_requests

    def _dispatch(self, event: Event) -> None:
        """Start the work for an accept or a rendezvous-only request (requests that arrived
        whole are started by the reader itself: :meth:`_start_request`)."""
        settings = self.settings
        if isinstance(event, AcceptReceived):
            if self._draining or self._streams_in_flight >= settings.max_concurrent_streams:
                busy = RejectStream(503, "Gateway busy")
                code = "draining" if self._draining else "overloaded"
                self._refused_here("stream", event.command.id, (503, code))
                self._spawn_overflow(self._reject(event.command, busy, outcome="overloaded"))
                return
            self._streams_in_flight += 1
            self._spawn(self._accept(event.command))
        elif isinstance(event, RendezvousRequested):
            if self._overloaded():
                self._spawn_overflow(self._serve_rendezvous(event.command.address, overflow=True))
                return
            self._requests_in_flight += 1
            self._spawn(self._serve_rendezvous(event.command.address, overflow=False))

    def _start_request(self, event: RequestReceived, control: _RelaySocket) -> None:
        """Run a relayed request in its own task (callers have checked the bound)."""
        self._requests_in_flight += 1
        # No done callback (a scheduled call of its own per request): the task leaves _work
        # itself when its coroutine ends (see _handle_request).
        loop = self._loop or asyncio.get_running_loop()
        self._work.add(loop.create_task(self._handle_request(event.command, event.body, control)))

    def _spawn_overflow(self, coro: Coroutine[Any, Any, None]) -> None:
        # Refusals that must open a rendezvous socket (a stream's reject, a rendezvous-only
        # request's 503: sections 4 and 5.3) cost a dial each, so they are bounded too; past this
        # many, the relay's own timeout answers. Requests on the control channel never come here:
        # their 503 is one frame written by the reader. Once stop() is closing the channels, the
        # relay may still route work here until it reads our close (sections 3.4, 5.3): those
        # refusals join the after-close answers that stop() waits for.
        into = self._after_close if self._stopping.is_set() else self._work
        if not self._bounded(coro, into):
            self._refused_here("http", None, (0, "overloaded"))

    def _bounded(self, coro: Coroutine[Any, Any, None], into: set[asyncio.Task[None]]) -> bool:
        """Run ``coro`` in a task of ``into`` unless the overflow bound is reached (then it is
        closed, counted as dropped, and ``False`` returned)."""
        if self._overflow_in_flight >= self.settings.max_concurrent_requests:
            self.metrics.requests["dropped"] += 1
            coro.close()
            return False
        self._overflow_in_flight += 1

        async def run() -> None:
            try:
                await coro
            finally:
                self._overflow_in_flight -= 1

        self._spawn(run(), into)
        return True

    # -- HTTP requests --------------------------------------------------------------------

    async def _run_handler(
        self, command: RequestCommand, body: bytes | None
    ) -> tuple[RelayedResponse, str]:
        """Call the handler; never raises, always returns something to answer with."""
        current = asyncio.current_task(self._loop)
        assert current is not None  # always run in a task of the listener
        answer = await self._handler_answer(command, body, current)
        if answer[1] != "ok":
            self._refused_here("http", command.id, answer, command.method)
        return answer

    async def _handler_answer(
        self, command: RequestCommand, body: bytes | None, current: asyncio.Task[Any]
    ) -> tuple[RelayedResponse, str]:
        """The handler's answer and its outcome; ``current`` is the task this runs in (the
        deadline cancels it). Refusals are not recorded here (see :meth:`_run_handler`)."""
        rid = command.id
        try:
            request = project_request(command, body, self.settings.hc_path)
        except TargetOutsideError:
            detail = "the request target is outside this hybrid connection"
            return _refusal(400, "bad_target", detail, rid), "bad_target"
        deadline = self._deadlines.start(current)
        try:
            response = await self._handler(request)
        except asyncio.CancelledError:
            if deadline.expired:
                return self._handler_timed_out(rid)  # finally takes the cancellation back
            if not self._stopping.is_set():
                raise
            # stop() ended the grace period: the control channels are still open, so the
            # request is answered now instead of being left to the relay's 504 (section 5.1).
            current.uncancel()
            log.warning(
                "request_cut_at_stop request_id=%s: the shutdown grace period ended",
                rid,
                extra={"event": "request_cut_at_stop", "request_id": rid},
            )
            return _busy(rid, draining=True)
        except TimeoutError:
            return self._handler_timed_out(rid)
        except Exception:
            log.exception(
                "request_handler_failed request_id=%s",
                rid,
                extra={"event": "request_handler_failed", "request_id": rid},
            )
            return _refusal(500, "handler_error", "internal error", rid), "handler_error"
        finally:
            self._deadlines.finish(deadline)
            if deadline.expired:
                # The deadline's cancellation is handled here whatever the handler made of it
                # (as asyncio.timeout does), so later awaits of this task are not cancelled.
                current.uncancel()
        if not isinstance(response, RelayedResponse) or not 100 <= response.status <= 999:
            log.error(
                "request_handler_invalid_response request_id=%s",
                rid,
                extra={"event": "request_handler_invalid_response", "request_id": rid},
            )
            return _refusal(500, "invalid_response", "internal error", rid), "invalid_response"
        return response, "ok"

    def _handler_timed_out(self, rid: str) -> tuple[RelayedResponse, str]:
        log.warning(
            "request_handler_timeout request_id=%s",
            rid,
            extra={"event": "request_handler_timeout", "request_id": rid},
        )
        detail = "the gateway did not finish the request in time"
        return _refusal(504, "handler_timeout", detail, rid), "handler_timeout"

    async def _handle_request(
        self, command: RequestCommand, body: bytes | None, control: _RelaySocket
    ) -> None:
        # One coroutine for the common path: the handler's answer, then a write that needs no
        # waiting; each further await of a coroutine would cost a frame and a call per request.
        task = asyncio.current_task(self._loop)
        assert task is not None  # always run in the request's own task (see _dispatch)
        timers = self._early
        early = None if timers is None else timers.start(task, command.address)
        try:
            try:
                response, outcome = await self._handler_answer(command, body, task)
            finally:
                if timers is not None and early is not None:
                    timers.finish(early)
            if outcome != "ok":
                self._refused_here("http", command.id, (response, outcome), command.method)
            if early is not None and early.dial is not None:
                dial, early.dial = early.dial, None
                await self._answer_early(command, dial, response, control, outcome)
                return
            prepared = prepare_response(command.id, response)
            if not self._sent_at_once(control, prepared, outcome):
                await self._send_response(command, response, control, outcome, prepared)
        finally:
            self._requests_in_flight -= 1
            self._work.discard(task)
            if early is not None and early.dial is not None:
                await _discard_dial(early.dial)

    def _dial_early(self, deadline: _Deadline) -> None:
        """Open the rendezvous address of a request whose handler is still running.

        Section 7: the address is valid for about 30 s; an answer that is ready after that and
        needs the rendezvous (over 64 KiB, or streamed, section 5.3) could no longer open it,
        and its sender would get the relay's 504. Once this socket is open the answer goes over
        it whatever its size: a request rendezvous that is opened and closed without one costs
        the sender its connection (section 5.3).
        """
        address = deadline.address
        if address is None:
            return
        loop = self._loop or asyncio.get_running_loop()
        deadline.dial = loop.create_task(self._dial_rendezvous(address))

    async def _answer_early(
        self,
        command: RequestCommand,
        dial: asyncio.Task[_RelaySocket],
        response: RelayedResponse,
        control: _RelaySocket,
        outcome: str,
    ) -> None:
        """Answer over the socket :meth:`_dial_early` opened; if it could not be opened, as if
        it had never been tried (the control channel for a small answer)."""
        try:
            socket = await dial
        except Exception as exc:
            log.warning(
                "early_rendezvous_failed request_id=%s error=%s",
                command.id,
                type(exc).__name__,
                extra={"event": "early_rendezvous_failed", "request_id": command.id},
            )
            await self._send_response(command, response, control, outcome)
            return
        self.metrics.early_rendezvous += 1
        await self._send_response(command, response, control, outcome, opened=socket)

    def _sent_at_once(
        self, control: _RelaySocket, prepared: PreparedResponse, outcome: str
    ) -> bool:
        """Write a small answer on its control channel now if nothing needs waiting for (see
        :meth:`_RelaySocket.send_now`); ``False`` leaves it to :meth:`_send_response`."""
        if (
            prepared.route is ResponseRoute.CONTROL
            and prepared.valid
            and control.send_answer_now(prepared)
        ):
            self.metrics.requests[outcome] += 1
            return True
        return False

    async def _send_response(
        self,
        command: RequestCommand,
        response: RelayedResponse,
        control: _RelaySocket,
        outcome: str,
        prepared: PreparedResponse | None = None,
        *,
        opened: _RelaySocket | None = None,
    ) -> None:
        """Answer on the control channel when small, else over the request's rendezvous;
        over ``opened`` (the request's rendezvous, open already: :meth:`_dial_early`) always."""
        body = response.body
        if prepared is None:
            prepared = prepare_response(command.id, response)
            if opened is None and self._sent_at_once(control, prepared, outcome):
                return
        try:
            if opened is not None:
                try:
                    await self._write_response(opened, command.id, response, outcome, prepared)
                finally:
                    await opened.close()
                return
            if prepared.route is ResponseRoute.CONTROL:
                if await self._try_control(control, command.id, response, outcome, prepared):
                    return
                # Section 5.3: a response to a request that arrived on the control channel may
                # also go over that request's rendezvous address, which stays valid (about 30 s,
                # section 7) after the control channel is gone - the daily recycle (section 3.4)
                # or a dropped connection must not turn a finished request into the relay's 504.
                self.metrics.late_answers += 1
                log.info(
                    "relay_late_answer request_id=%s: control channel gone, answering over the "
                    "request's rendezvous address",
                    command.id,
                    extra={"event": "relay_late_answer", "request_id": command.id},
                )
            # The core checked command.address against the rendezvous policy before reporting
            # the request, so dialling it here is safe (catalogue item 24).
            assert command.address is not None
            rendezvous = await self._dial_rendezvous(command.address)
            try:
                await self._write_response(rendezvous, command.id, response, outcome, prepared)
            finally:
                await rendezvous.close()
        except Exception as exc:
            self.metrics.requests["send_failed"] += 1
            log.warning(
                "response_send_failed request_id=%s error=%s",
                command.id,
                type(exc).__name__,
                extra={"event": "response_send_failed", "request_id": command.id},
            )
        finally:
            if isinstance(body, AsyncIterator) and hasattr(body, "aclose"):
                with contextlib.suppress(Exception):
                    await body.aclose()

    async def _try_control(
        self,
        control: _RelaySocket,
        request_id: str,
        response: RelayedResponse,
        outcome: str,
        prepared: PreparedResponse,
    ) -> bool:
        """Answer on the control channel the request came on; ``False`` if it is gone.

        A write that fails or stalls on a channel the relay dropped is not retried there: the
        caller falls back to the rendezvous address (a new control channel is no route for it).
        """
        if not control.ws.open:
            return False
        try:
            await self._write_response(control, request_id, response, outcome, prepared)
        except (ConnectionError, RelaySocketError, TimeoutError):
            return False
        return True

    async def _write_response(
        self,
        socket: _RelaySocket,
        request_id: str,
        response: RelayedResponse,
        outcome: str,
        prepared: PreparedResponse | None = None,
    ) -> None:
        if prepared is None:
            prepared = prepare_response(request_id, response)
        if not prepared.valid:
            outcome = "invalid_response"
            log.error(
                "request_handler_invalid_headers request_id=%s",
                request_id,
                extra={"event": "request_handler_invalid_headers", "request_id": request_id},
            )
        body = response.body
        if prepared.streamed and isinstance(body, AsyncIterator):
            await socket.send_streamed(prepared, body, self.settings.request_timeout)
        else:
            frames = prepared.frames()
            if not socket.send_now(frames):
                await socket.send_frames(frames)
        self.metrics.requests[outcome] += 1

    async def _dial_rendezvous(self, address: str) -> _RelaySocket:
        settings = self.settings
        ws = await open_relay_socket(
            address,
            self._proxy,
            handshake_timeout=settings.handshake_timeout,
            # The protocol refuses a message over max_size from its frame header, so no more
            # than the configured limit is ever buffered (catalogue item 150).
            max_size=max(settings.max_request_body, MAX_CONTROL_MESSAGE_SIZE) + 1,
            close_timeout=settings.ping_timeout,
        )
        return _RelaySocket(ws, settings.send_timeout)

    async def _serve_rendezvous(self, address: str, *, overflow: bool) -> None:
        """Fetch rendezvous-only requests from ``address`` and answer each there (section 3.2)."""
        try:
            try:
                socket = await self._dial_rendezvous(address)
            except Exception as exc:
                self.metrics.requests["send_failed"] += 1
                log.warning(
                    "rendezvous_connect_failed error=%s",
                    type(exc).__name__,
                    extra={"event": "rendezvous_connect_failed"},
                )
                return
            try:
                await self._rendezvous_requests(socket, overflow=overflow)
            finally:
                await socket.close()
        finally:
            if not overflow:
                self._requests_in_flight -= 1

    async def _rendezvous_requests(self, socket: _RelaySocket, *, overflow: bool) -> None:
        connection = self._connection(SocketKind.RENDEZVOUS)
        ws = socket.ws
        while True:
            # The relay keeps the socket for the sender's connection; an idle one is given back.
            try:
                async with asyncio.timeout(self.settings.request_timeout):
                    received = await ws.receive()
            except TimeoutError:
                return
            if not received:
                return
            for frame in received:
                if isinstance(frame, TooLarge):
                    # The WebSocket protocol refused the next message from its frame header and
                    # queued its 1009 close; the core knows whose body it was.
                    for event in connection.receive_too_large():
                        if isinstance(event, ProtocolViolation):
                            await self._rendezvous_violation(socket, event, refused=True)
                    return
                opcode = frame.opcode
                if opcode is Opcode.CLOSE:
                    return
                if opcode is Opcode.PING or opcode is Opcode.PONG:
                    continue
                for event in connection.receive_frame(opcode, frame.data, fin=frame.fin):
                    if isinstance(event, ProtocolViolation):
                        await self._rendezvous_violation(socket, event, refused=False)
                        if event.fatal:
                            return
                    elif isinstance(event, MalformedRequestReceived):
                        # Section 3.2: a request delivered here is answered here.
                        self._count_malformed(event)
                        if not await self._answer_here(
                            socket, event.request_id, *_malformed(event)
                        ):
                            return
                    elif isinstance(event, RequestReceived):
                        if overflow or self._draining:
                            busy = _busy(event.command.id, draining=self._draining)
                            self._refused_here("http", event.command.id, busy, event.command.method)
                            response, outcome = busy
                        else:
                            response, outcome = await self._run_handler(event.command, event.body)
                        # The relay may have given up on this socket meanwhile (its response
                        # deadline): the answer is then counted as send_failed, not lost.
                        if not await self._answer_here(socket, event.command.id, response, outcome):
                            return
                        if self._stopping.is_set():
                            return  # stop() waits for this answer, not for a next request

    async def _rendezvous_violation(
        self, socket: _RelaySocket, event: ProtocolViolation, *, refused: bool
    ) -> None:
        """Count and log; answer an oversize request body with 413, then close with 1009.

        Section 5.3: a request delivered on a rendezvous socket is answered on that socket, and
        the response may go out before the request body has been read to its end (RFC 9110
        section 15.5.14 lets a server refuse content it will not take and close the connection).
        ``refused``: the WebSocket protocol (not the core) refused the message and has queued its
        close; the answer is put before that close (:meth:`RelayWebSocket.send_last`).
        """
        code = event.error.code
        self.metrics.protocol_errors[code] += 1
        if event.request_id is None or code != "message_too_large":
            log.warning(
                "rendezvous_protocol_error code=%s fatal=%s",
                code,
                event.fatal,
                extra={"event": "rendezvous_protocol_error"},
            )
            return
        log.warning(
            "request_body_too_large request_id=%s limit=%d",
            event.request_id,
            self.settings.max_request_body,
            extra={"event": "request_body_too_large", "request_id": event.request_id},
        )
        limit = self.settings.max_request_body
        detail = f"body exceeds {limit} bytes"
        # RFC 9110 section 15.5.14 renamed the phrase; http.HTTPStatus still has the old one.
        response = _refusal(413, "body_too_large", detail, event.request_id, "Content Too Large")
        self._refused_here("http", event.request_id, (response, "body_too_large"))
        prepared = prepare_response(event.request_id, response, arrived_on=SocketKind.RENDEZVOUS)
        async with socket.lock:
            sent = socket.ws.send_last(prepared.frames())
        if sent:
            self.metrics.requests["body_too_large"] += 1
            # The relay is likely still sending the body: read on until it hangs up (RFC 9112
            # section 9.6) so the 413 is not lost to a reset.
            await socket.ws.linger(self.settings.ping_timeout)
        else:
            self.metrics.requests["send_failed"] += 1
            log.warning(
                "response_send_failed request_id=%s",
                event.request_id,
                extra={"event": "response_send_failed", "request_id": event.request_id},
            )

    # -- WebSocket streams ----------------------------------------------------------------

    async def _decide(self, info: AcceptInfo) -> StreamDecision:
        try:
            async with asyncio.timeout(self.settings.stream_decision_timeout):
                decision = await self._streams.decide(info)
        except TimeoutError:
            self.metrics.streams["decide_error"] += 1
            log.warning(
                "stream_decision_timeout stream_id=%s",
                info.stream_id,
                extra={"event": "stream_decision_timeout", "stream_id": info.stream_id},
            )
            return RejectStream(503, "Gateway timeout deciding on the stream")
        except Exception:
            self.metrics.streams["decide_error"] += 1
            log.exception(
                "stream_decision_failed stream_id=%s",
                info.stream_id,
                extra={"event": "stream_decision_failed", "stream_id": info.stream_id},
            )
            return RejectStream(500, "Gateway error")
        if not isinstance(decision, (AcceptStream, RejectStream)):
            self.metrics.streams["decide_error"] += 1
            return RejectStream(500, "Gateway error")
        return decision

    async def _accept(self, command: AcceptCommand) -> None:
        try:
            info = project_accept(command, self.settings.hc_path)
            decision = await self._decide(info)
            if isinstance(decision, RejectStream):
                await self._reject(command, decision)
                return
            address = command.address
            # This frame lives as long as the stream: drop the parsed command (its connect
            # headers are in ``info`` already) rather than hold it for hours per stream.
            del command
            await self._serve_stream(address, info, decision)
        finally:
            self._streams_in_flight -= 1

    async def _serve_stream(self, address: str, info: AcceptInfo, decision: AcceptStream) -> None:
        settings = self.settings
        try:
            ws = await open_relay_socket(
                address,
                self._proxy,
                handshake_timeout=settings.handshake_timeout,
                max_size=settings.max_request_body,
                subprotocols=() if decision.subprotocol is None else (decision.subprotocol,),
                close_timeout=settings.ping_timeout,
            )
        except Exception as exc:
            # Only the type: error messages may carry the URL, and the address is a credential.
            self.metrics.streams["failed"] += 1
            log.warning(
                "stream_connect_failed stream_id=%s error=%s",
                info.stream_id,
                type(exc).__name__,
                extra={"event": "stream_connect_failed", "stream_id": info.stream_id},
            )
            return
        self.metrics.streams["accepted"] += 1
        self._stream_sockets.add(ws)
        try:
            await self._streams.serve(info, _StreamSocket(ws))
        except Exception:
            self.metrics.streams["failed"] += 1
            log.exception(
                "stream_handler_failed stream_id=%s",
                info.stream_id,
                extra={"event": "stream_handler_failed", "stream_id": info.stream_id},
            )
        finally:
            self._stream_sockets.discard(ws)
            await ws.close()

    async def _keep_streams_alive(self) -> None:
        """Ping every accepted stream's socket every ``ping_interval`` (section 7).

        The service's load balancer drops a connection that carries nothing either way for about
        4 minutes, rendezvous sockets included, without a close frame: an LDAP connection a
        client keeps in its pool would be cut under it although both ends want it. The pings
        keep this side's leg busy (the relay answers them itself, section 4); the sender keeps
        its own. One task for all streams: a ping is one small queued write per socket.
        """
        while True:
            await asyncio.sleep(self.settings.ping_interval)
            for ws in list(self._stream_sockets):
                ws.ping(b"gw")

    async def _reject(
        self, command: AcceptCommand, decision: RejectStream, *, outcome: str = "rejected"
    ) -> None:
        """Open the address with the reject parameters; the relay's 410 means done (section 4)."""
        url = reject_url(command.address, decision.status, decision.description)
        try:
            ws = await open_relay_socket(
                url,
                self._proxy,
                handshake_timeout=self.settings.handshake_timeout,
                max_size=1024,
                close_timeout=self.settings.ping_timeout,
            )
        except HandshakeRefusedError as exc:
            if exc.status == 410:
                self.metrics.streams[outcome] += 1
                return
            log.warning(
                "stream_reject_failed stream_id=%s status=%d",
                command.id,
                exc.status,
                extra={"event": "stream_reject_failed", "stream_id": command.id},
            )
        except Exception as exc:
            log.warning(
                "stream_reject_failed stream_id=%s error=%s",
                command.id,
                type(exc).__name__,
                extra={"event": "stream_reject_failed", "stream_id": command.id},
            )
        else:
            # The relay should never upgrade a reject; do not leave the socket open if it did.
            await ws.close()
            log.warning(
                "stream_reject_upgraded stream_id=%s",
                command.id,
                extra={"event": "stream_reject_upgraded", "stream_id": command.id},
            )
        self.metrics.streams["failed"] += 1
