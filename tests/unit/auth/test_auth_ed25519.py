"""Ed25519 by libsodium (the verifier's check) against OpenSSL (cryptography, the reference).

The verifier checks Ed25519 signatures with libsodium through PyNaCl; the reference path and the
signing package use cryptography's OpenSSL backend. The two agree on every signature an RFC 8032
signer makes, and libsodium refuses everything OpenSSL refuses. Where they differ, libsodium is the
stricter, and each such case is a test below that states the intended outcome (refused):

* a small-order public key A (any of the eight points of the torsion subgroup): OpenSSL accepts a
  signature with R the identity and S = 0 under it for one message in eight, libsodium refuses, and
  the key set refuses the key itself when it is loaded;
* a small-order R under an honest key (R the identity, S = h * a): OpenSSL accepts, libsodium
  refuses, and so does the gateway's verifier (the package's OpenSSL check would accept it);
* a non-canonical encoding of a small-order public key (y >= p, or x = 0 with the sign bit set):
  OpenSSL accepts the same forgery under it, libsodium and the key set refuse;
* a public key outside the prime-order subgroup (a key plus a torsion point): both libraries
  verify its cofactorless-valid signatures; the key set refuses the key at load.

A non-canonical S (S >= L) and a non-canonical R are refused by both. The curve arithmetic here
(affine twisted Edwards, RFC 8032 section 5.1) exists to build those inputs; it is checked
against the RFC 8032 section 7.1 test vectors, which it must reproduce byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

from gateway.auth import KeySet, KeySetError, PinnedKey, SignatureError
from gateway.auth.errors import Reason
from gateway.auth.verifier import _direct_check
from gateway.devkit.signing import keyset_document
from tests.unit.auth.harness import (
    GATEWAY_ID,
    Harness,
    handmade_signature,
    request_components,
)

# RFC 8032 section 5.1: the field, the curve constant d, the group order L.
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, -1, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
Point = tuple[int, int]
IDENTITY: Point = (0, 1)


def add(a: Point, b: Point) -> Point:
    # Section 5.1.4, affine form of the complete addition law (a = -1).
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    return (
        (x1 * y2 + y1 * x2) * pow(1 + t, -1, P) % P,
        (y1 * y2 + x1 * x2) * pow(1 - t, -1, P) % P,
    )


def mul(k: int, point: Point) -> Point:
    result = IDENTITY
    while k:
        if k & 1:
            result = add(result, point)
        point = add(point, point)
        k >>= 1
    return result


def x_for(y: int, sign: int) -> int | None:
    # Section 5.1.3, steps 2-4 (square root of u/v), without the y < p check of step 1 and
    # without refusing x = 0 with the sign bit set (step 4): a lax decoder.
    y %= P
    x2 = (y * y - 1) * pow(D * y * y + 1, -1, P) % P
    if x2 == 0:
        return 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P:
        return None
    return P - x if x & 1 != sign else x


def encode(point: Point) -> bytes:
    x, y = point
    return (y | (x & 1) << 255).to_bytes(32, "little")


def decode(encoded: bytes) -> Point | None:
    """The point an encoding names, canonical or not (what a lax decoder would take)."""
    number = int.from_bytes(encoded, "little")
    y = number & ((1 << 255) - 1)
    x = x_for(y, number >> 255)
    return None if x is None else (x, y % P)


_Y_BASE = 4 * pow(5, -1, P) % P
BASE: Point = (x_for(_Y_BASE, 0) or 0, _Y_BASE)


def _torsion_generator() -> Point:
    # L times any curve point lies in the torsion subgroup; the first of order 8 generates it.
    for y in itertools.count(2):
        x = x_for(y, 0)
        if x is not None:
            candidate = mul(L, (x, y))
            if mul(4, candidate) != IDENTITY:
                return candidate
    raise AssertionError("unreachable")


T8 = _torsion_generator()
TORSION = [mul(k, T8) for k in range(8)]


def challenge(r: bytes, a: bytes, message: bytes) -> int:
    # Section 5.1.7: h = SHA-512(R || A || M) as a little-endian integer, reduced mod L.
    return int.from_bytes(hashlib.sha512(r + a + message).digest(), "little") % L


def secret_scalar(seed: bytes) -> tuple[int, bytes]:
    # Section 5.1.5: the clamped first half of SHA-512(seed), and the second half (the prefix).
    digest = hashlib.sha512(seed).digest()
    scalar = int.from_bytes(digest[:32], "little") & ((1 << 254) - 8) | (1 << 254)
    return scalar, digest[32:]


def sign(seed: bytes, message: bytes) -> bytes:
    """Section 5.1.6 signing, to check this file's arithmetic against the vectors."""
    scalar, prefix = secret_scalar(seed)
    public = encode(mul(scalar, BASE))
    r = int.from_bytes(hashlib.sha512(prefix + message).digest(), "little") % L
    big_r = encode(mul(r, BASE))
    s = (r + challenge(big_r, public, message) * scalar) % L
    return big_r + s.to_bytes(32, "little")


