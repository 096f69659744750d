"""The HTTP forwarder: sends one allowed, canonical request to its on-prem target.

Hardening (catalogue sections A and C): the URL is built from the target's configured scheme,
host and port plus the canonical path exactly as the policy judged it (yarl's ``encoded=True``, so
nothing is re-encoded on the way); headers arrive already built from the allow-list and aiohttp
adds none of its own; redirects are never followed; bodies are not decompressed; the response is
streamed under a size cap; the address comes from the dial step (:mod:`gateway.forward.dial`);
environment proxy variables are ignored (``trust_env=False``); every phase has a timeout below the
relay's 60 s deadline; each target has a concurrency cap answered with 503 rather than a queue.

Timeouts: ``connect_timeout_seconds`` for DNS, TCP and TLS; ``read_timeout_seconds`` for every wait
on the target's answer, reset by each byte received (aiohttp's ``sock_read``), so a target that
accepts and then says nothing, or sends its headers and stalls, is a 504 after the read timeout
(catalogue I 138); ``request_timeout_seconds`` for the whole exchange, which still ends a target
that drips its answer a byte at a time (I 139). The read timeout is capped at the request timeout.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from gateway.config.model import GatewayConfig, Target
from gateway.forward.dial import DialError, DialStep, Guard, Redirect, Resolver, system_resolver
from gateway.forward.headers import host_header
from gateway.outbound.sessions import ConnectionLostError, client_session

log = logging.getLogger(__name__)

# Response headers that describe one hop, not the resource (RFC 9110 section 7.6.1).
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)
# aiohttp's defaults are 8190-byte lines; the header count matches catalogue C 64.
MAX_RESPONSE_HEADERS = 128
MAX_RESPONSE_LINE = 8190
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
    _response: aiohttp.ClientResponse | None = field(default=None, repr=False)

    async def release(self) -> None:
        """Return or close the upstream connection; safe to call more than once."""
        if self._response is not None:
            self._response.release()
            self._response = None


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
        session_options: Mapping[str, Any] | None = None,
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
        self._session_options = dict(session_options or {})
        self._session: aiohttp.ClientSession | None = None

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
        """The pool's session, created on first use (inside the running loop)."""
        if self._session is None:
            connector = self._dial.connector(limit=self._limit, force_close=self._force_close)
            self._session = client_session(
                connector=connector,
                # aiohttp adds none of its own headers: what goes out is the allow-list's.
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                max_line_size=MAX_RESPONSE_LINE,
                max_field_size=MAX_RESPONSE_LINE,
                max_headers=MAX_RESPONSE_HEADERS,
                cookie_jar=aiohttp.DummyCookieJar(),
                **self._session_options,
            )
        return self._session

    async def close(self) -> None:
        """Close every pooled connection."""
        if self._session is not None:
            await self._session.close()
            self._session = None


