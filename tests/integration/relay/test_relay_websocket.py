"""The listener's WebSocket adapter (gateway/relay/websocket.py) on real relay sockets."""

from __future__ import annotations

import logging

import aiohttp
import pytest

from gateway.devkit.relay_emulator import RelayEmulator
from gateway.outbound.proxy import OutboundProxy, ProxySettings
from gateway.relay.websocket import HandshakeRefusedError, RelaySocketError, open_relay_socket

from .listener_support import HC, send_http, start_listener


async def test_no_token_reaches_the_log_even_at_debug(
    relay: RelayEmulator, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with start_listener(relay) as listener:
        await relay.wait_for_listeners(HC, 1)
        status, _, _, body = await send_http(http, relay, "/x", method="POST", data=b"hi")
        assert (status, body) == (200, b"hi")
    assert listener.metrics.requests["ok"] == 1
    assert "SharedAccessSignature" not in caplog.text
    assert "sig=" not in caplog.text


async def test_refused_handshake_reports_status_and_reason(relay: RelayEmulator) -> None:
    url = f"{relay.ws_base}/$hc/no-such-hc?sb-hc-action=listen"
    with pytest.raises(HandshakeRefusedError) as refused:
        await open_relay_socket(
            url,
            OutboundProxy(ProxySettings()),
            handshake_timeout=5,
            max_size=1024,
            close_timeout=1,
            headers={"ServiceBusAuthorization": relay.token(HC)},
        )
    assert refused.value.status == 404
    assert "Endpoint does not exist" in refused.value.reason


async def test_a_url_that_is_not_a_websocket_url_is_refused() -> None:
    with pytest.raises(RelaySocketError):
        await open_relay_socket(
            "https://127.0.0.1:1/x",
            OutboundProxy(ProxySettings()),
            handshake_timeout=5,
            max_size=1024,
            close_timeout=1,
        )


async def test_ping_on_a_closed_socket_is_not_an_error(relay: RelayEmulator) -> None:
    # The listener's ping timer may fire in the same moment the relay's close arrives; the
    # reader reports the close, the ping must not raise an error of its own.
    ws = await open_relay_socket(
        f"{relay.ws_base}/$hc/{HC}?sb-hc-action=listen",
        OutboundProxy(ProxySettings()),
        handshake_timeout=5,
        max_size=1024,
        close_timeout=2,
        headers={"ServiceBusAuthorization": relay.token(HC)},
    )
    assert ws.open
    await relay.close_listeners(1011, "recycle")
    assert await ws.receive_message() is None
    assert ws.close_code == 1011
    assert not ws.open
    ws.ping(b"gw")
    await ws.close()
    ws.ping(b"gw")
