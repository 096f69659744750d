"""Connectivity self-test behind ``gateway check``: one result per thing a gateway depends on.

The checks run in the order the agent itself needs them at start (ARCHITECTURE section 2,
"Start"), each bounded by its own timeout, and a check whose prerequisite failed is reported as
skipped rather than run against a state it cannot judge:

``config``
    gateway.yaml loads and passes every check ``gateway validate`` makes (secrets resolved).
``event_loop``
    the event loop ``gateway run`` will serve on here (``event_loop``: uvloop where it can be
    imported, else asyncio's; :mod:`gateway.eventloop`), and why ``auto`` fell back, if it did.
``credentials``
    every credential the gateway injects can be had now: each secret reference resolves (files
    with safe owner and mode) and each OAuth 2.0 token endpoint issues a token, dialled through
    the same checked step as targets. Only names, references and endpoints are shown.
``state_dir``
    the state directory exists, is a real directory owned by this user, mode 0700 or stricter,
    and writable (the replay cache and certificate renewal write there).
``identity``
    the key, certificate chain and pins load, and the client certificate is valid now; a
    certificate past its renewal time is a warning.
``dns``
    the EmpowerID host, the relay host and the proxy host resolve. A destination reached through
    the proxy is *not* resolved locally: with a ``CONNECT`` tunnel the proxy resolves the name
    (RFC 9110 section 9.3.6), so a local lookup would test the wrong resolver.
``proxy``
    the proxy accepts a TCP connection and opens a ``CONNECT`` tunnel to EmpowerID and to the
    relay; a 407 is reported as a credentials problem.
``tls``
    a TLS session with EmpowerID verifies against the pinned CA (the one stored at registration,
    else ``empowerid.ca_file``). A certificate from another issuer means a TLS-inspecting proxy
    or the wrong server: the gateway never trusts an inspecting proxy for EmpowerID
    (security catalogue item 92), so the proxy must leave this host alone.
``relay_info``
    ``GET relay-info`` over mutual TLS: the certificate is accepted and relay details come back.
``relay``
    one listener control channel is opened on the Hybrid Connection with the fresh token and
    closed again at once (protocol notes section 2.3: a successful WebSocket upgrade means the
    relay accepted the token and the Hybrid Connection exists). While it is open the relay counts
    it against the 25 listeners of the Hybrid Connection.
``clock``
    the ``Date`` header (RFC 9110 section 6.6.1) of EmpowerID's answer against the local clock;
    a difference beyond ``signatures.clock_skew_seconds`` makes signed requests fail as
    ``clock_skew`` (RFC 9421 ``created``/``expires``), so it fails here first.
``replay_store``
    the store of accepted nonces (``signatures.replay_store``) admits a one-second probe nonce
    once and refuses it the second time; per-process memory is only named. A missing SQLite file
    is a warning, not created here.

``policy_engine``
    with ``policy.engine: opa``, the OPA server answers at ``policy.opa_url`` (asked by the
    engine ``gateway run`` builds, told not to load anything): unreachable, ``run`` would
    start not ready and refuse every request 503.
``targets``
    each target is dialled as ``gateway run`` dials it: its host resolved and kept inside its
    ``allowed_cidrs`` by the same dial step, a TCP connection within its connect timeout, and
    for https and ldaps a TLS handshake with its own TLS settings (CA file, server name). A
    target that cannot be reached is a warning: the gateway starts and serves the others, and
    requests to it fail with the reason shown here.

Nothing here changes state: no registration, no renewal, no file written (the replay store's probe
nonce expires after one second; a shared store found empty gets its start barrier, as the first
gateway start would give it).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import ipaddress
import os
import ssl
import stat
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from yarl import URL

from gateway import eventloop
from gateway.auth.replay import Admission
from gateway.auth.replaystores import SQLITE_FILE, open_replay_store
from gateway.config import LoadedConfig, load
from gateway.config.capacity import HC_LISTENER_LIMIT, listeners_on_hc, worker_count
from gateway.errors import ConfigError, GatewayError, one_line
from gateway.forward.credentials import CredentialError, CredentialSet
from gateway.forward.dial import DialError, DialStep, Resolver, system_resolver
from gateway.forward.upstream import tls_context
from gateway.hybridconnection.addresses import RelayEndpoint, listen_url, relay_domain_for
from gateway.hybridconnection.refusals import RefusalKind, classify_listen_refusal
from gateway.identity import ControlPlaneError, StoredIdentity, Timeouts, load_identity, mtls_client
from gateway.identity.certs import certificate_health
from gateway.identity.models import RelayInfo
from gateway.identity.session import identity_mismatch
from gateway.identity.tls import registration_context, system_context
from gateway.outbound.proxy import OutboundProxy, ProxyAuthError, ProxyError
from gateway.outbound.sessions import client_session, runtime_problems, translate_proxy_error
from gateway.policy.loader import PolicySet
from gateway.relay.websocket import HandshakeRefusedError, RelaySocketError, open_relay_socket
from gateway.service import check_release, proxy_settings

__all__ = [
    "CHECK_NAMES",
    "CheckResult",
    "DiagnosticsOptions",
    "Status",
    "all_passed",
    "render_text",
    "run_checks",
]

Status = Literal["ok", "warn", "fail", "skip"]

CHECK_NAMES: tuple[str, ...] = (
    "config",
    "event_loop",
    "credentials",
    "state_dir",
    "identity",
    "dns",
    "proxy",
    "tls",
    "relay_info",
    "relay",
    "clock",
    "replay_store",
    "policy_engine",
    "targets",
)

# OpenSSL verify results for a name mismatch (X509_V_ERR_HOSTNAME_MISMATCH, ..._IP_ADDRESS_...).
_NAME_MISMATCH_CODES = frozenset({62, 64})
# A proxy's answer to CONNECT is a status line and a few headers; more is not a proxy.
_MAX_CONNECT_ANSWER = 16 * 1024
_MAX_TEXT = 160
_DEFAULT_PORTS = {"https": 443, "wss": 443, "http": 80, "ws": 80}

# Hints for control-plane error codes (gateway.identity.controlplane lists them all).
_CONTROL_PLANE_HINTS = {
    "tls_interception_or_untrusted_ca": "exempt the EmpowerID host from TLS inspection on the "
    "proxy; the gateway trusts only the CA pinned at registration",
    "hostname_mismatch": "empowerid.url must name the host in EmpowerID's certificate",
    "server_certificate_expired": "EmpowerID's server certificate is outside its validity at "
    "the local time: check the local clock (NTP), else EmpowerID must renew it",
    "client_certificate_rejected": "the certificate was revoked or the gateway deleted in "
    "EmpowerID: re-register with `gateway register --force`",
    "not_registered": "EmpowerID does not know this gateway: re-register with "
    "`gateway register --force`",
    "proxy_auth_required": "check proxy.username and the proxy password reference",
    "proxy_failed": "see the proxy check",
    "unreachable": "check the network path and firewall rules towards EmpowerID",
    "timeout": "EmpowerID or the path to it is slow or filtered; check firewall rules",
    "tls_handshake_failed": "the server must offer TLS 1.2 or newer with an AEAD cipher",
}


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: a status, one line of detail and, unless ok, a hint."""

    name: str
    status: Status
    detail: str
    hint: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The ``--format json`` form."""
        return {
            "name": self.name,
            "status": self.status,
            "detail": self.detail,
            "hint": self.hint,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class DiagnosticsOptions:
    """What to check and how.

    ``resolver`` is the name-resolution seam shared with the forwarder (tests use a table);
    ``clock`` returns the local time in seconds since the epoch (tests shift it to provoke skew);
    ``timeout`` bounds every single check, network waits included.
    """

    config_path: str
    env: Mapping[str, str] | None = None
    resolver: Resolver = system_resolver
    clock: Callable[[], float] = time.time
    timeout: float = 10.0


class _CheckError(Exception):
    """Raised inside a check to end it with a given status, detail and hint."""

    def __init__(self, detail: str, hint: str = "", status: Status = "fail") -> None:
        super().__init__(detail)
        self.detail = detail
        self.hint = hint
        self.status: Status = status


@dataclass
class _Context:
    """What earlier checks learnt, for the later ones."""

    options: DiagnosticsOptions
    loaded: LoadedConfig | None = None
    proxy: OutboundProxy | None = None
    identity: StoredIdentity | None = None
    relay_info: RelayInfo | None = None
    policies: PolicySet | None = None
    server_date: dt.datetime | None = None
    local_time_at_answer: float | None = None
    failed: set[str] = field(default_factory=set)


def _clean(text: object) -> str:
    """Untrusted text (server reasons, OS messages) made fit for one line."""
    cleaned = "".join(c if c.isprintable() else "?" for c in str(text))
    return cleaned[:_MAX_TEXT]


def _coded(exc: BaseException, code: str) -> str:
    """``CODE: message`` for an error, once: identity errors already read that way."""
    text = str(exc)
    return text if text.startswith(f"{code}: ") else f"{code}: {text}"


def _host_port(url: str) -> tuple[str, int]:
    parsed = URL(url)
    return parsed.host or "", parsed.port or _DEFAULT_PORTS.get(parsed.scheme, 443)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _relay_url(ctx: _Context) -> str | None:
    """The relay base URL the agent dials: the configured endpoint, else the namespace."""
    assert ctx.loaded is not None
    endpoint = ctx.loaded.config.relay.endpoint
    if endpoint:
        return endpoint.rstrip("/")
    namespace = None
    if ctx.relay_info is not None:
        namespace = ctx.relay_info.relay.namespace
    elif ctx.identity is not None:
        namespace = ctx.identity.relay.namespace
    return f"wss://{namespace}" if namespace else None


def _control_plane_url(ctx: _Context) -> str:
    """EmpowerID's base URL: the one registered with, else the configured one."""
    if ctx.identity is not None:
        return ctx.identity.record.control_plane_url
    assert ctx.loaded is not None
    return ctx.loaded.config.empowerid.url


