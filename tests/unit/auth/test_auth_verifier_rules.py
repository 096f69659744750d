"""Signature verification, rule by rule: each RFC 9421 / 9530 / 8941 rule the verifier applies,
at its boundary, with the reason and detail a refusal reports.

The fast paths are checked on fixed examples here (the fuzzed differential checks live in
test_auth_fast_path.py): for the shape the SaaS sends they must answer, and answer what the
package answers; for every other shape they must step aside.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import http_sf
import pytest
from pydantic import SecretStr

from gateway.auth import (
    Reason,
    SignatureError,
    SignatureVerifier,
    VerifiedRequest,
    VerifierSettings,
)
from gateway.auth.keys import shared_key
from gateway.auth.redisstore import RedisReplayStore
from gateway.auth.sqlitestore import SqliteReplayStore
from gateway.auth.verifier import (
    REQUIRED_COMPONENTS,
    fast_components,
    fast_signature,
    fast_signature_input,
    field_lines,
)
from gateway.config.secrets import SecretRef, SecretSource
from gateway.devkit.signing import generate_key
from tests.redisserver import RedisServer
from tests.unit.auth.harness import (
    AUTHORITY,
    GATEWAY_ID,
    HC_PATH,
    PATH,
    T0,
    Harness,
    handmade_signature,
    package_components,
    request_components,
)
from tests.unit.auth.test_auth_verifier import replace_header, without
from tests.unit.auth.test_replay_stores import settings


def reason_of(harness: Harness, headers: list[tuple[str, str]], **kwargs: Any) -> Reason:
    with pytest.raises(SignatureError) as caught:
        harness.verify(headers, **kwargs)
    return caught.value.reason


def _reference(value: str) -> Any:
    return http_sf.parse(value.encode("ascii"), tltype="dictionary")


@pytest.mark.parametrize(
    "value",
    [
        'eid=("@method" "@path");created=1750000000;keyid="ed-1";nonce="n";tag="gateway-request"',
        'sig=("x-gateway-id" "content-digest");expires=-5;alg="ed25519"',
        "e_i.d*=()",
        'a-1=("@query");nonce="sp ace!#$%&()*+,-./:;<=>?@[]^_`{|}~"',
        "x=();created=999999999999999",
    ],
)
def test_the_signature_input_reader_answers_for_canonical_members(value: str) -> None:
    fast = fast_signature_input(value)
    assert fast is not None
    assert fast == _reference(value)


@pytest.mark.parametrize(
    "value",
    [
        'eid=("@method");created=1;created=2',  # a repeated parameter: the parser decides
        'eid=("@method") ',
        'eid=( "@method")',
        'eid=("@method";req)',
        "eid=();created=1000000000000000",  # 16 digits: beyond the fast Integer
        'eid=();nonce="a\\"b"',
        "Eid=()",
        'eid=(), sig=("@path")',
    ],
)
def test_the_signature_input_reader_steps_aside_otherwise(value: str) -> None:
    assert fast_signature_input(value) is None


@pytest.mark.parametrize(
    "value", ["eid=:AAAA:", "sig=:3q2+7w==:", "e*=:YWJj:", "x=::", "eid=:/+/+:"]
)
def test_the_signature_reader_answers_for_canonical_members(value: str) -> None:
    fast = fast_signature(value)
    assert fast is not None
    assert fast == _reference(value)


@pytest.mark.parametrize(
    "value", ["eid=:AAA:", "eid=:AAAA=:", "eid=:AA=A:", "eid=:AAAA:;p=1", "eid=:AAAA:, b=:AAAA:"]
)
def test_the_signature_reader_steps_aside_otherwise(value: str) -> None:
    assert fast_signature(value) is None


NAMES = ["@method", "@authority", "@path", "@query", "x-gateway-id", "content-type"]
HEADERS = [("X-Gateway-Id", f" \t{GATEWAY_ID}\t "), ("Content-Type", "a/b")]


@pytest.mark.parametrize(
    ("authority", "path", "query"),
    [
        (AUTHORITY, PATH, "expand=1"),
        ("Contoso.Example:443", PATH, ""),
        ("h:0443", PATH + "/a%2Fb:@!$&'()*+,;=", "a=%41&b=/?:@"),
        ("H:8443", "/", "x"),
        ("h:", PATH, ""),
    ],
)
def test_component_values_read_directly_are_the_resolvers(
    authority: str, path: str, query: str
) -> None:
    fast = fast_components(
        "POST", authority, path, query, field_lines(HEADERS)[0], [(n, {}) for n in NAMES]
    )
    assert fast is not None
    assert fast == package_components("POST", authority, path, query, HEADERS, NAMES)


@pytest.mark.parametrize(
    ("method", "authority", "path", "query", "components"),
    [
        ("get", AUTHORITY, PATH, "", [("@method", {})]),
        ("GET", "[::1]", PATH, "", [("@method", {})]),
        ("GET", "a b", PATH, "", [("@method", {})]),
        ("GET", AUTHORITY, "relative", "", [("@method", {})]),
        ("GET", AUTHORITY, PATH + " x", "", [("@method", {})]),
        ("GET", AUTHORITY, PATH, "a#b", [("@method", {})]),
        ("GET", AUTHORITY, PATH, "", [("@scheme", {})]),
        ("GET", AUTHORITY, PATH, "", [("@query-param", {"name": "a"})]),
        ("GET", AUTHORITY, PATH, "", [("content-type", {"sf": True})]),
        ("GET", AUTHORITY, PATH, "", [("x-absent", {})]),
        ("GET", AUTHORITY, PATH, "", [("x-folded", {})]),
    ],
)
def test_component_values_go_to_the_resolver_for_any_other_shape(
    method: str, authority: str, path: str, query: str, components: list[tuple[str, Any]]
) -> None:
    headers = [("X-Folded", "a\r\n b")]
    assert (
        fast_components(method, authority, path, query, field_lines(headers)[0], components) is None
    )


def test_the_first_field_line_is_read() -> None:
    # The verifier refuses covered fields on several lines before reading; the reader takes the
    # first line of a name whatever its case, as the resolver's joined value starts with it.
    headers = [("X-Trace", "one"), ("x-trace", "two")]
    fast = fast_components("GET", AUTHORITY, PATH, "", field_lines(headers)[0], [("x-trace", {})])
    assert fast == {"x-trace": "one"}


# -- the acceptance window and the replay memory ------------------------------------------------
# The replay memory keeps a nonce until the window end the verifier hands it, and forgets it at
# that instant (every store treats the end as exclusive). The verifier must therefore refuse from
# that same instant on, or a request replayed exactly at the end of its window is served twice.


WINDOWS = [None, 10, 100]  # no expires; expires before created + max_age; expires after it


def _windowed(harness: Harness, expires_in: int | None) -> tuple[list[tuple[str, str]], float]:
    """Headers signed now, and the end of their window: the earlier of created + max_age (60)
    and expires, plus max_skew (30), the harness's settings."""
    created = int(harness.saas_clock.now)
    signer = harness.signer(harness.ed_key, "ed-1", expires_in=expires_in)
    headers = harness.sign(signer, created=created)
    return headers, min(created + 60, created + (expires_in or 60)) + 30


