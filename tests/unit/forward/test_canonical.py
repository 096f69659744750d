"""The canonicaliser: methods, target selection, request-target forms and the path rules.

Each table pins an input to its canonical result or to its reason code and HTTP status; the same
rules are tabulated for reviewers in docs/request-canonicalisation.md.
"""

from __future__ import annotations

import dataclasses

import pytest

from gateway.config.patterns import PathPattern, PatternError
from gateway.forward.canonical import CanonicalRequest, RequestRejected, canonicalise
from gateway.policy.input import build_input
from tests.unit.forward.configs import make_config

CONFIG = make_config()


def canon(
    request_target: str = "/api/orders",
    *,
    method: str = "GET",
    target: str = "erp",
    headers: list[tuple[str, str]] | None = None,
    websocket: bool = False,
) -> CanonicalRequest:
    return canonicalise(
        CONFIG,
        method=method,
        target=target,
        request_target=request_target,
        headers=headers or [],
        websocket=websocket,
    )


def rejection(request_target: str = "/api/orders", **kwargs: object) -> tuple[str, int]:
    with pytest.raises(RequestRejected) as caught:
        canon(request_target, **kwargs)  # type: ignore[arg-type]
    return caught.value.code, caught.value.status


# --- methods ------------------------------------------------------------------------------------

METHOD_CASES = [
    ("GET", None),
    ("DELETE", None),
    ("OPTIONS", None),
    ("get", ("invalid_method", 400)),
    ("Get", ("invalid_method", 400)),
    ("GET ", ("invalid_method", 400)),
    (" GET", ("invalid_method", 400)),
    ("GET\r\n", ("invalid_method", 400)),
    ("", ("invalid_method", 400)),
    ("G(T", ("invalid_method", 400)),
    ("TRACE", ("method_not_allowed", 405)),
    ("CONNECT", ("method_not_allowed", 405)),
    ("PROPFIND", ("method_not_allowed", 405)),
    ("X" * 33, ("invalid_method", 400)),
]


@pytest.mark.parametrize(("method", "expected"), METHOD_CASES)
def test_method_rules(method: str, expected: tuple[str, int] | None) -> None:
    if expected is None:
        assert canon(method=method).method == method
    else:
        assert rejection(method=method) == expected


def test_a_websocket_stream_opens_with_get() -> None:
    assert canon(target="intranet", request_target="/api/feed", websocket=True).websocket
    assert rejection("/api/feed", target="intranet", method="POST", websocket=True) == (
        "invalid_method",
        400,
    )


# --- target selection ---------------------------------------------------------------------------

