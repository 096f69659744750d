"""The frame reader of gateway/hybridconnection/wsframes.py, and against ``websockets``' own.

For any byte stream (well-formed frames, defective ones, noise), cut into any chunks, the core's
:class:`ClientFrames` and ``websockets``' ``ClientProtocol`` (the reference, fed one byte at a
time so each of its decisions is tied to the byte that caused it) must deliver the same frames,
send the same frames back (pongs, the close reply, the close that fails the connection), fail with
the same close code and half-close alike. RFC 6455 section 8.1 (a text message that is not UTF-8
fails the connection with 1007) is checked by websockets' connection layer, not by its sans-IO
protocol; the reference adds it the way that layer does, with an incremental UTF-8 decoder over
the fragments of each text message.
"""

from __future__ import annotations

import codecs
import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.exceptions import PayloadTooBig, ProtocolError
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode as WsOpcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from gateway.hybridconnection.framing import Frame, Opcode
from gateway.hybridconnection.wsframes import (
    SEND_EOF,
    ClientFrames,
    FramesState,
    encode_frame,
    mask_payload,
    mask_with_integers,
    valid_close_code,
)

Delivered = tuple[int, bytes, bool]


@dataclass
class Outcome:
    """What one reader did with a stream."""

    delivered: list[Delivered] = field(default_factory=list)
    sent: list[tuple[int, bytes]] = field(default_factory=list)
    failure: int | None = None
    close_received: tuple[int, str] | None = None
    eof_sent: bool = False


def _sent_frames(chunks: list[bytes]) -> tuple[list[tuple[int, bytes]], bool]:
    """Parse what a client wrote the way a server does (unmasking, RFC 6455 5.3)."""
    eof = SEND_EOF in chunks
    server = ServerProtocol(state=State.OPEN, max_size=None)
    server.receive_data(b"".join(chunks))
    assert server.parser_exc is None, server.parser_exc
    frames = [
        (int(event.opcode), bytes(event.data))
        for event in server.events_received()
        if isinstance(event, WsFrame)
    ]
    return frames, eof


def ours(chunks: list[bytes], eof: bool, max_size: int) -> Outcome:
    reader = ClientFrames(max_size)
    outcome = Outcome()
    written: list[bytes] = []
    for chunk in chunks:
        reader.receive_data(chunk)
        outcome.delivered += [(int(f.opcode), f.data, f.fin) for f in reader.events_received()]
        written += reader.data_to_send()
    if eof:
        reader.receive_eof()
        outcome.delivered += [(int(f.opcode), f.data, f.fin) for f in reader.events_received()]
        written += reader.data_to_send()
    outcome.sent, outcome.eof_sent = _sent_frames(written)
    outcome.failure = reader.failure
    outcome.close_received = reader.close_received
    return outcome


def _code(error: BaseException | None) -> int | None:
    if error is None:
        return None
    if isinstance(error, PayloadTooBig):
        return 1009
    if isinstance(error, ProtocolError):
        return 1002
    if isinstance(error, UnicodeDecodeError):
        return 1007
    if isinstance(error, EOFError):
        return 1006
    raise AssertionError(f"unexpected reference failure {error!r}")


def reference(stream: bytes, eof: bool, max_size: int) -> Outcome:
    protocol = ClientProtocol(parse_uri("ws://relay.test/"), state=State.OPEN, max_size=max_size)
    outcome = Outcome()
    written: list[bytes] = []
    text: codecs.IncrementalDecoder | None = None
    for index in range(len(stream)):
        protocol.receive_data(stream[index : index + 1])
        for event in protocol.events_received():
            assert isinstance(event, WsFrame)
            opcode, data = event.opcode, bytes(event.data)
            try:
                if opcode is WsOpcode.TEXT:
                    text = codecs.getincrementaldecoder("utf-8")()
                if text is not None and opcode in (WsOpcode.TEXT, WsOpcode.CONT):
                    text.decode(data, event.fin)
                    if event.fin:
                        text = None
            except UnicodeDecodeError:
                # The connection layer fails it: a 1007 close instead of this frame, then the
                # rest is discarded until the server ends the connection.
                outcome.sent, _ = _sent_frames(written)
                outcome.sent.append((8, (1007).to_bytes(2, "big")))
                outcome.failure = 1007
                outcome.eof_sent = eof
                return outcome
            outcome.delivered.append((int(opcode), data, event.fin))
        written += protocol.data_to_send()
    if eof:
        protocol.receive_eof()
        written += protocol.data_to_send()
    outcome.sent, outcome.eof_sent = _sent_frames(written)
    outcome.failure = _code(protocol.parser_exc)
    received = protocol.close_rcvd
    outcome.close_received = None if received is None else (int(received.code), received.reason)
    return outcome