@pytest.mark.parametrize("expires_in", WINDOWS)
def test_a_replay_at_the_very_end_of_the_window_is_refused(
    harness: Harness, expires_in: int | None
) -> None:
    headers, end = _windowed(harness, expires_in)
    assert isinstance(harness.verify(headers), VerifiedRequest)
    harness.saas_clock.now = end
    assert reason_of(harness, headers) is Reason.EXPIRED


@pytest.mark.parametrize("expires_in", WINDOWS)
def test_the_last_instant_before_the_window_end_is_accepted_once(
    harness: Harness, expires_in: int | None
) -> None:
    headers, end = _windowed(harness, expires_in)
    harness.saas_clock.now = end - 0.001
    assert isinstance(harness.verify(headers), VerifiedRequest)
    assert reason_of(harness, headers) is Reason.REPLAY


@pytest.mark.parametrize(("ahead", "accepted"), [(30, True), (30.001, False)])
def test_created_up_to_max_skew_ahead_is_accepted(
    harness: Harness, ahead: float, accepted: bool
) -> None:
    headers = harness.sign()
    harness.saas_clock.now -= ahead  # the gateway's clock is behind the signer's by `ahead`
    if accepted:
        assert isinstance(harness.verify(headers), VerifiedRequest)
    else:
        assert reason_of(harness, headers) is Reason.CLOCK_SKEW


def test_expires_one_second_after_created_is_accepted(harness: Harness) -> None:
    now = int(harness.saas_clock.now)
    assert isinstance(harness.verify(harness.sign(created=now, expires=now + 1)), VerifiedRequest)


@pytest.mark.parametrize("created", [0, 2**40 - 1])
def test_timestamps_at_the_edges_of_the_range_are_judged_by_time(
    harness: Harness, created: int
) -> None:
    text = f';created={created};keyid="ed-1";nonce="n";tag="gateway-request"'
    expected = Reason.EXPIRED if created == 0 else Reason.CLOCK_SKEW
    assert reason_of(harness, _handmade(harness, text)) is expected


def _handmade(
    harness: Harness,
    params: str,
    *,
    extra: list[tuple[str, str]] = (),  # type: ignore[assignment]
    headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
    query: str = "?expand=1",
    path: str = PATH,
) -> list[tuple[str, str]]:
    covered = [*request_components(path, query), *extra]
    signed = handmade_signature(harness.ed_key, covered, params)
    return [("x-gateway-id", GATEWAY_ID), *headers, *signed]


def test_what_an_accepted_signature_established(harness: Harness) -> None:
    now = int(harness.saas_clock.now)
    headers = harness.sign(body=b"{}", created=now - 5, expires=now + 20, nonce="n-1")
    result = harness.verify(headers, body=b"{}")
    assert result == VerifiedRequest(
        keyid="ed-1",
        alg="ed25519",
        label="eid",
        created=now - 5,
        expires=now + 20,
        nonce="n-1",
        covered=(
            '"@method"',
            '"@authority"',
            '"@path"',
            '"@query"',
            '"x-gateway-id"',
            '"content-digest"',
        ),
        body_verified=True,
    )


def test_a_signature_without_alg_or_expires_is_accepted(harness: Harness) -> None:
    now = int(harness.saas_clock.now)
    result = harness.verify(
        _handmade(harness, f';created={now};keyid="ed-1";nonce="n";tag="gateway-request"')
    )
    assert isinstance(result, VerifiedRequest)
    assert (result.expires, result.alg, result.body_verified) == (None, "ed25519", False)


def test_an_empty_body_still_needs_a_covered_digest(harness: Harness) -> None:
    assert reason_of(harness, harness.sign(), body=b"", method="POST") is Reason.MISSING_COMPONENT


def test_a_covered_digest_without_a_body_is_checked_against_no_bytes(harness: Harness) -> None:
    now = int(harness.saas_clock.now)
    params = f';created={now};keyid="ed-1";nonce="n";tag="gateway-request"'
    empty = "sha-256=:" + base64.b64encode(hashlib.sha256(b"").digest()).decode() + ":"
    other = "sha-256=:" + base64.b64encode(hashlib.sha256(b"x").digest()).decode() + ":"
    for digest, accepted in ((empty, True), (other, False)):
        headers = _handmade(
            harness,
            params.replace('"n"', f'"n-{accepted}"'),
            extra=[("content-digest", digest)],
            headers=[("Content-Digest", digest)],
        )
        if accepted:
            result = harness.verify(headers)
            assert isinstance(result, VerifiedRequest)
            assert result.body_verified
        else:
            assert reason_of(harness, headers) is Reason.DIGEST_MISMATCH


def test_a_digest_covered_only_with_a_parameter_does_not_cover_the_body(harness: Harness) -> None:
    # RFC 9421 section 2.1.1: "content-digest";sf is the field re-serialised, still the digest,
    # but the requirement is the plain component, whose value the body is checked against.
    headers = harness.sign(body=b"{}")
    sig_input = dict(headers)["Signature-Input"].replace('"content-digest"', '"content-digest";sf')
    tampered = replace_header(headers, "signature-input", sig_input)
    with pytest.raises(SignatureError) as caught:
        harness.verify(tampered, body=b"{}")
    assert caught.value.reason is Reason.MISSING_COMPONENT
    assert caught.value.detail == "signature does not cover content-digest"


@pytest.mark.parametrize("path", [f"/{HC_PATH}", f"/$hc/{HC_PATH}", f"/{HC_PATH}/"])
def test_the_hybrid_connection_path_itself_is_inside_it(harness: Harness, path: str) -> None:
    assert isinstance(harness.verify(harness.sign(path=path), path=path), VerifiedRequest)


@pytest.mark.parametrize("path", ["/", f"/{HC_PATH}x", f"/$hc/{HC_PATH}x", f"/x/{HC_PATH}", "/$hc"])
def test_paths_beside_the_hybrid_connection_are_outside_it(harness: Harness, path: str) -> None:
    assert reason_of(harness, harness.sign(path=path), path=path) is Reason.WRONG_GATEWAY


def test_the_gateway_id_line_is_compared_without_surrounding_blanks(harness: Harness) -> None:
    headers = replace_header(harness.sign(), "x-gateway-id", f" \t{GATEWAY_ID}\t ")
    assert isinstance(harness.verify(headers), VerifiedRequest)
    for other in (f"x{GATEWAY_ID}", f"X{GATEWAY_ID}X", f"{GATEWAY_ID}\x0b", f"{GATEWAY_ID}\u00a0"):
        changed = replace_header(harness.sign(), "x-gateway-id", other)
        assert reason_of(harness, changed) is Reason.WRONG_GATEWAY, other