TARGET_CASES = [
    ("erp", "erp"),
    ("erp.corp.local:8443", "erp"),
    ("ERP.Corp.Local:8443", "erp"),
    ("intranet.corp.local:80", "intranet"),
    ("[fd00::5]:9443", "v6"),
    ("[FD00:0:0::5]:9443", "v6"),
    ("ERP", ("unknown_target", 403)),
    ("billing", ("unknown_target", 403)),
    ("erp.corp.local:8444", ("target_not_allowed", 403)),
    ("other.corp.local:8443", ("target_not_allowed", 403)),
    ("intranet.corp.local:443", ("target_not_allowed", 403)),
    ("10.1.2.3:8443", ("target_not_allowed", 403)),
    ("[fd00::6]:9443", ("target_not_allowed", 403)),
    # An IPv6 literal on a port where only a target named by a host name listens: an address
    # is never taken to be that name.
    ("[fd00::6]:8443", ("target_not_allowed", 403)),
    ("[fd00::5]", ("missing_port", 400)),
    ("erp.corp.local:65535", ("target_not_allowed", 403)),
    # RFC 1035 section 2.3.4: a name of up to 253 characters is a host name; longer is not.
    (".".join(["a" * 63] * 4)[:253] + ":8443", ("target_not_allowed", 403)),
    (".".join(["a" * 63] * 4)[:252] + "aa:8443", ("invalid_host", 400)),
    ("erp.corp.local.:8443", ("non_canonical_host", 400)),
    ("erp.corp.local", ("missing_port", 400)),
    ("erp.corp.local:", ("invalid_port", 400)),
    ("erp.corp.local:08443", ("invalid_port", 400)),
    ("erp.corp.local:+8443", ("invalid_port", 400)),
    ("erp.corp.local: 8443", ("invalid_port", 400)),
    ("erp.corp.local:0", ("invalid_port", 400)),
    ("erp.corp.local:65536", ("invalid_port", 400)),
    ("erp.corp.local:-1", ("invalid_port", 400)),
    ("erp.corp.local:8443:1", ("invalid_host", 400)),
    ("user@erp.corp.local:8443", ("userinfo", 400)),
    ("erp.corp.local@evil.example:8443", ("userinfo", 400)),
    ("erp.corp.local\\@evil:8443", ("userinfo", 400)),
    ("erp%2ecorp.local:8443", ("percent_encoded_host", 400)),
    ("[fe80::1%25eth0]:8443", ("ipv6_zone_id", 400)),
    ("[fe80::1]x:8443", ("invalid_host", 400)),
    ("[not-v6]:8443", ("invalid_host", 400)),
    ("fd00::5:9443", ("invalid_host", 400)),
    ("erp_corp.local:8443", ("invalid_host", 400)),
    ("erp..corp.local:8443", ("invalid_host", 400)),
    ("érp.corp.local:8443", ("invalid_target", 400)),
    ("erp.corp.local:8443\n", ("invalid_target", 400)),
    ("a" * 300 + ":8443", ("invalid_target", 400)),
    # Up to 262 characters the target is read as host:port, and a host that long is no name.
    ("a" * 257 + ":8443", ("invalid_host", 400)),
    ("dc1.corp.local:636", ("stream_only_target", 403)),
    ("ldap", ("stream_only_target", 403)),
]


@pytest.mark.parametrize(("spelled", "expected"), TARGET_CASES)
def test_target_selection(spelled: str, expected: str | tuple[str, int]) -> None:
    path = "/status" if expected == "v6" else "/api/orders"
    if isinstance(expected, str):
        assert canon(path, target=spelled).target == expected
    else:
        assert rejection(path, target=spelled) == expected


def test_a_request_is_http_unless_the_caller_says_stream() -> None:
    request = canonicalise(
        CONFIG, method="POST", target="erp", request_target="/api/orders", headers=[]
    )
    assert (request.method, request.websocket) == ("POST", False)


def test_a_tcp_target_is_selected_for_a_stream() -> None:
    assert canon("/", target="dc1.corp.local:636", websocket=True).target == "ldap"


# --- request-target forms -----------------------------------------------------------------------

FORM_CASES = [
    ("http://evil.example/api/x", "absolute_form"),
    ("https://erp.corp.local:8443/api/x", "absolute_form"),
    ("file:///etc/passwd", "absolute_form"),
    ("gopher://erp.corp.local:70/x", "absolute_form"),
    ("ws://erp.corp.local/api/x", "absolute_form"),
    ("erp.corp.local:22", "authority_form"),
    ("*", "asterisk_form"),
    ("", "invalid_request_target"),
    ("api/orders", "invalid_request_target"),
    ("//evil.example/api/x", "empty_segment"),
    ("/api/orders#frag", "fragment"),
    ("/api/orders?x#/../../admin", "fragment"),
]


@pytest.mark.parametrize(("request_target", "code"), FORM_CASES)
def test_only_origin_form_is_relayed(request_target: str, code: str) -> None:
    assert rejection(request_target) == (code, 400)


def test_uri_length_limit_counts_path_and_query() -> None:
    config = make_config(max_path_bytes=64)
    exact = "/api/" + "a" * 59
    assert len(exact) == 64

    def run(request_target: str) -> CanonicalRequest:
        return canonicalise(
            config, method="GET", target="erp", request_target=request_target, headers=[]
        )

    assert run(exact).path == exact
    # The bound is in bytes: 33 two-byte characters are 66 bytes, though only 34 characters.
    for too_long in (exact + "b", "/api/x?" + "q" * 60, "/" + "\u00e9" * 33):
        with pytest.raises(RequestRejected) as caught:
            run(too_long)
        assert (caught.value.code, caught.value.status) == ("uri_too_long", 414)


