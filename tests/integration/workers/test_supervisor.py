"""``gateway run`` with two workers: one real process tree on the relay emulator.

The supervisor starts both workers, each with its own listeners; the relay spreads requests over
all four listeners; ``/readyz`` and ``/metrics`` answer for both on one port; each worker keeps
its own decision log chain; SIGHUP moves both workers to a valid file together and keeps both on
the last good revision when the file is bad; a killed worker is restarted; SIGTERM drains both.
The replay store is SQLite (one host, no network service).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from gateway import eventloop
from gateway.cli import main
from gateway.config import load
from gateway.devkit.stack import STATE_DIR
from gateway.gitops.signing import SIGNATURE_SUFFIX, generate_key, load_private_key, sign_config
from gateway.observability.health import ENDPOINT_FILE
from tests.integration.workers.harness import START_TIMEOUT, Fleet, Gateway

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def fleet(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fleet]:
    async with Fleet(tmp_path_factory.mktemp("workers"), workers=2, store="sqlite") as fleet:
        yield fleet


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gateway(fleet: Fleet) -> AsyncIterator[Gateway]:
    gateway = await fleet.add(1)
    await gateway.start()
    await gateway.wait_ready(2)
    yield gateway
    await gateway.stop()


def _samples(text: str, name: str) -> dict[str, float]:
    """``worker`` label -> summed value of the samples of ``name``."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(rf"{name}(?:\{{(.*)\}})? (\S+)$", line)
        if match is None:
            continue
        worker = re.search(r'worker="(\d+)"', match[1] or "")
        key = worker[1] if worker else ""
        found[key] = found.get(key, 0.0) + float(match[2])
    return found


def _draining(gateway: Gateway) -> set[int]:
    """The workers that logged the start of their drain."""
    return {
        e["worker"] for e in gateway.log_events() if e.get("event") == "draining" and "worker" in e
    }


def _unix_sockets(gateway: Gateway) -> int:
    """How many Unix-domain sockets the supervisor holds (the workers' control channels and the
    event loop's own wake-up pair)."""
    assert gateway.process is not None
    unix = {line.split()[6] for line in Path("/proc/net/unix").read_text().splitlines()[1:]}
    held = 0
    for fd in Path(f"/proc/{gateway.process.pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:[") and target[8:-1] in unix:
                held += 1
    return held


async def test_two_workers_serve_and_answer_as_one_gateway(fleet: Fleet, gateway: Gateway) -> None:
    async with asyncio.timeout(START_TIMEOUT):
        await fleet.stack.relay.wait_for_listeners(fleet.stack.hc, 4)
    async with fleet.saas() as saas:
        outcome = await fleet.load(saas, 40)
    assert outcome.count() == {200: 40}
    state = await gateway.readyz()
    assert state["ready"] is True
    assert state["workers_configured"] == 2
    assert state["listeners_online"] == 4
    assert {w["revision"] for w in state["workers"]} == {state["revision"]}
    assert len({w["pid"] for w in state["workers"]}) == 2
    # The supervisor picked the loop (event_loop: auto) and started every worker on it.
    assert state["event_loop"] == eventloop.pick("auto").describe()
    assert {w["event_loop"] for w in state["workers"]} == {state["event_loop"]}
    status, text = await gateway.get("metrics")
    assert status == 200
    served = _samples(text, "gateway_requests_total")
    # Each worker's counters under its own label; together, every request once.
    assert set(served) == {"1", "2"}, served
    assert sum(served.values()) == 40
    assert all(value > 0 for value in served.values()), served  # the relay used both
    assert _samples(text, "gateway_workers_running") == {"": 2.0}