@pytest.mark.parametrize("query", ["", "a=1"])
def test_the_target_uri_has_a_question_mark_only_with_a_query(harness: Harness, query: str) -> None:
    # @target-uri is resolved by the package (no fast path): the URL it is given must be the
    # request's own, "?" only when a query is present (RFC 9421 section 2.2.2).
    components = [*REQUIRED_COMPONENTS, "@target-uri"]
    result = harness.verify(harness.sign(components=components, query=query), query=query)
    assert isinstance(result, VerifiedRequest)
    assert '"@target-uri"' in result.covered


def test_the_signature_fields_may_carry_surrounding_blanks(harness: Harness) -> None:
    headers = [(name, f" \t{value}\t ") if name.startswith("Sig") else (name, value)
               for name, value in harness.sign()]  # fmt: skip
    assert isinstance(harness.verify(headers), VerifiedRequest)


def test_signature_field_names_are_matched_case_insensitively(harness: Harness) -> None:
    headers = [(name.upper(), value) for name, value in harness.sign()]
    assert isinstance(harness.verify(headers), VerifiedRequest)


def test_limits_are_inclusive(harness: Harness) -> None:
    headers = harness.sign()
    # 256 header fields in all, the signer's three included.
    filled = [*headers, *((f"x-f{i}", "v") for i in range(256 - len(headers)))]
    assert isinstance(harness.verify(filled), VerifiedRequest)
    headers = harness.sign()
    size = sum(len(n) + len(v) for n, v in headers)
    filled = [*headers, ("x-big", "v" * (65536 - size - len("x-big")))]
    assert isinstance(harness.verify(filled), VerifiedRequest)
    # A Signature-Input of exactly 4096 characters, padded by untagged members (four in all,
    # the most allowed), and a 128-character nonce.
    headers = harness.sign(nonce="n" * 128)
    value = dict(headers)["Signature-Input"]
    signature = dict(headers)["Signature"]
    others = ', b=(), c=(), e=();tag="'
    pad = 4096 - len(value) - len(others) - len('"')
    long_input = f'{value}{others}{"p" * pad}"'
    assert len(long_input) == 4096
    long_signature = signature + ", b=:AAAA:, c=:AAAA:, e=:AAAA:"
    headers = replace_header(headers, "signature-input", long_input)
    headers = replace_header(headers, "signature", long_signature)
    assert isinstance(harness.verify(headers), VerifiedRequest)


def test_the_size_limit_counts_every_field_line(harness: Harness) -> None:
    # The big line first and the signature's small ones last: the limit is on all lines
    # together, whichever of them comes last.
    for extra, accepted in ((0, True), (1, False)):
        headers = harness.sign()
        size = sum(len(n) + len(v) for n, v in headers)
        filled = [("x-big", "v" * (65536 - size - len("x-big") + extra)), *headers]
        if accepted:
            assert isinstance(harness.verify(filled), VerifiedRequest)
        else:
            assert reason_of(harness, filled) is Reason.HEADERS_TOO_LARGE


def test_sixteen_components_and_a_256_byte_signature_pass_the_size_checks(harness: Harness) -> None:
    headers = harness.sign()
    extra = " ".join(f'"x-f{i}"' for i in range(11))
    sig_input = dict(headers)["Signature-Input"].replace(
        '"x-gateway-id"', f'"x-gateway-id" {extra}'
    )
    tampered = replace_header(headers, "signature-input", sig_input)
    # Sixteen covered components are allowed: the refusal is about the absent fields.
    assert reason_of(harness, tampered) is Reason.MISSING_COMPONENT
    big = "eid=:" + base64.b64encode(bytes(256)).decode() + ":"
    assert reason_of(harness, replace_header(headers, "signature", big)) is Reason.BAD_SIGNATURE


def test_a_nonce_of_128_characters_is_accepted(harness: Harness) -> None:
    assert isinstance(harness.verify(harness.sign(nonce="n" * 128)), VerifiedRequest)


def test_the_same_field_under_different_parameters_is_not_covered_twice(harness: Harness) -> None:
    # RFC 9421 section 2: an id may appear once per distinct set of parameters.
    components = (
        "@method", "@authority", "@path", "@query", "x-gateway-id",
        '"@query-param";name="expand"', '"@query-param";name="page"',
    )  # fmt: skip
    headers = harness.sign(components=components, query="expand=1&page=2")
    result = harness.verify(headers, query="expand=1&page=2")
    assert isinstance(result, VerifiedRequest)
    assert '"@query-param";name="page"' in result.covered


# -- the refusal the SaaS reads ------------------------------------------------------------------
# The pipeline answers a failed verification with the reason's status and
# {"error": reason, "detail": detail}; the key id goes to the log and to the per-key cool-down of
# repeated failures (gateway.auth.limiter). Each rule is pinned to all four, so that a refusal never
# loses its explanation, changes wording unnoticed, or is counted against the wrong key.

Built = tuple[list[tuple[str, str]], dict[str, Any]]


def _input_edit(edit: Any, **sign: Any) -> Any:
    def build(harness: Harness) -> Built:
        headers = harness.sign(**sign)
        value = edit(dict(headers)["Signature-Input"])
        return replace_header(headers, "signature-input", value), {}

    return build


def _signature_edit(value: str) -> Any:
    def build(harness: Harness) -> Built:
        return replace_header(harness.sign(), "signature", value), {}

    return build


def _params(params: str, *, components: str = "", key: str = "ed") -> Any:
    """A signature made by hand with exactly these parameters (RFC 9421 section 2.3)."""

    def build(harness: Harness) -> Built:
        now = int(harness.saas_clock.now)
        covered = request_components()
        text = params.format(now=now, tag='tag="gateway-request"')
        pinned = harness.ed_key if key == "ed" else harness.ec_key
        headers = [("x-gateway-id", GATEWAY_ID), *handmade_signature(pinned, covered, text)]
        if components:
            headers = replace_header(
                headers,
                "signature-input",
                dict(headers)["Signature-Input"].replace('"x-gateway-id"', components),
            )
        return headers, {}

    return build


def _headers(edit: Any, **verify: Any) -> Any:
    def build(harness: Harness) -> Built:
        return edit(harness.sign(**verify.pop("sign", {}))), verify

    return build


def _other_tag(harness: Harness) -> Built:
    return harness.sign(harness.signer(harness.ed_key, "ed-1", tag="other")), {}


def _two_tagged(harness: Harness) -> Built:
    ours = harness.sign()
    twin = harness.sign(harness.ec)
    inputs = (
        dict(ours)["Signature-Input"] + ", " + dict(twin)["Signature-Input"].replace("eid=", "b=")
    )
    signatures = dict(ours)["Signature"] + ", " + dict(twin)["Signature"].replace("eid=", "b=")
    headers = replace_header(ours, "signature-input", inputs)
    return replace_header(headers, "signature", signatures), {}


def _impostor(harness: Harness) -> Built:
    return harness.sign(harness.signer(generate_key("ed25519"), "ed-1")), {}


def _stranger(harness: Harness) -> Built:
    return harness.sign(harness.signer(generate_key("ed25519"), "other")), {}


def _inactive(harness: Harness) -> Built:
    harness.saas_clock.now += 86400 + 1
    return harness.sign(), {}


