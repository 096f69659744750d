"""The loopback HTTP endpoint for operators: ``/healthz``, ``/readyz`` and ``/metrics``.

``/healthz`` answers 200 while the process runs its event loop. ``/readyz`` answers 200 only while
the agent can serve: at least one relay listener online and a valid configuration and policy
loaded; otherwise 503 with the reasons, so a load balancer or an operator sees why.

The server is a small :class:`asyncio.Protocol` reading requests with httptools (llhttp, strict
mode; the parser the forward reads answers with), not aiohttp's web server: a gateway that needs
no aiohttp feature then never loads aiohttp (about 9 MiB resident, issue 13). It serves the three
routes and nothing else, with the limits of a small internal endpoint:

* ``GET`` and ``HEAD`` (RFC 9110 section 9.3.2: the same head, no content); another method on a
  route is 405 with ``Allow``, another path 404, both as short ``text/plain`` bodies;
* a request line of at most 8190 bytes, at most 128 header fields of at most 8190 bytes each, a
  body of at most 1 KiB (read and dropped: no route takes one; more is 413); anything llhttp
  refuses is 400; each of these closes the connection, as does a request to upgrade (answered
  as any other);
* HTTP/1.1 keep-alive unless the client says ``Connection: close`` (HTTP/1.0: only with
  ``Connection: keep-alive``), RFC 9112 section 9.3; at most 8 pipelined requests are read ahead
  of their answers, and reading pauses while the client does not read what it was sent;
* a connection that brings no complete request for 15 s, or does not take its answers in that
  time, is closed; an answer that takes more than 30 s to build is a 503.

The process serving ``observability.listen`` (``gateway run``'s supervisor, or the one process)
writes the address it bound to ``operator-endpoint`` in the state directory, ``HOST:PORT`` and a
newline, and removes it when it stops. With port 0 in ``observability.listen`` the kernel picks a
free port and this file is the one place that names it: ``gateway status`` reads it, and so can
anything else that starts the gateway (the demo does), with no port chosen beforehand that
another process could take before the gateway binds it.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any, cast

import httptools

from gateway.observability.metrics import Metrics
from gateway.statefile import replace_atomically

log = logging.getLogger(__name__)


@dataclass
class Readiness:
    """What ``/readyz`` reports: ready, plus the facts behind it."""

    ready: bool
    reasons: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


# In the state directory: the operator endpoint's bound address (see the module's docstring).
ENDPOINT_FILE = "operator-endpoint"
_ENDPOINT_MAX_BYTES = 300

# The supervisor of several workers answers by asking each of them (gateway.supervisor).
MetricsPage = Callable[[], Awaitable[bytes]]
ReadinessProbe = Callable[[], Readiness] | Callable[[], Awaitable[Readiness]]

# Limits of one request (aiohttp's server defaults, which this endpoint had before).
MAX_LINE = 8190
MAX_HEADERS = 128
MAX_BODY = 1024
# What llhttp may be fed for one request head before it completes.
_MAX_HEAD = (MAX_HEADERS + 1) * (2 * MAX_LINE + 4)
# Requests read ahead of their answers on one connection.
MAX_PIPELINED = 8
# A connection waiting for a request, or for the client to take its answers, is closed after this.
IDLE_SECONDS = 15.0
# Bound on building one answer (the supervisor's readiness asks every worker).
ANSWER_SECONDS = 30.0

_JSON = "application/json; charset=utf-8"
_TEXT = "text/plain; charset=utf-8"
_ROUTES = ("/healthz", "/readyz", "/metrics")
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(slots=True)
class _Request:
    method: str
    path: str
    keep_alive: bool
    version: str


@dataclass(slots=True)
class _Answer:
    status: int
    content_type: str
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)


class _RequestError(Exception):
    """A request this endpoint refuses; the connection closes after the answer."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _text(status: int) -> _Answer:
    # The plain bodies aiohttp's server wrote for these answers, kept for scripts that read them.
    return _Answer(status, _TEXT, f"{status}: {_REASONS[status]}".encode())


def _head(answer: _Answer, *, version: str, keep_alive: bool, body: bool) -> bytes:
    """Status line and header block (RFC 9112 sections 4 and 5), then the body unless HEAD."""
    lines = [
        f"HTTP/{version} {answer.status} {_REASONS[answer.status]}",
        f"Content-Type: {answer.content_type}",
        f"Content-Length: {len(answer.body)}",
        f"Date: {formatdate(usegmt=True)}",
        *(f"{name}: {value}" for name, value in answer.headers),
    ]
    if not keep_alive:
        lines.append("Connection: close")
    elif version == "1.0":
        lines.append("Connection: keep-alive")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + answer.body if body else head


