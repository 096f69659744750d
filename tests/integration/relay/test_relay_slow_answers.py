"""Answers that are ready after their rendezvous address has expired (protocol notes section 7:
valid for about 30 s): a handler still running after ``early_rendezvous_after`` has the request's
address opened while it is valid, and its answer goes there, whatever its size."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.devkit.relay_emulator import RelayEmulator, SasRule
from gateway.relay.handlers import RelayedRequest, RelayedResponse

from .listener_support import HC, KEY, send_http, start_listener

BIG = bytes(range(256)) * 400  # 100 KiB: more than the control channel carries
# The relay's address validity here, and how long the handler takes: longer than that.
VALIDITY = 4.0


async def _chunks() -> AsyncIterator[bytes]:
    for start in range(0, len(BIG), 25_600):
        yield BIG[start : start + 25_600]


@pytest.mark.parametrize("kind", ["large", "streamed", "small"])
async def test_an_answer_ready_after_the_address_expired_still_reaches_the_sender(
    http: aiohttp.ClientSession, kind: str
) -> None:
    async def slow(request: RelayedRequest) -> RelayedResponse:
        # Past the address's validity: opening it now would be refused (403).
        await asyncio.sleep(VALIDITY + 0.5)
        body: bytes | AsyncIterator[bytes] = (
            _chunks() if kind == "streamed" else BIG if kind == "large" else b"small"
        )
        return RelayedResponse(200, "OK", (("X-Kind", kind),), body)

    async with RelayEmulator(
        [HC], [SasRule("gateway", KEY)], seed=7, rendezvous_ttl=VALIDITY, response_timeout=30.0
    ) as relay:
        listener = start_listener(relay, slow, request_timeout=20.0, early_rendezvous_after=0.05)
        async with listener:
            await relay.wait_for_listeners(HC, 1)
            status, _, headers, body = await send_http(http, relay, "/report")
    assert (status, headers["X-Kind"]) == (200, kind)
    assert body == (b"small" if kind == "small" else BIG)
    assert listener.metrics.early_rendezvous == 1
    assert listener.metrics.requests["ok"] == 1


async def test_an_early_rendezvous_that_cannot_open_leaves_the_control_channel(
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    # The relay refuses the address (it has expired before the early dial): a small answer
    # still goes back on the control channel, as if nothing had been tried.
    async def slow(request: RelayedRequest) -> RelayedResponse:
        await asyncio.sleep(0.3)  # past early_rendezvous_after: the dial has begun
        return RelayedResponse(200, "OK", (), b"fine")

    async with RelayEmulator(
        [HC], [SasRule("gateway", KEY)], seed=7, rendezvous_ttl=0.01, response_timeout=30.0
    ) as relay:
        listener = start_listener(relay, slow, early_rendezvous_after=0.1)
        with caplog.at_level(logging.WARNING, logger="gateway.relay"):
            async with listener:
                await relay.wait_for_listeners(HC, 1)
                status, _, _, body = await send_http(http, relay, "/report")
    assert (status, body) == (200, b"fine")
    assert listener.metrics.early_rendezvous == 0
    assert listener.metrics.requests["ok"] == 1
    assert any(rec.getMessage().startswith("early_rendezvous_failed") for rec in caplog.records)


async def test_quick_answers_open_no_rendezvous(
    relay: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    async with start_listener(relay) as listener:
        await relay.wait_for_listeners(HC, 1)
        status, _, _, body = await send_http(http, relay, "/x", method="POST", data=b"abc")
    assert (status, body) == (200, b"abc")
    assert listener.metrics.early_rendezvous == 0
    assert relay.deliveries["inline"] == 1
