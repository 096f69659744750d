"""Refusals the relay makes to the listener, and the listener's own refusals, told apart and
recorded: the listener quota (403), malformed ``accept`` messages, and every request the listener
answers without its handler (protocol notes sections 3.1, 3.2 and 7)."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest

from gateway.devkit.relay_emulator import RelayEmulator
from gateway.hybridconnection.refusals import RefusalKind, classify_listen_refusal
from gateway.relay.backoff import BackoffPolicy
from gateway.relay.handlers import RelayedRequest, RelayedResponse, RelayRefusal
from gateway.relay.listener import RelayListener

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

SLOW = BackoffPolicy(base=0.05, cap=0.2, auth_retry_delay=5.0)


def _events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [str(getattr(record, "event", "")) for record in caplog.records]


async def test_listener_quota_is_told_apart_from_a_bad_token(
    relay: RelayEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    relay.max_listeners = 1
    caplog.set_level(logging.INFO, logger="gateway.relay")
    async with start_listener(relay) as first:
        await relay.wait_for_listeners(HC, 1)
        second = start_listener(relay, backoff=SLOW)
        async with second:
            await wait_until(lambda: second.metrics.listen_refusals["quota"] >= 2)
        assert first.metrics.listeners_online == 1
    assert second.metrics.listen_refusals["unauthorized"] == 0
    assert second.metrics.reconnects["quota"] >= 2
    assert second.metrics.reconnects["unauthorized"] == 0
    quota = [
        r for r in caplog.records if getattr(r, "event", "") == "relay_listener_quota_exceeded"
    ]
    assert quota
    # The relay's reason and its tracking id are kept for a support case; the hint names the fix.
    assert "MaximumListenersPerEndpoint" in quota[0].relay_reason  # type: ignore[attr-defined]
    assert "relay.connections" in quota[0].getMessage()
    assert "relay_unauthorized" not in _events(caplog)


async def test_a_token_without_rights_is_still_unauthorized(
    relay: RelayEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    relay.refuse_listens(403)
    async with start_listener(relay, backoff=SLOW) as listener:
        await wait_until(lambda: listener.metrics.listen_refusals["unauthorized"] >= 1)
    assert listener.metrics.listen_refusals["quota"] == 0


@pytest.mark.parametrize(
    ("status", "reason", "kind"),
    [
        (403, "QuotaExceeded: MaximumListenersPerEndpoint. TrackingId:ab-1_G3", RefusalKind.QUOTA),
        (403, "Unauthorized: the signing rule lacks the Listen claim", RefusalKind.UNAUTHORIZED),
        (403, "", RefusalKind.UNAUTHORIZED),
        (401, "QuotaExceeded", RefusalKind.UNAUTHORIZED),
        (404, "Endpoint does not exist. TrackingId:x_G1", RefusalKind.NOT_FOUND),
        (500, "boom\r\nX: y", RefusalKind.OTHER),
    ],
)
def test_refusal_classification(status: int, reason: str, kind: RefusalKind) -> None:
    refusal = classify_listen_refusal(status, reason)
    assert refusal.kind is kind
    assert "\r" not in refusal.reason
    assert "\n" not in refusal.reason
    if "TrackingId:" in reason:
        assert refusal.tracking_id is not None


@pytest.mark.parametrize(
    "accept",
    [
        {"accept": []},
        {"accept": {"id": "a1", "connectHeaders": {}}},
        {"accept": {"address": 5, "id": "a1", "connectHeaders": {}}},
        {"accept": {"address": "wss://x/", "id": "a1", "connectHeaders": {"X": 1}}},
        {"request": {"id": "only-an-id"}},
    ],
    ids=["not-object", "no-address", "address-not-text", "bad-header", "rendezvous-no-address"],
)
async def test_malformed_accept_keeps_the_control_channel(
    relay: RelayEmulator, http: aiohttp.ClientSession, accept: dict[str, object]
) -> None:
    refusals: list[RelayRefusal] = []
    listener = RelayListener(
        listener_settings(relay.ws_base),
        token_provider=Tokens(relay),
        request_handler=echo_handler,
        stream_handler=Streams(),
        on_refusal=refusals.append,
    )
    async with listener:
        await relay.wait_for_listeners(HC, 1)
        await relay.deliver_text(HC, json.dumps(accept))
        await wait_until(lambda: listener.metrics.protocol_errors["malformed_command"] == 1)
        status, _, _, body = await send_http(http, relay, "/after", method="POST", data=b"ok")
    assert (status, body) == (200, b"ok")
    assert sum(listener.metrics.reconnects.values()) == 0
    assert [(r.kind, r.status, r.reason) for r in refusals] == [("http", 0, "malformed_command")]


async def test_every_refusal_of_the_listener_reaches_the_refusal_sink(
    relay: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    refusals: list[RelayRefusal] = []
    release = asyncio.Event()

    async def slow(request: RelayedRequest) -> RelayedResponse:
        if request.target == "/hang":
            await release.wait()
        return RelayedResponse(200, "OK", (), b"fine")

    listener = RelayListener(
        listener_settings(relay.ws_base, request_timeout=1.0, max_concurrent_requests=1),
        token_provider=Tokens(relay),
        request_handler=slow,
        stream_handler=Streams(),
        on_refusal=refusals.append,
    )
    async with listener:
        await relay.wait_for_listeners(HC, 1)
        # Malformed (a CR in a header value): 400 from the listener, never the handler.
        got = await relay.deliver_request(
            HC, method="GET", request_target=f"/{HC}/x", headers={"X": "a\rb"}
        )
        assert got.command.status_code == 400
        # Outside this Hybrid Connection: 400 bad_target.
        got = await relay.deliver_request(
            HC, method="GET", request_target="/elsewhere/x", headers={}
        )
        assert got.command.status_code == 400
        assert got.command.response_headers["x-gateway-reason"] == "bad_target"
        # The handler overruns: 504 handler_timeout, and a request beside it is 503 overloaded.
        hanging = asyncio.ensure_future(send_http(http, relay, "/hang"))
        await wait_until(lambda: listener.requests_in_flight == 1)
        status, _, headers, body = await send_http(http, relay, "/beside")
        assert (status, headers["x-gateway-reason"]) == (503, "gateway_busy")
        assert json.loads(body)["error"] == "gateway_busy"
        status, _, headers, _ = await hanging
        assert (status, headers["x-gateway-reason"]) == (504, "handler_timeout")
        release.set()
    assert [(r.status, r.reason) for r in refusals] == [
        (400, "malformed_request"),
        (400, "bad_target"),
        (503, "gateway_busy"),
        (504, "handler_timeout"),
    ]
    assert [r.method for r in refusals] == [None, "GET", "GET", "GET"]


async def test_draining_refusals_say_so(relay: RelayEmulator, http: aiohttp.ClientSession) -> None:
    release = asyncio.Event()

    async def held(request: RelayedRequest) -> RelayedResponse:
        await release.wait()
        return RelayedResponse(200, "OK", (), b"finished")

    listener = start_listener(relay, held, shutdown_grace=10.0)
    await listener.start()
    await relay.wait_for_listeners(HC, 1)
    first = asyncio.ensure_future(send_http(http, relay, "/first"))
    await wait_until(lambda: listener.requests_in_flight == 1)
    stopping = asyncio.ensure_future(listener.stop())
    await asyncio.sleep(0)
    status, _, headers, body = await send_http(http, relay, "/late")
    release.set()
    await stopping
    assert (await first)[0] == 200
    assert (status, headers["x-gateway-reason"], headers["Content-Type"]) == (
        503,
        "draining",
        "application/json",
    )
    assert json.loads(body)["error"] == "draining"