def _other_gateway(harness: Harness) -> Built:
    signer = harness.signer(harness.ed_key, "ed-1")
    signer.gateway_id = "agent-2"
    return harness.sign(signer), {}


def _path(path: str, *, signed: str | None = None) -> Any:
    def build(harness: Harness) -> Built:
        return harness.sign(path=signed or path), {"path": path}

    return build


def _created(offset: int) -> Any:
    def build(harness: Harness) -> Built:
        return harness.sign(created=int(harness.saas_clock.now) + offset), {}

    return build


def _digest_mismatch(harness: Harness) -> Built:
    return harness.sign(body=b"{}"), {"body": b"{ }"}


def _missing_digest(harness: Harness) -> Built:
    return harness.sign(), {"body": b"{}", "method": "GET"}


def _absent_covered(harness: Harness) -> Built:
    return without(harness.sign(body=b"{}"), "content-digest"), {"body": b"{}"}


def _duplicate(harness: Harness) -> Built:
    return [*harness.sign(), ("X-Gateway-Id", GATEWAY_ID)], {}


def _replayed(harness: Harness) -> Built:
    headers = harness.sign()
    harness.verify(headers)
    return headers, {}


def _full(harness: Harness) -> Built:
    for _ in range(2):
        harness.verify(harness.sign())
    return harness.sign(), {}


def _closed(harness: Harness) -> Built:
    harness.cache.close()
    return harness.sign(), {}


def _skewed(offset: float) -> Any:
    def build(harness: Harness) -> Built:
        harness.gateway_offset = offset
        for _ in range(3):
            with pytest.raises(SignatureError):
                harness.verify(harness.sign())
        return harness.sign(), {}

    return build


TAG = 'tag="gateway-request"'
NOW = "created={now}"
MALFORMED = ("malformed_signature", 401)

