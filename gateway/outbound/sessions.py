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

import functools
import os
import re
from typing import Any

import aiohttp
from aiohttp import client_proto, http_parser, web_protocol

from gateway.errors import GatewayError
from gateway.outbound.proxy import (
    ProxyError,
    ProxyRoute,
    ProxyUnreachableError,
    proxy_refusal,
)

__all__ = [
    "MIN_AIOHTTP",
    "ConnectionLostError",
    "RedirectRefusedError",
    "UntrustedRuntimeError",
    "aiohttp_version_problem",
    "client_session",
    "http_parser_problem",
    "never_resend",
    "refuse_redirects",
    "runtime_problems",
    "translate_proxy_error",
]

# Catalogue C 67: aiohttp releases before 3.13.4 have a C HTTP parser that accepts NUL and control
# characters in response header values (CVE-2026-34520); a target could smuggle a header past the
# gateway's response checks.
MIN_AIOHTTP = (3, 13, 4)
_VERSION = re.compile(r"([0-9]+)\.([0-9]+)(?:\.([0-9]+))?(.*)")
# PEP 440: a pre-release or development release comes before the release it leads to.
_PRE_RELEASE = re.compile(r"[.-]?(?:a|b|c|rc|alpha|beta|pre|preview|dev)[0-9]*", re.IGNORECASE)


def aiohttp_version_problem(version: str) -> str | None:
    """Why aiohttp ``version`` must not be used, or ``None`` when it is 3.13.4 or later.

    A version that cannot be read is refused (fail closed).
    """
    wanted = ".".join(map(str, MIN_AIOHTTP))
    match = _VERSION.fullmatch(version.strip())
    if match is None:
        return f"cannot read the aiohttp version {version[:40]!r}; {wanted} or later is required"
    release = (int(match[1]), int(match[2]), int(match[3] or 0))
    early = release == MIN_AIOHTTP and _PRE_RELEASE.match(match[4]) is not None
    if release < MIN_AIOHTTP or early:
        return f"aiohttp {version} is older than {wanted}; upgrade it (catalogue C 67)"
    return None


_PY_RESPONSE = http_parser.HttpResponseParserPy
_PY_REQUEST = http_parser.HttpRequestParserPy


def http_parser_problem() -> str | None:
    """Why aiohttp's HTTP parsing must not be trusted, or ``None`` when its C parser is in use.

    The pure-Python parser has had request-smuggling flaws the C one did not (GHSA-9548-qrrj-x5pj)
    and is what ``AIOHTTP_NO_EXTENSIONS=1`` or a missing or broken compiled extension leaves. The
    check looks at the parser classes the client (responses from targets and the control plane)
    and the server really bound at import time, whatever the reason for them.
    """
    pure = [
        role
        for role, bound, fallback in (
            # Looked up by name: the modules bind these at import time without re-exporting them.
            ("responses", getattr(client_proto, "HttpResponseParser", None), _PY_RESPONSE),
            ("requests", getattr(web_protocol, "HttpRequestParser", None), _PY_REQUEST),
        )
        if bound is None or bound is fallback
    ]
    if not pure:
        return None
    why = (
        "AIOHTTP_NO_EXTENSIONS is set"
        if os.environ.get("AIOHTTP_NO_EXTENSIONS")
        else "its compiled extension is missing"
    )
    return (
        f"aiohttp parses HTTP {' and '.join(pure)} with its pure-Python parser ({why}); "
        "install the aiohttp wheel for this platform and unset AIOHTTP_NO_EXTENSIONS"
    )


@functools.cache
def runtime_problems() -> tuple[str, ...]:
    """Why this process's aiohttp must not be used (catalogue C 67), empty when it may be.

    Computed once: the version and the parser classes are fixed when aiohttp is imported.
    """
    found = (aiohttp_version_problem(aiohttp.__version__), http_parser_problem())
    return tuple(problem for problem in found if problem is not None)


class UntrustedRuntimeError(GatewayError):
    """aiohttp failed its self-check (:func:`runtime_problems`): no session is made with it."""


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


# RFC 9110 section 15.4: the redirect statuses aiohttp follows by itself.
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class RedirectRefusedError(aiohttp.ClientError):
    """The server answered with a redirect, and the session does not follow redirects."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the server answered {status} (a redirect, not followed)")
        self.status = status


async def refuse_redirects(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """Client middleware: a redirect ends the exchange with :class:`RedirectRefusedError`.

    aiohttp follows redirects of every request that does not say ``allow_redirects=False``, and
    ``ws_connect`` cannot say it: the opening handshake of a WebSocket (RFC 6455 section 4.1)
    would follow a target's ``307 Location: /admin`` and open a stream on a path no decision
    judged. The middleware runs for every request aiohttp sends, the redirected ones included,
    so no second request can leave after a redirect, whatever the call said.
    """
    response = await handler(request)
    if response.status in _REDIRECTS:
        response.close()  # the connection is not reused: its answer was not read
        raise RedirectRefusedError(response.status)
    return response


def client_session(*, follow_redirects: bool = True, **options: Any) -> aiohttp.ClientSession:
    """An ``aiohttp.ClientSession`` with ``options`` that never re-sends a request and ignores
    proxy environment variables (``trust_env`` is always False). Without ``follow_redirects``
    no request of the session is ever redirected (:func:`refuse_redirects`): the sessions that
    reach on-prem systems are made so.

    Raises :class:`UntrustedRuntimeError` when aiohttp failed its self-check: the start-up check
    refuses a configuration that would need it (``gateway.service.self_check``); this refuses
    every other way of reaching it (fail closed).
    """
    problems = runtime_problems()
    if problems:
        raise UntrustedRuntimeError(problems[0])
    middlewares = (never_resend,) if follow_redirects else (never_resend, refuse_redirects)
    return aiohttp.ClientSession(middlewares=middlewares, trust_env=False, **options)


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
