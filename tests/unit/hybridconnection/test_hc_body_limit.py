"""Oversize request bodies are reported with their request id (catalogue item 150)."""

from __future__ import annotations

import itertools
import json

from hypothesis import given
from hypothesis import strategies as st

from gateway.hybridconnection.addresses import RendezvousPolicy
from gateway.hybridconnection.errors import MessageTooLargeError, UnexpectedFrameError
from gateway.hybridconnection.framing import (
    ChannelLimits,
    Event,
    ListenerChannel,
    Opcode,
    ProtocolViolation,
    RequestReceived,
    SocketKind,
)

POLICY = RendezvousPolicy(entity_path="hyco")
LIMIT = 1000


def rendezvous(limit: int = LIMIT) -> ListenerChannel:
    return ListenerChannel(
        SocketKind.RENDEZVOUS,
        check_address=POLICY.check,
        limits=ChannelLimits.for_socket(SocketKind.RENDEZVOUS, rendezvous_body_limit=limit),
    )


def request_json(request_id: str = "upload-7", *, body: bool = True) -> str:
    payload = {
        "id": request_id,
        "requestTarget": "/hyco/upload",
        "method": "PUT",
        "requestHeaders": {},
        "body": body,
    }
    return json.dumps({"request": payload})


def feed(channel: ListenerChannel, body: bytes, cuts: list[int]) -> list[Event]:
    """Send ``body`` as one binary message split at ``cuts`` (RFC 6455 section 5.4)."""
    bounds = [0, *sorted(cuts), len(body)]
    pieces = [body[start:end] for start, end in itertools.pairwise(bounds)]
    events: list[Event] = []
    for index, piece in enumerate(pieces):
        opcode = Opcode.BINARY if index == 0 else Opcode.CONTINUATION
        events += channel.receive_frame(opcode, piece, fin=index == len(pieces) - 1)
    return events


def test_body_over_the_limit_names_its_request() -> None:
    channel = rendezvous()
    assert channel.receive_message(request_json("upload-7")) == []
    [event] = channel.receive_message(b"x" * (LIMIT + 1))
    assert isinstance(event, ProtocolViolation)
    assert event.fatal
    assert isinstance(event.error, MessageTooLargeError)
    assert event.request_id == "upload-7"
    assert channel.closed


def test_the_crossing_frame_is_reported_before_the_message_ends() -> None:
    channel = rendezvous()
    channel.receive_message(request_json())
    assert channel.receive_frame(Opcode.BINARY, b"x" * 600, fin=False) == []
    [event] = channel.receive_frame(Opcode.CONTINUATION, b"x" * 401, fin=False)
    assert isinstance(event, ProtocolViolation)
    assert event.request_id == "upload-7"
    # Whatever the relay still sends for that body is ignored, never buffered.
    assert channel.receive_frame(Opcode.CONTINUATION, b"x" * 10**6, fin=True) == []


def test_transport_refusal_while_a_body_is_due_names_the_request() -> None:
    channel = rendezvous()
    channel.receive_message(request_json("upload-9"))
    [event] = channel.receive_too_large()
    assert isinstance(event, ProtocolViolation)
    assert isinstance(event.error, MessageTooLargeError)
    assert event.fatal
    assert event.request_id == "upload-9"
    assert channel.receive_too_large() == []


def test_transport_refusal_between_requests_has_no_request() -> None:
    channel = rendezvous()
    [received] = channel.receive_message(request_json(body=False))
    assert isinstance(received, RequestReceived)
    [event] = channel.receive_too_large()
    assert isinstance(event, ProtocolViolation)
    assert event.fatal
    assert event.request_id is None


def test_other_violations_during_a_body_carry_no_request_id() -> None:
    channel = rendezvous()
    channel.receive_message(request_json())
    [event] = channel.receive_message(request_json("other"))
    assert isinstance(event, ProtocolViolation)
    assert isinstance(event.error, UnexpectedFrameError)
    assert event.request_id is None


@given(
    size=st.integers(min_value=0, max_value=3 * LIMIT),
    cuts=st.lists(st.integers(min_value=0, max_value=3 * LIMIT), max_size=12),
)
def test_outcome_depends_only_on_the_body_size(size: int, cuts: list[int]) -> None:
    channel = rendezvous()
    channel.receive_message(request_json())
    body = bytes(range(256)) * (size // 256 + 1)
    body = body[:size]
    events = feed(channel, body, [cut for cut in cuts if cut <= size])
    assert len(events) == 1
    [event] = events
    if size <= LIMIT:
        assert isinstance(event, RequestReceived)
        assert event.body == body
    else:
        assert isinstance(event, ProtocolViolation)
        assert isinstance(event.error, MessageTooLargeError)
        assert event.request_id == "upload-7"
