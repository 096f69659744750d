"""The verifier's fast paths agree with http-message-signatures, the reference semantics.

Three differential properties over fuzzed input: the canonical-form ``Signature-Input`` and
``Signature`` readers give exactly what the general RFC 8941 parser (http_sf) gives whenever they
answer at all; the directly read component values are the package resolver's for the same
request; and a verifier using the fast paths accepts and refuses (with the same reason) exactly
what a verifier using only the package does, with the same signature base.
"""

from __future__ import annotations

import base64
import hashlib
import tempfile
from pathlib import Path
from typing import Any

import http_sf
import pytest
from http_message_signatures import ContentDigest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.auth import SignatureError, SignatureVerifier, VerifiedRequest
from gateway.auth.keys import shared_key
from gateway.auth.verifier import (
    fast_components,
    fast_content_digest,
    fast_signature,
    fast_signature_input,
    field_lines,
)
from tests.unit.auth.harness import (
    AUTHORITY,
    HC_PATH,
    PATH,
    T0,
    Harness,
    package_components,
)

# Tens of seconds: started first in a parallel run (tests/conftest.py).
pytestmark = pytest.mark.slow

# Characters that matter to RFC 8941 and RFC 3986 grammars, plus a few that never may appear.
SPECIAL = [*" ()\";=:,\\?#%/@*-._~+&!$'\t\r\n\x00\x7fé", "%2", "%zz", "%41", "=="]
VALID_KEYS = st.sampled_from(["eid", "sig", "a*b", "x-1", "*", "e_i.d", "created", "nonce"])
KEYS = st.one_of(VALID_KEYS, st.sampled_from(["Eid", "1x", ""]))
VALID_COMPONENTS = st.sampled_from(
    ["@method", "@authority", "@path", "@query", "x-gateway-id", "content-digest"]
)
COMPONENTS = st.one_of(
    VALID_COMPONENTS,
    st.sampled_from(["@query-param", "@status", "Content-Type", "x y", 'a"b', "a\\b", ""]),
)
SF_STRING_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'),
    max_size=12,
)
VALID_PARAM_VALUES = st.one_of(
    st.integers(min_value=-(10**15) + 1, max_value=10**15 - 1), SF_STRING_TEXT
)
PARAM_VALUES = st.one_of(
    st.integers(min_value=-(10**16), max_value=10**16),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12),
    st.sampled_from(["?1", "1.5", "tok", ":AAAA:"]),
)


def _raise_on_duplicate(key: str, context: str) -> None:
    raise ValueError("duplicate key")


def _reference_parse(value: str) -> Any:
    """http_sf's Dictionary, or ``None`` where it (or our duplicate refusal) refuses."""
    try:
        return http_sf.parse(
            value.encode("ascii"), tltype="dictionary", on_duplicate_key=_raise_on_duplicate
        )
    except Exception:
        return None