# --- path rules ---------------------------------------------------------------------------------

# (input path, canonical path) for accepted inputs.
ACCEPTED = [
    ("/", "/"),
    ("/api/orders", "/api/orders"),
    ("/api/orders/", "/api/orders/"),
    ("/api/%41%62%63", "/api/Abc"),
    ("/api/%7e%2D%5f", "/api/~-_"),
    ("/api/a%3ab", "/api/a%3Ab"),
    ("/api/a%20b", "/api/a%20b"),
    ("/api/a.%20b", "/api/a.%20b"),
    ("/api/%2C%3D%26", "/api/%2C%3D%26"),
    ("/api/%c3%a9t%C3%A9", "/api/%C3%A9t%C3%A9"),
    ("/api/%f0%9f%98%80", "/api/%F0%9F%98%80"),
    ("/api/a:b@c!$&'()*+,=", "/api/a:b@c!$&'()*+,="),
    ("/api/.well-known", "/api/.well-known"),
    ("/api/a..b", "/api/a..b"),
    ("/api/*", "/api/*"),
]


@pytest.mark.parametrize(("raw", "canonical"), ACCEPTED)
def test_accepted_paths_and_their_canonical_form(raw: str, canonical: str) -> None:
    request = canon(raw)
    assert request.path == canonical
    assert canon(request.path).path == canonical  # idempotent
    expected_segments = tuple(canonical[1:].rstrip("/").split("/")) if canonical != "/" else ()
    assert request.segments == expected_segments
    assert request.trailing_slash is (canonical != "/" and canonical.endswith("/"))


