"""What the SaaS and the operator read when a relayed request's rendezvous address is refused.

A request that arrives whole on the control channel with an address the listener must not dial
is answered there, ``502 bad_rendezvous_address``, with a ``detail`` saying which binding failed
(docs/security.md, "Rendezvous addresses"); the operator's log line carries the same text as
``problem``. Neither ever contains the address, which is a bearer credential (protocol notes
section 2.3). One listener on a relay whose control messages this test writes by hand.
"""

from __future__ import annotations

import json
import logging

import pytest

from gateway.relay.listener import RelayListener

from .listener_support import HC, Streams, echo_handler, listener_settings, static_token
from .relay_servers import ScriptedRelay

SECRET = "sb-hc-rdv=credential"


def _cases(port: int) -> list[tuple[str, str]]:
    """(address, detail) for a request whose ``id`` is ``r1``, one per refusal reason."""
    here = f"ws://127.0.0.1:{port}"
    query = f"sb-hc-action=request&sb-hc-id=r1&{SECRET}"
    return [
        (f"{here}/$hc/{HC}?{query}&pad=" + "a" * 4096, "rendezvous address missing or too long"),
        (
            f"{here}/$hc/{HC} x?{query}",
            "rendezvous address contains forbidden characters",
        ),
        (f"ws://127.0.0.1:99999/$hc/{HC}?{query}", "rendezvous address is not a valid URL"),
        (
            f"ws://127.0.0.1:0{port}/$hc/{HC}?{query}",
            "rendezvous address has a malformed host or port",
        ),
        (
            f"ws://127.0.0.2:{port}/$hc/{HC}?{query}",
            "rendezvous address is outside the relay service",
        ),
        (
            f"{here}/$hc/other?{query}",
            "rendezvous address is not for this hybrid connection",
        ),
        (
            f"{here}/$hc/{HC}?sb-hc-action=listen&sb-hc-id=r1&{SECRET}",
            "rendezvous address lacks an accept/request action",
        ),
        (
            f"{here}/$hc/{HC}?sb-hc-action=request&{SECRET}",
            "rendezvous address lacks exactly one sb-hc-id",
        ),
        (
            f"{here}/$hc/{HC}?sb-hc-action=request&sb-hc-id=r2&{SECRET}",
            "rendezvous address is for another interaction",
        ),
    ]


def _request(address: str) -> str:
    return json.dumps(
        {
            "request": {
                "address": address,
                "id": "r1",
                "requestTarget": f"/{HC}/ping",
                "method": "GET",
                "requestHeaders": {},
                "body": False,
            }
        }
    )


async def test_each_refused_binding_is_named_to_the_saas_and_in_the_log(
    scripted: ScriptedRelay, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.relay")
    listener = RelayListener(
        listener_settings(scripted.base),
        token_provider=static_token,
        request_handler=echo_handler,
        stream_handler=Streams(),
    )
    cases = _cases(scripted.port)
    async with listener:
        control = await scripted.next_channel()
        details = []
        for address, _ in cases:
            await control.send_str(_request(address))
            answer = json.loads(await scripted.next_message())["response"]
            assert (answer["requestId"], answer["statusCode"]) == ("r1", 502)
            assert answer["responseHeaders"]["x-gateway-reason"] == "bad_rendezvous_address"
            body = await scripted.next_message() if answer.get("body") else b""
            details.append(json.loads(body)["detail"])
        # A sound address on the same channel is still answered by the handler.
        await control.send_str(
            _request(f"{scripted.base}/$hc/{HC}?sb-hc-action=request&sb-hc-id=r1")
        )
        assert json.loads(await scripted.next_message())["response"]["statusCode"] == 200
    assert details == [detail for _, detail in cases]
    problems = [
        getattr(record, "problem", None)
        for record in caplog.records
        if getattr(record, "event", None) == "bad_rendezvous_address"
    ]
    assert problems == details
    assert SECRET not in caplog.text
    assert not any(SECRET in detail for detail in details)
