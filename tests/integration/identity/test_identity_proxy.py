"""Control-plane calls through the customer's outbound proxy: a real squid with Basic auth.

The control-plane client routes through the same :class:`OutboundProxy` as relay traffic, so the
``CONNECT`` tunnel, the credentials, the no-proxy list and the error codes are the relay's too
(catalogue items 92 and 133). Everything runs on loopback: squid, the simulator, the client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr
from yarl import URL

from gateway.devkit.controlplane import ControlPlaneSimulator, DevCA
from gateway.identity import (
    ControlPlaneError,
    RegistrationSettings,
    load_identity,
    mtls_client,
    register,
)
from gateway.identity.store import IDENTITY_FILE
from gateway.outbound.proxy import (
    OutboundProxy,
    ProxyAuthError,
    ProxyConnectRefusedError,
    ProxySettings,
    ProxyUnreachableError,
)

from ..squid import PASSWORD as PROXY_PASSWORD
from ..squid import USERNAME as PROXY_USERNAME
from ..squid import Squid
from .identity_support import PASSWORD, TEST_TIMEOUTS

Settings = Callable[..., RegistrationSettings]
API = "/api/gateway/v1/"
WRONG_PROXY_PASSWORD = "not-the-proxy-password"


def _via(squid: Squid, password: str = PROXY_PASSWORD, **extra: object) -> ProxySettings:
    return ProxySettings(
        url=squid.url,
        username=PROXY_USERNAME,
        password=SecretStr(password),
        **extra,  # type: ignore[arg-type]
    )


def _authority(simulator: ControlPlaneSimulator) -> str:
    url = URL(simulator.base_url)
    return f"{url.host}:{url.port}"


async def _register_error(settings: RegistrationSettings) -> ControlPlaneError:
    with pytest.raises(ControlPlaneError) as info:
        await register(settings, username="alice", password=PASSWORD)
    return info.value


async def test_registration_and_relay_info_tunnel_through_squid_with_basic_auth(
    simulator: ControlPlaneSimulator,
    make_settings: Settings,
    squid_auth_proxy: Squid,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy_settings = _via(squid_auth_proxy)
    settings = make_settings(proxy=proxy_settings)
    outcome = await register(settings, username="alice", password=PASSWORD)
    tunnel = f"CONNECT {_authority(simulator)} {PROXY_USERNAME} "
    log = await squid_auth_proxy.wait_for_log(tunnel, count=1)
    assert log.count(tunnel) == 1

    identity = load_identity(settings.state_dir)
    proxy = OutboundProxy(proxy_settings)
    async with mtls_client(identity, timeouts=TEST_TIMEOUTS, proxy=proxy) as client:
        info = await client.relay_info()
    assert info.gateway_id == "gw-1"
    assert info.relay == outcome.relay
    log = await squid_auth_proxy.wait_for_log(tunnel, count=3)
    tunnels = [line for line in log.splitlines() if tunnel in line]
    assert len(tunnels) == 3
    assert all("TCP_TUNNEL/200" in line for line in tunnels)
    # Every call reached the simulator; registration's proof and relay-info over mTLS inside
    # the tunnel.
    assert [r.path for r in simulator.requests] == [
        API + "registrations",
        API + "signing-keys",
        API + "relay-info",
    ]
    assert PROXY_PASSWORD not in caplog.text


@pytest.mark.parametrize("password", [WRONG_PROXY_PASSWORD, None], ids=["wrong", "missing"])
async def test_registration_with_bad_proxy_credentials_is_proxy_auth_required(
    simulator: ControlPlaneSimulator,
    make_settings: Settings,
    squid_auth_proxy: Squid,
    password: str | None,
) -> None:
    proxy_settings = (
        _via(squid_auth_proxy, password)
        if password is not None
        else ProxySettings(url=squid_auth_proxy.url)
    )
    settings = make_settings(proxy=proxy_settings)
    error = await _register_error(settings)

    assert error.code == "proxy_auth_required"
    assert f"127.0.0.1:{squid_auth_proxy.port}" in str(error)
    assert "407" in str(error)
    assert isinstance(error.__cause__, ProxyAuthError)
    assert error.__cause__.status == 407
    for text in (str(error), repr(error), str(error.__cause__)):
        assert WRONG_PROXY_PASSWORD not in text
        assert PROXY_PASSWORD not in text
    # Neither the Person's credentials nor the CSR went anywhere, and nothing was committed.
    assert simulator.requests == []
    assert not (settings.state_dir / IDENTITY_FILE).exists()
    log = await squid_auth_proxy.wait_for_log(f"CONNECT {_authority(simulator)} ")
    assert "TCP_DENIED/407" in log


async def test_relay_info_with_a_wrong_proxy_password_is_proxy_auth_required(
    simulator: ControlPlaneSimulator, make_settings: Settings, squid_auth_proxy: Squid
) -> None:
    settings = make_settings()
    await register(settings, username="alice", password=PASSWORD)
    proxy = OutboundProxy(_via(squid_auth_proxy, WRONG_PROXY_PASSWORD))
    client = mtls_client(load_identity(settings.state_dir), timeouts=TEST_TIMEOUTS, proxy=proxy)
    async with client:
        with pytest.raises(ControlPlaneError) as info:
            await client.relay_info()
    assert info.value.code == "proxy_auth_required"
    assert WRONG_PROXY_PASSWORD not in str(info.value)
    assert [r.path for r in simulator.requests] == [API + "registrations", API + "signing-keys"]


async def test_unreachable_proxy_is_proxy_failed_and_no_proxy_goes_direct(
    simulator: ControlPlaneSimulator, make_settings: Settings, refused_port: int
) -> None:
    dead_proxy = f"http://127.0.0.1:{refused_port}"
    error = await _register_error(make_settings(proxy=ProxySettings(url=dead_proxy)))
    assert error.code == "proxy_failed"
    assert isinstance(error.__cause__, ProxyUnreachableError)
    assert simulator.requests == []

    # The same dead proxy, but the control plane's host is on the no-proxy list: direct, works.
    bypass = ProxySettings(url=dead_proxy, no_proxy=("127.0.0.1",))
    settings = make_settings(proxy=bypass)
    await register(settings, username="alice", password=PASSWORD)
    client = mtls_client(
        load_identity(settings.state_dir), timeouts=TEST_TIMEOUTS, proxy=OutboundProxy(bypass)
    )
    async with client:
        info = await client.relay_info()
    assert info.gateway_id == "gw-1"


async def test_refused_tunnel_is_proxy_failed(
    simulator: ControlPlaneSimulator, make_settings: Settings, squid_auth_proxy: Squid
) -> None:
    # The test squid refuses tunnels to 127.0.0.2 (403) before it would dial anything.
    port = URL(simulator.base_url).port
    settings = make_settings(base_url=f"https://127.0.0.2:{port}/", proxy=_via(squid_auth_proxy))
    error = await _register_error(settings)
    assert error.code == "proxy_failed"
    assert isinstance(error.__cause__, ProxyConnectRefusedError)
    assert error.__cause__.status == 403
    assert "403" in str(error)
    assert simulator.requests == []


async def test_the_proxy_ca_bundle_is_not_trusted_for_the_control_plane(
    make_settings: Settings, squid_auth_proxy: Squid, tmp_path: Path
) -> None:
    # A TLS-inspecting proxy re-signs the control plane's certificate with its own CA; the
    # operator adds that CA to the proxy settings for relay traffic. Registration stays pinned
    # to the EmpowerID CA and refuses before the Person's password or the CSR is sent.
    async with ControlPlaneSimulator(ca=DevCA("Inspecting proxy CA")) as reissued:
        reissued.add_person("alice", PASSWORD)
        inspection_ca = reissued.write_ca(tmp_path / "inspection-ca.pem")
        proxy_settings = _via(squid_auth_proxy, extra_ca_file=inspection_ca)
        error = await _register_error(
            make_settings(base_url=reissued.base_url, proxy=proxy_settings)
        )
        assert error.code == "tls_interception_or_untrusted_ca"
        assert reissued.requests == []
        # Control: the relay-side TLS context from the same settings does accept that server.
        relay_context = OutboundProxy(proxy_settings).ssl_context
        async with (
            aiohttp.ClientSession(trust_env=False) as session,
            session.get(
                reissued.base_url + API.lstrip("/") + "relay-info",
                ssl=relay_context,
                timeout=aiohttp.ClientTimeout(total=10),
            ) as response,
        ):
            assert response.status == 401
