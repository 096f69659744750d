"""A running agent that requires signed configuration: it starts only with a valid release
signature, and a reload with a tampered, unsigned or older file keeps the last good revision."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import main
from gateway.devkit.stack import DevStack, demo_config
from gateway.service import EXIT_CONFIG, Agent, AgentOptions, StartError

pytestmark = pytest.mark.asyncio


def write(config: Path, document: dict[str, Any]) -> None:
    config.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    config.chmod(0o644)


def sign(config: Path, key: Path, epoch: int) -> None:
    assert main(["sign", "-c", str(config), "--key", str(key), "--epoch", str(epoch)]) == 0


@pytest.fixture
async def stack_dir(tmp_path: Path) -> AsyncIterator[tuple[DevStack, Path, Path, dict[str, Any]]]:
    async with DevStack() as stack:
        directory = tmp_path / "gw"
        config = stack.write_gateway_dir(directory)
        await stack.register_gateway(directory)
        key = directory / "release.key"
        assert main(["sign", "--generate-key", str(key)]) == 0
        document = demo_config(stack)
        document["config_signature"] = {"required": True, "public_keys": ["release.key.pub"]}
        write(config, document)
        yield stack, config, key, document


async def test_unsigned_configuration_is_refused_at_start(
    stack_dir: tuple[DevStack, Path, Path, dict[str, Any]],
) -> None:
    _, config, _, _ = stack_dir
    agent = Agent(AgentOptions(config_path=str(config), shutdown_grace=1))
    with pytest.raises(StartError) as caught:
        await agent.start()
    await agent.stop()
    assert caught.value.exit_code == EXIT_CONFIG


async def test_signed_start_then_tampering_and_rollback_keep_the_last_good_revision(
    stack_dir: tuple[DevStack, Path, Path, dict[str, Any]],
) -> None:
    stack, config, key, document = stack_dir
    sign(config, key, 2)
    agent = Agent(AgentOptions(config_path=str(config), shutdown_grace=1, reload_poll_interval=600))
    await agent.start()
    try:
        async with asyncio.timeout(10):
            await stack.relay.wait_for_listeners(stack.hc, 2)
        good = agent.runtime().revision
        # Tampered: a new grant added after signing.
        document["targets"]["erp"]["operations"].append(
            {"name": "grab-all", "methods": ["GET"], "paths": ["/admin/**"]}
        )
        write(config, document)
        assert await agent.reload() is False
        assert agent.runtime().revision == good
        # Re-signed properly at a newer epoch: accepted.
        sign(config, key, 3)
        assert await agent.reload() is True
        newer = agent.runtime().revision
        assert newer != good
        # Rolled back: the old content signed again at an older epoch is refused.
        document["targets"]["erp"]["operations"].pop()
        write(config, document)
        sign(config, key, 1)
        assert await agent.reload() is False
        assert agent.runtime().revision == newer
        async with stack.saas() as saas:
            response, _ = await saas.request("GET", "erp", "/admin/users")
        assert response.status == 200
    finally:
        await agent.stop()
