"""The header policy: validation of relayed headers and the outbound allow-list."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import load
from gateway.config.model import Operation, Target
from gateway.config.semantics import NEVER_FORWARDED
from gateway.forward.headers import (
    DEFAULT_FORWARDED,
    HANDSHAKE_ONLY,
    check_declared_length,
    host_header,
    outbound_headers,
    validate_request_headers,
)
from gateway.forward.rejections import RequestRejected
from tests.unit.forward.configs import document, make_config, operation, target

CONFIG = make_config()
Headers = list[tuple[str, str]]


def rejection(headers: object, **limits: int) -> tuple[str, int]:
    config = make_config(**limits) if limits else CONFIG
    with pytest.raises(RequestRejected) as caught:
        validate_request_headers(config, headers)  # type: ignore[arg-type]
    return caught.value.code, caught.value.status


# --- validation ---------------------------------------------------------------------------------


def test_names_are_lower_cased_values_trimmed_order_kept() -> None:
    headers = [("Accept", "\t text/html \t"), ("X-A", "a\tb"), ("X-Empty", "")]
    assert validate_request_headers(CONFIG, headers) == (
        ("accept", "text/html"),
        ("x-a", "a\tb"),
        ("x-empty", ""),
    )


@pytest.mark.parametrize(
    "headers",
    [
        [("Accept", "text/html"), ("accept", "*/*")],
        [("Authorization", "Bearer a"), ("authorization", "Bearer b")],
        [("X-A", "1"), ("X-B", "2"), ("x-a", "1")],
        [("Cookie", "a=1"), ("COOKIE", "a=1")],
    ],
)
def test_a_name_given_twice_in_any_case_is_400(headers: Headers) -> None:
    # The relay's JSON holds one value per name; keys differing in case would be two lines.
    assert rejection(headers) == ("duplicate_header", 400)


@pytest.mark.parametrize(("declared", "size"), [("5", 4), ("5", 6), ("0", 1), ("1", 0)])
def test_content_length_other_than_the_delivered_body_is_400(declared: str, size: int) -> None:
    validated = validate_request_headers(CONFIG, [("Content-Length", declared)])
    with pytest.raises(RequestRejected) as caught:
        check_declared_length(validated, size)
    assert (caught.value.code, caught.value.status) == ("content_length_mismatch", 400)


@pytest.mark.parametrize(("headers", "size"), [([("Content-Length", "5")], 5), ([], 7)])
def test_content_length_equal_to_the_body_or_absent_passes(headers: Headers, size: int) -> None:
    check_declared_length(validate_request_headers(CONFIG, headers), size)


def test_a_mapping_from_the_relay_json_is_accepted() -> None:
    assert validate_request_headers(CONFIG, {"Content-Type": "application/json"}) == (
        ("content-type", "application/json"),
    )


def test_header_count_limit_is_431_and_exact_limit_passes() -> None:
    limit = 8
    at_limit = [(f"x-h{i}", "v") for i in range(limit)]
    assert len(validate_request_headers(make_config(max_header_count=limit), at_limit)) == limit
    assert rejection([*at_limit, ("x-one-more", "v")], max_header_count=limit) == (
        "too_many_headers",
        431,
    )


def test_an_endless_header_iterator_is_not_drained() -> None:
    endless: Iterator[tuple[str, str]] = (("x-h", str(i)) for i in itertools.count())
    assert rejection(endless) == ("too_many_headers", 431)


def test_the_header_iterator_is_read_one_past_the_limit_and_no_further() -> None:
    counter = itertools.count()
    endless = ((f"x-h{i}", "v") for i in counter)
    assert rejection(endless, max_header_count=8) == ("too_many_headers", 431)
    assert next(counter) == 9  # 0-8 were read: the limit of 8, and one to know it was passed


def test_header_bytes_limit_is_431_and_exact_limit_passes() -> None:
    # Each header counts as 'name: value\r\n'.
    value = "v" * (1024 - len("x-big") - 4)
    config = make_config(max_header_bytes=1024)
    assert validate_request_headers(config, [("x-big", value)]) == (("x-big", value),)
    assert rejection([("x-big", value + "v")], max_header_bytes=1024) == ("headers_too_large", 431)


def test_header_bytes_limit_counts_every_header() -> None:
    # Eight headers of 130 bytes each: none is large, together they are over 1024.
    headers = [(f"x-h{i}", "v" * 123) for i in range(8)]
    assert rejection(headers, max_header_bytes=1024) == ("headers_too_large", 431)


@pytest.mark.parametrize(
    "name", ["X A", "X:A", "", "Ä-Header", "x\r\ny", "x\x00", "(x)", "x" * 10_000, "x" * 257]
)
def test_names_must_be_http_tokens(name: str) -> None:
    assert rejection([(name, "1")]) == ("invalid_header_name", 400)


def test_a_name_of_the_longest_length_passes() -> None:
    assert validate_request_headers(CONFIG, [("x" * 256, "1")]) == (("x" * 256, "1"),)


@pytest.mark.parametrize(
    "value",
    [
        "a\r\nX-Injected: 1",
        "a\nb",
        "a\rb",
        "a\x00b",
        "a\r\n b",  # obsolete line folding
        "a\n\tb",
        "a\x01b",
        "a\x7fb",
        "caf\u00e9",
        "\u2028",
    ],
)
def test_values_without_cr_lf_nul_controls_or_non_ascii(value: str) -> None:
    assert rejection([("X-A", value)]) == ("invalid_header_value", 400)


@pytest.mark.parametrize("headers", [[(1, "a")], [("x-a", None)], [("x-a", b"1")]])
def test_names_and_values_must_be_text(headers: object) -> None:
    assert rejection(headers) == ("invalid_header_value", 400)


@pytest.mark.parametrize("value", ["0", "5", "1048576", "007"])
def test_a_plain_content_length_passes(value: str) -> None:
    assert validate_request_headers(CONFIG, [("Content-Length", value)]) == (
        ("content-length", value),
    )


@pytest.mark.parametrize(
    "headers",
    [
        [("Content-Length", "+5")],
        [("Content-Length", "5, 5")],
        [("Content-Length", "-1")],
        [("Content-Length", "0x5")],
        [("Content-Length", "")],
        [("Content-Length", "5 5")],
        [("Content-Length", "1" * 19)],
        [("Content-Length", "5"), ("Content-Length", "6")],
        [("Content-Length", "5"), ("content-length", "5")],
    ],
)
def test_malformed_or_repeated_content_length_is_400(headers: Headers) -> None:
    assert rejection(headers) == ("invalid_content_length", 400)


@pytest.mark.parametrize("te", ["chunked", "Chunked"])
def test_content_length_with_transfer_encoding_is_400(te: str) -> None:
    headers = [("Content-Length", "5"), ("Transfer-Encoding", te)]
    assert rejection(headers) == ("content_length_with_transfer_encoding", 400)


# RFC 9112 section 6.1: exactly one 'chunked' or nothing.
AMBIGUOUS_CODINGS = [
    "gzip, chunked",
    "chunked, identity",
    "chunked, chunked",
    "chunked,chunked",
    "xchunked",
    "chunked;x=1",
    " chunked",
    "chunked ",
    "\tchunked",
    "identity",
    "gzip",
    "",
    "chunk",
    "chunked\x0b",
]


@pytest.mark.parametrize("coding", AMBIGUOUS_CODINGS)
@pytest.mark.parametrize("with_length", [False, True])
def test_transfer_encoding_other_than_one_chunked_is_400(coding: str, with_length: bool) -> None:
    headers = [("Transfer-Encoding", coding)]
    if with_length:
        headers.append(("Content-Length", "5"))
    assert rejection(headers) == ("invalid_transfer_encoding", 400)


@pytest.mark.parametrize(
    "headers",
    [
        [("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")],
        [("Transfer-Encoding", "chunked"), ("transfer-encoding", "chunked")],
    ],
)
def test_transfer_encoding_on_two_lines_is_400(headers: Headers) -> None:
    assert rejection(headers) == ("invalid_transfer_encoding", 400)


@pytest.mark.parametrize("coding", ["chunked", "Chunked", "CHUNKED"])
def test_one_chunked_coding_in_any_case_passes(coding: str) -> None:
    assert validate_request_headers(CONFIG, [("Transfer-Encoding", coding)])


def test_transfer_encoding_alone_passes_validation_and_is_never_forwarded() -> None:
    validated = validate_request_headers(CONFIG, [("Transfer-Encoding", "chunked")])
    assert outbound_headers(target("erp"), operation("erp"), validated) == [
        ("host", "erp.corp.local:8443")
    ]


def test_two_host_headers_are_400() -> None:
    assert rejection([("Host", "a"), ("host", "b")]) == ("duplicate_host", 400)


def test_one_host_header_passes_validation() -> None:
    # It is never forwarded (the target's own Host is sent), but one is what every request has.
    assert validate_request_headers(CONFIG, [("Host", "erp"), ("Accept", "*/*")]) == (
        ("host", "erp"),
        ("accept", "*/*"),
    )


# --- outbound allow-list ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [("erp", "erp.corp.local:8443"), ("intranet", "intranet.corp.local"), ("v6", "[fd00::5]:9443")],
)
def test_host_is_the_configured_host_with_a_non_default_port(name: str, expected: str) -> None:
    assert host_header(target(name)) == expected
    relayed = [("host", "evil.example"), ("accept", "*/*")]
    assert outbound_headers(target(name), target(name).operations[0], relayed) == [
        ("host", expected),
        ("accept", "*/*"),
    ]


@pytest.mark.parametrize(
    ("scheme", "port", "expected"),
    [
        ("https", 443, "api.corp.local"),
        ("https", 80, "api.corp.local:80"),
        ("http", 80, "api.corp.local"),
        ("http", 443, "api.corp.local:443"),
    ],
)
def test_the_default_port_of_the_scheme_is_left_out_of_host(
    scheme: str, port: int, expected: str
) -> None:
    declared = Target.model_validate(
        {"scheme": scheme, "host": "api.corp.local", "port": port, "allowed_cidrs": ["10.0.0.0/8"]}
    )
    assert host_header(declared) == expected


def test_default_set_passes_in_order_and_everything_else_is_dropped() -> None:
    relayed = validate_request_headers(
        CONFIG,
        [
            ("Accept", "application/json"),
            ("User-Agent", "EmpowerID"),
            ("Content-Type", "application/json"),
            ("Accept-Encoding", "gzip"),
            ("Expect", "100-continue"),
            ("If-None-Match", '"abc"'),
            ("Signature", "sig=:AAAA:"),
            ("Signature-Input", 'sig=("@method")'),
            ("X-Custom", "1"),
            ("Accept-Language", "en"),
        ],
    )
    assert outbound_headers(target("erp"), operation("erp"), relayed) == [
        ("host", "erp.corp.local:8443"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("if-none-match", '"abc"'),
        ("accept-language", "en"),
    ]


def test_credentials_only_when_the_operation_names_them() -> None:
    relayed = [("authorization", "Bearer t"), ("cookie", "s=1"), ("x-tenant", "acme")]
    assert outbound_headers(target("erp"), operation("erp"), relayed) == [
        ("host", "erp.corp.local:8443")
    ]
    assert outbound_headers(target("intranet"), operation("intranet"), relayed) == [
        ("host", "intranet.corp.local"),
        *relayed,
    ]


ROUTING_AND_HOP = [
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "X-Forwarded-Uri",
    "Forwarded",
    "X-Real-IP",
    "X-Original-URL",
    "X-Rewrite-URL",
    "X-HTTP-Method-Override",
    "X-HTTP-Method",
    "X-Method-Override",
    "Via",
    "Connection",
    "Keep-Alive",
    "TE",
    "Trailer",
    "Upgrade",
    "Proxy-Authorization",
    "Proxy-Connection",
    "Transfer-Encoding",
    "Content-Length",
    "Host",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Extensions",
    "Sec-WebSocket-Accept",
]


def test_routing_hop_by_hop_and_handshake_headers_are_dropped_even_when_listed() -> None:
    # The configuration loader refuses such a list; the header policy does not rely on that.
    listed = Operation.model_validate(
        {"name": "too-generous", "methods": ["GET"], "paths": ["/**"], "headers": ROUTING_AND_HOP}
    )
    relayed = [(name.lower(), "127.0.0.1") for name in ROUTING_AND_HOP]
    assert outbound_headers(target("erp"), listed, relayed) == [("host", "erp.corp.local:8443")]


@pytest.mark.parametrize("listed", ["close, X-Tenant", "X-Tenant,close", "close,\tx-tenant "])
def test_headers_named_by_connection_are_dropped(listed: str) -> None:
    relayed = [("connection", listed), ("x-tenant", "acme"), ("cookie", "s=1")]
    assert outbound_headers(target("intranet"), operation("intranet"), relayed) == [
        ("host", "intranet.corp.local"),
        ("cookie", "s=1"),
    ]


def test_default_set_never_overlaps_what_is_never_forwarded() -> None:
    assert DEFAULT_FORWARDED.isdisjoint(NEVER_FORWARDED | HANDSHAKE_ONLY)
    assert not any(name.startswith("x-") for name in DEFAULT_FORWARDED)
    assert {"authorization", "cookie"}.isdisjoint(DEFAULT_FORWARDED)


def test_the_fixture_configuration_passes_the_real_loader(tmp_path: Path) -> None:
    """The targets these tests use are ones gateway.yaml can really declare."""
    (tmp_path / "policies").mkdir()
    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps(document()), encoding="utf-8")  # JSON is YAML
    assert load(path, env={}, check_host=False).config == make_config()