def _passphrase(loaded: LoadedConfig) -> bytes | None:
    secret = loaded.secrets.get("gateway.key_passphrase")
    return secret.get_secret_value().encode() if secret is not None else None


# --- the checks --------------------------------------------------------------------------------


async def _check_config(ctx: _Context) -> str:
    path = ctx.options.config_path
    try:
        loaded = load(path, env=ctx.options.env)
        # What `gateway run` refuses before it starts, checked by the same code: a policy that
        # cannot decide, unprotected files, unusable proxy settings, a missing or stale release
        # signature.
        policies = check_release(loaded)
    except ConfigError as exc:
        count = len(exc.problems)
        first = exc.problems[0].render() if exc.problems else "invalid configuration"
        raise _CheckError(
            f"{count} problem{'s' if count != 1 else ''}; first: {first}",
            f"`gateway validate -c {path}` lists every problem with its location",
        ) from None
    ctx.proxy = OutboundProxy(proxy_settings(loaded))  # usable: check_release said so
    ctx.loaded = loaded
    ctx.policies = policies
    return (
        f"{loaded.file} is valid ({len(loaded.config.targets)} targets, {loaded.revision}; "
        f"policy {policies.revision.rpartition('/')[2]} decides)"
    )


async def _check_event_loop(ctx: _Context) -> str:
    assert ctx.loaded is not None
    choice = ctx.loaded.config.event_loop
    try:
        loop = eventloop.pick(choice)
    except eventloop.EventLoopUnavailableError as exc:  # refused by the config check already
        raise _CheckError(str(exc), "see docs/operations.md, 'The event loop'") from None
    why = f"; {loop.why}" if loop.why else ""
    return f"gateway run serves on {loop.describe()} (event_loop: {choice}{why})"


