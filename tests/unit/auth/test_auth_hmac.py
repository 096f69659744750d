"""``hmac-sha256`` signatures (RFC 9421 section 3.3.3) with a gateway's own shared secret.

The secret never shows in a ``repr``; it can only be pinned as an ``hmac-sha256`` key, never
arrive in the public key-set document; the algorithm comes from the pinned key, so neither a
public key nor an HMAC key can be used with the other's algorithm; and the verifier agrees with
http-message-signatures' own HMAC verifier on every fuzzed request (accept and refuse).
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from http_message_signatures import algorithms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.auth import KeySet, SignatureError
from gateway.auth.keys import KeySetError, PinnedKey, SharedSecret, shared_key
from gateway.devkit.signing import RequestSigner, key_entry
from tests.unit.auth.harness import (
    AUTHORITY,
    GATEWAY_ID,
    PATH,
    QUERY,
    SEGMENT,
    T0,
    Harness,
    real_time_outcomes,
)

SECRET = bytes(range(32))


def hmac_harness(state_dir: Path, secret: bytes = SECRET, lifetime: float = 3600) -> Harness:
    """The usual harness whose verifier also pins ``hmac-1`` (``secret``)."""
    harness = Harness(state_dir)
    pinned = shared_key("hmac-1", secret, not_before=T0 - 60, not_after=T0 + lifetime)
    harness.verifier.replace_keys(harness.keys.with_keys([pinned]))
    return harness


def test_the_secret_never_shows_in_a_repr() -> None:
    key = shared_key("hmac-1", SECRET, not_before=0, not_after=1)
    for text in (repr(key), str(key), repr(KeySet([key])), repr(key.public_key)):
        assert SECRET.hex() not in text
        assert repr(SECRET) not in text
    assert isinstance(key.public_key, SharedSecret)
    assert key.public_key.reveal() == SECRET


@pytest.mark.parametrize("size", [0, 16, 31, 65, 128])
def test_keys_shorter_than_the_hash_or_longer_than_the_block_are_refused(size: int) -> None:
    with pytest.raises(KeySetError):
        SharedSecret(b"k" * size)


def test_the_public_document_cannot_carry_a_shared_secret() -> None:
    with pytest.raises(KeySetError, match="alg"):
        KeySet.from_document(
            {
                "keys": [
                    {
                        "keyid": "hmac-1",
                        "alg": "hmac-sha256",
                        "public_key_pem": "x",
                        "not_before": "2026-01-01T00:00:00Z",
                        "not_after": "2027-01-01T00:00:00Z",
                    }
                ]
            }
        )


def test_an_algorithm_is_bound_to_its_kind_of_key(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    public = harness.keys["ed-1"].public_key
    with pytest.raises(KeySetError):
        PinnedKey("x", "hmac-sha256", public, 0, 1)
    with pytest.raises(KeySetError):
        PinnedKey("x", "ed25519", SharedSecret(SECRET), 0, 1)


def test_a_request_signed_with_the_shared_secret_verifies(tmp_path: Path) -> None:
    harness = hmac_harness(tmp_path)
    signer = harness.signer(SECRET, "hmac-1")
    verified: Any = harness.verify(harness.sign(signer, body=b'{"a":1}'), body=b'{"a":1}')
    assert (verified.keyid, verified.alg, verified.body_verified) == ("hmac-1", "hmac-sha256", True)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong-secret", "bad_signature"),
        ("claims-ed25519", "alg_mismatch"),
        ("ed-keyid-with-hmac", "alg_mismatch"),
        ("expired", "key_not_active"),
    ],
)
def test_what_an_hmac_key_refuses(tmp_path: Path, case: str, reason: str) -> None:
    harness = hmac_harness(tmp_path)
    if case == "wrong-secret":
        signer = harness.signer(secrets.token_bytes(32), "hmac-1")
        headers = harness.sign(signer)
    elif case == "claims-ed25519":
        # The package writes alg from its own algorithm class: sign with Ed25519 under the
        # HMAC key's id, so the request claims alg="ed25519" for a pinned hmac-sha256 key.
        headers = harness.sign(harness.signer(harness.ed_key, "hmac-1"))
    elif case == "ed-keyid-with-hmac":
        public_pem = key_entry("ed-1", harness.ed_key, not_before=0, not_after=1)
        confused = str(public_pem["public_key_pem"]).encode()[:64]
        headers = harness.sign(harness.signer(confused, "ed-1"))
    else:
        harness.saas_clock.now = T0 + 7200
        headers = harness.sign(harness.signer(SECRET, "hmac-1"))
    with pytest.raises(SignatureError) as caught:
        harness.verify(headers)
    assert str(caught.value.reason) == reason


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    segments=st.lists(SEGMENT, min_size=1, max_size=3),
    query=QUERY,
    body=st.one_of(st.none(), st.binary(max_size=64)),
    tamper=st.sampled_from(["none", "signature", "path", "secret"]),
)
def test_the_verifier_agrees_with_the_packages_hmac_verifier(
    segments: list[str], query: str, body: bytes | None, tamper: str
) -> None:
    # The package checks created and expires against the wall clock (it takes no clock), so
    # both sides use the real time here.
    now = float(int(time.time()))
    secret = SECRET if tamper != "secret" else bytes(reversed(SECRET))
    path = PATH + "/" + "/".join(segments)
    signer = RequestSigner(secret, keyid="hmac-1", gateway_id=GATEWAY_ID, clock=lambda: now)
    headers = signer.sign(
        method="POST" if body is not None else "GET",
        authority=AUTHORITY,
        path=path,
        query=query,
        body=body,
    )
    if tamper == "signature":
        headers = [
            (k, v.replace(v[5], "A" if v[5] != "A" else "B", 1) if k == "Signature" else v)
            for k, v in headers
        ]
    seen_path = path + "/x" if tamper == "path" else path
    pinned = shared_key("hmac-1", SECRET, not_before=now - 60, not_after=now + 3600)
    outcomes = real_time_outcomes(
        KeySet([pinned]),
        algorithms.HMAC_SHA256,
        SECRET,
        now,
        path=seen_path,
        query=query,
        headers=headers,
        body=body,
    )
    assert outcomes == (tamper == "none",) * 3
