"""Alerts, metrics, heartbeats and /readyz of a whole agent tell the truth.

The agent runs against the devkit relay emulator and control-plane simulator; the endpoints are
read over HTTP as an operator's monitoring would (``/metrics``, ``/readyz``) and the heartbeats as
the control plane received them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.devkit.stack import DevStack, demo_config
from gateway.identity import load_identity
from gateway.service import Agent, AgentOptions

from ..relay.listener_support import wait_until

START_TIMEOUT = 60


@dataclass
class Running:
    stack: DevStack
    agent: Agent
    directory: Path

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of ``/metrics``, keyed by name and sorted labels."""
        text = await self._get("/metrics")
        samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    async def readyz(self) -> dict[str, Any]:
        """The ``/readyz`` document."""
        document = json.loads(await self._get("/readyz"))
        assert isinstance(document, dict)
        return document

    async def _get(self, path: str) -> str:
        url = f"http://127.0.0.1:{self.agent.health_port}{path}"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return await response.text()


@pytest.fixture
def audit_file() -> str:
    """``logging.audit_file`` of the gateway (relative to its directory)."""
    return "decisions.jsonl"


@pytest.fixture
def decision_log() -> dict[str, Any]:
    """``logging.decision_log`` settings of the gateway (defaults: none)."""
    return {}


@pytest.fixture
async def running(
    tmp_path: Path, audit_file: str, decision_log: dict[str, Any]
) -> AsyncIterator[Running]:
    async with DevStack() as stack:
        directory = tmp_path / "gw"
        document = demo_config(stack)
        document["logging"]["audit_file"] = audit_file
        if decision_log:
            document["logging"]["decision_log"] = decision_log
        config = stack.write_gateway_dir(directory, document=document)
        # The log's directory exists at start (validate, check and run refuse it otherwise).
        (directory / audit_file).parent.mkdir(parents=True, exist_ok=True)
        await stack.register_gateway(directory)
        # The loop's first heartbeat goes out at start; the next one would be an hour later, so
        # the tests send theirs with Agent.heartbeat() and know exactly which ones went out.
        agent = Agent(
            AgentOptions(config_path=str(config), shutdown_grace=2, heartbeat_interval=3600)
        )
        await agent.start()
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await stack.relay.wait_for_listeners(stack.hc, 2)
            await wait_until(lambda: bool(stack.controlplane.heartbeats), within=START_TIMEOUT)
            yield Running(stack, agent, directory)
        finally:
            await agent.stop()


def _alert_records(caplog: pytest.LogCaptureFixture, code: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if getattr(r, "event", None) == "alert" and getattr(r, "code", None) == code
    ]


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("issue_wrong_key", "key_certificate_mismatch"),
        ("issue_wrong_subject", "certificate_invalid"),
        ("issue_server_usage", "certificate_invalid"),
    ],
)
async def test_a_rejected_renewal_raises_an_alert_metric_and_readyz_detail(
    running: Running, caplog: pytest.LogCaptureFixture, fault: str, code: str
) -> None:
    state_dir = running.directory / "state"
    before = load_identity(state_dir).certificate
    setattr(running.stack.controlplane.faults, fault, True)
    with caplog.at_level(logging.INFO):
        assert await running.agent.renew_certificate() is False
    # The old certificate stays in use, and nothing of the bad one was stored.
    assert load_identity(state_dir).certificate.serial_number == before.serial_number
    [alert] = _alert_records(caplog, "certificate_renewal_failed")
    assert alert.levelno == logging.ERROR
    assert code in alert.getMessage()
    [event] = [r for r in caplog.records if getattr(r, "event", "") == "certificate_renewal_failed"]
    assert getattr(event, "code", None) == code
    metrics = await running.metrics()
    failed = (("reason", code), ("result", "failed"))
    assert metrics[("gateway_certificate_renewals_total", failed)] == 1
    alerts = (("code", "certificate_renewal_failed"),)
    assert metrics[("gateway_alerts_total", alerts)] == 1
    ready = await running.readyz()
    # Still serving with the current certificate: ready, but degraded, with the reason.
    assert ready["ready"] is True
    assert ready["certificate_renewal"]["status"] == "failing"
    assert ready["certificate_renewal"]["code"] == code
    assert ready["certificate_renewal"]["failures"] == 1
    assert any("certificate renewal" in item for item in ready["degraded"])
    # The control plane hears of it too.
    heard = len(running.stack.controlplane.heartbeats)
    await running.agent.heartbeat()
    assert running.stack.controlplane.heartbeats[heard].body["status"] == "degraded"

    # The control plane is fixed: the next renewal succeeds and clears the condition.
    setattr(running.stack.controlplane.faults, fault, False)
    assert await running.agent.renew_certificate() is True
    renewed = load_identity(state_dir).certificate
    assert renewed.serial_number != before.serial_number
    ready = await running.readyz()
    assert "certificate_renewal" not in ready
    assert ready["degraded"] == []
    metrics = await running.metrics()
    ok = (("reason", "renewed"), ("result", "ok"))
    assert metrics[("gateway_certificate_renewals_total", ok)] == 1
    expiry = metrics[("gateway_certificate_expiry_timestamp_seconds", ())]
    assert expiry == renewed.not_valid_after_utc.timestamp()