class Upstream:
    """HTTP forwarding for all targets of one revision, pinned to checked addresses."""

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
            session_options={"auto_decompress": False},
        )
        for name, target in self._targets.items():
            if target.tls is not None and target.tls.insecure_skip_verify:
                log.warning(
                    "TLS verification is OFF for target %s (tls.insecure_skip_verify)",
                    name,
                    extra={"event": "insecure_target", "target": name},
                )
        self._in_flight: dict[str, int] = dict.fromkeys(self._targets, 0)

    async def close(self) -> None:
        """Close every pooled connection."""
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
        target = self._targets[target_name]
        limits = self._config.limits
        cap = target.limits.max_concurrent_requests or limits.max_concurrent_requests
        if self._in_flight[target_name] >= cap:
            raise UpstreamError("target_busy", f"{target_name} has {cap} requests in flight", 503)
        self._in_flight[target_name] += 1
        try:
            return await self._send(target_name, target, method, path, query, headers, body)
        finally:
            self._in_flight[target_name] -= 1

    async def _send(
        self,
        name: str,
        target: Target,
        method: str,
        path: str,
        query: str | None,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> UpstreamResponse:
        limits = self._config.limits
        total = target.limits.request_timeout_seconds or limits.request_timeout_seconds
        connect = target.limits.connect_timeout_seconds or limits.connect_timeout_seconds
        read = min(target.limits.read_timeout_seconds or limits.read_timeout_seconds, total)
        max_body = target.limits.max_response_body_bytes
        max_body = limits.max_response_body_bytes if max_body is None else max_body
        url = self._pool.url(name, target.scheme, path, query)
        ssl_setting = self._pool.tls(name)
        server_name = self._pool.server_name(name)
        session = self._pool.session()
        try:
            response = await session.request(
                method,
                url,
                headers=self._pool.headers(name, headers),
                data=body if body or method in ("POST", "PUT", "PATCH") else None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=total, sock_connect=connect, sock_read=read),
                ssl=ssl_setting if target.scheme == "https" else True,
                server_hostname=server_name,
            )
        except DialError as refused:
            raise UpstreamError(refused.code, str(refused), refused.status) from None
        except aiohttp.SocketTimeoutError:
            raise UpstreamError(
                "upstream_timeout", f"no data from the target for {read}s", 504
            ) from None
        except TimeoutError:
            raise UpstreamError("upstream_timeout", f"no answer within {total}s", 504) from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise UpstreamError(
                "upstream_tls", f"certificate rejected: {exc.certificate_error}"
            ) from None
        except aiohttp.ClientSSLError as exc:
            raise UpstreamError("upstream_tls", f"TLS failed: {exc}") from None
        except ConnectionLostError:
            # The request may have reached the target: it is never sent a second time
            # (gateway.outbound.sessions), and the SaaS gets a 502 instead of a guess.
            raise UpstreamError(
                "upstream_connection_lost", "the connection closed before the answer"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            cause = exc.os_error
            if isinstance(cause, DialError):
                raise UpstreamError(cause.code, str(cause), cause.status) from None
            raise UpstreamError("upstream_unreachable", f"cannot connect: {exc.os_error}") from None
        except aiohttp.ClientResponseError as exc:
            raise UpstreamError(_response_error_code(exc), f"bad response: {exc.message}") from None
        except (aiohttp.ClientError, ValueError) as exc:
            raise UpstreamError("upstream_protocol_error", f"bad response: {exc}") from None
        return await self._wrap(response, max_body, total)

    async def _wrap(
        self, response: aiohttp.ClientResponse, max_body: int, total: float
    ) -> UpstreamResponse:
        headers = _response_headers(response)
        reason = (response.reason or "").replace("\r", " ").replace("\n", " ")
        declared = response.content_length
        if declared is not None and declared > max_body:
            response.close()
            raise UpstreamError(
                "upstream_body_too_large", f"response of {declared} bytes exceeds {max_body}"
            )
        # Read the first chunk now: small bodies (the common case) are then complete, and the
        # caller can answer inline on the relay's control channel without streaming.
        try:
            first = await _read_capped(response, max_body, 0)
        except BaseException:
            response.close()
            raise
        complete = response.content.at_eof()
        result = UpstreamResponse(
            status=response.status,
            reason=reason,
            headers=headers,
            body=_stream(response, max_body, len(first)),
            first_chunk=first,
            complete=complete,
            _response=response,
        )
        return result


async def _read_capped(response: aiohttp.ClientResponse, max_body: int, seen: int) -> bytes:
    try:
        chunk = await response.content.read(CHUNK)
    except (aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as exc:
        raise UpstreamError("upstream_protocol_error", f"bad response body: {exc}") from None
    except TimeoutError:
        # The read timeout (no byte for read_timeout_seconds) or the request's total timeout.
        raise UpstreamError("upstream_timeout", "response body stalled", 504) from None
    if seen + len(chunk) > max_body:
        raise UpstreamError("upstream_body_too_large", f"response body exceeds {max_body} bytes")
    return chunk


async def _stream(
    response: aiohttp.ClientResponse, max_body: int, seen: int
) -> AsyncIterator[bytes]:
    try:
        while not response.content.at_eof():
            chunk = await _read_capped(response, max_body, seen)
            if not chunk:
                break
            seen += len(chunk)
            yield chunk
    finally:
        response.release()


def _response_error_code(exc: aiohttp.ClientResponseError) -> str:
    # aiohttp reports oversize header blocks as "Got more than N bytes" / "Too many headers".
    text = str(exc.message).lower()
    if "got more than" in text or "too many headers" in text or "too large" in text:
        return "upstream_headers_too_large"
    return "upstream_protocol_error"


def _response_headers(response: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    named_by_connection = {
        token.strip().lower()
        for value in response.headers.getall("Connection", [])
        for token in value.split(",")
    }
    kept: list[tuple[str, str]] = []
    for name, value in response.raw_headers:
        text = name.decode("latin-1")
        lowered = text.lower()
        if lowered in _HOP_BY_HOP or lowered in named_by_connection:
            continue
        kept.append((text, value.decode("latin-1")))
    return kept


async def drain(response: UpstreamResponse) -> bytes:
    """The whole body of ``response`` (for small bodies and tests), within its cap."""
    parts = [response.first_chunk]
    if not response.complete:
        async for chunk in response.body:
            parts.append(chunk)
    await response.release()
    return b"".join(parts)


__all__ = ["TargetPool", "Upstream", "UpstreamError", "UpstreamResponse", "drain", "tls_context"]
