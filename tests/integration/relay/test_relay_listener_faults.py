"""The relay listener under relay faults: expiry, drops, half-open sockets, refusals, hostility."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from pathlib import Path

import aiohttp
import pytest
import trustme

from gateway.devkit.relay_emulator import RelayEmulator, SasRule
from gateway.outbound.proxy import ProxySettings
from gateway.relay.backoff import BackoffPolicy
from gateway.relay.handlers import RelayedRequest, RelayedResponse
from gateway.relay.listener import RelayListener

from ..squid import Squid
from .listener_support import (
    HC,
    KEY,
    Handler,
    Streams,
    Tokens,
    echo_handler,
    listener_settings,
    send_http,
    start_listener,
    static_token,
    wait_until,
)
from .relay_servers import ConnectionRecorder, ScriptedRelay

SLOW = BackoffPolicy(base=0.05, cap=0.2, auth_retry_delay=5.0, not_found_retry_delay=5.0)


async def test_token_is_renewed_before_it_expires(
    relay: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    # Tokens of 4 s renewed after a quarter of their life: each renewal has about 3 s to spare,
    # so a busy machine's stall does not let one expire. A token lives 3 to 4 s (`se` is whole
    # seconds), so renewals come 0.75 s apart or more, and six take the channel past the first
    # token's expiry.
    tokens = Tokens(relay, ttl=4)
    settings = listener_settings(relay.ws_base, renew_at=0.25)
    async with RelayListener(
        settings, token_provider=tokens, request_handler=echo_handler, stream_handler=Streams()
    ) as listener:
        await relay.wait_for_listeners(HC, 1)
        # The emulator closes the channel with 1008 once the bound token's `se` passes.
        await wait_until(lambda: listener.metrics.token_renewals >= 6)
        status, _, _, _ = await send_http(http, relay, "/still-here")
    assert status == 200
    assert sum(listener.metrics.reconnects.values()) == 0
    assert tokens.calls >= 7


async def test_dropped_channel_reconnects(
    relay: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    async with start_listener(relay, backoff=SLOW) as listener:
        await relay.wait_for_listeners(HC, 1)
        assert await relay.drop_listeners(HC) == 1
        await wait_until(lambda: sum(listener.metrics.reconnects.values()) >= 1)
        await relay.wait_for_listeners(HC, 1)
        status, _, _, _ = await send_http(http, relay, "/again")
    assert status == 200


@pytest.mark.parametrize("code", [1001, 1008, 1011])
async def test_service_close_codes_reconnect(
    relay: RelayEmulator, http: aiohttp.ClientSession, code: int
) -> None:
    async with start_listener(relay, backoff=SLOW) as listener:
        await relay.wait_for_listeners(HC, 1)
        await relay.close_listeners(code, "test")
        # 1008 means the token expired: counted apart, as it is retried at once with a new one.
        reason = "token_expired" if code == 1008 else "closed"
        await wait_until(lambda: listener.metrics.reconnects[reason] >= 1)
        await relay.wait_for_listeners(HC, 1)
        assert (await send_http(http, relay, "/x"))[0] == 200


async def test_blackholed_socket_is_detected_by_ping_timeout(
    relay: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    async with start_listener(relay, backoff=SLOW, ping_interval=0.2, ping_timeout=0.3) as listener:
        await relay.wait_for_listeners(HC, 1)
        relay.set_blackhole(True)
        await wait_until(lambda: listener.metrics.reconnects["ping_timeout"] >= 1)
        relay.set_blackhole(False)
        await wait_until(lambda: listener.metrics.listeners_online == 1)
        assert (await send_http(http, relay, "/back"))[0] == 200


async def test_unauthorized_refreshes_once_then_retries_slowly(
    relay: RelayEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.relay")
    relay.refuse_listens(401)
    tokens = Tokens(relay)
    listener = RelayListener(
        listener_settings(relay.ws_base, backoff=SLOW),
        token_provider=tokens,
        request_handler=echo_handler,
        stream_handler=Streams(),
    )
    async with listener:
        await wait_until(lambda: listener.metrics.reconnects["unauthorized"] >= 2)
        await asyncio.sleep(0.5)
        # First attempt, one immediate retry with a fresh token, then the slow (>= 2.5 s) wait.
        assert tokens.calls == 2
        assert listener.metrics.reconnects["unauthorized"] == 2
        assert listener.metrics.listeners_online == 0
    assert "relay_unauthorized" in caplog.text
    assert "SharedAccessSignature" not in caplog.text


async def test_hybrid_connection_gone_alerts_and_retries_slowly(relay: RelayEmulator) -> None:
    relay.refuse_listens(404)
    alerts: list[tuple[str, str]] = []
    tokens = Tokens(relay)
    listener = RelayListener(
        listener_settings(relay.ws_base, backoff=SLOW),
        token_provider=tokens,
        request_handler=echo_handler,
        stream_handler=Streams(),
        on_alert=lambda code, message: alerts.append((code, message)),
    )
    async with listener:
        await wait_until(lambda: bool(alerts))
        await asyncio.sleep(0.5)
        assert tokens.calls == 1
    assert alerts[0][0] == "hybrid_connection_not_found"
    assert listener.metrics.alerts["hybrid_connection_not_found"] == 1


async def test_two_listeners_one_killed_the_other_serves_everything(
    relay: RelayEmulator, http: aiohttp.ClientSession
) -> None:
    served: dict[str, int] = {"a": 0, "b": 0}

    def named(name: str) -> Handler:
        async def handler(request: RelayedRequest) -> RelayedResponse:
            served[name] += 1
            return RelayedResponse(200, "OK", (), name.encode())

        return handler

    first = start_listener(relay, named("a"))
    second = start_listener(relay, named("b"))
    await first.start()
    await second.start()
    try:
        await relay.wait_for_listeners(HC, 2)
        for _ in range(20):
            assert (await send_http(http, relay, "/spread"))[0] == 200
        assert served["a"] > 0
        assert served["b"] > 0
        await first.stop(grace=0)
        await relay.wait_for_listeners(HC, 1)
        results = [await send_http(http, relay, "/after") for _ in range(10)]
    finally:
        await second.stop()
    assert {status for status, *_ in results} == {200}
    assert {body for *_, body in results} == {b"b"}


async def _request_message(scripted: ScriptedRelay, request_id: str, address_port: int) -> str:
    address = f"ws://127.0.0.1:{address_port}/$hc/{HC}?sb-hc-action=request&sb-hc-id={request_id}"
    return json.dumps(
        {
            "request": {
                "address": address,
                "id": request_id,
                "requestTarget": f"/{HC}/ping",
                "method": "GET",
                "requestHeaders": {},
                "body": False,
            }
        }
    )


async def test_malformed_relay_messages_are_counted_and_survived(
    scripted: ScriptedRelay,
) -> None:
    listener = RelayListener(
        listener_settings(scripted.base, backoff=SLOW),
        token_provider=static_token,
        request_handler=echo_handler,
        stream_handler=Streams(),
    )
    async with listener:
        control = await scripted.next_channel()
        # An unknown command is ignored (catalogue item 131) and the channel keeps working.
        await control.send_str(json.dumps({"detach": {"reason": "none"}}))
        await control.send_bytes(b"stray binary")
        await control.send_str(await _request_message(scripted, "r1", scripted.port))
        answer = json.loads(await scripted.next_message())
        assert answer["response"]["requestId"] == "r1"
        assert answer["response"]["statusCode"] == 200
        assert listener.metrics.protocol_errors["unknown_command"] == 1
        assert listener.metrics.protocol_errors["unexpected_frame"] == 1
        assert scripted.listens == 1
        # Broken JSON leaves the framing in doubt: the channel is reset and re-opened.
        await control.send_str("{not json")
        again = await scripted.next_channel()
        assert listener.metrics.protocol_errors["malformed_message"] == 1
        await again.send_str(await _request_message(scripted, "r2", scripted.port))
        assert json.loads(await scripted.next_message())["response"]["requestId"] == "r2"


async def test_bad_rendezvous_address_is_never_dialled(
    scripted: ScriptedRelay,
    connection_recorder: ConnectionRecorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def big(request: RelayedRequest) -> RelayedResponse:
        return RelayedResponse(200, "OK", (), b"x" * 100_000)

    listener = RelayListener(
        listener_settings(scripted.base),
        token_provider=static_token,
        request_handler=big,
        stream_handler=Streams(),
    )
    caplog.set_level(logging.WARNING, logger="gateway.relay")
    async with listener:
        control = await scripted.next_channel()
        hostile = f"ws://127.0.0.1:{connection_recorder.port}/$hc/{HC}?sb-hc-action=accept"
        accept = {"accept": {"address": hostile, "id": "s1", "connectHeaders": {}}}
        await control.send_str(json.dumps(accept))
        await control.send_str(await _request_message(scripted, "r1", connection_recorder.port))
        rendezvous_only = {"request": {"address": hostile.replace("accept", "request")}}
        await control.send_str(json.dumps(rendezvous_only))
        await wait_until(lambda: listener.metrics.protocol_errors["bad_rendezvous_address"] == 3)
        # The full request came whole over the control channel: answered there, 502, with why.
        answer = json.loads(await scripted.next_message())["response"]
        assert (answer["requestId"], answer["statusCode"]) == ("r1", 502)
        assert answer["responseHeaders"]["x-gateway-reason"] == "bad_rendezvous_address"
        await asyncio.sleep(0.2)
        assert scripted.listens == 1
    assert connection_recorder.connections == []
    assert listener.metrics.requests == {"bad_rendezvous_address": 1}
    assert "bad_rendezvous_address" in caplog.text
    assert str(connection_recorder.port) not in caplog.text


async def test_relay_traffic_goes_through_squid(
    squid_proxy: Squid,
    test_ca: trustme.CA,
    ca_file: Path,
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    test_ca.issue_cert("127.0.0.1").configure_cert(context)
    payload = b"z" * 150_000

    async def mixed(request: RelayedRequest) -> RelayedResponse:
        return RelayedResponse(200, "OK", (), payload if request.target == "/big" else b"small")

    async with RelayEmulator([HC], [SasRule("gateway", KEY)], ssl_context=context) as relay:
        settings = listener_settings(
            relay.ws_base, proxy=ProxySettings(url=squid_proxy.url, extra_ca_file=ca_file)
        )
        async with RelayListener(
            settings, token_provider=Tokens(relay), request_handler=mixed, stream_handler=Streams()
        ) as listener:
            await relay.wait_for_listeners(HC, 1)
            client_ssl = ssl.create_default_context(cafile=str(ca_file))
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=client_ssl)
            ) as sender:
                assert (await send_http(sender, relay, "/small"))[3] == b"small"
                assert (await send_http(sender, relay, "/big"))[3] == payload
        assert listener.metrics.requests["ok"] == 2
    log = await squid_proxy.wait_for_log(f"CONNECT 127.0.0.1:{relay.port}", count=2)
    # The control channel and the large response's rendezvous socket each made a tunnel.
    assert log.count(f"CONNECT 127.0.0.1:{relay.port}") >= 2
