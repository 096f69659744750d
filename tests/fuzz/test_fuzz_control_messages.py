"""Relay control messages under attack (catalogue H 131): mutated commands, hostile sequences and
maximum-size inputs.

Invariants, each through the real sans-IO core:

* no crash: ``parse_command`` raises only ``ProtocolError``; a ``ListenerChannel`` never raises;
* what the channel hands on is wire-safe: every request or accept it reports has a rendezvous
  address the policy accepts, and ids, methods, targets and header fields without CR, LF or NUL;
* no hang: every call returns (pytest-timeout stops a test that hangs; how long a call takes
  is measured in benchmarks/, never asserted here, so a busy machine cannot fail the suite);
* bounded memory: the worst inputs of the maximum size allocate a bounded amount, and oversized
  inputs are refused before parsing.

The existing tests in tests/unit/hybridconnection check round trips, random JSON and random frame
sequences; these start from valid commands and edit them, which reaches the field checks.
"""

from __future__ import annotations

import contextlib
import re
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import event as note
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.hybridconnection.addresses import RendezvousPolicy
from gateway.hybridconnection.errors import MessageTooLargeError, ProtocolError
from gateway.hybridconnection.framing import (
    AcceptReceived,
    Event,
    ListenerChannel,
    RendezvousRequested,
    RequestReceived,
    SocketKind,
)
from gateway.hybridconnection.messages import (
    MAX_CONTROL_MESSAGE_SIZE,
    MAX_HEADERS,
    encode_command,
    parse_command,
)
from tests.fuzz.strategies import mutated_commands, valid_commands

POLICY = RendezvousPolicy(entity_path="hc-1")
WIRE_UNSAFE = re.compile(r"[\x00\r\n]")
FAST = settings(max_examples=400)


@FAST
@given(mutated_commands())
def test_mutated_commands_raise_only_protocol_errors(text: str) -> None:
    with contextlib.suppress(ProtocolError):
        parse_command(text)


def wire_safe(events: list[Event]) -> None:
    """Everything the channel reports as work for the listener is safe to act on."""
    for event in events:
        note(type(event).__name__)
        if isinstance(event, AcceptReceived | RendezvousRequested):
            POLICY.check(event.command.address)
        if isinstance(event, AcceptReceived):
            headers = event.command.connect_headers
            assert not WIRE_UNSAFE.search(event.command.id)
        elif isinstance(event, RequestReceived):
            command = event.command
            if command.address is not None:
                POLICY.check(command.address)
            headers = command.request_headers
            for text in (command.id, command.method, command.request_target):
                assert not WIRE_UNSAFE.search(text), text
        else:
            continue
        assert len(headers) <= MAX_HEADERS
        for name, value in headers.items():
            assert not WIRE_UNSAFE.search(name + value), (name, value)


@FAST
@given(
    st.lists(
        st.one_of(
            mutated_commands(),
            valid_commands.map(encode_command),
            st.binary(max_size=64),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_a_control_channel_survives_and_reports_only_safe_work(messages: list[str | bytes]) -> None:
    channel = ListenerChannel(SocketKind.CONTROL, check_address=POLICY.check)
    for message in messages:
        if channel.closed:
            break
        wire_safe(channel.receive_message(message))


def peak_allocation(call: Callable[[], object]) -> int:
    """Bytes allocated at the peak while ``call`` runs (exceptions swallowed)."""
    tracemalloc.start()
    try:
        with contextlib.suppress(ProtocolError):
            call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


LIMIT = MAX_CONTROL_MESSAGE_SIZE
WORST_CASES = {
    "deep nesting": '{"request":' + "[" * (LIMIT - 20),
    "many small headers": '{"request":{"requestHeaders":{'
    + ",".join(f'"h{i}":"v"' for i in range(LIMIT // 12))
    + "}}}",
    "escape expansion": '{"renewToken":{"token":"' + "\\u0000" * (LIMIT // 7) + '"}}',
    "long unknown field": '{"accept":{"x":"' + "a" * (LIMIT - 30) + '"}}',
    "numbers": '{"response":{"statusCode":' + "9" * (LIMIT - 40) + "}}",
}


@pytest.mark.parametrize("name", sorted(WORST_CASES))
def test_worst_inputs_of_the_maximum_size_allocate_a_bounded_amount(name: str) -> None:
    text = WORST_CASES[name]
    assert len(text.encode()) <= LIMIT
    # 64 KiB of input may cost a few times that in Python objects, never more than 8 MiB.
    assert peak_allocation(lambda: parse_command(text)) < 8 << 20


def test_an_oversized_message_is_refused_before_it_is_parsed() -> None:
    text = '{"request":{"id":"' + "a" * (16 << 20) + '"}}'
    with pytest.raises(MessageTooLargeError):
        parse_command(text)
    # Refused by its length alone: no copy, no decoding, no JSON tree.
    assert peak_allocation(lambda: parse_command(text)) < 1 << 20
