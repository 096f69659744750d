"""Credential injection end to end: relay emulator -> ``gateway run`` (its own process) -> APIs
that require the injected credential, and an OAuth 2.0 token endpoint, all on loopback.

Each kind is injected from a different reference: the API key from a 0600 file, the Basic
password from a systemd credential directory, the bearer token from an environment variable and
the OAuth client secret from a file. The SaaS never sends any of them; a SaaS request that brings
its own credential header is refused. The last test reads every channel the gateway writes to
(its log at debug level, the decision log, /metrics, and the CLI verbs' output) and requires that
no secret value, issued token included, appears anywhere.
"""

from __future__ import annotations

import asyncio
import base64
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from gateway.devkit.saas import SaaSResponse
from gateway.devkit.stack import DevStack, operator_port
from gateway.devkit.token_server import ProtectedApi, TokenServer

from ..gatewayrun import START_TIMEOUT, child_environment, gateway_run

pytestmark = pytest.mark.asyncio(loop_scope="module")

API_KEY = "key-4f1d9a7c-from-a-file"
ROTATED_KEY = "key-rotated-8e2b6c1d"
BASIC_PASSWORD = "basic-pw-2c7e5a90-systemd"
BEARER = "static-bearer-91d3f0b7-env"
CLIENT_SECRET = "client-secret-6a8b4e21"
SECRETS = (API_KEY, ROTATED_KEY, BASIC_PASSWORD, BEARER, CLIENT_SECRET)
# The token lifetime the endpoint grants, and how early the gateway refreshes: the margin is
# capped at half the lifetime, so tokens are refreshed 3 s after issue and expire after 6 s.
LIFETIME = 6.0


def _write_secret(path: Path, value: str, mode: int = 0o600) -> None:
    partial = path.with_name(path.name + ".new")
    partial.write_text(value + "\n", encoding="utf-8")
    partial.chmod(mode)
    partial.replace(path)


def _target(api: ProtectedApi, credential: str | None) -> dict[str, Any]:
    target: dict[str, Any] = {
        "scheme": "http",
        "host": "127.0.0.1",
        "port": api.port,
        "allow_special_addresses": True,
        "operations": [{"name": "read", "methods": ["GET"], "paths": ["/api/**"]}],
    }
    if credential is not None:
        target["credential"] = credential
    return target


def _oauth(idp: TokenServer) -> dict[str, Any]:
    return {
        "oauth2_client_credentials": {
            "token_url": idp.token_url,
            "allowed_cidrs": ["127.0.0.1/32"],
            "allow_special_addresses": True,
            "client_id": "gateway",
            "client_secret": {"file": "secrets/client-secret"},
            "scopes": ["api.read"],
            "refresh_before_seconds": LIFETIME,
            "timeout_seconds": 2,
        }
    }


