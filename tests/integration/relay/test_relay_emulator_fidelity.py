"""The listener against the emulator's Azure behaviours: rendezvous addresses on another host
than the namespace, rendezvous reuse for keep-alive senders, idle connections dropped, and the
fault knobs reached over HTTP and from ``gateway dev relay`` (protocol notes sections 1, 5.3, 7)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from gateway.devkit.relay_emulator import QUOTA_TEXT, RelayEmulator, SasRule
from gateway.hybridconnection.framing import Opcode
from gateway.outbound.proxy import OutboundProxy, ProxySettings
from gateway.relay.backoff import BackoffPolicy
from gateway.relay.handlers import RelayedRequest, RelayedResponse
from gateway.relay.websocket import ReceivedFrame, RelayWebSocket, open_relay_socket

from .listener_support import (
    HC,
    KEY,
    echo_handler,
    send_http,
    start_listener,
    wait_until,
)

SLOW = BackoffPolicy(base=0.05, cap=0.2, auth_retry_delay=5.0)
BIG = bytes(range(256)) * 400  # 100 KiB: rendezvous both ways


@pytest.fixture
async def noded() -> AsyncIterator[RelayEmulator]:
    """An emulator whose rendezvous addresses live on 127.0.0.2, not on its namespace host."""
    async with RelayEmulator(
        [HC], [SasRule("gateway", KEY)], seed=7, rendezvous_host="127.0.0.2"
    ) as emulator:
        yield emulator


async def test_rendezvous_on_another_host_works_when_trusted(
    noded: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    assert noded.rendezvous_base.startswith("ws://127.0.0.2:")
    async with start_listener(
        noded, echo_handler, rendezvous_endpoint=noded.rendezvous_base
    ) as listener:
        await noded.wait_for_listeners(HC, 1)
        status, _, _, body = await send_http(http, noded, "/big", method="POST", data=BIG)
        assert (status, body) == (200, BIG)
        url = f"{noded.ws_base}/$hc/{HC}/chat?sb-hc-action=connect"
        headers = {"ServiceBusAuthorization": noded.token(HC)}
        async with http.ws_connect(url, headers=headers) as ws:
            await ws.send_str("hi")
            assert (await ws.receive(timeout=10)).data == "HI"
    assert listener.metrics.requests["ok"] == 1
    assert listener.metrics.streams["accepted"] == 1
    assert listener.metrics.protocol_errors["bad_rendezvous_address"] == 0


async def test_rendezvous_on_another_host_is_refused_unless_trusted(
    noded: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    async with start_listener(noded, echo_handler) as listener:
        await noded.wait_for_listeners(HC, 1)
        # A request that arrived whole is answered at once, with why, and nothing is dialled.
        status, _, headers, _ = await send_http(http, noded, "/small", method="POST", data=b"x")
    assert (status, headers["x-gateway-reason"]) == (502, "bad_rendezvous_address")
    assert listener.metrics.protocol_errors["bad_rendezvous_address"] == 1


async def test_the_namespace_host_serves_no_rendezvous(
    noded: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    # A listener that rebuilt the address on the namespace host (instead of using it verbatim,
    # section 1) would fail, as it would against Azure.
    url = f"{noded.ws_base}/$hc/{HC}?sb-hc-action=request&sb-hc-id=x&sb-hc-rdv=y"
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await http.ws_connect(url)
    assert caught.value.status == 404
    listen = f"{noded.rendezvous_base}/$hc/{HC}?sb-hc-action=listen"
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await http.ws_connect(listen, headers={"ServiceBusAuthorization": noded.token(HC)})
    assert caught.value.status == 404


@pytest.mark.parametrize("reuse", [True, False])
async def test_keep_alive_senders_reuse_their_rendezvous_socket(
    relay: RelayEmulator, reuse: bool
) -> None:
    relay.rendezvous_reuse = reuse
    seen: list[str] = []

    async def record(request: RelayedRequest) -> RelayedResponse:
        seen.append(request.target)
        return RelayedResponse(200, "OK", (), b"n=" + str(len(request.body)).encode())

    # One connection for the sender, so its later requests can follow the first one.
    connector = aiohttp.TCPConnector(limit=1)
    async with (
        aiohttp.ClientSession(connector=connector) as sender,
        start_listener(relay, record) as listener,
    ):
        await relay.wait_for_listeners(HC, 1)
        first = await send_http(sender, relay, "/upload", method="PUT", data=BIG)
        second = await send_http(sender, relay, "/after", method="POST", data=b"tiny")
        third = await send_http(sender, relay, "/again")
    assert [first[3], second[3], third[3]] == [b"n=102400", b"n=4", b"n=0"]
    assert seen == ["/upload", "/after", "/again"]
    assert relay.deliveries["rendezvous"] == 1
    assert relay.deliveries["reused"] == (2 if reuse else 0)
    assert listener.metrics.requests["ok"] == 3


async def test_an_idle_control_channel_is_dropped_and_rejoined(relay: RelayEmulator) -> None:
    # Pings every 30 s against a relay that drops after 0.5 s of silence (Azure: ~4 min).
    relay.idle_timeout = 0.5
    async with start_listener(relay, ping_interval=30.0, backoff=SLOW) as listener:
        await wait_until(lambda: relay.idle_drops >= 1)
        await wait_until(lambda: sum(listener.metrics.reconnects.values()) >= 1)
        relay.idle_timeout = None
        await relay.wait_for_listeners(HC, 1)


async def test_fault_knobs_over_the_admin_endpoint(
    relay: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    admin = f"{relay.http_base}/$admin"
    async with start_listener(relay, backoff=SLOW) as listener:
        await relay.wait_for_listeners(HC, 1)
        async with http.post(f"{admin}/close-listeners?code=1011&reason=NameRenewalFailed") as r:
            assert (r.status, await r.json()) == (200, {"closed": 1})
        await wait_until(lambda: listener.metrics.reconnects["closed"] == 1)
        await relay.wait_for_listeners(HC, 1)
        await wait_until(lambda: listener.metrics.listeners_online == 1)
        async with http.post(f"{admin}/expire-tokens?hc={HC}") as r:
            assert (await r.json()) == {"closed": 1}
        await wait_until(lambda: listener.metrics.reconnects["token_expired"] == 1)
        await relay.wait_for_listeners(HC, 1)
        await wait_until(lambda: listener.metrics.listeners_online == 1)
        async with http.post(
            f"{admin}/refuse-listens", params={"status": "403", "reason": QUOTA_TEXT}
        ):
            pass
        async with http.post(f"{admin}/drop-listeners") as r:
            assert (await r.json()) == {"dropped": 1}
        await wait_until(lambda: listener.metrics.listen_refusals["quota"] >= 1)
        async with http.post(f"{admin}/no-listener-status?status=503") as r:
            assert (await r.json())["no_listener_status"] == 503
        status, reason, _, _ = await send_http(http, relay, "/nobody")
        assert status == 503
        assert "TrackingId:" in reason
        async with http.post(f"{admin}/refuse-listens?status=none") as r:
            assert (await r.json())["refuse_listens"] is None
        await relay.wait_for_listeners(HC, 1)
        async with http.get(f"{admin}/state") as r:
            state = await r.json()
    assert state["listeners"] == {HC: 1}
    async with http.post(f"{admin}/close-listeners?code=99") as r:
        assert r.status == 400
    async with http.post(f"{admin}/drop-listeners?hc=unknown") as r:
        assert r.status == 400
    async with http.get(f"{admin}/drop-listeners") as r:
        assert r.status == 405


async def test_gateway_dev_relay_serves_the_knobs_from_the_command_line(
    http: aiohttp.ClientSession,
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "dev",
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--hc",
        HC,
        "--key-name",
        "gateway",
        "--key",
        KEY,
        "--rendezvous-host",
        "127.0.0.2",
        "--no-listener-status",
        "503",
        "--refuse-listens",
        "403",
        "--idle-timeout",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        lines: list[str] = []
        async with asyncio.timeout(30):
            while not any(line.startswith("listen URL") for line in lines):
                lines.append((await process.stdout.readline()).decode())
        text = "".join(lines)
        base = re.search(r"HTTP senders: (http://127\.0\.0\.1:\d+)", text)
        assert base is not None, text
        assert re.search(r"rendezvous: ws://127\.0\.0\.2:\d+", text), text
        async with http.get(f"{base.group(1)}/$admin/state") as r:
            state = await r.json()
        assert state["no_listener_status"] == 503
        assert state["refuse_listens"] == 403
        assert state["idle_timeout"] is None
        assert state["rendezvous_base"].startswith("ws://127.0.0.2:")
        async with http.post(f"{base.group(1)}/$admin/refuse-listens?status=none") as r:
            assert (await r.json())["refuse_listens"] is None
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)
    assert process.returncode == 0


@pytest.mark.parametrize("inline", [True, False], ids=["control-delivered", "rendezvous-delivered"])
async def test_only_a_request_the_control_channel_carried_is_answered_there(
    http: aiohttp.ClientSession, inline: bool
) -> None:
    # Section 5.3: a rendezvous-delivered request must be answered on its rendezvous socket; a
    # listener that answers it on the control channel answers no one (the relay's 504).
    async with RelayEmulator(
        [HC], [SasRule("gateway", KEY)], seed=7, response_timeout=2.0
    ) as emulator:
        url = f"{emulator.ws_base}/$hc/{HC}?sb-hc-action=listen"
        headers = {"ServiceBusAuthorization": emulator.token(HC)}
        async with http.ws_connect(url, headers=headers) as control:
            await emulator.wait_for_listeners(HC, 1)
            sent = asyncio.create_task(
                send_http(http, emulator, "/x", method="POST", data=b"a" if inline else BIG)
            )
            command = (await control.receive_json(timeout=10))["request"]
            if inline:
                assert (await control.receive(timeout=10)).data == b"a"  # the body
            assert ("method" in command) is inline
            answer = {"requestId": command["id"], "statusCode": 200, "body": False}
            await control.send_json({"response": answer})
            status, _, _, _ = await asyncio.wait_for(sent, 30)
    assert status == (200 if inline else 504)


@pytest.mark.parametrize("size", [1, 5000, 100_000], ids=["tiny", "inline", "rendezvous"])
async def test_request_bodies_arrive_in_several_frames(
    http: aiohttp.ClientSession, size: int
) -> None:
    # Section 3.2: the body message "may be split into several frames" (binary, continuation,
    # the last with FIN). The emulator always splits, so a listener that reads only whole
    # frames fails here rather than against Azure; the production listener reassembles.
    async with RelayEmulator([HC], [SasRule("gateway", KEY)], seed=3) as emulator:
        url = f"{emulator.ws_base}/$hc/{HC}?sb-hc-action=listen"
        control = await open_relay_socket(
            url,
            OutboundProxy(ProxySettings()),
            handshake_timeout=30,
            max_size=1 << 20,
            close_timeout=1,
            headers={"ServiceBusAuthorization": emulator.token(HC)},
        )
        try:
            await emulator.wait_for_listeners(HC, 1)
            body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
            sent = asyncio.create_task(send_http(http, emulator, "/f", method="POST", data=body))
            try:
                parts = await _body_frames(control)
            finally:
                sent.cancel()
                await asyncio.gather(sent, return_exceptions=True)
            # A ping may come between fragments (RFC 6455 section 5.4); the emulator sends one.
            assert Opcode.PING in [part.opcode for part in parts[1:-1]]
            parts = [part for part in parts if part.opcode is not Opcode.PING]
            assert [part.opcode for part in parts] == [Opcode.BINARY] + [Opcode.CONTINUATION] * (
                len(parts) - 1
            )
            assert len(parts) >= 2
            assert b"".join(part.data for part in parts) == body
        finally:
            await control.close()


async def _body_frames(control: RelayWebSocket) -> list[ReceivedFrame]:
    """The frames of the next request body (control frames among them included), fetched from a
    rendezvous if need be."""
    socket = control
    frames: list[ReceivedFrame] = []
    try:
        data = (Opcode.BINARY, Opcode.CONTINUATION)
        while not any(frame.fin and frame.opcode in data for frame in frames):
            received = await asyncio.wait_for(socket.receive(), 30)
            assert received, "the relay closed the socket"
            for frame in received:
                assert isinstance(frame, ReceivedFrame)
                if frame.opcode is Opcode.TEXT:
                    command = json.loads(frame.data)["request"]
                    if "method" not in command:  # the rendezvous-only form: fetch it there
                        socket = await open_relay_socket(
                            command["address"],
                            OutboundProxy(ProxySettings()),
                            handshake_timeout=30,
                            max_size=1 << 20,
                            close_timeout=1,
                        )
                elif frame.opcode in data or frames:
                    frames.append(frame)  # the body's frames, and control frames among them
        return frames
    finally:
        if socket is not control:
            await socket.close()


async def test_commands_carry_a_member_no_listener_knows(
    relay: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    # Section 3.2: the service has added fields the guide does not list (remoteEndpoint); a
    # listener must ignore members it does not know. Every accept and request here has one.
    url = f"{relay.ws_base}/$hc/{HC}?sb-hc-action=listen"
    headers = {"ServiceBusAuthorization": relay.token(HC)}
    async with http.ws_connect(url, headers=headers) as control:
        await relay.wait_for_listeners(HC, 1)
        sent = asyncio.create_task(send_http(http, relay, "/u"))
        request = (await control.receive_json(timeout=30))["request"]
        stream = asyncio.create_task(
            http.ws_connect(f"{relay.ws_base}/$hc/{HC}?sb-hc-action=connect", headers=headers)
        )
        accept = (await control.receive_json(timeout=30))["accept"]
        for task in (sent, stream):
            task.cancel()
        await asyncio.gather(sent, stream, return_exceptions=True)
    for command in (request, accept):
        assert command["emulatorUnknownField"]["list"] == [1, True, None, "x"]
    assert request["method"] == "GET"
    assert accept["id"]


async def test_a_hand_built_request_is_delivered_as_given(
    relay: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    url = f"{relay.ws_base}/$hc/{HC}?sb-hc-action=listen"
    headers = {"ServiceBusAuthorization": relay.token(HC)}
    async with http.ws_connect(url, headers=headers) as control:
        await relay.wait_for_listeners(HC, 1)
        delivered = asyncio.create_task(
            relay.deliver_request(HC, method="GET", request_target=f"/{HC}/x", headers={})
        )
        request = (await control.receive_json(timeout=30))["request"]
        delivered.cancel()
        await asyncio.gather(delivered, return_exceptions=True)
    assert "emulatorUnknownField" not in request
    assert request["requestTarget"] == f"/{HC}/x"


async def test_a_subprotocol_the_sender_did_not_offer_fails_its_handshake(
    relay: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    # Section 4 step 4: the service finishes the sender's handshake with the listener's choice;
    # one the sender did not offer fails there (RFC 6455 section 4.1), so the stream never opens.
    url = f"{relay.ws_base}/$hc/{HC}?sb-hc-action=listen"
    headers = {"ServiceBusAuthorization": relay.token(HC)}
    async with http.ws_connect(url, headers=headers) as control:
        await relay.wait_for_listeners(HC, 1)
        sender = asyncio.create_task(
            http.ws_connect(
                f"{relay.ws_base}/$hc/{HC}?sb-hc-action=connect",
                headers=headers,
                protocols=("chat",),
            )
        )
        accept = (await control.receive_json(timeout=30))["accept"]
        async with http.ws_connect(accept["address"], protocols=("superchat",)) as leg:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await asyncio.wait_for(sender, 30)
            closing = await leg.receive(timeout=30)
    assert refused.value.status == 502
    assert closing.type is aiohttp.WSMsgType.CLOSE
    assert closing.data == 1002


def _dropped_app_parameter(address: str) -> str:
    return address.replace("x=1&", "")


def _added_parameter(address: str) -> str:
    return address + "&extra=1"


def _reordered(address: str) -> str:
    return address.replace("x=1&y=2", "y=2&x=1")


@pytest.mark.parametrize("rebuild", [_dropped_app_parameter, _added_parameter, _reordered])
async def test_a_rebuilt_rendezvous_address_is_refused(
    relay: RelayEmulator,
    http: aiohttp.ClientSession,
    rebuild: Callable[[str], str],
) -> None:
    # Section 1: listeners must use rendezvous addresses exactly as received.
    url = f"{relay.ws_base}/$hc/{HC}?sb-hc-action=listen"
    headers = {"ServiceBusAuthorization": relay.token(HC)}
    async with http.ws_connect(url, headers=headers) as control:
        await relay.wait_for_listeners(HC, 1)
        sender = asyncio.create_task(
            http.ws_connect(
                f"{relay.ws_base}/$hc/{HC}/app?x=1&y=2&sb-hc-action=connect", headers=headers
            )
        )
        address = (await control.receive_json(timeout=30))["accept"]["address"]
        assert "x=1&y=2&" in address
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(rebuild(address))
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    assert refused.value.status == 403
