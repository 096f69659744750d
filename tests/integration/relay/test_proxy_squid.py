"""The relay's sockets (``open_relay_socket`` on ``open_transport``) through a real squid, to a real
TLS WebSocket server. The control plane's HTTPS through squid is tested in
``tests/integration/identity/test_identity_proxy.py``.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trustme
from pydantic import SecretStr

from gateway.hybridconnection.framing import Frame, Opcode
from gateway.outbound.proxy import (
    OutboundProxy,
    ProxyAuthError,
    ProxyConnectRefusedError,
    ProxySettings,
    ProxyUnreachableError,
)
from gateway.relay.websocket import open_relay_socket

from ..squid import PASSWORD, USERNAME, Squid
from .relay_servers import ConnectionRecorder, WsServer, start_ws_server

HELLO = "hello through the tunnel"

Echo = Callable[[ProxySettings, str], Awaitable[str]]


@pytest.fixture
def echo() -> Echo:
    """Sends one text message to a WebSocket echo server and returns the answer."""

    async def through_relay_socket(settings: ProxySettings, url: str) -> str:
        ws = await open_relay_socket(
            url, OutboundProxy(settings), handshake_timeout=10, max_size=1 << 16, close_timeout=2
        )
        try:
            ws.send([Frame(Opcode.TEXT, HELLO.encode())])
            return str(await ws.receive_message())
        finally:
            await ws.close()

    return through_relay_socket


async def test_connect_tunnel_through_squid_reaches_tls_websocket(
    squid_proxy: Squid,
    tls_ws_server: WsServer,
    ca_file: Path,
    echo: Echo,
) -> None:
    settings = ProxySettings(url=squid_proxy.url, extra_ca_file=ca_file)
    assert await echo(settings, tls_ws_server.url()) == (HELLO)
    needle = f"CONNECT 127.0.0.1:{tls_ws_server.port}"
    assert needle in await squid_proxy.wait_for_log(needle)


async def test_basic_auth_accepted_and_not_forwarded_to_destination(
    squid_auth_proxy: Squid,
    tls_ws_server: WsServer,
    ca_file: Path,
    echo: Echo,
) -> None:
    settings = ProxySettings(
        url=squid_auth_proxy.url,
        username=USERNAME,
        password=SecretStr(PASSWORD),
        extra_ca_file=ca_file,
    )
    assert await echo(settings, tls_ws_server.url()) == (HELLO)
    needle = f"CONNECT 127.0.0.1:{tls_ws_server.port}"
    log = await squid_auth_proxy.wait_for_log(needle)
    assert needle in log
    assert f" {USERNAME} " in log
    # The proxy credentials belong to the CONNECT only, never to the tunnelled handshake.
    assert tls_ws_server.seen_headers
    assert all("Proxy-Authorization" not in h for h in tls_ws_server.seen_headers)


@pytest.mark.parametrize("password", ["wrong-password", None])
async def test_wrong_or_missing_credentials_raise_proxy_auth_error(
    squid_auth_proxy: Squid,
    tls_ws_server: WsServer,
    ca_file: Path,
    echo: Echo,
    password: str | None,
) -> None:
    settings = ProxySettings(
        url=squid_auth_proxy.url,
        username=USERNAME if password else None,
        password=SecretStr(password) if password else None,
        extra_ca_file=ca_file,
    )
    with pytest.raises(ProxyAuthError) as caught:
        await echo(settings, tls_ws_server.url())
    assert caught.value.code == "proxy_auth_required"
    assert caught.value.status == 407
    # Nothing chained that could carry the Proxy-Authorization header into a traceback.
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__ or caught.value.__context__ is None
    text = f"{caught.value!s} {caught.value!r}"
    assert "wrong-password" not in text
    assert PASSWORD not in text
    assert not tls_ws_server.seen_headers


async def test_refused_connect_raises_connect_refused(
    squid_proxy: Squid,
    tls_ws_server: WsServer,
    ca_file: Path,
    echo: Echo,
) -> None:
    settings = ProxySettings(url=squid_proxy.url, extra_ca_file=ca_file)
    # The fixture's squid denies tunnels to 127.0.0.2.
    with pytest.raises(ProxyConnectRefusedError) as caught:
        await echo(settings, tls_ws_server.url(host="127.0.0.2"))
    assert caught.value.code == "proxy_connect_refused"
    assert caught.value.status == 403


async def test_no_proxy_host_goes_direct(
    connection_recorder: ConnectionRecorder,
    tls_ws_server: WsServer,
    ca_file: Path,
    echo: Echo,
) -> None:
    # The "proxy" only records connections: anything routed through it would fail and show up.
    settings = ProxySettings(
        url=connection_recorder.url, no_proxy=("localhost", "10.0.0.0/8"), extra_ca_file=ca_file
    )
    url = tls_ws_server.url(host="localhost")
    assert await echo(settings, url) == HELLO
    assert connection_recorder.connections == []
    assert len(tls_ws_server.seen_headers) == 1


async def test_host_outside_no_proxy_uses_the_proxy(
    connection_recorder: ConnectionRecorder,
    tls_ws_server: WsServer,
    ca_file: Path,
    echo: Echo,
) -> None:
    settings = ProxySettings(
        url=connection_recorder.url, no_proxy=("localhost",), extra_ca_file=ca_file
    )
    with pytest.raises(ProxyConnectRefusedError):
        await echo(settings, tls_ws_server.url(host="127.0.0.1"))
    assert connection_recorder.connections
    assert not tls_ws_server.seen_headers


async def test_unreachable_proxy_raises_proxy_unreachable(
    tls_ws_server: WsServer, ca_file: Path, echo: Echo, refused_port: int
) -> None:
    settings = ProxySettings(url=f"http://127.0.0.1:{refused_port}", extra_ca_file=ca_file)
    with pytest.raises(ProxyUnreachableError) as caught:
        await echo(settings, tls_ws_server.url())
    assert caught.value.code == "proxy_unreachable"
    assert not tls_ws_server.seen_headers


async def test_environment_proxy_variables_are_ignored(
    monkeypatch: pytest.MonkeyPatch,
    connection_recorder: ConnectionRecorder,
    tls_ws_server: WsServer,
    ca_file: Path,
    echo: Echo,
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "WS_PROXY", "WSS_PROXY"):
        monkeypatch.setenv(name, connection_recorder.url)
        monkeypatch.setenv(name.lower(), connection_recorder.url)
    settings = ProxySettings(extra_ca_file=ca_file)
    assert await echo(settings, tls_ws_server.url()) == (HELLO)
    assert connection_recorder.connections == []


async def test_tls_verification_needs_the_configured_ca(
    tls_ws_server: WsServer, echo: Echo
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        await echo(ProxySettings(), tls_ws_server.url())


async def test_tls_hostname_is_checked_even_with_the_ca(
    test_ca: trustme.CA, ca_file: Path, echo: Echo
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    test_ca.issue_cert("elsewhere.test").configure_cert(context)
    runner, server = await start_ws_server(context)
    try:
        with pytest.raises(ssl.SSLCertVerificationError) as caught:
            await echo(ProxySettings(extra_ca_file=ca_file), server.url())
        assert "hostname" in str(caught.value).lower() or "IP address" in str(caught.value)
    finally:
        await runner.cleanup()
    assert not server.seen_headers


async def test_tls_hostname_is_checked_through_the_tunnel(
    squid_proxy: Squid, test_ca: trustme.CA, ca_file: Path, echo: Echo
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    test_ca.issue_cert("elsewhere.test").configure_cert(context)
    runner, server = await start_ws_server(context)
    try:
        settings = ProxySettings(url=squid_proxy.url, extra_ca_file=ca_file)
        with pytest.raises(ssl.SSLCertVerificationError):
            await echo(settings, server.url())
    finally:
        await runner.cleanup()
    assert not server.seen_headers
