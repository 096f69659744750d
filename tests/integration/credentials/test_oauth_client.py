"""The OAuth 2.0 client against the devkit token endpoint over real loopback sockets and TLS.

The endpoint is declared as ``idp.corp.local`` in 10.1.5.0/24; name resolution is a table and the
dial step's redirect seam connects the checked address to the loopback server, so the same
address checks as for targets decide whether the endpoint may be dialled at all.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import trustme

from gateway.config.model import GatewayConfig, OAuth2ClientCredentials
from gateway.config.secrets import SecretRef, SecretSource
from gateway.devkit.token_server import TokenServer
from gateway.forward.dial import IPAddress
from gateway.forward.oauth import CredentialError, TokenSource

CLIENT_ID = "gateway erp"  # a space: form-encoded as '+' inside HTTP Basic (RFC 6749 2.3.1)
CLIENT_SECRET = "cl1ent:s3cret/with+specials"
IDP_HOST = "idp.corp.local"


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Routes:
    """Resolver and redirect seams: idp.corp.local -> ``address``, dialled at loopback."""

    port: int
    address: str = "10.1.5.7"
    dialled: list[str] = field(default_factory=list)

    async def resolve(self, host: str, port: int) -> Sequence[IPAddress]:
        if host != IDP_HOST:
            raise OSError(f"{host} does not resolve")
        return [ipaddress.ip_address(self.address)]

    def redirect(self, address: IPAddress, port: int) -> tuple[str, int]:
        self.dialled.append(str(address))
        return "127.0.0.1", self.port


@dataclass
class Env:
    idp: TokenServer
    routes: Routes
    directory: Path
    config: GatewayConfig
    ca_file: Path

    def source(self, clock: Clock | None = None, **settings: Any) -> TokenSource:
        document: dict[str, Any] = {
            "token_url": f"https://{IDP_HOST}:{self.idp.port}/oauth2/token",
            "allowed_cidrs": ["10.1.5.0/24"],
            "tls": {"ca_file": str(self.ca_file)},
            "client_id": CLIENT_ID,
            "client_secret": {"file": "client-secret"},
            "scopes": ["accounts.read"],
            "timeout_seconds": 2,
        }
        document.update(settings)
        oauth = OAuth2ClientCredentials.model_validate(document)
        secret = SecretSource(oauth.client_secret, base_dir=self.directory, env={})
        return TokenSource(
            "erp-oauth",
            oauth,
            secret,
            self.config,
            resolver=self.routes.resolve,
            redirect=self.routes.redirect,
            clock=clock or time.monotonic,
        )


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(IDP_HOST).configure_cert(server_context)
    secret = tmp_path / "client-secret"
    secret.write_text(CLIENT_SECRET + "\n")
    secret.chmod(0o600)
    config = GatewayConfig.model_validate(
        {
            "version": 1,
            "gateway": {"id": "agent-1"},
            "empowerid": {"url": "https://tenant.example"},
            "targets": {},
        }
    )
    async with TokenServer(
        {CLIENT_ID: CLIENT_SECRET},
        scopes=frozenset({"accounts.read"}),
        ssl_context=server_context,
    ) as idp:
        yield Env(idp, Routes(idp.port), tmp_path, config, ca_file)


async def test_token_is_fetched_once_and_cached(env: Env) -> None:
    source = env.source()
    try:
        first = await source.token()
        assert env.idp.valid(first.get_secret_value())
        assert await source.token() == first
        assert env.idp.requests == 1
        assert env.routes.dialled == ["10.1.5.7"]
    finally:
        await source.close()


@pytest.mark.parametrize("client_auth", ["client_secret_basic", "client_secret_post"])
async def test_both_client_authentication_methods(env: Env, client_auth: str) -> None:
    source = env.source(client_auth=client_auth)
    try:
        assert env.idp.valid((await source.token()).get_secret_value())
    finally:
        await source.close()


async def test_concurrent_callers_share_one_fetch(env: Env) -> None:
    env.idp.delay = 0.2
    source = env.source()
    try:
        tokens = await asyncio.gather(*(source.token() for _ in range(20)))
        assert len({t.get_secret_value() for t in tokens}) == 1
        assert env.idp.requests == 1
    finally:
        await source.close()


async def test_refresh_before_expiry_and_fallback_to_the_still_valid_token(env: Env) -> None:
    clock = Clock()
    env.idp.lifetime = 600
    source = env.source(clock, refresh_before_seconds=60)
    try:
        first = await source.token()
        clock.now += 539  # one second before the refresh point: cached
        assert await source.token() == first
        assert env.idp.requests == 1
        clock.now += 2  # inside the refresh window: a new token
        second = await source.token()
        assert second != first
        assert env.idp.requests == 2
        # The endpoint goes down during the next refresh window: the valid token stays in use.
        await env.idp.go_down()
        clock.now += 550
        assert await source.token() == second
        # Once it has expired, there is nothing to fall back on: fail closed.
        clock.now += 100
        with pytest.raises(CredentialError) as caught:
            await source.token()
        assert (caught.value.code, caught.value.status) == ("token_endpoint_unavailable", 503)
        # A failure holds new fetches back for a moment, then the endpoint is tried again.
        await env.idp.come_back()
        clock.now += 5
        assert env.idp.valid((await source.token()).get_secret_value())
    finally:
        await source.close()


@pytest.mark.parametrize(
    ("change", "code", "status", "shown"),
    [
        ({"fail_status": 503}, "token_endpoint_unavailable", 503, "503"),
        ({"fail_status": 400}, "token_endpoint_error", 502, "server_error"),
        ({"clients": {CLIENT_ID: "other"}}, "token_endpoint_error", 502, "invalid_client"),
        ({"scopes": frozenset()}, "token_endpoint_error", 502, "invalid_scope"),
    ],
)
async def test_endpoint_errors_fail_closed_without_secrets(
    env: Env, change: dict[str, Any], code: str, status: int, shown: str
) -> None:
    for key, value in change.items():
        setattr(env.idp, key, value)
    source = env.source()
    try:
        with pytest.raises(CredentialError) as caught:
            await source.token()
    finally:
        await source.close()
    assert (caught.value.code, caught.value.status) == (code, status)
    assert shown in str(caught.value)
    assert CLIENT_SECRET not in str(caught.value)


async def test_unreachable_and_silent_endpoints_are_503(env: Env) -> None:
    await env.idp.go_down()
    source = env.source()
    try:
        with pytest.raises(CredentialError) as caught:
            await source.token()
        assert (caught.value.code, caught.value.status) == ("token_endpoint_unavailable", 503)
    finally:
        await source.close()
    await env.idp.come_back()
    env.idp.delay = 5
    source = env.source(timeout_seconds=0.3)
    try:
        with pytest.raises(CredentialError) as caught:
            await source.token()
        assert caught.value.code == "token_endpoint_unavailable"
        assert "did not answer" in str(caught.value)
    finally:
        await source.close()


async def test_endpoint_outside_its_networks_is_never_dialled(env: Env) -> None:
    env.routes.address = "10.9.9.9"
    source = env.source()
    try:
        with pytest.raises(CredentialError) as caught:
            await source.token()
    finally:
        await source.close()
    assert (caught.value.code, caught.value.status) == ("token_endpoint_error", 502)
    assert "10.9.9.9" in str(caught.value)
    assert env.routes.dialled == []
    assert env.idp.requests == 0


async def test_certificate_from_another_ca_is_refused(env: Env, tmp_path: Path) -> None:
    other = trustme.CA()
    other.cert_pem.write_to_path(str(tmp_path / "other.pem"))
    source = env.source(tls={"ca_file": str(tmp_path / "other.pem")})
    try:
        with pytest.raises(CredentialError) as caught:
            await source.token()
    finally:
        await source.close()
    assert caught.value.code == "token_endpoint_error"
    assert env.idp.requests == 0


async def test_rotated_client_secret_is_used_for_the_next_fetch(env: Env) -> None:
    clock = Clock()
    source = env.source(clock)
    try:
        await source.token()
        rotated = env.directory / "client-secret.new"
        rotated.write_text("rotated-secret")
        rotated.chmod(0o600)
        rotated.replace(env.directory / "client-secret")
        env.idp.clients = {CLIENT_ID: "rotated-secret"}
        clock.now += 3600
        assert env.idp.valid((await source.token()).get_secret_value())
        assert env.idp.requests == 2
    finally:
        await source.close()


def test_reference_is_described_without_its_value() -> None:
    assert SecretRef(file="client-secret").describe() == "file:client-secret"
