"""Work the relay routes to a draining listener after the listener's close frame.

The relay picks a listener for each sender without waiting for that listener's control channel,
so a ``request`` or ``accept`` can reach a listener after the listener sent its close and before
the relay read it (hybrid-connections-protocol sections 3.4, 5.3). Nothing may follow a close on
that channel (RFC 6455 section 5.5.1); each command's rendezvous address still can carry the
answer. The emulator's ``hold_closes`` knob makes the window certain: it reads the close, keeps
the listener routable until the given number of commands has been sent to it, and only then
answers the close. Whatever arrives after the close - a request on the control channel, a
rendezvous-only request, a WebSocket accept - must be refused ``draining`` over its rendezvous
address, and ``stop()`` must return only once those refusals are out, not leave the sender to
the relay's 504 at its response deadline (60 s on Azure).

Nothing here depends on timing: the relay's deadlines are far beyond any wait the test makes,
and every step waits for an event.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.devkit.relay_emulator import RelayEmulator, SasRule
from tests.integration.relay.listener_support import (
    HC,
    KEY,
    Streams,
    send_http,
    start_listener,
    wait_until,
)

pytestmark = pytest.mark.asyncio

# Over the 64 KiB the relay carries on the control channel: the request comes by rendezvous.
LARGE = b"x" * (100 * 1024)
# Bounds only: a sender whose request the listener ignores gets the relay's 504 after this long.
DEADLINE = 120.0


@pytest.fixture
async def relay() -> AsyncIterator[RelayEmulator]:
    async with RelayEmulator(
        [HC],
        [SasRule("gateway", KEY)],
        seed=11,
        response_timeout=DEADLINE,
        rendezvous_ttl=DEADLINE,
    ) as emulator:
        yield emulator


async def _connect(relay: RelayEmulator) -> int:
    """Open a WebSocket to the HC as a sender; the HTTP status of the refused handshake."""
    url = f"{relay.ws_base}/$hc/{HC}/stream?sb-hc-action=connect"
    async with aiohttp.ClientSession() as session:
        try:
            socket = await session.ws_connect(
                url,
                headers={"ServiceBusAuthorization": relay.token(HC)},
                timeout=aiohttp.ClientWSTimeout(ws_close=DEADLINE),
            )
        except aiohttp.WSServerHandshakeError as refused:
            return refused.status
        await socket.close()
        return 101


async def _send(relay: RelayEmulator, http: aiohttp.ClientSession, kind: str) -> int:
    """One sender of ``kind``; the status it got (for HTTP, only a 503 ``draining`` counts)."""
    if kind == "stream":
        return await _connect(relay)
    if kind == "control":
        status, _, headers, _ = await send_http(http, relay, "/small", within=DEADLINE * 2)
    else:
        status, _, headers, _ = await send_http(
            http, relay, "/large", method="POST", data=LARGE, within=DEADLINE * 2
        )
    return status if headers.get("x-gateway-reason") == "draining" else -status


@pytest.mark.parametrize(
    "kinds",
    [("control",), ("rendezvous",), ("stream",), ("control", "rendezvous", "stream")],
    ids=["request-on-control-channel", "rendezvous-only-request", "stream", "all-three"],
)
async def test_work_routed_after_the_close_is_refused_draining_before_stop_returns(
    relay: RelayEmulator, kinds: tuple[str, ...]
) -> None:
    # The listener waits this long for the relay to answer its close; the hold ends well before.
    listener = start_listener(relay, streams=Streams(), ping_timeout=DEADLINE)
    await listener.start()
    await relay.wait_for_listeners(HC, 1)
    # Its side of the handshake done too: stop() closes only channels it has.
    await wait_until(lambda: listener.metrics.listeners_online == 1)
    relay.hold_closes(len(kinds))
    stopping = asyncio.create_task(listener.stop(grace=DEADLINE))
    async with asyncio.timeout(DEADLINE):
        await relay.wait_for_held_close(HC)
    # The relay has read the close and routes these to the listener regardless.
    async with aiohttp.ClientSession() as http:
        senders = asyncio.gather(*(_send(relay, http, kind) for kind in kinds))
        await stopping
        # stop() has returned: each refusal has been taken by the relay (one left to a task that
        # stop() cancelled would reach its sender only as the relay's 504, much later).
        taken = sorted((e.target, e.delivered, e.outcome) for e in relay.exchanges)
        refused_here = (
            listener.metrics.requests["draining"],
            listener.metrics.streams["overloaded"],
        )
        statuses = await senders
    http_kinds = [kind for kind in kinds if kind != "stream"]
    assert taken == sorted(
        (f"/{HC}/{'small' if kind == 'control' else 'large'}", True, "answered")
        for kind in http_kinds
    )
    assert refused_here == (len(http_kinds), kinds.count("stream"))
    assert statuses == [503] * len(kinds)
    assert relay.listener_count(HC) == 0
