"""Signature verification, rule by rule: each RFC 9421 / 9530 / 8941 rule the verifier applies,
at its boundary, with the reason and detail a refusal reports.

The fast paths are checked on fixed examples here (the fuzzed differential checks live in
test_auth_fast_path.py): for the shape the SaaS sends they must answer, and answer what the
package answers; for every other shape they must step aside.
"""

from __future__ import annotations

from typing import Any

import http_sf
import pytest

from gateway.auth import Reason, SignatureError, VerifiedRequest
from gateway.auth.verifier import fast_components, fast_signature, fast_signature_input
from tests.unit.auth.harness import AUTHORITY, GATEWAY_ID, PATH, Harness, package_components


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
    fast = fast_components("POST", authority, path, query, HEADERS, [(n, {}) for n in NAMES])
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
    assert fast_components(method, authority, path, query, headers, components) is None


def test_the_first_field_line_is_read() -> None:
    # The verifier refuses covered fields on several lines before reading; the reader takes the
    # first line of a name whatever its case, as the resolver's joined value starts with it.
    headers = [("X-Trace", "one"), ("x-trace", "two")]
    fast = fast_components("GET", AUTHORITY, PATH, "", headers, [("x-trace", {})])
    assert fast == {"x-trace": "one"}


# -- the acceptance window and the replay memory ------------------------------------------------
# The replay memory keeps a nonce until the window end the verifier hands it, and forgets it at
# that instant (every store treats the end as exclusive). The verifier must therefore refuse from
# that same instant on, or a request replayed exactly at the end of its window is served twice.


@pytest.mark.parametrize("expires_in", [None, 10])
def test_a_replay_at_the_very_end_of_the_window_is_refused(
    harness: Harness, expires_in: int | None
) -> None:
    created = int(harness.saas_clock.now)
    expires = None if expires_in is None else created + expires_in
    headers = harness.sign(created=created, expires=expires)
    assert isinstance(harness.verify(headers), VerifiedRequest)
    # max_age 60 and max_skew 30 (the harness's settings): the window ends at the earlier of
    # created + 60 and expires, plus the 30 s tolerated skew.
    end = min(created + 60, created + 60 if expires is None else expires) + 30
    harness.saas_clock.now = end
    assert reason_of(harness, headers) is Reason.EXPIRED


@pytest.mark.parametrize("expires_in", [None, 10])
def test_the_last_instant_before_the_window_end_is_accepted(
    harness: Harness, expires_in: int | None
) -> None:
    created = int(harness.saas_clock.now)
    expires = None if expires_in is None else created + expires_in
    end = min(created + 60, created + 60 if expires is None else expires) + 30
    harness.saas_clock.now = end - 0.001
    headers = harness.sign(created=created, expires=expires)
    assert isinstance(harness.verify(headers), VerifiedRequest)
    assert reason_of(harness, headers) is Reason.REPLAY
