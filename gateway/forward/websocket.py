"""Upstream WebSockets: the on-prem end of a relayed stream to an http or https target.

The handshake goes through the same dial step as every HTTP request
(:class:`gateway.forward.dial.DialStep`: the host comes from gateway.yaml, is resolved once,
every address is checked against ``allowed_cidrs``, and the socket goes to a checked address),
with the target's TLS settings (:func:`gateway.forward.upstream.tls_context`: verification on,
TLS 1.2 minimum, the entry's CA bundle and server name) for ``wss``, and ``ws`` for http targets.
The URL is built from the target's configured scheme and port, the dial step's name for its host
(``Host`` and TLS keep the configured name) and the canonical path the policy judged (never
re-encoded). Headers are the allow-listed ones the caller built
(:func:`gateway.forward.headers.outbound_headers`); the client adds only the RFC 6455 section 4.1
handshake headers, and the subprotocols the SaaS offered are offered on in its order. Nothing is
taken from the environment (``trust_env=False``), redirects are not followed (a 3xx answer to the
upgrade is a refusal), compression is not negotiated (no inflate bombs), messages are capped at
``max_message`` bytes (RFC 6455 section 7.4.1: 1009), and the whole handshake (DNS, connect, TLS,
upgrade) has one deadline.

Why its own connection pool, beside :class:`gateway.forward.upstream.Upstream`'s: an upgraded
connection stays checked out of its pool for the life of the stream, so streams sharing the HTTP
pool would use up ``limits.max_concurrent_requests`` slots and starve ordinary requests. This pool
is sized by ``limits.max_concurrent_streams`` instead; the dial step and TLS settings are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config.model import GatewayConfig
from gateway.forward.dial import DialError, Guard, Redirect, Resolver, system_resolver
from gateway.forward.streams import CLOSE_ERROR, CLOSE_NORMAL, CLOSE_TOO_BIG, relay_close_code
from gateway.forward.upstream import TargetPool, UpstreamError

if TYPE_CHECKING:
    import aiohttp

__all__ = ["UpstreamSocket", "WebSocketUpstream"]

# Bound for the closing handshake (RFC 6455 section 7.1.1: wait for the peer's close frame, then
# drop the TCP connection).
CLOSE_TIMEOUT = 2.0
# Header names the WebSocket client writes itself (RFC 6455 section 4.1); one from the request
# would duplicate or contradict it.
_CLIENT_WRITES = frozenset(
    {
        "sec-websocket-protocol",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "upgrade",
        "connection",
    }
)


def _stream_session() -> dict[str, Any]:
    """The stream pool's session options: no total timeout (a stream lives as long as it is
    used; its idle limit is the splice's). aiohttp is imported here, with the first stream, so a
    gateway without WebSocket operations never loads it."""
    import aiohttp

    return {"timeout": aiohttp.ClientTimeout(total=None)}


class UpstreamSocket:
    """An open upstream WebSocket as a :class:`gateway.forward.streams.UpstreamEnd`."""

    carries_text = True

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        import aiohttp  # already loaded: ``ws`` is aiohttp's

        self._ws = ws
        self._kinds = aiohttp.WSMsgType
        self._ending = ("upstream_error", CLOSE_ERROR)

    @property
    def protocol(self) -> str | None:
        """The subprotocol the target chose (always one that was offered), or ``None``."""
        return self._ws.protocol

    async def receive(self) -> str | bytes | None:
        """The next data message; ``None`` once the target closed, failed or went away."""
        while True:
            message = await self._ws.receive()
            kind, kinds = message.type, self._kinds
            if kind is kinds.TEXT:
                return str(message.data)
            if kind is kinds.BINARY:
                return bytes(message.data)
            if kind in (kinds.PING, kinds.PONG):
                continue
            if kind is kinds.CLOSE:
                # A close frame: the target ended the stream on purpose, with this code.
                self._ending = ("upstream_closed", relay_close_code(int(message.data or 0)))
            elif kind is kinds.ERROR and self._ws.close_code == CLOSE_TOO_BIG:
                self._ending = ("message_too_large", CLOSE_TOO_BIG)
            # Anything else (the connection dropped without a close frame, which aiohttp reports
            # as CLOSED, or a protocol error) is abnormal: RFC 6455 section 7.1.5, code 1006.
            return None

    async def send(self, data: str | bytes) -> None:
        """Send one text or binary message (aiohttp waits while the transport is full)."""
        if isinstance(data, str):
            await self._ws.send_str(data)
        else:
            await self._ws.send_bytes(data)

    def ending(self) -> tuple[str, int]:
        """Why :meth:`receive` returned ``None`` and the code the relay side is closed with."""
        return self._ending

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Close (bounded by the socket's close timeout) and free the connection."""
        with contextlib.suppress(Exception):
            await self._ws.close(code=code, message=reason.encode()[:120])


