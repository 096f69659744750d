"""The OPA engine against the devkit OPA server on 127.0.0.1 (catalogue G 112, 113, 114, 116).

No OPA binary is available here; the devkit server speaks OPA's REST API over the embedded
evaluator, so these tests check the engine's protocol and its fail-closed behaviour.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.config import LoadedConfig, load
from gateway.devkit.opa_server import OpaServer
from gateway.policy.engine import POLICY_UNAVAILABLE, POLICY_UNDEFINED
from gateway.policy.loader import load_policies
from gateway.policy.opa import OpaEngine
from tests.eventloops import TIMER_SLACK
from tests.unit.policy.conftest import SHIPPED_POLICIES, config_text, request_input

# Every decision that must be answered has to come back within this, from an OPA server in the
# test's own process: a quarter of a second was too little on a busy two-core machine (the
# decision after G 116's late answer took 0.29 s once). G 116 waits it out once; OPA's delay
# there stays twice as long.
TIMEOUT = 1.0


@pytest.fixture
def loaded(tmp_path: Path) -> LoadedConfig:
    path = tmp_path / "gateway.yaml"
    path.write_text(config_text([SHIPPED_POLICIES]), encoding="utf-8")
    return load(path, check_host=False)


@pytest.fixture
async def opa() -> AsyncIterator[OpaServer]:
    async with OpaServer() as server:
        yield server


def _engine(loaded: LoadedConfig, url: str, *, push: bool = True) -> OpaEngine:
    return OpaEngine(
        load_policies(loaded),
        url=url,
        timeout=TIMEOUT,
        mode="enforce",
        cache=None,
        push=push,
        sync_timeout=1.0,
        retry_base=0.02,
        retry_cap=0.1,
    )


async def _wait_ready(engine: OpaEngine, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        # `ready` is a plain property (it backs /readyz); polling it is what a probe does.
        while not engine.ready:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_pushes_policy_and_data_and_decides(loaded: LoadedConfig, opa: OpaServer) -> None:
    engine = _engine(loaded, opa.url)
    await engine.start()
    try:
        assert engine.ready
        assert sorted(opa.policies) == ["gateway/gateway/authz.rego"]
        assert opa.data["gateway"]["revision"] == engine.revision
        allowed = await engine.decide(request_input())
        assert (allowed.allow, allowed.operation) == (True, "read-orders")
        denied = await engine.decide(request_input("DELETE"))
        assert denied.reasons == ("method_not_allowed",)
        assert opa.decisions == 2
    finally:
        await engine.close()


async def test_g112_unreachable_at_start_is_not_ready_and_denies_503(
    loaded: LoadedConfig,
) -> None:
    async with OpaServer() as server:
        url = server.url  # the port is closed once the block ends
    engine = _engine(loaded, url)
    await engine.start()
    try:
        assert not engine.ready
        # How fast the refusal comes is a benchmark's business (benchmarks/); the behaviour
        # is that the engine refuses with 503 instead of passing the request on.
        decision = await engine.decide(request_input())
        assert (decision.allow, decision.reasons, decision.status) == (
            False,
            (POLICY_UNAVAILABLE,),
            503,
        )
    finally:
        await engine.close()


async def test_g113_lost_while_running_then_recovers_by_itself(
    loaded: LoadedConfig, opa: OpaServer
) -> None:
    engine = _engine(loaded, opa.url)
    await engine.start()
    try:
        assert (await engine.decide(request_input())).allow
        await opa.go_down()
        for _ in range(3):
            decision = await engine.decide(request_input())
            assert decision.reasons == (POLICY_UNAVAILABLE,)
            assert decision.status == 503
        assert not engine.ready
        await opa.come_back(empty=True)  # a restarted OPA has lost what was pushed
        await _wait_ready(engine)
        assert (await engine.decide(request_input())).allow
        assert opa.data["gateway"]["revision"] == engine.revision
    finally:
        await engine.close()


async def test_g114_undefined_decision_is_403(loaded: LoadedConfig, opa: OpaServer) -> None:
    engine = _engine(loaded, opa.url)
    await engine.start()
    try:
        opa.undefined = True
        decision = await engine.decide(request_input())
        assert (decision.allow, decision.reasons, decision.status) == (
            False,
            (POLICY_UNDEFINED,),
            403,
        )
    finally:
        await engine.close()


async def test_g114_package_renamed_is_403(loaded: LoadedConfig, opa: OpaServer) -> None:
    engine = _engine(loaded, opa.url)
    await engine.start()
    try:
        # Someone replaced the module: the package the engine asks for no longer exists.
        for policy_id in list(opa.policies):
            await _delete_policy(opa, policy_id)
        decision = await engine.decide(request_input())
        assert decision.reasons == (POLICY_UNDEFINED,)
    finally:
        await engine.close()


async def _delete_policy(opa: OpaServer, policy_id: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.delete(f"{opa.url}/v1/policies/{policy_id}", timeout=aiohttp.ClientTimeout(5)),
    ):
        pass


async def test_server_error_is_503(loaded: LoadedConfig, opa: OpaServer) -> None:
    engine = _engine(loaded, opa.url)
    await engine.start()
    try:
        opa.fail_status = 500
        decision = await engine.decide(request_input())
        assert decision.reasons == (POLICY_UNAVAILABLE,)
    finally:
        await engine.close()


async def test_g116_slow_answer_is_503_after_the_timeout_and_loop_stays_free(
    loaded: LoadedConfig, opa: OpaServer
) -> None:
    engine = _engine(loaded, opa.url)
    await engine.start()
    try:
        opa.delay = 2 * TIMEOUT
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        started = time.monotonic()
        decision = await engine.decide(request_input())
        elapsed = time.monotonic() - started
        task.cancel()
        # Refused by the timeout (the answer, had it been awaited, allows): and not before the
        # timeout. How much later a busy machine gets there is not this test's business.
        assert decision.reasons == (POLICY_UNAVAILABLE,)
        assert elapsed >= TIMEOUT - TIMER_SLACK
        assert ticks >= 1  # the event loop kept running while the decision waited
        opa.delay = 0.0
        assert (await engine.decide(request_input())).allow  # the late answer was discarded
    finally:
        await engine.close()


async def test_expect_mode_checks_the_revision_and_never_pushes(
    loaded: LoadedConfig, opa: OpaServer
) -> None:
    engine = _engine(loaded, opa.url, push=False)
    await engine.start()
    try:
        assert not engine.ready
        assert opa.policies == {}
        assert (await engine.decide(request_input())).reasons == (POLICY_UNAVAILABLE,)
    finally:
        await engine.close()


# A decision that grants everything, for the revision it is given: what a server the gateway must
# not listen to would answer.
_GRANT_ALL = """package gateway.authz

