"""The only code that speaks the control-plane API (``schemas/controlplane.openapi.yaml``).

Mapping the gateway onto EmpowerID's real endpoints later touches this module alone. Every call:

* goes over HTTPS with the caller's :class:`ssl.SSLContext` (pinned CA, optionally mTLS);
* reaches the control plane through the shared :class:`~gateway.outbound.proxy.OutboundProxy`
  when one is given (:func:`~gateway.outbound.proxy.open_transport`, as relay sockets do): the
  same ``CONNECT`` tunnel, Basic credentials and no-proxy list as relay traffic. Its extra CA
  bundle is *not* added to the pinned trust (security catalogue item 92);
* ignores proxy environment variables (nothing here reads them);
* is one HTTP/1.1 exchange on a connection of its own (``Connection: close``), written and read
  by the forward's client (:class:`gateway.forward.http1.Connection`: httptools' strict llhttp
  parser, bounded lines and headers): nothing is pooled, so no request can go out on a
  connection the server already closed, and none is ever sent twice (RFC 9112 section 9.3.1);
* has connect, read and total timeouts, never follows redirects and asks for no compression;
* reads at most ``max_response_bytes`` of the body;
* turns every failure into :class:`ControlPlaneError` with a stable ``code``.

No aiohttp: a gateway that needs none of aiohttp's features does not load it (issue 13).

Error codes raised here (problem ``type`` codes from the server pass through unchanged, e.g.
``bad_credentials``, ``missing_operation``, ``invalid_csr``, ``not_registered``):

* ``tls_interception_or_untrusted_ca`` - the server certificate does not chain to the pinned CA
  (a TLS-inspecting proxy, or the wrong server);
* ``hostname_mismatch`` - the certificate does not name the host in the base URL;
* ``server_certificate_expired`` - the server certificate is outside its validity period at
  the local time (expired, or the local clock is wrong);
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

from pydantic import BaseModel, ValidationError
from yarl import URL

from gateway import __version__
from gateway.forward.http1 import Body, Connection, ExchangeError, Response, request_head
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
    basic_credentials,
    open_transport,
)

API_ROOT = "api/gateway/v1/"
PROBLEM_TYPE_PREFIX = "urn:empowerid:gateway:problem:"
DEFAULT_MAX_RESPONSE_BYTES = 256 * 1024

_PROBLEM_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_MAX_SERVER_TEXT = 300
# OpenSSL verify results for a name mismatch (X509_V_ERR_HOSTNAME_MISMATCH, ..._IP_ADDRESS_...).
_NAME_MISMATCH_CODES = frozenset({62, 64})
# ... and for a certificate outside its validity period (X509_V_ERR_CERT_NOT_YET_VALID,
# X509_V_ERR_CERT_HAS_EXPIRED).
_VALIDITY_CODES = frozenset({9, 10})
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
# Calls in flight at once (each on its own connection).
_MAX_CONNECTIONS = 4
_READ_SIZE = 65536


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
        self._open = False
        self._slots = asyncio.Semaphore(_MAX_CONNECTIONS)
        self._connections: set[Connection] = set()

    @property
    def base_url(self) -> str:
        """The control-plane base URL (always ending in ``/``)."""
        return str(self._base)

    async def __aenter__(self) -> ControlPlaneClient:
        self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open = False
        for connection in list(self._connections):
            connection.close()

    # -- API calls -----------------------------------------------------------------------------

    async def register(
        self, *, gateway_id: str, csr_pem: bytes, version: str, username: str, password: str
    ) -> RegistrationResult:
        """``POST registrations`` with the Person's credentials (HTTP Basic, RFC 7617)."""
        body = {"gateway_id": gateway_id, "csr": csr_pem.decode("ascii"), "version": version}
        try:
            authorization = basic_credentials(username, password)
        except ValueError:
            # RFC 7617 section 2: a user-id cannot contain ':'. The text names no credential.
            raise ControlPlaneError("invalid_username", "the user name contains ':'") from None
        try:
            return await self._call(
                "POST",
                "registrations",
                RegistrationResult,
                json_body=body,
                authorization=authorization,
                expect=201,
            )
        except ControlPlaneError as exc:
            # The message quotes the server's title and detail; a control plane that repeats
            # what it was sent must not put the password on the operator's screen or in a log.
            message = str(exc.args[0])
            token = authorization.partition(" ")[2]
            scrubbed = message.replace(password, "***") if password else message
            scrubbed = scrubbed.replace(token, "***") if token else scrubbed
            if scrubbed == message:
                raise
            raise ControlPlaneError(exc.code, scrubbed, status=exc.status) from None

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
        if not self._open:
            raise RuntimeError("ControlPlaneClient must be used as an async context manager")
        url = self._base.join(URL(API_ROOT + path))
        body = b"" if json_body is None else json.dumps(json_body).encode("utf-8")
        headers = [
            ("Host", url.raw_authority),
            ("User-Agent", f"gateway/{__version__}"),
            ("Accept", "application/json, application/problem+json"),
            ("Accept-Encoding", "identity"),
            ("Connection", "close"),
        ]
        if json_body is not None:
            headers.append(("Content-Type", "application/json"))
        if authorization is not None:
            headers.append(("Authorization", authorization))
        head = request_head(method, url.raw_path_qs, headers, body)
        if head is None:
            # Every part is the client's own or checked above; a break means a bad base URL.
            raise ControlPlaneError("invalid_url", "the control-plane URL cannot be sent")
        async with self._slots:
            response, answer = await self._exchange(method, url, head + body)
        status = response.code
        content_type = _media_type(response)
        if status != expect:
            raise problem_error(status, content_type, answer)
        if content_type != "application/json":
            raise ControlPlaneError(
                "unexpected_response", f"the control plane answered with {content_type!r}"
            )
        try:
            return model.model_validate_json(answer)
        except ValidationError as exc:
            fields = ", ".join(".".join(str(p) for p in err["loc"]) for err in exc.errors()[:5])
            raise ControlPlaneError(
                "unexpected_response",
                f"the control plane's {path} answer is not valid (fields: {fields or 'document'})",
            ) from None

    async def _exchange(self, method: str, url: URL, request: bytes) -> tuple[Response, bytes]:
        """Send ``request`` once on a new connection to ``url``; the answer's head and body."""
        timeouts = self._timeouts
        connection = Connection(asyncio.get_running_loop())
        self._connections.add(connection)
        try:
            async with asyncio.timeout(timeouts.total):
                try:
                    transport = await open_transport(
                        self._proxy,
                        url,
                        connection,
                        connect_timeout=timeouts.connect,
                        ssl_context=self._ssl,
                    )
                except ProxyError as exc:
                    raise _proxy_failure(exc) from exc
                except (OSError, TimeoutError) as exc:
                    raise self._connect_error(exc) from None
                connection.begin(method, timeouts.read, timeouts.total)
                transport.write(request)
                try:
                    response, payload = await connection.head()
                    return response, await self._read_body(response, payload)
                except ExchangeError as exc:
                    raise self._exchange_error(exc, connection.lost) from None
        except TimeoutError:
            raise _timeout(self._base.host) from None
        finally:
            connection.close()
            self._connections.discard(connection)

    async def _read_body(self, response: Response, payload: Body) -> bytes:
        if response.headers.get("Content-Encoding", "identity").lower() != "identity":
            raise ControlPlaneError(
                "unexpected_response", "the control plane sent a compressed answer"
            )
        declared = response.headers.get("Content-Length", "")
        too_large = ControlPlaneError(
            "response_too_large", f"the answer is larger than {self._max_bytes} bytes"
        )
        # llhttp accepted the framing, so a Content-Length here is digits only.
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise too_large
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = await payload.read(_READ_SIZE)
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > self._max_bytes:
                raise too_large
            chunks.append(chunk)

    def _connect_error(self, exc: BaseException) -> ControlPlaneError:
        """A failure to connect, tunnel or finish the TLS handshake (nothing was sent)."""
        host = self._base.host
        if isinstance(exc, ssl.SSLCertVerificationError):
            if exc.verify_code in _NAME_MISMATCH_CODES:
                return ControlPlaneError(
                    "hostname_mismatch",
                    f"the certificate of {host} does not name that host; refusing to connect",
                )
            reason = sanitize_server_text(exc.verify_message or "")
            if exc.verify_code in _VALIDITY_CODES:
                # Issued by the pinned CA, but outside its validity at the local time: calling
                # this interception would send the operator hunting for a proxy.
                return ControlPlaneError(
                    "server_certificate_expired",
                    f"the certificate of {host} is not valid at the local time ({reason}); "
                    "EmpowerID must renew it, or the local clock is wrong; refusing to connect",
                )
            return ControlPlaneError(
                "tls_interception_or_untrusted_ca",
                f"the certificate of {host} is not issued by the pinned EmpowerID CA ({reason}); "
                "a TLS-inspecting proxy or a wrong server is in the path",
            )
        if isinstance(exc, ssl.SSLError):
            return self._tls_refusal(exc)
        if isinstance(exc, ConnectionResetError | ConnectionAbortedError):
            # TCP was up, so the reset came during the TLS handshake: typically a server that
            # speaks only TLS 1.0/1.1 aborting on our TLS 1.2+ ClientHello.
            return ControlPlaneError(
                "tls_handshake_failed",
                f"{host} closed the connection during the TLS handshake "
                "(it may not support TLS 1.2 or newer)",
            )
        if isinstance(exc, TimeoutError):
            return _timeout(host)
        return ControlPlaneError("unreachable", f"cannot connect to the control plane at {host}")

    def _exchange_error(self, exc: ExchangeError, lost: BaseException | None) -> ControlPlaneError:
        """A failure after the request was written; it is never sent again."""
        host = self._base.host
        if exc.code == "upstream_timeout":
            return _timeout(host)
        if isinstance(lost, ssl.SSLError):
            # A TLS alert after the handshake: under TLS 1.3 the server checks the client's
            # certificate only after the client finished its side (RFC 8446 section 4.4.2).
            return self._tls_refusal(lost)
        if exc.code == "upstream_connection_lost":
            if self._mtls:
                # The same refusal, when the server just closes instead of sending an alert.
                return _client_certificate_rejected(host)
            return ControlPlaneError(
                "unreachable", f"the connection to {host} closed before the answer"
            )
        return ControlPlaneError(
            "unexpected_response",
            f"the control plane's answer is not valid HTTP/1.1 ({sanitize_server_text(str(exc))})",
        )

    def _tls_refusal(self, exc: ssl.SSLError) -> ControlPlaneError:
        host = self._base.host
        reason = str(exc.reason or exc.strerror or "")
        if self._mtls and any(alert in reason for alert in _CLIENT_CERT_ALERTS):
            return _client_certificate_rejected(host)
        return ControlPlaneError(
            "tls_handshake_failed",
            f"no TLS 1.2+ session could be set up with {host} "
            f"({sanitize_server_text(reason or 'handshake failed')})",
        )


def _media_type(response: Response) -> str:
    """The answer's media type without parameters, lower-case (RFC 9110 section 8.3.1); an
    answer without one is ``application/octet-stream`` (section 8.3)."""
    value = response.headers.get("Content-Type", "")
    media = value.split(";", 1)[0].strip().lower()
    return media or "application/octet-stream"


def _timeout(host: str | None) -> ControlPlaneError:
    return ControlPlaneError("timeout", f"the control plane at {host} did not answer in time")


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
