"""Channel state machines and outgoing frame helpers (protocol notes sections 3.2, 5.3, 5.4)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.hybridconnection.addresses import RelayEndpoint, RendezvousPolicy
from gateway.hybridconnection.errors import (
    BadRendezvousAddressError,
    MessageTooLargeError,
    MissingFieldError,
    UnexpectedCommandError,
    UnexpectedFrameError,
    UnknownCommandError,
)
from gateway.hybridconnection.framing import (
    CONTROL_CHANNEL_BODY_LIMIT,
    AcceptReceived,
    BodyFramer,
    ChannelClosed,
    ChannelLimits,
    Event,
    ListenerChannel,
    MalformedRequestReceived,
    Opcode,
    ProtocolViolation,
    RelayChannel,
    RendezvousRequested,
    RequestReceived,
    ResponseReceived,
    ResponseRoute,
    SocketKind,
    TokenRenewalReceived,
    choose_response_route,
    request_frames,
    response_frames,
)
from gateway.hybridconnection.messages import RequestCommand, ResponseCommand

GOOD = "wss://g1-node.servicebus.windows.net:443/$hc/hyco?sb-hc-action=request&sb-hc-id=r1"
POLICY = RendezvousPolicy(entity_path="hyco")


def control() -> ListenerChannel:
    return ListenerChannel(SocketKind.CONTROL, check_address=POLICY.check)


def rendezvous() -> ListenerChannel:
    return ListenerChannel(SocketKind.RENDEZVOUS, check_address=POLICY.check)


def request_json(body: bool, address: str | None = GOOD, **extra: Any) -> str:
    payload: dict[str, Any] = {
        "id": "r1",
        "requestTarget": "/hyco/x",
        "method": "POST",
        "requestHeaders": {"Content-Type": "text/plain"},
        "body": body,
        **extra,
    }
    if address is not None:
        payload["address"] = address
    return json.dumps({"request": payload})


def only_violation(events: list[Event]) -> ProtocolViolation:
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, ProtocolViolation)
    return event


def test_request_without_body_is_reported_at_once() -> None:
    [event] = control().receive_message(request_json(False))
    assert isinstance(event, RequestReceived)
    assert event.body is None
    assert event.command.address == GOOD


def test_body_spread_over_frames_is_reassembled() -> None:
    channel = control()
    assert channel.receive_frame(Opcode.TEXT, request_json(True).encode()) == []
    assert channel.receive_frame(Opcode.BINARY, b"he", fin=False) == []
    # Control frames may be interleaved inside a fragmented message (RFC 6455 5.4).
    assert channel.receive_frame(Opcode.PING, b"") == []
    assert channel.receive_frame(Opcode.CONTINUATION, b"ll", fin=False) == []
    [event] = channel.receive_frame(Opcode.CONTINUATION, b"o", fin=True)
    assert isinstance(event, RequestReceived)
    assert event.body == b"hello"


def test_fragmented_text_message_is_reassembled() -> None:
    channel = control()
    data = request_json(False).encode()
    assert channel.receive_frame(Opcode.TEXT, data[:10], fin=False) == []
    [event] = channel.receive_frame(Opcode.CONTINUATION, data[10:], fin=True)
    assert isinstance(event, RequestReceived)


def test_empty_binary_body_is_an_empty_body() -> None:
    channel = control()
    channel.receive_message(request_json(True))
    [event] = channel.receive_message(b"")
    assert isinstance(event, RequestReceived)
    assert event.body == b""


def test_control_body_of_exactly_64k_is_accepted_and_one_more_byte_is_fatal() -> None:
    channel = control()
    channel.receive_message(request_json(True))
    [event] = channel.receive_message(b"x" * CONTROL_CHANNEL_BODY_LIMIT)
    assert isinstance(event, RequestReceived)
    channel.receive_message(request_json(True))
    violation = only_violation(channel.receive_message(b"x" * (CONTROL_CHANNEL_BODY_LIMIT + 1)))
    assert violation.fatal
    assert isinstance(violation.error, MessageTooLargeError)
    assert channel.closed
    assert channel.receive_message(request_json(False)) == []


def test_oversize_body_is_detected_across_fragments() -> None:
    channel = ListenerChannel(
        SocketKind.RENDEZVOUS, check_address=POLICY.check, limits=ChannelLimits(max_body_size=10)
    )
    channel.receive_message(request_json(True, address=None))
    assert channel.receive_frame(Opcode.BINARY, b"x" * 6, fin=False) == []
    violation = only_violation(channel.receive_frame(Opcode.CONTINUATION, b"x" * 6, fin=False))
    assert violation.fatal


def test_text_frame_where_the_body_is_due_is_fatal() -> None:
    channel = control()
    channel.receive_message(request_json(True))
    violation = only_violation(channel.receive_message(request_json(False)))
    assert violation.fatal
    assert isinstance(violation.error, UnexpectedFrameError)


@pytest.mark.parametrize(
    "frames",
    [
        [(Opcode.CONTINUATION, b"x", True)],
        [(Opcode.TEXT, b"{", False), (Opcode.TEXT, b"}", True)],
        [(Opcode.TEXT, b"{", False), (Opcode.BINARY, b"}", True)],
    ],
)
def test_fragmentation_errors_are_fatal(frames: list[tuple[Opcode, bytes, bool]]) -> None:
    channel = control()
    events: list[Event] = []
    for opcode, payload, fin in frames:
        events += channel.receive_frame(opcode, payload, fin=fin)
    violation = only_violation(events)
    assert violation.fatal
    assert isinstance(violation.error, UnexpectedFrameError)


def test_unknown_command_is_ignored_and_the_channel_goes_on() -> None:
    channel = control()
    violation = only_violation(channel.receive_message('{"injectFault": {"delay": "0"}}'))
    assert not violation.fatal
    assert isinstance(violation.error, UnknownCommandError)
    [event] = channel.receive_message(request_json(False))
    assert isinstance(event, RequestReceived)


def test_malformed_json_is_fatal() -> None:
    violation = only_violation(control().receive_message("{not json"))
    assert violation.fatal


def test_stray_binary_message_is_skipped_whole() -> None:
    channel = control()
    assert only_violation(channel.receive_frame(Opcode.BINARY, b"a", fin=False)).fatal is False
    assert channel.receive_frame(Opcode.CONTINUATION, b"b", fin=True) == []
    [event] = channel.receive_message(request_json(False))
    assert isinstance(event, RequestReceived)


def test_request_on_control_channel_without_an_address_is_answerable_as_malformed() -> None:
    # The address only matters for a large response (section 5.3); a 400 fits the channel.
    channel = control()
    [event] = channel.receive_message(request_json(False, address=None))
    assert isinstance(event, MalformedRequestReceived)
    assert event.request_id == "r1"
    assert isinstance(event.error.field_error, MissingFieldError)
    assert not channel.closed


def test_request_on_rendezvous_never_exposes_an_address() -> None:
    [event] = rendezvous().receive_message(request_json(False, address="wss://evil.example/"))
    assert isinstance(event, RequestReceived)
    assert event.command.address is None


def test_accept_with_foreign_address_is_refused_without_an_accept_event() -> None:
    address = "wss://evil.example/$hc/hyco?sb-hc-action=accept"
    accept = {"accept": {"address": address, "id": "a", "connectHeaders": {}}}
    violation = only_violation(control().receive_message(json.dumps(accept)))
    assert not violation.fatal
    assert isinstance(violation.error, BadRendezvousAddressError)
    assert violation.error.code == "bad_rendezvous_address"


def test_accept_with_good_address_is_reported() -> None:
    address = GOOD.replace("request", "accept")
    text = json.dumps({"accept": {"address": address, "id": "r1", "connectHeaders": {}}})
    [event] = control().receive_message(text)
    assert isinstance(event, AcceptReceived)


def test_request_with_foreign_address_consumes_its_body_then_is_refused() -> None:
    channel = control()
    assert channel.receive_message(request_json(True, address="ws://10.0.0.1/$hc/hyco")) == []
    # Answerable where it arrived (502 by the listener), but its address is never reported.
    [refused] = channel.receive_message(b"body")
    assert isinstance(refused, MalformedRequestReceived)
    assert refused.request_id == "r1"
    assert isinstance(refused.error.field_error, BadRendezvousAddressError)
    # Framing stayed in sync: the next request is read normally.
    [event] = channel.receive_message(request_json(False))
    assert isinstance(event, RequestReceived)


def test_rendezvous_only_request_asks_for_a_connection() -> None:
    text = json.dumps({"request": {"address": GOOD, "id": "r1"}})
    [event] = control().receive_message(text)
    assert isinstance(event, RendezvousRequested)
    violation = only_violation(rendezvous().receive_message(text))
    assert isinstance(violation.error, UnexpectedCommandError)


def test_dev_endpoint_is_honoured_only_when_configured() -> None:
    address = "ws://127.0.0.1:9000/$hc/hyco?sb-hc-action=request&sb-hc-id=r9"
    text = json.dumps({"request": {"address": address, "id": "r9"}})
    refused = only_violation(control().receive_message(text)).error
    assert isinstance(refused, BadRendezvousAddressError)
    dev = RendezvousPolicy(
        entity_path="hyco", dev_endpoint=RelayEndpoint.parse("ws://127.0.0.1:9000")
    )
    [event] = ListenerChannel(SocketKind.CONTROL, check_address=dev.check).receive_message(text)
    assert isinstance(event, RendezvousRequested)


def test_listener_ignores_commands_meant_for_the_relay() -> None:
    text = json.dumps({"renewToken": {"token": "t"}})
    violation = only_violation(control().receive_message(text))
    assert not violation.fatal


def test_close_frame_is_reported_with_code_and_reason() -> None:
    channel = control()
    [event] = channel.receive_frame(Opcode.CLOSE, (1008).to_bytes(2, "big") + b"expired")
    assert event == ChannelClosed(code=1008, reason="expired")
    assert channel.closed


# --- relay side ----------------------------------------------------------------------------


def response_json(body: bool) -> str:
    return json.dumps({"response": {"requestId": "r1", "statusCode": 200, "body": body}})


def test_relay_pairs_response_and_body() -> None:
    channel = RelayChannel(SocketKind.CONTROL)
    assert channel.receive_message(response_json(True)) == []
    [event] = channel.receive_message(b"payload")
    assert isinstance(event, ResponseReceived)
    assert event.body == b"payload"


def test_relay_swallows_the_empty_frame_hyco_https_sends_after_a_bodyless_response() -> None:
    channel = RelayChannel(SocketKind.CONTROL)
    [event] = channel.receive_message(response_json(False))
    assert isinstance(event, ResponseReceived)
    assert event.body is None
    assert channel.receive_message(b"") == []
    # A second stray message is a real violation.
    assert not only_violation(channel.receive_message(b"")).fatal


def test_relay_reports_token_renewal_on_control_only() -> None:
    text = json.dumps({"renewToken": {"token": "t"}})
    [event] = RelayChannel(SocketKind.CONTROL).receive_message(text)
    assert isinstance(event, TokenRenewalReceived)
    assert not only_violation(RelayChannel(SocketKind.RENDEZVOUS).receive_message(text)).fatal


# --- outgoing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "arrived_on", "route"),
    [
        (0, SocketKind.CONTROL, ResponseRoute.CONTROL),
        (CONTROL_CHANNEL_BODY_LIMIT, SocketKind.CONTROL, ResponseRoute.CONTROL),
        (CONTROL_CHANNEL_BODY_LIMIT + 1, SocketKind.CONTROL, ResponseRoute.RENDEZVOUS),
        (None, SocketKind.CONTROL, ResponseRoute.RENDEZVOUS),
        (0, SocketKind.RENDEZVOUS, ResponseRoute.RENDEZVOUS),
    ],
)
def test_response_route_follows_the_64k_rule(
    length: int | None, arrived_on: SocketKind, route: ResponseRoute
) -> None:
    assert choose_response_route(length, arrived_on=arrived_on) is route


def test_response_frames_feed_back_into_a_relay_channel() -> None:
    response = ResponseCommand(request_id="r1", status_code=201, body=True)
    frames = response_frames(response, b"abc")
    assert [f.opcode for f in frames] == [Opcode.TEXT, Opcode.BINARY]
    channel = RelayChannel(SocketKind.CONTROL)
    events: list[Event] = []
    for frame in frames:
        events += channel.receive_frame(frame.opcode, frame.payload, fin=frame.fin)
    assert events == [ResponseReceived(command=response, body=b"abc")]


def test_response_frames_refuse_a_body_flag_mismatch() -> None:
    with pytest.raises(ValueError, match="body"):
        response_frames(ResponseCommand(request_id="r", status_code=200, body=False), b"x")


def test_streamed_body_frames_match_dotnet_shape_and_reassemble() -> None:
    framer = BodyFramer()
    frames = [framer.chunk(b"ab"), framer.chunk(b"cd"), framer.end()]
    assert [(f.opcode, f.fin) for f in frames] == [
        (Opcode.BINARY, False),
        (Opcode.CONTINUATION, False),
        (Opcode.CONTINUATION, True),
    ]
    with pytest.raises(RuntimeError):
        framer.chunk(b"late")
    request = RequestCommand(
        id="r", request_target="/hyco", method="PUT", request_headers={}, body=True
    )
    channel = rendezvous()
    events: list[Event] = []
    for frame in request_frames(request, b"")[:1] + frames:
        events += channel.receive_frame(frame.opcode, frame.payload, fin=frame.fin)
    assert events == [RequestReceived(command=request, body=b"abcd")]


# --- fuzzing -------------------------------------------------------------------------------

_frames = st.lists(
    st.tuples(
        st.sampled_from(list(Opcode)),
        st.one_of(
            st.binary(max_size=40),
            st.sampled_from(
                [
                    request_json(True).encode(),
                    request_json(False).encode(),
                    response_json(True).encode(),
                    b'{"accept": {"address": "x", "id": "1", "connectHeaders": {}}}',
                    b'{"renewToken": {"token": "t"}}',
                ]
            ),
        ),
        st.booleans(),
    ),
    max_size=12,
)


@settings(max_examples=300)
@given(_frames, st.sampled_from(list(SocketKind)), st.booleans())
def test_channels_survive_any_frame_sequence(
    frames: list[tuple[Opcode, bytes, bool]], kind: SocketKind, relay_side: bool
) -> None:
    channel: ListenerChannel | RelayChannel
    limits = ChannelLimits(max_message_size=200, max_body_size=50)
    if relay_side:
        channel = RelayChannel(kind, limits=limits)
    else:
        channel = ListenerChannel(kind, check_address=POLICY.check, limits=limits)
    for opcode, payload, fin in frames:
        events = channel.receive_frame(opcode, payload, fin=fin)
        for event in events:
            if isinstance(event, ProtocolViolation) and event.fatal:
                assert channel.closed
