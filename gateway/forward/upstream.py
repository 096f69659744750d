"""The HTTP forwarder: sends one allowed, canonical request to its on-prem target.

Hardening (catalogue sections A and C): the request target is the canonical path and query exactly
as the policy judged them (never re-encoded); headers arrive already built from the allow-list,
with exactly one ``Host`` (the target's configured one) and nothing added but the framing
``Content-Length``; redirects are never followed; bodies are not decompressed; the response is
streamed under a size cap; every socket comes from the dial step (:mod:`gateway.forward.dial`);
no proxy setting is read from the environment; every phase has a timeout below the relay's 60 s
deadline; each target has a concurrency cap answered with 503 rather than a queue; a request is
never sent twice. The exchange itself is :mod:`gateway.forward.http1`.

Timeouts: ``connect_timeout_seconds`` for DNS, TCP and TLS; ``read_timeout_seconds`` for every wait
on the target's answer, reset by each byte received, so a target that accepts and then says
nothing, or sends its headers and stalls, is a 504 after the read timeout (catalogue I 138);
``request_timeout_seconds`` for the whole exchange, which still ends a target that drips its
answer a byte at a time (I 139). The read timeout is capped at the request timeout.

:class:`TargetPool` (the dial step, TLS settings and one hardened aiohttp session of a revision)
also serves the WebSocket upstream (:mod:`gateway.forward.websocket`) and the OAuth token client.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from yarl import URL

from gateway.config.model import GatewayConfig, Target
from gateway.forward.dial import DialError, DialStep, Guard, Redirect, Resolver, system_resolver
from gateway.forward.headers import host_header
from gateway.forward.http1 import (
    MAX_HEADERS,
    MAX_LINE,
    Body,
    Exchange,
    ExchangeError,
    Http1Pool,
    Response,
    request_head,
)
from gateway.hybridconnection.messages import MAX_HEADER_METADATA, header_line_size

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)

# Response headers that describe one hop, not the resource (RFC 9110 section 7.6.1); bytes,
# as the parser delivers names.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    }
)
_HOP_BY_HOP_LENGTHS = frozenset(map(len, _HOP_BY_HOP))
# The same response limits for the forward and for every session of the pool (catalogue C 64).
MAX_RESPONSE_HEADERS = MAX_HEADERS
MAX_RESPONSE_LINE = MAX_LINE
CHUNK = 64 * 1024


class UpstreamError(Exception):
    """The target could not be reached or answered badly; ``code`` and ``status`` for the SaaS."""

    def __init__(self, code: str, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(slots=True)
class UpstreamResponse:
    """A response on its way back. ``body`` yields at most the configured number of bytes and
    raises :class:`UpstreamError` (``upstream_body_too_large``) past it."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: AsyncIterator[bytes]
    first_chunk: bytes = b""
    complete: bool = False
    _release: Callable[[], None] | None = field(default=None, repr=False)

    async def release(self) -> None:
        """Return or close the upstream connection; safe to call more than once."""
        if self._release is not None:
            self._release()
            self._release = None


