"""Issue 14 section 3: several gateways, each with workers, on one Hybrid Connection, under load
and faults, with the replay memory in a real ``redis-server`` they share.

Three installations of one gateway id (each its own directory, state, key pair and
``gateway run`` process tree with 2 workers; 12 listeners) listen on the emulator's Hybrid
Connection, which spreads requests over all of them at random. The proofs:

- the same signed request sent to all of them at once is served exactly once;
- a worker killed (SIGKILL) mid-load, a gateway stopped (SIGTERM) mid-load and a gateway whose
  supervisor is killed (SIGKILL) mid-load: every request gets an answer - served by the worker
  that accepted it, or a clear error: the relay's 504 "did not respond in the required time" for
  a request a killed worker held (Azure answers it after its 60 s response deadline,
  hybrid-connections-protocol section 5.1; the emulator after 25 s here, or at once when the
  test brings that deadline forward for a worker it killed), its 502 when the
  listener's connection was lost, and 503 ``draining`` from a gateway on its way out - and no
  request reaches the target twice; a served one reached it exactly once;
- Redis restarting: signed requests are refused 503 ``replay_store_unavailable`` while it is down
  (nothing forwarded) and served again once it is back, without touching the gateways.

Outcomes only: nothing here depends on how fast the machine is, and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from gateway.cli import main
from tests.integration.workers.harness import START_TIMEOUT, Fleet, Gateway, Outcome

# Tens of seconds: started first in a parallel run (tests/conftest.py).
pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

GATEWAYS = 3
WORKERS = 2
LISTENERS = GATEWAYS * WORKERS * 2
# What a SaaS may see besides 200 when a listener goes away under it (see the module docstring).
CLEAR_ERRORS = frozenset({502, 503, 504})
# The relay's response deadline for this test (Azure: 60 s), under the SaaS client's 30 s.
RELAY_DEADLINE = 25.0


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def fleet(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fleet]:
    async with Fleet(tmp_path_factory.mktemp("fleet"), workers=WORKERS) as fleet:
        fleet.stack.relay.response_timeout = RELAY_DEADLINE
        for _ in range(GATEWAYS):
            await fleet.add(GATEWAYS)
        await asyncio.gather(*(gateway.start() for gateway in fleet.gateways))
        for gateway in fleet.gateways:
            await gateway.wait_ready(WORKERS)
        async with asyncio.timeout(START_TIMEOUT):
            await fleet.stack.relay.wait_for_listeners(fleet.stack.hc, LISTENERS)
        yield fleet


def assert_nothing_lost_or_doubled(fleet: Fleet, outcome: Outcome) -> None:
    """Every request answered; served ones reached the target once; none reached it twice."""
    assert outcome.errors == {}, outcome.errors  # an HTTP answer for each, none hung or cut
    assert set(outcome.count()) <= {200} | CLEAR_ERRORS, outcome.count()
    for request_id, status in outcome.statuses.items():
        arrived = fleet.arrivals(request_id)
        assert arrived <= 1, (request_id, arrived)
        if status == 200:
            assert arrived == 1, request_id
    for request_id, reason in outcome.reasons.items():
        if outcome.statuses[request_id] == 503:
            # The gateway's own 503 says why; the relay's says the listener is gone.
            assert reason in {"draining", ""}, (request_id, reason)


async def handled(gateway: Gateway) -> float:
    """Requests this gateway (all its workers) answered so far."""
    _, text = await gateway.get("metrics")
    total = 0.0
    for line in text.splitlines():
        if line.startswith("gateway_requests_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def load_when(
    fleet: Fleet, count: int, fault: Callable[[], None], *, killed: bool = False
) -> Outcome:
    """``count`` requests the target holds half a second each, 16 at a time; ``fault`` runs
    once the first of them has reached the target (so requests are in flight in every worker).

    ``killed``: the fault kills a process, so the requests it held can only end with the relay's
    504 at the response deadline; the relay is told to bring that deadline forward for requests
    whose listener has gone (the status is the same, the test does not wait it out)."""
    fleet.stack.targets.http_arrived.clear()
    async with fleet.saas() as saas:
        batch = asyncio.ensure_future(fleet.load(saas, count, in_flight=16, query="delay=0.5"))
        async with asyncio.timeout(START_TIMEOUT):
            await fleet.stack.targets.http_arrived.wait()
        fault()
        while killed and not batch.done():
            fleet.stack.relay.expire_orphans()
            await asyncio.wait({batch}, timeout=0.2)
        return await batch


async def test_the_same_request_to_every_gateway_is_served_once(fleet: Fleet) -> None:
    before = [await handled(g) for g in fleet.gateways]
    async with fleet.saas() as saas:
        request_id, first, headers = await fleet.send(saas)
        assert first is not None
        assert first.status == 200
        copies = await asyncio.gather(
            *(fleet.send(saas, request_id, signed_headers=headers) for _ in range(30))
        )
    answers = [(r.status, r.headers.get("x-gateway-reason")) for _, r, _ in copies if r]
    assert answers == [(401, "replay")] * 30
    assert fleet.arrivals(request_id) == 1
    # The copies really went to several gateways (the relay picks a listener at random).
    after = [await handled(g) for g in fleet.gateways]
    reached = sum(1 for old, new in zip(before, after, strict=True) if new > old)
    assert reached >= 2, (before, after)


async def test_a_worker_killed_mid_load_loses_and_doubles_nothing(fleet: Fleet) -> None:
    gateway = fleet.gateways[0]
    pids = await gateway.worker_pids()

    outcome = await load_when(fleet, 120, lambda: os.kill(pids[2], signal.SIGKILL), killed=True)
    assert_nothing_lost_or_doubled(fleet, outcome)
    assert outcome.count()[200] >= 60  # the other five workers kept serving
    state = await gateway.wait_ready(WORKERS)
    worker = next(w for w in state["workers"] if w["worker"] == 2)
    assert worker["pid"] != pids[2]
    assert worker["restarts"] == 1
    async with asyncio.timeout(START_TIMEOUT):
        await fleet.stack.relay.wait_for_listeners(fleet.stack.hc, LISTENERS)


async def test_a_redis_restart_is_survived(fleet: Fleet) -> None:
    assert fleet.redis is not None
    fleet.redis.stop()
    try:
        async with fleet.saas() as saas:
            down = await fleet.load(saas, 12)
    finally:
        fleet.redis.start()
    # Fail closed: no signed request is served without the shared memory.
    assert down.count() == {503: 12}, down.count()
    assert set(down.reasons.values()) == {"replay_store_unavailable"}
    assert all(fleet.arrivals(request_id) == 0 for request_id in down.statuses)
    # Back by itself: every gateway reconnects on its next request (no restart, no reload).
    async with fleet.saas() as saas:
        up = await fleet.load(saas, 36)
    assert up.count() == {200: 36}, up.count()
    events = [e.get("event") for g in fleet.gateways for e in g.log_events()]
    assert "replay_store_unavailable" in events
    assert "replay_store_recovered" in events


async def test_a_gateway_stopped_mid_load_drains(fleet: Fleet) -> None:
    gateway = fleet.gateways[1]
    pids = await gateway.worker_pids()

    # As Azure may: the relay goes on routing to each closing listener after its close frame
    # arrived (one request or stream each); those are answered 503 draining over their
    # rendezvous addresses by the worker on its way out, never left to the relay's 504.
    fleet.stack.relay.hold_closes(1)
    try:
        outcome = await load_when(fleet, 120, lambda: gateway.signal(signal.SIGTERM))
    finally:
        fleet.stack.relay.hold_closes(0)
    assert await gateway.wait() == 0
    assert_nothing_lost_or_doubled(fleet, outcome)
    # A drained worker finished what it had: every request that reached the target was
    # answered 200. The relay may still answer 502 for a request it handed
    # to a listener in the instant that listener closed; that request never reached a worker.
    assert outcome.count()[504] == 0, outcome.count()
    reached = [rid for rid in outcome.statuses if fleet.arrivals(rid) == 1]
    assert all(outcome.statuses[rid] == 200 for rid in reached)
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert main(["audit", "verify", str(gateway.directory)]) == 0


async def test_a_gateway_whose_supervisor_is_killed_drains_its_workers(fleet: Fleet) -> None:
    gateway = fleet.gateways[2]
    pids = await gateway.worker_pids()

    outcome = await load_when(fleet, 120, lambda: gateway.signal(signal.SIGKILL))
    assert await gateway.wait() == -signal.SIGKILL
    assert_nothing_lost_or_doubled(fleet, outcome)
    # The orphaned workers noticed (their control channel closed), drained and exited.
    async with asyncio.timeout(START_TIMEOUT):
        await fleet.stack.relay.wait_for_listeners(fleet.stack.hc, WORKERS * 2)
    for pid in pids.values():
        await _gone(pid)
    gone = [e for e in gateway.log_events() if e.get("event") == "supervisor_gone"]
    assert sorted(e["worker"] for e in gone) == [1, 2]


async def _gone(pid: int) -> None:
    async with asyncio.timeout(START_TIMEOUT):
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            await asyncio.sleep(0.1)