REFUSALS: list[tuple[str, Any, tuple[str, int], str, str | None]] = [
    # Header sizes first (431), before anything is parsed.
    (
        "header count",
        _headers(lambda h: h + [(f"x-f{i}", "v") for i in range(256)]),
        ("headers_too_large", 431),
        "too many header fields",
        None,
    ),
    (
        "header bytes",
        _headers(lambda h: [*h, ("x-big", "v" * 65536)]),
        ("headers_too_large", 431),
        "header fields too large",
        None,
    ),
    (
        "signature-input bytes",
        _input_edit(lambda s: s.replace('nonce="', 'nonce="' + "n" * 4096)),
        ("headers_too_large", 431),
        "signature-input field too large",
        None,
    ),
    (
        "signature bytes",
        _signature_edit("eid=:" + "A" * 4096 + ":"),
        ("headers_too_large", 431),
        "signature field too large",
        None,
    ),
    # The signature fields (RFC 9421 section 4, RFC 8941 Dictionaries).
    (
        "no fields",
        _headers(lambda h: without(h, "signature")),
        ("missing_signature", 401),
        "Signature or Signature-Input is absent",
        None,
    ),
    (
        "non-ASCII",
        _input_edit(lambda s: s.replace('nonce="', 'nonce="\u00e9')),
        MALFORMED,
        "signature-input has invalid characters",
        None,
    ),
    (
        "control character",
        _signature_edit("eid=:AAAA:\x01"),
        MALFORMED,
        "signature has invalid characters",
        None,
    ),
    (
        "vertical tab at the end",
        _input_edit(lambda s: s + "\x0b"),
        MALFORMED,
        "signature-input has invalid characters",
        None,
    ),
    (
        "second line not a Dictionary",
        _headers(lambda h: [*h, ("Signature-Input", "Xb=()")]),
        MALFORMED,
        "Signature-Input is not a valid Dictionary",
        None,
    ),
    (
        "input not a Dictionary",
        _input_edit(lambda s: s + ",,"),
        MALFORMED,
        "Signature-Input is not a valid Dictionary",
        None,
    ),
    (
        "signature not a Dictionary",
        _signature_edit("eid=:AAAA:,,"),
        MALFORMED,
        "Signature is not a valid Dictionary",
        None,
    ),
    (
        "duplicate member",
        _signature_edit("eid=:AAAA:, eid=:AAAA:"),
        MALFORMED,
        "Signature is not a valid Dictionary",
        None,
    ),
    (
        "duplicate parameter",
        _input_edit(lambda s: s + ";created=1"),
        MALFORMED,
        "Signature-Input is not a valid Dictionary",
        None,
    ),
    (
        "five signatures",
        _input_edit(lambda s: s + "".join(f", s{i}=()" for i in range(4))),
        MALFORMED,
        "too many signatures",
        None,
    ),
    (
        "five signature values",
        _signature_edit("eid=:AAAA:" + "".join(f", s{i}=:AAAA:" for i in range(4))),
        MALFORMED,
        "too many signatures",
        None,
    ),
    (
        "labels differ",
        _signature_edit("other=:AAAA:"),
        MALFORMED,
        "Signature and Signature-Input labels differ",
        None,
    ),
    (
        "other tag",
        _other_tag,
        ("missing_signature", 401),
        "no signature with the expected tag",
        None,
    ),
    ("two tagged", _two_tagged, MALFORMED, "several signatures with the tag", None),
    (
        "input member an Item",
        _input_edit(lambda s: "eid=1"),
        MALFORMED,
        "Signature-Input member not a list",
        None,
    ),
    (
        "signature member a list",
        _signature_edit("eid=(:AAAA:)"),
        MALFORMED,
        "Signature member not a byte sequence",
        None,
    ),
    (
        "empty signature",
        _signature_edit("eid=::"),
        MALFORMED,
        "signature value has a bad size",
        None,
    ),
    (
        "one-byte signature",
        _signature_edit("eid=:AA==:"),
        ("bad_signature", 401),
        "signature does not verify",
        "ed-1",
    ),
    (
        # The longest a pinned key's signature can be: an 8192-bit RSA modulus (1024 bytes).
        "1025-byte signature",
        _signature_edit("eid=:" + base64.b64encode(bytes(1025)).decode() + ":"),
        MALFORMED,
        "signature value has a bad size",
        None,
    ),
    # Covered components (RFC 9421 section 2).
    (
        "17 components",
        _input_edit(lambda s: s.replace("(", "(" + "".join(f'"x-{i}" ' for i in range(12)))),
        MALFORMED,
        "too many covered components",
        None,
    ),
    (
        "covered twice",
        _input_edit(lambda s: s.replace('"@path"', '"@path" "@path"')),
        MALFORMED,
        "component covered twice",
        None,
    ),
    (
        "component not a String",
        _input_edit(lambda s: s.replace('"@path"', "path")),
        MALFORMED,
        "component id not a string",
        None,
    ),
    (
        "empty component",
        _input_edit(lambda s: s.replace('"@path"', '""')),
        MALFORMED,
        "component id not a string",
        None,
    ),
    (
        "upper-case component",
        _input_edit(lambda s: s.replace('"@path"', '"@Path"')),
        MALFORMED,
        "component id not lower-case",
        None,
    ),
    (
        "unknown derived",
        _input_edit(lambda s: s.replace('"@path"', '"@status"')),
        MALFORMED,
        "unknown derived component",
        None,
    ),
    (
        "not a field name",
        _input_edit(lambda s: s.replace('"@path"', '"x y"')),
        MALFORMED,
        "component id not a field name",
        None,
    ),
    (
        "derived parameter",
        _input_edit(lambda s: s.replace('"@path"', '"@path";name="a"')),
        MALFORMED,
        "component parameter not allowed",
        None,
    ),
    (
        "field parameter",
        _input_edit(lambda s: s.replace('"x-gateway-id"', '"x-gateway-id";req')),
        MALFORMED,
        "component parameter not allowed",
        None,
    ),
    # Signature parameters (RFC 9421 section 2.3).
    (
        "unknown parameter",
        _params(f';{NOW};keyid="ed-1";nonce="n";x=1;{TAG}'),
        MALFORMED,
        "unknown signature parameter",
        None,
    ),
    (
        "created a String",
        _params(f';created="1";keyid="ed-1";nonce="n";{TAG}'),
        MALFORMED,
        "'created' not a timestamp",
        None,
    ),
    (
        "created negative",
        _params(f';created=-1;keyid="ed-1";nonce="n";{TAG}'),
        MALFORMED,
        "'created' not a timestamp",
        None,
    ),
    (
        "expires beyond 2**40",
        _params(f';{NOW};expires={2**40};keyid="ed-1";nonce="n";{TAG}'),
        MALFORMED,
        "'expires' not a timestamp",
        None,
    ),
    (
        "expires a Boolean",
        _params(f';{NOW};expires;keyid="ed-1";nonce="n";{TAG}'),
        MALFORMED,
        "'expires' not a timestamp",
        None,
    ),
    (
        "keyid an Integer",
        _params(f';{NOW};keyid=1;nonce="n";{TAG}'),
        MALFORMED,
        "'keyid' not a string",
        None,
    ),
    (
        "empty nonce",
        _params(f';{NOW};keyid="ed-1";nonce="";{TAG}'),
        MALFORMED,
        "'nonce' not a string",
        None,
    ),
    (
        "tag a Token",
        _params(f';{NOW};keyid="ed-1";nonce="n";tag=gateway-request'),
        MALFORMED,
        "'tag' not a string",
        None,
    ),
    (
        "alg a Byte Sequence",
        _params(f';{NOW};keyid="ed-1";nonce="n";alg=:AAAA:;{TAG}'),
        MALFORMED,
        "'alg' not a string",
        None,
    ),
    (
        "129-character nonce",
        _params(f';{NOW};keyid="ed-1";nonce="{"n" * 129}";{TAG}'),
        MALFORMED,
        "nonce too long",
        None,
    ),
    (
        "no keyid",
        _params(f';{NOW};nonce="n";{TAG}'),
        ("missing_parameter", 401),
        "signature lacks 'keyid'",
        None,
    ),
    (
        "no created",
        _params(f';keyid="ed-1";nonce="n";{TAG}'),
        ("missing_parameter", 401),
        "signature lacks 'created'",
        None,
    ),
    (
        "no nonce",
        _params(f';{NOW};keyid="ed-1";{TAG}'),
        ("missing_parameter", 401),
        "signature lacks 'nonce'",
        None,
    ),
    (
        "two components missing",
        _input_edit(lambda s: s.replace('"@path" "@query" ', "")),
        ("missing_component", 401),
        "signature does not cover @path, @query",
        None,
    ),
    (
        "digest not covered",
        _missing_digest,
        ("missing_component", 401),
        "signature does not cover content-digest",
        None,
    ),
    # The key (its keyid is in the pinned set from here on, so it is reported).
    ("unknown key", _stranger, ("unknown_key", 401), "keyid not in the pinned key set", None),
    (
        "inactive key",
        _inactive,
        ("key_not_active", 401),
        "key outside its validity window",
        "ed-1",
    ),
    (
        "alg mismatch",
        _params(f';{NOW};keyid="ed-1";nonce="n";alg="ecdsa-p256-sha256";{TAG}'),
        ("alg_mismatch", 401),
        "alg does not match the key",
        "ed-1",
    ),
    # The request (RFC 9421 section 2.2 derived components, section 2.1 fields).
    (
        "other Hybrid Connection",
        _path("/hc-agent-2/api"),
        ("wrong_gateway", 401),
        "path is outside this Hybrid Connection",
        "ed-1",
    ),
    (
        "target not signable",
        _path(PATH + "/a b", signed=PATH),
        ("malformed_request", 401),
        "request target cannot be signed",
        "ed-1",
    ),
    (
        "covered header absent",
        _absent_covered,
        ("missing_component", 401),
        "a covered header is absent",
        "ed-1",
    ),
    (
        "covered header twice",
        _duplicate,
        ("duplicate_covered_field", 401),
        "a covered header appears on more than one field line",
        "ed-1",
    ),
    (
        "other gateway",
        _other_gateway,
        ("wrong_gateway", 401),
        "request is addressed to another gateway",
        "ed-1",
    ),
    # Time (RFC 9421 section 3.2.1 steps 6-7) and cryptography.
    (
        "expires not after created",
        _params(f';{NOW};expires={{now}};keyid="ed-1";nonce="n";{TAG}'),
        MALFORMED,
        "'expires' is not after 'created'",
        None,
    ),
    (
        "future",
        _created(31),
        ("clock_skew", 401),
        "signature 'created' is beyond the tolerated skew",
        "ed-1",
    ),
    ("old", _created(-91), ("expired", 401), "signature is too old or has expired", "ed-1"),
    ("forged", _impostor, ("bad_signature", 401), "signature does not verify", "ed-1"),
    (
        "digest mismatch",
        _digest_mismatch,
        ("digest_mismatch", 401),
        "Content-Digest does not authenticate the body",
        "ed-1",
    ),
    (
        "clock ahead",
        _skewed(180),
        ("clock_skew", 401),
        "local clock appears 180 s ahead of the signer's",
        "ed-1",
    ),
    (
        "clock behind",
        _skewed(-180),
        ("clock_skew", 401),
        "local clock appears 180 s behind the signer's",
        "ed-1",
    ),
    # The replay memory (RFC 9421 section 7.2.2).
    ("replay", _replayed, ("replay", 401), "nonce already used", "ed-1"),
    ("full", _full, ("replay_cache_full", 503), "replay cache is full", "ed-1"),
    ("closed", _closed, ("replay_cache_closed", 503), "replay cache closed for shutdown", "ed-1"),
]


@pytest.mark.parametrize(
    ("build", "expected", "detail", "keyid"),
    [pytest.param(*case[1:], id=case[0]) for case in REFUSALS],
)
def test_each_refusal_has_its_status_reason_detail_and_key(
    make_harness: Any,
    build: Any,
    expected: tuple[str, int],
    detail: str,
    keyid: str | None,
) -> None:
    harness = make_harness(max_entries=2)
    headers, options = build(harness)
    with pytest.raises(SignatureError) as caught:
        harness.verify(headers, **options)
    refusal = caught.value
    assert (refusal.reason.value, refusal.status) == expected
    assert refusal.detail == detail
    assert refusal.keyid == keyid
    assert refusal.clock_offset == (
        pytest.approx(180)
        if "180 s ahead" in detail
        else pytest.approx(-180)
        if "180 s behind" in detail
        else None
    )