def openssl_accepts(public: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def sodium_accepts(public: bytes, signature: bytes, message: bytes) -> bool:
    try:
        VerifyKey(public).verify(message, signature)
    except (CryptoError, ValueError):
        return False
    return True


def gateway_accepts(public: bytes, signature: bytes, message: bytes) -> bool:
    """What the verifier's prepared check decides, a key the key set refuses included."""
    try:
        key = PinnedKey("k", "ed25519", Ed25519PublicKey.from_public_bytes(public), 0.0, 1.0)
    except (KeySetError, ValueError):
        return False
    check = _direct_check(key)
    try:
        check(signature, message)
    except Exception:  # the verifier answers bad_signature for any failure of the check
        return False
    return True


def message_with(public: bytes, r: bytes) -> bytes:
    """The first of b"0", b"1", ... whose challenge under (R, A) is a multiple of 8, so that
    h * T is the identity for every torsion point T."""
    for n in itertools.count():
        message = str(n).encode()
        if challenge(r, public, message) % 8 == 0:
            return message
    raise AssertionError("unreachable")


# RFC 8032 section 7.1, TEST 1, TEST 2, TEST 3 and TEST SHA(abc): secret key, public key,
# message, signature.
RFC8032_VECTORS = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
        "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
    (
        "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b589"
        "09351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    ),
]


@pytest.mark.parametrize(("secret", "public", "message", "signature"), RFC8032_VECTORS)
def test_rfc8032_vectors_verify_on_both(
    secret: str, public: str, message: str, signature: str
) -> None:
    seed, pk, msg, sig = (bytes.fromhex(v) for v in (secret, public, message, signature))
    assert encode(mul(secret_scalar(seed)[0], BASE)) == pk
    assert sign(seed, msg) == sig
    assert openssl_accepts(pk, sig, msg)
    assert sodium_accepts(pk, sig, msg)
    assert gateway_accepts(pk, sig, msg)
    # One bit of the message, of R, of S or of the key changed: refused by both.
    for bad_pk, bad_sig, bad_msg in (
        (pk, sig, msg + b"\x00"),
        (pk, bytes([sig[0] ^ 1]) + sig[1:], msg),
        (pk, sig[:32] + bytes([sig[32] ^ 1]) + sig[33:], msg),
        (bytes([pk[0] ^ 1]) + pk[1:], sig, msg),
    ):
        assert not openssl_accepts(bad_pk, bad_sig, bad_msg)
        assert not gateway_accepts(bad_pk, bad_sig, bad_msg)


SEEDS = st.binary(min_size=32, max_size=32)
MESSAGES = st.binary(max_size=600)


@settings(max_examples=150, deadline=None)
@given(seed=SEEDS, message=MESSAGES)
def test_signatures_of_random_keys_and_messages_verify_on_both(seed: bytes, message: bytes) -> None:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    public = key.public_key().public_bytes_raw()
    signature = key.sign(message)
    assert openssl_accepts(public, signature, message)
    assert gateway_accepts(public, signature, message)


def listed_case(public: bytes, signature: bytes) -> str | None:
    """Which documented difference, if any, explains libsodium refusing what OpenSSL took."""
    if int.from_bytes(public, "little") & ((1 << 255) - 1) >= P or public != _canonical(public):
        return "non-canonical public key"
    point = decode(public)
    if point is not None and mul(8, point) == IDENTITY:
        return "small-order public key"
    if point is not None and mul(L, point) != IDENTITY:
        return "public key outside the prime-order subgroup"
    r = decode(signature[:32])
    if r is not None and mul(8, r) == IDENTITY:
        return "small-order R"
    return None


def _canonical(encoded: bytes) -> bytes | None:
    point = decode(encoded)
    return None if point is None else encode(point)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=SEEDS,
    message=MESSAGES,
    target=st.sampled_from(["signature", "public", "message", "random"]),
    bit=st.integers(min_value=0, max_value=511),
    junk=st.binary(min_size=64, max_size=64),
)
def test_what_openssl_refuses_libsodium_refuses(
    seed: bytes, message: bytes, target: str, bit: int, junk: bytes
) -> None:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    public = key.public_key().public_bytes_raw()
    signature = key.sign(message)
    if target == "signature":
        signature = _flip(signature, bit)
    elif target == "public":
        public = _flip(public, bit % 256)
    elif target == "message":
        message = _flip(message + b"\x00", bit % (8 * len(message) + 8))
    else:
        signature = junk
    openssl, gateway = (
        openssl_accepts(public, signature, message),
        gateway_accepts(public, signature, message),
    )
    if not openssl:
        assert not gateway
    elif not gateway:
        assert listed_case(public, signature) is not None


