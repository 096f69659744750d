"""Every command that judges a policy agrees with ``gateway run`` about it.

The defect this guards against: an extension module calling a function nobody defined compiled,
so ``validate`` said valid, ``run`` started and ``/readyz`` said ready, and then every request was
a 503. Now ``validate``, ``policy-test``, ``explain``, ``sign`` and ``check`` refuse it with the
module's ``FILE:LINE:COL``, ``run`` refuses to start with exit code 5, a reload to it keeps the
last good revision, and ``/readyz`` is not ready while the engine cannot decide.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.cli import main
from gateway.devkit.opa_server import OpaServer
from gateway.devkit.stack import DevStack, demo_config
from gateway.service import EXIT_START, Agent, AgentOptions, StartError

pytestmark = pytest.mark.asyncio

BAD_EXTENSION = (
    'package gateway_extensions.bad\n\ndeny contains "nope" if not_a_function(input.method)\n'
)
BAD_LOCATION = ":3:25:"  # line 3, the column of not_a_function


async def cli(*args: str) -> int:
    """Run a ``gateway`` command in a thread (each command runs its own event loop)."""
    return await asyncio.to_thread(main, list(args))


def add_bad_extension(directory: Path) -> Path:
    module = directory / "policies" / "corp" / "bad.rego"
    module.parent.mkdir(parents=True, exist_ok=True)
    module.write_text(BAD_EXTENSION, encoding="utf-8")
    module.chmod(0o644)
    return module


@pytest.fixture
async def stack() -> AsyncIterator[DevStack]:
    async with DevStack() as running:
        yield running


@pytest.fixture
async def registered(stack: DevStack, tmp_path: Path) -> Path:
    directory = tmp_path / "gw"
    config = stack.write_gateway_dir(directory)
    await stack.register_gateway(directory)
    return config


async def test_every_command_refuses_a_policy_that_cannot_decide(
    stack: DevStack, registered: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    bad = add_bad_extension(registered.parent)
    config = str(registered)
    key = registered.parent / "release.key"
    assert await cli("sign", "--generate-key", str(key)) == 0
    capfd.readouterr()
    commands = {
        "validate": ("validate", "-c", config),
        "sign": ("sign", "-c", config, "--key", str(key), "--epoch", "1"),
        "policy-test": ("policy-test", "-c", config),
        "explain": ("explain", "-c", config, "GET", "erp", "/api/accounts"),
    }
    for name, args in commands.items():
        assert await cli(*args) == 1, name
        out, err = capfd.readouterr()
        assert f"{bad}{BAD_LOCATION}" in err, (name, out, err)
        assert "not_a_function" in err
        assert "unreadable output" not in out + err
    assert await cli("check", "-c", config, "--format", "json", "--timeout", "5") == 1
    report = json.loads(capfd.readouterr().out)
    [first] = [c for c in report["checks"] if c["name"] == "config"]
    assert first["status"] == "fail"
    assert f"{bad}{BAD_LOCATION}" in first["detail"]
    # `gateway run` refuses to start: exit code 5, "could not start" (docs/operations.md).
    agent = Agent(AgentOptions(config_path=config, shutdown_grace=1))
    with pytest.raises(StartError) as caught:
        await agent.start()
    await agent.stop()
    assert caught.value.exit_code == EXIT_START
    assert "not_a_function" in str(caught.value)


async def test_reload_to_a_policy_that_cannot_decide_keeps_the_last_good_revision(
    stack: DevStack, registered: Path
) -> None:
    agent = Agent(
        AgentOptions(config_path=str(registered), shutdown_grace=1, reload_poll_interval=600)
    )
    await agent.start()
    try:
        async with asyncio.timeout(15):
            await stack.relay.wait_for_listeners(stack.hc, 2)
        good = agent.runtime()
        add_bad_extension(registered.parent)
        assert await agent.reload() is False
        assert agent.runtime() is good
        assert agent.readiness().ready
        async with stack.saas() as saas:
            response, _ = await saas.request("GET", "erp", "/api/accounts")
        assert response.status == 200, response.body
    finally:
        await agent.stop()


async def test_readyz_is_not_ready_while_the_engine_cannot_decide(
    stack: DevStack, tmp_path: Path
) -> None:
    directory = tmp_path / "gw"
    opa = OpaServer()
    await opa.start()
    await opa.go_down()  # the port is known and nothing answers on it
    document = demo_config(stack)
    document["policy"] = {**document["policy"], "engine": "opa", "opa_url": opa.url}
    config = stack.write_gateway_dir(directory, document=document)
    await stack.register_gateway(directory)
    agent = Agent(AgentOptions(config_path=str(config), shutdown_grace=1))
    await agent.start()
    readyz = f"http://127.0.0.1:{agent.health_port}/readyz"
    try:
        async with asyncio.timeout(15):
            await stack.relay.wait_for_listeners(stack.hc, 2)
        assert agent.readiness().ready is False  # listeners are online; the engine is not
        async with aiohttp.ClientSession() as session, session.get(readyz) as answer:
            body = await answer.json()
        assert answer.status == 503
        assert body["reasons"] == ["the policy engine cannot decide"]
        assert body["policy_engine_ready"] is False
        async with stack.saas() as saas:
            refused, _ = await saas.request("GET", "erp", "/api/accounts")
        assert (refused.status, refused.reason_code) == (503, "policy_unavailable")
        # OPA comes back: the engine pushes the policy again and the gateway becomes ready.
        await opa.come_back()
        async with asyncio.timeout(15):
            # `readiness` is what /readyz serves; polling it is what a probe does.
            while not agent.readiness().ready:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as session, session.get(readyz) as answer:
            assert answer.status == 200
    finally:
        await agent.stop()
        await opa.stop()
