"""Relay URL building and the rendezvous address check (section 1, catalogue item 24)."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest
from hypothesis import example, given, settings
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


def test_endpoint_may_end_with_a_slash() -> None:
    assert RelayEndpoint.parse("wss://contoso.servicebus.windows.net/") == AZURE


# The operator reads these when gateway.yaml's relay endpoint is wrong.
ONLY = "relay endpoint must be scheme://host[:port] only"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://x", "relay endpoint must use ws:// or wss://"),
        ("wss://", "relay endpoint has no host"),
        ("wss://u@x", ONLY),
        ("wss://x/path", ONLY),
        ("wss://x//", ONLY),
        ("wss://x?q=1", ONLY),
        ("wss://x#f", ONLY),
        ("wss://x:99999", "Port out of range 0-65535"),
    ],
)
def test_endpoint_rejects_anything_but_scheme_host_port(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
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


def test_hc_names_keep_every_character_but_the_surrounding_slashes() -> None:
    url = listen_url(AZURE, "//Xray/sub X//")
    assert urlsplit(url).path == "/$hc/Xray/sub%20X"
    with pytest.raises(ValueError, match=r"^hybrid connection path must not be empty$"):
        listen_url(AZURE, "//")


def test_connect_url_without_suffix_and_with_a_token() -> None:
    url = connect_url(DEV, "hyco", token="SharedAccessSignature sr=a&sig=b")
    assert url == (
        "ws://127.0.0.1:9000/$hc/hyco?sb-hc-action=connect"
        "&sb-hc-token=SharedAccessSignature%20sr%3Da%26sig%3Db"
    )
    assert connect_url(DEV, "hyco", suffix="Xy/z") == (
        "ws://127.0.0.1:9000/$hc/hyco/Xy/z?sb-hc-action=connect"
    )


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
    bare = "wss://g.servicebus.windows.net/$hc/hyco"
    assert reject_url(bare, 100, "") == bare + "?sb-hc-statusCode=100&sb-hc-statusDescription="
    assert reject_url(bare, 999, "x").startswith(bare + "?sb-hc-statusCode=999&")


@pytest.mark.parametrize("status", [99, 1000, -403])
def test_reject_url_needs_a_three_digit_status(status: int) -> None:
    with pytest.raises(ValueError, match=r"^status code must be 100-999$"):
        reject_url("wss://g.servicebus.windows.net/$hc/hyco", status, "x")


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


@pytest.mark.parametrize(
    "suffix", ["servicebus.windows.net", ".net", ".-bad.example", ".bad-.example", ".a..example"]
)
def test_domain_suffix_must_be_a_dotted_domain_of_two_labels(suffix: str) -> None:
    message = (
        "domain_suffix must start with '.' and name a domain of at least two labels, "
        "e.g. '.servicebus.windows.net'"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        RendezvousPolicy(domain_suffix=suffix)


def test_a_two_label_domain_suffix_is_enough() -> None:
    policy = RendezvousPolicy(domain_suffix=".corp.example", entity_path="hyco")
    address = "wss://n1.corp.example/$hc/hyco?sb-hc-action=accept&sb-hc-id=1"
    assert policy.check(address) == address


def test_address_length_bound_is_inclusive() -> None:
    base = "wss://g.servicebus.windows.net/$hc/hyco?sb-hc-action=accept&sb-hc-id=1&p="
    longest = base + "a" * (4096 - len(base))
    policy = RendezvousPolicy(entity_path="hyco")
    assert policy.check(longest) == longest
    with pytest.raises(BadRendezvousAddressError):
        policy.check(longest + "a")


def test_a_question_mark_inside_the_query_belongs_to_the_query() -> None:
    # RFC 3986 section 3.4: '?' may appear in a query; only the first one starts it.
    address = "wss://g.servicebus.windows.net/$hc/hyco?sb-hc-action=accept&sb-hc-id=1&next=a?b"
    assert RendezvousPolicy(entity_path="hyco").check(address, "1") == address


def test_without_an_entity_path_any_hybrid_connection_path_is_allowed() -> None:
    policy = RendezvousPolicy()
    for path in ("hyco", "Other/sub"):
        address = f"wss://g.servicebus.windows.net/$hc/{path}?sb-hc-action=request&sb-hc-id=1"
        assert policy.check(address, "1") == address
    with pytest.raises(BadRendezvousAddressError):
        policy.check("wss://g.servicebus.windows.net/hyco?sb-hc-action=request&sb-hc-id=1")


def test_a_local_relay_named_by_host_name_is_trusted_whatever_its_case() -> None:
    policy = RendezvousPolicy(
        domain_suffix=None,
        entity_path="hyco",
        dev_endpoint=RelayEndpoint.parse("ws://Relay.Local:9000"),
    )
    for host in ("relay.local", "RELAY.local"):
        address = f"ws://{host}:9000/$hc/hyco?sb-hc-action=accept&sb-hc-id=1"
        assert policy.check(address, "1") == address
    with pytest.raises(BadRendezvousAddressError):
        policy.check("wss://g.servicebus.windows.net/$hc/hyco?sb-hc-action=accept&sb-hc-id=1")


@given(st.text(max_size=120))
def test_check_only_raises_bad_rendezvous_address(address: str) -> None:
    policy = RendezvousPolicy(entity_path="hyco", dev_endpoint=DEV)
    try:
        policy.check(address)
    except BadRendezvousAddressError:
        return
    host = urlsplit(address).hostname or ""
    assert host.endswith(".servicebus.windows.net") or host == "127.0.0.1"


def _reference_verdict(policy: RendezvousPolicy, address: str, command_id: str | None) -> str:
    """The address check written the plain way: the query split into its pieces, the head
    judged on every call. ``check`` must agree with it on every input, message for message."""
    if len(address) > 4096:
        return "rendezvous address missing or too long"
    if not address.isascii() or not address.isprintable() or re.search(r"[ \\@#]", address):
        return "rendezvous address contains forbidden characters"
    head, _, query = address.partition("?")
    problem = policy.judge_head(head)
    if problem is not None:
        return problem
    pieces = query.split("&")
    if "sb-hc-action=accept" not in pieces and "sb-hc-action=request" not in pieces:
        return "rendezvous address lacks an accept/request action"
    ids = [unquote(piece[len("sb-hc-id=") :]) for piece in pieces if piece.startswith("sb-hc-id=")]
    if len(ids) != 1 or not ids[0]:
        return "rendezvous address lacks exactly one sb-hc-id"
    if command_id is not None and ids[0] != command_id:
        return "rendezvous address is for another interaction"
    return "ok"


# Query pieces that sit on the check's boundaries: the action and id keys whole, cut, repeated,
# percent-encoded, empty, behind another key's '='; separators doubled; characters it refuses.
_QUERY_PARTS = st.sampled_from(
    [
        "sb-hc-action=accept",
        "sb-hc-action=request",
        "sb-hc-action=listen",
        "sb-hc-action=accepted",
        "xsb-hc-action=accept",
        "sb-hc-id=",
        "sb-hc-id=1",
        "sb-hc-id=%31",
        "sb-hc-id=2",
        "sb-hc-id",
        "x=sb-hc-id=1",
        "sb-hc-id==1",
        "%",
        "&",
        "&&",
        "=",
        "?",
        "1",
        " ",
        "#",
        "\t",
        "é",
    ]
)


@settings(max_examples=400)
@example(
    "sb-hc-action=accept&x=sb-hc-id=2&sb-hc-id=1", "wss://g.servicebus.windows.net/$hc/hyco", "1"
)
@example("xsb-hc-action=accept&sb-hc-id=1", "wss://g.servicebus.windows.net/$hc/hyco", "1")
@example("sb-hc-action=accepted&sb-hc-id=1", "wss://g.servicebus.windows.net/$hc/hyco", "1")
@example("sb-hc-action=request&sb-hc-id=%31", "ws://127.0.0.1:9000/$hc/hyco", "1")
@example("sb-hc-id=1&sb-hc-action=request&sb-hc-id", "ws://127.0.0.1:9000/$hc/hyco", None)
@given(
    st.lists(_QUERY_PARTS, max_size=8).map("".join),
    st.sampled_from(["wss://g.servicebus.windows.net/$hc/hyco", "ws://127.0.0.1:9000/$hc/hyco"]),
    st.sampled_from([None, "1", "2", "", "=1"]),
)
def test_check_decides_exactly_as_the_plain_reading_of_the_query(
    query: str, head: str, command_id: str | None
) -> None:
    policy = RendezvousPolicy(entity_path="hyco", dev_endpoint=DEV)
    address = f"{head}?{query}"
    try:
        policy.check(address, command_id)
    except BadRendezvousAddressError as refused:
        verdict = str(refused)
    else:
        verdict = "ok"
    assert verdict == _reference_verdict(policy, address, command_id)


def test_a_policy_keeps_a_bounded_number_of_head_verdicts() -> None:
    policy = RendezvousPolicy(entity_path="hyco")
    for number in range(1000):
        head = f"wss://n{number}.servicebus.windows.net/$hc/hyco"
        assert policy.check(f"{head}?sb-hc-action=accept&sb-hc-id=1", "1")
        with pytest.raises(BadRendezvousAddressError, match="outside the relay service"):
            policy.check(f"wss://n{number}.evil.example/$hc/hyco?sb-hc-action=accept&sb-hc-id=1")
    assert len(policy._verdicts) <= 256
    # The kept verdicts do not make equal policies differ.
    assert policy == RendezvousPolicy(entity_path="hyco")
    assert hash(policy) == hash(RendezvousPolicy(entity_path="hyco"))