def tls_context(
    target: Target, resolve_path: Callable[[str], Path] | None = None
) -> ssl.SSLContext:
    """The TLS settings for an https target: verification on, TLS 1.2 minimum, optional CA.

    ``resolve_path`` turns a relative ``ca_file`` into a path (relative to gateway.yaml).
    """
    tls = target.tls
    if tls is not None and tls.insecure_skip_verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    cafile = None
    if tls is not None and tls.ca_file is not None:
        cafile = str(resolve_path(tls.ca_file)) if resolve_path else tls.ca_file
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class TargetPool:
    """The connection pool of one configuration revision: the pinned dial step, each https
    target's TLS settings and one aiohttp session built with the hardened defaults.

    Shared by HTTP forwarding (:class:`Upstream`) and WebSocket streams
    (``gateway.forward.websocket``), which keep separate pools so long-lived streams cannot take
    the slots ordinary requests need.
    """

    def __init__(
        self,
        config: GatewayConfig,
        targets: Mapping[str, Target],
        *,
        limit: int,
        resolver: Resolver = system_resolver,
        redirect: Redirect | None = None,
        guard: Guard | None = None,
        tls_contexts: Mapping[str, ssl.SSLContext] | None = None,
        resolve_path: Callable[[str], Path] | None = None,
        force_close: bool = False,
        session_options: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.targets = dict(targets)
        self._dial = DialStep(
            self.targets,
            resolver=resolver,
            timeout=min(2.0, config.limits.connect_timeout_seconds),
            redirect=redirect,
            guard=guard,
        )
        self._tls = (
            dict(tls_contexts)
            if tls_contexts is not None
            else {
                name: tls_context(t, resolve_path)
                for name, t in self.targets.items()
                if t.scheme == "https"
            }
        )
        self._limit = limit
        self._force_close = force_close
        # Called when the session is made: the options may hold aiohttp's objects, and aiohttp
        # is imported only then.
        self._session_options = session_options
        self._session: aiohttp.ClientSession | None = None

    @property
    def dial(self) -> DialStep:
        """The dial step every socket of this pool comes from."""
        return self._dial

    def tls(self, name: str) -> ssl.SSLContext | bool:
        """The TLS setting for target ``name`` (aiohttp's default verification if none built)."""
        return self._tls.get(name, True)

    def url(self, name: str, scheme: str, path: str, query: str | None) -> URL:
        """The client URL for target ``name``: its dial-host name (see
        :class:`gateway.forward.dial.DialStep`), its port, and ``path``/``query`` as judged,
        never re-encoded."""
        return URL.build(
            scheme=scheme,
            host=self._dial.dial_host(name),
            port=self.targets[name].effective_port,
            path=path,
            query_string=query or "",
            encoded=True,
        )

    def headers(self, name: str, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """``headers`` with exactly one ``Host``, the target's configured one (RFC 9110 section
        7.2), first: the client would otherwise write the URL's dial-host name."""
        host = ("host", host_header(self.targets[name]))
        return [host, *((k, v) for k, v in headers if k.lower() != "host")]

    def server_name(self, name: str) -> str | None:
        """The name TLS sends (SNI) and checks the certificate against: ``tls.server_name`` or
        the configured host; ``None`` for plain http. Never the URL's dial-host name."""
        target = self.targets[name]
        if target.scheme != "https":
            return None
        if target.tls is not None and target.tls.server_name:
            return target.tls.server_name
        return target.host

    def session(self) -> aiohttp.ClientSession:
        """The pool's session, created on first use (inside the running loop).

        Only the WebSocket upstream and the OAuth token client use one; aiohttp is imported
        here, with the first of them, so a gateway without those features never loads it.
        """
        if self._session is None:
            import aiohttp

            from gateway.outbound.sessions import client_session

            connector = self._dial.connector(limit=self._limit, force_close=self._force_close)
            self._session = client_session(
                # An on-prem request goes where the decision said, once: never to a Location.
                follow_redirects=False,
                connector=connector,
                # aiohttp adds none of its own headers: what goes out is the allow-list's.
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                max_line_size=MAX_RESPONSE_LINE,
                max_field_size=MAX_RESPONSE_LINE,
                max_headers=MAX_RESPONSE_HEADERS,
                cookie_jar=aiohttp.DummyCookieJar(),
                **(self._session_options() if self._session_options is not None else {}),
            )
        return self._session

    async def close(self) -> None:
        """Close every pooled connection."""
        if self._session is not None:
            await self._session.close()
            self._session = None


class Upstream:
    """HTTP forwarding for all targets of one revision, pinned to checked addresses.

    The exchange itself is :mod:`gateway.forward.http1` (a request head written from the
    canonical pieces, httptools' (llhttp) response parser, a keep-alive pool whose every socket
    comes from the dial step of a :class:`TargetPool`); this class adds the per-target caps, the
    timeouts and body cap of each target, and the response's header filtering.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        resolver: Resolver = system_resolver,
        redirect: Redirect | None = None,
        guard: Guard | None = None,
        tls_contexts: Mapping[str, ssl.SSLContext] | None = None,
        resolve_path: Callable[[str], Path] | None = None,
    ) -> None:
        self._config = config
        self._targets = config.targets
        self._pool = TargetPool(
            config,
            config.targets,
            limit=config.limits.max_concurrent_requests,
            resolver=resolver,
            redirect=redirect,
            guard=guard,
            tls_contexts=tls_contexts,
            resolve_path=resolve_path,
        )
        self._http = Http1Pool(self._pool.dial, limit=config.limits.max_concurrent_requests)
        for name, target in self._targets.items():
            if target.tls is not None and target.tls.insecure_skip_verify:
                log.warning(
                    "TLS verification is OFF for target %s (tls.insecure_skip_verify)",
                    name,
                    extra={"event": "insecure_target", "target": name},
                )
        self._in_flight: dict[str, int] = dict.fromkeys(self._targets, 0)
        # Per revision, not per request: each target's timeouts, body cap and TLS settings.
        self._plans = {name: self._plan(name, target) for name, target in self._targets.items()}

    def _plan(self, name: str, target: Target) -> _Plan:
        limits = self._config.limits
        total = target.limits.request_timeout_seconds or limits.request_timeout_seconds
        max_body = target.limits.max_response_body_bytes
        tls = self._pool.tls(name) if target.scheme == "https" else None
        if tls is True:
            tls = ssl.create_default_context()
        return _Plan(
            cap=target.limits.max_concurrent_requests or limits.max_concurrent_requests,
            total=total,
            connect=target.limits.connect_timeout_seconds or limits.connect_timeout_seconds,
            read=min(target.limits.read_timeout_seconds or limits.read_timeout_seconds, total),
            max_body=limits.max_response_body_bytes if max_body is None else max_body,
            tls=tls or None,
            server_name=self._pool.server_name(name),
            host=host_header(target),
            digits=len(str(limits.max_response_body_bytes if max_body is None else max_body)),
        )

    async def close(self) -> None:
        """Close every pooled connection."""
        await self._http.close()
        await self._pool.close()

    async def send(
        self,
        target_name: str,
        *,
        method: str,
        path: str,
        query: str | None,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> UpstreamResponse:
        """Forward one request; raises :class:`UpstreamError` with the answer to give."""
        plan = self._plans[target_name]
        if self._in_flight[target_name] >= plan.cap:
            raise UpstreamError(
                "target_busy", f"{target_name} has {plan.cap} requests in flight", 503
            )
        # Exactly one Host, the target's configured one, first (RFC 9110 section 7.2); the path
        # and query exactly as the policy judged them, never re-encoded.
        head = request_head(
            method, f"{path}?{query}" if query else path, headers, body, host=plan.host
        )
        if head is None:
            raise UpstreamError(
                "upstream_protocol_error", "a header would break the request framing"
            )
        self._in_flight[target_name] += 1
        try:
            exchange = await self._http.exchange(
                target_name,
                head,
                body,
                method=method,
                tls=plan.tls,
                server_name=plan.server_name,
                connect=plan.connect,
                read=plan.read,
                total=plan.total,
            )
            payload = exchange.payload
            try:
                declared = exchange.message.content_length
                # Fewer digits than the cap's is a smaller number: no conversion needed.
                if declared is not None and len(declared) >= plan.digits:
                    _check_declared_length(declared, plan.max_body)
                # Read the first chunk now: small bodies (the common case) are then complete, and
                # the caller can answer inline on the relay's control channel without streaming.
                # Such a body has usually arrived with the head: taken then without a wait.
                first = payload.read_now(CHUNK)
                if first is None:
                    first = await _read_capped(payload, plan.max_body, 0)
                elif len(first) > plan.max_body:
                    raise _too_large(plan.max_body)
            except ExchangeError as exc:
                exchange.release()
                raise _body_error(exc) from None
            except BaseException:
                exchange.release()
                raise
            try:
                return _response(exchange, first, plan.max_body)
            except UpstreamError:
                exchange.release()
                raise
        except DialError as refused:
            raise UpstreamError(refused.code, str(refused), refused.status) from None
        except ExchangeError as failed:
            raise UpstreamError(failed.code, str(failed), failed.status) from None
        finally:
            self._in_flight[target_name] -= 1


@dataclass(frozen=True, slots=True)
class _Plan:
    """What forwarding to one target needs, derived once per revision."""

    cap: int
    total: float
    connect: float
    read: float
    max_body: int
    tls: ssl.SSLContext | None
    server_name: str | None
    host: str
    digits: int
    """The number of decimal digits of ``max_body``."""


def _check_declared_length(value: bytes, max_body: int) -> None:
    if value.isdigit() and int(value) > max_body:
        raise UpstreamError(
            "upstream_body_too_large", f"response of {int(value)} bytes exceeds {max_body}"
        )


def _response(exchange: Exchange, first: bytes, max_body: int) -> UpstreamResponse:
    message = exchange.message
    complete = exchange.payload.at_eof()
    reason = message.reason
    if not reason.isprintable():
        # Only CR and LF matter here (llhttp refuses them in a status line): never relayed.
        reason = reason.replace("\r", " ").replace("\n", " ")
    return UpstreamResponse(
        message.code,
        reason,
        _response_headers(message),
        # A complete body (the common case) has nothing more to stream: no generator for it.
        _EXHAUSTED if complete else _stream(exchange, max_body, len(first)),
        first,
        complete,
        exchange.release,
    )


async def _read_capped(payload: Body, max_body: int, seen: int) -> bytes:
    try:
        chunk = await payload.read(CHUNK)
    except ExchangeError as exc:
        raise _body_error(exc) from None
    return _capped(chunk, max_body, seen)


def _body_error(exc: ExchangeError) -> UpstreamError:
    # A framing error in the body, the connection lost mid-body, or a read or total timeout.
    code = "upstream_protocol_error" if exc.status == 502 else exc.code
    return UpstreamError(code, f"bad response body: {exc}", exc.status)


def _capped(chunk: bytes, max_body: int, seen: int) -> bytes:
    if seen + len(chunk) > max_body:
        raise _too_large(max_body)
    return chunk


def _too_large(max_body: int) -> UpstreamError:
    return UpstreamError("upstream_body_too_large", f"response body exceeds {max_body} bytes")


class _Exhausted:
    """The rest of a body that arrived whole with its first read: nothing."""

    def __aiter__(self) -> _Exhausted:
        return self

    async def __anext__(self) -> bytes:
        raise StopAsyncIteration


_EXHAUSTED: AsyncIterator[bytes] = _Exhausted()


async def _stream(exchange: Exchange, max_body: int, seen: int) -> AsyncIterator[bytes]:
    payload = exchange.payload
    try:
        while not payload.at_eof():
            chunk = await _read_capped(payload, max_body, seen)
            if not chunk:
                break
            seen += len(chunk)
            yield chunk
    finally:
        exchange.release()


def _response_headers(message: Response) -> list[tuple[str, str]]:
    if message.connection:
        # RFC 9110 section 7.6.1: the names a Connection field lists describe this hop too.
        dropped = _HOP_BY_HOP | {
            token.strip().lower() for value in message.connection for token in value.split(b",")
        }
        lengths = frozenset(map(len, dropped))
    else:
        dropped, lengths = _HOP_BY_HOP, _HOP_BY_HOP_LENGTHS
    # A name of a length no dropped name has is kept without being lower-cased.
    kept = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in message.raw_headers
        if len(name) not in lengths or name.lower() not in dropped
    ]
    # The limits hold for the head the relay writes to the SaaS, not only for the target's: a
    # byte of obs-text (0x80-0xFF, read as Latin-1) travels as two bytes of UTF-8 in the relay's
    # JSON and on from there. A head of fewer characters than half a line cannot be over either.
    if len(kept) * 4 + sum(len(name) + len(value) for name, value in kept) > MAX_LINE // 2:
        _check_relayed_size(kept)
    return kept


def _check_relayed_size(headers: list[tuple[str, str]]) -> None:
    """Refuse a head whose relayed form is over a line or the relay's metadata (catalogue C 64).

    Protocol notes sections 5.2 and 7: the relay carries at most 32 KB of header metadata (name,
    value and four bytes each, counted in UTF-8); a larger answer would cost the relay socket it
    travels on. A relayed line over 8190 bytes is refused like a target's own (an HTTP client's
    usual bound, aiohttp's included: the SaaS could not read the answer).
    """
    total = 0
    for name, value in headers:
        size = header_line_size(name, value)
        if size - 2 > MAX_LINE:  # the line without its CRLF
            raise UpstreamError(
                "upstream_headers_too_large",
                f"bad response: a relayed header line over {MAX_LINE} bytes",
            )
        total += size
    if total > MAX_HEADER_METADATA:
        raise UpstreamError(
            "upstream_headers_too_large",
            f"bad response: headers over the relay's {MAX_HEADER_METADATA} bytes",
        )


async def drain(response: UpstreamResponse) -> bytes:
    """The whole body of ``response`` (for small bodies and tests), within its cap."""
    parts = [response.first_chunk]
    if not response.complete:
        async for chunk in response.body:
            parts.append(chunk)
    await response.release()
    return b"".join(parts)


__all__ = ["TargetPool", "Upstream", "UpstreamError", "UpstreamResponse", "drain", "tls_context"]