def _comparable(outcome: Outcome) -> Outcome:
    # Close frames this side sends to fail the connection carry a reason of its own choosing
    # (RFC 6455 5.5.1 leaves it free): compare their code only.
    sent = [
        (opcode, data[:2] if opcode == 8 and outcome.failure in (1002, 1007, 1009) else data)
        for opcode, data in outcome.sent
    ]
    return Outcome(
        outcome.delivered, sent, outcome.failure, outcome.close_received, outcome.eof_sent
    )


# --- streams ---------------------------------------------------------------------------------


def _frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = None,
    form: str = "minimal",
) -> bytes:
    """A frame's bytes, defects included: any opcode, reserved bits, a mask, a longer length
    form than needed (RFC 6455 5.2 asks for the shortest; receivers need not check)."""
    size = len(payload)
    first = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if mask is not None else 0
    if form == "minimal" and size < 126:
        head = bytes((first, mask_bit | size))
    elif form == "64" or size >= 65536:
        head = bytes((first, mask_bit | 127)) + size.to_bytes(8, "big")
    else:
        head = bytes((first, mask_bit | 126)) + size.to_bytes(2, "big")
    return head + (mask or b"") + payload


forms = st.sampled_from(["minimal"] * 6 + ["16", "64"])
text_bytes = st.text(max_size=40).map(str.encode)
close_payloads = st.one_of(
    st.just(b""),
    st.binary(min_size=1, max_size=1),
    st.tuples(
        st.one_of(
            st.sampled_from([1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1011]),
            st.sampled_from([1012, 1014, 1015, 1016, 2999, 3000, 4999, 5000]),
            st.integers(0, 65535),
        ),
        st.one_of(
            text_bytes,
            st.binary(max_size=8),
            # around the 125-byte bound of a control frame (section 5.5)
            st.integers(121, 125).map(lambda n: b"r" * n),
        ),
    ).map(lambda pair: pair[0].to_bytes(2, "big") + pair[1]),
)
ping_payloads = st.one_of(
    st.binary(max_size=40),
    st.integers(123, 127).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
)


@st.composite
def message(draw: st.DrawFn) -> bytes:
    """A well-formed data message in fragments, pings and pongs between them (section 5.4)."""
    text = draw(st.booleans())
    payload = draw(
        st.one_of(
            text_bytes if text else st.binary(max_size=60),
            # text that is not UTF-8, or a character cut across fragments
            st.sampled_from([b"\xc3", b"\xa9x", b"ok\xe2\x82", b"\xff", b"\xed\xa0\x80"]),
        )
    )
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
    bounds = [0, *cuts, len(payload)]
    pieces = [payload[a:b] for a, b in itertools.pairwise(bounds)]
    out = []
    for index, piece in enumerate(pieces):
        opcode = (1 if text else 2) if index == 0 else 0
        out.append(_frame(opcode, piece, fin=index == len(pieces) - 1, form=draw(forms)))
        if draw(st.integers(0, 4)) == 0:
            out.append(_frame(draw(st.sampled_from([9, 10])), draw(st.binary(max_size=10))))
    return b"".join(out)


@st.composite
def control_frame(draw: st.DrawFn) -> bytes:
    opcode = draw(st.sampled_from([8, 9, 10]))
    payload = draw(close_payloads if opcode == 8 else ping_payloads)
    return _frame(opcode, payload, fin=draw(st.sampled_from([True] * 5 + [False])))


@st.composite
def odd_frame(draw: st.DrawFn) -> bytes:
    """Any header at all: unknown opcodes, reserved bits, a mask, a lone continuation."""
    return _frame(
        draw(st.integers(0, 15)),
        draw(st.binary(max_size=30)),
        fin=draw(st.booleans()),
        rsv=draw(st.sampled_from([0, 0x10, 0x20, 0x40])),
        mask=draw(st.one_of(st.none(), st.binary(min_size=4, max_size=4))),
        form=draw(forms),
    )


streams = st.lists(
    st.one_of(
        message(),
        message(),
        message(),
        message(),
        control_frame(),
        odd_frame(),
        st.binary(min_size=1, max_size=12),
    ),
    max_size=10,
).map(b"".join)


