"""One bad request never costs a control channel, and overload is always answered.

Against the devkit relay emulator: a ``request`` a relay should never send (a CR in a header
value, a NUL in the target, a method or header name that is not a token, a field over 16 KiB) is
answered ``400 malformed_request`` where it arrived, and the SAME control channel goes on serving:
no reconnect, and a request already in flight on it still gets its answer. Against a scripted
relay: a peer that sends nothing but such requests loses the channel once the violation budget is
spent. And a burst far beyond ``max_concurrent_requests`` gets 200 or 503 for every request,
quickly, instead of silence until the relay's 60 s deadline (catalogue item 149).
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from gateway.devkit.relay_emulator import RelayEmulator
from gateway.relay.backoff import BackoffPolicy
from gateway.relay.handlers import RelayedRequest, RelayedResponse
from gateway.relay.listener import RelayListener

from .listener_support import (
    HC,
    Streams,
    echo_handler,
    listener_settings,
    send_http,
    start_listener,
    static_token,
    wait_until,
)
from .relay_servers import ScriptedRelay

SLOW = BackoffPolicy(base=0.05, cap=0.2, auth_retry_delay=5.0, not_found_retry_delay=5.0)

MALFORMED = [
    pytest.param("GET", f"/{HC}/x", {"X-A": "a\r\nX-Injected: 1"}, b"", id="cr-lf-in-value"),
    pytest.param("POST", f"/{HC}/x", {"X-A": "a\rb"}, b"body bytes", id="cr-in-value-with-body"),
    pytest.param("GET", f"/{HC}/x\x00y", {}, b"", id="nul-in-target"),
    pytest.param("GET ", f"/{HC}/x", {}, b"", id="method-not-a-token"),
    pytest.param("GET", f"/{HC}/x", {"X A": "1"}, b"", id="header-name-not-a-token"),
    pytest.param("PUT", f"/{HC}/x", {"X-Big": "v" * 17_000}, b"z" * 100, id="field-over-16k"),
]


@pytest.mark.parametrize(("method", "target", "headers", "body"), MALFORMED)
async def test_malformed_request_gets_400_and_the_same_channel_keeps_serving(
    relay: RelayEmulator,
    http: aiohttp.ClientSession,
    method: str,
    target: str,
    headers: dict[str, str],
    body: bytes,
) -> None:
    release = asyncio.Event()
    seen: list[str] = []

    async def handler(request: RelayedRequest) -> RelayedResponse:
        seen.append(request.target)
        if request.target == "/in-flight":
            await release.wait()
        return await echo_handler(request)

    async with start_listener(relay, handler, backoff=SLOW) as listener:
        await relay.wait_for_listeners(HC, 1)
        # A request in flight on the channel when the bad one arrives ...
        in_flight = asyncio.create_task(send_http(http, relay, "/in-flight", within=10))
        await wait_until(lambda: seen == ["/in-flight"])
        async with asyncio.timeout(10):
            got = await relay.deliver_request(
                HC, method=method, request_target=target, headers=headers, body=body
            )
        assert got.command.status_code == 400
        answer = {name.lower(): value for name, value in got.command.response_headers.items()}
        assert answer["x-gateway-reason"] == "malformed_request"
        assert json.loads(got.body or b"{}")["error"] == "malformed_request"
        # ... still gets its answer: the channel was kept.
        release.set()
        status, _, _, _ = await in_flight
        assert status == 200
        # And the same channel serves the next request; a body of the bad request, if any, was
        # consumed rather than taken for the next command.
        status, _, response_headers, echoed = await send_http(
            http, relay, "/next", method="POST", data=b"next body"
        )
        assert (status, echoed, response_headers["X-Target"]) == (200, b"next body", "/next")
        assert seen == ["/in-flight", "/next"]  # the malformed request never reached the handler
        metrics = listener.metrics
        assert metrics.listeners_online == 1
        assert sum(metrics.reconnects.values()) == 0
        assert relay.listener_count(HC) == 1
        assert metrics.protocol_errors["malformed_request"] == 1
        assert metrics.requests["malformed_request"] == 1


async def test_malformed_request_delivered_by_rendezvous_gets_400_there(
    relay: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    # Over 64 KiB, so the relay delivers it rendezvous-only and it must be answered on that
    # socket (protocol notes sections 3.2 and 5.3).
    async with start_listener(relay, backoff=SLOW) as listener:
        await relay.wait_for_listeners(HC, 1)
        async with asyncio.timeout(10):
            got = await relay.deliver_request(
                HC,
                method="POST",
                request_target=f"/{HC}/upload",
                headers={"X-A": "a\nb"},
                body=b"u" * 100_000,
            )
        assert got.command.status_code == 400
        assert (await send_http(http, relay, "/after"))[0] == 200
        assert listener.metrics.requests["malformed_request"] == 1
        assert sum(listener.metrics.reconnects.values()) == 0


async def test_a_relay_sending_only_malformed_requests_loses_the_channel(
    scripted: ScriptedRelay,
) -> None:
    budget = 3
    settings = listener_settings(scripted.base, backoff=SLOW, max_protocol_violations=budget)
    listener = RelayListener(
        settings,
        token_provider=static_token,
        request_handler=echo_handler,
        stream_handler=Streams(),
    )
    async with listener:
        control = await scripted.next_channel()
        for index in range(budget):
            await control.send_str(_bad_request(f"bad-{index}"))
            assert await _refusal(scripted) == (f"bad-{index}", 400)
        assert scripted.listens == 1  # within the budget the channel is kept
        # One more within the window: still answered, then the channel is dropped and reopened.
        await control.send_str(_bad_request("one-too-many"))
        assert await _refusal(scripted) == ("one-too-many", 400)
        again = await scripted.next_channel()
        assert scripted.listens == 2
        assert listener.metrics.protocol_errors["too_many_violations"] == 1
        assert listener.metrics.reconnects["error"] == 1
        # The new channel starts with a fresh budget.
        await again.send_str(_bad_request("fresh"))
        assert await _refusal(scripted) == ("fresh", 400)
        assert listener.metrics.protocol_errors["malformed_request"] == budget + 2


async def test_a_burst_far_beyond_the_cap_is_all_answered_quickly(relay: RelayEmulator) -> None:
    cap, burst = 2, 300

    async def slow(request: RelayedRequest) -> RelayedResponse:
        await asyncio.sleep(0.5)
        return RelayedResponse(200, "OK", (), b"done")

    async with (
        start_listener(relay, slow, max_concurrent_requests=cap) as listener,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
    ):
        await relay.wait_for_listeners(HC, 1)

        async def one() -> tuple[int, bool]:
            status, _, headers, _ = await send_http(http, relay, "/work", within=120)
            # Section 5.2: the relay adds Via to what the listener answered, never to its own
            # errors (such as the 504 at its deadline), so every answer below really came from
            # the listener: nobody was left to the relay's deadline, however slow the machine.
            return status, "Via" in headers

        results = await asyncio.gather(*(one() for _ in range(burst)))
    statuses = [status for status, _ in results]
    assert set(statuses) <= {200, 503}
    assert all(from_listener for _, from_listener in results)
    assert statuses.count(200) >= cap
    assert statuses.count(503) >= burst // 2  # refused at once, not queued behind the cap
    assert listener.metrics.requests["dropped"] == 0
    assert listener.metrics.requests["overloaded"] == statuses.count(503)


async def _refusal(scripted: ScriptedRelay) -> tuple[str, int]:
    """Read one response and its body from the listener; check it is a malformed-request 400."""
    text = await scripted.next_message()
    assert isinstance(text, str)
    answer = json.loads(text)["response"]
    assert answer["body"] is True
    assert answer["responseHeaders"]["x-gateway-reason"] == "malformed_request"
    body = await scripted.next_message()  # section 5.4: the body message follows at once
    assert isinstance(body, bytes)
    assert json.loads(body)["request_id"] == answer["requestId"]
    return answer["requestId"], answer["statusCode"]


def _bad_request(request_id: str) -> str:
    address = f"ws://127.0.0.1:1/$hc/{HC}?sb-hc-action=request&sb-hc-id={request_id}"
    return json.dumps(
        {
            "request": {
                "address": address,
                "id": request_id,
                "requestTarget": f"/{HC}/x",
                "method": "GET",
                "requestHeaders": {"X-A": "a\r\nX-Injected: 1"},
                "body": False,
            }
        }
    )


@pytest.mark.parametrize("yields", range(6))
async def test_stop_while_a_channel_is_still_connecting_returns(
    relay: RelayEmulator, yields: int
) -> None:
    # A token provider that answers at once, and a stop() a few loop iterations after start():
    # somewhere in here the cancellation meets the token call as it returns. The listener must
    # still stop (Python 3.11's wait_for would drop that cancellation and hang stop() forever).
    listener = start_listener(relay)
    await listener.start()
    for _ in range(yields):
        await asyncio.sleep(0)
    async with asyncio.timeout(60):
        await listener.stop(grace=0)
    assert listener.metrics.listeners_online == 0
