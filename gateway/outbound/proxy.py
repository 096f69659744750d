"""Outbound HTTP proxy support for every connection the gateway opens toward the cloud.

The gateway only ever connects outbound, and many customer networks force such traffic through an
HTTP proxy, often one that inspects TLS. This module is the single place that decides, per
destination URL, whether to go through the configured proxy and with which credentials. Both the
relay listener and the EmpowerID control-plane client route through :class:`OutboundProxy`.

Trust differs by destination. Relay connections use :func:`client_ssl_context`: the system store
plus an optional extra CA bundle for a TLS-inspecting proxy. Control-plane connections keep their
own context pinned to the EmpowerID CA (``gateway.identity.tls``) and never trust that extra
bundle: registration sends a Person's password and every later call authenticates the gateway,
so a proxy that re-signs those connections must fail with ``tls_interception_or_untrusted_ca``
(security catalogue item 92) instead of being trusted.

Rules it enforces:

* Only the proxy given in :class:`ProxySettings` is used. ``HTTP_PROXY``/``HTTPS_PROXY``/
  ``NO_PROXY`` and friends in the process environment are never read: sessions are created with
  ``trust_env=False`` (:func:`gateway.outbound.sessions.client_session`) and relay sockets are
  opened by :func:`open_transport`, so a stray variable cannot silently re-route relay traffic.
* ``wss://`` and ``https://`` destinations go through the proxy with an HTTP ``CONNECT`` tunnel
  (RFC 9110 section 9.3.6); TLS is then negotiated end to end with the destination, so hostname
  verification still applies to the real destination name.
* Proxy credentials use HTTP Basic (RFC 7617) on the ``Proxy-Authorization`` header of the
  ``CONNECT`` request only. The password is held as a secret value (anything with
  ``get_secret_value()``, such as ``pydantic.SecretStr``) and never appears in ``repr``, logs or
  exception messages. Credentials embedded in the proxy URL are refused for the same reason.
* A proxy that answers ``407`` raises :class:`ProxyAuthError`; any other refusal of the tunnel
  raises :class:`ProxyConnectRefusedError`; a proxy that cannot be reached raises
  :class:`ProxyUnreachableError`. All three carry a stable ``code`` for logs and metrics.

No-proxy list semantics (:class:`NoProxyList`), modelled on the common ``NO_PROXY`` conventions
(curl, Go's ``httpproxy``) but stricter so that a typo is an error instead of a silent bypass:

* entries are compared case-insensitively; one trailing dot on the host or the entry is ignored;
* ``*`` alone matches every destination (the proxy is then never used);
* ``example.com`` matches ``example.com`` itself and every subdomain (``a.example.com``), only
  on a label boundary (``badexample.com`` does not match);
* ``.example.com`` (or ``*.example.com``) matches subdomains only, not ``example.com`` itself;
* an IP literal (``10.1.2.3``, ``::1`` or ``[::1]``) matches that address exactly;
* a CIDR block (``10.0.0.0/8``, ``fd00::/8``) matches destinations written as an IP literal
  inside it. Host names are never resolved to test CIDR entries: resolving would leak lookups and
  the answer could differ from the address actually dialled;
* entries with a port, a path, user information, whitespace inside, or an all-numeric last
  label that is not a whole IP address (``10.1.2``) are rejected with
  :class:`ProxyConfigError` (common tools ignore ports silently; we prefer to say so).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import os
import re
import ssl
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from yarl import URL

from gateway.errors import GatewayError

__all__ = [
    "NoProxyList",
    "OutboundProxy",
    "ProxyAuthError",
    "ProxyConfigError",
    "ProxyConnectRefusedError",
    "ProxyError",
    "ProxyRoute",
    "ProxySettings",
    "ProxyUnreachableError",
    "SecretText",
    "basic_credentials",
    "client_ssl_context",
    "open_transport",
    "proxy_refusal",
]

# A DNS label per RFC 1123 (letters, digits, hyphen; underscore tolerated because internal
# names often use it). Used to reject garbage in no-proxy entries rather than never matching it.
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
# Reason phrases from a proxy are untrusted text: keep only a short printable prefix.
_MAX_REASON = 80


class SecretText(Protocol):
    """A secret string holder, such as ``pydantic.SecretStr``; its value is read only when used."""

    def get_secret_value(self) -> str:
        """Return the secret in clear text (for immediate use, never for display)."""
        ...


def basic_credentials(username: str, password: str) -> str:
    """The ``Basic`` credentials (RFC 7617) of ``username`` and ``password``, as a header value.

    UTF-8 encoded (section 2.1, ``charset="UTF-8"``). A user-id cannot contain a colon (section
    2): :class:`ValueError`, whose text names neither value.
    """
    if ":" in username:
        raise ValueError("a user-id cannot contain ':' (RFC 7617 section 2)")
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


class ProxyConfigError(GatewayError, ValueError):
    """The proxy settings cannot be used (bad URL, half credentials, no-proxy entry, CA file)."""


class ProxyError(GatewayError):
    """The configured proxy prevented a connection. ``code`` is stable for logs and metrics."""

    code = "proxy_error"

    def __init__(self, message: str, *, proxy: str, status: int | None = None) -> None:
        super().__init__(message)
        self.proxy = proxy
        self.status = status


class ProxyAuthError(ProxyError):
    """The proxy answered 407: credentials are required, or the ones sent were not accepted."""

    code = "proxy_auth_required"


class ProxyConnectRefusedError(ProxyError):
    """The proxy refused to open the tunnel (any non-2xx answer other than 407)."""

    code = "proxy_connect_refused"


class ProxyUnreachableError(ProxyError):
    """No TCP connection to the proxy could be made (down, wrong address, filtered)."""

    code = "proxy_unreachable"


@dataclass(frozen=True)
class _Rule:
    """One parsed no-proxy entry; exactly one of the matcher fields is meaningful."""

    kind: str  # "all", "domain", "subdomain", "ip" or "net"
    domain: str = ""
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Parse an IP literal (IPv6 optionally in brackets); ``None`` when ``text`` is not one."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _parse_rule(raw: str) -> _Rule:
    entry = raw.strip().lower()
    if entry == "*":
        return _Rule("all")
    if not entry or any(c.isspace() or c in "@?#\\" for c in entry):
        raise ProxyConfigError(f"no-proxy entry {raw!r} is not a host, IP address or CIDR block")
    if "/" in entry:
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ProxyConfigError(f"no-proxy entry {raw!r} is not a valid CIDR block") from None
        return _Rule("net", network=network)
    address = _parse_ip(entry)
    if address is not None:
        return _Rule("ip", address=address)
    kind = "domain"
    if entry.startswith("*."):
        kind, entry = "subdomain", entry[2:]
    elif entry.startswith("."):
        kind, entry = "subdomain", entry[1:]
    entry = entry.removesuffix(".")
    labels = entry.split(".")
    # "host:port" fails the label check (the colon is not a label character); an all-numeric
    # last label is an IP-like typo such as "10.1.2", never a host name (RFC 3696 section 2).
    if not all(_LABEL.match(label) for label in labels) or labels[-1].isdigit():
        raise ProxyConfigError(
            f"no-proxy entry {raw!r} is not a host name (ports and wildcards inside are not "
            "supported)"
        )
    return _Rule(kind, domain=entry)


class NoProxyList:
    """Destinations that bypass the proxy; see the module docstring for the exact semantics."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        """Parse ``entries``; raise :class:`ProxyConfigError` on the first malformed one."""
        self._rules = tuple(_parse_rule(e) for e in entries)

    def __repr__(self) -> str:
        return f"NoProxyList({len(self._rules)} entries)"

    def __bool__(self) -> bool:
        return bool(self._rules)

    def matches(self, host: str) -> bool:
        """Whether a connection to ``host`` (a name or IP literal, as in a URL) goes direct."""
        name = host.strip().lower().removesuffix(".")
        if not name:
            return False
        address = _parse_ip(name)
        for rule in self._rules:
            if rule.kind == "all":
                return True
            if address is not None:
                if rule.kind == "ip" and rule.address == address:
                    return True
                if (
                    rule.kind == "net"
                    and rule.network is not None
                    and address.version == rule.network.version
                    and address in rule.network
                ):
                    return True
                continue
            if rule.kind == "domain" and (name == rule.domain or name.endswith("." + rule.domain)):
                return True
            if rule.kind == "subdomain" and name.endswith("." + rule.domain):
                return True
        return False


def _validate_proxy_url(raw: str) -> URL:
    try:
        url = URL(raw)
    except (ValueError, TypeError):
        raise ProxyConfigError("proxy URL is not a valid URL") from None
    if url.scheme != "http":
        # Tunnels are asked for over plain HTTP to the proxy; TLS to the proxy itself is not
        # supported.
        raise ProxyConfigError("proxy URL must use the http:// scheme")
    if url.user is not None or url.password is not None:
        # Credentials in the URL end up in logs and error messages; they have their own fields.
        raise ProxyConfigError("proxy URL must not contain credentials; set username/password")
    if not url.host:
        raise ProxyConfigError("proxy URL has no host")
    if url.path not in ("", "/") or url.query_string or url.fragment:
        raise ProxyConfigError("proxy URL must be http://host:port with no path or query")
    if url.explicit_port is None:
        raise ProxyConfigError("proxy URL must name the port explicitly (http://host:port)")
    return url.with_path("")


@dataclass(frozen=True)
class ProxySettings:
    """How the gateway reaches the internet; the defaults mean "direct, system CAs only".

    ``url``: ``http://host:port`` of the proxy, or ``None`` for direct connections.
    ``username``/``password``: Basic credentials for the proxy; both or neither.
    ``no_proxy``: destinations that bypass the proxy (see :class:`NoProxyList`).
    ``extra_ca_file``: PEM bundle trusted *in addition to* the system store for relay
    connections; needed when a TLS-inspecting proxy re-signs certificates with its own CA. The
    control-plane client ignores it (its trust is pinned, see the module docstring).
    """

    url: str | None = None
    username: str | None = None
    password: SecretText | None = field(default=None, repr=False)
    no_proxy: tuple[str, ...] = ()
    extra_ca_file: Path | None = None

    def __post_init__(self) -> None:
        """Validate eagerly so that a bad setting fails at start-up, not on first connect."""
        if self.url is not None:
            _validate_proxy_url(self.url)
        if (self.username is None) != (self.password is None):
            raise ProxyConfigError("proxy username and password must be given together")
        if self.username is not None and self.url is None:
            raise ProxyConfigError("proxy credentials are set but no proxy URL is")
        if self.username is not None and ":" in self.username:
            # RFC 7617 section 2: the user-id cannot contain a colon.
            raise ProxyConfigError("proxy username must not contain ':'")
        NoProxyList(self.no_proxy)


def client_ssl_context(extra_ca_file: Path | None = None) -> ssl.SSLContext:
    """The TLS client context for relay connections (:attr:`OutboundProxy.ssl_context`).

    System trust store plus, optionally, ``extra_ca_file`` (PEM). TLS 1.2 is the minimum, the
    peer certificate is always verified and the host name always checked (RFC 6125); no setting
    can turn those off.

    One context per trust configuration: loading the system store costs about 0.8 MiB per
    context, and the agent builds an :class:`OutboundProxy` per revision and per check (issue 13).
    Contexts are shared while the system store's files and the extra bundle's bytes are unchanged
    (a changed file gives a new context at the next revision); nothing changes a context after it
    is built.
    """
    extra: bytes | None = None
    if extra_ca_file is not None:
        try:
            with extra_ca_file.open("rb") as handle:
                extra = handle.read(_MAX_CA_BUNDLE_BYTES + 1)
        except OSError as exc:
            raise ProxyConfigError(
                f"cannot load CA bundle {extra_ca_file}: {type(exc).__name__}"
            ) from None
        if len(extra) > _MAX_CA_BUNDLE_BYTES:
            raise ProxyConfigError(f"cannot load CA bundle {extra_ca_file}: larger than 16 MiB")
    key = (_system_store(), hashlib.sha256(extra).digest() if extra is not None else None)
    context = _CONTEXTS.get(key)
    if context is not None:
        _CONTEXTS.move_to_end(key)
        return context
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    if extra is not None:
        try:
            # PEM text, as a cafile would be read; the bytes are the ones the key was made of.
            context.load_verify_locations(cadata=extra.decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
            raise ProxyConfigError(
                f"cannot load CA bundle {extra_ca_file}: {type(exc).__name__}"
            ) from None
    _CONTEXTS[key] = context
    while len(_CONTEXTS) > _MAX_CONTEXTS:
        _CONTEXTS.popitem(last=False)
    return context


_MAX_CA_BUNDLE_BYTES = 16 << 20
_MAX_CONTEXTS = 4
_CONTEXTS: OrderedDict[tuple[object, bytes | None], ssl.SSLContext] = OrderedDict()


def _system_store() -> tuple[object, ...]:
    """What identifies the system trust store's current contents: OpenSSL's default file and
    directory (``SSL_CERT_FILE``/``SSL_CERT_DIR`` included) and their inode, size and mtime."""
    paths = ssl.get_default_verify_paths()
    identity: list[object] = []
    for path in (paths.cafile, paths.capath):
        try:
            status = os.stat(path) if path else None
        except OSError:
            status = None
        facts = None if status is None else (status.st_ino, status.st_size, status.st_mtime_ns)
        identity.append((path, facts))
    return tuple(identity)


class ProxyRoute:
    """How to reach one destination: the proxy URL (``None`` for direct) and the proxy headers.

    ``proxy_headers`` holds ``Proxy-Authorization`` when credentials are configured. For ``wss``/
    ``https`` destinations aiohttp sends them on the ``CONNECT`` request only; for plain ``ws``/
    ``http`` destinations (absolute-form requests to the proxy) they must ride on the request
    itself, which :meth:`request_headers` does. The header values are kept out of ``repr``.
    """

    __slots__ = ("proxy", "proxy_headers", "tunnelled")

    def __init__(self, proxy: URL | None, proxy_headers: Mapping[str, str], *, tunnelled: bool):
        self.proxy = proxy
        self.proxy_headers = dict(proxy_headers)
        self.tunnelled = tunnelled

    @property
    def direct(self) -> bool:
        """True when the destination is reached without the proxy."""
        return self.proxy is None

    @property
    def tunnel_headers(self) -> dict[str, str] | None:
        """Headers for the ``CONNECT`` request (aiohttp's ``proxy_headers``), ``None`` if none."""
        return self.proxy_headers if self.tunnelled and self.proxy_headers else None

    def request_headers(self, headers: Mapping[str, str] | None) -> dict[str, str]:
        """The headers to send on the request itself (adds proxy credentials when not tunnelled)."""
        merged = dict(headers or {})
        if self.proxy is not None and not self.tunnelled:
            merged.update(self.proxy_headers)
        return merged

    def __repr__(self) -> str:
        where = "direct" if self.proxy is None else str(self.proxy)
        auth = " with credentials" if self.proxy_headers else ""
        return f"ProxyRoute({where}{auth})"


class OutboundProxy:
    """The proxy decision for outbound connections, built once from :class:`ProxySettings`."""

    def __init__(self, settings: ProxySettings) -> None:
        """Validate and compile ``settings``; also builds the TLS context."""
        self._url = _validate_proxy_url(settings.url) if settings.url is not None else None
        self._no_proxy = NoProxyList(settings.no_proxy)
        self._headers: dict[str, str] = {}
        if settings.username is not None and settings.password is not None:
            # RFC 7617 Basic credentials, UTF-8 encoded (section 2.1 charset="UTF-8").
            self._headers["Proxy-Authorization"] = basic_credentials(
                settings.username, settings.password.get_secret_value()
            )
        self.ssl_context = client_ssl_context(settings.extra_ca_file)

    def __repr__(self) -> str:
        where = "direct" if self._url is None else str(self._url)
        return f"OutboundProxy({where}, no_proxy={self._no_proxy!r})"

    @property
    def proxy_label(self) -> str:
        """``host:port`` of the proxy for messages and logs (empty when there is none)."""
        if self._url is None:
            return ""
        return f"{self._url.host}:{self._url.port}"

    def route_for(self, url: str | URL) -> ProxyRoute:
        """Decide how to reach ``url``: through the proxy unless none is set or no-proxy matches."""
        target = URL(url) if isinstance(url, str) else url
        if self._url is None or self._no_proxy.matches(target.host or ""):
            return ProxyRoute(None, {}, tunnelled=False)
        return ProxyRoute(self._url, self._headers, tunnelled=target.scheme in ("https", "wss"))


def _clean_reason(reason: str | None) -> str:
    text = "".join(c for c in (reason or "") if c.isprintable())
    return text[:_MAX_REASON]


def proxy_refusal(label: str, status: int, reason: str | None) -> ProxyError:
    """The error for the proxy ``label`` that answered ``status`` with the phrase ``reason``
    (407: credentials; else refused). The phrase is untrusted text: a short printable prefix is
    kept."""
    reason = _clean_reason(reason)
    if status == 407:
        return ProxyAuthError(
            f"proxy {label} requires authentication or rejected the credentials (407 {reason})",
            proxy=label,
            status=status,
        )
    return ProxyConnectRefusedError(
        f"proxy {label} refused the tunnel ({status} {reason})", proxy=label, status=status
    )


# The route of a connection made without a proxy decision.
_DIRECT = ProxyRoute(None, {}, tunnelled=False)
# Bound on the proxy's answer to CONNECT (status line and headers); squid's is a few hundred bytes.
_MAX_CONNECT_ANSWER = 16 * 1024


async def open_transport(
    proxy: OutboundProxy | None,
    url: str | URL,
    protocol: asyncio.Protocol,
    *,
    connect_timeout: float,
    ssl_context: ssl.SSLContext | None = None,
) -> asyncio.Transport:
    """Connect ``protocol`` to ``url``'s host and port, through the proxy decision for it.

    For a library that speaks its protocol on a connection it does not own (the relay
    listener's sans-IO WebSocket, the control-plane client's HTTP/1.1 exchange). ``wss``/
    ``https`` get TLS with ``ssl_context`` (the control plane's pinned one), by default
    :attr:`OutboundProxy.ssl_context`, end to end with the destination, hostname checked.
    ``proxy`` ``None`` connects directly (then a secure URL needs ``ssl_context``).
    Through a proxy the connection is always an HTTP ``CONNECT`` tunnel (RFC 9110 section
    9.3.6), also for plain ``ws``/``http``: proxies do not pass a WebSocket upgrade on in
    absolute form. Credentials ride on the ``CONNECT`` request only; once the proxy has said
    2xx, the tunnel is handed to ``protocol`` (the destination sends nothing before we do, so
    nothing is left unread). Raises :class:`ProxyAuthError`, :class:`ProxyConnectRefusedError` or
    :class:`ProxyUnreachableError` for the proxy's failures, ``OSError``/``ssl.SSLError`` for the
    destination's, ``TimeoutError`` when ``connect_timeout`` passes first.
    """
    target = URL(url) if isinstance(url, str) else url
    host = target.host
    if not host:
        raise ValueError("URL has no host")
    port = target.port or (443 if target.scheme in ("https", "wss") else 80)
    secure = target.scheme in ("https", "wss")
    context = ssl_context
    if secure and context is None:
        if proxy is None:
            raise ValueError("a secure URL needs a TLS context")
        context = proxy.ssl_context
    elif not secure:
        context = None
    route = proxy.route_for(target) if proxy is not None else _DIRECT

    loop = asyncio.get_running_loop()
    async with asyncio.timeout(connect_timeout):
        if route.proxy is None:
            transport, _ = await loop.create_connection(
                lambda: protocol, host, port, ssl=context, server_hostname=host if secure else None
            )
            return transport
        tunnel = await _tunnel(route, host, port)
        try:
            tunnel.set_protocol(protocol)
            if context is None:
                protocol.connection_made(tunnel)
                return tunnel
            secured = await loop.start_tls(tunnel, protocol, context, server_hostname=host)
        except BaseException:
            tunnel.abort()
            raise
        if secured is None:
            tunnel.abort()
            raise ConnectionResetError("the tunnel closed during the TLS handshake")
        protocol.connection_made(secured)
        return secured


class _ProxyAnswer(asyncio.Protocol):
    """Reads the proxy's answer to ``CONNECT`` (status line and headers, bounded)."""

    def __init__(self) -> None:
        self.head: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        if self.head.done():
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end >= 0:
            self.head.set_result(bytes(self._buffer[: end + 4]))
        elif len(self._buffer) > _MAX_CONNECT_ANSWER:
            self.head.set_exception(ValueError("oversize answer"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_exception(ConnectionResetError("proxy closed the connection"))


async def _tunnel(route: ProxyRoute, host: str, port: int) -> asyncio.Transport:
    assert route.proxy is not None
    assert route.proxy.host is not None
    assert route.proxy.port is not None  # _validate_proxy_url requires an explicit port
    label = f"{route.proxy.host}:{route.proxy.port}"
    loop = asyncio.get_running_loop()
    try:
        transport, reply = await loop.create_connection(
            _ProxyAnswer, route.proxy.host, route.proxy.port
        )
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        message = f"cannot connect to proxy {label}: {why}"
        raise ProxyUnreachableError(message, proxy=label) from None
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    lines += [f"{name}: {value}" for name, value in route.proxy_headers.items()]
    try:
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        answer = await reply.head
    except (OSError, ValueError):
        transport.abort()
        raise ProxyConnectRefusedError(
            f"proxy {label} closed the tunnel request or sent an oversize answer", proxy=label
        ) from None
    except BaseException:
        transport.abort()
        raise
    status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0
    if 200 <= status < 300:
        return transport
    transport.abort()
    raise proxy_refusal(label, status, parts[2] if len(parts) == 3 else "")
