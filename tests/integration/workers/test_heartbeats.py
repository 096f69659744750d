"""Each worker of a gateway heartbeats as itself (control-plane contract 1.1.0, ``worker``).

A real ``gateway run`` with ``workers: 2`` against the devkit control plane: both workers'
heartbeats arrive told apart by ``worker`` (index and count), each with its own counters and the
head of its own decision-log hash chain (``NAME.w1``, ``NAME.w2``); ``gateway audit verify`` of
each chain reaches exactly the head that worker reported, and not the other worker's; the
simulator, which compares heads only within one worker's chain, raises no alarm; ``gateway
status`` shows each worker's heartbeat and head.

Fail closed without stopping: a control plane that validates heartbeats against contract 1.0.0
refuses the ``worker`` member (400). The workers keep serving, report the refused heartbeats as
degraded with the reason, and still refresh the request-signing keys, so a key rotation reaches
them.

Outcomes only: every wait is bounded, nothing depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from gateway.auth.replaystores import SQLITE_FILE
from gateway.auth.sqlitestore import SqliteReplayStore
from gateway.cli import main
from gateway.devkit.controlplane import Instance
from gateway.devkit.stack import DevStack, demo_config
from gateway.service import Agent, AgentOptions, WorkerRole
from tests.integration.relay.listener_support import wait_until
from tests.integration.workers.harness import START_TIMEOUT, Fleet, Gateway

pytestmark = pytest.mark.asyncio(loop_scope="module")

WORKERS = 2
# The least interval the contract lets the control plane ask for (HeartbeatAck): a head after the
# traffic arrives within the test rather than a minute later.
INTERVAL = 5


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def fleet(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fleet]:
    async with Fleet(tmp_path_factory.mktemp("heartbeats"), workers=WORKERS, store="sqlite") as f:
        f.stack.controlplane.heartbeat_interval = INTERVAL
        yield f


@contextlib.asynccontextmanager
async def running(fleet: Fleet) -> AsyncIterator[Gateway]:
    """One installation with two workers, started, ready and listening; stopped after."""
    gateway = await fleet.add(1)
    await gateway.start()
    try:
        await gateway.wait_ready(WORKERS)
        async with asyncio.timeout(START_TIMEOUT):
            await fleet.stack.relay.wait_for_listeners(fleet.stack.hc, WORKERS * 2)
        yield gateway
    finally:
        assert await gateway.stop() == 0


def lines(path: Path) -> int:
    """How many records the chain file holds (each line is one, seq 0 to n - 1)."""
    return len(path.read_bytes().splitlines())


def verify(chain: Path, certificates: list[Path], head: tuple[int, str]) -> int:
    """``gateway audit verify CHAIN --expect-head SEQ:HASH`` with the gateway's certificates."""
    argv = ["audit", "verify", str(chain), "--expect-head", f"{head[0]}:{head[1]}"]
    for certificate in certificates:
        argv += ["--certificate", str(certificate)]
    return main(argv)


