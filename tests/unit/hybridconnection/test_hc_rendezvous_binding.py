"""What binds a rendezvous address: the namespace's domain, the HC path and the interaction id
(docs/security.md, "Rendezvous addresses"; protocol notes sections 1 and 3.2)."""

from __future__ import annotations

import json

import pytest

from gateway.hybridconnection.addresses import RendezvousPolicy, relay_domain_for
from gateway.hybridconnection.errors import BadRendezvousAddressError
from gateway.hybridconnection.framing import (
    AcceptReceived,
    ListenerChannel,
    MalformedRequestReceived,
    ProtocolViolation,
    RendezvousRequested,
    RequestReceived,
    SocketKind,
)
from gateway.relay.settings import ListenerSettings

CLOUDS = [
    ("contoso.servicebus.windows.net", ".servicebus.windows.net"),
    ("contoso.servicebus.usgovcloudapi.net", ".servicebus.usgovcloudapi.net"),
    ("contoso.servicebus.chinacloudapi.cn", ".servicebus.chinacloudapi.cn"),
    ("contoso.servicebus.cloudapi.de", ".servicebus.cloudapi.de"),
    ("CONTOSO.ServiceBus.Windows.Net", ".servicebus.windows.net"),
]


@pytest.mark.parametrize(("namespace", "domain"), CLOUDS)
def test_domain_follows_the_namespace_of_every_cloud(namespace: str, domain: str) -> None:
    assert relay_domain_for(namespace) == domain


@pytest.mark.parametrize(
    "namespace",
    ["127.0.0.1", "localhost", "relay.devkit.invalid", "servicebus.windows.net", "a.servicebus.x"],
)
def test_no_domain_is_guessed_for_other_shapes(namespace: str) -> None:
    assert relay_domain_for(namespace) is None


def _policy(namespace: str, **extra: object) -> RendezvousPolicy:
    return ListenerSettings(endpoint=namespace, hc_path="hyco", **extra).rendezvous_policy()  # type: ignore[arg-type]


def _address(host: str, *, path: str = "hyco", rid: str = "r1", action: str = "request") -> str:
    return f"wss://{host}/$hc/{path}?sb-hc-action={action}&sb-hc-id={rid}"


@pytest.mark.parametrize(("namespace", "domain"), CLOUDS[:4])
def test_sovereign_cloud_rendezvous_nodes_are_dialled(namespace: str, domain: str) -> None:
    node = "g63-prod-xx-001-sb" + domain
    policy = _policy(namespace)
    assert policy.check(_address(node + ":443"), "r1")
    assert policy.check(_address(node), "r1")


def test_another_clouds_nodes_are_refused() -> None:
    policy = _policy("contoso.servicebus.usgovcloudapi.net")
    with pytest.raises(BadRendezvousAddressError):
        policy.check(_address("g1.servicebus.windows.net"), "r1")


def test_the_domain_is_configurable() -> None:
    policy = _policy("relay.corp.example", relay_domain="relaynodes.corp.example")
    assert policy.check(_address("n1.relaynodes.corp.example"), "r1")
    with pytest.raises(BadRendezvousAddressError):
        policy.check(_address("n1.servicebus.windows.net"), "r1")


LOOKALIKES = [
    # suffix tricks
    "g1servicebus.usgovcloudapi.net",
    "servicebus.usgovcloudapi.net",
    "g1.servicebus.usgovcloudapi.net.evil.example",
    "g1.servicebus.usgovcloudapi.netevil.example",
    "g1.servicebus.usgovcloudapi.net.",
    "g1.xservicebus.usgovcloudapi.net",
    "g1.servicebus-usgovcloudapi.net",
    # user-info, in every position
    "user@g1.servicebus.usgovcloudapi.net",
    "user:pw@g1.servicebus.usgovcloudapi.net",
    "g1.servicebus.usgovcloudapi.net@evil.example",
    "g1.servicebus.usgovcloudapi.net:443@evil.example",
    # ports
    "g1.servicebus.usgovcloudapi.net:444",
    "g1.servicebus.usgovcloudapi.net:80",
    "g1.servicebus.usgovcloudapi.net:0443",
    "g1.servicebus.usgovcloudapi.net:",
    "g1.servicebus.usgovcloudapi.net:+443",
    "g1.servicebus.usgovcloudapi.net:443:443",
    # other spellings of the host
    "g1.servicebus.usgovcloudapi.net%2eevil.example",
    "[::1]",
    "10.0.0.1",
]


@pytest.mark.parametrize("host", LOOKALIKES)
def test_hosts_that_look_close_to_the_relay_domain_are_refused(host: str) -> None:
    policy = _policy("contoso.servicebus.usgovcloudapi.net")
    with pytest.raises(BadRendezvousAddressError):
        policy.check(_address(host), "r1")


NODE = "g1.servicebus.windows.net"


@pytest.mark.parametrize(
    "address",
    [
        _address(NODE, path="other"),  # another HC
        _address(NODE, path="hyco2"),  # a HC whose name starts like ours
        _address(NODE, path="hyc"),
        f"wss://{NODE}/hyco?sb-hc-action=request&sb-hc-id=r1",  # not a $hc address
    ],
)
def test_an_address_is_bound_to_the_hybrid_connection(address: str) -> None:
    with pytest.raises(BadRendezvousAddressError):
        _policy("contoso.servicebus.windows.net").check(address, "r1")