@st.composite
def mutated(draw: st.DrawFn, base: str) -> str:
    """``base`` with up to three characters inserted, deleted or replaced."""
    text = base
    # Half the inputs stay as built, so canonical (fast-path) shapes are common.
    edits = draw(st.integers(min_value=0, max_value=3)) if draw(st.booleans()) else 0
    for _ in range(edits):
        position = draw(st.integers(min_value=0, max_value=len(text)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.sampled_from(SPECIAL) | st.characters(max_codepoint=0x7E))
        if action == "insert":
            text = text[:position] + piece + text[position:]
        elif action == "delete":
            text = text[:position] + text[position + 1 :]
        else:
            text = text[:position] + piece + text[position + 1 :]
    return text


@st.composite
def signature_inputs(draw: st.DrawFn) -> str:
    """Signature-Input values: half built in the canonical shape, then maybe edited."""
    valid = draw(st.booleans())
    names = draw(st.lists(VALID_COMPONENTS if valid else COMPONENTS, max_size=6))
    params = draw(
        st.lists(
            st.tuples(VALID_KEYS if valid else KEYS, VALID_PARAM_VALUES if valid else PARAM_VALUES),
            max_size=6,
        )
    )
    rendered = "".join(
        f";{key}={value}" if isinstance(value, int) or value in ("?1", "1.5", "tok", ":AAAA:")
        else ";{}={}".format(key, '"' + value + '"')
        for key, value in params
    )  # fmt: skip
    separator = " " if valid else draw(st.sampled_from([" ", "  "]))
    member = f"{draw(VALID_KEYS)}=(" + separator.join(f'"{name}"' for name in names) + ")"
    member += rendered
    if not valid and draw(st.booleans()):
        member += ", " + f"{draw(KEYS)}=(" + '"@method"' + ");created=1"
    return draw(mutated(member))


@st.composite
def signatures(draw: st.DrawFn) -> str:
    raw = draw(st.binary(max_size=80))
    encoded = __import__("base64").b64encode(raw).decode()
    return draw(mutated(f"{draw(KEYS)}=:{encoded}:"))


@settings(max_examples=1500, deadline=None)
@given(value=signature_inputs())
def test_signature_input_fast_reader_agrees_with_http_sf(value: str) -> None:
    fast = fast_signature_input(value)
    if fast is not None:
        assert fast == _reference_parse(value)
        # It answers only for a field already in serialised form: the verifier then uses the
        # member's text as it arrived for @signature-params (RFC 9421 section 2.3).
        assert http_sf.ser(fast) == value


@settings(max_examples=800, deadline=None)
@given(value=signatures())
def test_signature_fast_reader_agrees_with_http_sf(value: str) -> None:
    fast = fast_signature(value)
    if fast is not None:
        assert fast == _reference_parse(value)


DIGEST_ALGORITHMS = st.sampled_from(["sha-256", "sha-512", "sha-384", "SHA-256", "md5"])


@st.composite
def content_digests(draw: st.DrawFn) -> tuple[str, bytes]:
    """A Content-Digest value and a body: the body's own digest or another, maybe edited."""
    body = draw(st.binary(max_size=40))
    algorithm = draw(DIGEST_ALGORITHMS)
    hasher = {"sha-512": hashlib.sha512, "sha-384": hashlib.sha384}.get(algorithm, hashlib.sha256)
    digested = body if draw(st.booleans()) else draw(st.binary(max_size=40))
    value = f"{algorithm}=:{base64.b64encode(hasher(digested).digest()).decode()}:"
    if draw(st.booleans()):
        value += ", " + draw(st.sampled_from(["sha-256=:AAAA:", value, "sha-512=?1"]))
    return draw(mutated(value)), body


def _package_digest(value: str, body: bytes) -> bool:
    try:
        ContentDigest.verify(value, body)
    except Exception:
        return False
    return True


@settings(max_examples=1500, deadline=None)
@given(case=content_digests())
def test_content_digest_fast_check_agrees_with_the_package(case: tuple[str, bytes]) -> None:
    value, body = case
    fast = fast_content_digest(value, body)
    if fast is not None:
        assert fast == _package_digest(value, body)


@pytest.mark.parametrize("algorithm", ["sha-256", "sha-512"])
def test_the_content_digest_fast_check_takes_the_signers_shape(algorithm: str) -> None:
    body = b'{"order": 17}'
    digest = hashlib.new(algorithm.replace("-", "")).digest()
    other = f"{algorithm}=:{base64.b64encode(digest).decode()}:"
    hasher = hashlib.new(algorithm.replace("-", ""), body)
    value = f"{algorithm}=:{base64.b64encode(hasher.digest()).decode()}:"
    assert fast_content_digest(value, body) is True
    assert fast_content_digest(other, body) is False
    for unusual in (value + " ", f"{value}, {value}", value.replace("=:", "=:\n"), "sha-256=?1"):
        assert fast_content_digest(unusual, body) is None


def test_the_fast_readers_take_the_signers_shape(harness: Harness) -> None:
    headers = dict(harness.sign(body=b"{}"))
    inputs = fast_signature_input(headers["Signature-Input"])
    assert inputs is not None
    assert inputs == _reference_parse(headers["Signature-Input"])
    signature = fast_signature(headers["Signature"])
    assert signature is not None
    assert signature == _reference_parse(headers["Signature"])


URL_TEXT = st.lists(
    st.sampled_from([*"aZ09-._~!$&'()*+,;=:@/?%#[] ", "%41", "%e9", "é", "\x00"]), max_size=16
).map("".join)
HEADER_NAMES = st.sampled_from(["x-gateway-id", "Content-Type", "x-trace", "X-Trace"])
HEADER_VALUES = st.lists(
    st.sampled_from([*'ab ;,\t"', "\r\n ", "\r\n", "\n", "é", "\x01"]), max_size=10
).map("".join)


@settings(max_examples=1500, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "get", "Get", "PATCH", "G T"]),
    authority=st.sampled_from(
        [AUTHORITY, "Contoso.Example:443", "h:0443", "h:8443", "h:", "[::1]", "a b", "h:x", "é"]
    ),
    path=URL_TEXT.map(lambda tail: f"/{HC_PATH}{tail}"),
    query=URL_TEXT,
    headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=4),
    names=st.lists(
        st.sampled_from(
            [
                "@method",
                "@authority",
                "@path",
                "@query",
                "@scheme",
                "x-gateway-id",
                "content-type",
                "x-trace",
            ]
        ),
        unique=True,
        max_size=6,
    ),
)
def test_direct_component_values_are_the_resolvers(
    method: str,
    authority: str,
    path: str,
    query: str,
    headers: list[tuple[str, str]],
    names: list[str],
) -> None:
    # The verifier refuses covered fields on several lines before it needs their values.
    lines = [name.lower() for name, _ in headers]
    assume(all(lines.count(name) <= 1 for name in names))
    fast = fast_components(
        method, authority, path, query, field_lines(headers)[0], [(n, {}) for n in names]
    )
    if fast is not None:
        assert fast == package_components(method, authority, path, query, headers, names)