async def _check_credentials(ctx: _Context) -> str:
    assert ctx.loaded is not None
    if not ctx.loaded.config.credentials:
        return "none declared"
    credentials = CredentialSet.build(
        ctx.loaded, resolver=ctx.options.resolver, env=ctx.options.env
    )
    passed: list[str] = []
    try:
        for name, injector in credentials.injectors.items():
            try:
                # The value is fetched and dropped at once; only the name is reported.
                await injector.header()
            except CredentialError as exc:
                raise _CheckError(
                    f"credential {name}: {exc.code}: {_clean(exc)}",
                    "see docs/security.md, 'Injected credentials'",
                ) from None
            fetched = "token fetched" if injector.credential.oauth2_client_credentials else "ok"
            passed.append(f"{name} ({injector.credential.kind}, {fetched})")
    finally:
        await credentials.close()
    return ", ".join(passed)


async def _check_state_dir(ctx: _Context) -> str:
    assert ctx.loaded is not None
    directory = ctx.loaded.resolve_path(ctx.loaded.config.gateway.state_dir)
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        raise _CheckError(
            f"{directory} does not exist",
            "`gateway register` creates it; under systemd StateDirectory= does",
        ) from None
    except OSError as exc:
        raise _CheckError(f"{directory} cannot be examined: {_clean(exc.strerror)}") from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise _CheckError(
            f"{directory} is not a real directory (symbolic links are refused)",
            "point gateway.state_dir at the directory itself",
        )
    if info.st_uid != os.geteuid():
        raise _CheckError(
            f"{directory} is owned by uid {info.st_uid}, not by this user (uid {os.geteuid()})",
            "run the check as the gateway's service user, or chown the directory to it",
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise _CheckError(
            f"{directory} has mode {mode:04o}; group and others must have no access",
            f"chmod 700 {directory}",
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise _CheckError(f"{directory} is not writable", f"chmod 700 {directory}")
    return f"{directory} (mode {mode:04o}, owned by uid {info.st_uid})"


async def _check_identity(ctx: _Context) -> str:
    assert ctx.loaded is not None
    directory = ctx.loaded.resolve_path(ctx.loaded.config.gateway.state_dir)
    now = dt.datetime.fromtimestamp(ctx.options.clock(), dt.UTC)
    try:
        identity = load_identity(directory, passphrase=_passphrase(ctx.loaded), now=now)
    except GatewayError as exc:
        code = getattr(exc, "code", "identity_unusable")
        hint = {
            "not_registered": "register this gateway: `gateway register`",
            "client_certificate_expired": "re-register: `gateway register --force`",
            "certificate_not_yet_valid": "correct the local clock (NTP), then retry",
            "unsafe_permissions": "chmod 700 the directory and 600 its files; run as their owner",
        }.get(code, "see docs/troubleshooting.md")
        raise _CheckError(_coded(exc, code), hint) from None
    ctx.identity = identity
    mismatch = identity_mismatch(identity.gateway_id, ctx.loaded.config.gateway.id)
    if mismatch is not None:
        raise _CheckError(
            mismatch, "point gateway.state_dir at this gateway's directory, or re-register"
        )
    health = certificate_health(identity.certificate, now)
    detail = (
        f"gateway {identity.gateway_id}, certificate {health.state.replace('_', ' ')} until "
        f"{health.not_after.isoformat()}"
    )
    registered = identity.record.control_plane_url.rstrip("/")
    configured = ctx.loaded.config.empowerid.url.rstrip("/")
    if registered != configured:
        raise _CheckError(
            f"{detail}; registered with {registered} but empowerid.url is {configured}",
            "the agent keeps using the URL it registered with; re-register "
            "(`gateway register --force`) to move to the configured one",
            status="warn",
        )
    if health.state in ("renewal_due", "alert"):
        raise _CheckError(
            detail,
            "the running agent renews it over mTLS; if it keeps failing, see relay_info",
            status="warn",
        )
    return detail


async def _check_dns(ctx: _Context) -> str:
    assert ctx.loaded is not None
    assert ctx.proxy is not None
    destinations: list[tuple[str, str]] = [("EmpowerID", _control_plane_url(ctx))]
    relay = _relay_url(ctx)
    if relay is not None:
        destinations.append(("relay", relay))
    proxy = ctx.loaded.config.proxy
    if proxy is not None:
        destinations.append(("proxy", proxy.url))
    notes: list[str] = []
    failures: list[str] = []
    for label, url in destinations:
        host, port = _host_port(url)
        if _is_ip(host):
            notes.append(f"{label} {host} (an address)")
            continue
        if label != "proxy" and not ctx.proxy.route_for(url).direct:
            notes.append(f"{label} {host} (resolved by the proxy)")
            continue
        try:
            addresses = await ctx.options.resolver(host, port)
        except OSError as exc:
            failures.append(f"{label} {host}: {_clean(exc.strerror or exc)}")
            continue
        if not addresses:
            failures.append(f"{label} {host}: no addresses")
            continue
        notes.append(f"{label} {host} -> {', '.join(str(a) for a in addresses[:3])}")
    if relay is None:
        notes.append("relay host unknown until registered")
    if failures:
        raise _CheckError(
            "; ".join(failures),
            "check /etc/resolv.conf or the DNS server; names reached through the proxy are "
            "resolved by the proxy",
        )
    return "; ".join(notes)


async def _connect_tunnel(ctx: _Context, destination: str) -> str:
    """Ask the proxy for a ``CONNECT`` tunnel to ``destination`` and close it (RFC 9110 9.3.6)."""
    assert ctx.proxy is not None
    route = ctx.proxy.route_for(destination)
    assert route.proxy is not None
    host, port = _host_port(destination)
    target = _authority(host, port)
    proxy_host, proxy_port = route.proxy.host or "", route.proxy.port or 0
    label = _authority(proxy_host, proxy_port)
    try:
        reader, writer = await asyncio.open_connection(proxy_host, proxy_port)
    except OSError as exc:
        raise _CheckError(
            f"cannot connect to proxy {label}: {_clean(exc.strerror or exc)}",
            "check proxy.url and that the proxy runs and is reachable from this host",
        ) from None
    try:
        head = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        head += [f"{name}: {value}" for name, value in route.proxy_headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        try:
            answer = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise _CheckError(f"proxy {label} sent an oversized answer to CONNECT") from None
        except asyncio.IncompleteReadError:
            raise _CheckError(f"proxy {label} closed the connection on CONNECT") from None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    if status == 407:
        raise _CheckError(
            f"proxy {label} answered 407 to CONNECT {target}: it requires authentication or "
            "rejected the credentials",
            "set proxy.username and proxy.password (by reference) to an account the proxy accepts",
        )
    if not 200 <= status < 300:
        raise _CheckError(
            f"proxy {label} refused CONNECT {target}: {_clean(status_line)}",
            f"ask the proxy administrators to allow tunnels to {target}",
        )
    return target


async def _check_proxy(ctx: _Context) -> str:
    assert ctx.loaded is not None
    assert ctx.proxy is not None
    if ctx.loaded.config.proxy is None:
        raise _CheckError("no proxy configured: connections go direct", status="skip")
    destinations = [_control_plane_url(ctx)]
    relay = _relay_url(ctx)
    if relay is not None:
        destinations.append(relay)
    notes: list[str] = []
    for url in destinations:
        route = ctx.proxy.route_for(url)
        host, port = _host_port(url)
        if route.direct:
            notes.append(f"{_authority(host, port)} direct (no_proxy)")
        elif not route.tunnelled:
            notes.append(f"{_authority(host, port)} forwarded in plain text (no tunnel)")
        else:
            notes.append(f"CONNECT {await _connect_tunnel(ctx, url)} allowed")
    return f"via {ctx.proxy.proxy_label}: " + "; ".join(notes)


def _pinned_context(ctx: _Context) -> tuple[ssl.SSLContext, str]:
    assert ctx.loaded is not None
    if ctx.identity is not None:
        return registration_context(ctx.identity.ca_pem), "the CA pinned at registration"
    ca_file = ctx.loaded.config.empowerid.ca_file
    if ca_file:
        path = ctx.loaded.resolve_path(ca_file)
        try:
            return registration_context(path.read_bytes()), f"empowerid.ca_file {path}"
        except (OSError, ssl.SSLError, ValueError):
            raise _CheckError(
                f"empowerid.ca_file {path} cannot be read as a PEM CA", "check the file"
            ) from None
    # What `gateway register` trusts without empowerid.ca_file: the same context.
    return system_context(), "the system trust store (no CA pinned yet)"


def _tls_failure(exc: BaseException, host: str, trust: str) -> _CheckError:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        if getattr(exc.certificate_error, "verify_code", None) in _NAME_MISMATCH_CODES:
            return _CheckError(
                f"the certificate of {host} does not name that host",
                _CONTROL_PLANE_HINTS["hostname_mismatch"],
            )
        reason = _clean(getattr(exc.certificate_error, "verify_message", "") or "not trusted")
        return _CheckError(
            f"the certificate of {host} is not issued by {trust} ({reason}): TLS interception "
            "by a proxy, or the wrong server",
            _CONTROL_PLANE_HINTS["tls_interception_or_untrusted_ca"],
        )
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return _CheckError(
            f"no TLS 1.2+ session with {host}: {_clean(exc)}",
            _CONTROL_PLANE_HINTS["tls_handshake_failed"],
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _CheckError(
            f"cannot connect to {host}: {_clean(exc.os_error.strerror or exc.os_error)}",
            _CONTROL_PLANE_HINTS["unreachable"],
        )
    return _CheckError(f"the connection to {host} failed ({type(exc).__name__})")


async def _check_tls(ctx: _Context) -> str:
    assert ctx.loaded is not None
    assert ctx.proxy is not None
    url = _control_plane_url(ctx)
    host = URL(url).host or ""
    context, trust = _pinned_context(ctx)
    route = ctx.proxy.route_for(url)
    problems = runtime_problems()
    if problems:
        # The probe speaks through aiohttp, which failed its self-check (catalogue C 67).
        raise _CheckError(
            problems[0], "install the aiohttp wheel for this platform, or upgrade aiohttp"
        )
    connector = aiohttp.TCPConnector(ssl=context, limit=1, force_close=True)
    timeout = aiohttp.ClientTimeout(total=ctx.options.timeout)
    async with client_session(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:
        try:
            async with session.get(
                url,
                headers=route.request_headers({"Accept-Encoding": "identity"}),
                proxy=route.proxy,
                proxy_headers=route.tunnel_headers,
                allow_redirects=False,
            ) as response:
                status = response.status
                date = response.headers.get("Date")
        except (aiohttp.ClientError, OSError) as exc:
            proxy_error = translate_proxy_error(exc, route)
            if proxy_error is not None:
                raise _proxy_failed(proxy_error) from None
            raise _tls_failure(exc, host, trust) from None
    ctx.local_time_at_answer = ctx.options.clock()
    if date:
        try:
            ctx.server_date = email.utils.parsedate_to_datetime(date)
        except (TypeError, ValueError):
            ctx.server_date = None
    return f"TLS 1.2+ with {host}, verified against {trust} (HTTP {status})"


def _proxy_failed(error: ProxyError) -> _CheckError:
    if isinstance(error, ProxyAuthError):
        return _CheckError(str(error), _CONTROL_PLANE_HINTS["proxy_auth_required"])
    return _CheckError(str(error), _CONTROL_PLANE_HINTS["proxy_failed"])


async def _check_relay_info(ctx: _Context) -> str:
    assert ctx.loaded is not None
    assert ctx.identity is not None
    seconds = ctx.options.timeout
    now = dt.datetime.fromtimestamp(ctx.options.clock(), dt.UTC)
    try:
        async with mtls_client(
            ctx.identity,
            passphrase=_passphrase(ctx.loaded),
            timeouts=Timeouts(connect=seconds, read=seconds, total=seconds),
            proxy=ctx.proxy,
            now=now,
        ) as client:
            info = await client.relay_info()
    except ControlPlaneError as exc:
        raise _CheckError(
            f"{exc.code}: {exc}", _CONTROL_PLANE_HINTS.get(exc.code, "see docs/troubleshooting.md")
        ) from None
    except GatewayError as exc:
        raise _CheckError(_coded(exc, getattr(exc, "code", "identity_unusable"))) from None
    ctx.relay_info = info
    return (
        f"namespace {info.relay.namespace}, hybrid connection {info.relay.hybrid_connection}, "
        f"listener token valid until {info.listener_token.expires_at.isoformat()}"
    )


def _relay_refusal(status: int, hc: str, reason: str = "") -> _CheckError:
    refusal = classify_listen_refusal(status, reason)
    if refusal.kind is RefusalKind.QUOTA:
        return _CheckError(
            f"the relay refused the listener: listener quota reached (HTTP 403 {refusal.reason})",
            "the Hybrid Connection already has its 25 listeners; lower workers or "
            "relay.connections on the gateways sharing it, and set relay.gateways to their "
            "number so validate counts them (docs/high-availability.md)",
        )
    if status in (401, 403):
        return _CheckError(
            f"the relay refused the listener token (HTTP {status})",
            "EmpowerID handed out a token the relay does not accept (wrong key or rule); see "
            "docs/troubleshooting.md",
        )
    if status == 404:
        return _CheckError(
            f"the relay has no Hybrid Connection {hc!r} (HTTP 404)",
            "the Hybrid Connection was deleted or renamed; ask the EmpowerID administrators to "
            "recreate it or re-register the gateway",
        )
    return _CheckError(f"the relay refused the listener (HTTP {status})")


async def _check_relay(ctx: _Context) -> str:
    assert ctx.proxy is not None
    assert ctx.relay_info is not None
    relay = _relay_url(ctx)
    assert relay is not None
    hc = ctx.relay_info.relay.hybrid_connection
    endpoint = RelayEndpoint.parse(relay)
    url = listen_url(endpoint, hc, listener_id=f"gateway-check-{uuid.uuid4()}")
    token = ctx.relay_info.listener_token.token.get_secret_value()
    # The listener's own client (gateway.relay.websocket), so the check opens the control
    # channel exactly as `gateway run` will: same proxy tunnel, same TLS, same handshake.
    try:
        ws = await open_relay_socket(
            url,
            ctx.proxy,
            handshake_timeout=ctx.options.timeout,
            max_size=64 * 1024,
            close_timeout=min(ctx.options.timeout, 2.0),
            headers={"ServiceBusAuthorization": token},
        )
    except HandshakeRefusedError as exc:
        raise _relay_refusal(exc.status, hc, exc.reason) from None
    except ProxyError as exc:
        raise _proxy_failed(exc) from None
    except (RelaySocketError, OSError, TimeoutError) as exc:
        # The relay's hosts are in the namespace's own cloud (sovereign clouds included).
        domain = relay_domain_for(endpoint.host)
        hosts = f"*{domain}" if domain else endpoint.host
        raise _CheckError(
            f"cannot open a WebSocket to {endpoint.base}: {_clean(exc) or type(exc).__name__}",
            f"check outbound port {endpoint.port} to the relay namespace ({hosts})",
        ) from None
    await ws.close()
    config = ctx.loaded.config if ctx.loaded is not None else None
    budget = ""
    if config is not None:
        # What every gateway on the HC holds when each runs like this one (config.capacity).
        budget = (
            f"; listeners: {config.relay.gateways} gateway(s) x {worker_count(config)} "
            f"worker(s) x {config.relay.connections} = {listeners_on_hc(config)} of "
            f"{HC_LISTENER_LIMIT}"
        )
    return f"listener control channel on {endpoint.base}/$hc/{hc} opened and closed{budget}"


async def _check_clock(ctx: _Context) -> str:
    assert ctx.loaded is not None
    if ctx.server_date is None or ctx.local_time_at_answer is None:
        raise _CheckError("EmpowerID's answer carried no usable Date header", status="skip")
    skew = ctx.local_time_at_answer - ctx.server_date.timestamp()
    limit = ctx.loaded.config.signatures.clock_skew_seconds
    # The Date header has a resolution of one second (RFC 9110 section 5.6.7): allow for it.
    detail = f"local clock is {skew:+.0f} s from EmpowerID's (tolerated: {limit:g} s)"
    if abs(skew) > limit + 1:
        raise _CheckError(
            detail,
            "synchronise the clock (NTP: `timedatectl set-ntp true`; Windows: `w32tm /resync`); "
            "until then signed requests fail with clock_skew",
        )
    return detail


async def _check_replay_store(ctx: _Context) -> str:
    assert ctx.loaded is not None
    config = ctx.loaded.config
    settings = config.signatures.replay_store
    if settings.kind == "memory":
        return (
            "memory (this gateway process only; weaker with several gateways, see docs/security.md)"
        )
    state_dir = ctx.loaded.resolve_path(config.gateway.state_dir)
    if settings.kind == "sqlite":
        path = (
            ctx.loaded.resolve_path(settings.sqlite_path)
            if settings.sqlite_path is not None
            else state_dir / SQLITE_FILE
        )
        if not path.exists():
            raise _CheckError(
                f"sqlite {path} does not exist yet",
                "the first start creates it; until clock_skew_seconds have passed it refuses "
                "signatures created before it existed (docs/high-availability.md)",
                status="warn",
            )
    hc = ctx.relay_info.relay.hybrid_connection if ctx.relay_info else config.gateway.id
    try:
        # Reads the Redis prefix marker without claiming it: a check run with a mistaken
        # key_prefix must not make the serving gateways refuse requests.
        store = open_replay_store(
            ctx.loaded, state_dir, hc, env=ctx.options.env, claim_marker=False
        )
    except GatewayError as exc:
        raise _CheckError(f"cannot open the replay store: {_clean(exc)}") from None
    try:
        # A random probe nonce that lives one second: admitted once, then refused.
        now = ctx.options.clock()
        nonce = f"probe-{uuid.uuid4().hex}"
        first = await store.admit("gateway-check", nonce, created=now, expires=now + 1)
        second = await store.admit("gateway-check", nonce, created=now, expires=now + 1)
    finally:
        await store.close()
    if first is Admission.BEFORE_START:
        raise _CheckError(
            f"{store.description} answers, but is new or lost its memory",
            "it refuses signatures created before clock_skew_seconds after that moment "
            "(docs/high-availability.md, 'Replay store')",
            status="warn",
        )
    if first is not Admission.ACCEPTED or second is not Admission.REPLAY:
        problem = store.problem
        raise _CheckError(
            f"{store.description}: probe answered {first.value}, then {second.value}"
            + (f" ({problem})" if problem else ""),
            "the gateway answers signed requests with 503 replay_store_unavailable until the "
            "store works; its log names the error",
        )
    unchecked = getattr(store, "marker_unchecked", None)
    if unchecked is not None:
        raise _CheckError(
            f"{store.description} admits a nonce once, but its user cannot read the prefix "
            f"marker ({unchecked})",
            "a gateway of this Hybrid Connection with another key_prefix would go unnoticed; "
            "allow the user the key gateway:replay-prefix:{<hybrid connection>} "
            "(docs/high-availability.md)",
            status="warn",
        )
    return f"{store.description} admits a nonce once"


async def _check_policy_engine(ctx: _Context) -> str:
    assert ctx.loaded is not None
    assert ctx.policies is not None
    settings = ctx.loaded.config.policy
    if settings.engine != "opa":
        return "embedded: decides in the gateway process (proven by the config check)"
    assert settings.opa_url is not None  # the configuration check requires it
    from gateway.policy.opa import OpaEngine

    # The engine gateway run builds, asked only whether OPA answers and holds this revision:
    # without push it loads nothing into OPA (nothing here changes state).
    engine = OpaEngine(
        ctx.policies,
        url=settings.opa_url,
        timeout=settings.decision_timeout_seconds,
        mode=settings.mode,
        cache=None,
        push=False,
        sync_timeout=min(5.0, ctx.options.timeout),
    )
    try:
        await engine.start()
        holds, why = engine.ready, engine.status
    finally:
        await engine.close()
    revision = ctx.policies.revision.rpartition("/")[2]
    if holds:
        return f"OPA at {settings.opa_url} holds policy {revision}"
    if why.startswith("loading OPA failed"):
        raise _CheckError(
            f"OPA at {settings.opa_url}: {_clean(why)}",
            "gateway run would start not ready ('the policy engine cannot decide') and answer "
            "every request 503 until OPA answers; start OPA or fix policy.opa_url",
        )
    return f"OPA at {settings.opa_url} answers; gateway run loads policy {revision} into it"


# Targets dialled at once by the targets check (a file may declare up to 1000).
_TARGET_PROBES = 16
_PROBE_READ_LIMIT = 64 * 1024


async def _probe_target(ctx: _Context, dial: DialStep, name: str) -> str | None:
    """None when target ``name`` is reachable as ``gateway run`` reaches it (its checked dial
    step, then TLS for https and ldaps with the target's own TLS settings), else why not."""
    assert ctx.loaded is not None
    config = ctx.loaded.config
    target = config.targets[name]
    connect = target.limits.connect_timeout_seconds or config.limits.connect_timeout_seconds
    try:
        _reader, writer = await dial.open_stream(
            name, connect_timeout=connect, limit=_PROBE_READ_LIMIT
        )
    except DialError as exc:
        return f"{name}: {exc.code}: {_clean(exc)}"
    try:
        if target.scheme in ("https", "ldaps"):
            tls = target.tls
            server_name = tls.server_name if tls is not None and tls.server_name else target.host
            try:
                async with asyncio.timeout(connect):
                    await writer.start_tls(
                        tls_context(target, ctx.loaded.resolve_path),
                        server_hostname=server_name,
                    )
            except TimeoutError:
                return f"{name}: TLS handshake did not finish within {connect:g} s"
            except ssl.SSLCertVerificationError as exc:
                return f"{name}: upstream_tls: {_clean(exc.verify_message or exc)}"
            except (ssl.SSLError, OSError) as exc:
                return f"{name}: upstream_tls: {_clean(exc)}"
    finally:
        # Dropped, not closed: a TLS close waits for the peer's close_notify (up to 30 s), and a
        # target that stalled the handshake would hold the check that long, or past a cancel.
        writer.transport.abort()
    return None


async def _check_targets(ctx: _Context) -> str:
    assert ctx.loaded is not None
    targets = ctx.loaded.config.targets
    if not targets:
        return "none declared"
    dial = DialStep(targets, resolver=ctx.options.resolver)
    slots = asyncio.Semaphore(_TARGET_PROBES)

    async def probe(name: str) -> str | None:
        async with slots:
            return await _probe_target(ctx, dial, name)

    # Dozens of targets that do not answer (a firewall dropping packets) take their connect
    # timeout each, 16 at a time: past the check's time, the ones left are named as not
    # answering (this check bounds itself: see _BOUNDS_ITSELF).
    budget = ctx.options.timeout
    probes = {name: asyncio.ensure_future(probe(name)) for name in targets}
    try:
        await asyncio.wait(probes.values(), timeout=budget)
    finally:  # also when the check itself is cancelled: no probe outlives it
        late = {task for task in probes.values() if not task.done()}
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    failures = [
        f"{name}: no answer within {budget:g} s (gateway check --timeout)"
        if task in late
        else task.result()
        for name, task in probes.items()
    ]
    failures = [failure for failure in failures if failure is not None]
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise _CheckError(
            f"{failures[0]}{more}",
            "the gateway starts and serves the other targets; requests to this one fail with "
            "the same reason (docs/troubleshooting.md, 'Requests fail with 403, 502, 503, 504')",
            status="warn",
        )
    return (
        f"{len(targets)} reachable: "
        + ", ".join(f"{name} ({targets[name].scheme})" for name in list(targets)[:8])
        + (" ..." if len(targets) > 8 else "")
    )


_Check = Callable[[_Context], Awaitable[str]]

# name, function, checks that must have passed first.
_PLAN: tuple[tuple[str, _Check, tuple[str, ...]], ...] = (
    ("config", _check_config, ()),
    ("event_loop", _check_event_loop, ("config",)),
    ("credentials", _check_credentials, ("config",)),
    ("state_dir", _check_state_dir, ("config",)),
    ("identity", _check_identity, ("config", "state_dir")),
    ("dns", _check_dns, ("config",)),
    ("proxy", _check_proxy, ("config",)),
    ("tls", _check_tls, ("config",)),
    ("relay_info", _check_relay_info, ("identity", "tls")),
    ("relay", _check_relay, ("relay_info",)),
    ("clock", _check_clock, ("tls",)),
    ("replay_store", _check_replay_store, ("config", "state_dir")),
    ("policy_engine", _check_policy_engine, ("config",)),
    ("targets", _check_targets, ("config",)),
)


# Checks that keep to --timeout themselves and report what did not finish in that time, item by
# item, rather than the whole line failing "did not finish".
_BOUNDS_ITSELF = frozenset({"targets"})


async def _run_one(ctx: _Context, name: str, check: _Check, needs: tuple[str, ...]) -> CheckResult:
    blocked = [need for need in needs if need in ctx.failed]
    if blocked:
        ctx.failed.add(name)
        return CheckResult(name, "skip", f"not run: {', '.join(blocked)} did not pass")
    started = time.monotonic()
    try:
        async with asyncio.timeout(None if name in _BOUNDS_ITSELF else ctx.options.timeout):
            detail = await check(ctx)
    except _CheckError as exc:
        if exc.status in ("fail", "skip"):
            ctx.failed.add(name)
        return CheckResult(name, exc.status, exc.detail, exc.hint, time.monotonic() - started)
    except TimeoutError:
        ctx.failed.add(name)
        return CheckResult(
            name,
            "fail",
            f"did not finish within {ctx.options.timeout:g} s",
            "something on the path accepts connections but does not answer (a firewall "
            "dropping packets, a stalled proxy)",
            time.monotonic() - started,
        )
    return CheckResult(name, "ok", detail, "", time.monotonic() - started)


async def run_checks(options: DiagnosticsOptions) -> list[CheckResult]:
    """Run every check in order; never raises for a failed check."""
    ctx = _Context(options)
    return [await _run_one(ctx, name, check, needs) for name, check, needs in _PLAN]


def all_passed(results: list[CheckResult]) -> bool:
    """True when no check failed (warnings and skipped checks do not fail the run)."""
    return not any(result.status == "fail" for result in results)


_LABELS = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


def render_text(results: list[CheckResult]) -> str:
    """One line per check (``STATUS  name  detail``), a hint line under any that is not ok."""
    lines: list[str] = []
    for result in results:
        # Details quote servers, relays and targets: one line each, whatever they answered.
        lines.append(f"{_LABELS[result.status]:<5} {result.name:<11} {one_line(result.detail)}")
        if result.hint:
            lines.append(f"{'':<17} hint: {one_line(result.hint)}")
    failed = sum(1 for r in results if r.status == "fail")
    warned = sum(1 for r in results if r.status == "warn")
    lines.append(
        f"{len(results)} checks: {failed} failed, {warned} warning{'s' if warned != 1 else ''}"
    )
    return "\n".join(lines) + "\n"
