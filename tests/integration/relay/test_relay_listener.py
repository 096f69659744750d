"""The relay listener against the devkit relay emulator: requests, streams and their limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from multidict import istr

from gateway.devkit.relay_emulator import RelayEmulator
from gateway.relay.handlers import RelayedRequest, RelayedResponse

from .listener_support import HC, Streams, send_http, start_listener, wait_until


async def test_small_request_is_answered_on_the_control_channel(
    relay: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    async with start_listener(relay) as listener:
        await relay.wait_for_listeners(HC, 1)
        status, reason, headers, body = await send_http(
            http, relay, "/orders/17?expand=true", method="POST", data=b"hello"
        )
    assert (status, reason, body) == (200, "OK", b"hello")
    assert headers["X-Target"] == "/orders/17?expand=true"
    assert headers["X-Method"] == "POST"
    assert listener.metrics.requests["ok"] == 1


async def test_large_response_goes_over_a_rendezvous_socket(
    relay: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    payload = bytes(range(256)) * 800  # 200 KiB: too big for the control channel

    async def big(request: RelayedRequest) -> RelayedResponse:
        return RelayedResponse(200, "OK", (("Content-Type", "application/octet-stream"),), payload)

    async with start_listener(relay, big) as listener:
        await relay.wait_for_listeners(HC, 1)
        status, _, _, body = await send_http(http, relay, "/export")
        assert relay.listener_count(HC) == 1
    assert status == 200
    assert body == payload
    assert listener.metrics.requests["ok"] == 1
    assert sum(listener.metrics.reconnects.values()) == 0


async def test_streamed_response_arrives_whole(
    relay: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for index in range(5):
            await asyncio.sleep(0.01)
            yield bytes([65 + index]) * 30_000

    async def streaming(request: RelayedRequest) -> RelayedResponse:
        return RelayedResponse(200, "OK", (("X-Streamed", "yes"),), chunks())

    async with start_listener(relay, streaming):
        await relay.wait_for_listeners(HC, 1)
        status, _, headers, body = await send_http(http, relay, "/stream")
    assert status == 200
    assert headers["X-Streamed"] == "yes"
    assert body == b"".join(bytes([65 + i]) * 30_000 for i in range(5))


async def test_request_body_over_64k_is_fetched_from_the_rendezvous(
    relay: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    upload = b"x" * (200 * 1024)
    async with start_listener(relay) as listener:
        await relay.wait_for_listeners(HC, 1)
        status, _, headers, body = await send_http(
            http, relay, "/upload", method="PUT", data=upload
        )
    assert status == 200
    assert headers["X-Body-Length"] == str(len(upload))
    assert body == upload
    assert listener.metrics.requests["ok"] == 1


async def test_response_headers_are_cleaned_for_the_relay(
    relay: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    async def headers(request: RelayedRequest) -> RelayedResponse:
        return RelayedResponse(
            201,
            "Made",
            (
                ("X-Multi", "a"),
                ("x-multi", "b"),
                ("Set-Cookie", "one=1"),
                ("Set-Cookie", "two=2"),
                ("Connection", "close"),
                ("Keep-Alive", "timeout=5"),
            ),
            b"",
        )

    async with start_listener(relay, headers):
        await relay.wait_for_listeners(HC, 1)
        status, reason, got, body = await send_http(http, relay, "/h")
    assert (status, reason, body) == (201, "Made", b"")
    assert got["X-Multi"] == "a, b"
    assert got["Set-Cookie"] == "one=1"
    assert "Keep-Alive" not in got


async def test_header_names_of_a_str_subclass_reach_the_sender(
    relay: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    # Handlers copy headers from aiohttp and multidict, whose names are istr (a str subclass).
    async def headers(request: RelayedRequest) -> RelayedResponse:
        return RelayedResponse(
            200, "OK", ((istr("X-Kind"), "a"), (istr("x-kind"), "b"), ("X-Plain", "c")), b"k"
        )

    async with start_listener(relay, headers) as listener:
        await relay.wait_for_listeners(HC, 1)
        status, _, got, body = await send_http(http, relay, "/h")
    assert (status, body) == (200, b"k")
    assert (got["X-Kind"], got["X-Plain"]) == ("a, b", "c")
    assert listener.metrics.requests["ok"] == 1


async def test_a_finished_request_leaves_no_task_behind(
    relay: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    async with start_listener(relay) as listener:
        await relay.wait_for_listeners(HC, 1)
        for _ in range(3):
            status, *_ = await send_http(http, relay, "/x")
            assert status == 200
        # The request tasks take themselves out of the listener's work when they end.
        await wait_until(lambda: not listener._work)
        assert listener.requests_in_flight == 0


async def test_handler_exception_is_answered_500(
    relay: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    async def broken(request: RelayedRequest) -> RelayedResponse:
        raise RuntimeError("backend exploded")

    async with start_listener(relay, broken) as listener:
        await relay.wait_for_listeners(HC, 1)
        status, _, _, body = await send_http(http, relay, "/x")
    assert status == 500
    assert b"exploded" not in body
    assert listener.metrics.requests["handler_error"] == 1


async def test_slow_handler_is_answered_504_before_the_relay_deadline(
    relay: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    async def slow(request: RelayedRequest) -> RelayedResponse:
        await asyncio.sleep(30)
        return RelayedResponse(200)

    async with start_listener(relay, slow, request_timeout=0.5) as listener:
        await relay.wait_for_listeners(HC, 1)
        status, reason, headers, _ = await send_http(http, relay, "/slow", within=120)
    assert (status, reason) == (504, "Gateway Timeout")
    # Section 5.2: Via marks an answer the listener sent; the relay's own 504 at its deadline
    # has none. So the listener answered, at its timeout, whatever the machine's speed.
    assert "Via" in headers
    assert listener.metrics.requests["handler_timeout"] == 1


async def test_each_request_gets_its_own_deadline(
    relay: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    # One timer serves every handler's deadline (_Deadlines): a handler that overruns is
    # answered 504 and its task cancelled, the ones that start after it and finish in time are
    # answered by their handler, and the cancelled task's later awaits are not cancelled again.
    async def handler(request: RelayedRequest) -> RelayedResponse:
        if request.target.startswith("/slow"):
            try:
                await asyncio.sleep(30)
            finally:
                await asyncio.sleep(0)  # an await after the deadline's cancellation
        return RelayedResponse(200, body=b"fast")

    async with start_listener(relay, handler, request_timeout=0.5) as listener:
        await relay.wait_for_listeners(HC, 1)
        slow = asyncio.create_task(send_http(http, relay, "/slow", within=120))
        for _ in range(5):
            status, _, _, body = await send_http(http, relay, "/fast", within=120)
            assert (status, body) == (200, b"fast")
        status, reason, headers, _ = await slow
        assert (status, reason) == (504, "Gateway Timeout")
        assert "Via" in headers
        status, _, _, body = await send_http(http, relay, "/fast", within=120)
        assert (status, body) == (200, b"fast")
    assert listener.metrics.requests["handler_timeout"] == 1
    assert listener.metrics.requests["ok"] == 6


async def test_slow_handler_does_not_block_other_requests(
    relay: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    release = asyncio.Event()

    async def gated(request: RelayedRequest) -> RelayedResponse:
        if request.target == "/wait":
            await release.wait()
        return RelayedResponse(200, "OK", (), request.target.encode())

    async with start_listener(relay, gated) as listener:
        await relay.wait_for_listeners(HC, 1)
        waiting = asyncio.create_task(send_http(http, relay, "/wait"))
        await wait_until(lambda: listener.requests_in_flight == 1)
        status, _, _, body = await send_http(http, relay, "/quick", within=60)
        assert (status, body) == (200, b"/quick")
        assert not waiting.done()
        release.set()
        assert (await waiting)[0] == 200


async def test_requests_over_the_concurrency_bound_get_503_at_once(
    relay: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    release = asyncio.Event()

    async def gated(request: RelayedRequest) -> RelayedResponse:
        await release.wait()
        return RelayedResponse(200)

    async with start_listener(relay, gated, max_concurrent_requests=1) as listener:
        await relay.wait_for_listeners(HC, 1)
        first = asyncio.create_task(send_http(http, relay, "/1"))
        await wait_until(lambda: listener.requests_in_flight == 1)
        status, _, headers, _ = await send_http(http, relay, "/2", within=60)
        # Refused at once: by the listener (Via, section 5.2), while the first still holds the
        # only slot, rather than queued behind it.
        assert status == 503
        assert "Via" in headers
        assert not first.done()
        release.set()
        assert (await first)[0] == 200
    assert listener.metrics.requests["overloaded"] == 1


async def test_websocket_accept_splices_the_stream(relay: RelayEmulator) -> None:
    streams = Streams()
    async with start_listener(relay, streams=streams) as listener:
        await relay.wait_for_listeners(HC, 1)
        url = f"{relay.ws_base}/$hc/{HC}/ldap?tenant=7&sb-hc-action=connect"
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(
                url,
                headers={"ServiceBusAuthorization": relay.token(HC)},
                protocols=("ldap.v1", "other"),
                timeout=aiohttp.ClientWSTimeout(ws_close=5),
            ) as ws,
        ):
            assert ws.protocol == "ldap.v1"
            await ws.send_str("bind request")
            assert (await ws.receive(timeout=5)).data == "BIND REQUEST"
            await ws.send_bytes(b"\x00\x01")
            assert (await ws.receive(timeout=5)).data == b"\x00\x01"
    assert streams.seen[0].target == "/ldap?tenant=7"
    assert listener.metrics.streams["accepted"] == 1


async def test_websocket_reject_reaches_the_sender(relay: RelayEmulator) -> None:
    streams = Streams(reject=(403, "target not allowed"))
    async with start_listener(relay, streams=streams) as listener:
        await relay.wait_for_listeners(HC, 1)
        url = f"{relay.ws_base}/$hc/{HC}/db?sb-hc-action=connect"
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                await session.ws_connect(url, headers={"ServiceBusAuthorization": relay.token(HC)})
    assert caught.value.status == 403
    assert listener.metrics.streams["rejected"] == 1


async def test_shutdown_drains_in_flight_requests(
    relay: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    async def slowish(request: RelayedRequest) -> RelayedResponse:
        await asyncio.sleep(0.5)
        return RelayedResponse(200, "OK", (), b"done")

    listener = start_listener(relay, slowish)
    await listener.start()
    await relay.wait_for_listeners(HC, 1)
    pending = asyncio.create_task(send_http(http, relay, "/work"))
    await wait_until(lambda: listener.requests_in_flight == 1)
    await listener.stop(grace=5)
    status, _, _, body = await pending
    assert (status, body) == (200, b"done")
    await relay.wait_for_listeners(HC, 0)
