"""``gateway dev send`` against the DevStack: a real process signs and sends through the relay
emulator to an in-process agent, which forwards to the sample target."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.auth import ReplayCache
from gateway.devkit.controlplane import write_signing_key
from gateway.devkit.send import SendError, load_signing_key
from gateway.devkit.stack import NAMESPACE, PERSON, PERSON_PASSWORD, DevStack
from gateway.identity import RegistrationSettings, register
from gateway.service import Agent, AgentOptions

POST_ACCOUNTS = {"name": "create-account", "methods": ["POST"], "paths": ["/api/accounts"]}


@dataclass
class Running:
    stack: DevStack
    key_file: Path


@pytest.fixture
async def running(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Running]:
    # The control plane's signing algorithm: ed25519 unless a test asks for another.
    async with DevStack(signing_alg=getattr(request, "param", "ed25519")) as stack:
        directory = tmp_path / "gw"
        config = stack.write_gateway_dir(directory, extra_operations=[POST_ACCOUNTS])
        await register(
            RegistrationSettings(
                base_url=stack.controlplane.base_url,
                state_dir=directory / "state",
                gateway_id=stack.gateway_id,
                ca_file=directory / "empowerid-ca.pem",
            ),
            username=PERSON,
            password=PERSON_PASSWORD,
        )
        ReplayCache.initialise(directory / "state")
        key_file = tmp_path / "signing.pem"
        write_signing_key(stack.controlplane, key_file)
        agent = Agent(AgentOptions(config_path=str(config), shutdown_grace=2))
        await agent.start()
        try:
            async with asyncio.timeout(10):
                await stack.relay.wait_for_listeners(stack.hc, 2)
            yield Running(stack, key_file)
        finally:
            await agent.stop()


async def dev_send(running: Running, *request: str) -> tuple[int, bytes, bytes]:
    stack = running.stack
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "dev",
        "send",
        "--relay",
        stack.relay.http_base,
        "--namespace",
        NAMESPACE,
        "--hc",
        stack.hc,
        "--send-key-name",
        stack.send_key_name,
        "--send-key",
        stack.send_key,
        "--signing-key",
        str(running.key_file),
        "--keyid",
        stack.controlplane.signing_key.keyid,
        "--gateway-id",
        stack.gateway_id,
        *request,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout, stderr


async def test_signed_get_is_answered_by_the_target(running: Running) -> None:
    code, out, err = await dev_send(
        running, "-H", "Accept: application/json", "GET", "erp", "/api/accounts/17?expand=groups"
    )
    head, _, body = out.partition(b"\r\n\r\n")
    assert code == 0, err
    assert head.startswith(b"HTTP 200\r\n")
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body)["path"] == "/api/accounts/17?expand=groups"
    [received] = running.stack.targets.http_requests
    assert received.headers["Accept"] == "application/json"


@pytest.mark.parametrize("running", ["rsa-pss-sha512"], indirect=True)
async def test_an_rsa_pss_signed_request_crosses_the_relay_and_is_answered(
    running: Running,
) -> None:
    # EmpowerID with its key in Azure Key Vault or Managed HSM signs with RSA-PSS (PS512): the
    # gateway pinned the RSA public key at registration and verifies the request end to end.
    assert isinstance(load_signing_key(running.key_file), rsa.RSAPrivateKey)
    assert running.stack.controlplane.signing_key.public_document()["alg"] == "rsa-pss-sha512"
    code, out, err = await dev_send(running, "GET", "erp", "/api/accounts/17?expand=groups")
    assert code == 0, err
    assert out.startswith(b"HTTP 200\r\n")
    [received] = running.stack.targets.http_requests
    assert received.path_qs == "/api/accounts/17?expand=groups"


async def test_body_from_a_file_is_signed_and_forwarded(running: Running, tmp_path: Path) -> None:
    payload = tmp_path / "account.json"
    payload.write_bytes(b'{"name":"alice"}')
    code, out, err = await dev_send(
        running, "-H", "Content-Type: application/json", "--data", f"@{payload}",
        "POST", "erp", "/api/accounts",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out.partition(b"\r\n\r\n")[2])["received_bytes"] == 16
    [received] = running.stack.targets.http_requests
    assert received.body == b'{"name":"alice"}'


async def test_a_refusal_is_printed_and_exits_1(running: Running) -> None:
    code, out, _ = await dev_send(running, "DELETE", "erp", "/api/accounts/17")
    assert code == 1
    assert out.startswith(b"HTTP 403\r\n")
    assert b"x-gateway-reason: " in out
    assert running.stack.targets.http_requests == []


def test_a_file_that_is_not_a_signing_key_is_refused(tmp_path: Path) -> None:
    not_a_key = tmp_path / "key.pem"
    not_a_key.write_text("hello", encoding="utf-8")
    with pytest.raises(SendError, match="cannot read the signing key"):
        load_signing_key(not_a_key)