async def test_readyz_judges_the_certificate_now_through_renewal_alert_and_expiry(
    running: Running,
) -> None:
    cert = load_identity(running.directory / "state").certificate
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc

    def at(fraction: float) -> float:
        return (start + (end - start) * fraction).timestamp()

    ready = await running.readyz()
    assert ready["ready"] is True
    assert ready["certificate"]["state"] == "valid"
    assert ready["certificate"]["not_after"] == end.isoformat()
    # No renewal attempt has failed (the renewer sleeps until two thirds), yet the certificate
    # is past its alert point: /readyz must say so instead of reporting all is well.
    running.agent.options.wall_clock = lambda: at(0.95)
    ready = await running.readyz()
    assert ready["ready"] is True
    assert ready["certificate"]["state"] == "alert"
    assert any("has not been renewed" in item for item in ready["degraded"])
    # Expired: no token, heartbeat or renewal can succeed any more.
    running.agent.options.wall_clock = lambda: end.timestamp() + 1
    ready = await running.readyz()
    assert ready["ready"] is False
    assert ready["certificate"]["state"] == "expired"
    assert any("client certificate expired" in reason for reason in ready["reasons"])


async def test_heartbeat_carries_real_counters_and_revisions(running: Running) -> None:
    async with running.stack.saas() as saas:
        allowed, _ = await saas.request("GET", "erp", "/api/accounts/1")
        denied, _ = await saas.request("POST", "erp", "/api/accounts/1")
    assert (allowed.status, denied.status) == (200, 403)
    heard = len(running.stack.controlplane.heartbeats)
    await running.agent.heartbeat()
    [beat] = running.stack.controlplane.heartbeats[heard:]
    body = beat.body
    assert body["counters"]["requests_allowed"] == 1
    assert body["counters"]["requests_denied"] == 1
    assert body["counters"]["audit_write_failures"] == 0
    # config_hash is the configuration revision; policy_revision is what each decision carries.
    assert body["config_hash"] == running.agent.runtime().revision
    records = [
        json.loads(line)
        for line in (running.directory / "decisions.jsonl").read_text().splitlines()
    ]
    decisions = [record for record in records if "decision_id" in record]
    assert len(decisions) == 2
    assert {record["policy_revision"] for record in decisions} == {body["policy_revision"]}
    assert body["policy_revision"] != body["config_hash"]
    assert body["listeners_online"] == 2
    assert body["status"] == "online"
    metrics = await running.metrics()
    # The one at start and this one.
    assert metrics[("gateway_heartbeats_total", (("result", "ok"),))] == 2


@pytest.mark.parametrize("audit_file", ["logs/decisions.jsonl"])
@pytest.mark.parametrize("decision_log", [{"rotate_bytes": 1}])
async def test_failed_decision_log_writes_are_counted_and_reported(running: Running) -> None:
    # The decision log's directory goes away under the running gateway. Every record rotates
    # the file (rotate_bytes: 1), which closes it, so each write after the first opens the file
    # anew, and fails, even as root (the first may still go to the file open before).
    logs = running.directory / "logs"
    logs.rename(running.directory / "logs.away")
    async with running.stack.saas() as saas:
        for _ in range(4):
            response, _ = await saas.request("GET", "erp", "/api/accounts/1")
            # The answer does not depend on the log: the decision was already made.
            assert response.status == 200
    metrics = await running.metrics()
    failures = metrics[("gateway_audit_write_failures_total", ())]
    # One per decision at least (signed checkpoints of the chain may add their own).
    assert failures >= 3
    ready = await running.readyz()
    assert ready["ready"] is True
    assert ready["audit_write_failures"] == failures
    assert "decision log records cannot be written" in ready["degraded"]
    heard = len(running.stack.controlplane.heartbeats)
    await running.agent.heartbeat()
    [beat] = running.stack.controlplane.heartbeats[heard:]
    assert beat.body["counters"]["audit_write_failures"] >= failures
    # Writable again: the next record gets through and the condition clears.
    (running.directory / "logs.away").rename(logs)
    async with running.stack.saas() as saas:
        response, _ = await saas.request("GET", "erp", "/api/accounts/2")
    assert response.status == 200
    ready = await running.readyz()
    assert ready["degraded"] == []
    records = [
        json.loads(line)
        for file in sorted(logs.iterdir())
        for line in file.read_text().splitlines()
    ]
    assert [r["path"] for r in sorted(records, key=lambda r: r["seq"]) if "path" in r][-1] == (
        "/api/accounts/2"
    )


async def test_readyz_reports_the_clock_skew_as_json_numbers(running: Running) -> None:
    async with running.stack.saas() as saas:
        response, _ = await saas.request("GET", "erp", "/api/accounts/1")
    assert response.status == 200
    skew = (await running.readyz())["clock_skew"]
    assert set(skew) == {"offset_seconds", "samples", "systematic"}
    assert isinstance(skew["offset_seconds"], float | int)
    assert skew["samples"] == 1
    assert skew["systematic"] is False


async def test_listeners_online_is_current_without_polling_readyz(running: Running) -> None:
    # Only /metrics is read: the gauge must follow the listeners by itself.
    metrics = await running.metrics()
    assert metrics[("gateway_listeners_online", ())] == 2


async def test_relay_reconnects_are_counted(running: Running) -> None:
    # Section 3.4 of the protocol notes: 1011 is the relay's daily recycle of every listener.
    dropped = await running.stack.relay.close_listeners(1011, "recycle", running.stack.hc)
    assert dropped == 2

    def reconnects() -> float:
        families = running.agent.metrics.registry.collect()
        found = [f for f in families if f.name == "gateway_relay_reconnects"]
        return sum(s.value for f in found for s in f.samples if s.name.endswith("_total"))

    # Each channel counts its reconnect as it starts again.
    await wait_until(lambda: reconnects() >= 2, within=30)
    await wait_until(lambda: running.stack.relay.listener_count(running.stack.hc) == 2, 60)
    metrics = await running.metrics()
    total = sum(v for (name, _), v in metrics.items() if name == "gateway_relay_reconnects_total")
    assert total == 2
