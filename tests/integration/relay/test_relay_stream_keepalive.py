"""Accepted WebSocket streams outlive the relay's idle drop (protocol notes section 7: the
service's load balancer drops any connection without traffic for about 4 minutes, rendezvous
sockets included): the listener pings its leg of every stream, as it pings control channels."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp

from gateway.devkit.relay_emulator import RelayEmulator, SasRule
from gateway.relay.listener import RelayListener

from .listener_support import HC, KEY, start_listener, wait_until

# The relay's idle limit here; the listener pings ten times as often, the sender likewise.
IDLE = 2.0
PING = 0.2


@contextlib.asynccontextmanager
async def _stream(
    http: aiohttp.ClientSession, *, heartbeat: float | None = None, autoping: bool = True
) -> AsyncIterator[tuple[RelayEmulator, RelayListener, aiohttp.ClientWebSocketResponse]]:
    """A stream through a relay that drops legs idle for IDLE seconds, echoed once."""
    async with RelayEmulator([HC], [SasRule("gateway", KEY)], seed=7) as relay:
        relay.idle_timeout = IDLE
        async with start_listener(relay, ping_interval=PING) as listener:
            await relay.wait_for_listeners(HC, 1)
            url = f"{relay.ws_base}/$hc/{HC}/chat?sb-hc-action=connect"
            headers = {"ServiceBusAuthorization": relay.token(HC)}
            connect = http.ws_connect(url, headers=headers, heartbeat=heartbeat, autoping=autoping)
            async with connect as ws:
                await ws.send_str("before")
                assert (await ws.receive(timeout=30)).data == "BEFORE"
                yield relay, listener, ws


async def test_an_idle_stream_survives_the_relays_idle_drop(http: aiohttp.ClientSession) -> None:
    # The sender keeps its own leg alive; the relay answers its pings (section 4).
    async with _stream(http, heartbeat=PING) as (relay, listener, ws):
        # No data either way for longer than the relay's idle limit.
        await asyncio.sleep(IDLE * 2)
        await ws.send_str("after")
        echoed = await ws.receive(timeout=30)
    assert (echoed.type, echoed.data) == (aiohttp.WSMsgType.TEXT, "AFTER")
    assert relay.stream_idle_drops == 0
    assert listener.metrics.streams["accepted"] == 1


async def test_a_stream_whose_sender_goes_quiet_is_dropped_and_ended(
    http: aiohttp.ClientSession,
) -> None:
    # The sender's leg idles out (its client does not ping): the relay drops it and closes the
    # listener's leg (1001), and the listener ends the stream instead of holding it open.
    async with _stream(http, autoping=False) as (relay, listener, ws):
        ended = await ws.receive(timeout=IDLE * 10)
        assert ended.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        await wait_until(lambda: listener.streams_in_flight == 0)
    assert relay.stream_idle_drops == 1