# -- the shared replay memory (verify_async, as the pipeline verifies) ---------------------------


def _on_store(harness: Harness, store: Any) -> SignatureVerifier:
    return SignatureVerifier(
        harness.keys,
        store,
        gateway_id=GATEWAY_ID,
        hc_path=HC_PATH,
        settings=harness.settings,
        clock=harness.gateway_clock,
    )


def _sqlite_store(harness: Harness, path: Path) -> SqliteReplayStore:
    """A fresh (initialised) SQLite replay store on the gateway's clock."""
    SqliteReplayStore.initialise(path)
    return SqliteReplayStore(path, max_entries=10, max_skew=30, clock=harness.gateway_clock)


@pytest.fixture(params=["cache", "sqlite"])
async def memory_verifier(
    request: pytest.FixtureRequest, harness: Harness, tmp_path: Path
) -> AsyncIterator[SignatureVerifier]:
    """The harness's verifier on each replay memory: its own cache, or a SQLite store."""
    if request.param == "cache":
        yield harness.verifier
        return
    store = _sqlite_store(harness, tmp_path / "replay.sqlite3")
    try:
        yield _on_store(harness, store)
    finally:
        await store.close()


async def _refusal(verifier: SignatureVerifier, headers: list[tuple[str, str]]) -> SignatureError:
    with pytest.raises(SignatureError) as caught:
        await verifier.verify_async(
            method="GET", authority=AUTHORITY, path=PATH, query="expand=1", headers=headers
        )
    return caught.value


def _facts(refusal: SignatureError) -> tuple[str, int, str, str | None]:
    return refusal.reason.value, refusal.status, refusal.detail, refusal.keyid


async def _accepted(verifier: SignatureVerifier, headers: list[tuple[str, str]]) -> None:
    found = await verifier.verify_async(
        method="GET", authority=AUTHORITY, path=PATH, query="expand=1", headers=headers
    )
    assert isinstance(found, VerifiedRequest)
    assert found.keyid == "ed-1"


async def test_the_replay_memory_keeps_a_nonce_until_the_window_ends(
    harness: Harness, memory_verifier: SignatureVerifier
) -> None:
    verifier = memory_verifier
    created = int(harness.saas_clock.now)
    headers = harness.sign(created=created)  # expires = created + 60
    await _accepted(verifier, headers)
    assert _facts(await _refusal(verifier, headers)) == (
        "replay",
        401,
        "nonce already used",
        "ed-1",
    )
    harness.saas_clock.now = created + 60 + 30 - 0.001
    assert (await _refusal(verifier, headers)).reason is Reason.REPLAY
    harness.saas_clock.now = created + 60 + 30
    # Refused as late (or, after the late replays above, as a skewed clock): never served.
    refusal = await _refusal(verifier, headers)
    assert refusal.reason in (Reason.EXPIRED, Reason.CLOCK_SKEW)


async def test_a_new_shared_store_refuses_what_was_signed_before_it(
    harness: Harness, tmp_path: Path
) -> None:
    # No initialise(): a missing file may be a deleted one that held live nonces.
    store = SqliteReplayStore(
        tmp_path / "new.sqlite3", max_entries=10, max_skew=30, clock=harness.gateway_clock
    )
    try:
        refusal = await _refusal(_on_store(harness, store), harness.sign())
        assert _facts(refusal) == (
            "replay",
            401,
            "signature predates the replay-cache start barrier (state not restored)",
            "ed-1",
        )
    finally:
        await store.close()


async def test_a_full_or_closed_shared_store_answers_503(harness: Harness, tmp_path: Path) -> None:
    SqliteReplayStore.initialise(tmp_path / "replay.sqlite3")
    store = SqliteReplayStore(
        tmp_path / "replay.sqlite3", max_entries=1, max_skew=30, clock=harness.gateway_clock
    )
    verifier = _on_store(harness, store)
    await _accepted(verifier, harness.sign())
    assert _facts(await _refusal(verifier, harness.sign())) == (
        "replay_cache_full",
        503,
        "replay cache is full",
        "ed-1",
    )
    await store.close()
    assert _facts(await _refusal(verifier, harness.sign())) == (
        "replay_cache_closed",
        503,
        "replay cache closed for shutdown",
        "ed-1",
    )


async def test_an_unreachable_shared_store_fails_closed(harness: Harness) -> None:
    server = RedisServer(Path("/nonexistent"))  # never started: nothing listens on its port
    store = RedisReplayStore(
        settings(server, timeout_seconds=0.2),
        password=SecretSource(
            SecretRef(env="R"), base_dir=server.directory, env={"R": "x"}, initial=SecretStr("x")
        ),
        prefix="t:",
        max_skew=30,
    )
    try:
        refusal = await _refusal(_on_store(harness, store), harness.sign())
        assert _facts(refusal) == (
            "replay_store_unavailable",
            503,
            "replay store unavailable",
            "ed-1",
        )
    finally:
        await store.close()


async def test_only_the_async_path_serves_a_shared_store(harness: Harness, tmp_path: Path) -> None:
    SqliteReplayStore.initialise(tmp_path / "replay.sqlite3")
    store = SqliteReplayStore(tmp_path / "replay.sqlite3", max_entries=10, max_skew=30)
    try:
        with pytest.raises(
            TypeError, match=r"^a verifier on a shared replay store verifies with verify_async$"
        ):
            harness.verify(harness.sign(), verifier=_on_store(harness, store))
    finally:
        await store.close()


# -- what may enter a signature base (RFC 9421 sections 2.1, 2.2, 2.5) ---------------------------
# Each request below is signed by hand over exactly the base a careless verifier would build, so
# the signature verifies unless the rule refuses the value before the base is built.

PARAMS = ';created={now};keyid="ed-1";nonce="{nonce}";tag="gateway-request"'


def _signed_over(
    harness: Harness, *, method: str = "GET", field: str | None = None
) -> list[tuple[str, str]]:
    now = int(harness.saas_clock.now)
    # The value signed is the field line without surrounding SP and HTAB (section 2.1).
    extra = [] if field is None else [("x-a", field.strip(" \t"))]
    covered = [
        ("@method", method),
        ("@authority", AUTHORITY),
        ("@path", PATH),
        ("@query", "?expand=1"),
        ("x-gateway-id", GATEWAY_ID),
        *extra,
    ]
    nonce = hashlib.sha256(repr((method, field)).encode()).hexdigest()[:16]
    params = PARAMS.format(now=now, nonce=nonce)
    signed = handmade_signature(harness.ed_key, covered, params)
    fields = [("x-gateway-id", GATEWAY_ID)] + ([] if field is None else [("X-A", field)])
    return [*fields, *signed]