REJECTED = [
    ("/api/../admin", "dot_segment"),
    ("/api/./orders", "dot_segment"),
    ("/..", "dot_segment"),
    ("/api/%2e%2e/admin", "encoded_dot_segment"),
    ("/api/%2e", "encoded_dot_segment"),
    ("/api/.%2e/x", "encoded_dot_segment"),
    ("/api/%2E%2e/x", "encoded_dot_segment"),
    ("/api/file%2ejson", "encoded_dot"),
    ("/api%2Fadmin", "encoded_slash"),
    ("/api/%2fadmin", "encoded_slash"),
    ("/api/..%2fadmin", "encoded_slash"),
    ("/api\\..\\admin", "backslash"),
    ("/api/..%5cadmin", "backslash"),
    ("/api/%5C", "backslash"),
    ("/api/%C0%AE%C0%AE/admin", "invalid_utf8"),
    ("/api/%C0%AFadmin", "invalid_utf8"),
    ("/api/%FF", "invalid_utf8"),
    ("/api/%80", "invalid_utf8"),  # the lowest non-ASCII octet alone is no UTF-8
    ("/api/%ED%A0%80", "invalid_utf8"),
    ("/api/%F4%90%80%80", "invalid_utf8"),
    ("/api/%C3", "invalid_utf8"),
    ("/api/%C3%41", "invalid_utf8"),
    ("/api/orders%00.json", "nul_byte"),
    ("/api/%00", "nul_byte"),
    ("/api/\x00", "nul_byte"),
    ("//api/orders", "empty_segment"),
    ("/api//orders", "empty_segment"),
    ("/api/orders//", "empty_segment"),
    ("//", "empty_segment"),
    ("/api/\t", "control_character"),
    ("/api/a\rb", "control_character"),
    ("/api/a\nb", "control_character"),
    ("/api/%0a", "control_character"),
    ("/api/%0D", "control_character"),
    ("/api/%7f", "control_character"),
    ("/api/%C2%85", "control_character"),
    ("/api/%E2%80%AE", "control_character"),
    ("/api/%E2%80%A8", "control_character"),
    ("/api/%EF%BC%8F", "unicode_confusable"),
    ("/api/%EF%BC%8E%EF%BC%8E", "unicode_confusable"),
    ("/api/%EF%BC%BC", "unicode_confusable"),
    ("/api/%E2%80%A4", "unicode_confusable"),
    ("/api/orders;jsessionid=1", "matrix_parameter"),
    ("/api/x;/../admin", "matrix_parameter"),
    ("/api/%252e%252e/admin", "double_encoding"),
    ("/api/%252F", "double_encoding"),
    ("/api/%25%32%65", "double_encoding"),
    # One rule for '%25': never relayed, whatever follows (docs/request-canonicalisation.md).
    ("/api/100%25", "double_encoding"),
    ("/api/%25zz", "double_encoding"),
    ("/api/%25/2F", "double_encoding"),
    ("/api/a%25", "double_encoding"),
    # Encoded delimiters servers act on once decoded.
    ("/api/admin%3bx", "matrix_parameter"),
    ("/api/admin%3B.json", "matrix_parameter"),
    ("/api/admin%3fx", "encoded_delimiter"),
    ("/api/admin%23x", "encoded_delimiter"),
    # Dot segments padded with white space, or longer runs of dots (Windows trims them).
    ("/api/..%20/admin", "padded_dot_segment"),
    ("/api/.%20", "padded_dot_segment"),
    ("/api/%20..", "padded_dot_segment"),
    ("/api/..%20%20", "padded_dot_segment"),
    ("/api/..%C2%A0", "padded_dot_segment"),
    ("/api/..%E3%80%80", "padded_dot_segment"),
    ("/api/...", "padded_dot_segment"),
    ("/api/....", "padded_dot_segment"),
    ("/api/%20/x", "empty_segment"),
    ("/api/%C2%A0%20", "empty_segment"),
    # Windows "best fit" and look-alikes NFKC leaves alone.
    ("/api/%E2%88%95admin", "unicode_confusable"),  # U+2215 division slash
    ("/api/%E2%88%96admin", "unicode_confusable"),  # U+2216 set minus
    ("/api/%E2%A7%B5admin", "unicode_confusable"),  # U+29F5 reverse solidus operator
    ("/api/%E2%81%84admin", "unicode_confusable"),  # U+2044 fraction slash
    ("/api/%E2%A7%B8admin", "unicode_confusable"),  # U+29F8 big solidus
    ("/api/%C2%A5admin", "unicode_confusable"),  # U+00A5 yen sign: 0x5C in code page 932
    ("/api/%E2%82%A9admin", "unicode_confusable"),  # U+20A9 won sign: 0x5C in code page 949
    ("/api/%E3%80%82%E3%80%82", "unicode_confusable"),  # U+3002 ideographic full stop
    ("/api/%D9%AA", "unicode_confusable"),  # U+066A Arabic percent sign
    ("/api/%2", "invalid_percent_encoding"),
    ("/api/%zz", "invalid_percent_encoding"),
    ("/api/%", "invalid_percent_encoding"),
    ("/api/%C3%A", "invalid_percent_encoding"),
    ("/api/é", "non_ascii"),
    ("/api/\ud800", "non_ascii"),
    ("/api/a b", "invalid_character"),
    ("/api/<x>", "invalid_character"),
    ('/api/"x"', "invalid_character"),
    ("/api/{x}", "invalid_character"),
    ("/api/a|b", "invalid_character"),
    ("/api/[x]", "invalid_character"),
]


@pytest.mark.parametrize(("raw", "code"), REJECTED)
def test_rejected_paths(raw: str, code: str) -> None:
    assert rejection(raw) == (code, 400)


@pytest.mark.parametrize("raw", [raw for raw, _ in ACCEPTED])
def test_canonical_segments_are_pattern_literals(raw: str) -> None:
    """The canonical form is the one patterns are written in: each segment parses as a literal.

    '*' is the exception: it is ordinary data in a request path but a wildcard in a pattern, so a
    request segment holding it can only ever be matched by a wildcard.
    """
    for segment in canon(raw).segments:
        if "*" in segment:
            continue
        assert PathPattern.parse("/" + segment).segments == (segment,)


