"""Control-message parsing and serialisation (protocol notes section 3.2)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.hybridconnection.errors import (
    InvalidFieldError,
    MalformedCommandError,
    MalformedMessageError,
    MalformedRequestError,
    MessageTooLargeError,
    MissingFieldError,
    ProtocolError,
    UnknownCommandError,
)
from gateway.hybridconnection.messages import (
    AcceptCommand,
    Command,
    RemoteEndpoint,
    RendezvousRequestCommand,
    RenewTokenCommand,
    RequestCommand,
    ResponseCommand,
    encode_command,
    parse_command,
)

ADDRESS = "wss://g1-node.servicebus.windows.net:443/$hc/hyco?sb-hc-action=request&sb-hc-id=42_G10"


def dumps(document: Any) -> str:
    return json.dumps(document)


def test_accept_from_the_protocol_guide_parses() -> None:
    text = dumps(
        {
            "accept": {
                "address": ADDRESS.replace("request", "accept"),
                "id": "7c1e_G3",
                "connectHeaders": {
                    "Sec-WebSocket-Key": "l8fWd829IrZbEqUcLejv+Q==",
                    "Sec-WebSocket-Version": "13",
                    "X-App-Header": "anything",
                },
                "remoteEndpoint": {"address": "10.0.0.1", "port": 1234},
            }
        }
    )
    command = parse_command(text)
    assert isinstance(command, AcceptCommand)
    assert command.id == "7c1e_G3"
    assert command.connect_headers["Sec-WebSocket-Version"] == "13"
    assert command.remote_endpoint == RemoteEndpoint("10.0.0.1", 1234)


def test_full_request_parses_with_body_flag() -> None:
    text = dumps(
        {
            "request": {
                "address": ADDRESS,
                "id": "42_G10",
                "requestTarget": "/hyco/orders/17?expand=true",
                "method": "POST",
                "requestHeaders": {"Content-Type": "application/json", "X-Multi": "v1, v2"},
                "body": True,
            }
        }
    )
    command = parse_command(text)
    assert isinstance(command, RequestCommand)
    assert command.body is True
    assert command.request_target == "/hyco/orders/17?expand=true"
    assert command.request_headers["X-Multi"] == "v1, v2"


@pytest.mark.parametrize(
    "payload",
    [
        {"address": ADDRESS, "id": "42"},
        {"address": ADDRESS},
        # Section 3.2: either of `method` / `body` missing means rendezvous-only.
        {"address": ADDRESS, "id": "42", "method": "GET", "requestTarget": "/hyco"},
        {"address": ADDRESS, "id": "42", "body": True},
    ],
)
def test_request_without_method_or_body_is_the_rendezvous_only_form(
    payload: dict[str, Any],
) -> None:
    command = parse_command(dumps({"request": payload}))
    assert isinstance(command, RendezvousRequestCommand)
    assert command.address == ADDRESS


def test_response_status_code_may_be_a_string() -> None:
    text = dumps({"response": {"requestId": "1", "statusCode": "200", "body": False}})
    command = parse_command(text)
    assert isinstance(command, ResponseCommand)
    assert command.status_code == 200
    assert command.response_headers == {}


def test_renew_token_parses() -> None:
    command = parse_command(dumps({"renewToken": {"token": "SharedAccessSignature sr=a"}}))
    assert command == RenewTokenCommand(token="SharedAccessSignature sr=a")


def test_unknown_inner_fields_are_ignored() -> None:
    text = dumps({"renewToken": {"token": "t", "futureField": [1, 2]}})
    assert parse_command(text) == RenewTokenCommand(token="t")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", MalformedMessageError),
        ("{", MalformedMessageError),
        (b"\xff\xfe", MalformedMessageError),
        ("[]", MalformedMessageError),
        ('"accept"', MalformedMessageError),
        ("{}", MalformedMessageError),
        ('{"accept": {}, "request": {}}', MalformedMessageError),
        ('{"injectFault": {"delay": "00:00:01"}}', UnknownCommandError),
        ('{"Accept": {}}', UnknownCommandError),
        ('{"accept": []}', InvalidFieldError),
        ('{"accept": {"id": "1", "connectHeaders": {}}}', MissingFieldError),
        ('{"accept": {"address": 5, "id": "1", "connectHeaders": {}}}', InvalidFieldError),
        ('{"accept": {"address": "a", "id": "1", "connectHeaders": {"X": 1}}}', InvalidFieldError),
        (
            '{"accept": {"address": "a", "id": "1", "connectHeaders": {"X Y": "1"}}}',
            InvalidFieldError,
        ),
        ('{"accept": {"address": "a", "id": "", "connectHeaders": {}}}', InvalidFieldError),
        (
            '{"accept": {"address": "a", "id": "1", "connectHeaders": {}, '
            '"remoteEndpoint": {"address": "x", "port": 70000}}}',
            InvalidFieldError,
        ),
        (
            '{"request": {"address": "a", "id": "1", "requestTarget": "/x", "method": "GET", '
            '"requestHeaders": {"X": "a\\r\\nInjected: 1"}, "body": false}}',
            MalformedRequestError,
        ),
        (
            '{"request": {"address": "a", "id": "1", "requestTarget": "x", "method": "GET", '
            '"body": false}}',
            MalformedRequestError,
        ),
        (
            '{"request": {"address": "a", "id": "1", "requestTarget": "/x", "method": "G ET", '
            '"body": false}}',
            MalformedRequestError,
        ),
        (
            '{"request": {"address": "a", "id": "1", "requestTarget": "/x", "method": "GET", '
            '"body": "yes"}}',
            InvalidFieldError,
        ),
        ('{"request": {"id": "1"}}', MissingFieldError),
        ('{"response": {"requestId": "1", "statusCode": 200}}', MissingFieldError),
        ('{"response": {"requestId": "1", "statusCode": true, "body": false}}', InvalidFieldError),
        ('{"response": {"requestId": "1", "statusCode": 99, "body": false}}', InvalidFieldError),
        ('{"response": {"requestId": "1", "statusCode": "20x", "body": false}}', InvalidFieldError),
        ('{"response": {"requestId": "1", "statusCode": 1e3, "body": false}}', InvalidFieldError),
        (
            '{"response": {"requestId": "1", "statusCode": 200, "body": false, '
            '"statusDescription": "OK\\r\\nSet-Cookie: x"}}',
            InvalidFieldError,
        ),
        ('{"renewToken": {"token": "\\ud800"}}', MalformedMessageError),
        ('"\ud800"', MalformedMessageError),
        ('{"renewToken": {}}', MissingFieldError),
    ],
)
def test_defective_messages_raise_a_specific_protocol_error(
    text: str | bytes, error: type[ProtocolError]
) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_command(text)
    raised = caught.value
    # A defective accept or rendezvous-only request is wrapped: no body follows it, so the
    # socket survives it (section 3.2); the defect itself is still the specific one.
    bodiless = isinstance(text, str) and (
        text.startswith('{"accept": {"') or text in ('{"accept": []}', '{"request": {"id": "1"}}')
    )
    if bodiless:
        assert isinstance(raised, MalformedCommandError)
        raised = raised.field_error
    assert isinstance(raised, error)


def _request(**fields: Any) -> str:
    payload: dict[str, Any] = {
        "address": ADDRESS,
        "id": "42_G10",
        "requestTarget": "/hyco/x",
        "method": "POST",
        "requestHeaders": {"Content-Type": "text/plain"},
        "body": True,
    }
    payload.update(fields)
    return dumps({"request": {k: v for k, v in payload.items() if v is not None}})


@pytest.mark.parametrize(
    ("fields", "field_error"),
    [
        ({"requestHeaders": {"X-A": "a\r\nX-Injected: 1"}}, InvalidFieldError),
        ({"requestHeaders": {"X-A": "a\x00b"}}, InvalidFieldError),
        ({"requestHeaders": {"X A": "1"}}, InvalidFieldError),
        ({"requestHeaders": {"X-Big": "v" * 16_385}}, InvalidFieldError),
        ({"requestHeaders": ["not", "an", "object"]}, InvalidFieldError),
        ({"requestTarget": "/hyco/a\rb"}, InvalidFieldError),
        ({"requestTarget": "http://evil.example/"}, InvalidFieldError),
        ({"method": "GET "}, InvalidFieldError),
        ({"method": 7}, InvalidFieldError),
        ({"address": "wss://x/\n"}, InvalidFieldError),
        ({"remoteEndpoint": {"address": "1.2.3.4", "port": -1}}, InvalidFieldError),
        ({"requestTarget": None}, MissingFieldError),
    ],
)
def test_request_with_sound_id_and_body_flag_is_malformed_but_answerable(
    fields: dict[str, Any], field_error: type[ProtocolError]
) -> None:
    with pytest.raises(MalformedRequestError) as caught:
        parse_command(_request(**fields))
    error = caught.value
    assert (error.request_id, error.body, error.code) == ("42_G10", True, "malformed_request")
    assert isinstance(error.field_error, field_error)
    assert str(error) == str(error.field_error)
    # The message names the defect, never the offending value.
    assert "Injected" not in str(error)
    assert "vvvv" not in str(error)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"id": None}, MissingFieldError),
        ({"id": ""}, InvalidFieldError),
        ({"id": "4\r\n2"}, InvalidFieldError),
        ({"id": 42}, InvalidFieldError),
        ({"id": "i" * 16_385}, InvalidFieldError),
        ({"body": "yes", "method": "G ET"}, InvalidFieldError),
        ({"body": 1}, InvalidFieldError),
    ],
)
def test_request_without_a_sound_id_or_body_flag_is_not_answerable(
    fields: dict[str, Any], error: type[ProtocolError]
) -> None:
    # Nothing to address a response to, or no way to know whether a body follows: these stay
    # plain field errors, which the channel treats as a broken stream.
    with pytest.raises(error) as caught:
        parse_command(_request(**fields))
    assert not isinstance(caught.value, MalformedRequestError)


def test_oversize_message_is_refused_before_parsing() -> None:
    text = dumps({"renewToken": {"token": "x" * 70_000}})
    with pytest.raises(MessageTooLargeError):
        parse_command(text)
    # Multi-byte characters count by their UTF-8 length, not by code points.
    wide = dumps({"renewToken": {"token": "\u20ac" * 22_000}}).replace("\\u20ac", "\u20ac")
    assert len(wide) < 65_536 < len(wide.encode())
    with pytest.raises(MessageTooLargeError):
        parse_command(wide)


def test_error_messages_do_not_echo_long_peer_input() -> None:
    secret = "s" * 500
    with pytest.raises(UnknownCommandError) as caught:
        parse_command(dumps({secret: {}}))
    assert secret not in str(caught.value)
    assert caught.value.code == "unknown_command"


# --- round trips ---------------------------------------------------------------------------

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30)
_token = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ-_0123456789", min_size=1, max_size=20
)
_headers = st.dictionaries(_token, _text | st.just(""), max_size=5)
_endpoint = st.none() | st.builds(RemoteEndpoint, _text, st.integers(0, 65535))
_commands: st.SearchStrategy[Command] = st.one_of(
    st.builds(AcceptCommand, _text, _text, _headers, _endpoint),
    st.builds(
        RequestCommand,
        _text,
        _text.map(lambda t: "/" + t.replace(" ", "")),
        _token,
        _headers,
        st.booleans(),
        st.none() | _text,
        _endpoint,
    ),
    st.builds(RendezvousRequestCommand, _text, st.none() | _text),
    st.builds(
        ResponseCommand, _text, st.integers(100, 999), st.booleans(), st.none() | _text, _headers
    ),
    st.builds(RenewTokenCommand, _text),
)


@given(_commands)
def test_encode_then_parse_round_trips(command: Command) -> None:
    assert parse_command(encode_command(command)) == command


# --- fuzzing: any input yields a command or a ProtocolError, nothing else -------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
_field_names = st.sampled_from(
    [
        "address",
        "id",
        "connectHeaders",
        "remoteEndpoint",
        "requestTarget",
        "method",
        "requestHeaders",
        "body",
        "requestId",
        "statusCode",
        "statusDescription",
        "responseHeaders",
        "token",
        "port",
    ]
)
_structured = st.builds(
    lambda name, payload: json.dumps({name: payload}),
    st.sampled_from(["accept", "request", "response", "renewToken", "other"]),
    st.dictionaries(_field_names, _json_values, max_size=8),
)


@settings(max_examples=400)
@given(st.one_of(_structured, st.text(max_size=200), st.binary(max_size=200)))
def test_parser_never_raises_anything_but_protocol_error(data: str | bytes) -> None:
    try:
        command = parse_command(data)
    except ProtocolError:
        return
    # Whatever parsed must serialise back to the same command.
    assert parse_command(encode_command(command)) == command


# --- request headers: the one-pass check against a header-by-header reference ---------------

_REFERENCE_TOKEN = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def _reference_accepts(headers: dict[str, Any]) -> bool:
    """RFC 9110 read header by header: a name is 1*tchar; a value a string of at most 16 KiB
    without a control character other than HTAB (obs-text and any other character allowed)."""
    for name, value in headers.items():
        if not name or not set(name) <= _REFERENCE_TOKEN:
            return False
        if not isinstance(value, str) or len(value) > 16 * 1024:
            return False
        if any((ord(ch) < 0x20 and ch != "\t") or ord(ch) == 0x7F for ch in value):
            return False
    return True


_header_text = st.text(
    alphabet=st.one_of(
        st.sampled_from('Aa-_~!:; \t\r\n\x00\x7f\x1f"é€'),
        st.characters(min_codepoint=0, max_codepoint=0x7F),
        # Lone surrogates are not JSON text (the parser refuses them as a whole message).
        st.characters(exclude_categories=["Cs"]),
    ),
    max_size=12,
)
_header_values = st.one_of(
    _header_text,
    st.sampled_from(["ok", "x" * (16 * 1024), "x" * (16 * 1024 + 1), "a\tb"]),
    st.integers(),
    st.none(),
    st.lists(st.text(max_size=3), max_size=2),
)


_header_names = st.one_of(
    st.from_regex(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,12}", fullmatch=True), _header_text
)


@settings(max_examples=400, deadline=None)
# At most three headers: three values of 16 KiB still fit one 64 KiB control message.
@given(st.dictionaries(_header_names, _header_values, max_size=3))
@example({"X-Ok": "v", "X-Cr": "a\rb"})
@example({"X-Ok": "v", "X-Long": "x" * (16 * 1024 + 1)})
@example({"X-Ok": "v", "": "v"})
@example({"X-Ok": "v", "X Sp": "v"})
@example({"X-Ok": "v", "X-Int": 5})
@example({"X-Ok": "v", "X-Obs": "caf\u00e9\t1"})
def test_request_headers_are_held_to_the_header_by_header_rules(headers: dict[str, Any]) -> None:
    # The parser checks all names and all values of the common (ASCII) case in one pass; what it
    # accepts and refuses must be exactly what the rules give header by header, and an accepted
    # request keeps every header as sent, in order.
    document = {
        "request": {
            "address": ADDRESS,
            "id": "42_G10",
            "requestTarget": "/hyco/x",
            "method": "GET",
            "requestHeaders": headers,
            "body": False,
        }
    }
    if _reference_accepts(headers):
        command = parse_command(json.dumps(document))
        assert isinstance(command, RequestCommand)
        assert list(command.request_headers.items()) == list(headers.items())
    else:
        with pytest.raises(MalformedRequestError):
            parse_command(json.dumps(document))


# --- the common request's one-pass checks against the field-by-field reading -------------------

_ABSENT = object()
_odd_text = st.one_of(
    st.sampled_from(
        ["", " ", "a b", "x\ty", "a\rb", "\x00", "\x7f", "caf\u00e9", "\u2028", "\u00a0"]
    ),
    st.text(max_size=8),
    st.sampled_from(["y" * (16 * 1024), "y" * (16 * 1024 + 1)]),
)
_odd_value = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 70000), st.lists(st.none(), max_size=1)
)


_COMMON_REQUEST: dict[str, Any] = {
    "id": "42_G10",
    "requestTarget": "/hyco/x?a=1&b=%20",
    "method": "GET",
    "body": False,
    "address": ADDRESS,
    "remoteEndpoint": {"address": "10.1.2.3", "port": 443},
    "requestHeaders": {"Accept": "*/*", "User-Agent": "x/1"},
}


def _or_odd(*common: Any) -> st.SearchStrategy[Any]:
    """Another common value, an odd string, another type, or no field at all."""
    return st.one_of(st.sampled_from(common), _odd_text, _odd_value, st.just(_ABSENT))


_ODD_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "id": _or_odd("0f3e-77_G2"),
    "requestTarget": _or_odd("/hyco", "/", "/x y", "hyco", "/\u00e9", "/" + "t" * 16 * 1024),
    "method": _or_odd("POST", "DELETE", "get", "M-SEARCH", "G T"),
    "body": _or_odd(True),
    "address": _or_odd(ADDRESS + "&x=\u00e9", ADDRESS + "\t"),
    "remoteEndpoint": st.one_of(
        st.fixed_dictionaries(
            {
                "address": _or_odd("", "::1", "10.0.0.1\x00"),
                "port": _or_odd(0, 65535, 65536, -1, 8.5),
            }
        ),
        _or_odd([]),
    ),
    "requestHeaders": st.one_of(
        st.dictionaries(_header_names, _header_values, max_size=3),
        _or_odd({f"h{n}": "v" for n in range(257)}, {f"h{n}": "v" for n in range(256)}),
    ),
}


@st.composite
def _request_payloads(draw: st.DrawFn) -> dict[str, Any]:
    """The common request with up to three of its fields made odd or left out."""
    payload = dict(_COMMON_REQUEST)
    for key in draw(st.lists(st.sampled_from(sorted(_ODD_FIELDS)), max_size=3, unique=True)):
        value = draw(_ODD_FIELDS[key])
        if isinstance(value, dict) and key == "remoteEndpoint":
            value = {k: v for k, v in value.items() if v is not _ABSENT}
        if value is _ABSENT:
            del payload[key]
        else:
            payload[key] = value
    return payload


def _reading(parse: Any, payload: dict[str, Any]) -> tuple[Any, ...]:
    try:
        command = parse(payload)
    except ProtocolError as error:
        return ("refused", type(error), str(error), getattr(error, "request_id", None))
    headers = getattr(command, "request_headers", None)
    order = None if headers is None else (type(headers), list(headers.items()))
    return ("read", command, order)


@settings(max_examples=600, deadline=None)
@given(_request_payloads())
def test_a_request_reads_the_same_through_the_one_pass_checks(payload: dict[str, Any]) -> None:
    from gateway.hybridconnection import messages

    # What parse_command uses, and the field-by-field reading it falls back to.
    assert _reading(messages._parse_request, payload) == _reading(
        messages._checked_request, payload
    )


_ONE_ODD_FIELD: list[tuple[str, list[Any]]] = [
    ("id", ["", "a\rb", "y" * (16 * 1024 + 1), 7, None]),
    ("requestTarget", ["", "hyco", "/x y", "/a\x00", "/" + "t" * 16 * 1024, 5]),
    ("method", ["get", "M-SEARCH", "G T", "", 1]),
    ("body", [0, 1, None, "true"]),
    ("address", [None, "", ADDRESS + "\t", ADDRESS + "\x7f", "y" * (16 * 1024 + 1), 3]),
    ("remoteEndpoint", [None, [], {"port": 1}, {"address": "a"}]),
    ("remoteEndpoint", [{"address": "a", "port": port} for port in (0, 65535, 65536, -1, True)]),
    ("remoteEndpoint", [{"address": a, "port": 1} for a in ("", "a\x00", "y" * (16 * 1024 + 1))]),
    ("requestHeaders", [None, [], {}, {"A B": "v"}, {"A": "v\r"}, {"A": 1}, {"A": "caf\u00e9"}]),
    ("requestHeaders", [{f"h{n}": "v" for n in range(count)} for count in (256, 257)]),
]


@pytest.mark.parametrize(
    ("key", "value"),
    [(key, value) for key, values in _ONE_ODD_FIELD for value in values]
    + [(key, _ABSENT) for key in _COMMON_REQUEST],
)
def test_each_field_of_a_request_reads_the_same_through_the_one_pass_checks(
    key: str, value: Any
) -> None:
    from gateway.hybridconnection import messages

    payload = dict(_COMMON_REQUEST)
    if value is _ABSENT:
        del payload[key]
    else:
        payload[key] = value
    assert _reading(messages._parse_request, payload) == _reading(
        messages._checked_request, payload
    )
