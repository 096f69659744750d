"""/readyz tells the truth about the replay store: not ready while it cannot admit a nonce.

While the shared replay memory is down every signed request is answered 503
``replay_store_unavailable`` (fail closed); a readiness probe that said "ready" then would be a
green light over a gateway that serves nothing. A real ``redis-server`` is stopped and started
again under a running gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis

from gateway.auth.replaystores import default_prefix
from gateway.devkit.stack import DevStack, demo_config
from gateway.service import Agent, AgentOptions

from ..redisserver import PASSWORD, RedisServer


@pytest.fixture
async def stack() -> AsyncIterator[DevStack]:
    async with DevStack() as running:
        yield running


async def _readyz(agent: Agent) -> tuple[int, dict[str, object]]:
    url = f"http://127.0.0.1:{agent.health_port}/readyz"
    async with aiohttp.ClientSession() as session, session.get(url) as answer:
        return answer.status, await answer.json()


async def test_readyz_is_not_ready_while_the_replay_store_cannot_admit(
    stack: DevStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = RedisServer(tmp_path / "redis-data")
    server.directory.mkdir()
    server.start()
    # A Hybrid Connection that never accepted a request: no start barrier (see replaystores).
    with redis.Redis(host="127.0.0.1", port=server.port, password=PASSWORD) as client:
        client.set(default_prefix(stack.hc) + "barrier", repr(-1e300))
    monkeypatch.setenv("REDIS_PASSWORD", PASSWORD)
    document = demo_config(stack)
    store = server.replay_store({"env": "REDIS_PASSWORD"}, timeout_seconds=1)
    document["signatures"] = {**document.get("signatures", {}), "replay_store": store}
    directory = tmp_path / "gw"
    config = stack.write_gateway_dir(directory, document=document)
    await stack.register_gateway(directory)
    agent = Agent(AgentOptions(config_path=str(config), shutdown_grace=1))
    try:
        await agent.start()
        async with asyncio.timeout(15):
            await stack.relay.wait_for_listeners(stack.hc, 2)
        async with stack.saas() as saas:
            served, _ = await saas.request("GET", "erp", "/api/accounts")
        assert served.status == 200, served.body
        assert agent.readiness().ready

        server.stop()
        async with stack.saas() as saas:
            refused, _ = await saas.request("GET", "erp", "/api/accounts")
        assert (refused.status, refused.reason_code) == (503, "replay_store_unavailable")
        status, body = await _readyz(agent)
        assert status == 503
        reasons = body["reasons"]
        assert isinstance(reasons, list)
        [reason] = reasons
        assert reason.startswith("the replay store cannot admit nonces: ")
        assert PASSWORD not in reason

        # Back by itself: the next signed request is admitted, and the gateway is ready again.
        server.start()
        async with stack.saas() as saas:
            again, _ = await saas.request("GET", "erp", "/api/accounts")
        assert again.status == 200, again.body
        status, body = await _readyz(agent)
        assert (status, body["reasons"]) == (200, [])
    finally:
        await agent.stop()
        server.stop()