class WebSocketUpstream:
    """Opens WebSockets to the http and https targets of one configuration revision."""

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
        self._targets = {n: t for n, t in config.targets.items() if not t.stream_only}
        # A pool of its own: a stream holds its connection for its whole life (see module doc).
        self._pool = TargetPool(
            config,
            self._targets,
            limit=config.limits.max_concurrent_streams,
            resolver=resolver,
            redirect=redirect,
            guard=guard,
            tls_contexts=tls_contexts,
            resolve_path=resolve_path,
            force_close=True,
            session_options=_stream_session,
        )

    async def close(self) -> None:
        """Close the pool (open streams are closed by their splices)."""
        await self._pool.close()

    async def connect(
        self,
        target_name: str,
        *,
        path: str,
        query: str | None,
        headers: Sequence[tuple[str, str]],
        protocols: Sequence[str],
        max_message: int,
        handshake_timeout: float,
    ) -> UpstreamSocket:
        """Open the upstream WebSocket; raises :class:`UpstreamError` with the answer to give.

        ``path`` and ``query`` are the canonical ones the policy judged; ``headers`` the
        allow-listed upstream headers (handshake headers among them are dropped: the client
        writes its own); ``protocols`` the subprotocols the SaaS offered, in its order.
        ``handshake_timeout`` bounds everything up to the open socket.
        """
        target = self._targets.get(target_name)
        if target is None:
            raise UpstreamError("websocket_upstream_unsupported", "not an http or https target")
        url = self._pool.url(target_name, "wss" if target.scheme == "https" else "ws", path, query)
        ssl_setting = self._pool.tls(target_name)
        server_name = self._pool.server_name(target_name)
        sent = self._pool.headers(
            target_name, ((k, v) for k, v in headers if k.lower() not in _CLIENT_WRITES)
        )
        session = self._pool.session()
        import aiohttp  # the session above imported it: only gateways with WebSocket streams

        from gateway.outbound.sessions import ConnectionLostError, RedirectRefusedError

        try:
            async with asyncio.timeout(handshake_timeout):
                ws = await session.ws_connect(
                    url,
                    headers=sent,
                    protocols=tuple(protocols),
                    max_msg_size=max_message,
                    compress=0,
                    autoping=True,
                    autoclose=True,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT),
                    ssl=ssl_setting if target.scheme == "https" else True,
                    server_hostname=server_name,
                )
        except DialError as refused:
            raise UpstreamError(refused.code, str(refused), refused.status) from None
        except TimeoutError:
            raise UpstreamError(
                "upstream_timeout", f"no WebSocket handshake within {handshake_timeout}s", 504
            ) from None
        except RedirectRefusedError as exc:
            # The pool's session never follows a redirect (RFC 6455 section 4.1 allows a client
            # to, but the decision judged this path, not the Location's).
            raise UpstreamError(
                "upstream_upgrade_refused", f"the target answered the upgrade with {exc.status}"
            ) from None
        except aiohttp.WSServerHandshakeError as exc:
            # A target that answers the upgrade with anything but 101 (RFC 6455 section 4.1)
            # refused the stream; redirects included, as they are never followed.
            raise UpstreamError(
                "upstream_upgrade_refused", f"the target answered the upgrade with {exc.status}"
            ) from None
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
        except (aiohttp.ClientError, ValueError) as exc:
            raise UpstreamError("upstream_protocol_error", f"bad handshake: {exc}") from None
        return UpstreamSocket(ws)
