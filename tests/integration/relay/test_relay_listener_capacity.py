"""The listener holds as many WebSocket streams at once as its settings allow.

Every accepted stream keeps one rendezvous WebSocket open for its whole life; the listener's
connection pool must have room for all of them next to the control channel, or streams beyond the
pool wait out the handshake timeout and the sender sees the relay's 504.
"""

from __future__ import annotations

import asyncio

import aiohttp

from gateway.devkit.relay_emulator import RelayEmulator

from .listener_support import HC, Streams, start_listener

STREAMS = 130  # above aiohttp's default pool of 100 connections


async def test_more_streams_than_a_default_pool_stay_open_together(relay: RelayEmulator) -> None:
    url = f"{relay.ws_base}/$hc/{HC}/ldap?sb-hc-action=connect"
    headers = {"ServiceBusAuthorization": relay.token(HC)}
    gate = asyncio.Semaphore(16)
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    async with (
        start_listener(relay, streams=Streams(), max_concurrent_streams=STREAMS) as listener,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
    ):
        await relay.wait_for_listeners(HC, 1)

        async def open_one(index: int) -> bytes:
            async with gate:
                ws = await session.ws_connect(url, headers=headers)
                sockets.append(ws)
                await ws.send_bytes(b"%d" % index)
                return bytes((await ws.receive(timeout=5)).data)

        try:
            async with asyncio.timeout(60):
                echoes = await asyncio.gather(*(open_one(i) for i in range(STREAMS)))
            assert echoes == [b"%d" % i for i in range(STREAMS)]
            assert listener.streams_in_flight == STREAMS
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    assert listener.metrics.streams["accepted"] == STREAMS
