"""What a worker leaves to its supervisor or to worker 1, shown with two in-process workers of
one installation (one state directory, one SQLite replay store, one decision-log name).

One renewer per host: two renewers would each replace the key pair the other just proved.
Worker 1 runs the renewal loop; worker 2 follows the identity on disk and reports the renewed
certificate's expiry. Each writes its own decision log file, and neither watches gateway.yaml
(the supervisor reloads them together).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.auth.replaystores import SQLITE_FILE
from gateway.auth.sqlitestore import SqliteReplayStore
from gateway.config import load
from gateway.devkit.stack import DevStack, demo_config
from gateway.identity import load_identity
from gateway.outbound.sessions import client_session
from gateway.service import Agent, AgentOptions, WorkerRole
from gateway.supervisor import serve_worker

from ..relay.listener_support import wait_until

START_TIMEOUT = 60


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[tuple[DevStack, Path, list[Agent]]]:
    async with DevStack() as stack:
        directory = tmp_path / "gw"
        document = demo_config(stack)
        document["workers"] = 2
        document["signatures"] = {"replay_store": {"kind": "sqlite"}}
        config = stack.write_gateway_dir(directory, document=document)
        await stack.register_gateway(directory)
        SqliteReplayStore.initialise(directory / "state" / SQLITE_FILE)
        agents = [
            Agent(
                AgentOptions(
                    config_path=str(config),
                    shutdown_grace=2,
                    heartbeat_interval=3600,
                    identity_poll_interval=0.1,
                    worker=WorkerRole(index, 2),
                )
            )
            for index in (1, 2)
        ]
        try:
            for agent in agents:
                await agent.start()
            async with asyncio.timeout(START_TIMEOUT):
                await stack.relay.wait_for_listeners(stack.hc, 4)
            yield stack, directory, agents
        finally:
            for agent in agents:
                await agent.stop()


async def test_only_worker_1_renews_and_worker_2_follows(
    workers: tuple[DevStack, Path, list[Agent]], caplog: pytest.LogCaptureFixture
) -> None:
    _, directory, (first, second) = workers
    names = [task.get_name() for task in asyncio.all_tasks()]
    assert names.count("renewal") == 1
    assert names.count("identity-follow") == 1
    assert names.count("config-watch") == 0  # the supervisor watches the file
    caplog.set_level(logging.INFO)
    assert await first.renew_certificate() is True
    renewed = load_identity(directory / "state").certificate
    expiry = renewed.not_valid_after_utc.timestamp()

    def followed() -> bool:
        return any(getattr(r, "event", None) == "identity_reloaded" for r in caplog.records)

    # Worker 2 notices the new certificate by its serial number (the simulator may issue it
    # with the same expiry second), and then reports its expiry.
    await wait_until(followed, within=START_TIMEOUT)
    (family,) = second.metrics.cert_expiry.collect()
    assert family.samples[0].value == expiry
    assert [r for r in caplog.records if getattr(r, "event", None) == "certificate_renewed"]
    # Each worker has its own health port for the supervisor, and its own decision log.
    assert first.health_port != second.health_port
    assert (directory / "decisions.jsonl.w1").exists()
    assert (directory / "decisions.jsonl.w2").exists()
    assert not (directory / "decisions.jsonl").exists()


async def _answer(reader: asyncio.StreamReader) -> dict[str, object]:
    async with asyncio.timeout(START_TIMEOUT):
        line = await reader.readline()
    assert line, "the worker closed its control channel"
    answer = json.loads(line)
    assert isinstance(answer, dict)
    return answer


async def test_a_worker_moves_only_on_commit_and_leaves_with_its_supervisor(
    tmp_path: Path,
) -> None:
    # One worker run by serve_worker, its supervisor played by the test over the socket pair:
    # the protocol gateway.supervisor speaks, with a real agent behind it.
    async with DevStack() as stack:
        directory = tmp_path / "gw"
        document = demo_config(stack)
        document["workers"] = 2
        document["signatures"] = {"replay_store": {"kind": "sqlite"}}
        config = stack.write_gateway_dir(directory, document=document)
        await stack.register_gateway(directory)
        SqliteReplayStore.initialise(directory / "state" / SQLITE_FILE)
        ours, theirs = socket.socketpair()
        options = AgentOptions(config_path=str(config), shutdown_grace=2, worker=WorkerRole(2, 2))
        worker = asyncio.ensure_future(serve_worker(options, theirs))
        reader, writer = await asyncio.open_connection(sock=ours)
        try:
            started = await _answer(reader)
            assert started["type"] == "started"
            first = started["revision"]

            def send(message: dict[str, object]) -> None:
                writer.write(json.dumps(message).encode() + b"\n")

            # Not the revision the supervisor checked: refused, nothing built is kept.
            send({"type": "prepare", "revision": "sha256:" + "0" * 64})
            refused = await _answer(reader)
            assert refused["ok"] is False
            assert "not sha256:000" in str(refused["error"])
            # A new file, prepared but then aborted (another worker could not): not served.
            document["limits"] = {"request_timeout_seconds": 9}
            stack.write_gateway_dir(directory, document=document)
            revision = load(str(config)).revision
            send({"type": "prepare", "revision": revision})
            prepared = await _answer(reader)
            assert (prepared["ok"], prepared["revision"]) == (True, revision)
            send({"type": "abort", "why": "worker 1 refused it"})
            assert (await _answer(reader))["type"] == "aborted"
            url = f"http://127.0.0.1:{started['health_port']}/readyz"
            async with client_session() as session, session.get(url) as response:
                state = await response.json()
            assert state["revision"] == first
            assert "worker 1 refused it" in state["reload_error"]["error"]
            # Prepared again and committed: served from now on.
            send({"type": "prepare", "revision": revision})
            assert (await _answer(reader))["ok"] is True
            send({"type": "commit"})
            committed = await _answer(reader)
            assert committed == {
                "type": "committed",
                "revision": revision,
                "policy_revision": prepared["policy_revision"],
            }
            assert revision != first
        finally:
            # The supervisor goes away: the worker drains and returns by itself.
            writer.close()
            async with asyncio.timeout(START_TIMEOUT):
                assert await worker == 0
