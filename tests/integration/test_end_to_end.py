"""The whole agent on loopback: relay emulator -> gateway -> sample targets, with a registered
identity, real mTLS to the control-plane simulator, real Rego, real signatures.

Each case asserts what the SaaS got AND what the on-prem target received (nothing, for every
refused request).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from gateway.devkit.stack import DevStack
from gateway.service import Agent, AgentOptions

pytestmark = pytest.mark.asyncio


@dataclass
class Running:
    stack: DevStack
    agent: Agent
    config: Path


async def register_gateway(stack: DevStack, directory: Path) -> Path:
    config = stack.write_gateway_dir(directory)
    await stack.register_gateway(directory)
    return config


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    async with DevStack() as stack:
        config = await register_gateway(stack, tmp_path / "gw")
        agent = Agent(
            AgentOptions(config_path=str(config), shutdown_grace=2, reload_poll_interval=0.2)
        )
        await agent.start()
        try:
            async with asyncio.timeout(10):
                await stack.relay.wait_for_listeners(stack.hc, 2)
            yield Running(stack, agent, config)
        finally:
            await agent.stop()


async def test_allowed_read_is_forwarded_once(running: Running) -> None:
    async with running.stack.saas() as saas:
        response, _ = await saas.request("GET", "erp", "/api/accounts/17", query="expand=groups")
    assert response.status == 200, response.body
    assert json.loads(response.body)["path"] == "/api/accounts/17?expand=groups"
    [received] = running.stack.targets.http_requests
    assert received.path_qs == "/api/accounts/17?expand=groups"
    # Signatures, relay headers and anything not allow-listed stay on the gateway.
    assert not {"signature", "signature-input", "x-gateway-id"} & {
        k.lower() for k in received.headers
    }
    # The relay passes the sender's Host on (the emulator does, as Azure's examples show); the
    # target sees its own host only.
    hosts = [value for name, value in received.headers.items() if name.lower() == "host"]
    assert hosts == [f"127.0.0.1:{running.stack.targets.http_port}"]


@pytest.mark.parametrize(
    ("method", "selector", "path", "status", "reason"),
    [
        ("POST", "erp", "/api/accounts/17", 403, None),
        ("GET", "erp", "/api/../admin", 400, "dot_segment"),
        ("GET", "erp", "/api/%2e%2e/admin", 400, "encoded_dot_segment"),
        ("GET", "erp", "/apiadmin", 403, None),
        ("GET", "payroll", "/api/accounts", 403, "unknown_target"),
        ("GET", "127.0.0.1:1", "/api/accounts", 403, "target_not_allowed"),
        ("GET", "directory", "/", 403, "stream_only_target"),
    ],
)
async def test_refused_requests_never_reach_the_target(
    running: Running, method: str, selector: str, path: str, status: int, reason: str | None
) -> None:
    async with running.stack.saas() as saas:
        response, _ = await saas.request(method, selector, path)
    assert response.status == status, response.body
    if reason:
        assert response.reason_code == reason
    assert running.stack.targets.http_requests == []


async def test_unsigned_and_replayed_requests_are_refused(running: Running) -> None:
    async with running.stack.saas(signed=False) as unsigned:
        response, _ = await unsigned.request("GET", "erp", "/api/accounts")
    assert (response.status, response.reason_code) == (401, "missing_signature")
    async with running.stack.saas() as saas:
        first, sent = await saas.request("GET", "erp", "/api/accounts")
        replay, _ = await saas.request("GET", "erp", "/api/accounts", signed_headers=sent)
    assert first.status == 200
    assert (replay.status, replay.reason_code) == (401, "replay")
    assert len(running.stack.targets.http_requests) == 1


async def test_large_response_goes_over_rendezvous(running: Running) -> None:
    async with running.stack.saas() as saas:
        response, _ = await saas.request("GET", "erp", "/api/blob", query="size=300000")
    assert response.status == 200
    assert response.body == b"b" * 300000


async def test_tcp_stream(running: Running) -> None:
    async with running.stack.saas() as saas:
        socket = await saas.stream("directory")
        try:
            await socket.send_bytes(b"bind cn=admin")
            message = await asyncio.wait_for(socket.receive(), 60)
        finally:
            await socket.close()
    assert message.type == aiohttp.WSMsgType.BINARY
    assert message.data == b"echo:bind cn=admin"
    assert running.stack.targets.tcp_bytes == [b"bind cn=admin"]


async def test_unsigned_stream_is_rejected_before_any_upstream_connection(running: Running) -> None:
    async with running.stack.saas(signed=False) as saas:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await saas.stream("directory")
    assert caught.value.status == 401
    assert running.stack.targets.tcp_bytes == []


async def test_hot_reload_grants_a_new_operation(running: Running) -> None:
    async with running.stack.saas() as saas:
        before, _ = await saas.request("GET", "erp", "/api/groups")
        running.stack.write_gateway_dir(
            running.config.parent,
            extra_operations=[
                {"name": "read-groups", "methods": ["GET"], "paths": ["/api/groups"]}
            ],
        )
        # Reload directly rather than waiting for the file watcher: no timing in the test.
        assert await running.agent.reload() is True
        after, _ = await saas.request("GET", "erp", "/api/groups")
    assert before.status == 403
    assert after.status == 200


async def test_invalid_reload_keeps_the_last_good_revision(running: Running) -> None:
    good = running.agent.runtime().revision
    running.config.write_text("version: 1\ntargets: [broken\n", encoding="utf-8")
    assert await running.agent.reload() is False
    assert running.agent.runtime().revision == good
    async with running.stack.saas() as saas:
        response, _ = await saas.request("GET", "erp", "/api/accounts")
    assert response.status == 200


async def test_ready_while_listeners_are_online(running: Running) -> None:
    state = running.agent.readiness()
    assert state.ready, state.reasons
    assert state.details["listeners_online"] == 2


async def test_stop_drains_in_flight_requests_and_refuses_new_ones(running: Running) -> None:
    async with running.stack.saas() as saas:
        slow = asyncio.create_task(saas.request("GET", "erp", "/api/accounts", query="delay=1"))
        await asyncio.wait_for(running.stack.targets.http_arrived.wait(), 60)
        stopping = asyncio.create_task(running.agent.stop())
        # One turn of the loop: the stop marks the listener draining before it first waits.
        await asyncio.sleep(0)
        late, _ = await saas.request("GET", "erp", "/api/accounts/2")
        finished, _ = await slow
        await stopping
    # The request in flight when the stop began was answered by the target, not cut off.
    assert finished.status == 200
    assert json.loads(finished.body)["path"] == "/api/accounts?delay=1"
    # New work during the drain is refused by the gateway, with the reason.
    assert (late.status, late.reason_code) == (503, "draining")
    assert json.loads(late.body)["error"] == "draining"
    assert [r.path_qs for r in running.stack.targets.http_requests] == ["/api/accounts?delay=1"]


async def test_the_file_watch_applies_a_rollout_of_policy_files_only(running: Running) -> None:
    """A GitOps rollout that changes only Rego files is applied by the file watch, as one of
    gateway.yaml is: no SIGHUP needed."""
    before = running.agent.runtime().engine.revision
    extension = running.config.parent / "policies" / "freeze.rego"
    extension.write_text(
        "package gateway_extensions.freeze\n\n"
        'deny contains "frozen" if input.path == "/api/accounts"\n',
        encoding="utf-8",
    )
    # The watch polls every 0.2 s and reloads a change once it settled: wait for the revision,
    # however long a busy machine takes.
    async with asyncio.timeout(60):
        while running.agent.runtime().engine.revision == before:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    async with running.stack.saas() as saas:
        refused, _ = await saas.request("GET", "erp", "/api/accounts")
        other, _ = await saas.request("GET", "erp", "/api/accounts/17")
    assert refused.status == 403
    assert other.status == 200
