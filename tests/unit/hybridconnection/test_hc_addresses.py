"""Relay URL building and the rendezvous address check (section 1, catalogue item 24)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.hybridconnection.addresses import (
    RelayEndpoint,
    RendezvousPolicy,
    connect_url,
    http_url,
    listen_url,
    reject_url,
)
from gateway.hybridconnection.errors import BadRendezvousAddressError

AZURE = RelayEndpoint.parse("wss://contoso.servicebus.windows.net")
DEV = RelayEndpoint.parse("ws://127.0.0.1:9000")


def test_endpoint_parsing_and_default_port() -> None:
    assert (AZURE.scheme, AZURE.host, AZURE.port) == ("wss", "contoso.servicebus.windows.net", 443)
    assert AZURE.base == "wss://contoso.servicebus.windows.net"
    assert DEV.base == "ws://127.0.0.1:9000"
    assert RelayEndpoint.parse("ws://[::1]:9000").base == "ws://[::1]:9000"


@pytest.mark.parametrize(
    "url", ["https://x", "wss://", "wss://u@x", "wss://x/path", "wss://x?q=1", "wss://x:99999"]
)
def test_endpoint_rejects_anything_but_scheme_host_port(url: str) -> None:
    with pytest.raises(ValueError, match=r"relay endpoint|[Pp]ort"):
        RelayEndpoint.parse(url)


def test_listen_url_shape() -> None:
    url = listen_url(AZURE, "/a/b c/", listener_id="L1", token="SharedAccessSignature sr=x&y=1")
    parts = urlsplit(url)
    assert parts.path == "/$hc/a/b%20c"
    assert parse_qsl(parts.query) == [
        ("sb-hc-action", "listen"),
        ("sb-hc-id", "L1"),
        ("sb-hc-token", "SharedAccessSignature sr=x&y=1"),
    ]


def test_connect_and_http_urls() -> None:
    url = connect_url(DEV, "hyco", suffix="chat/1", query=[("room", "a&b")], sender_id="S")
    assert url == "ws://127.0.0.1:9000/$hc/hyco/chat/1?room=a%26b&sb-hc-action=connect&sb-hc-id=S"
    assert http_url(AZURE, "hyco", suffix="/x", query=[("q", "1")]) == (
        "https://contoso.servicebus.windows.net/hyco/x?q=1"
    )
    assert http_url(DEV, "hyco") == "http://127.0.0.1:9000/hyco"


def test_reject_url_appends_status() -> None:
    address = "wss://g.servicebus.windows.net:443/$hc/hyco?sb-hc-action=accept&sb-hc-id=1"
    assert reject_url(address, 403, "not allowed") == (
        address + "&sb-hc-statusCode=403&sb-hc-statusDescription=not%20allowed"
    )


GOOD = [
    "wss://g63-prod-xxx-001-sb.servicebus.windows.net:443/$hc/hyco?sb-hc-action=accept&sb-hc-id=1",
    "wss://dc-node.servicebus.windows.net/$hc/hyco?sb-hc-action=request&sb-hc-id=2",
    "wss://dc-node.servicebus.windows.net/$hc/HYCO/suffix?x=1&sb-hc-action=accept&sb-hc-id=3",
]
BAD = [
    "wss://evil.example/$hc/hyco?sb-hc-action=accept",
    "ws://dc-node.servicebus.windows.net/$hc/hyco?sb-hc-action=accept",
    "wss://dc-node.servicebus.windows.net:8443/$hc/hyco?sb-hc-action=accept",
    "wss://servicebus.windows.net/$hc/hyco?sb-hc-action=accept",
    "wss://.servicebus.windows.net/$hc/hyco?sb-hc-action=accept",
    "wss://evilservicebus.windows.net/$hc/hyco?sb-hc-action=accept",
    "wss://x.servicebus.windows.net.evil.example/$hc/hyco?sb-hc-action=accept",
    "wss://x.servicebus.windows.net./$hc/hyco?sb-hc-action=accept",
    "wss://x.servicebus.windows.net@evil.example/$hc/hyco?sb-hc-action=accept",
    "wss://evil.example\\@x.servicebus.windows.net/$hc/hyco?sb-hc-action=accept",
    "wss://evil.example#@x.servicebus.windows.net/$hc/hyco?sb-hc-action=accept",
    "wss://x.servicebus.windows\t.net/$hc/hyco?sb-hc-action=accept",
    "wss://x.servicebus.windows.net/$hc/other?sb-hc-action=accept",
    "wss://x.servicebus.windows.net/$hc/hyco2?sb-hc-action=accept",
    "wss://x.servicebus.windows.net/hyco?sb-hc-action=accept",
    "wss://x.servicebus.windows.net/$hc/hyco?sb-hc-action=listen",
    "wss://x.servicebus.windows.net/$hc/hyco",
    "wss://x.servicebus.windows.net:abc/$hc/hyco?sb-hc-action=accept",
    "wss://x.servicebus.windows.net\u3002/$hc/hyco?sb-hc-action=accept",
    "ws://127.0.0.1:9000/$hc/hyco?sb-hc-action=accept",
    "",
    "wss://x.servicebus.windows.net/$hc/hyco?sb-hc-action=accept&p=" + "a" * 5000,
]


@pytest.mark.parametrize("address", GOOD)
def test_service_addresses_are_allowed(address: str) -> None:
    assert RendezvousPolicy(entity_path="hyco").check(address) == address


@pytest.mark.parametrize("address", BAD)
def test_foreign_addresses_are_refused(address: str) -> None:
    with pytest.raises(BadRendezvousAddressError) as caught:
        RendezvousPolicy(entity_path="hyco").check(address)
    assert caught.value.code == "bad_rendezvous_address"
    # The address is a bearer credential: it never appears in the error.
    assert "sb-hc-id" not in str(caught.value)


def test_dev_endpoint_must_match_exactly() -> None:
    policy = RendezvousPolicy(entity_path="hyco", dev_endpoint=DEV)
    policy.check("ws://127.0.0.1:9000/$hc/hyco?sb-hc-action=accept&sb-hc-id=1")
    for address in (
        "ws://127.0.0.1:9001/$hc/hyco?sb-hc-action=accept",
        "wss://127.0.0.1:9000/$hc/hyco?sb-hc-action=accept",
        "ws://127.0.0.2:9000/$hc/hyco?sb-hc-action=accept",
        "ws://localhost:9000/$hc/hyco?sb-hc-action=accept",
    ):
        with pytest.raises(BadRendezvousAddressError):
            policy.check(address)


def test_domain_suffix_must_start_with_a_dot() -> None:
    with pytest.raises(ValueError, match="must start with"):
        RendezvousPolicy(domain_suffix="servicebus.windows.net")


@given(st.text(max_size=120))
def test_check_only_raises_bad_rendezvous_address(address: str) -> None:
    policy = RendezvousPolicy(entity_path="hyco", dev_endpoint=DEV)
    try:
        policy.check(address)
    except BadRendezvousAddressError:
        return
    host = urlsplit(address).hostname or ""
    assert host.endswith(".servicebus.windows.net") or host == "127.0.0.1"
