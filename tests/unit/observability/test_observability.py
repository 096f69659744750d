"""Logs never carry secrets; health and metrics endpoints tell an operator the truth."""

from __future__ import annotations

import io
import json
import logging

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.observability import logs
from gateway.observability.health import HealthServer, Readiness
from gateway.observability.metrics import MAX_OUTCOME_SERIES, OVERFLOW_REASON, Metrics


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


def _emit(fmt: str, message: str, value: str) -> str:
    stream = io.StringIO()
    logs.configure("debug", fmt, stream)
    try:
        logging.getLogger("gateway.test").warning("seen %s", message, extra={"target": value})
    finally:
        logging.getLogger().handlers.clear()
    return stream.getvalue()


def test_console_line_shows_a_forged_line_escaped() -> None:
    # A relayed request's target with a line break and a terminal escape: one line, readable.
    text = _emit("console", "GET /a\r\n12:00:00 info    gateway: allowed", "/x\x1b[2J\u2028y\u202e")
    assert text.count("\n") == 1
    assert "seen GET /a\\x0d\\x0a12:00:00 info    gateway: allowed" in text
    assert text.rstrip("\n").endswith("target=/x\\x1b[2J\\u2028y\\u202e")


@given(message=st.text(max_size=40), value=st.text(max_size=40))
def test_every_log_line_is_one_line_whatever_the_values(message: str, value: str) -> None:
    # Any line-breaking character (LF, CR, VT, FF, FS/GS/RS, NEL, U+2028/9) or control in the
    # values must not start a second line in either format, nor reach a terminal raw.
    for fmt in ("console", "json"):
        text = _emit(fmt, message, value)
        assert text.endswith("\n")
        line = text[:-1]
        assert line.splitlines() == [line], (fmt, line)
        # No control, separator or format character (ESC, NEL, U+2028, U+202E...) raw.
        assert line.isprintable(), (fmt, line)
    # What was printable stays as it was (escapes are only for what would not show).
    if message.isprintable():
        assert f"seen {message}" in _emit("console", message, value)


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


def _samples(metrics: Metrics, name: str) -> dict[tuple[str, ...], float]:
    """The samples called ``name`` as a scrape shows them: label values -> value."""
    return {
        tuple(sample.labels.values()): sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == name
    }


def test_request_outcomes_count_into_the_labelled_series_and_stay_bounded() -> None:
    # A policy may name any deny reason, and a faulty one a new reason per request: the scrape
    # must stay bounded while still counting every request.
    metrics = Metrics()
    requests = 0
    for index in range(10 * MAX_OUTCOME_SERIES):
        for result in ("denied", f"result_{index}"):
            for _ in range(2):
                metrics.outcome(result, f'reason {index} "quoted"\n').finished(0.002)
                requests += 1
    metrics.outcome("denied", 'reason 0 "quoted"\n').finished(0.002)
    requests += 1
    series = {
        (sample.labels["result"], sample.labels["reason"]): sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == "gateway_requests_total"
    }
    # Bounded: the first pairs keep their series, later ones share an overflow series per result.
    assert MAX_OUTCOME_SERIES <= len(series) <= MAX_OUTCOME_SERIES + 2
    assert series[("denied", 'reason 0 "quoted"\n')] == 3  # an early pair keeps counting
    # A known result keeps its name past the bound; an unknown one is counted as the overflow.
    denied = sum(count for (result, _), count in series.items() if result == "denied")
    assert denied == 2 * 10 * MAX_OUTCOME_SERIES + 1
    assert series[("denied", OVERFLOW_REASON)] > 0
    assert series[(OVERFLOW_REASON, OVERFLOW_REASON)] > 0
    # Exact: nothing is lost to the bound, in the counters or in the durations.
    assert sum(series.values()) == requests
    assert sum(_samples(metrics, "gateway_decisions_total").values()) == requests
    durations = _samples(metrics, "gateway_request_duration_seconds_count")
    assert sum(durations.values()) == requests
    # Past the bound, new labels no longer add a line to the scrape.
    lines = len(metrics.render().splitlines())
    for index in range(10 * MAX_OUTCOME_SERIES):
        metrics.outcome(f"later_{index}", f"later_{index}").finished(0.002)
    assert len(metrics.render().splitlines()) == lines
