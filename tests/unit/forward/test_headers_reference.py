"""The header checks against a line-by-line reference, on generated header lists.

:func:`gateway.forward.headers.validate_request_headers` checks the common case (every name a
token, every value clean) with two scans of joined text, and :func:`outbound_headers` filters
with a set derived once per operation. Both must answer exactly as the plain rules do, header by
header: the same validated list, or the same refusal for the same header. The references below
spell those rules out one line at a time (RFC 9110 sections 5.1 and 5.5, RFC 9112 section 6).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.config.model import Operation
from gateway.config.semantics import NEVER_FORWARDED, NEVER_FORWARDED_PREFIXES
from gateway.forward import headers as headers_module
from gateway.forward.headers import (
    DEFAULT_FORWARDED,
    HANDSHAKE_ONLY,
    MAX_NAME_LENGTH,
    forwardable_names,
    host_header,
    outbound_headers,
    validate_request_headers,
)
from gateway.forward.rejections import RequestRejected
from tests.unit.forward.configs import make_config, target

CONFIG = make_config()
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
BAD_VALUE = re.compile(r"[^\t\x20-\x7e]")
Headers = list[tuple[str, str]]


def reference(headers: Headers) -> tuple[tuple[str, str], ...] | str:
    """The validation rules one header at a time; the refusal code, or the validated list."""
    limits = CONFIG.limits
    if len(headers) > limits.max_header_count:
        return "too_many_headers"
    if sum(len(n) + len(v) + 4 for n, v in headers) > limits.max_header_bytes:
        return "headers_too_large"
    validated = []
    for name, value in headers:
        if len(name) > MAX_NAME_LENGTH or not TOKEN.fullmatch(name):
            return "invalid_header_name"
        if name.lower() == "transfer-encoding" and value.lower() != "chunked":
            return "invalid_transfer_encoding"
        trimmed = value.strip(" \t")
        if BAD_VALUE.search(trimmed):
            return "invalid_header_value"
        validated.append((name.lower(), trimmed))
    names = [n for n, _ in validated]
    lengths = [v for n, v in validated if n == "content-length"]
    if names.count("transfer-encoding") > 1:
        return "invalid_transfer_encoding"
    if len(lengths) > 1 or (lengths and not re.fullmatch(r"[0-9]{1,18}", lengths[0])):
        return "invalid_content_length"
    if lengths and "transfer-encoding" in names:
        return "content_length_with_transfer_encoding"
    if names.count("host") > 1:
        return "duplicate_host"
    if len(set(names)) != len(names):
        return "duplicate_header"
    return tuple(validated)


def checked(headers: Headers) -> tuple[tuple[str, str], ...] | str:
    try:
        return validate_request_headers(CONFIG, headers)
    except RequestRejected as exc:
        return str(exc.code)


# Names: tokens, near-tokens (a colon, a space, an empty name, non-ASCII) and the framing names
# in mixed case; values: clean text, spaces and tabs at the ends, controls, CR/LF, non-ASCII.
NAMES = st.one_of(
    st.from_regex(TOKEN, fullmatch=True).map(lambda n: n[:40]),
    st.sampled_from(
        [
            "Accept",
            "content-length",
            "Transfer-Encoding",
            "HOST",
            "x:a",
            ":",
            "",
            "a b",
            "é",
            "x" * MAX_NAME_LENGTH,
            "x" * (MAX_NAME_LENGTH + 1),
            "Connection",
        ]
    ),
)
VALUES = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20),
    st.sampled_from(["chunked", " chunked", "CHUNKED", "12", "1, 2", " 5\t", "a\r\nb", "\x00"]),
    st.text(max_size=8),
)
HEADER_LISTS = st.lists(st.tuples(NAMES, VALUES), max_size=12)


@settings(max_examples=400)
@given(HEADER_LISTS)
@example([("x:a", "1")])
@example([("a", "1"), ("", "2")])
@example([("a", "ok"), ("b", "bad\x7f")])
@example([("Transfer-Encoding", "chunked\x00")])
@example([("Transfer-Encoding", "chunked"), ("transfer-encoding", "chunked")])
def test_validation_agrees_with_the_line_by_line_rules(headers: Headers) -> None:
    assert checked(headers) == reference(headers)


@settings(max_examples=300)
@given(
    st.lists(NAMES, max_size=12), st.lists(st.lists(VALUES, min_size=12, max_size=12), max_size=4)
)
def test_a_name_list_seen_before_is_checked_as_it_was_the_first_time(
    names: list[str], value_lists: list[list[str]]
) -> None:
    # A list of names that passed once is remembered; later requests with the same names (and
    # any values) must get exactly the answer the line-by-line rules give, refusals included.
    lists = [list(zip(names, values[: len(names)], strict=True)) for values in value_lists]
    for headers in [*lists, *lists]:
        assert checked(headers) == reference(headers)
        assert checked(tuple(headers)) == reference(headers)  # type: ignore[arg-type]


LONG_NAMES = [f"x-{index:03d}-" + "n" * 190 for index in range(100)]


@pytest.mark.parametrize(
    "requests",
    [
        [
            [("Transfer-Encoding", "chunked"), ("accept", "a")],
            [("Transfer-Encoding", "gzip"), ("accept", "a")],
        ],
        [[("Transfer-Encoding", "chunked")], [("Transfer-Encoding", " chunked")]],
        [[("content-length", "5")], [("content-length", "5x")], [("content-length", "5, 5")]],
        [[("host", "a")], [("host", "a\x00")]],
        [[("accept", "a"), ("x-y", "b")], [("accept", "a"), ("x-y", "b\r\nX-Injected: 1")]],
        [[("accept", "a"), ("x-y", "b")], [("accept", "a"), ("x-y", "\u00e9")]],
        [[("a", "1"), ("A", "2")], [("a", "1"), ("A", "2")]],
        [[(name, "") for name in LONG_NAMES], [(name, "v" * 130) for name in LONG_NAMES]],
    ],
    ids=["te-coding", "te-padded", "content-length", "nul", "crlf", "non-ascii", "twice", "size"],
)
def test_remembered_names_leave_every_value_check_in_place(requests: list[Headers]) -> None:
    answers = [checked(headers) for headers in requests]
    assert answers == [reference(headers) for headers in requests]
    assert isinstance(answers[0], tuple) or answers[0] == "duplicate_header"
    assert all(isinstance(answer, str) for answer in answers[1:])


def test_remembered_name_lists_are_bounded() -> None:
    for index in range(3 * headers_module._KNOWN_NAMES_LIMIT):
        headers = [(f"x-{index}", "1"), ("accept", "a")]
        assert checked(headers) == reference(headers)
        assert len(headers_module._KNOWN_NAMES) <= headers_module._KNOWN_NAMES_LIMIT
    assert checked([("accept", "a"), ("x-1", " 2 ")]) == (("accept", "a"), ("x-1", "2"))


def reference_outbound(headers: Headers, extra: list[str]) -> list[tuple[str, str]]:
    """The allow-list header by header: defaults plus the operation's names, minus the never
    forwarded, handshake and Connection-named ones; Host first."""
    allowed = DEFAULT_FORWARDED | {name.lower() for name in extra}
    named = {
        token.strip(" \t").lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
    }
    result = [("host", "erp.corp.local:8443")]
    for name, value in headers:
        lowered = name.lower()
        if (
            lowered in allowed
            and lowered not in NEVER_FORWARDED
            and not lowered.startswith(NEVER_FORWARDED_PREFIXES)
            and lowered not in HANDSHAKE_ONLY
            and lowered not in named
        ):
            result.append((lowered, value))
    return result


OUTBOUND_NAMES = st.sampled_from(
    [
        "accept",
        "Accept-Language",
        "authorization",
        "x-api-key",
        "x-forwarded-for",
        "connection",
        "keep-alive",
        "te",
        "sec-websocket-key",
        "content-type",
        "range",
    ]
)


@settings(max_examples=300)
@given(
    st.lists(st.tuples(OUTBOUND_NAMES, st.sampled_from(["1", "close", "range, accept", "x"]))),
    st.lists(st.sampled_from(["Authorization", "X-Api-Key", "Range", "X-Forwarded-For"])),
)
def test_outbound_allow_list_agrees_with_the_line_by_line_rules(
    headers: Headers, extra: list[str]
) -> None:
    names = sorted(set(extra))
    granted = Operation.model_validate(
        {"name": "op", "methods": ["GET"], "paths": ["/"], "headers": names}
    )
    erp = target("erp")
    expected = reference_outbound(headers, names)
    assert outbound_headers(erp, granted, headers) == expected
    derived = forwardable_names(granted)
    host = host_header(erp)
    assert outbound_headers(erp, granted, headers, forwardable=derived, host=host) == expected
