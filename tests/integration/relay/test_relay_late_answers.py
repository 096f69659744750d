"""Answers outlive their control channel: a request in flight when the relay drops the channel
(the daily recycle, protocol notes section 3.4) is answered over its rendezvous address."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from gateway.devkit.relay_emulator import RelayEmulator
from gateway.hybridconnection.framing import CONTROL_CHANNEL_BODY_LIMIT
from gateway.relay.backoff import BackoffPolicy
from gateway.relay.handlers import RelayedRequest, RelayedResponse

from .listener_support import HC, send_http, start_listener, wait_until

SLOW = BackoffPolicy(base=0.05, cap=0.2)


class Gate:
    """A handler that holds every request until the test opens the gate."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()
        self.calls = 0

    async def __call__(self, request: RelayedRequest) -> RelayedResponse:
        self.calls += 1
        self.arrived.set()
        await self.release.wait()
        return RelayedResponse(200, "OK", (("X-Acted", "once"),), b"done:" + request.body)


async def _drop(relay: RelayEmulator, how: str) -> None:
    if how == "abort":
        assert await relay.drop_listeners(HC) == 1
    else:
        assert await relay.close_listeners(1011, "NameRenewalFailed", HC) == 1


@pytest.mark.parametrize("how", ["abort", "recycle-1011"])
async def test_request_in_flight_is_answered_after_the_control_channel_drops(
    relay: RelayEmulator, http: aiohttp.ClientSession, how: str
) -> None:
    # A short relay deadline keeps the failing (pre-fix) run bounded: the answer would be lost
    # and the sender would get the relay's 504.
    relay.response_timeout = 10.0
    gate = Gate()
    async with start_listener(relay, gate, backoff=SLOW) as listener:
        await relay.wait_for_listeners(HC, 1)
        sent = asyncio.ensure_future(send_http(http, relay, "/orders", method="POST", data=b"x"))
        await asyncio.wait_for(gate.arrived.wait(), 10)
        await _drop(relay, how)
        await wait_until(lambda: sum(listener.metrics.reconnects.values()) >= 1)
        gate.release.set()
        status, _, headers, body = await sent
    assert (status, body) == (200, b"done:x")
    assert headers["X-Acted"] == "once"
    assert gate.calls == 1
    assert listener.metrics.late_answers == 1
    assert listener.metrics.requests["ok"] == 1


async def test_answer_goes_on_the_control_channel_while_it_is_up(
    relay: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    gate = Gate()
    gate.release.set()
    async with start_listener(relay, gate) as listener:
        await relay.wait_for_listeners(HC, 1)
        status, _, _, body = await send_http(http, relay, "/orders", method="POST", data=b"y")
    assert (status, body) == (200, b"done:y")
    assert listener.metrics.late_answers == 0


async def test_a_request_cut_off_by_stop_is_answered_not_left_to_the_relay(
    relay: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    # Bounds the failing (old) run: the relay's own 504 would come after this deadline.
    relay.response_timeout = 10.0
    gate = Gate()  # never released: the handler outlives the shutdown grace period
    listener = start_listener(relay, gate)
    await listener.start()
    await relay.wait_for_listeners(HC, 1)
    sent = asyncio.ensure_future(send_http(http, relay, "/slow", method="POST", data=b"x"))
    await asyncio.wait_for(gate.arrived.wait(), 10)
    await listener.stop(grace=0.1)
    status, _, headers, _ = await sent
    assert (status, headers["x-gateway-reason"]) == (503, "draining")
    assert relay.listener_close_codes == [1000]
    assert listener.metrics.requests["draining"] == 1


async def test_an_answer_the_rendezvous_socket_can_no_longer_take_is_counted(
    relay: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    # A body over the inline limit comes on a rendezvous socket (section 5.3) and is answered
    # there. The relay gives up on the listener first (its response deadline) and closes that
    # socket; the late answer cannot be written, and the request is still accounted for once,
    # as send_failed, like every other answer that could not be written.
    relay.response_timeout = 0.5
    gate = Gate()
    async with start_listener(relay, gate) as listener:
        await relay.wait_for_listeners(HC, 1)
        body = b"b" * (CONTROL_CHANNEL_BODY_LIMIT + 1)
        status, _, _, _ = await send_http(http, relay, "/big", method="POST", data=body)
        assert status >= 500  # the relay's own answer to the sender
        await asyncio.wait_for(gate.arrived.wait(), 10)
        # The relay's close reached the listener (its close reply ended the handshake).
        await wait_until(lambda: relay.rendezvous_closed == 1)
        gate.release.set()
        await wait_until(lambda: sum(listener.metrics.requests.values()) >= 1)
        assert dict(listener.metrics.requests) == {"send_failed": 1}
        assert gate.calls == 1