async def test_each_worker_reports_itself_and_the_head_of_its_own_chain(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = fleet.stack.controlplane
    async with running(fleet) as gateway:
        async with fleet.saas() as saas:
            outcome = await fleet.load(saas, 40)
        assert outcome.count() == {200: 40}
        chains = {i: gateway.directory / f"decisions.log.w{i}" for i in range(1, WORKERS + 1)}
        # Every record is written before its answer: these are each chain's records so far,
        # and a heartbeat from now on carries a head at or past them.
        written = {i: lines(chain) for i, chain in chains.items()}
        # This installation is the one registered last (fleet.add registers each).
        instance = {i: Instance(fleet.stack.gateway_id, sim.registrations, i) for i in chains}
        await wait_until(
            lambda: all(
                sim.audit_heads.get(instance[i], (-1, ""))[0] >= written[i] for i in chains
            ),
            within=START_TIMEOUT,
        )
        heads = {i: sim.audit_heads[instance[i]] for i in chains}
        beats = {i: sim.instances[instance[i]].body for i in chains}
        await asyncio.to_thread(capsys.readouterr)
        assert await asyncio.to_thread(main, ["status", "-c", str(gateway.config)]) == 0
        status = capsys.readouterr().out
        state = await gateway.readyz()

    # Told apart: each names its worker and reports its own listeners and counters.
    for i in chains:
        assert beats[i]["worker"] == {"index": i, "count": WORKERS}
        assert beats[i]["listeners_online"] == 2
        assert beats[i]["status"] == "online"
    served = sum(beats[i]["counters"].get("requests_allowed", 0) for i in chains)
    assert served == 40
    assert heads[1] != heads[2]
    # Heads compared within their own chain only: nothing was cut, no alarm.
    assert sim.audit_alarms == []
    # Each worker's chain reaches the head that worker reported; the other worker's head is not
    # a point of it.
    certificates = sorted((gateway.directory / "state").glob("client-*.crt"))
    capsys.readouterr()
    assert verify(chains[1], certificates, heads[1]) == 0
    assert verify(chains[2], certificates, heads[2]) == 0
    assert verify(chains[1], certificates, heads[2]) == 1
    assert verify(chains[2], certificates, heads[1]) == 1
    capsys.readouterr()
    # Each worker's checkpoints name (and sign) it, so its files cannot pass as the other's.
    for i, chain in chains.items():
        checkpoints = [json.loads(line) for line in chain.read_bytes().splitlines()]
        assert {r["worker"] for r in checkpoints if r.get("kind") == "checkpoint"} == {i}
    # `gateway status` (and /readyz) show each worker's last heartbeat and the head EmpowerID
    # holds for it, in the form --expect-head takes.
    reported = {i: {(b.body["audit_head"]["seq"], b.body["audit_head"]["hash"])
                    for b in sim.heartbeats if b.worker == i and "audit_head" in b.body}
                for i in chains}  # fmt: skip
    for entry in state["workers"]:
        i = entry["worker"]
        assert "last_heartbeat" in entry
        assert "heartbeat_error" not in entry
        head = entry["audit_head"]
        assert (head["seq"], head["hash"]) in reported[i]
        assert head["log"] == str(chains[i])
        assert f"      audit head {head['seq']}:{head['hash']} ({chains[i]})" in status


async def test_a_control_plane_on_contract_1_0_does_not_stop_the_workers(fleet: Fleet) -> None:
    sim = fleet.stack.controlplane
    sim.faults.heartbeat_contract_1_0 = True
    heard, asked = len(sim.heartbeats), len(sim.requests)
    try:
        async with running(fleet) as gateway:
            state = await gateway.wait_state(
                lambda s: all("heartbeat_error" in w for w in s.get("workers", [])), START_TIMEOUT
            )
            async with fleet.saas() as saas:
                outcome = await fleet.load(saas, 10)
            assert outcome.count() == {200: 10}
    finally:
        sim.faults.heartbeat_contract_1_0 = False
    # Every heartbeat was sent and refused; the gateway served all along, ready but degraded,
    # and says why.
    assert any(r.path.endswith("/heartbeats") for r in sim.requests[asked:])
    assert sim.heartbeats[heard:] == []
    assert state["ready"] is True
    for entry in state["workers"]:
        assert entry["ready"] is True
        assert "invalid_request" in entry["heartbeat_error"]
        assert "contract 1.1.0" in entry["heartbeat_error"]
        assert "last_heartbeat" not in entry
    for i in range(1, WORKERS + 1):
        assert f"worker {i}: heartbeats to EmpowerID are failing" in state["degraded"]


async def test_refused_heartbeats_do_not_stop_the_signing_key_refresh(tmp_path: Path) -> None:
    # One worker in-process, refreshing its keys at every heartbeat: a key rotation must reach
    # it although the control plane refuses every heartbeat it sends.
    async with DevStack() as stack:
        directory = tmp_path / "gw"
        document = demo_config(stack)
        document["workers"] = WORKERS
        document["signatures"] = {"replay_store": {"kind": "sqlite"}}
        config = stack.write_gateway_dir(directory, document=document)
        await stack.register_gateway(directory)
        SqliteReplayStore.initialise(directory / "state" / SQLITE_FILE)
        sim = stack.controlplane
        sim.faults.heartbeat_contract_1_0 = True
        agent = Agent(
            AgentOptions(
                config_path=str(config),
                shutdown_grace=2,
                heartbeat_interval=0.2,
                key_refresh_interval=0.0,
                worker=WorkerRole(2, WORKERS),
            )
        )
        await agent.start()
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await stack.relay.wait_for_listeners(stack.hc, 2)
            await wait_until(
                lambda: "heartbeat_error" in agent.readiness().details, within=START_TIMEOUT
            )
            sim.rotate_signing_key()
            rotated = len(sim.requests)

            def refreshed() -> bool:
                # A heartbeat sent after the key fetch: the fetched keys are pinned by then.
                calls = [r.path.rsplit("/", 1)[-1] for r in sim.requests[rotated:]]
                return (
                    "signing-keys" in calls and "heartbeats" in calls[calls.index("signing-keys") :]
                )

            await wait_until(refreshed, within=START_TIMEOUT)
            async with stack.saas() as saas:
                response, _ = await saas.request("GET", "erp", "/api/accounts/17")
            assert response.status == 200
            state = agent.readiness()
        finally:
            await agent.stop()
    assert state.ready
    assert "heartbeats to EmpowerID are failing" in state.details["degraded"]
    assert "worker 2 of 2" in state.details["heartbeat_error"]
    assert sim.heartbeats == []
