"""The decision log of a real run: chained, checkpoints signed with the gateway's identity key,
the signed head sent in the heartbeat, and ``gateway audit verify`` accepting exactly that log.

The whole agent runs on loopback (relay emulator, control-plane simulator over mTLS, sample
targets, real Rego, real request signatures).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import aiohttp
import pytest

from gateway.cli import main
from gateway.devkit.stack import DevStack, demo_config
from gateway.service import Agent, AgentOptions
from tests.integration.relay.listener_support import wait_until

pytestmark = pytest.mark.asyncio


class Sent(NamedTuple):
    """One request the SaaS sends."""

    method: str
    selector: str
    path: str
    query: str = ""
    body: bytes = b""


# Allowed, denied by policy, and refused before the policy.
TRAFFIC = [
    Sent("GET", "erp", "/api/accounts/17", "expand=groups&access_token=s3cret"),
    Sent("GET", "erp", "/api/accounts", body=b"x" * 100),
    Sent("POST", "erp", "/api/accounts/17", body=b"{}"),
    Sent("GET", "erp", "/api/blob"),
    Sent("DELETE", "erp", "/api/accounts/9"),
    Sent("GET", "erp", "/apiadmin"),
    Sent("GET", "erp", "/api/%2e%2e/admin"),
    Sent("GET", "payroll", "/api/accounts"),
]


@dataclass
class Recorded:
    """A finished run: its directory, decision log and the heads the control plane received."""

    directory: Path
    log: Path
    heads: list[dict[str, object]]
    statuses: list[int]


async def record_run(
    directory: Path,
    traffic: Sequence[Sent],
    *,
    logging: dict[str, object] | None = None,
    streams: Sequence[tuple[str, str]] = (),
) -> Recorded:
    """Run the agent, send ``traffic`` and open ``streams`` (selector, path) through the relay,
    stop, and return what was recorded.

    ``logging`` is added to the ``logging`` section of the demo configuration."""
    async with DevStack() as stack:
        document = demo_config(stack)
        document["logging"].update(logging or {})
        config = stack.write_gateway_dir(directory, document=document)
        await stack.register_gateway(directory)
        agent = Agent(
            AgentOptions(config_path=str(config), shutdown_grace=2, heartbeat_interval=0.2)
        )
        await agent.start()
        statuses = []
        try:
            async with asyncio.timeout(10):
                await stack.relay.wait_for_listeners(stack.hc, 2)
            async with stack.saas() as saas:
                for sent in traffic:
                    response, _ = await saas.request(
                        sent.method, sent.selector, sent.path, query=sent.query, body=sent.body
                    )
                    statuses.append(response.status)
                for selector, path in streams:
                    try:
                        socket = await saas.stream(selector, path)
                    except aiohttp.WSServerHandshakeError as refused:
                        statuses.append(refused.status)
                        continue
                    await socket.send_bytes(b"ping")
                    await socket.receive()
                    await socket.close()
                    statuses.append(101)
            # A heartbeat after the traffic carries a signed head covering it.
            await wait_until(
                lambda: any(
                    (h.body.get("audit_head") or {}).get("seq", 0) > len(statuses)
                    for h in stack.controlplane.heartbeats
                ),
                within=30,
            )
            # /readyz (and `gateway status`) show the head EmpowerID accepted last, and its file.
            reported = agent.readiness().details["audit_head"]
            accepted = {
                (h.body["audit_head"]["seq"], h.body["audit_head"]["hash"])
                for h in stack.controlplane.heartbeats
            }
            assert (reported["seq"], reported["hash"]) in accepted
            assert reported["log"] == str(directory / "decisions.jsonl")
        finally:
            await agent.stop()
        heads = [h.body["audit_head"] for h in stack.controlplane.heartbeats]
        # One process: no `worker` member, so a control plane on contract 1.0.0 accepts it.
        assert all("worker" not in h.body for h in stack.controlplane.heartbeats)
    return Recorded(directory, directory / "decisions.jsonl", heads, statuses)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    return asyncio.run(record_run(tmp_path_factory.mktemp("run"), TRAFFIC))


def decisions(log: Path) -> list[dict[str, object]]:
    records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    return [r for r in records if "decision_id" in r]


async def test_the_log_of_a_run_verifies_against_the_gateway_certificate(
    recorded: Recorded, capsys: pytest.CaptureFixture[str]
) -> None:
    [certificate] = sorted((recorded.directory / "state").glob("client-*.crt"))
    head = recorded.heads[-1]
    expect = f"{head['seq']}:{head['hash']}"
    assert head["alg"] == "ecdsa-sha256"
    code = main(
        [
            "audit",
            "verify",
            str(recorded.log),
            "--certificate",
            str(certificate),
            "--expect-head",
            expect,
            "--from-start",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "checkpoint signatures verified" in out
    # The log cut back to before the head that EmpowerID holds is shown incomplete.
    lines = recorded.log.read_bytes().splitlines(keepends=True)
    cut = recorded.directory / "cut.jsonl"
    cut.write_bytes(b"".join(lines[: int(str(head["seq"]))]))
    assert main(["audit", "verify", str(cut), "--expect-head", expect]) == 1
    assert "truncated" in capsys.readouterr().out


async def test_each_decision_holds_its_replay_input_and_no_secret(recorded: Recorded) -> None:
    records = decisions(recorded.log)
    assert len(records) == len(TRAFFIC)
    assert all(r["v"] == 2 for r in records)
    first = records[0]["input"]
    assert isinstance(first, dict)
    assert first["target"] == "/erp/api/accounts/17?expand=groups&access_token=***"
    assert first["method"] == "GET"
    assert first["keyid"] == records[0]["keyid"] is not None
    names = [name for name, _ in first["headers"]]
    assert "signature" in names
    text = recorded.log.read_text(encoding="utf-8")
    assert "s3cret" not in text
    assert "sig1=" not in text  # no signature value
