"""Signature verification: what is accepted, and the exact reason for everything that is not."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable

import pytest

from gateway.auth import (
    DEFAULT_TAG,
    KeySet,
    Reason,
    SignatureError,
    SignatureVerifier,
    VerifiedRequest,
)
from gateway.devkit.signing import generate_key
from tests.unit.auth.harness import (
    AUTHORITY,
    GATEWAY_ID,
    HC_PATH,
    PATH,
    Harness,
    handmade_signature,
    request_components,
)

BODY = b'{"order": 17}'
COVERED = request_components()


def reason_of(harness: Harness, headers: list[tuple[str, str]], **kwargs: object) -> Reason:
    with pytest.raises(SignatureError) as caught:
        harness.verify(headers, **kwargs)  # type: ignore[arg-type]
    return caught.value.reason


def replace_header(headers: list[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    return [(n, value if n.lower() == name else v) for n, v in headers]


def without(headers: list[tuple[str, str]], name: str) -> list[tuple[str, str]]:
    return [(n, v) for n, v in headers if n.lower() != name]


@pytest.mark.parametrize("which", ["ed", "ec"])
@pytest.mark.parametrize("body", [None, b"", BODY])
def test_valid_signatures_are_accepted(harness: Harness, which: str, body: bytes | None) -> None:
    signer = harness.ed if which == "ed" else harness.ec
    result = harness.verify(harness.sign(signer, body=body), body=body)
    assert isinstance(result, VerifiedRequest)
    assert result.keyid == signer.keyid
    assert result.alg == signer.alg
    assert result.body_verified is (body is not None)
    assert '"@path"' in result.covered


def test_websocket_connect_path_under_dollar_hc_is_accepted(harness: Harness) -> None:
    path = f"/$hc/{HC_PATH}/stream"
    headers = harness.sign(path=path, query="")
    result = harness.verify(headers, path=path, query="")
    assert isinstance(result, VerifiedRequest)


def test_missing_signature_headers(harness: Harness) -> None:
    headers = harness.sign()
    assert reason_of(harness, without(headers, "signature")) is Reason.MISSING_SIGNATURE
    assert reason_of(harness, without(headers, "signature-input")) is Reason.MISSING_SIGNATURE
    assert reason_of(harness, [("x-gateway-id", GATEWAY_ID)]) is Reason.MISSING_SIGNATURE


def test_signature_with_another_tag_is_not_ours(harness: Harness) -> None:
    signer = harness.signer(harness.ed_key, "ed-1", tag="some-other-purpose")
    assert reason_of(harness, harness.sign(signer)) is Reason.MISSING_SIGNATURE


@pytest.mark.parametrize("omitted", ["@method", "@authority", "@path", "@query", "x-gateway-id"])
def test_each_required_component_must_be_covered(harness: Harness, omitted: str) -> None:
    components = [c for c in ("@method", "@authority", "@path", "@query", "x-gateway-id")]
    components.remove(omitted)
    headers = harness.sign(components=components)
    with pytest.raises(SignatureError) as caught:
        harness.verify(headers)
    assert caught.value.reason is Reason.MISSING_COMPONENT
    assert omitted in caught.value.detail
    assert caught.value.status == 401


def test_body_without_covered_digest_is_refused(harness: Harness) -> None:
    headers = harness.sign()  # signed as if there were no body
    assert reason_of(harness, headers, body=BODY, method="GET") is Reason.MISSING_COMPONENT


def test_changed_body_is_a_digest_mismatch(harness: Harness) -> None:
    headers = harness.sign(body=BODY)
    assert reason_of(harness, headers, body=BODY + b" ") is Reason.DIGEST_MISMATCH
    # The failed attempt did not consume the nonce: the genuine request still passes.
    assert isinstance(harness.verify(headers, body=BODY), VerifiedRequest)


def test_weak_digest_algorithm_is_refused(harness: Harness) -> None:
    # Correctly signed, but the digest uses an algorithm weaker than SHA-256: never accepted.
    digest = "md5=:" + base64.b64encode(hashlib.md5(BODY).digest()).decode() + ":"
    now = int(harness.saas_clock.now)
    signature = handmade_signature(
        harness.ed_key,
        [("@method", "POST"), *COVERED[1:], ("content-digest", digest)],
        f';created={now};keyid="ed-1";nonce="n-md5";tag="{DEFAULT_TAG}"',
    )
    headers = [("x-gateway-id", GATEWAY_ID), ("Content-Digest", digest), *signature]
    assert reason_of(harness, headers, body=BODY, method="POST") is Reason.DIGEST_MISMATCH


def test_handmade_signature_base_agrees_with_the_library(harness: Harness) -> None:
    now = int(harness.saas_clock.now)
    for key, keyid in ((harness.ed_key, "ed-1"), (harness.ec_key, "ec-1")):
        signature = handmade_signature(
            key,
            [("@method", "POST"), *COVERED[1:]],
            f';created={now};keyid="{keyid}";nonce="n-{keyid}";tag="{DEFAULT_TAG}"',
        )
        headers = [("X-Gateway-Id", GATEWAY_ID), *signature]
        result = harness.verify(headers, method="POST")
        assert isinstance(result, VerifiedRequest)
        assert result.expires is None


def test_sha512_digest_is_accepted(harness: Harness) -> None:
    digest = base64.b64encode(hashlib.sha512(BODY).digest()).decode()
    headers = harness.ed.sign(
        method="POST",
        authority=AUTHORITY,
        path=PATH,
        query="expand=1",
        headers=[("Content-Digest", f"sha-512=:{digest}:")],
        components=("@method", "@authority", "@path", "@query", "x-gateway-id", "content-digest"),
    )
    result = harness.verify(headers, body=BODY, method="POST")
    assert isinstance(result, VerifiedRequest)
    assert result.body_verified


@pytest.mark.parametrize(
    "field", ["x-gateway-id", "content-type", "authorization", "content-digest"]
)
def test_a_covered_field_on_two_lines_is_refused_even_when_the_joined_value_is_signed(
    harness: Harness, field: str
) -> None:
    # The signer signs the joined value ("a, b", RFC 9421 section 2.1), which is exactly what
    # the lines below join to: the signature verifies, yet a target reading only one line would
    # act on a value nobody signed.
    sha256 = base64.b64encode(hashlib.sha256(BODY).digest()).decode()
    sha512 = base64.b64encode(hashlib.sha512(BODY).digest()).decode()
    lines = {
        "x-gateway-id": [GATEWAY_ID, "agent-2"],
        "content-type": ["application/json", "text/plain"],
        "authorization": ["Bearer a", "Bearer b"],
        "content-digest": [f"sha-256=:{sha256}:", f"sha-512=:{sha512}:"],
    }[field]
    components = ["@method", "@authority", "@path", "@query", "x-gateway-id", "content-digest"]
    if field not in components:
        components.append(field)
    others = [("Content-Type", "application/json")] if field != "content-type" else []
    joined = [(field, ", ".join(lines))] if field != "x-gateway-id" else []
    signed = harness.ed.sign(
        method="POST",
        authority=AUTHORITY,
        path=PATH,
        query="expand=1",
        headers=[*others, *joined],
        body=BODY,
        components=components,
    )
    if field == "x-gateway-id":
        signed = replace_header(signed, field, ", ".join(lines))
    split = [(n, v) for n, v in signed if n.lower() != field] + [(field, v) for v in lines]
    assert reason_of(harness, split, body=BODY) is Reason.DUPLICATE_FIELD


def test_other_gateway_id_is_refused(harness: Harness) -> None:
    signer = harness.signer(harness.ed_key, "ed-1")
    signer.gateway_id = "agent-2"
    assert reason_of(harness, harness.sign(signer)) is Reason.WRONG_GATEWAY


def test_path_of_another_hybrid_connection_is_refused(harness: Harness) -> None:
    path = "/hc-agent-2/api/orders"
    assert reason_of(harness, harness.sign(path=path), path=path) is Reason.WRONG_GATEWAY
    path = "/hc-agent-1x/api/orders"  # a name that merely starts with ours
    assert reason_of(harness, harness.sign(path=path), path=path) is Reason.WRONG_GATEWAY


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ({"method": "POST"}, Reason.BAD_SIGNATURE),
        ({"path": PATH + "x"}, Reason.BAD_SIGNATURE),
        ({"query": "expand=2"}, Reason.BAD_SIGNATURE),
        ({"query": ""}, Reason.BAD_SIGNATURE),
        ({"method": "get"}, Reason.MALFORMED_REQUEST),
        ({"path": PATH + "/a b"}, Reason.MALFORMED_REQUEST),
    ],
)
def test_request_line_changes_break_the_signature(
    harness: Harness, tamper: dict[str, str], reason: Reason
) -> None:
    assert reason_of(harness, harness.sign(), **tamper) is reason


def test_created_too_old_is_expired(harness: Harness) -> None:
    headers = harness.sign(created=int(harness.saas_clock.now) - 600)
    assert reason_of(harness, headers) is Reason.EXPIRED


def test_created_in_the_future_is_clock_skew(harness: Harness) -> None:
    headers = harness.sign(created=int(harness.saas_clock.now) + 300)
    with pytest.raises(SignatureError) as caught:
        harness.verify(headers)
    assert caught.value.reason is Reason.CLOCK_SKEW


def test_expires_in_the_past_is_expired(harness: Harness) -> None:
    now = int(harness.saas_clock.now)
    headers = harness.sign(created=now - 50, expires=now - 40)
    assert reason_of(harness, headers) is Reason.EXPIRED


def test_expires_not_after_created_is_malformed(harness: Harness) -> None:
    now = int(harness.saas_clock.now)
    headers = harness.sign(created=now, expires=now)
    assert reason_of(harness, headers) is Reason.MALFORMED_SIGNATURE


@pytest.mark.parametrize(
    ("age", "reason"),
    [
        (-25, None),  # 25 s in the future: within max_skew 30
        (-35, Reason.CLOCK_SKEW),
        (85, None),  # max_age 60 + max_skew 30
        (95, Reason.EXPIRED),
    ],
)
def test_age_and_skew_bounds(harness: Harness, age: int, reason: Reason | None) -> None:
    headers = harness.sign(created=int(harness.saas_clock.now) - age)
    if reason is None:
        assert isinstance(harness.verify(headers), VerifiedRequest)
    else:
        assert reason_of(harness, headers) is reason


@pytest.mark.parametrize("parameter", ["created", "keyid", "nonce"])
def test_required_parameters(harness: Harness, parameter: str) -> None:
    headers = harness.sign()
    sig_input = dict(headers)["Signature-Input"]
    stripped = re.sub(rf";{parameter}=[^;]*", "", sig_input)
    assert stripped != sig_input
    tampered = replace_header(headers, "signature-input", stripped)
    with pytest.raises(SignatureError) as caught:
        harness.verify(tampered)
    assert caught.value.reason is Reason.MISSING_PARAMETER
    assert parameter in caught.value.detail


def test_unknown_keyid(harness: Harness) -> None:
    stranger = harness.signer(generate_key("ed25519"), "other-tenant-key")
    assert reason_of(harness, harness.sign(stranger)) is Reason.UNKNOWN_KEY


def test_known_keyid_with_other_key_material_is_a_bad_signature(harness: Harness) -> None:
    impostor = harness.signer(generate_key("ed25519"), "ed-1")
    assert reason_of(harness, harness.sign(impostor)) is Reason.BAD_SIGNATURE


def test_alg_must_match_the_key(harness: Harness) -> None:
    headers = harness.sign()
    sig_input = dict(headers)["Signature-Input"].replace('alg="ed25519"', 'alg="ecdsa-p256-sha256"')
    tampered = replace_header(headers, "signature-input", sig_input)
    assert reason_of(harness, tampered) is Reason.ALG_MISMATCH


def test_key_outside_its_window_is_not_active(harness: Harness) -> None:
    harness.saas_clock.now += 86400 + 1  # past not_after of every pinned key
    assert reason_of(harness, harness.sign()) is Reason.KEY_NOT_ACTIVE


def test_replay_is_refused_and_first_use_is_not_affected(harness: Harness) -> None:
    headers = harness.sign()
    assert isinstance(harness.verify(headers), VerifiedRequest)
    assert reason_of(harness, headers) is Reason.REPLAY


def test_same_nonce_under_another_key_is_independent(harness: Harness) -> None:
    assert isinstance(harness.verify(harness.sign(harness.ed, nonce="n-1")), VerifiedRequest)
    assert isinstance(harness.verify(harness.sign(harness.ec, nonce="n-1")), VerifiedRequest)


def test_replay_cache_full_is_503_and_clears_when_entries_expire(
    make_harness: Callable[..., Harness],
) -> None:
    harness = make_harness(max_entries=2)
    harness.verify(harness.sign())
    harness.verify(harness.sign())
    with pytest.raises(SignatureError) as caught:
        harness.verify(harness.sign())
    assert caught.value.reason is Reason.REPLAY_CACHE_FULL
    assert caught.value.status == 503
    harness.saas_clock.now += 60 + 30 + 1  # the first two windows (expires, + skew) are over
    assert isinstance(harness.verify(harness.sign()), VerifiedRequest)


def test_closed_replay_cache_is_503(harness: Harness) -> None:
    harness.cache.close()
    with pytest.raises(SignatureError) as caught:
        harness.verify(harness.sign())
    assert caught.value.reason is Reason.REPLAY_CACHE_CLOSED
    assert caught.value.status == 503


def test_oversized_signature_fields_are_431(harness: Harness) -> None:
    headers = harness.sign()
    huge = replace_header(headers, "signature", "eid=:" + "A" * 100_000 + ":")
    with pytest.raises(SignatureError) as caught:
        harness.verify(huge)
    assert caught.value.reason is Reason.HEADERS_TOO_LARGE
    assert caught.value.status == 431
    many = headers + [(f"x-filler-{i}", "x") for i in range(300)]
    assert reason_of(harness, many) is Reason.HEADERS_TOO_LARGE


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s.replace('"@method"', '"@METHOD"'),
        lambda s: s.replace('"x-gateway-id"', '"X-Gateway-Id"'),
        lambda s: s.replace('"@path"', '"@path" "@path"'),
        lambda s: s.replace('"@path"', '"@status"'),
        lambda s: s.replace('"@path"', '"@unknown"'),
        lambda s: s.replace('"@path"', '"@path";req'),
        lambda s: s.replace("eid=(", "eid=(("),
        lambda s: s.replace(";tag=", ";foo=1;tag="),
        lambda s: s + ';tag="gateway-request"',
        lambda s: s.replace("created=", "created=-"),
        lambda s: s.replace("created=", 'created="').replace(";keyid", '";keyid'),
        lambda s: s + ', other=("@method")',
        lambda s: s + ", " + s,
    ],
)
def test_malformed_signature_input(harness: Harness, mutate: object) -> None:
    headers = harness.sign()
    sig_input = mutate(dict(headers)["Signature-Input"])  # type: ignore[operator]
    reason = reason_of(harness, replace_header(headers, "signature-input", sig_input))
    assert reason is Reason.MALFORMED_SIGNATURE


def test_too_many_components_is_malformed(harness: Harness) -> None:
    headers = harness.sign()
    extra = " ".join(f'"x-f{i}"' for i in range(20))
    sig_input = dict(headers)["Signature-Input"].replace(
        '"x-gateway-id"', f'"x-gateway-id" {extra}'
    )
    assert (
        reason_of(harness, replace_header(headers, "signature-input", sig_input))
        is Reason.MALFORMED_SIGNATURE
    )


def test_covered_header_absent_is_missing_component(harness: Harness) -> None:
    headers = harness.sign(body=BODY)
    assert reason_of(harness, without(headers, "content-digest"), body=BODY) is (
        Reason.MISSING_COMPONENT
    )


def test_signature_fields_split_over_several_lines_are_combined(harness: Harness) -> None:
    # A second, unrelated signature on its own field lines (RFC 9110 section 5.3 combining).
    other = harness.signer(harness.ec_key, "ec-1", tag="another-app").sign(
        method="GET", authority=AUTHORITY, path=PATH, query="expand=1"
    )
    ours = harness.sign()
    extra = [
        ("Signature-Input", dict(other)["Signature-Input"].replace("eid=", "b=")),
        ("Signature", dict(other)["Signature"].replace("eid=", "b=")),
    ]
    assert isinstance(harness.verify(ours + extra), VerifiedRequest)


def test_key_rotation_and_revocation(harness: Harness) -> None:
    new_key = generate_key("ed25519")
    new_signer = harness.signer(new_key, "ed-2")
    assert reason_of(harness, harness.sign(new_signer)) is Reason.UNKNOWN_KEY
    # Refresh: new key added, old key kept until its not_after, the P-256 key revoked (absent).
    rotated = [
        harness.keyset(("ed-1", harness.ed_key), lifetime=120)["ed-1"],
        harness.keyset(("ed-2", new_key))["ed-2"],
    ]
    harness.verifier.replace_keys(KeySet(rotated))
    assert isinstance(harness.verify(harness.sign(new_signer)), VerifiedRequest)
    assert isinstance(harness.verify(harness.sign(harness.ed)), VerifiedRequest)
    assert reason_of(harness, harness.sign(harness.ec)) is Reason.UNKNOWN_KEY
    harness.saas_clock.now += 121
    assert reason_of(harness, harness.sign(harness.ed)) is Reason.KEY_NOT_ACTIVE
    assert isinstance(harness.verify(harness.sign(new_signer)), VerifiedRequest)


def test_systematic_clock_skew_is_reported_with_offset(harness: Harness) -> None:
    harness.gateway_offset = 180.0  # the gateway's clock runs 3 minutes fast
    reasons = []
    for _ in range(4):
        with pytest.raises(SignatureError) as caught:
            harness.verify(harness.sign())
        reasons.append(caught.value.reason)
    assert reasons[0] is Reason.EXPIRED  # one late request is no evidence of a clock problem
    assert reasons[-1] is Reason.CLOCK_SKEW
    assert caught.value.clock_offset == pytest.approx(180, abs=1)
    assert "ahead" in caught.value.detail
    estimate = harness.verifier.clock_skew()
    assert estimate is not None
    assert estimate.systematic
    # Clock corrected: accepted again at once, and the estimate recovers.
    harness.gateway_offset = 0.0
    for _ in range(9):
        assert isinstance(harness.verify(harness.sign()), VerifiedRequest)
    estimate = harness.verifier.clock_skew()
    assert estimate is not None
    assert not estimate.systematic


def test_forged_timestamps_never_feed_the_skew_estimate(harness: Harness) -> None:
    impostor = harness.signer(generate_key("ed25519"), "ed-1")
    for _ in range(5):
        headers = harness.sign(impostor, created=int(harness.saas_clock.now) - 600)
        assert reason_of(harness, headers) is Reason.BAD_SIGNATURE
    assert harness.verifier.clock_skew() is None


def test_verifier_rejects_bad_configuration(harness: Harness) -> None:
    with pytest.raises(ValueError, match="hc_path"):
        SignatureVerifier(harness.keys, harness.cache, gateway_id=GATEWAY_ID, hc_path="/hc/")