@st.composite
def chunked(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@settings(max_examples=300)
@given(
    stream=streams,
    eof=st.booleans(),
    max_size=st.one_of(st.integers(0, 80), st.just(1 << 20), st.just(1 << 20)),
    data=st.data(),
)
def test_reader_agrees_with_websockets(
    stream: bytes, eof: bool, max_size: int, data: st.DataObject
) -> None:
    chunks = data.draw(chunked(stream))
    assert _comparable(ours(chunks, eof, max_size)) == _comparable(reference(stream, eof, max_size))


@settings(max_examples=200)
@given(
    opcode=st.sampled_from([0, 1, 2]),
    payload=st.one_of(
        st.binary(max_size=300),
        # around the 16-bit length form's bound (section 5.2)
        st.integers(65530, 65600).map(lambda n: (bytes(range(256)) * 257)[:n]),
    ),
    fin=st.booleans(),
)
def test_a_server_reads_our_masked_frames(opcode: int, payload: bytes, fin: bool) -> None:
    # RFC 6455 5.3: websockets' server side unmasks what this side masked, to the same payload.
    server = ServerProtocol(state=State.OPEN, max_size=None)
    wire = encode_frame(Opcode(opcode), payload, fin)
    assert wire[1] & 0x80  # the MASK bit of every client frame
    # A continuation frame only inside a message (section 5.4): open one first.
    opening = encode_frame(Opcode.BINARY, b"", fin=False) if opcode == 0 else b""
    server.receive_data(opening + wire)
    assert server.parser_exc is None
    *_, frame = server.events_received()
    assert isinstance(frame, WsFrame)
    assert (int(frame.opcode), bytes(frame.data), frame.fin) == (opcode, payload, fin)


# --- each rule on a stream made for it ---------------------------------------------------------
# A rule the random streams reach only rarely is checked here on every run, against both.

CASES = {
    # name: (stream, max_size, expected failure code)
    "masked server frame (5.1)": (_frame(2, b"x", mask=b"abcd"), 100, 1002),
    "reserved bit without an extension (5.2)": (_frame(2, b"x", rsv=0x40), 100, 1002),
    "unknown opcode (5.2)": (_frame(3, b"x"), 100, 1002),
    "control frame over 125 bytes (5.5)": (_frame(9, b"p" * 126), 1000, 1002),
    "control frame of 125 bytes (5.5)": (_frame(9, b"p" * 125), 1000, None),
    "fragmented control frame (5.5)": (_frame(10, b"", fin=False), 100, 1002),
    "continuation outside a message (5.4)": (_frame(0, b"x"), 100, 1002),
    "data frame inside a message (5.4)": (
        _frame(2, b"a", fin=False) + _frame(1, b"b"),
        100,
        1002,
    ),
    "message over the bound, third fragment (5.4)": (
        _frame(2, b"aaaa", fin=False) + _frame(0, b"bbbb", fin=False) + _frame(0, b"cccc"),
        10,
        1009,
    ),
    "message at the bound": (
        _frame(2, b"aaaa", fin=False) + _frame(0, b"bbb", fin=False) + _frame(0, b"ccc"),
        10,
        None,
    ),
    "frame header over the bound, no payload yet": (
        bytes((0x82, 126)) + (500).to_bytes(2),
        100,
        1009,
    ),
    "text that is not UTF-8 (8.1)": (_frame(1, b"\xff"), 100, 1007),
    "UTF-8 character across fragments (8.1)": (
        _frame(1, b"\xe2\x82", fin=False) + _frame(0, b"\xac"),
        100,
        None,
    ),
    "truncated UTF-8 at the end of a message (8.1)": (
        _frame(1, b"ok", fin=False) + _frame(0, b"\xe2\x82"),
        100,
        1007,
    ),
    "one-byte close payload (5.5.1)": (_frame(8, b"\x03"), 100, 1002),
    "close code 1005 on the wire (7.4.1)": (_frame(8, (1005).to_bytes(2, "big")), 100, 1002),
    "close code 5000 (7.4.2)": (_frame(8, (5000).to_bytes(2, "big")), 100, 1002),
    "close reason not UTF-8 (5.5.1)": (_frame(8, (1000).to_bytes(2, "big") + b"\xff"), 100, 1007),
    "close inside a fragmented message": (_frame(2, b"a", fin=False) + _frame(8, b""), 100, 1002),
}


@pytest.mark.parametrize("name", list(CASES))
def test_rule(name: str) -> None:
    stream, max_size, failure = CASES[name]
    mine = ours([stream], True, max_size)
    # The stream ends without a closing handshake: 1006 unless a rule failed it first (7.1.5).
    assert mine.failure == (1006 if failure is None else failure)
    assert _comparable(mine) == _comparable(reference(stream, True, max_size))
    if failure in (1002, 1007, 1009):
        # Failing the connection sends a close frame with the code (7.1.7), then half-closes
        # once the server has ended the TCP connection (7.1.1).
        assert mine.sent[-1][0] == 8
        assert int.from_bytes(mine.sent[-1][1][:2], "big") == failure
        assert mine.eof_sent


def test_refused_from_the_header_before_the_payload_arrives() -> None:
    reader = ClientFrames(100)
    reader.receive_data(bytes((0x82, 127)) + (1 << 40).to_bytes(8, "big"))
    assert reader.failure == 1009
    assert reader.state is FramesState.CLOSING


def test_ping_is_answered_with_its_payload_and_frames_keep_their_order() -> None:
    reader = ClientFrames(1000)
    reader.receive_data(_frame(1, b"one") + _frame(9, b"are you there") + _frame(2, b"two"))
    frames = reader.events_received()
    assert [(f.opcode, f.data) for f in frames] == [
        (Opcode.TEXT, b"one"),
        (Opcode.PING, b"are you there"),
        (Opcode.BINARY, b"two"),
    ]
    (pong,) = reader.data_to_send()
    assert pong[0] == 0x8A  # FIN + pong
    assert mask_payload(pong[2:6], pong[6:]) == b"are you there"


def test_close_is_echoed_and_what_follows_is_discarded() -> None:
    reader = ClientFrames(1000)
    close = (1011).to_bytes(2, "big") + b"recycle"
    reader.receive_data(_frame(8, close) + _frame(1, b"late"))
    assert [f.opcode for f in reader.events_received()] == [Opcode.CLOSE]
    assert reader.close_received == (1011, "recycle")
    (echo,) = reader.data_to_send()
    assert mask_payload(echo[2:6], echo[6:]) == close
    assert reader.state is FramesState.CLOSING
    reader.receive_eof()
    assert reader.data_to_send() == [b""]
    assert reader.state is FramesState.CLOSED  # type: ignore[comparison-overlap]
    assert reader.failure is None


def test_end_of_stream_inside_a_frame_is_an_abnormal_closure() -> None:
    reader = ClientFrames(1000)
    reader.receive_data(_frame(2, b"abcdef")[:4])
    reader.receive_eof()
    assert reader.failure == 1006
    assert reader.data_to_send() == [b""]  # no close frame: there is no connection to send it on


def test_sending_rules() -> None:
    reader = ClientFrames(1000)
    with pytest.raises(ValueError, match="out of order"):
        reader.send_data(Opcode.CONTINUATION, b"x")  # no message to continue (5.4)
    reader.send_data(Opcode.BINARY, b"a", fin=False)
    with pytest.raises(ValueError, match="out of order"):
        reader.send_data(Opcode.TEXT, b"b")  # a new message inside one (5.4)
    reader.send_data(Opcode.CONTINUATION, b"b")
    with pytest.raises(ValueError, match="125"):
        reader.send_ping(b"p" * 126)  # 5.5
    with pytest.raises(ValueError, match="not a close code"):
        reader.send_close(1006)  # reserved for local use (7.4.1)
    reader.send_close(1000, "bye")
    assert reader.state is FramesState.CLOSING
    with pytest.raises(ValueError, match="closing"):
        reader.send_data(Opcode.TEXT, b"after the close")


@given(
    st.lists(
        st.tuples(st.sampled_from([0, 1, 2]), st.binary(max_size=200), st.booleans()),
        max_size=5,
    )
)
def test_frames_encoded_together_are_read_as_if_sent_one_by_one(
    frames: list[tuple[int, bytes, bool]],
) -> None:
    together, alone = ClientFrames(1000), ClientFrames(1000)
    batch = [Frame(Opcode(opcode), payload, fin) for opcode, payload, fin in frames]
    expected: list[tuple[int, bytes, bool]] = []
    refused = None
    for frame in batch:
        try:
            alone.encode_data(frame.opcode, frame.payload, frame.fin)
        except ValueError as error:
            refused = str(error)
            break
        expected.append((int(frame.opcode), frame.payload, frame.fin))
    if refused is not None:
        # All or nothing: no frame of a batch out of order (section 5.4) is encoded.
        with pytest.raises(ValueError, match="out of order"):
            together.encode_frames(batch)
        together.encode_data(Opcode.TEXT, b"still in step")  # the refused batch left no trace
        return
    server = ServerProtocol(state=State.OPEN, max_size=None)
    server.receive_data(together.encode_frames(batch))
    assert server.parser_exc is None
    events = server.events_received()
    assert all(isinstance(event, WsFrame) for event in events)
    got = [(int(f.opcode), bytes(f.data), f.fin) for f in events if isinstance(f, WsFrame)]
    assert got == expected


def _xor_by_byte(key: bytes, payload: bytes) -> bytes:
    """RFC 6455 section 5.3 as written: octet i XOR octet i MOD 4 of the key."""
    return bytes(octet ^ key[index % 4] for index, octet in enumerate(payload))


@settings(max_examples=300)
@given(
    key=st.binary(min_size=4, max_size=4),
    payload=st.one_of(
        st.binary(max_size=600),
        # several machine words and an odd tail, past the 16-bit length form
        st.integers(65530, 65600).map(lambda n: (bytes(range(7, 256)) * 300)[:n]),
    ),
)
def test_masking_is_the_byte_by_byte_xor_of_the_rfc(key: bytes, payload: bytes) -> None:
    # The C routine in use and the integer fallback, each against the rule read literally.
    expected = _xor_by_byte(key, payload)
    assert mask_payload(key, payload) == expected
    assert mask_with_integers(payload, key) == expected
    assert mask_with_integers(memoryview(payload), bytearray(key)) == expected


def _read_client_frames(wire: bytes) -> list[tuple[int, bool, bytes, bytes]]:
    """(opcode, fin, key, unmasked payload) of each frame, unmasked byte by byte (section 5.3)."""
    frames = []
    at = 0
    while at < len(wire):
        first, second = wire[at], wire[at + 1]
        assert second & 0x80  # a client masks every frame (section 5.2)
        size, at = second & 0x7F, at + 2
        if size == 126:
            size, at = int.from_bytes(wire[at : at + 2], "big"), at + 2
        elif size == 127:
            size, at = int.from_bytes(wire[at : at + 8], "big"), at + 8
        key, at = wire[at : at + 4], at + 4
        frames.append((first & 0x0F, first >= 0x80, key, _xor_by_byte(key, wire[at : at + size])))
        at += size
    return frames


@settings(max_examples=200)
@given(
    text=st.binary(max_size=300),
    binary=st.one_of(
        st.none(),
        st.binary(min_size=1, max_size=300),
        st.integers(65530, 65600).map(lambda n: b"b" * n),
    ),
)
def test_a_text_and_binary_pair_is_the_frames_encoded_one_by_one(
    text: bytes, binary: bytes | None
) -> None:
    frames = [Frame(Opcode.TEXT, text)] + ([] if binary is None else [Frame(Opcode.BINARY, binary)])
    expected = [(int(frame.opcode), True, frame.payload) for frame in frames]
    wire = ClientFrames(1000).encode_text_and_binary(text, binary)
    read = _read_client_frames(wire)
    assert [(opcode, fin, payload) for opcode, fin, _, payload in read] == expected
    if len(read) == 2:
        assert read[0][2] != read[1][2]  # a key per frame (section 5.3)
    # websockets' server reads the same (it unmasks with its own routine).
    server = ServerProtocol(state=State.OPEN, max_size=None)
    server.receive_data(wire)
    assert server.parser_exc is None
    events = server.events_received()
    assert all(isinstance(event, WsFrame) for event in events)
    got = [(int(f.opcode), f.fin, bytes(f.data)) for f in events if isinstance(f, WsFrame)]
    assert got == expected
    assert len(wire) == len(ClientFrames(1000).encode_frames(frames))


def test_a_pair_is_refused_where_frames_would_be() -> None:
    inside = ClientFrames(1000)
    inside.send_data(Opcode.BINARY, b"a", fin=False)
    with pytest.raises(ValueError, match="out of order"):
        inside.encode_text_and_binary(b"{}", b"body")  # a new message inside one (5.4)
    inside.send_data(Opcode.CONTINUATION, b"b")
    inside.encode_text_and_binary(b"{}", None)  # in step again
    closing = ClientFrames(1000)
    closing.send_close(1000)
    with pytest.raises(ValueError, match="closing"):
        closing.encode_text_and_binary(b"{}", b"body")


def test_masks_are_fresh_and_masking_is_its_own_inverse() -> None:
    first, second = encode_frame(Opcode.TEXT, b"same"), encode_frame(Opcode.TEXT, b"same")
    assert first[2:6] != second[2:6]  # RFC 6455 10.3: a new key per frame
    assert mask_payload(b"\x01\x02\x03\x04", mask_payload(b"\x01\x02\x03\x04", b"hello")) == (
        b"hello"
    )


@pytest.mark.parametrize(
    ("code", "valid"),
    [(999, False), (1000, True), (1004, False), (1005, False), (1006, False), (1014, True),
     (1015, False), (2999, False), (3000, True), (4999, True), (5000, False)],
)  # fmt: skip
def test_close_codes(code: int, valid: bool) -> None:
    assert valid_close_code(code) is valid
