"""A small HTTP/1.1 client for the forward: one canonical request per pooled, pinned connection.

Why not aiohttp's ``ClientSession`` here: for the gateway's typical exchange (a small request, a
small answer, keep-alive) the session's request and response objects, cookie and redirect
machinery, middleware chain and per-request timers cost about three times the CPU of the exchange
itself (``benchmarks/bench_forward.py``: 126 against 33 us per request at 32 in flight on the
build machine). The forward needs none of that: it sends one request whose every part was already
checked and built (canonical path and query, allow-listed headers, the body the relay delivered),
and reads one answer under caps. So this module writes the request head itself and reads the
answer with ``httptools`` (the llhttp C parser, through its documented ``HttpResponseParser``
callbacks) on a plain :class:`asyncio.Protocol`, keeping every hardening property of the forward:

* sockets only from the dial step (:class:`gateway.forward.dial.DialStep`: checked addresses,
  its socket factory, its guard), TLS with the target's context and configured server name;
* never sent twice: a connection that fails after the request was written is an error
  (``upstream_connection_lost``), never a retry; an idle connection the target closed is dropped
  before anything is written on it;
* timeouts: connect (TCP and TLS), read (no byte for ``read`` seconds, reset by every byte, like
  aiohttp's ``sock_read``) and total (the whole exchange, body included);
* caps: at most ``limit`` connections in use at once (later requests wait, as with aiohttp's
  connector limit), response lines and header counts (8190 bytes, 128 headers, enforced here:
  llhttp itself has no such limits), the body cap enforced by the caller
  (:mod:`gateway.forward.upstream`); reading pauses while the body buffer is full;
* no decompression, no redirects, no cookies, no environment proxies, no header of its own
  besides the framing one (``Content-Length``, RFC 9112 section 6.2);
* strict response framing (llhttp, strict mode: ``Content-Length`` with ``Transfer-Encoding``
  refused, bad chunk sizes, bare CR; here: a repeated ``Content-Length``, a ``Transfer-Encoding``
  other than ``chunked``): a connection whose answer was not read completely and cleanly, or that
  says ``Connection: close``, is closed and never pooled, so stray bytes cannot become the next
  request's answer (catalogue C 63-65).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import httptools
from multidict import CIMultiDict

from gateway.forward.dial import DialStep, reset

__all__ = [
    "Body",
    "Connection",
    "Exchange",
    "ExchangeError",
    "Http1Pool",
    "Response",
    "request_head",
]

# aiohttp's defaults (8190-byte lines), kept; the header count matches catalogue C 64.
MAX_LINE = 8190
MAX_HEADERS = 128
# Bytes of one response head (or of a chunked body's trailer section) the parser may be fed
# before it completes: bounds what llhttp buffers for a field that never ends.
_MAX_HEAD = (MAX_HEADERS + 1) * (2 * MAX_LINE + 4)
# The response payload's buffer: reading from the target pauses above twice this many bytes.
READ_LIMIT = 2**16
# Idle keep-alive connections older than this are closed rather than reused (aiohttp's default);
# servers commonly close theirs after 5 to 60 seconds.
KEEPALIVE_SECONDS = 15.0
# Methods whose request carries a body, so an empty one is still framed (Content-Length: 0), as
# aiohttp does; other methods get a Content-Length only when they have a body.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_HEAD_END = b"\r\n\r\n"
# Response fields read while the head is parsed (lowercase): the framing pair and Connection.
_PICKED = frozenset({b"content-length", b"transfer-encoding", b"connection"})
# Their lengths: a name of another length is none of them, and is not lower-cased to find out.
_PICKED_LENGTHS = frozenset(len(name) for name in _PICKED)


class ExchangeError(Exception):
    """The exchange failed; ``code`` and ``status`` are what the SaaS is told (see upstream)."""

    def __init__(self, code: str, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def _too_large(what: str) -> ExchangeError:
    return ExchangeError("upstream_headers_too_large", f"bad response: {what} too large")


def _lost_before_answer() -> ExchangeError:
    return ExchangeError("upstream_connection_lost", "the connection closed before the answer")


def _protocol(what: str) -> ExchangeError:
    return ExchangeError("upstream_protocol_error", f"bad response: {what}"[:160])


@dataclass(slots=True)
class Response:
    """The head of the final answer: status, reason, headers as received, and whether the
    connection must close after it (``Connection: close``, HTTP/1.0, a body framed by the
    close).

    The two fields the forward decides on are picked out while the head is parsed:
    ``content_length`` (the one ``Content-Length`` value, if any: a repeated one is refused) and
    ``connection`` (the values of every ``Connection`` field, RFC 9110 section 7.6.1). The
    case-insensitive mapping of every header (:attr:`headers`) is built on first use only: the
    forward never needs it.
    """

    code: int
    reason: str
    raw_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    should_close: bool = False
    content_length: bytes | None = None
    connection: list[bytes] = field(default_factory=list)
    _headers: CIMultiDict[str] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def headers(self) -> CIMultiDict[str]:
        """Every header as received (latin-1 text), names case-insensitive, repeats kept."""
        if self._headers is None:
            self._headers = CIMultiDict(
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in self.raw_headers
            )
        return self._headers


class Body:
    """The answer's body as it arrives: bounded buffer, end marker, and the error that ended it.

    Above ``2 * READ_LIMIT`` buffered bytes the connection stops reading from the target; it
    reads again once the caller has taken the buffer down to ``READ_LIMIT``.
    """

    __slots__ = ("_chunks", "_connection", "_eof", "_error", "_loop", "_size", "_waiter")

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._loop = connection.loop
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def is_eof(self) -> bool:
        """Whether the whole body arrived (the parser saw its end)."""
        return self._eof

    def at_eof(self) -> bool:
        """Whether the whole body arrived and was read."""
        return self._eof and not self._chunks

    def exception(self) -> BaseException | None:
        """The error that ended the body, if one did."""
        return self._error

    def set_exception(self, error: BaseException) -> None:
        """End the body with ``error``: the next read raises it."""
        self._error = error
        self._wake()

    def ready(self) -> bool:
        """Whether :meth:`read` would answer at once (bytes buffered, the end, or an error);
        :meth:`read_ready` then gives what it would."""
        return bool(self._chunks) or self._eof or self._error is not None

    async def read(self, limit: int) -> bytes:
        """Up to ``limit`` bytes; ``b""`` at the end; the body's error if it ended with one."""
        while not self._chunks and not self._eof and self._error is None:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.read_ready(limit)

    def read_ready(self, limit: int) -> bytes:
        """:meth:`read` when :meth:`ready`, without a wait: a small answer's whole body has
        usually arrived with its head, and the caller then needs no coroutine to take it."""
        if self._error is not None:
            raise self._error
        if not self._chunks:
            if not self._eof:
                raise RuntimeError("no body bytes to read yet: await read() instead")
            return b""
        chunk = self._chunks.popleft()
        if len(chunk) > limit:
            chunk, rest = chunk[:limit], chunk[limit:]
            self._chunks.appendleft(rest)
        self._size -= len(chunk)
        if self._size <= READ_LIMIT and self._connection.paused:
            self._connection.resume_reading()
        return chunk

    def read_now(self, limit: int) -> bytes | None:
        """:meth:`read_ready` when :meth:`ready`, else None (one call for both)."""
        if self._chunks or self._eof or self._error is not None:
            return self.read_ready(limit)
        return None

    def feed(self, data: bytes) -> None:
        """Add bytes of the body (parser callback)."""
        self._chunks.append(data)
        self._size += len(data)
        if self._size > 2 * READ_LIMIT:
            self._connection.pause_reading()
        if self._waiter is not None:
            self._wake()

    def end(self) -> None:
        """The body is complete (parser callback)."""
        self._eof = True
        if self._waiter is not None:
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Connection(asyncio.Protocol):
    """One connection to a target: the transport, the parser of the answer in progress (its
    callbacks are this object's ``on_*`` methods), and the read and total deadlines of that
    exchange.

    :class:`Http1Pool` makes these for the forward; the control-plane client uses one per call
    on a connection it opened itself (through the outbound proxy, with its pinned TLS context).
    ``lost`` is the error the connection ended with, if any (an ``ssl.SSLError`` carrying the
    peer's alert, for one), for callers that classify it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # The connection's loop, kept: asyncio.get_running_loop() costs a getpid() system call
        # per call on Python 3.11, and the exchange would otherwise look it up several times.
        self.loop = self._loop = loop
        # The loop's clock, read three or four times per exchange: asyncio's own loops read
        # time.monotonic() through a Python method (BaseEventLoop.time), so theirs is called
        # directly; any other loop (uvloop) is asked as usual.
        self.clock: Callable[[], float] = (
            time.monotonic if type(loop).time is asyncio.BaseEventLoop.time else loop.time
        )
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = None
        # The parser of the last exchange, when it ended cleanly between two messages: llhttp
        # reads a keep-alive connection's answers one after another (RFC 9112 section 9.3), so
        # the next exchange continues with it rather than building and wiring up a new one.
        self._next_parser: httptools.HttpResponseParser | None = None
        self.response: Response | None = None
        self.body: Body | None = None
        self.failure: ExchangeError | None = None
        self.closed = False
        self.lost: BaseException | None = None
        self.stray = False
        self.waiter: asyncio.Future[None] | None = None
        self.idle_since = 0.0
        # One timer per connection, for whichever limit comes next: the exchange's read and total
        # deadlines, or the idle expiry. It is moved only to an earlier time; one that fires
        # before its limit looks again and re-arms for what is left (see ``_on_timer``), so a
        # request does not create and cancel timers of its own.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when it fires (its when(), without the call)
        self._parser: httptools.HttpResponseParser | None = None
        self._exchanging = False
        self._expire: Callable[[Connection], None] | None = None
        self._read = 0.0
        self._deadline = 0.0
        self._last_data = 0.0
        # Whether reading is paused because the body buffer is full (see Body).
        self.paused = False
        # The message being parsed.
        self._head_only = False
        self._tail = b""
        self._in_head = False
        self._head_bytes = 0
        self._reason = bytearray()
        self._raw: list[tuple[bytes, bytes]] = []
        self._fields = 0
        self._chunked = False
        self._length: bytes | None = None
        self._connection: list[bytes] = []
        self._until_close = False
        self._complete = False

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport (small requests go out at once: TCP_NODELAY, like aiohttp)."""
        # A stream transport, though not necessarily an asyncio.Transport subclass: uvloop's
        # implement the same interface without deriving from it.
        stream = cast(asyncio.Transport, transport)
        sock = stream.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport = stream

    def data_received(self, data: bytes) -> None:
        """Feed the answer to the parser; bytes outside an exchange end the connection."""
        parser = self.parser
        if parser is None:
            # Nothing was asked: a target sending unsolicited bytes is not reused (C 63-65).
            self._fail(ExchangeError("upstream_protocol_error", "unsolicited bytes from target"))
            return
        self._last_data = self.clock()
        try:
            if self._head_only:
                self._feed_heads(parser, data)
            else:
                parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # A 101 to a request that asked for no upgrade (catalogue I 147): the bytes that
            # follow are another protocol.
            self._fail(_protocol("the target switched protocols unasked"))
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._fail(cause if isinstance(cause, ExchangeError) else _protocol(str(exc)))
            return
        except httptools.HttpParserError as exc:
            self._fail(_protocol(str(exc)))
            return
        if self._in_head:
            # llhttp buffers a field until it ends: bound what one head may make it hold.
            self._head_bytes += len(data)
            if self._head_bytes > _MAX_HEAD:
                self._fail(_too_large("header block"))
                return
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def eof_received(self) -> bool:
        """The target finished sending: an answer framed by the close ends here."""
        self._end_of_input()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        """The connection is gone: an unfinished answer is an error, never a short success."""
        self.closed = True
        self.lost = exc
        self._end_of_input()
        self._cancel_timer()

    # -- flow control from the body buffer -------------------------------------------------------

    def pause_reading(self) -> None:
        """The caller has not read the buffered body yet: stop reading from the target."""
        if self.transport is not None and not self.paused and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """The buffer drained: read from the target again."""
        if self.transport is not None and self.paused and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    # -- parser callbacks (httptools.HttpResponseParser) -----------------------------------------

    def on_message_begin(self) -> None:
        """A message starts: after the final answer, that is a stray one (C 65)."""
        if self.response is not None:
            self.stray = True
            raise _protocol("bytes after the answer")
        self._in_head, self._head_bytes = True, 0
        self._reason.clear()
        self._raw = []
        self._fields = 0
        self._chunked = False
        self._length = None
        self._connection = []

    def on_status(self, reason: bytes) -> None:
        """A piece of the reason phrase (llhttp may deliver it in parts)."""
        self._reason += reason
        if len(self._reason) > MAX_LINE:
            raise _too_large("status line")

    def on_header(self, name: bytes, value: bytes) -> None:
        """One header field (or trailer field, which is counted and dropped)."""
        if not self._in_head:
            self._on_trailer(name, value)
            return
        raw = self._raw
        # Every field of the head so far is in ``raw``: this is field len(raw) + 1.
        if len(raw) >= MAX_HEADERS:
            raise _too_large("header count")
        size = len(name)
        if size > MAX_LINE or len(value) > MAX_LINE:
            raise _too_large("header line")
        if size not in _PICKED_LENGTHS:
            raw.append((name, value))
            return
        lowered = name.lower()
        if lowered in _PICKED:
            if lowered == b"connection":
                self._connection.append(value)
            elif lowered == b"content-length":
                # RFC 9112 section 6.3: one framing header, once; a repeated or combined one is
                # a smuggling attempt (llhttp refuses the combination, this the repetition).
                if self._length is not None:
                    raise _protocol(f"repeated {name.decode('latin-1')}")
                self._length = value
            else:
                if self._chunked:
                    raise _protocol(f"repeated {name.decode('latin-1')}")
                self._chunked = True
                if value.strip().lower() != b"chunked":
                    # Only chunked framing is read; another coding (gzip) would need decoding.
                    raise _protocol("a transfer coding other than chunked")
        raw.append((name, value))

    def _on_trailer(self, name: bytes, value: bytes) -> None:
        """A trailer field of a chunked body: counted with the head's fields, checked, dropped."""
        self._fields += 1
        if self._fields > MAX_HEADERS:
            raise _too_large("header count")
        if len(name) > MAX_LINE or len(value) > MAX_LINE:
            raise _too_large("header line")

    def on_headers_complete(self) -> None:
        """The head is complete: a final answer becomes the response; 1xx ones are skipped."""
        parser = self.parser
        assert parser is not None
        self._in_head = False
        # Trailer fields (on_header after this) count on from the head's.
        self._fields = len(self._raw)
        code = parser.get_status_code()
        if code == 101:
            raise _protocol("the target switched protocols unasked")
        if code < 200:
            # RFC 9110 section 15.2: 1xx answers are interim; the final one follows.
            return
        self.response = Response(
            code,
            self._reason.decode("latin-1"),
            self._raw,
            not parser.should_keep_alive(),
            self._length,
            self._connection,
        )
        self.body = Body(self)
        # RFC 9112 section 6.3 (rule 8): without Content-Length or chunked framing, the body runs
        # until the target closes the connection (llhttp reads it so).
        framed = self._length is not None or self._chunked
        self._until_close = not framed and code not in (204, 304)
        if self._head_only:
            # RFC 9110 section 9.3.2: an answer to HEAD has no content, whatever it declares.
            self._complete = True
            self.body.end()
        # The exchange's waiter is woken once the data fed so far is parsed (data_received).

    def on_body(self, data: bytes) -> None:
        """A piece of the final answer's body."""
        if self.body is not None and not self._complete:
            self.body.feed(data)

    def on_message_complete(self) -> None:
        """A message ended: when it is the final answer, its body is complete."""
        if self.response is not None and self.body is not None and not self._complete:
            self._complete = True
            self.body.end()

    # -- the exchange ----------------------------------------------------------------------------

    def begin(self, method: str, read: float, total: float) -> None:
        """Arm a fresh parser and the read and total deadlines for one exchange."""
        self._expire = None  # no longer idle
        parser = self._next_parser
        if parser is None:
            parser = httptools.HttpResponseParser(self)
        else:
            self._next_parser = None
        self.parser = self._parser = parser
        self._head_only = method == "HEAD"
        self._tail = b""
        self._in_head = False
        self.response = None
        self.body = None
        self._complete = False
        self._until_close = False
        now = self.clock()
        self._read, self._deadline, self._last_data = read, now + total, now
        self._exchanging = True
        self._arm(min(now + read, self._deadline))

    async def head(self) -> tuple[Response, Body]:
        """The final answer's head and its body."""
        while self.response is None or self.body is None:
            if self.failure is not None:
                raise self.failure
            if self.closed:
                raise _lost_before_answer()
            self.waiter = self._loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.response, self.body

    def finish(self, reusable: bool) -> bool:
        """End the exchange; returns whether the connection may serve another one."""
        self._exchanging = False
        self.parser = None
        self.body = None
        parser, self._parser = self._parser, None
        clean = reusable and self._complete and not self.stray and not self.paused
        if clean and self.failure is None and not self.closed:
            self.idle_since = self.clock()
            # The parser stopped exactly at the end of the final answer (any byte after it
            # retires the connection as stray, above), so it waits for the next status line.
            # Not after HEAD: llhttp expects the body the head declared, which never comes.
            if not self._head_only:
                self._next_parser = parser
            return True
        self.close()
        return False

    def idle(self, expire: Callable[[Connection], None]) -> None:
        """Call ``expire`` (with this connection) once the connection has sat idle for the
        keep-alive period.

        Without it an idle connection would be closed only when a later request found it stale:
        after a burst, the connections below the top of the pool's stack would hold their
        descriptors for as long as traffic kept reusing the top one, and for ever after traffic
        stopped (a connection the target half-closed included).
        """
        self._expire = expire
        self._arm(self.idle_since + KEEPALIVE_SECONDS)

    def close(self) -> None:
        """Close the connection (safe to call more than once)."""
        self._cancel_timer()
        self._exchanging, self._expire = False, None
        self._next_parser = self._parser = None
        self.closed = True
        if self.transport is not None:
            # Bytes of a request body still buffered (the target answered early, or stopped
            # reading): a graceful close would wait for the target to take them, for ever.
            if self.transport.get_write_buffer_size():
                reset(self.transport)
            else:
                self.transport.close()

    def fresh(self, now: float) -> bool:
        """Whether an idle connection can be used: open, quiet and not past the keep-alive."""
        return (
            not self.closed
            and self.failure is None
            and self.transport is not None
            and not self.transport.is_closing()
            and now - self.idle_since < KEEPALIVE_SECONDS
        )

    # -- internals -------------------------------------------------------------------------------

    def _feed_heads(self, parser: httptools.HttpResponseParser, data: bytes) -> None:
        """Feed the answer to HEAD one head at a time, and nothing after the final head.

        llhttp cannot be told the request was HEAD (httptools ignores the callback's "skip the
        body" answer), so it would read a declared body; the heads are cut here instead, at
        their CRLF CRLF (strict llhttp accepts no other line end, and a field holds no CR).
        """
        view = data
        while view:
            joined = self._tail + view
            end = joined.find(_HEAD_END)
            if end < 0:
                parser.feed_data(view)
                self._tail = joined[-3:]
                return
            cut = end + len(_HEAD_END) - len(self._tail)
            self._tail = b""
            parser.feed_data(view[:cut])
            view = view[cut:]
            if self._complete:
                # Whatever follows the final head belongs to no answer: the connection retires.
                self.stray = self.stray or bool(view)
                self.parser = None
                return

    def _end_of_input(self) -> None:
        if self.parser is not None:
            self.parser = None  # nothing can follow the end of the input
            body = self.body
            # RFC 9112 section 6.3 (rule 8): the close is the end of a body framed by it.
            if body is not None and self._until_close and not (self._complete or self.failure):
                self._complete = True
                body.end()
        body = self.body
        if body is not None and not body.is_eof() and body.exception() is None:
            body.set_exception(
                ExchangeError("upstream_protocol_error", "the body ended before its declared end")
            )
        self.closed = True
        self._wake()

    def _fail(self, failure: ExchangeError) -> None:
        if self.failure is None:
            self.failure = failure
        body = self.body
        if body is not None and not body.is_eof() and body.exception() is None:
            body.set_exception(failure)
        self.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _arm(self, when: float) -> None:
        """Have the timer fire at ``when`` at the latest (an earlier one is kept)."""
        timer = self._timer
        if timer is not None:
            if self._timer_at <= when:
                return
            timer.cancel()
        self._timer = self._loop.call_at(when, self._on_timer)
        self._timer_at = when

    def _on_timer(self) -> None:
        self._timer = None
        now = self.clock()
        if self._exchanging:
            if now >= self._deadline:
                self._fail(ExchangeError("upstream_timeout", "no complete answer in time", 504))
            elif now - self._last_data >= self._read:
                self._fail(ExchangeError("upstream_timeout", f"no data for {self._read}s", 504))
            else:
                # Bytes arrived since the timer was set (or it was set for an earlier limit): the
                # read timeout counts from the last byte.
                self._arm(min(self._last_data + self._read, self._deadline))
        elif self._expire is not None:
            expiry = self.idle_since + KEEPALIVE_SECONDS
            if now >= expiry:
                expire, self._expire = self._expire, None
                expire(self)
            else:
                # Set for an earlier exchange's deadline: the idle period ends later.
                self._arm(expiry)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Slots:
    """At most ``limit`` exchanges at once; later ones wait, first come first served.

    ``asyncio.Semaphore`` without its per-call cost: taking a free slot (nearly every request)
    is a plain call here, not a coroutine that also scans the waiters.
    """

    __slots__ = ("_free", "_waiters")

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take(self) -> bool:
        """Take a free slot if one is free and nobody waits for one."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    async def wait(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait for a slot to be handed over (after :meth:`take` failed)."""
        waiter = loop.create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.cancelled():
                # Never handed one: leave the queue (release skips it if it got there first).
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            elif waiter.done():
                # Handed a slot, but cancelled before taking it: pass it on.
                self.release()
            raise

    def release(self) -> None:
        """Give a slot back: to the longest waiter, or to the free ones."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class Exchange:
    """One answer being read: its head, body and the release of its connection."""

    __slots__ = ("_connection", "_name", "_pool", "message", "payload")

    def __init__(
        self, message: Response, payload: Body, pool: Http1Pool, name: str, connection: Connection
    ) -> None:
        self.message = message
        self.payload = payload
        self._pool: Http1Pool | None = pool
        self._name = name
        self._connection = connection

    def release(self) -> None:
        """Pool the connection if its answer was read cleanly, else close it; free its slot.
        Safe to call more than once."""
        pool = self._pool
        if pool is None:
            return
        self._pool = None
        payload = self.payload
        clean = payload.is_eof() and payload.exception() is None and not self.message.should_close
        pool.put(self._name, self._connection, clean)


class Http1Pool:
    """Keep-alive connections per target, every one made by ``dial``; at most ``limit`` in use."""

    def __init__(self, dial: DialStep, *, limit: int) -> None:
        self._dial = dial
        self._idle: dict[str, list[Connection]] = {}
        self._slots = _Slots(limit) if limit > 0 else None
        self._limit = limit
        # Bound once: handed to every connection put back idle.
        self._on_expiry: Callable[[Connection], None] = self._expire

    async def exchange(
        self,
        name: str,
        head: bytes,
        body: bytes,
        *,
        method: str,
        tls: ssl.SSLContext | None,
        server_name: str | None,
        connect: float,
        read: float,
        total: float,
    ) -> Exchange:
        """Send ``head`` and ``body`` once on a connection to target ``name``; the answer's head.

        Raises :class:`ExchangeError`, or :class:`gateway.forward.dial.DialError` from the dial
        step.
        """
        slots = self._slots
        if slots is not None and not slots.take():
            await slots.wait(asyncio.get_running_loop())
        try:
            connection = self._pooled(name)
            if connection is None:
                connection = await self._connect(name, tls, server_name, connect)
            transport = connection.transport
            assert transport is not None
            connection.begin(method, read, total)
            # One write for a small request (coalesced head and body); the body already sits in
            # memory whole (the relay delivered it), so a large one is handed over as it is.
            if body and len(body) > READ_LIMIT:
                transport.write(head)
                transport.write(body)
            else:
                transport.write(head + body if body else head)
            try:
                # Connection.head, without a coroutine of its own.
                while connection.response is None or connection.body is None:
                    if connection.failure is not None:
                        raise connection.failure
                    if connection.closed:
                        raise _lost_before_answer()
                    waiter = connection.waiter = connection.loop.create_future()
                    try:
                        await waiter
                    finally:
                        connection.waiter = None
                message, payload = connection.response, connection.body
            except BaseException:
                connection.finish(reusable=False)
                raise
        except BaseException:
            if slots is not None:
                slots.release()
            raise
        return Exchange(message, payload, self, name, connection)

    def put(self, name: str, connection: Connection, clean: bool) -> None:
        """End ``connection``'s exchange (see :meth:`Exchange.release`): keep it idle for the
        next request to ``name`` when ``clean`` and it can serve one, else close it."""
        if connection.finish(reusable=clean):
            idle = self._idle.get(name)
            if idle is None:
                idle = self._idle[name] = []
            idle.append(connection)
            connection.idle(self._on_expiry)
        slots = self._slots
        if slots is not None:
            slots.release()

    def _pooled(self, name: str) -> Connection | None:
        idle = self._idle.get(name)
        if not idle:
            return None
        while idle:
            connection = idle.pop()
            if connection.fresh(connection.clock()):
                return connection
            connection.close()
        return None

    def _expire(self, connection: Connection) -> None:
        for name, idle in self._idle.items():
            if connection in idle:
                idle.remove(connection)
                if not idle:
                    del self._idle[name]
                break
        connection.close()

    async def _connect(
        self, name: str, tls: ssl.SSLContext | None, server_name: str | None, connect: float
    ) -> Connection:
        loop = asyncio.get_running_loop()
        last = "no address"
        timed_out = False
        for host, port in await self._dial.endpoints(name):
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            # The dial step's socket factory: only an endpoint it issued, after its guard.
            sock = self._dial.socket(
                (family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))
            )
            try:
                sock.setblocking(False)
                async with asyncio.timeout(connect):
                    await loop.sock_connect(sock, (host, port))
                    _, connection = await loop.create_connection(
                        lambda: Connection(loop),
                        sock=sock,
                        ssl=tls,
                        server_hostname=server_name if tls is not None else None,
                        ssl_handshake_timeout=connect if tls is not None else None,
                    )
            except ssl.SSLCertVerificationError as exc:
                sock.close()
                raise ExchangeError(
                    "upstream_tls", f"certificate rejected: {exc.verify_message or exc}"
                ) from None
            except ssl.SSLError as exc:
                sock.close()
                raise ExchangeError("upstream_tls", f"TLS failed: {exc.reason or exc}") from None
            except TimeoutError:
                sock.close()
                timed_out, last = True, f"connect to {host} timed out"
                continue
            except OSError as exc:
                sock.close()
                timed_out, last = False, f"connect to {host} failed: {exc.strerror or exc}"
                continue
            except BaseException:
                sock.close()
                raise
            return connection
        if timed_out:
            raise ExchangeError("upstream_timeout", f"cannot connect: {last}", 504)
        raise ExchangeError("upstream_unreachable", f"cannot connect: {last}")

    async def close(self) -> None:
        """Close every idle connection (connections in use close when released)."""
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()


def request_head(
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes,
    *,
    host: str | None = None,
) -> bytes | None:
    """The request line and header block (RFC 9112 sections 3 and 5), or None when a name or
    value would break the framing (CR, LF or NUL: header injection, catalogue C 56-58).

    ``headers`` are the ones to send, in order. With ``host``, that ``Host`` goes first and any
    ``Host`` among ``headers`` (in any case) is left out: exactly one, RFC 9110 section 7.2.
    The only header added is ``Content-Length`` (section 6.2) for a body, or an empty body of
    POST, PUT or PATCH.
    """
    if host is None:
        fields = [f"{name}: {value}\r\n" for name, value in headers]
    else:
        fields = [f"host: {host}\r\n"]
        # Only a four-character name can be Host in some case: others are not lower-cased.
        fields += [
            f"{name}: {value}\r\n"
            for name, value in headers
            if len(name) != 4 or name.lower() != "host"
        ]
    if body or method in _BODY_METHODS:
        fields.append(f"content-length: {len(body)}\r\n")
    text = f"{method} {target} HTTP/1.1\r\n{''.join(fields)}\r\n"
    # Every line break is one this function wrote: one CRLF per line, one more at the end.
    breaks = len(fields) + 2
    if text.count("\n") != breaks or text.count("\r") != breaks or "\0" in text:
        return None
    return text.encode("utf-8")
