"""``gateway status`` beside a running agent: the revision it runs, its live state, and after a
rejected reload both the revision that still serves and the reload error."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from gateway import eventloop
from gateway.devkit.stack import STATE_DIR, DevStack
from gateway.observability.health import ENDPOINT_FILE
from gateway.service import Agent, AgentOptions

pytestmark = pytest.mark.asyncio


@dataclass
class Result:
    """What ``gateway status`` printed and returned."""

    returncode: int
    stdout: str


async def _status(config: Path, *extra: str) -> Result:
    # A subprocess the event loop waits for: the agent runs in this loop and must answer /readyz.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "status",
        "-c",
        str(config),
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return Result(process.returncode, stdout.decode())


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Agent, Path]]:
    # The health endpoint listens on port 0 (DevStack's default): `status` finds the port the
    # agent got in the state directory, where the agent published it.
    async with DevStack() as stack:
        directory = tmp_path / "gw"
        config = stack.write_gateway_dir(directory)
        await stack.register_gateway(directory)
        # No reload on its own (it watches the file): the tests reload when they mean to.
        options = AgentOptions(config_path=str(config), shutdown_grace=1, reload_poll_interval=3600)
        agent = Agent(options)
        await agent.start()
        try:
            yield agent, config
        finally:
            await agent.stop()


async def test_the_agent_publishes_the_port_it_got_while_it_runs(
    running: tuple[Agent, Path],
) -> None:
    agent, config = running
    published = config.parent / STATE_DIR / ENDPOINT_FILE
    assert published.read_text() == f"127.0.0.1:{agent.health_port}\n"
    as_json = json.loads((await _status(config, "--format", "json")).stdout)
    assert as_json["agent"]["running"] is True
    await agent.stop()
    assert not published.exists()
    result = await _status(config)
    assert result.returncode == 0
    assert "agent       not running (nothing answers on 127.0.0.1:0)" in result.stdout


async def test_status_shows_the_running_revision(running: tuple[Agent, Path]) -> None:
    agent, config = running
    result = await _status(config)
    revision = agent.runtime().revision
    assert f"revision        {revision}" in result.stdout, result.stdout
    assert "another revision" not in result.stdout
    # The loop the agent serves on, read from the loop itself (the tests' own loop here).
    running_loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]
    assert f"event_loop      {running_loop}" in result.stdout, result.stdout
    page = generate_latest(agent.metrics.registry).decode()
    assert f'event_loop="{eventloop.in_use()}"' in page, page


async def test_status_after_a_rejected_reload(running: tuple[Agent, Path]) -> None:
    agent, config = running
    revision = agent.runtime().revision
    document = yaml.safe_load(config.read_text(encoding="utf-8"))
    document["targets"]["erp"]["port"] = "0443"  # a string: the schema refuses it
    config.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    assert not await agent.reload()
    result = await _status(config)
    assert result.returncode == 1
    assert "NOT VALID" in result.stdout
    assert f"revision        {revision}" in result.stdout, result.stdout
    assert "reload failed" in result.stdout
    assert "targets.erp.port" in result.stdout
    as_json = json.loads((await _status(config, "--format", "json")).stdout)
    assert as_json["config"]["valid"] is False
    assert as_json["agent"]["revision"] == revision
    assert "targets.erp.port" in as_json["agent"]["reload_error"]["error"]


async def test_status_says_when_the_file_differs_from_what_runs(
    running: tuple[Agent, Path],
) -> None:
    agent, config = running
    document = yaml.safe_load(config.read_text(encoding="utf-8"))
    document["limits"] = {"request_timeout_seconds": 9}
    config.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    result = await _status(config)
    assert "another revision: reload to apply the file" in result.stdout, result.stdout
    assert await agent.reload()
    assert "another revision" not in (await _status(config)).stdout


async def test_status_names_changed_settings_that_wait_for_a_restart(
    running: tuple[Agent, Path],
) -> None:
    # The verifier and its replay store are built at start: a reload serves the new revision
    # with the old signature window and store. Without a word, `status` would show the new
    # revision as if all of it ran (the operator who tightened max_age_seconds, or moved nonces
    # to a shared store for a second gateway, would believe it done).
    agent, config = running
    original = config.read_text(encoding="utf-8")
    document = yaml.safe_load(original)
    document["signatures"] = {"max_age_seconds": 20, "replay_store": {"kind": "sqlite"}}
    config.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    assert await agent.reload()
    result = await _status(config)
    waiting = "signatures.max_age_seconds, signatures.replay_store"
    assert (
        f"degraded: settings changed since start take effect at the next restart: {waiting}"
        in result.stdout
    ), result.stdout
    as_json = json.loads((await _status(config, "--format", "json")).stdout)
    assert as_json["agent"]["restart_needed"] == [
        "signatures.max_age_seconds",
        "signatures.replay_store",
    ]
    # Back to what the process started with: nothing waits any more.
    config.write_text(original, encoding="utf-8")
    assert await agent.reload()
    assert "restart" not in (await _status(config)).stdout


async def test_status_compares_the_policy_files_with_what_runs(
    running: tuple[Agent, Path],
) -> None:
    # A rollout that changes only Rego files leaves gateway.yaml's revision as it was: the
    # files are compared on their own, and files that would not load are named.
    agent, config = running
    policies = config.parent / "policies"
    extension = policies / "office_hours.rego"
    extension.write_text(
        'package gateway_extensions.office_hours\n\ndeny contains "closed" if { false }\n',
        encoding="utf-8",
    )
    changed = await _status(config)
    assert changed.returncode == 0, changed.stdout
    assert "another policy revision: reload to apply the policy files" in changed.stdout
    assert await agent.reload()
    applied = await _status(config)
    assert "another" not in applied.stdout, applied.stdout
    as_json = json.loads((await _status(config, "--format", "json")).stdout)
    assert as_json["policy"]["revision"] == as_json["agent"]["policy_revision"]
    # A module in the package reserved for the allow-list: a reload would be rejected.
    (policies / "mine.rego").write_text("package gateway.mine\n\nx := 1\n", encoding="utf-8")
    broken = await _status(config)
    assert broken.returncode == 1
    assert "policy files on disk NOT VALID: " in broken.stdout, broken.stdout
    assert "'package gateway.mine'" in broken.stdout