@dataclass
class Env:
    stack: DevStack
    directory: Path
    config: Path
    idp: TokenServer
    spare_idp: TokenServer
    apis: dict[str, ProtectedApi]
    process: asyncio.subprocess.Process
    log: Path
    child_env: dict[str, str]
    health_port: int

    async def send(self, target: str, path: str = "/api/items", **kwargs: Any) -> SaaSResponse:
        async with self.stack.saas() as saas:
            response, _ = await saas.request("GET", target, path, **kwargs)
        return response

    async def cli(self, *args: str) -> str:
        """A CLI verb's stdout and stderr (run without blocking: the servers live in this loop)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            *args,
            cwd=self.directory,
            env=self.child_env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(120):
            out, _ = await process.communicate()
        return out.decode()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    directory = tmp_path_factory.mktemp("gateway")
    secrets_dir = directory / "secrets"
    secrets_dir.mkdir(mode=0o700)
    _write_secret(secrets_dir / "api-key", API_KEY)
    _write_secret(secrets_dir / "client-secret", CLIENT_SECRET)
    systemd_dir = directory / "credentials"
    systemd_dir.mkdir(mode=0o700)
    _write_secret(systemd_dir / "basic-password", BASIC_PASSWORD, 0o400)
    basic = base64.b64encode(f"svc-gateway:{BASIC_PASSWORD}".encode()).decode()
    scopes = frozenset({"api.read"})
    async with (
        TokenServer({"gateway": CLIENT_SECRET}, scopes=scopes, lifetime=LIFETIME) as idp,
        TokenServer({"gateway": CLIENT_SECRET}, scopes=scopes, lifetime=LIFETIME) as spare_idp,
        ProtectedApi(tokens=idp) as oauth_api,
        ProtectedApi(tokens=spare_idp) as spare_api,
        ProtectedApi(expect={"x-api-key": API_KEY}) as key_api,
        ProtectedApi(expect={"authorization": f"Basic {basic}"}) as basic_api,
        ProtectedApi(expect={"authorization": f"Bearer {BEARER}"}) as bearer_api,
        ProtectedApi() as open_api,
        DevStack("cred-gateway") as stack,
    ):
        apis = {
            "oauth-api": oauth_api,
            "spare-api": spare_api,
            "key-api": key_api,
            "basic-api": basic_api,
            "bearer-api": bearer_api,
            "open-api": open_api,
        }
        credentials = {
            "idp": _oauth(idp),
            "spare-idp": _oauth(spare_idp),
            "api-key": {"header": {"name": "X-API-Key", "value": {"file": "secrets/api-key"}}},
            "basic": {
                "basic": {"username": "svc-gateway", "password": {"credential": "basic-password"}}
            },
            "bearer": {"bearer": {"token": {"env": "CRED_TEST_BEARER"}}},
        }
        targets = {
            "oauth-api": _target(oauth_api, "idp"),
            "spare-api": _target(spare_api, "spare-idp"),
            "key-api": _target(key_api, "api-key"),
            "basic-api": _target(basic_api, "basic"),
            "bearer-api": _target(bearer_api, "bearer"),
            "open-api": _target(open_api, None),
            # The devkit's sample target accepts WebSocket streams on /ws/echo.
            "ws-api": {
                "scheme": "http",
                "host": "127.0.0.1",
                "port": stack.targets.http_port,
                "allow_special_addresses": True,
                "credential": "basic",
                "operations": [
                    {"name": "events", "methods": ["GET"], "paths": ["/ws/echo"], "websocket": True}
                ],
            },
        }
        document = stack.gateway_document(targets, credentials=credentials)
        document["logging"]["level"] = "debug"
        config = stack.write_gateway_dir(directory, document=document)
        await stack.register_gateway(directory)
        child_env = child_environment(
            {"CRED_TEST_BEARER": BEARER, "CREDENTIALS_DIRECTORY": str(systemd_dir)}
        )
        log = directory / "gateway.log"
        async with gateway_run(stack, config, log=log, env=child_env) as process:
            # Its operator endpoint listens on port 0 and publishes the port it got.
            port = await operator_port(directory, process, within=START_TIMEOUT)
            yield Env(stack, directory, config, idp, spare_idp, apis, process, log, child_env, port)


@pytest.mark.parametrize("target", ["key-api", "basic-api", "bearer-api", "oauth-api"])
async def test_each_kind_is_injected_and_accepted(env: Env, target: str) -> None:
    response = await env.send(target)
    assert response.status == 200, response.body
    assert env.apis[target].seen[-1]["host"].startswith("127.0.0.1")


async def test_target_without_a_credential_gets_none(env: Env) -> None:
    response = await env.send("open-api")
    assert response.status == 200
    assert "authorization" not in env.apis["open-api"].seen[-1]


@pytest.mark.parametrize(
    ("target", "header"),
    [
        ("oauth-api", ("Authorization", "Bearer saas-own-token")),
        ("oauth-api", ("Cookie", "session=saas")),
        ("oauth-api", ("Proxy-Authorization", "Basic c2Fhczpvd24=")),
        ("key-api", ("X-API-Key", "saas-own-key")),
        ("basic-api", ("authorization", "Basic c2Fhczpvd24=")),
    ],
)
async def test_saas_bringing_its_own_credential_is_refused(
    env: Env, target: str, header: tuple[str, str]
) -> None:
    before = len(env.apis[target].seen)
    response = await env.send(target, headers=[header])
    assert response.status == 400
    assert response.reason_code == "saas_credential_refused"
    assert header[0].lower() in response.body.decode()
    assert len(env.apis[target].seen) == before  # never reached the API


async def test_websocket_handshake_gets_the_credential_and_refuses_the_saas_own(
    env: Env,
) -> None:
    basic = base64.b64encode(f"svc-gateway:{BASIC_PASSWORD}".encode()).decode()
    async with env.stack.saas() as saas:
        socket = await saas.stream("ws-api", "/ws/echo")
        try:
            await socket.send_str("hello")
            async with asyncio.timeout(10):
                reply = await socket.receive()
            assert reply.data == "echo:hello"
        finally:
            await socket.close()
        [stream] = env.stack.targets.ws_streams
        assert stream.headers["Authorization"] == f"Basic {basic}"
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await saas.stream("ws-api", "/ws/echo", headers=[("Cookie", "session=saas")])
    assert caught.value.status == 400
    assert len(env.stack.targets.ws_streams) == 1


async def test_oauth_token_is_cached_refreshed_before_expiry_and_renewed_after_401(
    env: Env,
) -> None:
    api, idp = env.apis["oauth-api"], env.idp
    assert (await env.send("oauth-api")).status == 200
    first = api.seen[-1]["authorization"]
    fetched = idp.requests
    assert (await env.send("oauth-api")).status == 200
    assert api.seen[-1]["authorization"] == first
    assert idp.requests == fetched  # cached
    # Past the refresh point (half the lifetime) but before expiry: a new token is fetched.
    await asyncio.sleep(LIFETIME / 2 + 0.5)
    assert (await env.send("oauth-api")).status == 200
    assert api.seen[-1]["authorization"] != first
    assert idp.requests == fetched + 1
    # The identity provider revokes every token: the API answers 401 once, and the gateway drops
    # the cached token so the next request carries a new one.
    idp.revoke_all()
    assert (await env.send("oauth-api")).status == 401
    assert (await env.send("oauth-api")).status == 200


async def test_token_endpoint_down_fails_closed_then_recovers(env: Env) -> None:
    await env.spare_idp.go_down()
    before = len(env.apis["spare-api"].seen)
    response = await env.send("spare-api")
    assert response.status == 503
    assert response.reason_code == "token_endpoint_unavailable"
    assert len(env.apis["spare-api"].seen) == before
    # `gateway check` names the credential whose token cannot be fetched.
    checked = await env.cli("check", "-c", str(env.config))
    line = next(x for x in checked.splitlines() if " credentials " in x)
    assert line.startswith("FAIL"), checked
    assert "spare-idp: token_endpoint_unavailable" in line
    await env.spare_idp.come_back()
    # New fetches are held back for a moment after a failure; then the endpoint is used again.
    statuses = []
    for _ in range(40):
        statuses.append((await env.send("spare-api")).status)
        if statuses[-1] == 200:
            break
        await asyncio.sleep(0.5)
    assert statuses[-1] == 200, statuses


async def test_wrong_client_secret_is_a_clear_502(env: Env) -> None:
    env.spare_idp.clients = {"gateway": "not-what-the-gateway-has"}
    # Once the cached token has expired there is nothing to fall back on.
    await asyncio.sleep(LIFETIME + 0.5)
    response = await env.send("spare-api")
    env.spare_idp.clients = {"gateway": CLIENT_SECRET}
    assert response.status == 502
    assert response.reason_code == "token_endpoint_error"
    assert "invalid_client" in response.body.decode()


async def test_rotated_secret_file_is_used_without_reload_or_restart(env: Env) -> None:
    api = env.apis["key-api"]
    _write_secret(env.directory / "secrets" / "api-key", ROTATED_KEY)
    api.expect = {"x-api-key": ROTATED_KEY}
    response = await env.send("key-api")
    assert response.status == 200, response.body
    assert api.seen[-1]["x-api-key"] == ROTATED_KEY
    # A rotation that leaves the file readable by others fails closed, never falls back.
    _write_secret(env.directory / "secrets" / "api-key", ROTATED_KEY, 0o644)
    response = await env.send("key-api")
    assert response.status == 503
    assert response.reason_code == "credential_unavailable"
    _write_secret(env.directory / "secrets" / "api-key", ROTATED_KEY)


async def test_no_secret_appears_in_any_output(env: Env) -> None:
    outputs: dict[str, str] = {}
    for args in (
        ("validate", "-c", str(env.config)),
        ("explain", "-c", str(env.config), "GET", "oauth-api", "/api/items"),
        ("explain", "-c", str(env.config), "--format", "json", "GET", "key-api", "/api/items"),
        ("check", "-c", str(env.config)),
    ):
        outputs[" ".join(args)] = await env.cli(*args)
    explained = outputs[f"explain -c {env.config} GET oauth-api /api/items"]
    checked = outputs[f"check -c {env.config}"]
    line = next(x for x in checked.splitlines() if " credentials " in x)
    assert line.startswith("ok"), checked
    assert "idp (oauth2_client_credentials, token fetched)" in line
    assert "basic (basic, ok)" in line
    assert "injects:   authorization from credential idp" in explained, explained
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{env.health_port}/metrics") as page,
    ):
        outputs["metrics"] = await page.text()
    outputs["gateway log"] = env.log.read_text(encoding="utf-8", errors="replace")
    outputs["decision log"] = (env.directory / "decisions.jsonl").read_text(encoding="utf-8")
    assert "saas_credential_refused" in outputs["decision log"]
    # The token life cycle is logged (by credential name and endpoint only).
    assert "credential idp: new token from" in outputs["gateway log"]
    assert "credential spare-idp: token endpoint" in outputs["gateway log"]
    tokens = [*env.idp.issued, *env.spare_idp.issued]
    assert tokens
    basic = base64.b64encode(f"svc-gateway:{BASIC_PASSWORD}".encode()).decode()
    for channel, text in outputs.items():
        assert text, channel
        for secret in (*SECRETS, *tokens, basic):
            assert secret not in text, f"a secret appears in the {channel}"
