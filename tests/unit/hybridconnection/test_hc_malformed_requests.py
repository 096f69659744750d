"""Malformed-but-addressable requests and the violation budget of a channel.

A ``request`` whose ``id`` and ``body`` flag are sound but whose other fields are not (protocol
notes section 3.2: header names are tokens, values and targets carry no control characters) must
cost the relay one 400, not the control channel and everything in flight on it. Its body is read
and dropped so the framing stays in step (section 5.4). A peer that sends nothing but defects still
loses the socket once the budget is spent.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.hybridconnection.addresses import RendezvousPolicy
from gateway.hybridconnection.errors import (
    InvalidFieldError,
    MessageTooLargeError,
    TooManyViolationsError,
    UnexpectedCommandError,
)
from gateway.hybridconnection.framing import (
    ChannelLimits,
    Event,
    ListenerChannel,
    MalformedRequestReceived,
    Opcode,
    ProtocolViolation,
    RelayChannel,
    RequestReceived,
    SocketKind,
)

GOOD = "wss://g1-node.servicebus.windows.net:443/$hc/hyco?sb-hc-action=request&sb-hc-id=1"
POLICY = RendezvousPolicy(entity_path="hyco")


class Clock:
    """A hand-driven monotonic clock for the budget's window."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def channel(
    kind: SocketKind = SocketKind.CONTROL, clock: Clock | None = None, **limits: Any
) -> ListenerChannel:
    return ListenerChannel(
        kind,
        check_address=POLICY.check,
        limits=ChannelLimits.for_socket(kind, **limits),
        clock=clock or Clock(),
    )


def request(request_id: str = "r1", *, body: bool = False, **fields: Any) -> str:
    payload: dict[str, Any] = {
        "address": GOOD.replace("sb-hc-id=1", f"sb-hc-id={request_id}"),
        "id": request_id,
        "requestTarget": "/hyco/x",
        "method": "POST",
        "requestHeaders": {"Content-Type": "text/plain"},
        "body": body,
    }
    payload.update(fields)
    return json.dumps({"request": payload})


CR_HEADER: dict[str, Any] = {"requestHeaders": {"X-A": "a\r\nX-Injected: 1"}}


def test_cr_in_a_header_value_is_reported_as_malformed_and_the_channel_carries_on() -> None:
    ch = channel()
    [event] = ch.receive_message(request("bad", **CR_HEADER))
    assert isinstance(event, MalformedRequestReceived)
    assert event.request_id == "bad"
    assert isinstance(event.error.field_error, InvalidFieldError)
    assert event.error.code == "malformed_request"
    assert not ch.closed
    [good] = ch.receive_message(request("good"))
    assert isinstance(good, RequestReceived)
    assert good.command.id == "good"


def test_body_of_a_malformed_request_is_consumed_before_it_is_reported() -> None:
    ch = channel()
    assert ch.receive_frame(Opcode.TEXT, request("bad", body=True, method="G ET").encode()) == []
    assert ch.receive_frame(Opcode.BINARY, b"secret ", fin=False) == []
    [event] = ch.receive_frame(Opcode.CONTINUATION, b"body", fin=True)
    assert isinstance(event, MalformedRequestReceived)
    assert event.request_id == "bad"
    # The body was taken as that request's body, not as a stray message: the next request and
    # its own body pair up as usual.
    assert ch.receive_message(request("next", body=True)) == []
    [good] = ch.receive_message(b"payload")
    assert isinstance(good, RequestReceived)
    assert (good.command.id, good.body) == ("next", b"payload")


def test_text_where_the_malformed_requests_body_is_due_is_still_fatal() -> None:
    ch = channel()
    assert ch.receive_message(request("bad", body=True, **CR_HEADER)) == []
    [violation] = ch.receive_message(request("next"))
    assert isinstance(violation, ProtocolViolation)
    assert violation.fatal
    assert ch.closed


def test_oversize_body_of_a_malformed_request_carries_its_id_for_a_413() -> None:
    ch = channel(SocketKind.RENDEZVOUS, rendezvous_body_limit=10)
    assert ch.receive_message(request("bad", body=True, **CR_HEADER)) == []
    [violation] = ch.receive_frame(Opcode.BINARY, b"x" * 11)
    assert isinstance(violation, ProtocolViolation)
    assert violation.fatal
    assert isinstance(violation.error, MessageTooLargeError)
    assert violation.request_id == "bad"