class HealthServer:
    """Serves the three endpoints on ``host:port`` (normally 127.0.0.1).

    ``metrics`` is the agent's registry, or a coroutine function that renders the page;
    ``readiness`` returns the state, or a coroutine that does. ``idle_seconds`` bounds the wait
    for a request and for the client to take its answers.
    """

    def __init__(
        self,
        metrics: Metrics | MetricsPage,
        readiness: ReadinessProbe,
        *,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self._metrics = metrics
        self._readiness = readiness
        self.idle_seconds = idle_seconds
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        """Bind and serve; ``self.port`` is the bound port (useful with port 0)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop serving: no new connection, and the open ones closed."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for connection in list(self._connections):
            connection.shutdown()
        await server.wait_closed()

    async def answer(self, request: _Request) -> _Answer:
        """The answer to one parsed request."""
        if request.path not in _ROUTES:
            return _text(404)
        if request.method not in ("GET", "HEAD"):
            answer = _text(405)
            answer.headers.append(("Allow", "GET,HEAD"))
            return answer
        if request.path == "/healthz":
            return _Answer(200, _JSON, json.dumps({"status": "ok"}).encode())
        if request.path == "/readyz":
            probe = self._readiness()
            state = await probe if inspect.isawaitable(probe) else probe
            body = {"ready": state.ready, "reasons": state.reasons, **state.details}
            status = 200 if state.ready else 503
            return _Answer(status, _JSON, json.dumps(body, default=str).encode())
        metrics = self._metrics
        page = metrics.render() if isinstance(metrics, Metrics) else await metrics()
        return _Answer(200, Metrics.content_type, page)

    def opened(self, connection: _Connection) -> None:
        """Track a connection, so that :meth:`stop` can close it."""
        self._connections.add(connection)

    def closed(self, connection: _Connection) -> None:
        """Forget a closed connection."""
        self._connections.discard(connection)


class _Connection(asyncio.Protocol):
    """One client connection: the request parser (its callbacks are the ``on_*`` methods), the
    requests read and not yet answered, and the task answering them in order."""

    def __init__(self, server: HealthServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._pending: deque[_Request | _RequestError] = deque()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._reading = True
        self._writable: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        # The request being parsed.
        self._url = bytearray()
        self._fields = 0
        self._body = 0
        self._head_bytes = 0
        self._in_head = False

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start waiting for the first request."""
        self._transport = cast(asyncio.Transport, transport)
        self._server.opened(self)
        self._arm()

    def data_received(self, data: bytes) -> None:
        """Feed the parser; a request it refuses is answered with 400 and the connection ends."""
        if self._closed or (self._pending and isinstance(self._pending[-1], _RequestError)):
            return  # after a refusal nothing more is read
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._refuse(cause.status if isinstance(cause, _RequestError) else 400)
            return
        except httptools.HttpParserUpgrade:
            # llhttp stops after a request that asks to upgrade (RFC 9110 section 7.8): it is
            # answered as any other, then the connection ends, as no route speaks another
            # protocol and the bytes after it are not HTTP/1.1.
            last = self._pending[-1] if self._pending else None
            if isinstance(last, _Request):
                last.keep_alive = False
            self._refuse(0)
            return
        except httptools.HttpParserError:
            self._refuse(400)
            return
        if self._in_head:
            # llhttp buffers a field until it ends: bound what one head may make it hold.
            self._head_bytes += len(data)
            if self._head_bytes > _MAX_HEAD:
                self._refuse(400)
                return
        if len(self._pending) >= MAX_PIPELINED and self._reading and self._transport is not None:
            self._reading = False
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        """The client finished sending: answer what was read, then close."""
        self._pending.append(_RequestError(0))
        self._serve()
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        """Forget the connection; an answer being built is abandoned."""
        self._closed = True
        self._server.closed(self)
        self._cancel_timer()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def pause_writing(self) -> None:
        """The client is not reading its answers: wait before writing more."""
        if self._writable is None:
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        """The client read enough: writing may go on."""
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    # -- parser callbacks (httptools.HttpRequestParser) ------------------------------------------

    def on_message_begin(self) -> None:
        """A request starts."""
        self._url.clear()
        self._fields = 0
        self._body = 0
        self._head_bytes = 0
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        """A piece of the request target (llhttp may deliver it in parts)."""
        self._url += url
        if len(self._url) > MAX_LINE:
            raise _RequestError(400)

    def on_header(self, name: bytes, value: bytes) -> None:
        """One header field: counted and bounded; none changes the answer."""
        self._fields += 1
        if self._fields > MAX_HEADERS or len(name) > MAX_LINE or len(value) > MAX_LINE:
            raise _RequestError(400)

    def on_headers_complete(self) -> None:
        """The head is complete."""
        self._in_head = False

    def on_body(self, data: bytes) -> None:
        """Body bytes are counted and dropped (no route takes a body)."""
        self._body += len(data)
        if self._body > MAX_BODY:
            raise _RequestError(413)

    def on_message_complete(self) -> None:
        """A whole request: queue it for the answering task."""
        parser = self._parser
        target = bytes(self._url)
        try:
            path = httptools.parse_url(target).path.decode("ascii") if target else ""
        except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
            raise _RequestError(400) from None
        self._pending.append(
            _Request(
                parser.get_method().decode("ascii"),
                path,
                parser.should_keep_alive(),
                parser.get_http_version(),
            )
        )
        self._serve()

    # -- answering -------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (safe to call more than once)."""
        if self._transport is not None and not self._closed:
            self._closed = True
            self._transport.close()

    def shutdown(self) -> None:
        """Close the connection and abandon an answer being built (the server stops)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self.close()

    def _refuse(self, status: int) -> None:
        self._pending.append(_RequestError(status))
        self._serve()

    def _serve(self) -> None:
        self._cancel_timer()
        if self._task is None or self._task.done():
            self._task = self._loop.create_task(self._answer_pending())

    async def _answer_pending(self) -> None:
        transport = self._transport
        assert transport is not None
        while self._pending and not self._closed:
            item = self._pending.popleft()
            if isinstance(item, _RequestError):
                if item.status:
                    transport.write(
                        _head(_text(item.status), version="1.1", keep_alive=False, body=True)
                    )
                self.close()
                return
            try:
                async with asyncio.timeout(ANSWER_SECONDS):
                    answer = await self._server.answer(item)
            except TimeoutError:
                answer = _text(503)
                item.keep_alive = False
            except Exception:
                # A probe that failed is the agent's fault, not the client's; the next request
                # may fare better, but this connection ends.
                log.exception(
                    "the health endpoint could not answer %s",
                    item.path,
                    extra={"event": "health_endpoint_failed"},
                )
                answer = _text(500)
                item.keep_alive = False
            version = item.version if item.version in ("1.0", "1.1") else "1.1"
            transport.write(
                _head(
                    answer, version=version, keep_alive=item.keep_alive, body=item.method != "HEAD"
                )
            )
            if not item.keep_alive:
                self.close()
                return
            if self._writable is not None:
                try:
                    async with asyncio.timeout(self._server.idle_seconds):
                        await self._writable
                except TimeoutError:
                    transport.abort()
                    return
            if not self._reading and len(self._pending) < MAX_PIPELINED:
                self._reading = True
                transport.resume_reading()
        if not self._closed:
            self._arm()

    # -- the idle limit --------------------------------------------------------------------------

    def _arm(self) -> None:
        self._cancel_timer()
        self._timer = self._loop.call_later(self._server.idle_seconds, self._idle)

    def _idle(self) -> None:
        self._timer = None
        if self._task is None or self._task.done():
            self.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def publish_endpoint(state_dir: Path, host: str, port: int) -> str:
    """Write ``HOST:PORT`` (``host`` as in ``observability.listen``, IPv6 in brackets) to
    :data:`ENDPOINT_FILE` in ``state_dir``, whole or not at all; returns it. Raises OSError."""
    address = f"{host}:{port}"
    replace_atomically(state_dir, ENDPOINT_FILE, f"{address}\n".encode())
    return address


def withdraw_endpoint(state_dir: Path, address: str) -> None:
    """Remove :data:`ENDPOINT_FILE` if it still names ``address`` (a gateway started since on
    the same state directory keeps its own)."""
    if published_endpoint(state_dir) == address:
        (state_dir / ENDPOINT_FILE).unlink(missing_ok=True)


def published_endpoint(state_dir: Path) -> str | None:
    """The address in :data:`ENDPOINT_FILE`, or None when there is none (the gateway is not
    running, or it stopped) or it is not ``HOST:PORT``."""
    try:
        with (state_dir / ENDPOINT_FILE).open("rb") as handle:
            raw = handle.read(_ENDPOINT_MAX_BYTES)
    except OSError:
        return None
    host, _, port = raw.decode("ascii", errors="replace").strip().rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return f"{host}:{port}"
