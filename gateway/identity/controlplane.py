"""The only code that speaks the control-plane API (``schemas/controlplane.openapi.yaml``).

Mapping the gateway onto EmpowerID's real endpoints later touches this module alone. Every call:

* goes over HTTPS with the caller's :class:`ssl.SSLContext` (pinned CA, optionally mTLS);
* reaches the control plane through the shared :class:`~gateway.outbound.proxy.OutboundProxy`
  when one is given: the same ``CONNECT`` tunnel, Basic credentials and no-proxy list as relay
  traffic. Its extra CA bundle is *not* added to the pinned trust (security catalogue item 92);
* ignores proxy environment variables (``trust_env=False``);
* has connect, read and total timeouts, never follows redirects and asks for no compression;
* reads at most ``max_response_bytes`` of the body;
* turns every failure into :class:`ControlPlaneError` with a stable ``code``.

Error codes raised here (problem ``type`` codes from the server pass through unchanged, e.g.
``bad_credentials``, ``missing_operation``, ``invalid_csr``, ``not_registered``):

* ``tls_interception_or_untrusted_ca`` - the server certificate does not chain to the pinned CA
  (a TLS-inspecting proxy, or the wrong server);
* ``hostname_mismatch`` - the certificate does not name the host in the base URL;
* ``tls_handshake_failed`` - no common protocol version or cipher (e.g. a TLS 1.1-only server);
* ``client_certificate_rejected`` - the server refused the gateway's client certificate;
* ``proxy_auth_required`` - the proxy answered 407
  (:class:`~gateway.outbound.proxy.ProxyAuthError`);
* ``proxy_failed`` - the proxy could not be reached or refused the tunnel (the other
  :class:`~gateway.outbound.proxy.ProxyError` kinds); the proxy error is the ``__cause__``;
* ``unreachable``, ``timeout``;
* ``response_too_large``, ``unexpected_response``, ``unexpected_status``,
  ``service_unavailable``, ``rate_limited``;
* ``invalid_url`` (not a plain ``https://`` base URL), ``invalid_username`` (contains ``:``).
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError
from yarl import URL

from gateway.identity.errors import ControlPlaneError
from gateway.identity.models import (
    CertificateResult,
    Heartbeat,
    HeartbeatAck,
    RegistrationResult,
    RelayInfo,
    RequestSecret,
    RequestSecretSet,
    SigningKey,
    SigningKeySet,
)
from gateway.outbound.proxy import (
    OutboundProxy,
    ProxyAuthError,
    ProxyError,
    ProxyRoute,
    translate_proxy_error,
)
from gateway.outbound.sessions import ConnectionLostError, client_session

API_ROOT = "api/gateway/v1/"
PROBLEM_TYPE_PREFIX = "urn:empowerid:gateway:problem:"
DEFAULT_MAX_RESPONSE_BYTES = 256 * 1024

_PROBLEM_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_MAX_SERVER_TEXT = 300
# OpenSSL verify results for a name mismatch (X509_V_ERR_HOSTNAME_MISMATCH, ..._IP_ADDRESS_...).
_NAME_MISMATCH_CODES = frozenset({62, 64})
# TLS alerts a server sends when it refuses a client certificate (RFC 8446 section 6.2).
_CLIENT_CERT_ALERTS = (
    "CERTIFICATE_REQUIRED",
    "BAD_CERTIFICATE",
    "UNKNOWN_CA",
    "CERTIFICATE_EXPIRED",
    "CERTIFICATE_REVOKED",
    "CERTIFICATE_UNKNOWN",
    "UNSUPPORTED_CERTIFICATE",
    "ACCESS_DENIED",
)

_M = TypeVar("_M", bound=BaseModel)
# The route of every call when no proxy is configured.
_DIRECT = ProxyRoute(None, {}, tunnelled=False)


@dataclass(frozen=True)
class Timeouts:
    """Seconds allowed for connecting (TCP + TLS), for each read, and for a whole call."""

    connect: float = 10.0
    read: float = 20.0
    total: float = 30.0


def sanitize_server_text(text: object) -> str:
    """Server-supplied text made safe for one log line: printable ASCII, bounded length."""
    if not isinstance(text, str):
        return ""
    cleaned = _UNPRINTABLE.sub("?", text)
    return cleaned[:_MAX_SERVER_TEXT]


def problem_error(status: int, content_type: str, body: bytes) -> ControlPlaneError:
    """Translate a non-success answer (RFC 9457 problem+json or anything else) to an error.

    Pure function: the ``code`` is the suffix of a ``type`` under :data:`PROBLEM_TYPE_PREFIX`;
    an answer without a recognisable problem document gets a code derived from the status.
    """
    code = {429: "rate_limited", 502: "service_unavailable", 503: "service_unavailable"}.get(
        status, "unexpected_status"
    )
    title = ""
    detail = ""
    if content_type in ("application/problem+json", "application/json"):
        try:
            document: Any = json.loads(body)
        except (ValueError, RecursionError):
            document = None
        if isinstance(document, dict):
            problem_type = document.get("type")
            if isinstance(problem_type, str) and problem_type.startswith(PROBLEM_TYPE_PREFIX):
                suffix = problem_type[len(PROBLEM_TYPE_PREFIX) :]
                if _PROBLEM_CODE.fullmatch(suffix):
                    code = suffix
            title = sanitize_server_text(document.get("title"))
            detail = sanitize_server_text(document.get("detail"))
    message = f"the control plane answered HTTP {status}"
    if title:
        message += f": {title}"
    if detail:
        message += f" ({detail})"
    return ControlPlaneError(code, message, status=status)


def _base_url(base_url: str) -> URL:
    url = URL(base_url)
    if url.scheme != "https" or not url.host:
        raise ControlPlaneError("invalid_url", "the control-plane URL must be an https:// URL")
    if url.user or url.password or url.query_string or url.fragment:
        raise ControlPlaneError(
            "invalid_url", "the control-plane URL must not carry credentials, a query or a fragment"
        )
    path = url.path if url.path.endswith("/") else url.path + "/"
    return url.with_path(path)


class ControlPlaneClient:
    """An async client for the control-plane API; use it as ``async with``.

    ``client_certificate`` says whether ``ssl_context`` presents the gateway's certificate; it
    only changes how a server-side TLS refusal is reported. ``proxy`` is the gateway's outbound
    proxy decision (built once from the proxy settings and shared); ``None`` connects directly.
    """

    def __init__(
        self,
        base_url: str,
        ssl_context: ssl.SSLContext,
        *,
        client_certificate: bool,
        timeouts: Timeouts | None = None,
        proxy: OutboundProxy | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self._base = _base_url(base_url)
        self._ssl = ssl_context
        self._mtls = client_certificate
        self._timeouts = timeouts or Timeouts()
        self._proxy = proxy
        self._max_bytes = max_response_bytes
        self._session: aiohttp.ClientSession | None = None

    @property
    def base_url(self) -> str:
        """The control-plane base URL (always ending in ``/``)."""
        return str(self._base)

    async def __aenter__(self) -> ControlPlaneClient:
        timeout = aiohttp.ClientTimeout(
            total=self._timeouts.total,
            sock_connect=self._timeouts.connect,
            sock_read=self._timeouts.read,
        )
        connector = aiohttp.TCPConnector(ssl=self._ssl, limit=4)
        self._session = client_session(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            raise_for_status=False,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- API calls -----------------------------------------------------------------------------

    async def register(
        self, *, gateway_id: str, csr_pem: bytes, version: str, username: str, password: str
    ) -> RegistrationResult:
        """``POST registrations`` with the Person's credentials (HTTP Basic, RFC 7617)."""
        body = {"gateway_id": gateway_id, "csr": csr_pem.decode("ascii"), "version": version}
        try:
            authorization = aiohttp.encode_basic_auth(username, password, encoding="utf-8")
        except ValueError:
            # RFC 7617 section 2: a user-id cannot contain ':'. The text names no credential.
            raise ControlPlaneError("invalid_username", "the user name contains ':'") from None
        return await self._call(
            "POST",
            "registrations",
            RegistrationResult,
            json_body=body,
            authorization=authorization,
            expect=201,
        )

    async def relay_info(self) -> RelayInfo:
        """``GET relay-info`` over mTLS: relay endpoint and a fresh listener token."""
        return await self._call("GET", "relay-info", RelayInfo)

    async def heartbeat(self, heartbeat: Heartbeat) -> HeartbeatAck:
        """``POST heartbeats`` over mTLS."""
        return await self._call(
            "POST",
            "heartbeats",
            HeartbeatAck,
            json_body=heartbeat.model_dump(mode="json", exclude_none=True),
        )

    async def renew_certificate(self, csr_pem: bytes) -> CertificateResult:
        """``POST certificates`` over mTLS: a CSR for a new key, answered with a new chain."""
        body = {"csr": csr_pem.decode("ascii")}
        return await self._call(
            "POST", "certificates", CertificateResult, json_body=body, expect=201
        )

    async def signing_keys(self) -> list[SigningKey]:
        """``GET signing-keys`` over mTLS: the current request-signing keys."""
        key_set = await self._call("GET", "signing-keys", SigningKeySet)
        return list(key_set.keys)

    async def request_secrets(self) -> list[RequestSecret]:
        """``GET request-secrets`` over mTLS: this gateway's hmac-sha256 keys (never logged)."""
        secret_set = await self._call("GET", "request-secrets", RequestSecretSet)
        return list(secret_set.keys)

    # -- transport -----------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        model: type[_M],
        *,
        json_body: dict[str, Any] | None = None,
        authorization: str | None = None,
        expect: int = 200,
    ) -> _M:
        if self._session is None:
            raise RuntimeError("ControlPlaneClient must be used as an async context manager")
        url = self._base.join(URL(API_ROOT + path))
        headers = {
            "Accept": "application/json, application/problem+json",
            "Accept-Encoding": "identity",
        }
        if authorization is not None:
            headers["Authorization"] = authorization
        route = self._proxy.route_for(url) if self._proxy is not None else _DIRECT
        try:
            async with self._session.request(
                method,
                url,
                json=json_body,
                headers=route.request_headers(headers),
                allow_redirects=False,
                proxy=route.proxy,
                proxy_headers=route.tunnel_headers,
            ) as response:
                body = await self._read_body(response)
                status = response.status
                content_type = response.content_type
        except ControlPlaneError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            proxy_error = translate_proxy_error(exc, route)
            if proxy_error is not None:
                raise _proxy_failure(proxy_error) from proxy_error
            raise self._transport_error(exc) from None
        if status != expect:
            raise problem_error(status, content_type, body)
        if content_type != "application/json":
            raise ControlPlaneError(
                "unexpected_response", f"the control plane answered with {content_type!r}"
            )
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            fields = ", ".join(".".join(str(p) for p in err["loc"]) for err in exc.errors()[:5])
            raise ControlPlaneError(
                "unexpected_response",
                f"the control plane's {path} answer is not valid (fields: {fields or 'document'})",
            ) from None

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytes:
        if response.headers.get("Content-Encoding", "identity").lower() != "identity":
            raise ControlPlaneError(
                "unexpected_response", "the control plane sent a compressed answer"
            )
        declared = response.content_length
        if declared is not None and declared > self._max_bytes:
            raise ControlPlaneError(
                "response_too_large", f"the answer is larger than {self._max_bytes} bytes"
            )
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = await response.content.read(65536)
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > self._max_bytes:
                raise ControlPlaneError(
                    "response_too_large", f"the answer is larger than {self._max_bytes} bytes"
                )
            chunks.append(chunk)

    def _transport_error(self, exc: BaseException) -> ControlPlaneError:
        host = self._base.host
        if isinstance(exc, ConnectionLostError):
            exc = exc.lost  # never re-sent (gateway.outbound.sessions); classified as it was
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            cert_error = exc.certificate_error
            verify_code = getattr(cert_error, "verify_code", None)
            if verify_code in _NAME_MISMATCH_CODES:
                return ControlPlaneError(
                    "hostname_mismatch",
                    f"the certificate of {host} does not name that host; refusing to connect",
                )
            reason = sanitize_server_text(getattr(cert_error, "verify_message", ""))
            return ControlPlaneError(
                "tls_interception_or_untrusted_ca",
                f"the certificate of {host} is not issued by the pinned EmpowerID CA ({reason}); "
                "a TLS-inspecting proxy or a wrong server is in the path",
            )
        ssl_reason = _ssl_reason(exc)
        if ssl_reason and self._mtls and any(a in ssl_reason for a in _CLIENT_CERT_ALERTS):
            return _client_certificate_rejected(host)
        if isinstance(exc, aiohttp.ClientConnectorSSLError) or ssl_reason:
            return ControlPlaneError(
                "tls_handshake_failed",
                f"no TLS 1.2+ session could be set up with {host} "
                f"({sanitize_server_text(ssl_reason or 'handshake failed')})",
            )
        if isinstance(exc, aiohttp.ServerDisconnectedError) and self._mtls:
            # Under TLS 1.3 the client finishes its handshake before the server checks the
            # client certificate, so a refusal shows up as a dropped connection.
            return _client_certificate_rejected(host)
        if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
            exc.os_error, ConnectionResetError | ConnectionAbortedError
        ):
            # TCP was up, so the reset came during the TLS handshake: typically a server that
            # speaks only TLS 1.0/1.1 aborting on our TLS 1.2+ ClientHello.
            return ControlPlaneError(
                "tls_handshake_failed",
                f"{host} closed the connection during the TLS handshake "
                "(it may not support TLS 1.2 or newer)",
            )
        if isinstance(exc, TimeoutError | asyncio.TimeoutError):
            return ControlPlaneError(
                "timeout", f"the control plane at {host} did not answer in time"
            )
        if isinstance(exc, aiohttp.ClientConnectorError):
            return ControlPlaneError(
                "unreachable", f"cannot connect to the control plane at {host}"
            )
        return ControlPlaneError(
            "unreachable", f"the connection to {host} failed ({type(exc).__name__})"
        )


def _proxy_failure(error: ProxyError) -> ControlPlaneError:
    """The control-plane form of a proxy failure; the message is the proxy module's own.

    A 407 keeps the proxy module's code (``proxy_auth_required``), so an operator sees the same
    code whichever connection hit it; unreachable and refused proxies are ``proxy_failed``.
    """
    code = error.code if isinstance(error, ProxyAuthError) else "proxy_failed"
    return ControlPlaneError(code, str(error))


def _client_certificate_rejected(host: str | None) -> ControlPlaneError:
    return ControlPlaneError(
        "client_certificate_rejected",
        f"{host} refused the gateway's client certificate; re-register the gateway if it was "
        "revoked",
    )


def _ssl_reason(exc: BaseException) -> str:
    """The OpenSSL reason of an SSL error anywhere in the exception's cause chain."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return ""
        if isinstance(seen, ssl.SSLError):
            return str(seen.reason or seen.strerror or "")
        os_error = getattr(seen, "os_error", None)
        seen = os_error if isinstance(os_error, BaseException) else seen.__cause__
    return ""
