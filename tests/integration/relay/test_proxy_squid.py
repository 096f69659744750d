"""The outbound proxy connector against a real squid and a real TLS WebSocket server."""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from pydantic import SecretStr

from gateway.outbound.proxy import (
    OutboundProxy,
    ProxyAuthError,
    ProxyConnectRefusedError,
    ProxySettings,
    ProxyUnreachableError,
    new_client_session,
    open_websocket,
)

from ..squid import PASSWORD, USERNAME, Squid
from .relay_servers import ConnectionRecorder, WsServer, start_ws_server

TIMEOUT = aiohttp.ClientTimeout(total=10)


@pytest.fixture
async def make_session() -> AsyncIterator[list[aiohttp.ClientSession]]:
    """Collects sessions made by a test and closes them afterwards."""
    sessions: list[aiohttp.ClientSession] = []
    yield sessions
    for session in sessions:
        await session.close()


async def _echo_via(
    sessions: list[aiohttp.ClientSession], settings: ProxySettings, url: str
) -> str:
    proxy = OutboundProxy(settings)
    session = new_client_session(proxy, timeout=TIMEOUT)
    sessions.append(session)
    ws = await open_websocket(session, proxy, url, handshake_timeout=10, max_msg_size=1 << 16)
    try:
        await ws.send_str("hello through the tunnel")
        msg = await ws.receive(timeout=5)
        return str(msg.data)
    finally:
        await ws.close()


async def test_connect_tunnel_through_squid_reaches_tls_websocket(
    squid_proxy: Squid,
    tls_ws_server: WsServer,
    ca_file: Path,
    make_session: list[aiohttp.ClientSession],
) -> None:
    settings = ProxySettings(url=squid_proxy.url, extra_ca_file=ca_file)
    assert await _echo_via(make_session, settings, tls_ws_server.url()) == (
        "hello through the tunnel"
    )
    needle = f"CONNECT 127.0.0.1:{tls_ws_server.port}"
    assert needle in await squid_proxy.wait_for_log(needle)


async def test_basic_auth_accepted_and_not_forwarded_to_destination(
    squid_auth_proxy: Squid,
    tls_ws_server: WsServer,
    ca_file: Path,
    make_session: list[aiohttp.ClientSession],
) -> None:
    settings = ProxySettings(
        url=squid_auth_proxy.url,
        username=USERNAME,
        password=SecretStr(PASSWORD),
        extra_ca_file=ca_file,
    )
    assert await _echo_via(make_session, settings, tls_ws_server.url()) == (
        "hello through the tunnel"
    )
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
    make_session: list[aiohttp.ClientSession],
    password: str | None,
) -> None:
    settings = ProxySettings(
        url=squid_auth_proxy.url,
        username=USERNAME if password else None,
        password=SecretStr(password) if password else None,
        extra_ca_file=ca_file,
    )
    with pytest.raises(ProxyAuthError) as caught:
        await _echo_via(make_session, settings, tls_ws_server.url())
    assert caught.value.code == "proxy_auth_required"
    assert caught.value.status == 407
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
    text = f"{caught.value!s} {caught.value!r}"
    assert "wrong-password" not in text
    assert PASSWORD not in text
    assert not tls_ws_server.seen_headers


async def test_refused_connect_raises_connect_refused(
    squid_proxy: Squid,
    tls_ws_server: WsServer,
    ca_file: Path,
    make_session: list[aiohttp.ClientSession],
) -> None:
    settings = ProxySettings(url=squid_proxy.url, extra_ca_file=ca_file)
    # The fixture's squid denies tunnels to 127.0.0.2.
    with pytest.raises(ProxyConnectRefusedError) as caught:
        await _echo_via(make_session, settings, tls_ws_server.url(host="127.0.0.2"))
    assert caught.value.code == "proxy_connect_refused"
    assert caught.value.status == 403


async def test_no_proxy_host_goes_direct(
    connection_recorder: ConnectionRecorder,
    tls_ws_server: WsServer,
    ca_file: Path,
    make_session: list[aiohttp.ClientSession],
) -> None:
    # The "proxy" only records connections: anything routed through it would fail and show up.
    settings = ProxySettings(
        url=connection_recorder.url, no_proxy=("localhost", "10.0.0.0/8"), extra_ca_file=ca_file
    )
    url = tls_ws_server.url(host="localhost")
    assert await _echo_via(make_session, settings, url) == "hello through the tunnel"
    assert connection_recorder.connections == []
    assert len(tls_ws_server.seen_headers) == 1


async def test_host_outside_no_proxy_uses_the_proxy(
    connection_recorder: ConnectionRecorder,
    tls_ws_server: WsServer,
    ca_file: Path,
    make_session: list[aiohttp.ClientSession],
) -> None:
    settings = ProxySettings(
        url=connection_recorder.url, no_proxy=("localhost",), extra_ca_file=ca_file
    )
    with pytest.raises((aiohttp.ClientError, ProxyConnectRefusedError)):
        await _echo_via(make_session, settings, tls_ws_server.url(host="127.0.0.1"))
    assert connection_recorder.connections
    assert not tls_ws_server.seen_headers


async def test_unreachable_proxy_raises_proxy_unreachable(
    tls_ws_server: WsServer, ca_file: Path, make_session: list[aiohttp.ClientSession]
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    settings = ProxySettings(url=f"http://127.0.0.1:{closed_port}", extra_ca_file=ca_file)
    with pytest.raises(ProxyUnreachableError) as caught:
        await _echo_via(make_session, settings, tls_ws_server.url())
    assert caught.value.code == "proxy_unreachable"
    assert not tls_ws_server.seen_headers


async def test_environment_proxy_variables_are_ignored(
    monkeypatch: pytest.MonkeyPatch,
    connection_recorder: ConnectionRecorder,
    tls_ws_server: WsServer,
    ca_file: Path,
    make_session: list[aiohttp.ClientSession],
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "WS_PROXY", "WSS_PROXY"):
        monkeypatch.setenv(name, connection_recorder.url)
        monkeypatch.setenv(name.lower(), connection_recorder.url)
    settings = ProxySettings(extra_ca_file=ca_file)
    assert await _echo_via(make_session, settings, tls_ws_server.url()) == (
        "hello through the tunnel"
    )
    assert connection_recorder.connections == []


async def test_tls_verification_needs_the_configured_ca(
    tls_ws_server: WsServer, make_session: list[aiohttp.ClientSession]
) -> None:
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await _echo_via(make_session, ProxySettings(), tls_ws_server.url())


async def test_tls_hostname_is_checked_even_with_the_ca(
    test_ca: trustme.CA, ca_file: Path, make_session: list[aiohttp.ClientSession]
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    test_ca.issue_cert("elsewhere.test").configure_cert(context)
    runner, server = await start_ws_server(context)
    try:
        with pytest.raises(aiohttp.ClientConnectorCertificateError) as caught:
            await _echo_via(make_session, ProxySettings(extra_ca_file=ca_file), server.url())
        assert "hostname" in str(caught.value).lower() or "IP address" in str(caught.value)
    finally:
        await runner.cleanup()
    assert not server.seen_headers