def _flip(data: bytes, bit: int) -> bytes:
    index, offset = divmod(bit, 8)
    return data[:index] + bytes([data[index] ^ (1 << offset)]) + data[index + 1 :]


# The listed cases, each refused by the gateway.


@pytest.mark.parametrize("k", range(8))
def test_a_small_order_public_key_is_refused(k: int) -> None:
    public = encode(TORSION[k])
    r = encode(IDENTITY)
    message = message_with(public, r)
    # [0]B = R + [h]A holds: R is the identity and h * A is too (h is a multiple of 8).
    signature = r + bytes(32)
    assert mul(challenge(r, public, message), TORSION[k]) == IDENTITY
    assert openssl_accepts(public, signature, message)  # OpenSSL takes it
    assert not sodium_accepts(public, signature, message)
    assert not gateway_accepts(public, signature, message)
    with pytest.raises(KeySetError, match="small-order or non-canonical"):
        PinnedKey("k", "ed25519", Ed25519PublicKey.from_public_bytes(public), 0.0, 1.0)


def _non_canonical_small_order() -> list[bytes]:
    # y + p for the small-order points whose y < 19 (y = 0: order 4; y = 1: the identity), and
    # x = 0 written with the sign bit set (the identity and the point of order 2).
    return [
        (0 + P).to_bytes(32, "little"),
        (1 + P).to_bytes(32, "little"),
        (1 | 1 << 255).to_bytes(32, "little"),
        ((P - 1) | 1 << 255).to_bytes(32, "little"),
    ]


@pytest.mark.parametrize("public", _non_canonical_small_order())
def test_a_non_canonical_small_order_public_key_is_refused(public: bytes) -> None:
    point = decode(public)
    assert point is not None
    assert mul(8, point) == IDENTITY
    assert encode(point) != public
    r = encode(IDENTITY)
    message = message_with(public, r)
    signature = r + bytes(32)
    assert openssl_accepts(public, signature, message)  # OpenSSL takes it
    assert not sodium_accepts(public, signature, message)
    assert not gateway_accepts(public, signature, message)


def test_a_non_canonical_encoding_of_any_point_is_refused_by_the_key_set() -> None:
    # y = p + y0 for a y0 < 19 that is not small-order: nobody can sign under it, but the key
    # set still refuses it when loaded rather than installing a key that can never verify.
    y0 = next(y for y in range(2, 19) if x_for(y, 0) is not None)
    public = (y0 + P).to_bytes(32, "little")
    entry: dict[str, object] = {
        "keyid": "eid-1",
        "alg": "ed25519",
        "jwk": {"kty": "OKP", "crv": "Ed25519", "x": _b64url(public)},
        "not_before": "2025-01-01T00:00:00Z",
        "not_after": "2026-01-01T00:00:00Z",
    }
    with pytest.raises(KeySetError, match="eid-1: ed25519 public key is not a canonical point"):
        KeySet.from_document(keyset_document([entry]))


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_a_small_order_key_in_a_key_set_document_is_refused_at_load() -> None:
    for form in ("jwk", "pem"):
        public = encode(TORSION[3])
        if form == "jwk":
            material: dict[str, object] = {
                "jwk": {"kty": "OKP", "crv": "Ed25519", "x": _b64url(public)}
            }
        else:
            pem = Ed25519PublicKey.from_public_bytes(public).public_bytes(
                Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
            )
            material = {"public_key_pem": pem.decode()}
        entry = {
            "keyid": "eid-1",
            "alg": "ed25519",
            **material,
            "not_before": "2025-01-01T00:00:00Z",
            "not_after": "2026-01-01T00:00:00Z",
        }
        with pytest.raises(KeySetError, match="small-order or non-canonical"):
            KeySet.from_document(keyset_document([entry]))


