"""Catalogue D 77 across gateways: a second gateway on the same Hybrid Connection.

Several gateways may listen on one Hybrid Connection (fault tolerance); the relay hands a request
to any of them. A signed request captured once must then be served at most once by all of them
together, which needs one replay memory for all: here a real ``redis-server`` started by the test.

Each test lets gateway "A" serve a request, starts a second gateway "B" on the same Hybrid
Connection (same registration, its own state directory, a fresh per-process cache, as a second
installation has), stops A so the relay can only reach B, and sends A's request again. With the
shared store B refuses it as a replay; with per-gateway memory (the weaker mode docs/security.md
lists) B serves it a second time, which is what the shared store is for.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from gateway.auth.replay import ReplayCache
from gateway.auth.replaystores import default_prefix
from gateway.service import Agent, AgentOptions
from tests.redisserver import PASSWORD, RedisServer
from tests.security.pipeline.conftest import LISTENERS, START_TIMEOUT, PipelineEnv
from tests.security.pipeline.test_d_signatures import send, sign

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    # A Hybrid Connection that has never accepted a request: no start barrier (what a fresh
    # store would otherwise impose for clock_skew_seconds, see gateway.auth.replaystores).
    client = redis.Redis(host="127.0.0.1", port=server.port, password=PASSWORD)
    client.set(default_prefix("hc-agent-1") + "barrier", repr(-1e300))
    client.close()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway_sections(redis_server: RedisServer) -> dict[str, Any]:
    secret = redis_server.directory / "password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    return {
        "limits": {"request_timeout_seconds": 3, "connect_timeout_seconds": 1},
        "signatures": {"replay_store": redis_server.replay_store({"file": str(secret)})},
    }


def second_gateway(env: PipelineEnv, directory: Path, *, store: dict[str, Any] | None) -> Agent:
    """A copy of the registered gateway in ``directory``, with ``store`` as its replay store
    (``None``: keep the configured one), and a fresh per-process replay cache."""
    shutil.copytree(env.config.parent, directory)
    config = directory / env.config.name
    if store is not None:
        document = yaml.safe_load(config.read_text())
        document["signatures"]["replay_store"] = store
        config.write_text(yaml.safe_dump(document))
    ReplayCache.initialise(directory / "state")
    old = env.agent.options
    return Agent(
        AgentOptions(
            config_path=str(config),
            resolver=old.resolver,
            redirect=old.redirect,
            guard=old.guard,
            shutdown_grace=1,
            reload_poll_interval=600,
            engine_factory=old.engine_factory,
        )
    )


def handled_requests(agent: Agent) -> float:
    """Requests this gateway answered (any result)."""
    return sum(
        sample.value
        for metric in agent.metrics.registry.collect()
        for sample in metric.samples
        if sample.name == "gateway_requests_total"
    )


async def hand_over(env: PipelineEnv, successor: Agent) -> None:
    """Start ``successor`` beside the current gateway, then stop the current one."""
    await successor.start()
    async with asyncio.timeout(START_TIMEOUT):
        await env.stack.relay.wait_for_listeners(env.stack.hc, 2 * LISTENERS, at_least=True)
    previous, env.agent = env.agent, successor
    await previous.stop()
    async with asyncio.timeout(START_TIMEOUT):
        await env.stack.relay.wait_for_listeners(env.stack.hc, LISTENERS)


async def test_D77_second_gateway_on_the_hc_refuses_a_replay_with_the_shared_store(
    env: PipelineEnv, tmp_path: Path
) -> None:
    headers = sign(env)
    assert (await send(env, headers))[0] == 200
    await hand_over(env, second_gateway(env, tmp_path / "b", store=None))
    assert await send(env, headers) == (401, "replay")
    env.forwarded_once()
    # The second gateway serves new requests: the store refuses replays, not traffic.
    assert (await send(env, sign(env)))[0] == 200


async def test_D77_per_gateway_memory_serves_the_replay_twice(
    env: PipelineEnv, tmp_path: Path
) -> None:
    headers = sign(env)
    assert (await send(env, headers))[0] == 200
    await hand_over(env, second_gateway(env, tmp_path / "c", store={"kind": "memory"}))
    # The weaker mode: the second gateway has no memory of the first one's nonces.
    assert (await send(env, headers))[0] == 200
    assert len(env.erp.arrivals) == 2


async def test_replay_store_down_is_503_and_recovers(
    env: PipelineEnv, redis_server: RedisServer, tmp_path: Path
) -> None:
    # The current gateway uses the shared store (the previous test may have left a memory one).
    await hand_over(env, second_gateway(env, tmp_path / "d", store=None))
    redis_server.stop()
    try:
        assert await send(env, sign(env)) == (503, "replay_store_unavailable")
        env.assert_never_forwarded()
    finally:
        redis_server.start()
    assert (await send(env, sign(env)))[0] == 200


async def test_same_request_to_three_live_gateways_at_once_is_served_once(
    env: PipelineEnv, tmp_path: Path
) -> None:
    # Three gateways listening together on the HC (the relay picks one per request); copies of
    # one signed request sent concurrently race for the same nonce in the shared store.
    await hand_over(env, second_gateway(env, tmp_path / "e", store=None))
    others = [second_gateway(env, tmp_path / name, store=None) for name in ("f", "g")]
    try:
        for other in others:
            await other.start()
        async with asyncio.timeout(START_TIMEOUT):
            await env.stack.relay.wait_for_listeners(env.stack.hc, 3 * LISTENERS)
        headers = sign(env)
        answers = await asyncio.gather(*(send(env, headers) for _ in range(12)))
        assert sorted(answers).count((401, "replay")) == 11, answers
        assert [status for status, _ in answers].count(200) == 1
        env.forwarded_once()
        # The race really was between gateways: more than one of them was handed a copy.
        handled = [handled_requests(agent) for agent in (env.agent, *others)]
        assert sum(1 for count in handled if count) >= 2, handled
    finally:
        for other in others:
            await other.stop()
