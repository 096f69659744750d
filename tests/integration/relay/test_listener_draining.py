"""A stopping listener refuses new requests with a 503 that says why (JSON body and
``x-gateway-reason: draining``), on the control channel and on a rendezvous socket alike, while
the request already in flight still gets its answer."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from gateway.devkit.relay_emulator import RelayEmulator
from gateway.relay.handlers import RelayedRequest, RelayedResponse

from .listener_support import HC, send_http, start_listener, wait_until

# Over the 64 KiB the relay carries on the control channel: the request comes by rendezvous.
RENDEZVOUS_BODY = b"r" * (100 * 1024)


@pytest.mark.parametrize(
    ("method", "body"),
    [("GET", None), ("POST", RENDEZVOUS_BODY)],
    ids=["control-channel", "rendezvous"],
)
async def test_draining_refusal_names_its_reason(
    relay: RelayEmulator, http: aiohttp.ClientSession, method: str, body: bytes | None
) -> None:
    release = asyncio.Event()

    async def held(request: RelayedRequest) -> RelayedResponse:
        if request.target == "/held":
            await release.wait()
        return RelayedResponse(200, "OK", (), b"done")

    listener = start_listener(relay, held)
    await listener.start()
    await relay.wait_for_listeners(HC, 1)
    in_flight = asyncio.create_task(send_http(http, relay, "/held"))
    await wait_until(lambda: listener.requests_in_flight == 1)
    stopping = asyncio.create_task(listener.stop(grace=60))
    # One turn of the loop: stop() marks the listener draining before it first waits.
    await asyncio.sleep(0)
    try:
        status, _, headers, answer = await send_http(http, relay, "/late", method=method, data=body)
    finally:
        release.set()
        first_status, _, _, first_body = await in_flight
        await stopping
    assert status == 503
    assert headers["x-gateway-reason"] == "draining"
    assert headers["Content-Type"].startswith("application/json")
    document = json.loads(answer)
    assert document["error"] == "draining"
    assert document["request_id"]
    assert listener.metrics.requests["draining"] == 1
    # The request that was in flight when the stop began is answered, not cut off.
    assert (first_status, first_body) == (200, b"done")
