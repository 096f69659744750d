"""Logs never carry secrets; health and metrics endpoints tell an operator the truth."""

from __future__ import annotations

import io
import json
import logging

import aiohttp
import pytest

from gateway.observability import logs
from gateway.observability.health import HealthServer, Readiness
from gateway.observability.metrics import MAX_CACHED_OUTCOMES, Metrics


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("token SharedAccessSignature sr=x&sig=abc%2B&se=1&skn=k", "abc%2B"),
        ("url wss://relay/x?sb-hc-token=SECRETTOKEN&sb-hc-id=1", "SECRETTOKEN"),
        ("headers {'Authorization': 'Basic dXNlcjpwYXNz'}", "dXNlcjpwYXNz"),
        ('"authorization": "Bearer eyJhbGciOi"', "eyJhbGciOi"),
        ("proxy password=hunter2 failed", "hunter2"),
        ("-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG\n-----END PRIVATE KEY-----", "MIGHAgEAMBMG"),
    ],
)
def test_redaction(text: str, secret: str) -> None:
    cleaned = logs.redact(text)
    assert secret not in cleaned
    assert logs.MASK in cleaned


def test_json_lines_with_structured_fields_and_no_secrets() -> None:
    stream = io.StringIO()
    logs.configure("info", "json", stream)
    try:
        logging.getLogger("gateway.test").warning(
            "renewed %s",
            "SharedAccessSignature sig=zzz",
            extra={"event": "renew", "detail": "sig=yyy"},
        )
        logging.getLogger("gateway.test").debug("hidden")
    finally:
        logging.getLogger().handlers.clear()
    [line] = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["level"] == "warning"
    assert entry["event"] == "renew"
    assert "zzz" not in line
    assert "yyy" not in line


def test_console_format_is_one_readable_line() -> None:
    stream = io.StringIO()
    logs.configure("debug", "console", stream)
    try:
        logging.getLogger("gateway.test").info("listening", extra={"port": 5})
    finally:
        logging.getLogger().handlers.clear()
    assert stream.getvalue().rstrip().endswith("gateway.test: listening  port=5")


async def test_health_endpoints() -> None:
    metrics = Metrics()
    state = Readiness(ready=False, reasons=["no relay listener online"])
    server = HealthServer(metrics, lambda: state)
    await server.start("127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/healthz") as response:
                assert response.status == 200
            async with session.get(f"{base}/readyz") as response:
                assert response.status == 503
                assert (await response.json())["reasons"] == ["no relay listener online"]
            state.ready, state.reasons = True, []
            async with session.get(f"{base}/readyz") as response:
                assert response.status == 200
            metrics.outcome("denied", "path_not_allowed").requests.inc()
            async with session.get(f"{base}/metrics") as response:
                text = await response.text()
    finally:
        await server.stop()
    assert 'gateway_requests_total{reason="path_not_allowed",result="denied"} 1.0' in text


def test_request_outcomes_count_into_the_labelled_series_and_stay_bounded() -> None:
    metrics = Metrics()
    for index in range(MAX_CACHED_OUTCOMES + 50):
        for _ in range(2):
            outcome = metrics.outcome("denied", f"reason_{index}")
            outcome.requests.inc()
            outcome.decisions.inc()
            outcome.seconds.observe(0.002)
    assert metrics.outcome("denied", "reason_0") is metrics.outcome("denied", "reason_0")
    registry = metrics.registry
    for index in (0, MAX_CACHED_OUTCOMES + 49):  # one cached, one past the cache's bound
        labels = {"result": "denied", "reason": f"reason_{index}"}
        assert registry.get_sample_value("gateway_requests_total", labels) == 2
        assert registry.get_sample_value("gateway_decisions_total", labels) == 2
    observed = {"result": "denied"}
    count = registry.get_sample_value("gateway_request_duration_seconds_count", observed)
    assert count == 2 * (MAX_CACHED_OUTCOMES + 50)