MUTATION_TARGETS = [
    "Signature-Input",
    "Signature",
    "path",
    "query",
    "method",
    "x-gateway-id",
    "content-digest",
    "body",
    "line",
]
SECRET = bytes(range(32, 64))


def _outcome(harness: Harness, verifier: SignatureVerifier, request: dict[str, Any]) -> object:
    try:
        return harness.verify(verifier=verifier, **request)
    except SignatureError as error:
        return error.reason


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    which=st.sampled_from(["ed", "ec", "rsa", "hmac"]),
    body=st.sampled_from([None, b"{}"]),
    target=st.sampled_from(MUTATION_TARGETS),
    extra=st.sampled_from([[], ['"@query-param";name="expand"'], ["content-type"]]),
    primed=st.booleans(),
)
def test_fast_and_reference_verifiers_accept_and_refuse_alike(
    data: st.DataObject,
    which: str,
    body: bytes | None,
    target: str,
    extra: list[str],
    primed: bool,
) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        harness = Harness(Path(scratch) / "fast")
        shared = shared_key("hmac-1", SECRET, not_before=T0 - 3600, not_after=T0 + 3600)
        harness.verifier.replace_keys(harness.keys.with_keys([shared]))
        reference = harness.reference_verifier(Path(scratch) / "reference")
        signer = {"ed": harness.ed, "ec": harness.ec, "rsa": harness.rsa}.get(
            which
        ) or harness.signer(SECRET, "hmac-1")
        components = ("@method", "@authority", "@path", "@query", "x-gateway-id", *extra)

        def sign() -> list[tuple[str, str]]:
            return signer.sign(
                method="POST" if body is not None else "GET",
                authority=AUTHORITY,
                path=PATH,
                query="expand=1",
                headers=[("Content-Type", "application/json")],
                body=body,
                components=components,
            )

        if primed:
            # The fast verifier has seen a request of this shape authentic (long ago, so that
            # only the shape it learnt remains): the request below is read as that shape
            # wherever it still has it.
            harness.saas_clock.now = T0 - 1000
            assert isinstance(harness.verify(sign(), body=body), VerifiedRequest)
            harness.saas_clock.now = T0
        headers = sign()
        request: dict[str, Any] = {"headers": headers, "body": body}
        if data.draw(st.booleans(), label="mutate"):
            if target in ("path", "query"):
                request[target] = data.draw(mutated(PATH if target == "path" else "expand=1"))
            elif target == "method":
                request["method"] = data.draw(st.sampled_from(["get", "PUT", "GET ", "POST"]))
            elif target == "body":
                request["body"] = data.draw(st.sampled_from([None, b"", b"{}", b"{} "]))
            elif target == "line":
                # A field line repeated (maybe altered), or every name in capitals.
                index = data.draw(st.integers(min_value=0, max_value=len(headers) - 1))
                name, value = headers[index]
                if data.draw(st.booleans(), label="capitals"):
                    request["headers"] = [(n.upper(), v) for n, v in headers]
                else:
                    request["headers"] = [*headers, (name.lower(), data.draw(mutated(value)))]
            else:
                request["headers"] = [
                    (name, data.draw(mutated(value)) if name.lower() == target.lower() else value)
                    for name, value in headers
                ]
        fast = _outcome(harness, harness.verifier, request)
        slow = _outcome(harness, reference, request)
        assert fast == slow
        if isinstance(fast, VerifiedRequest):
            # Same covered components in the same order: the bases agreed line by line.
            assert isinstance(slow, VerifiedRequest)
            assert fast.covered == slow.covered


@pytest.mark.parametrize("extra", [(), ('"@query-param";name="expand"',)])
def test_the_signers_request_takes_the_fast_path_only_when_it_can(
    harness: Harness, extra: tuple[str, ...]
) -> None:
    headers = harness.sign()
    components: list[tuple[str, dict[str, Any]]] = [
        ("@method", {}),
        ("@authority", {}),
        ("@path", {}),
        ("@query", {}),
    ]
    if extra:
        components.append(("@query-param", {"name": "expand"}))
    fast = fast_components("GET", AUTHORITY, PATH, "expand=1", field_lines(headers)[0], components)
    assert (fast is None) == bool(extra)