async def test_status_lists_every_worker(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    pids = await gateway.worker_pids()
    assert main(["status", "-c", str(gateway.config)]) == 0
    out = capsys.readouterr().out
    assert "workers         2 of 2 ready" in out
    assert f"event_loop      {eventloop.pick('auto').describe()}" in out
    for index, pid in pids.items():
        assert f"worker {index}: pid {pid}, ready, 2 listeners, 0 restarts" in out


async def test_a_bad_file_keeps_every_worker_on_the_last_good_revision(
    fleet: Fleet, gateway: Gateway
) -> None:
    before = await gateway.readyz()
    original = gateway.config.read_text()
    # A timeout above the relay's deadline: the supervisor's check refuses the file.
    fleet.rewrite(gateway, {"workers": 2, "limits": {"request_timeout_seconds": 99}})
    gateway.signal(signal.SIGHUP)
    state = await gateway.wait_state(lambda s: "reload_error" in s)
    assert state["revision"] == before["revision"]
    assert {w["revision"] for w in state["workers"]} == {before["revision"]}
    assert "request_timeout_seconds" in state["reload_error"]["error"]
    assert any("reload was rejected" in item for item in state["degraded"])
    async with fleet.saas() as saas:
        assert (await fleet.load(saas, 6)).count() == {200: 6}
    gateway.config.write_text(original)


async def test_an_unsigned_file_is_refused_by_the_supervisor_with_its_reason(
    fleet: Fleet, gateway: Gateway
) -> None:
    # The file now requires a release signature and has none. The supervisor verifies it with
    # the workers' own check (check_release), so it refuses the reload itself and says why;
    # no worker is asked to prepare it, and both keep serving the running revision.
    before = await gateway.readyz()
    original = gateway.config.read_text()
    document = fleet.document(1)
    document["config_signature"] = {"required": True}
    fleet.stack.write_gateway_dir(gateway.directory, document=document)
    gateway.signal(signal.SIGHUP)
    state = await gateway.wait_state(
        lambda s: "signature" in (s.get("reload_error") or {}).get("error", "")
    )
    assert state["revision"] == before["revision"]
    assert {w["revision"] for w in state["workers"]} == {before["revision"]}
    error = state["reload_error"]["error"]
    assert error.startswith("the new configuration is invalid"), error
    assert "refused it" not in error
    events = gateway.log_events()
    rejected = [e for e in events if e.get("event") == "reload_rejected" and "worker" not in e]
    assert any("signature" in str(e.get("message")) for e in rejected), rejected
    assert not [e for e in events if e.get("event") == "reload_failed" and "worker" in e]
    async with fleet.saas() as saas:
        assert (await fleet.load(saas, 6)).count() == {200: 6}
    gateway.config.write_text(original)


async def test_a_good_file_moves_every_worker_together(fleet: Fleet, gateway: Gateway) -> None:
    before = await gateway.readyz()
    document = fleet.document(1)
    document["limits"] = {"request_timeout_seconds": 15}
    fleet.stack.write_gateway_dir(gateway.directory, document=document)
    gateway.signal(signal.SIGHUP)
    state = await gateway.wait_state(lambda s: s.get("revision") != before["revision"])
    assert "reload_error" not in state
    assert {w["revision"] for w in state["workers"]} == {state["revision"]}
    events = [e for e in gateway.log_events() if e.get("event") == "reloaded"]
    # Each worker logged its own swap (with its number) and the supervisor the whole reload.
    assert {e.get("worker") for e in events} >= {1, 2, None}


async def test_a_killed_worker_is_restarted_and_the_others_serve(
    fleet: Fleet, gateway: Gateway
) -> None:
    pids = await gateway.worker_pids()
    revision = (await gateway.readyz())["revision"]
    channels = _unix_sockets(gateway)
    os.kill(pids[2], signal.SIGKILL)
    async with fleet.saas() as saas:
        # Worker 1 keeps serving while worker 2 is down (the relay drops its listeners).
        async with asyncio.timeout(START_TIMEOUT):
            await fleet.stack.relay.wait_for_listeners(fleet.stack.hc, 2)
        assert (await fleet.load(saas, 6)).count() == {200: 6}
        state = await gateway.wait_ready(2)
    worker = next(w for w in state["workers"] if w["worker"] == 2)
    assert worker["pid"] != pids[2]
    assert worker["restarts"] == 1
    assert worker["last_exit"] == -signal.SIGKILL
    assert worker["revision"] == revision
    # The dead worker's control channel was closed, not kept beside the new one.
    assert _unix_sockets(gateway) == channels
    exited = [e for e in gateway.log_events() if e.get("event") == "worker_exited"]
    assert [e["worker"] for e in exited] == [2]
    _, text = await gateway.get("metrics")
    assert _samples(text, "gateway_worker_restarts_total") == {"2": 1.0}


async def test_a_worker_restarted_after_a_bad_save_comes_back_on_the_running_revision(
    fleet: Fleet, gateway: Gateway
) -> None:
    # The operator saved an invalid gateway.yaml and sent no SIGHUP (the file watch's reload is
    # refused). A worker that dies now is started from the supervisor's snapshot of the running
    # revision, not from the file: it serves again instead of failing until the file is fixed.
    before = await gateway.readyz()
    restarts = next(w["restarts"] for w in before["workers"] if w["worker"] == 2)
    original = gateway.config.read_text()
    gateway.config.write_text(original + "limits: {request_timeout_seconds: 99}\n")
    pids = await gateway.worker_pids()
    os.kill(pids[2], signal.SIGKILL)

    def settled(state: dict[str, Any]) -> bool:
        worker = next(w for w in state["workers"] if w["worker"] == 2)
        # Back, or failed to start again (the next restart would be another attempt).
        return bool(
            worker["restarts"] > restarts + 1
            or (worker["restarts"] == restarts + 1 and worker["ready"] and worker["pid"] != pids[2])
        )

    state = await gateway.wait_state(settled)
    worker = next(w for w in state["workers"] if w["worker"] == 2)
    assert worker["restarts"] == restarts + 1, worker
    assert worker["ready"] is True
    assert worker["revision"] == before["revision"]
    assert state["revision"] == before["revision"]
    snapshot = gateway.directory / "state" / "supervisor-release.json"
    assert stat.S_IMODE(snapshot.stat().st_mode) == 0o600
    async with fleet.saas() as saas:
        async with asyncio.timeout(START_TIMEOUT):
            await fleet.stack.relay.wait_for_listeners(fleet.stack.hc, 4)
        assert (await fleet.load(saas, 6)).count() == {200: 6}
    gateway.config.write_text(original)


async def test_a_restarted_worker_serves_the_release_it_was_started_on(
    fleet: Fleet, tmp_path: Path
) -> None:
    # A signed release with a policy module of the operator's own, on a gateway of its own (its
    # anti-rollback state must not outlive the test). Then, on disk and without a reload, the
    # module changes and the signature file goes away. A worker that dies now comes back on the
    # release the other worker serves - configuration, policy and signature as the supervisor
    # captured them - not on the files as they are now (which would give it another policy, or
    # no signature at all).
    gateway = await fleet.add(1)
    module = gateway.directory / "policies" / "house.rego"
    module.write_text('package house\n\nlabel := "first"\n')
    module.chmod(0o644)
    public, _ = generate_key(tmp_path / "release.pem")
    fleet.rewrite(gateway, {"config_signature": {"required": True, "public_keys": [str(public)]}})
    signature = gateway.config.with_name(gateway.config.name + SIGNATURE_SUFFIX)
    loaded = load(gateway.config, check_host=False)
    signature.write_bytes(sign_config(loaded, load_private_key(tmp_path / "release.pem"), 1))
    await gateway.start()
    try:
        before = await gateway.wait_ready(2)
        assert {w["policy_revision"] for w in before["workers"]} == {before["policy_revision"]}
        module.write_text('package house\n\nlabel := "second"\n')
        signature.unlink()
        pids = await gateway.worker_pids()
        log = gateway.directory / "decisions.log.w2"
        seen = len(log.read_text().splitlines()) if log.exists() else 0
        os.kill(pids[2], signal.SIGKILL)

        def back(state: dict[str, Any]) -> bool:
            worker = next(w for w in state["workers"] if w["worker"] == 2)
            # Back, or failed (a worker that cannot start is restarted again and again).
            return bool(worker["restarts"] > 1 or (worker["ready"] and worker["pid"] != pids[2]))

        state = await gateway.wait_state(back)
        worker = next(w for w in state["workers"] if w["worker"] == 2)
        assert (worker["restarts"], worker["ready"]) == (1, True), worker
        assert worker["revision"] == before["revision"]
        assert worker["policy_revision"] == before["policy_revision"]
        assert (state["revision"], state["policy_revision"]) == (
            before["revision"],
            before["policy_revision"],
        )
        # What it decides, it decides under the captured policy: its records say so.
        records: list[dict[str, Any]] = []
        async with fleet.saas() as saas, asyncio.timeout(START_TIMEOUT):
            while not records:
                assert (await fleet.load(saas, 8)).count() == {200: 8}
                lines = log.read_text().splitlines()[seen:] if log.exists() else []
                records = [json.loads(line) for line in lines]
                records = [r for r in records if r.get("policy_revision")]
        assert {r["policy_revision"] for r in records} == {before["policy_revision"]}
        assert not [e for e in gateway.log_events() if e.get("event") == "reloaded"]
    finally:
        await gateway.stop()
        fleet.gateways.remove(gateway)


async def test_a_worker_refuses_a_snapshot_of_another_revision(gateway: Gateway) -> None:
    # What the supervisor hands over must be the revision it names, or the worker does not
    # start (exit 1) rather than serve a revision the others do not.
    snapshot = gateway.directory / "state" / "supervisor-release.json"
    ours, theirs = socket.socketpair()
    with ours, theirs:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "run",
            "-c",
            str(gateway.config),
            "--allow-root",
            "--worker",
            "1/2",
            "--worker-control",
            str(theirs.fileno()),
            "--worker-snapshot",
            str(snapshot),
            "--worker-revision",
            "sha256:" + "0" * 64,
            pass_fds=(theirs.fileno(),),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(START_TIMEOUT):
            output, _ = await process.communicate()
    assert process.returncode == 1, output
    assert b"the supervisor's snapshot is revision" in output


async def test_the_supervisor_publishes_the_port_it_got(gateway: Gateway) -> None:
    # observability.listen is 127.0.0.1:0: the supervisor wrote the port its endpoint got (the
    # workers' own endpoints are for the supervisor alone), and /readyz there is the whole
    # gateway's.
    published = gateway.directory / STATE_DIR / ENDPOINT_FILE
    assert published.read_text() == f"127.0.0.1:{gateway.published_port()}\n"
    state = await gateway.readyz()
    assert [w["worker"] for w in state["workers"]] == [1, 2]


async def test_sigterm_to_every_process_drains_every_worker(fleet: Fleet, gateway: Gateway) -> None:
    pids = await gateway.worker_pids()
    async with fleet.saas() as saas:
        # Requests the target holds for 2 s are in flight on both workers when SIGTERM comes to
        # each worker and to the supervisor, as from a service manager that signals the whole
        # service: each worker must take it as one stop, not as a second ("exit at once").
        fleet.stack.targets.http_arrived.clear()
        batch = asyncio.ensure_future(fleet.load(saas, 8, in_flight=8, query="delay=2"))
        async with asyncio.timeout(START_TIMEOUT):
            await fleet.stack.targets.http_arrived.wait()
        for pid in pids.values():
            os.kill(pid, signal.SIGTERM)
        # Each worker has taken its own SIGTERM (the kernel would merge two sent together).
        async with asyncio.timeout(START_TIMEOUT):
            while len(_draining(gateway)) < len(pids):  # noqa: ASYNC110 - another process's log
                await asyncio.sleep(0.05)
        gateway.signal(signal.SIGTERM)
        outcome = await batch
    assert await gateway.wait() == 0
    # Nothing answers at the published address any more, so it is withdrawn.
    assert not (gateway.directory / STATE_DIR / ENDPOINT_FILE).exists()
    # Every request that reached a worker before the stop was answered; later ones were
    # refused while draining (503) - none was lost.
    assert set(outcome.count()) <= {200, 503}, outcome
    assert outcome.count()[200] >= 1
    assert not [e for e in gateway.log_events() if e.get("event") == "forced_exit"]
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_each_worker_kept_its_own_verifiable_chain(gateway: Gateway) -> None:
    assert gateway.process is not None
    assert gateway.process.returncode is not None  # stopped by the test before
    logs = sorted(p.name for p in gateway.directory.glob("decisions.log*"))
    assert logs == ["decisions.log.w1", "decisions.log.w2"]
    assert main(["audit", "verify", str(gateway.directory)]) == 0


async def test_a_worker_that_cannot_start_sets_the_exit_code(fleet: Fleet, tmp_path: Path) -> None:
    # Never registered: every worker finds no identity (exit 4), and so does the gateway.
    document = fleet.document(1)
    config = fleet.stack.write_gateway_dir(tmp_path / "unregistered", document=document)
    gateway = Gateway("unregistered", config.parent, config)
    await gateway.start()
    assert await gateway.wait() == 4
    events = {e.get("event") for e in gateway.log_events()}
    assert "start_failed" in events