@pytest.mark.parametrize(
    "query",
    [
        "sb-hc-action=request&sb-hc-id=r2",  # another interaction
        "sb-hc-action=request",  # none
        "sb-hc-action=request&sb-hc-id=",  # empty
        "sb-hc-action=request&sb-hc-id=r1&sb-hc-id=r2",  # ambiguous
        "sb-hc-action=request&sb-hc-id=r1&sb-hc-id=r1",
    ],
)
def test_an_address_is_bound_to_the_interaction_id(query: str) -> None:
    with pytest.raises(BadRendezvousAddressError):
        _policy("contoso.servicebus.windows.net").check(f"wss://{NODE}/$hc/hyco?{query}", "r1")


def test_the_id_is_compared_decoded() -> None:
    policy = _policy("contoso.servicebus.windows.net")
    address = f"wss://{NODE}/$hc/hyco?sb-hc-action=request&sb-hc-id=a%7Cb_G1"
    assert policy.check(address, "a|b_G1") == address


def _control(policy: RendezvousPolicy) -> ListenerChannel:
    return ListenerChannel(SocketKind.CONTROL, check_address=policy.check)


def test_the_channel_binds_each_command_to_its_own_id() -> None:
    policy = _policy("contoso.servicebus.windows.net")
    theirs = _address(NODE, rid="someone-else", action="accept")
    accept = {"accept": {"address": theirs, "id": "mine", "connectHeaders": {}}}
    [violation] = _control(policy).receive_message(json.dumps(accept))
    assert isinstance(violation, ProtocolViolation)
    assert isinstance(violation.error, BadRendezvousAddressError)
    assert not violation.fatal
    accept["accept"]["id"] = "someone-else"
    [event] = _control(policy).receive_message(json.dumps(accept))
    assert isinstance(event, AcceptReceived)

    only = {"request": {"address": _address(NODE, rid="x"), "id": "y"}}
    [violation] = _control(policy).receive_message(json.dumps(only))
    assert isinstance(violation, ProtocolViolation)
    only["request"]["id"] = "x"
    [event] = _control(policy).receive_message(json.dumps(only))
    assert isinstance(event, RendezvousRequested)


def test_a_full_request_with_a_bad_address_is_answerable_but_its_address_never_reported() -> None:
    policy = _policy("contoso.servicebus.windows.net")
    full = {
        "request": {
            "address": _address(NODE, rid="other"),
            "id": "r1",
            "requestTarget": "/hyco/x",
            "method": "GET",
            "requestHeaders": {},
            "body": False,
        }
    }
    [event] = _control(policy).receive_message(json.dumps(full))
    assert isinstance(event, MalformedRequestReceived)
    assert event.request_id == "r1"
    assert isinstance(event.error.field_error, BadRendezvousAddressError)
    full["request"]["address"] = _address(NODE)
    [event] = _control(policy).receive_message(json.dumps(full))
    assert isinstance(event, RequestReceived)
    assert event.command.address == _address(NODE)


def test_addresses_arriving_on_a_rendezvous_socket_are_never_used() -> None:
    # Only the authenticated control channel hands out addresses (section 3.2); a request on a
    # rendezvous socket is answered on that socket, whatever address it names.
    channel = ListenerChannel(
        SocketKind.RENDEZVOUS, check_address=_policy("contoso.servicebus.windows.net").check
    )
    full = {
        "request": {
            "address": "wss://evil.example/$hc/hyco?sb-hc-action=request&sb-hc-id=r1",
            "id": "r1",
            "requestTarget": "/hyco/x",
            "method": "GET",
            "requestHeaders": {},
            "body": False,
        }
    }
    [event] = channel.receive_message(json.dumps(full))
    assert isinstance(event, RequestReceived)
    assert event.command.address is None
    only = {"request": {"address": _address(NODE), "id": "r1"}}
    [violation] = channel.receive_message(json.dumps(only))
    assert isinstance(violation, ProtocolViolation)


def test_the_control_channel_that_hands_out_addresses_is_tls() -> None:
    # A bare namespace means wss://; plain ws:// only for a local relay the operator declared.
    for endpoint in ("contoso.servicebus.windows.net", "wss://contoso.servicebus.windows.net"):
        settings = ListenerSettings(endpoint=endpoint, hc_path="hyco")
        assert settings.relay_endpoint.base == "wss://contoso.servicebus.windows.net"
    with pytest.raises(ValueError, match=r"^a ws:// relay endpoint needs allow_insecure"):
        ListenerSettings(endpoint="ws://contoso.servicebus.windows.net", hc_path="hyco")


def test_a_rendezvous_endpoint_for_a_local_relay_is_trusted_exactly() -> None:
    settings = ListenerSettings(
        endpoint="ws://127.0.0.1:9000",
        hc_path="hyco",
        rendezvous_endpoint="ws://127.0.0.2:9100",
        allow_insecure_dev_endpoint=True,
    )
    policy = settings.rendezvous_policy()
    for ok in ("ws://127.0.0.1:9000", "ws://127.0.0.2:9100"):
        assert policy.check(f"{ok}/$hc/hyco?sb-hc-action=request&sb-hc-id=r1", "r1")
    for bad in ("ws://127.0.0.2:9000", "ws://127.0.0.1:9100", "wss://127.0.0.2:9100"):
        with pytest.raises(BadRendezvousAddressError):
            policy.check(f"{bad}/$hc/hyco?sb-hc-action=request&sb-hc-id=r1", "r1")
    with pytest.raises(ValueError, match="allow_insecure"):
        ListenerSettings(
            endpoint="wss://127.0.0.1:9000", hc_path="hyco", rendezvous_endpoint="ws://x:1"
        )