def test_malformed_request_on_a_rendezvous_socket_is_answerable_there() -> None:
    ch = channel(SocketKind.RENDEZVOUS)
    [event] = ch.receive_message(request("rv", requestTarget="/hyco/\x00"))
    assert isinstance(event, MalformedRequestReceived)
    assert event.request_id == "rv"


def test_relay_side_treats_a_malformed_request_like_any_request_it_never_expects() -> None:
    relay = RelayChannel(SocketKind.CONTROL)
    [violation] = relay.receive_message(request("x", **CR_HEADER))
    assert isinstance(violation, ProtocolViolation)
    assert not violation.fatal
    assert isinstance(violation.error, UnexpectedCommandError)


def test_budget_is_spent_by_defects_within_the_window_then_the_channel_is_dropped() -> None:
    clock = Clock()
    ch = channel(clock=clock, max_violations=3, violation_window=10.0)
    for index in range(3):
        [event] = ch.receive_message(request(f"bad-{index}", **CR_HEADER))
        assert isinstance(event, MalformedRequestReceived)
        clock.now += 1.0
    events = ch.receive_message(b"stray binary")
    assert [type(event) for event in events] == [ProtocolViolation, ProtocolViolation]
    first = events[0]
    assert isinstance(first, ProtocolViolation)
    assert not first.fatal  # the stray message itself ...
    last = events[1]
    assert isinstance(last, ProtocolViolation)
    assert last.fatal  # ... is one too many
    assert isinstance(last.error, TooManyViolationsError)
    assert last.error.code == "too_many_violations"
    assert ch.closed
    assert ch.receive_message(request("after")) == []


def test_defects_spread_wider_than_the_window_never_exhaust_the_budget() -> None:
    clock = Clock()
    ch = channel(clock=clock, max_violations=2, violation_window=5.0)
    for index in range(50):
        [event] = ch.receive_message(request(f"bad-{index}", **CR_HEADER))
        assert isinstance(event, MalformedRequestReceived)
        clock.now += 2.6  # at most two defects in any 5 s
    assert not ch.closed


def test_unknown_commands_do_not_spend_the_budget() -> None:
    # Section 3.2: the service may add commands; ignoring them must never cost the channel.
    ch = channel(max_violations=1)
    for _ in range(20):
        [violation] = ch.receive_message(json.dumps({"detach": {}}))
        assert isinstance(violation, ProtocolViolation)
        assert not violation.fatal
    assert not ch.closed


def test_budget_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="violation budget"):
        ChannelLimits(max_violations=-1)
    with pytest.raises(ValueError, match="violation budget"):
        ChannelLimits(violation_window=0)


# --- property: every addressable request is answered exactly once, the channel never drops ----

_hostile_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=0, max_size=12
)
_fields = st.fixed_dictionaries(
    {},
    optional={
        "requestTarget": _hostile_text.map(lambda t: "/hyco/" + t) | _hostile_text,
        "method": _hostile_text,
        "requestHeaders": st.dictionaries(_hostile_text, _hostile_text, max_size=3),
        "address": _hostile_text,
    },
)


@settings(max_examples=200)
@given(st.lists(st.tuples(_fields, st.booleans(), st.binary(max_size=20)), max_size=15))
def test_every_addressable_request_gets_exactly_one_event_and_the_channel_survives(
    requests: list[tuple[dict[str, Any], bool, bytes]],
) -> None:
    ch = channel(max_violations=1000)
    seen: list[str] = []
    for index, (fields, has_body, body) in enumerate(requests):
        events: list[Event] = list(
            ch.receive_message(request(f"id-{index}", body=has_body, **fields))
        )
        if has_body:
            events += ch.receive_message(body)
        for event in events:
            if isinstance(event, RequestReceived):
                seen.append(event.command.id)
                assert event.body == (body if has_body else None)
            elif isinstance(event, MalformedRequestReceived):
                seen.append(event.request_id)
            else:
                # Only a sound request with a rendezvous address outside the policy is refused
                # this way (catalogue item 24); it is never fatal.
                assert isinstance(event, ProtocolViolation)
                assert event.error.code == "bad_rendezvous_address"
                assert not event.fatal
                seen.append(f"id-{index}")
    assert seen == [f"id-{index}" for index in range(len(requests))]
    assert not ch.closed