@pytest.mark.parametrize(
    "value", ["a\nb", "a\rb", 'a\n"@path": /hc-agent-1/admin', "a\x01b", "a\x7fb", "\x00"]
)
def test_a_covered_field_with_a_line_break_or_control_character_is_refused(
    harness: Harness, value: str
) -> None:
    assert reason_of(harness, _signed_over(harness, field=value)) is Reason.BAD_SIGNATURE


@pytest.mark.parametrize("value", ["a\tb", "a b", "", "\t", " \ta\t ", "XaX"])
def test_a_covered_field_may_hold_tabs_and_spaces(harness: Harness, value: str) -> None:
    assert isinstance(harness.verify(_signed_over(harness, field=value)), VerifiedRequest)


@pytest.mark.parametrize("edge", ["\x0b", "\x0c", "\x1f", "\x85", "\u00a0"])
def test_only_sp_and_htab_are_trimmed_from_a_covered_field(harness: Harness, edge: str) -> None:
    # Signed over the value a verifier trimming every kind of white space would see: the line
    # really ends in a control or non-ASCII character, which no signature base may hold.
    headers = _signed_over(harness, field="a")
    headers = replace_header(headers, "x-a", f"a{edge}")
    assert reason_of(harness, headers) is Reason.BAD_SIGNATURE


@pytest.mark.parametrize("method", [" GET", "GET ", "G\x01T", "G\u00c9T"])
def test_a_derived_value_with_blanks_or_unprintable_characters_is_refused(
    harness: Harness, method: str
) -> None:
    headers = _signed_over(harness, method=method) if method.isascii() else harness.sign()
    assert reason_of(harness, headers, method=method) is Reason.BAD_SIGNATURE


def test_a_non_ascii_field_value_is_refused(harness: Harness) -> None:
    # Signed over the UTF-8 base a lenient verifier would build: a base is ASCII only.
    now = int(harness.saas_clock.now)
    inner = '("@method" "@authority" "@path" "@query" "x-gateway-id" "x-a")'
    params = inner + PARAMS.format(now=now, nonce="n")
    base = "\n".join(
        [
            '"@method": GET',
            f'"@authority": {AUTHORITY}',
            f'"@path": {PATH}',
            '"@query": ?expand=1',
            f'"x-gateway-id": {GATEWAY_ID}',
            '"x-a": caf\u00e9',
            f'"@signature-params": {params}',
        ]
    ).encode("utf-8")
    signature = base64.b64encode(harness.ed_key.sign(base)).decode()  # type: ignore[call-arg]
    headers = [
        ("x-gateway-id", GATEWAY_ID),
        ("X-A", "caf\u00e9"),
        ("Signature-Input", f"eid={params}"),
        ("Signature", f"eid=:{signature}:"),
    ]
    assert reason_of(harness, headers) is Reason.BAD_SIGNATURE


# -- configuration and state ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gateway_id", "hc_path"),
    [("", HC_PATH), (GATEWAY_ID, ""), (GATEWAY_ID, f"/{HC_PATH}"), (GATEWAY_ID, f"{HC_PATH}/")],
)
def test_a_verifier_needs_a_gateway_id_and_a_bare_hc_path(
    harness: Harness, gateway_id: str, hc_path: str
) -> None:
    with pytest.raises(
        ValueError, match=r"^gateway_id and hc_path \(without surrounding '/'\) are required$"
    ):
        SignatureVerifier(harness.keys, harness.cache, gateway_id=gateway_id, hc_path=hc_path)


@pytest.mark.parametrize(("max_age", "max_skew"), [(0, 30), (-1, 30), (60, -0.5)])
def test_windows_must_be_positive(max_age: float, max_skew: float) -> None:
    with pytest.raises(ValueError, match=r"^max_age must be positive and max_skew non-negative$"):
        VerifierSettings(max_age=max_age, max_skew=max_skew)


def test_the_default_settings_are_one_minute_and_thirty_seconds(harness: Harness) -> None:
    # No settings given: max_age 60 s and max_skew 30 s, the gateway.yaml defaults.
    verifier = SignatureVerifier(
        harness.keys,
        harness.cache,
        gateway_id=GATEWAY_ID,
        hc_path=HC_PATH,
        clock=harness.gateway_clock,
    )
    assert VerifierSettings(max_skew=0).max_skew == 0
    now = int(harness.saas_clock.now)
    for age, reason in ((-30, None), (-31, Reason.CLOCK_SKEW), (89, None), (90, Reason.EXPIRED)):
        signer = harness.signer(harness.ed_key, "ed-1", expires_in=None)
        headers = harness.sign(signer, created=now - age)
        if reason is None:
            assert isinstance(harness.verify(headers, verifier=verifier), VerifiedRequest)
        else:
            assert reason_of(harness, headers, verifier=verifier) is reason


def test_the_skew_estimate_uses_the_verifiers_clock(harness: Harness) -> None:
    harness.gateway_offset = 100.0
    assert harness.verifier.clock_skew() is None
    for _ in range(3):
        with pytest.raises(SignatureError):
            harness.verify(harness.sign())
    estimate = harness.verifier.clock_skew()
    assert estimate is not None
    assert (estimate.offset, estimate.samples, estimate.systematic) == (100.0, 3, True)
    harness.saas_clock.now += 301  # the samples are older than the estimate's window
    assert harness.verifier.clock_skew() is None


def test_a_skew_within_the_tolerance_is_not_systematic(harness: Harness) -> None:
    # The estimator's threshold is the verifier's max_skew (30 s here).
    harness.gateway_offset = 29.0
    for _ in range(3):
        assert isinstance(harness.verify(harness.sign()), VerifiedRequest)
    estimate = harness.verifier.clock_skew()
    assert estimate is not None
    assert not estimate.systematic


def test_the_key_set_in_use_is_the_one_installed(harness: Harness) -> None:
    assert harness.verifier.keys is harness.keys
    replacement = harness.keyset(("ec-1", harness.ec_key))
    harness.verifier.replace_keys(replacement)
    assert harness.verifier.keys is replacement
    assert reason_of(harness, harness.sign()) is Reason.UNKNOWN_KEY


async def test_the_replay_memory_keys_a_nonce_by_key_and_nonce(
    harness: Harness, memory_verifier: SignatureVerifier
) -> None:
    verifier = memory_verifier
    await _accepted(verifier, harness.sign(nonce="n-1"))
    await _accepted(verifier, harness.sign(nonce="n-2"))
    found = await verifier.verify_async(
        method="GET",
        authority=AUTHORITY,
        path=PATH,
        query="expand=1",
        headers=harness.sign(harness.ec, nonce="n-1"),
    )
    assert found.keyid == "ec-1"


async def test_the_async_path_checks_the_body(harness: Harness, tmp_path: Path) -> None:
    store = _sqlite_store(harness, tmp_path / "replay.sqlite3")
    verifier = _on_store(harness, store)
    try:
        for signed in (None, b"{}"):
            with pytest.raises(SignatureError) as caught:
                await verifier.verify_async(
                    method="POST",
                    authority=AUTHORITY,
                    path=PATH,
                    query="expand=1",
                    headers=harness.sign(body=signed),
                    body=b"{ }",
                )
            expected = Reason.MISSING_COMPONENT if signed is None else Reason.DIGEST_MISMATCH
            assert caught.value.reason is expected
    finally:
        await store.close()


