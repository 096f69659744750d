"""The listener's own WebSocket connections (open_relay_socket) through a real squid, with TLS."""

from __future__ import annotations

import socket
import ssl
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


async def _echo(settings: ProxySettings, url: str) -> str | bytes | None:
    ws = await open_relay_socket(
        url, OutboundProxy(settings), handshake_timeout=10, max_size=1 << 16, close_timeout=2
    )
    try:
        ws.send([Frame(Opcode.TEXT, HELLO.encode())])
        return await ws.receive_message()
    finally:
        await ws.close()


async def test_connect_tunnel_through_squid_reaches_tls_websocket(
    squid_proxy: Squid, tls_ws_server: WsServer, ca_file: Path
) -> None:
    settings = ProxySettings(url=squid_proxy.url, extra_ca_file=ca_file)
    assert await _echo(settings, tls_ws_server.url()) == HELLO
    needle = f"CONNECT 127.0.0.1:{tls_ws_server.port}"
    assert needle in await squid_proxy.wait_for_log(needle)


async def test_credentials_ride_on_connect_only(
    squid_auth_proxy: Squid, tls_ws_server: WsServer, ca_file: Path
) -> None:
    settings = ProxySettings(
        url=squid_auth_proxy.url,
        username=USERNAME,
        password=SecretStr(PASSWORD),
        extra_ca_file=ca_file,
    )
    assert await _echo(settings, tls_ws_server.url()) == HELLO
    needle = f"CONNECT 127.0.0.1:{tls_ws_server.port}"
    log = await squid_auth_proxy.wait_for_log(needle)
    assert f" {USERNAME} " in log
    assert tls_ws_server.seen_headers
    assert all("Proxy-Authorization" not in h for h in tls_ws_server.seen_headers)


@pytest.mark.parametrize("password", ["wrong-password", None])
async def test_wrong_or_missing_credentials_raise_proxy_auth_error(
    squid_auth_proxy: Squid, tls_ws_server: WsServer, ca_file: Path, password: str | None
) -> None:
    settings = ProxySettings(
        url=squid_auth_proxy.url,
        username=USERNAME if password else None,
        password=SecretStr(password) if password else None,
        extra_ca_file=ca_file,
    )
    with pytest.raises(ProxyAuthError) as caught:
        await _echo(settings, tls_ws_server.url())
    assert caught.value.status == 407
    text = f"{caught.value!s} {caught.value!r}"
    assert "wrong-password" not in text
    assert PASSWORD not in text
    assert not tls_ws_server.seen_headers


async def test_refused_connect_raises_connect_refused(
    squid_proxy: Squid, tls_ws_server: WsServer, ca_file: Path
) -> None:
    settings = ProxySettings(url=squid_proxy.url, extra_ca_file=ca_file)
    # The fixture's squid denies tunnels to 127.0.0.2.
    with pytest.raises(ProxyConnectRefusedError) as caught:
        await _echo(settings, tls_ws_server.url(host="127.0.0.2"))
    assert caught.value.status == 403


async def test_unreachable_proxy_raises_proxy_unreachable(
    tls_ws_server: WsServer, ca_file: Path
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    settings = ProxySettings(url=f"http://127.0.0.1:{closed_port}", extra_ca_file=ca_file)
    with pytest.raises(ProxyUnreachableError):
        await _echo(settings, tls_ws_server.url())
    assert not tls_ws_server.seen_headers


async def test_no_proxy_host_goes_direct(
    connection_recorder: ConnectionRecorder, tls_ws_server: WsServer, ca_file: Path
) -> None:
    settings = ProxySettings(
        url=connection_recorder.url, no_proxy=("localhost",), extra_ca_file=ca_file
    )
    assert await _echo(settings, tls_ws_server.url(host="localhost")) == HELLO
    assert connection_recorder.connections == []


async def test_tls_verification_needs_the_configured_ca(tls_ws_server: WsServer) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        await _echo(ProxySettings(), tls_ws_server.url())


async def test_tls_hostname_is_checked_through_the_tunnel(
    squid_proxy: Squid, test_ca: trustme.CA, ca_file: Path
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    test_ca.issue_cert("elsewhere.test").configure_cert(context)
    runner, server = await start_ws_server(context)
    try:
        settings = ProxySettings(url=squid_proxy.url, extra_ca_file=ca_file)
        with pytest.raises(ssl.SSLCertVerificationError):
            await _echo(settings, server.url())
    finally:
        await runner.cleanup()
    assert not server.seen_headers
