"""Every relay metric moves when its event happens, read the way Prometheus reads it, and the
relay's log lines carry their ``event`` (docs/operations.md, "Metrics" and "Log events")."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.devkit.relay_emulator import RelayEmulator
from gateway.relay.backoff import BackoffPolicy
from gateway.relay.handlers import RelayedRequest, RelayedResponse
from gateway.relay.listener import RelayListener
from gateway.relay.prometheus import RelayCollector

from .listener_support import (
    HC,
    Streams,
    Tokens,
    echo_handler,
    listener_settings,
    send_http,
    start_listener,
    wait_until,
)

SLOW = BackoffPolicy(base=0.05, cap=0.2)


def _scrape(listener: RelayListener) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What /metrics would show for this listener, parsed back from the text format."""
    registry = CollectorRegistry()
    collector = RelayCollector()
    collector.bind(listener.metrics)
    registry.register(collector)
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_every_family_exists_before_a_listener_is_bound() -> None:
    registry = CollectorRegistry()
    registry.register(RelayCollector())
    text = generate_latest(registry).decode()
    assert "gateway_listeners_online 0.0" in text
    for name in (
        "gateway_relay_reconnects",
        "gateway_relay_listen_refusals",
        "gateway_relay_protocol_errors",
        "gateway_relay_late_answers",
        "gateway_relay_token_renewals",
    ):
        assert f"# TYPE {name}_total counter" in text


async def test_listeners_online_and_reconnects_follow_the_channels(relay: RelayEmulator) -> None:
    async with start_listener(relay, connections=2, backoff=SLOW) as listener:
        await wait_until(lambda: listener.metrics.listeners_online == 2)
        assert _scrape(listener)[("gateway_listeners_online", ())] == 2
        await relay.close_listeners(1011, "NameRenewalFailed", HC)
        await wait_until(lambda: sum(listener.metrics.reconnects.values()) == 2)
        await wait_until(lambda: listener.metrics.listeners_online == 2)
        scraped = _scrape(listener)
    assert scraped[("gateway_relay_reconnects_total", (("reason", "closed"),))] == 2
    assert scraped[("gateway_listeners_online", ())] == 2


async def test_quota_refusals_and_protocol_errors_are_counted(relay: RelayEmulator) -> None:
    relay.max_listeners = 1
    async with start_listener(relay) as first:
        await relay.wait_for_listeners(HC, 1)
        await relay.deliver_text(HC, json.dumps({"accept": {"id": "x"}}))
        await wait_until(lambda: first.metrics.protocol_errors["malformed_command"] == 1)
        scraped = _scrape(first)
        assert scraped[("gateway_relay_protocol_errors_total", (("code", "malformed_command"),))]
        async with start_listener(relay, backoff=SLOW) as second:
            await wait_until(lambda: second.metrics.listen_refusals["quota"] >= 1)
            scraped = _scrape(second)
    assert scraped[("gateway_relay_listen_refusals_total", (("kind", "quota"),))] >= 1
    assert scraped[("gateway_relay_reconnects_total", (("reason", "quota"),))] >= 1


async def test_late_answers_and_token_renewals_are_counted(
    relay: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def held(request: RelayedRequest) -> RelayedResponse:
        arrived.set()
        await release.wait()
        return RelayedResponse(200, "OK", (), b"late")

    listener = RelayListener(
        # Renewed after a quarter of a 4 s life: about 3 s to spare on a busy machine.
        listener_settings(relay.ws_base, backoff=SLOW, renew_at=0.25),
        token_provider=Tokens(relay, ttl=4),
        request_handler=held,
        stream_handler=Streams(),
    )
    async with listener:
        await relay.wait_for_listeners(HC, 1)
        await wait_until(lambda: listener.metrics.token_renewals >= 1)
        sent = asyncio.ensure_future(send_http(http, relay, "/x"))
        await asyncio.wait_for(arrived.wait(), 10)
        await relay.drop_listeners(HC)
        await wait_until(lambda: sum(listener.metrics.reconnects.values()) >= 1)
        release.set()
        assert (await sent)[3] == b"late"
        scraped = _scrape(listener)
    assert scraped[("gateway_relay_late_answers_total", ())] == 1
    assert scraped[("gateway_relay_token_renewals_total", ())] >= 1


async def test_a_clean_stop_closes_with_1000_and_says_so(
    relay: RelayEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.relay")
    listener = start_listener(relay, echo_handler, connections=2)
    await listener.start()
    await relay.wait_for_listeners(HC, 2)
    await wait_until(lambda: listener.metrics.listeners_online == 2)
    await listener.stop()
    await relay.wait_for_listeners(HC, 0)
    assert relay.listener_close_codes == [1000, 1000]
    offline = [r for r in caplog.records if getattr(r, "event", None) == "relay_offline"]
    assert [(r.close_code, r.stopping) for r in offline] == [(1000, True), (1000, True)]  # type: ignore[attr-defined]
    # The relay did not close anything: no relay_closed line for our own close.
    assert not [r for r in caplog.records if getattr(r, "event", None) == "relay_closed"]


async def test_relay_log_lines_carry_their_event(
    relay: RelayEmulator, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.relay")
    async with start_listener(relay, backoff=SLOW) as listener:
        await relay.wait_for_listeners(HC, 1)
        await relay.close_listeners(1011, "NameRenewalFailed TrackingId:abc_G1", HC)
        await wait_until(lambda: sum(listener.metrics.reconnects.values()) == 1)
        await relay.wait_for_listeners(HC, 1)
        assert (await send_http(http, relay, "/x"))[0] == 200
    relay_lines = [r for r in caplog.records if r.name == "gateway.relay"]
    assert relay_lines
    assert all(getattr(r, "event", None) for r in relay_lines), [
        r.getMessage() for r in relay_lines
    ]
    closed = [r for r in relay_lines if r.event == "relay_closed"]  # type: ignore[attr-defined]
    assert closed[0].close_code == 1011  # type: ignore[attr-defined]
    assert "TrackingId:abc_G1" in closed[0].relay_reason  # type: ignore[attr-defined]