def test_the_direction_of_a_sub_second_systematic_skew(harness: Harness) -> None:
    # With no tolerance at all, half a second is already systematic: the report says which way.
    settings = VerifierSettings(max_age=0.25, max_skew=0)
    verifier = SignatureVerifier(
        harness.keys,
        harness.cache,
        gateway_id=GATEWAY_ID,
        hc_path=HC_PATH,
        settings=settings,
        clock=harness.gateway_clock,
    )
    harness.gateway_offset = 0.5
    for _ in range(3):
        with pytest.raises(SignatureError) as caught:
            harness.verify(harness.sign(), verifier=verifier)
    assert caught.value.detail == "local clock appears 0 s ahead of the signer's"
    assert caught.value.clock_offset == 0.5


@pytest.mark.parametrize("nonce", ['say "hi"', "back\\slash", '\\"', '"', "plain"])
def test_string_parameters_are_escaped_in_the_signature_base(harness: Harness, nonce: str) -> None:
    # RFC 8941 section 4.1.6: '"' and '\' are escaped when @signature-params is serialised.
    result = harness.verify(harness.sign(nonce=nonce))
    assert isinstance(result, VerifiedRequest)
    assert result.nonce == nonce


def test_a_nonce_is_kept_only_until_its_own_window_ends(make_harness: Any) -> None:
    # expires (10 s) ends the window before created + max_age (60 s): the nonce makes room for
    # others at expires + max_skew, not later (a full replay memory answers 503).
    harness = make_harness(max_entries=1)
    created = int(harness.saas_clock.now)
    signer = harness.signer(harness.ed_key, "ed-1", expires_in=10)
    assert isinstance(harness.verify(harness.sign(signer)), VerifiedRequest)
    harness.saas_clock.now = created + 10 + 30 - 1
    assert reason_of(harness, harness.sign(signer)) is Reason.REPLAY_CACHE_FULL
    harness.saas_clock.now = created + 10 + 30
    assert isinstance(harness.verify(harness.sign(signer)), VerifiedRequest)


# -- the direct checks and the package's, on fixed inputs -----------------------------------------
# A gateway checks signatures and digests with cryptography and hashlib directly; a reference
# verifier uses the package's classes. Both must take a good one and refuse anything else (the
# fuzzed agreement is in test_auth_fast_path.py; these pin it on inputs the mutants meet).

HMAC_SECRET = bytes(range(64, 96))


def _fast_and_reference(harness: Harness, tmp_path: Path) -> list[SignatureVerifier]:
    """The harness's verifier and a reference one, both pinning ed-1, ec-1 and hmac-1."""
    shared = shared_key("hmac-1", HMAC_SECRET, not_before=T0 - 60, not_after=T0 + 3600)
    harness.verifier.replace_keys(harness.keys.with_keys([shared]))
    return [harness.verifier, harness.reference_verifier(tmp_path / "reference")]


def _with_raw_signature(headers: list[tuple[str, str]], raw: bytes) -> list[tuple[str, str]]:
    encoded = base64.b64encode(raw).decode()
    return replace_header(headers, "signature", f"eid=:{encoded}:")


@pytest.mark.parametrize(
    ("which", "alg"),
    [
        ("ed", "ed25519"),
        ("ec", "ecdsa-p256-sha256"),
        ("rsa", "rsa-pss-sha512"),
        ("hmac", "hmac-sha256"),
    ],
)
def test_each_algorithm_takes_its_signature_and_nothing_else(
    harness: Harness, tmp_path: Path, which: str, alg: str
) -> None:
    verifiers = _fast_and_reference(harness, tmp_path)
    signer = {"ed": harness.ed, "ec": harness.ec, "rsa": harness.rsa}.get(which) or harness.signer(
        HMAC_SECRET, "hmac-1"
    )
    for verifier in verifiers:
        headers = harness.sign(signer, body=b"{}")
        raw = base64.b64decode(dict(headers)["Signature"].split(":")[1])
        half = len(raw) // 2
        others = [
            bytes([raw[0] ^ 1]) + raw[1:],  # one bit changed
            raw[:-1],  # a byte short
            raw + b"\x00",  # a byte long
            raw[half:] + raw[:half],  # the halves (for P-256: r and s) swapped
            bytes(len(raw)),
        ]
        for other in others:
            tampered = _with_raw_signature(headers, other)
            assert reason_of(harness, tampered, body=b"{}", verifier=verifier) is (
                Reason.BAD_SIGNATURE
            )
        result = harness.verify(headers, body=b"{}", verifier=verifier)
        assert isinstance(result, VerifiedRequest)
        assert (result.alg, result.body_verified) == (alg, True)


def _digest(algorithm: str, body: bytes, size: int | None = None) -> str:
    digest = hashlib.new(algorithm.replace("-", ""), body).digest()[:size]
    return f"{algorithm}=:{base64.b64encode(digest).decode()}:"


BODY = b'{"order": 17}'


@pytest.mark.parametrize(
    ("digest", "accepted"),
    [
        (_digest("sha-256", BODY), True),
        (_digest("sha-512", BODY), True),
        (_digest("sha-512", b"other"), False),
        (_digest("sha-256", BODY, 16), False),  # a digest cut short
        (_digest("sha-256", BODY) + ", " + _digest("sha-512", BODY), True),  # the package decides
        (_digest("sha-256", BODY) + ", " + _digest("sha-512", b"other"), False),
        (_digest("sha-384", BODY), False),  # not an algorithm the gateway takes
    ],
)
def test_a_content_digest_is_checked_alike_on_both_paths(
    harness: Harness, tmp_path: Path, digest: str, accepted: bool
) -> None:
    now = int(harness.saas_clock.now)
    nonce = hashlib.sha256(digest.encode()).hexdigest()[:16]
    headers = _handmade(
        harness,
        PARAMS.format(now=now, nonce=nonce),
        extra=[("content-digest", digest)],
        headers=[("Content-Digest", digest)],
    )
    for verifier in _fast_and_reference(harness, tmp_path):
        if accepted:
            result = harness.verify(headers, body=BODY, method="GET", verifier=verifier)
            assert isinstance(result, VerifiedRequest)
            assert result.body_verified
        else:
            reason = reason_of(harness, headers, body=BODY, method="GET", verifier=verifier)
            assert reason is Reason.DIGEST_MISMATCH


def test_a_key_replaced_under_its_keyid_verifies_with_the_new_material(harness: Harness) -> None:
    # Each key's check is prepared with the key set: a new set must bring its own checks.
    old = harness.sign()
    replacement = generate_key("ed25519")
    harness.verifier.replace_keys(harness.keyset(("ed-1", replacement), ("ec-1", harness.ec_key)))
    assert reason_of(harness, old) is Reason.BAD_SIGNATURE
    result = harness.verify(harness.sign(harness.signer(replacement, "ed-1")))
    assert isinstance(result, VerifiedRequest)