def test_a_public_key_outside_the_prime_order_subgroup_is_refused_at_load() -> None:
    seed = bytes(range(32))
    scalar, _ = secret_scalar(seed)
    point = add(mul(scalar, BASE), T8)
    public = encode(point)
    # A cofactorless-valid signature under A = aB + T: R = rB, S = r + h*a, with h a multiple
    # of 8 so that h * T vanishes. Both libraries verify it; the key set refuses the key.
    r = 12345
    big_r = encode(mul(r, BASE))
    message = message_with(public, big_r)
    signature = big_r + ((r + challenge(big_r, public, message) * scalar) % L).to_bytes(
        32, "little"
    )
    assert openssl_accepts(public, signature, message)
    assert sodium_accepts(public, signature, message)
    assert not gateway_accepts(public, signature, message)
    with pytest.raises(KeySetError, match="not a canonical point of the prime-order subgroup"):
        PinnedKey("k", "ed25519", Ed25519PublicKey.from_public_bytes(public), 0.0, 1.0)


def _identity_r_signature(seed: bytes, message: bytes) -> bytes:
    # R the identity and S = h * a: [S]B = R + [h]A holds, so the cofactorless check passes.
    scalar, _ = secret_scalar(seed)
    public = encode(mul(scalar, BASE))
    r = encode(IDENTITY)
    return r + (challenge(r, public, message) * scalar % L).to_bytes(32, "little")


def test_a_small_order_r_is_refused() -> None:
    seed = bytes(range(1, 33))
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    message = b"a signature base"
    signature = _identity_r_signature(seed, message)
    assert openssl_accepts(public, signature, message)  # OpenSSL takes it
    assert not sodium_accepts(public, signature, message)
    assert not gateway_accepts(public, signature, message)


class _IdentityRSigner:
    """Signs a base with R the identity (see _identity_r_signature): no honest signer does."""

    def __init__(self, seed: bytes) -> None:
        self.seed = seed

    def sign(self, base: bytes) -> bytes:
        return _identity_r_signature(self.seed, base)


def test_the_verifier_refuses_a_request_signed_with_a_small_order_r(
    harness: Harness, tmp_path: Path
) -> None:
    assert isinstance(harness.ed_key, Ed25519PrivateKey)
    seed = harness.ed_key.private_bytes_raw()
    now = int(harness.saas_clock.now)
    covered = request_components()
    params = f';created={now};keyid="ed-1";nonce="n-1";tag="gateway-request"'
    headers = [
        ("x-gateway-id", GATEWAY_ID),
        *handmade_signature(_IdentityRSigner(seed), covered, params),  # type: ignore[arg-type]
    ]
    with pytest.raises(SignatureError) as caught:
        harness.verify(headers)
    assert caught.value.reason is Reason.BAD_SIGNATURE
    # The deliberate difference from the reference path: the package's OpenSSL check takes it.
    reference = harness.reference_verifier(tmp_path / "reference")
    assert harness.verify(headers, verifier=reference).keyid == "ed-1"  # type: ignore[attr-defined]


def test_a_non_canonical_s_is_refused_by_both() -> None:
    seed = bytes(range(2, 34))
    key = Ed25519PrivateKey.from_private_bytes(seed)
    public = key.public_key().public_bytes_raw()
    message = b"base"
    signature = key.sign(message)
    s = int.from_bytes(signature[32:], "little")
    bad = signature[:32] + (s + L).to_bytes(32, "little")
    assert not openssl_accepts(public, bad, message)
    assert not gateway_accepts(public, bad, message)


def test_a_non_canonical_r_is_refused_by_both() -> None:
    # The identity written as y = p + 1, with S = h * a computed over those very bytes.
    seed = bytes(range(3, 35))
    scalar, _ = secret_scalar(seed)
    public = encode(mul(scalar, BASE))
    message = b"base"
    r = (1 + P).to_bytes(32, "little")
    signature = r + (challenge(r, public, message) * scalar % L).to_bytes(32, "little")
    assert not openssl_accepts(public, signature, message)
    assert not gateway_accepts(public, signature, message)


def test_a_signature_of_the_wrong_length_is_refused_by_both() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    public = key.public_key().public_bytes_raw()
    signature = key.sign(b"m")
    for bad in (signature[:63], signature + b"\x00", b""):
        assert not openssl_accepts(public, bad, b"m")
        assert not gateway_accepts(public, bad, b"m")