def test_a_literal_star_in_a_request_is_only_matched_by_wildcards() -> None:
    request = canon("/api/*")
    assert PathPattern.parse("/api/*").matches(request.segments, request.trailing_slash)
    assert not PathPattern.parse("/api/orders").matches(request.segments, request.trailing_slash)
    with pytest.raises(PatternError):
        PathPattern.parse("/api/a*")


# --- query --------------------------------------------------------------------------------------

QUERY_ACCEPTED = [
    ("/api/orders", None),
    ("/api/orders?", None),  # an empty query is dropped, as the forwarder sends it
    ("/api/orders?x=/../admin&y=%2F", "x=/../admin&y=%2F"),
    ("/api/orders?a=%2e%2E&b=%zz&c=%5c", "a=%2e%2E&b=%zz&c=%5c"),
    ("/api/orders?q={a|b}^`", "q={a|b}^`"),
    ("/api/orders?x?y", "x?y"),
]


@pytest.mark.parametrize(("raw", "query"), QUERY_ACCEPTED)
def test_query_is_kept_byte_for_byte(raw: str, query: str | None) -> None:
    request = canon(raw)
    assert request.query == query
    assert request.request_target == raw.removesuffix("?")


@pytest.mark.parametrize(
    "raw",
    ["/api/o?a b", "/api/o?a\tb", "/api/o?a\r\nX: 1", "/api/o?a\x00", "/api/o?é", "/api/o?\x7f"],
)
def test_query_without_whitespace_controls_or_non_ascii(raw: str) -> None:
    assert rejection(raw) == ("invalid_query", 400)


# --- order of checks and the request object ----------------------------------------------------


def test_method_is_judged_before_target_and_path() -> None:
    assert rejection("erp.corp.local:22", method="CONNECT", target="nowhere:1") == (
        "method_not_allowed",
        405,
    )
    assert rejection("/api/../x", target="erp.corp.local:1") == ("target_not_allowed", 403)
    assert rejection("/api/../x", headers=[("X A", "1")]) == ("dot_segment", 400)


def test_canonical_request_carries_validated_headers() -> None:
    request = canon("/api/orders?x=1", headers=[("Accept", " application/json "), ("X-Trace", "t")])
    assert request == CanonicalRequest(
        target="erp",
        method="GET",
        path="/api/orders",
        segments=("api", "orders"),
        trailing_slash=False,
        query="x=1",
        headers=(("accept", "application/json"), ("x-trace", "t")),
        websocket=False,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.path = "/admin"  # type: ignore[misc]


def test_rejection_messages_never_echo_the_input() -> None:
    secret = "Bearer s3cr3t-token"
    for kwargs in (
        {"request_target": f"/api/{secret.replace(' ', '%20')}\n"},
        {"headers": [("Authorization", secret + "\r\nX-Injected: 1")]},
        {"target": f"{secret}@erp.corp.local:8443"},
    ):
        with pytest.raises(RequestRejected) as caught:
            canon(**kwargs)
        assert "s3cr3t" not in str(caught.value)
        assert "s3cr3t" not in repr(caught.value)


# --- the policy input document (shared contract) -----------------------------------------------


def test_build_input_follows_the_contract() -> None:
    request = canon(
        "/api/orders?x=1",
        headers=[("Authorization", "Bearer t"), ("Accept", "a"), ("X-Trace", "b")],
    )
    assert build_input(request, signed=True, keyid="empowerid-2026") == {
        "target": "erp",
        "method": "GET",
        "path": "/api/orders",
        "path_segments": ["api", "orders"],
        "trailing_slash": False,
        "query": "x=1",
        "header_names": ["accept", "authorization", "x-trace"],
        "websocket": False,
        "signature": {"verified": True, "keyid": "empowerid-2026"},
    }


def test_build_input_never_carries_header_values_and_keeps_absent_query_null() -> None:
    request = canon("/api/", headers=[("Authorization", "Bearer secret-value")])
    document = build_input(request, signed=False, keyid=None)
    assert "secret-value" not in repr(document)
    assert document["query"] is None
    assert document["trailing_slash"] is True
    assert document["path_segments"] == ["api"]
    assert document["signature"] == {"verified": False, "keyid": None}
