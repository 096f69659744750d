"""The ``detail`` of every refusal the canonicaliser and the header policy send back.

The SaaS reads a refusal as ``{"error": code, "detail": detail}`` (gateway.pipeline): the code is
for programs, the detail for the person who sent the request and has to change it. Each rule below
is pinned to its code, its status and the exact phrase, so that a refusal never loses its
explanation or changes wording unnoticed (and the phrases stay free of anything the sender wrote,
see tests/unit/forward/test_canonical.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.forward.canonical import RequestRejected, canonicalise
from gateway.forward.headers import check_declared_length, validate_request_headers
from tests.unit.forward.configs import make_config

CONFIG = make_config()


def refusal(
    request_target: str = "/api/orders",
    *,
    method: str = "GET",
    target: str = "erp",
    headers: Any = (),
    websocket: bool = False,
    config: Any = CONFIG,
) -> tuple[str, int, str]:
    with pytest.raises(RequestRejected) as caught:
        canonicalise(
            config,
            method=method,
            target=target,
            request_target=request_target,
            headers=headers,
            websocket=websocket,
        )
    return caught.value.code, caught.value.status, str(caught.value)


CANONICAL_CASES: list[tuple[dict[str, Any], str, int, str]] = [
    # Method (RFC 9110 section 9.1).
    ({"method": "G(T"}, "invalid_method", 400, "the method is not an HTTP token"),
    ({"method": "get"}, "invalid_method", 400, "methods are case-sensitive and upper-case"),
    ({"method": "TRACE"}, "method_not_allowed", 405, "no operation can allow this method"),
    (
        {"method": "POST", "target": "intranet", "websocket": True},
        "invalid_method",
        400,
        "a WebSocket stream opens with GET",
    ),
    # Target selection.
    (
        {"target": "ldap"},
        "stream_only_target",
        403,
        "the target carries raw streams, not HTTP requests",
    ),
    (
        {"target": "érp.corp.local:8443"},
        "invalid_target",
        400,
        "the target is not a name or host:port",
    ),
    ({"target": "u@erp.corp.local:8443"}, "userinfo", 400, "a target cannot carry userinfo"),
    (
        {"target": "[fe80::1%25eth0]:8443"},
        "ipv6_zone_id",
        400,
        "an IPv6 zone id is never part of a target",
    ),
    (
        {"target": "erp%2ecorp.local:8443"},
        "percent_encoded_host",
        400,
        "a target host is never percent-encoded",
    ),
    ({"target": "billing"}, "unknown_target", 403, "no target of that name is declared"),
    (
        {"target": "other.corp.local:8443"},
        "target_not_allowed",
        403,
        "that host:port is not a declared target",
    ),
    ({"target": "[not-v6]:8443"}, "invalid_host", 400, "not a valid IPv6 literal"),
    ({"target": "[fd00::5]x:9443"}, "invalid_host", 400, "not a valid IPv6 literal"),
    (
        {"target": "fd00::5:9443"},
        "invalid_host",
        400,
        "an IPv6 literal must be written in brackets",
    ),
    (
        {"target": "erp.corp.local.:8443"},
        "non_canonical_host",
        400,
        "a target host has no trailing dot",
    ),
    (
        {"target": "erp_corp.local:8443"},
        "invalid_host",
        400,
        "the target host is not a host name",
    ),
    ({"target": "erp.corp.local"}, "missing_port", 400, "a host target must say its port"),
    (
        {"target": "erp.corp.local:08443"},
        "invalid_port",
        400,
        "the port must be 1-65535 in plain digits",
    ),
    # Request-target forms (RFC 9112 section 3.2).
    (
        {"request_target": "/" + "a" * 4096},
        "uri_too_long",
        414,
        "the request target exceeds 4096 bytes",
    ),
    ({"request_target": "*"}, "asterisk_form", 400, "asterisk-form is not relayed"),
    ({"request_target": "erp:22"}, "authority_form", 400, "authority-form is not relayed"),
    (
        {"request_target": "http://erp/x"},
        "absolute_form",
        400,
        "absolute-form is not relayed; send the path only",
    ),
    (
        {"request_target": "api/x"},
        "invalid_request_target",
        400,
        "the request target must start with '/'",
    ),
    (
        {"request_target": "/api/x#y"},
        "fragment",
        400,
        "a request target never carries a fragment",
    ),
    (
        {"request_target": "/api/x?a b"},
        "invalid_query",
        400,
        "the query holds whitespace, control or non-ASCII characters",
    ),
    # Raw path characters.
    ({"request_target": "/api/a\x00"}, "nul_byte", 400, "the path contains a NUL byte"),
    (
        {"request_target": "/api/a\x01"},
        "control_character",
        400,
        "the path contains a control character",
    ),
    (
        {"request_target": "/api/a\x7f"},
        "control_character",
        400,
        "the path contains a control character",
    ),
    ({"request_target": "/api/a\\b"}, "backslash", 400, "the path contains a backslash"),
    (
        {"request_target": "/api/a;b"},
        "matrix_parameter",
        400,
        "';' path parameters are not relayed",
    ),
    (
        {"request_target": "/api/\u00e9"},
        "non_ascii",
        400,
        "the path contains a raw non-ASCII character; percent-encode it",
    ),
    (
        {"request_target": "/api/a b"},
        "invalid_character",
        400,
        "the path contains a character that must be percent-encoded",
    ),
    # Segments.
    (
        {"request_target": "/api//x"},
        "empty_segment",
        400,
        "the path has an empty segment ('//')",
    ),
    (
        {"request_target": "/api/../x"},
        "dot_segment",
        400,
        "the path has a '.' or '..' segment",
    ),
    (
        {"request_target": "/api/%25"},
        "double_encoding",
        400,
        "an encoded '%' (%25) is never relayed",
    ),
    (
        {"request_target": "/api/%2e%2e"},
        "encoded_dot_segment",
        400,
        "the path has an encoded dot segment",
    ),
    (
        {"request_target": "/api/a%2eb"},
        "encoded_dot",
        400,
        "'.' is written as itself, never as '%2E'",
    ),
    (
        {"request_target": "/api/%20"},
        "empty_segment",
        400,
        "the path has a segment of white space only",
    ),
    (
        {"request_target": "/api/..%20"},
        "padded_dot_segment",
        400,
        "the path has a segment of only dots and white space",
    ),
    (
        {"request_target": "/api/%zz"},
        "invalid_percent_encoding",
        400,
        "'%' is not followed by two hex digits",
    ),
    # Encoded octets.
    (
        {"request_target": "/api/%00"},
        "nul_byte",
        400,
        "the path contains an encoded NUL byte",
    ),
    (
        {"request_target": "/api/%1f"},
        "control_character",
        400,
        "the path contains an encoded control character",
    ),
    (
        {"request_target": "/api/%7F"},
        "control_character",
        400,
        "the path contains an encoded control character",
    ),
    (
        {"request_target": "/api/a%2fb"},
        "encoded_slash",
        400,
        "the path contains an encoded '/' (%2F)",
    ),
    (
        {"request_target": "/api/a%5cb"},
        "backslash",
        400,
        "the path contains an encoded backslash (%5C)",
    ),
    (
        {"request_target": "/api/a%3bb"},
        "matrix_parameter",
        400,
        "an encoded ';' (%3B) is read as a path parameter by some servers",
    ),
    (
        {"request_target": "/api/a%3fb"},
        "encoded_delimiter",
        400,
        "an encoded '?' (%3F) ends the path for some servers",
    ),
    (
        {"request_target": "/api/a%23b"},
        "encoded_delimiter",
        400,
        "an encoded '#' (%23) ends the path for some servers",
    ),
    (
        {"request_target": "/api/%c0%ae"},
        "invalid_utf8",
        400,
        "the path decodes to invalid UTF-8",
    ),
    (
        {"request_target": "/api/a%e2%80%8bb"},
        "control_character",
        400,
        "the path contains an encoded control or format character",
    ),
    (
        {"request_target": "/api/a%e2%88%95b"},
        "unicode_confusable",
        400,
        "the path contains a character that folds to '/', '\\', '.' or another delimiter",
    ),
]


@pytest.mark.parametrize(("call", "code", "status", "detail"), CANONICAL_CASES)
def test_canonicaliser_refusals_explain_themselves(
    call: dict[str, Any], code: str, status: int, detail: str
) -> None:
    assert refusal(**call) == (code, status, detail)


def header_refusal(headers: Any, **limits: int) -> tuple[str, int, str]:
    return refusal(headers=headers, config=make_config(**limits) if limits else CONFIG)


HEADER_CASES: list[tuple[Any, dict[str, int], str, int, str]] = [
    (
        [(f"X-{i}", "1") for i in range(9)],
        {"max_header_count": 8},
        "too_many_headers",
        431,
        "more than 8 request headers",
    ),
    (
        [("X-A", "a" * 1100)],
        {"max_header_bytes": 1024},
        "headers_too_large",
        431,
        "request headers exceed 1024 bytes",
    ),
    (
        [("X-A", b"1")],
        {},
        "invalid_header_value",
        400,
        "header names and values must be text",
    ),
    (
        [("X A", "1")],
        {},
        "invalid_header_name",
        400,
        "a header name is not an HTTP token",
    ),
    (
        [("X-Note", "a\rb")],
        {},
        "invalid_header_value",
        400,
        "header 'x-note' has a control or non-ASCII character in its value",
    ),
    (
        [("Transfer-Encoding", "gzip, chunked")],
        {},
        "invalid_transfer_encoding",
        400,
        "Transfer-Encoding must be exactly one 'chunked'",
    ),
    (
        [("Transfer-Encoding", "chunked"), ("transfer-encoding", "chunked")],
        {},
        "invalid_transfer_encoding",
        400,
        "Transfer-Encoding on more than one field line",
    ),
    (
        [("Content-Length", "5"), ("content-length", "5")],
        {},
        "invalid_content_length",
        400,
        "more than one Content-Length",
    ),
    (
        [("Content-Length", "+5")],
        {},
        "invalid_content_length",
        400,
        "Content-Length is not a plain number",
    ),
    (
        [("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
        {},
        "content_length_with_transfer_encoding",
        400,
        "Content-Length and Transfer-Encoding together",
    ),
    (
        [("Host", "a"), ("host", "b")],
        {},
        "duplicate_host",
        400,
        "more than one Host header",
    ),
    (
        [("X-A", "1"), ("x-a", "1")],
        {},
        "duplicate_header",
        400,
        "a header name appears more than once",
    ),
]


@pytest.mark.parametrize(("headers", "limits", "code", "status", "detail"), HEADER_CASES)
def test_header_refusals_explain_themselves(
    headers: Any, limits: dict[str, int], code: str, status: int, detail: str
) -> None:
    assert header_refusal(headers, **limits) == (code, status, detail)


def test_a_declared_length_that_disagrees_names_the_body_size() -> None:
    with pytest.raises(RequestRejected) as caught:
        check_declared_length(validate_request_headers(CONFIG, [("Content-Length", "5")]), 4)
    assert (caught.value.code, caught.value.status, str(caught.value)) == (
        "content_length_mismatch",
        400,
        "Content-Length is not the size of the 4-byte body",
    )
