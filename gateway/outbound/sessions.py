"""Every HTTP client session the gateway makes, built in one place so none can re-send a request.

aiohttp re-sends a request whose method is idempotent (GET, HEAD, OPTIONS, PUT, DELETE) when the
connection fails after the request was written, on the assumption that the server never acted on
it (RFC 9112 section 9.3.1 allows this for idempotent requests only when the client knows they
were not processed; aiohttp cannot know). For a gateway in front of systems that do act on PUT and
DELETE, and whose GETs may have side effects nobody declared, a second copy is worse than a
failure: the caller gets an error and decides. :func:`never_resend` turns "connection lost after
the request may have gone out" into :class:`ConnectionLostError`, which aiohttp does not retry;
a failure to connect at all (nothing was sent) is left as it is.

:func:`client_session` is the only constructor of ``aiohttp.ClientSession`` in the gateway (a test
keeps it so): every session gets :func:`never_resend`, and never reads proxy settings from the
environment (``trust_env=False``). :func:`translate_proxy_error` reads aiohttp's errors on a
proxied connection as the proxy's own (:mod:`gateway.outbound.proxy`).

Only the features that still speak through aiohttp import this module (the upstream WebSocket,
OAuth token requests, the OPA server engine, ``gateway check``, the supervisor's probes); a
gateway that uses none of them never loads aiohttp (issue 13: about 9 MiB resident).
"""

from __future__ import annotations

from typing import Any

import aiohttp

from gateway.outbound.proxy import (
    ProxyError,
    ProxyRoute,
    ProxyUnreachableError,
    proxy_refusal,
)

__all__ = ["ConnectionLostError", "client_session", "never_resend", "translate_proxy_error"]


class ConnectionLostError(aiohttp.ClientConnectionError):
    """The connection failed after the request may have been sent; it was not sent again.

    ``lost`` is aiohttp's own error (a ``ServerDisconnectedError`` or ``ClientOSError``), for
    callers that tell its kinds apart.
    """

    def __init__(self, lost: aiohttp.ClientConnectionError) -> None:
        super().__init__(f"connection lost before the response: {lost}")
        self.lost = lost


async def never_resend(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """Client middleware: a connection lost mid-exchange is an error, never a second request."""
    try:
        return await handler(request)
    except aiohttp.ClientConnectorError:
        # No connection was made, so nothing was sent (aiohttp does not retry these either).
        raise
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
        # The exception types aiohttp answers with a re-send; any other ClientError is final.
        raise ConnectionLostError(exc) from exc


def client_session(**options: Any) -> aiohttp.ClientSession:
    """An ``aiohttp.ClientSession`` with ``options`` that never re-sends a request and ignores
    proxy environment variables (``trust_env`` is always False)."""
    return aiohttp.ClientSession(middlewares=(never_resend,), trust_env=False, **options)


def translate_proxy_error(exc: BaseException, route: ProxyRoute) -> ProxyError | None:
    """Map an aiohttp failure on a proxied connection to a :class:`ProxyError`, else ``None``.

    The result never carries the original exception: aiohttp's request information holds the
    ``Proxy-Authorization`` header, which must not reach a traceback in the logs.
    """
    if route.proxy is None:
        return None
    label = f"{route.proxy.host}:{route.proxy.port}"
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return ProxyUnreachableError(f"cannot connect to proxy {label}", proxy=label)
    # aiohttp resolves the proxy's name before it connects, and reports a failed lookup as a
    # plain ClientConnectorDNSError keyed by the proxy's host: still the proxy's fault, not the
    # destination's (which only the proxy resolves, RFC 9110 section 9.3.6).
    if isinstance(exc, aiohttp.ClientConnectorError) and (exc.host, exc.port) == (
        route.proxy.host,
        route.proxy.port,
    ):
        why = exc.os_error.strerror or str(exc.os_error)
        return ProxyUnreachableError(f"cannot connect to proxy {label}: {why}", proxy=label)
    # ClientHttpProxyError: the answer to CONNECT. WSServerHandshakeError/ClientResponseError with
    # 407: a forward-proxied plain-HTTP request the proxy would not pass on.
    if isinstance(exc, aiohttp.ClientHttpProxyError) or (
        isinstance(exc, aiohttp.ClientResponseError) and exc.status == 407
    ):
        return proxy_refusal(label, exc.status, exc.message)
    return None
