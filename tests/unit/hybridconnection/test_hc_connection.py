"""The listener's sans-IO connection object: projections, folding, routes and outgoing frames."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote_plus

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.hybridconnection.addresses import RendezvousPolicy
from gateway.hybridconnection.connection import (
    CONNECTION_HEADERS,
    STREAM_FRAME_LIMIT,
    ListenerConnection,
    RelayedResponse,
    StreamedBody,
    TargetOutsideError,
    connection_tokens,
    fold_headers,
    prepare_response,
    project_accept,
    split_query,
)
from gateway.hybridconnection.framing import (
    CONTROL_CHANNEL_BODY_LIMIT,
    ChannelLimits,
    Frame,
    Opcode,
    RelayChannel,
    RequestReceived,
    ResponseReceived,
    ResponseRoute,
    SocketKind,
)
from gateway.hybridconnection.messages import AcceptCommand, RemoteEndpoint

NODE = "wss://g1-node.servicebus.windows.net:443/$hc/hyco"
POLICY = RendezvousPolicy(entity_path="hyco")


def connection(kind: SocketKind = SocketKind.CONTROL, **limits: Any) -> ListenerConnection:
    return ListenerConnection(
        kind, "hyco", POLICY.check, limits=ChannelLimits.for_socket(kind, **limits)
    )


def request_message(target: str, *, body: bool = False, rid: str = "r1") -> str:
    return json.dumps(
        {
            "request": {
                "address": f"{NODE}?sb-hc-action=request&sb-hc-id={rid}",
                "id": rid,
                "requestTarget": target,
                "method": "GET",
                "requestHeaders": {"Accept": "*/*"},
                "remoteEndpoint": {"address": "10.0.0.1", "port": 4242},
                "body": body,
            }
        }
    )


def relay_read(frames: list[Frame]) -> list[Any]:
    """Read frames as the relay would (the core's own relay-side twin)."""
    channel = RelayChannel(SocketKind.RENDEZVOUS)
    events: list[Any] = []
    for frame in frames:
        events += channel.receive_frame(frame.opcode, frame.payload, fin=frame.fin)
    return events


def test_request_is_projected_below_the_hybrid_connection_path() -> None:
    conn = connection()
    (event,) = conn.receive_message(request_message("/HyCo/orders/17?expand=true&a=%2F"))
    assert isinstance(event, RequestReceived)
    request = conn.request(event.command, event.body)
    assert request.target == "/orders/17?expand=true&a=%2F"
    assert request.raw_target == "/HyCo/orders/17?expand=true&a=%2F"
    assert request.headers == (("Accept", "*/*"),)
    assert request.remote == ("10.0.0.1", 4242)
    assert request.body == b""


@pytest.mark.parametrize(("raw", "target"), [("/hyco", "/"), ("/hyco?x=1", "/?x=1")])
def test_the_bare_path_is_the_root(raw: str, target: str) -> None:
    conn = connection()
    (event,) = conn.receive_message(request_message(raw))
    assert isinstance(event, RequestReceived)
    assert conn.request(event.command, None).target == target


@pytest.mark.parametrize("raw", ["/hycox/y", "/other/hyco", "/", "/hyc"])
def test_a_target_outside_the_path_is_refused(raw: str) -> None:
    conn = connection()
    (event,) = conn.receive_message(request_message(raw))
    assert isinstance(event, RequestReceived)
    with pytest.raises(TargetOutsideError):
        conn.request(event.command, None)


def test_accept_projection_keeps_suffix_and_sender_query_only() -> None:
    command = AcceptCommand(
        address=f"{NODE}/ldap/x?tenant=7&sb-hc-action=accept&sb-hc-id=s1&sb-hc-rdv=secret",
        id="s1",
        connect_headers={"Sec-WebSocket-Protocol": "ldap"},
        remote_endpoint=RemoteEndpoint("10.1.1.1", 9),
    )
    info = project_accept(command, "hyco")
    assert info.target == "/ldap/x?tenant=7"
    assert info.connect_headers == (("Sec-WebSocket-Protocol", "ldap"),)
    assert info.remote == ("10.1.1.1", 9)
    assert "secret" not in repr(info)


def test_accept_without_suffix_or_query_targets_the_root() -> None:
    command = AcceptCommand(
        address=f"{NODE}?sb-hc-action=accept&sb-hc-id=s1", id="s1", connect_headers={}
    )
    assert connection().accept(command).target == "/"


@pytest.mark.parametrize(
    ("query", "service", "app"),
    [
        ("a=1&sb-hc-token=t&b=2", {"sb-hc-token": "t"}, "a=1&b=2"),
        ("&&&", {}, "&&&"),
        ("a=1&a=2&", {}, "a=1&a=2&"),
        ("sb-hc-undefined", {}, "sb-hc-undefined"),
        ("sb-hc-action=connect&&", {"sb-hc-action": "connect"}, ""),
        ("SB-HC-ID=x&%73b-hc-rdv=y", {"SB-HC-ID": "x", "sb-hc-rdv": "y"}, ""),
        ("%2f%3a%3d%26", {}, "%2f%3a%3d%26"),
        ("sb-hc-id=1&sb-hc-id=2", {"sb-hc-id": "1"}, ""),
        ("", {}, ""),
    ],
)
def test_split_query_follows_the_service(query: str, service: dict[str, str], app: str) -> None:
    assert split_query(query) == (service, app)


def test_split_query_can_read_kept_keys() -> None:
    service, app = split_query("statusCode=401&x=1", also_read=("statusCode",))
    assert service == {"statusCode": "401"}
    assert app == "statusCode=401&x=1"


_PIECE = st.text(alphabet="ab=&%2Fs-hc", max_size=12)


@given(st.lists(_PIECE, max_size=6))
def test_split_query_never_leaks_a_service_parameter(pieces: list[str]) -> None:
    _, app = split_query("&".join(pieces))
    for piece in app.split("&"):
        key, eq, _ = piece.partition("=")
        if eq:
            assert not unquote_plus(key).lower().startswith("sb-hc-")


def test_fold_joins_repeats_and_keeps_the_first_cookie() -> None:
    folded = fold_headers(
        [
            ("X-A", "1"),
            ("x-a", "2"),
            ("Set-Cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("Connection", "close"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "5"),
            ("Keep-Alive", "timeout=5"),
        ]
    )
    assert folded == {"X-A": "1, 2", "Set-Cookie": "a=1"}


@pytest.mark.parametrize(
    "pair", [("Bad Name", "v"), ("X", "a\r\nInjected: 1"), ("X", "nul\x00"), ("", "v")]
)
def test_fold_refuses_what_is_not_http(pair: tuple[str, str]) -> None:
    with pytest.raises(ValueError, match="not valid HTTP"):
        fold_headers([pair])


@pytest.mark.parametrize(
    "pair", [("Bad Name", "v"), ("X", "a\r\nInjected: 1"), ("X", "nul\x00"), ("", "v")]
)
def test_fold_refuses_what_is_not_http_in_a_tuple_too(pair: tuple[str, str]) -> None:
    # A tuple of pairs (what RelayedResponse holds) is checked in one pass over all of them.
    with pytest.raises(ValueError, match="not valid HTTP"):
        fold_headers((("X-Ok", "v"), pair, ("Y", "w")))


def _folding(headers: Any) -> object:
    try:
        return fold_headers(headers)
    except (ValueError, TypeError) as error:
        return type(error), str(error) if isinstance(error, ValueError) else ""


_fold_names = st.one_of(
    st.sampled_from(["Content-Type", "set-cookie", "Set-Cookie", "X-A", "x-a", "Connection", ""]),
    st.text(alphabet=st.sampled_from("Aa-_~!: \t\r\n\x00\x7f\u00e9"), max_size=6),
)
_fold_values = st.one_of(
    st.text(alphabet=st.sampled_from("ab ,;=\t\r\n\x00\x1f\x7f\u00e9\u20ac"), max_size=8),
    st.integers(),
    st.none(),
)


@settings(max_examples=300)
@given(st.lists(st.tuples(_fold_names, _fold_values), max_size=6))
@example([("Content-Type", "a"), ("Y", "b"), ("caf\u00e9", "b")])
@example([("Content-Type", "caf\u00e9 \t1"), ("X", "b"), ("Y", "b")])
@example([("Content-Type", "a"), ("Y", "b"), ("X", 5)])
@example([("Content-Type", "a"), ("Y", "b"), ("X", "c", "d")])
@example([("Content-Type", "a"), ("Y", "b"), ("X",)])
def test_fold_of_a_tuple_is_the_header_by_header_fold(pairs: list[tuple[Any, Any]]) -> None:
    # A list is checked header by header (the rule as written); a tuple of three or more first
    # in one pass, which must accept, refuse and fold exactly alike.
    assert _folding(tuple(pairs)) == _folding(pairs)


def test_connection_headers_cover_rfc_9110_and_the_relay_list() -> None:
    for name in ("connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"):
        assert name in CONNECTION_HEADERS
    for name in ("content-length", "host", "close"):
        assert name in CONNECTION_HEADERS
    assert connection_tokens(" Keep-Alive, X-Foo ,") == {"keep-alive", "x-foo"}
    assert connection_tokens(None) == frozenset()


def test_small_response_goes_back_on_the_control_channel_in_two_frames() -> None:
    prepared = connection().respond("r1", RelayedResponse(201, "", (("X", "1"),), b"ok"))
    assert prepared.route is ResponseRoute.CONTROL
    assert prepared.valid
    frames = prepared.frames()
    assert [frame.opcode for frame in frames] == [Opcode.TEXT, Opcode.BINARY]
    (event,) = relay_read(frames)
    assert isinstance(event, ResponseReceived)
    assert event.command.status_code == 201
    assert event.command.status_description == "Created"  # the standard phrase fills in
    assert dict(event.command.response_headers) == {"X": "1"}
    assert event.body == b"ok"


def test_empty_body_says_so() -> None:
    prepared = prepare_response("r1", RelayedResponse(204))
    assert not prepared.command.body
    assert len(prepared.frames()) == 1


@pytest.mark.parametrize(
    ("size", "route"),
    [
        (CONTROL_CHANNEL_BODY_LIMIT, ResponseRoute.CONTROL),
        (CONTROL_CHANNEL_BODY_LIMIT + 1, ResponseRoute.RENDEZVOUS),
    ],
)
def test_route_follows_the_64_kib_rule(size: int, route: ResponseRoute) -> None:
    assert prepare_response("r", RelayedResponse(200, body=b"x" * size)).route is route


def test_rendezvous_requests_are_answered_on_their_socket() -> None:
    prepared = connection(SocketKind.RENDEZVOUS).respond("r", RelayedResponse(200, body=b"x"))
    assert prepared.route is ResponseRoute.RENDEZVOUS


def test_reason_phrase_is_cleaned_and_bounded() -> None:
    prepared = prepare_response("r", RelayedResponse(200, "Fine\r\nX-Injected: 1" + "y" * 300))
    reason = prepared.command.status_description
    assert reason is not None
    assert "\r" not in reason
    assert "\n" not in reason
    assert len(reason) == 120


def test_invalid_header_replaces_the_answer_with_a_bodiless_500() -> None:
    prepared = prepare_response("r", RelayedResponse(200, "", (("X", "a\nb"),), b"secret"))
    assert not prepared.valid
    assert prepared.command.status_code == 500
    assert prepared.body is None
    assert not prepared.command.body


@pytest.mark.parametrize(
    "headers",
    [
        # Over the relay's 32 KB of header metadata (section 5.2), the message under 64 KiB.
        tuple((f"X-{i}", "v" * 3000) for i in range(12)),
        # Under 32 KB of metadata, but three UTF-8 bytes a character in the JSON text: over the
        # 64 KiB the relay reads as one control message (section 5.4).
        tuple((f"X-{i}", "\u20ac" * 10900) for i in range(3)),
        # One value longer than the relay reads in a field.
        (("X", "v" * 17000),),
        # More headers than the relay reads.
        tuple((f"X-{i}", "v") for i in range(257)),
    ],
    ids=["metadata", "json-size", "field", "count"],
)
@pytest.mark.parametrize("kind", list(SocketKind))
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_an_answer_the_relay_would_refuse_is_replaced_by_a_bodiless_500(
    headers: tuple[tuple[str, str], ...], kind: SocketKind, streamed: bool
) -> None:
    body: bytes | AsyncIterator[bytes] = _chunks() if streamed else b"ok"
    prepared = connection(kind).respond("r", RelayedResponse(200, "", headers, body))
    assert not prepared.valid
    assert prepared.command.status_code == 500
    assert prepared.body is None
    assert not prepared.streamed
    assert len(prepared.payload) < 1024
    # What the relay reads of it is one whole response, on either kind of socket.
    (event,) = relay_read(prepared.frames())
    assert isinstance(event, ResponseReceived)


def test_an_answer_just_under_the_relay_limits_is_sent_as_it_is() -> None:
    headers = tuple((f"X-{i}", "v" * 3000) for i in range(10))
    prepared = prepare_response("r", RelayedResponse(200, "", headers, b"ok"))
    assert prepared.valid
    assert dict(prepared.command.response_headers) == dict(headers)


async def _chunks() -> AsyncIterator[bytes]:
    yield b"a"


def test_streamed_body_is_one_fragmented_binary_message() -> None:
    prepared = prepare_response("r", RelayedResponse(200, body=_chunks()))
    assert prepared.streamed
    assert prepared.route is ResponseRoute.RENDEZVOUS
    assert prepared.command.body
    with pytest.raises(ValueError, match="streamed"):
        prepared.frames()
    stream = prepared.body_stream()
    payload = b"x" * (2 * STREAM_FRAME_LIMIT + 5)
    frames = prepared.head() + stream.chunk(b"") + stream.chunk(payload) + stream.end()
    assert [frame.opcode for frame in frames[1:]] == [
        Opcode.BINARY,
        Opcode.CONTINUATION,
        Opcode.CONTINUATION,
        Opcode.CONTINUATION,
    ]
    assert all(len(frame.payload) <= STREAM_FRAME_LIMIT for frame in frames)
    assert [frame.fin for frame in frames[1:]] == [False, False, False, True]
    (event,) = relay_read(frames)
    assert isinstance(event, ResponseReceived)
    assert event.body == payload


def test_streamed_body_frame_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        StreamedBody(0)


def test_renew_token_only_on_the_control_channel() -> None:
    (frame,) = connection().renew_token("SharedAccessSignature sr=a&sig=b&se=1&skn=c")
    assert json.loads(frame.payload) == {
        "renewToken": {"token": "SharedAccessSignature sr=a&sig=b&se=1&skn=c"}
    }
    with pytest.raises(ValueError, match="control channel"):
        connection(SocketKind.RENDEZVOUS).renew_token("t")


def test_frames_in_give_the_core_events_and_bounds() -> None:
    conn = connection(SocketKind.RENDEZVOUS, rendezvous_body_limit=CONTROL_CHANNEL_BODY_LIMIT)
    assert conn.max_body_size == CONTROL_CHANNEL_BODY_LIMIT
    text = request_message("/hyco/up", body=True).encode()
    assert conn.receive_frame(Opcode.TEXT, text[:10], fin=False) == []
    assert conn.receive_frame(Opcode.CONTINUATION, text[10:], fin=True) == []
    assert conn.receive_frame(Opcode.BINARY, b"x" * CONTROL_CHANNEL_BODY_LIMIT, fin=False) == []
    (violation,) = conn.receive_frame(Opcode.CONTINUATION, b"y", fin=True)
    assert violation.fatal  # type: ignore[union-attr]
    assert violation.request_id == "r1"  # type: ignore[union-attr]
    assert conn.closed


def test_library_refusal_of_an_oversize_body_names_the_request() -> None:
    conn = connection(SocketKind.RENDEZVOUS)
    conn.receive_message(request_message("/hyco/up", body=True))
    (violation,) = conn.receive_too_large()
    assert violation.request_id == "r1"  # type: ignore[union-attr]


def test_empty_path_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        ListenerConnection(SocketKind.CONTROL, "/", POLICY.check)