decision := {"allow": true, "target": input.target, "operation": "anything", "reasons": [],
             "revision": data.gateway.revision}
"""


async def _load_rogue(rogue: OpaServer, revision: str) -> None:
    timeout = aiohttp.ClientTimeout(5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.put(f"{rogue.url}/v1/policies/rogue", data=_GRANT_ALL) as answer:
            assert answer.status == 200
        async with session.put(
            f"{rogue.url}/v1/data/gateway", json={"revision": revision}
        ) as answer:
            assert answer.status == 204


async def test_a_redirected_decision_is_not_followed_and_is_503(
    loaded: LoadedConfig, opa: OpaServer
) -> None:
    """OPA's Data API answers a query itself (https://www.openpolicyagent.org/docs/rest-api);
    a redirect would send the request's input to another server and take its word for the
    decision, so it is a fault, never followed."""
    engine = _engine(loaded, opa.url)
    await engine.start()
    try:
        async with OpaServer() as rogue:
            await _load_rogue(rogue, engine.revision)
            opa.redirect_to = rogue.url
            decision = await engine.decide(request_input("DELETE"))
            assert (decision.allow, decision.reasons, decision.status) == (
                False,
                (POLICY_UNAVAILABLE,),
                503,
            )
            assert rogue.decisions == 0  # the input never reached the other server
    finally:
        await engine.close()


async def test_an_oversized_answer_is_503_and_not_held(
    loaded: LoadedConfig, opa: OpaServer
) -> None:
    """A decision document is a few hundred bytes; an answer of megabytes (a misbehaving or
    hostile server) is refused past a bound instead of being read into memory whole."""
    engine = _engine(loaded, opa.url)
    await engine.start()
    try:
        opa.pad_bytes = 8 << 20
        decision = await engine.decide(request_input())
        assert (decision.allow, decision.reasons) == (False, (POLICY_UNAVAILABLE,))
        opa.pad_bytes = 0
        await _wait_ready(engine)
        assert (await engine.decide(request_input())).allow
    finally:
        await engine.close()


async def test_loading_opa_follows_no_redirect(loaded: LoadedConfig) -> None:
    """Pushing the policy and the allow-list, and checking the revision OPA holds, stay with the
    configured server: a redirect would hand the allow-list (hosts, ports, networks) to another
    server and let that server's answer make the engine ready."""
    async with OpaServer() as rogue, OpaServer() as opa:
        opa.redirect_to = rogue.url
        engine = _engine(loaded, opa.url)
        await engine.start()
        try:
            assert not engine.ready
            assert "HTTP 307" in engine.status
            assert (rogue.policies, rogue.data) == ({}, {})
            opa.redirect_to = None
            await _wait_ready(engine)
            assert (await engine.decide(request_input())).allow
        finally:
            await engine.close()
        # Nor in expect mode, where the revision check alone makes the engine ready.
        await _load_rogue(rogue, engine.revision)
        opa.redirect_to = rogue.url
        expecting = _engine(loaded, opa.url, push=False)
        await expecting.start()
        try:
            assert not expecting.ready
        finally:
            await expecting.close()
