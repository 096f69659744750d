"""``rsa-pss-sha512`` signatures (RFC 9421 section 3.3.1) under a pinned RSA public key.

The key set takes an RSA key in PEM or JWK form only with a 2048- to 8192-bit modulus and the
exponent 65537, and binds it to ``rsa-pss-sha512`` both ways; the verifier checks PSS with
MGF1-SHA-512 and exactly a 64-byte salt, refuses a signature that is not exactly as long as the
modulus (RFC 8017 section 8.1.2), and agrees with http-message-signatures' own RSA-PSS verifier on
every fuzzed request (accept, refuse, and the signature base it checked).
"""

from __future__ import annotations

import base64
import datetime
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from http_message_signatures import (
    HTTPMessageSigner,
    MappingKeyResolver,
    algorithms,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.auth import KeySet, KeySetError, SignatureError, SignatureVerifier
from gateway.auth.errors import Reason
from gateway.auth.keys import PinnedKey
from gateway.auth.verifier import DEFAULT_TAG, REQUIRED_COMPONENTS, VerifiedRequest
from gateway.devkit.signing import (
    RequestSigner,
    generate_key,
    key_entry,
    keyset_document,
    public_jwk,
)
from tests.unit.auth.harness import (
    AUTHORITY,
    GATEWAY_ID,
    PATH,
    QUERY,
    SEGMENT,
    T0,
    Harness,
    PackageRequest,
    handmade_signature,
    real_time_outcomes,
    request_components,
    rsa_key,
)
from tests.unit.auth.test_auth_keys import VALIDATOR, refused_by_loader_and_schema

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64)


@functools.cache
def rsa_3072() -> rsa.RSAPrivateKey:
    key = generate_key("rsa-pss-sha512", rsa_bits=3072)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def entry(keyid: str, key: Any, form: str = "pem") -> dict[str, Any]:
    return key_entry(keyid, key, not_before=T0 - 60, not_after=T0 + 3600, form=form)  # type: ignore[arg-type]


def pem_of(public: rsa.RSAPublicKey) -> str:
    return public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def b64url(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def load(*entries: dict[str, Any]) -> KeySet:
    return KeySet.from_json(json.dumps(keyset_document(entries)))


# -- the key set ----------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["pem", "jwk"])
@pytest.mark.parametrize("which", ["2048", "3072"])
def test_an_rsa_key_loads_in_both_forms(form: str, which: str) -> None:
    key = rsa_key() if which == "2048" else rsa_3072()
    doc = keyset_document([entry("hsm-1", key, form)])
    VALIDATOR.validate(doc)
    pinned = KeySet.from_document(doc)["hsm-1"]
    assert pinned.alg == "rsa-pss-sha512"
    assert isinstance(pinned.public_key, rsa.RSAPublicKey)
    assert pinned.public_key.public_numbers() == key.public_key().public_numbers()


def _modulus() -> int:
    return rsa_key().public_key().public_numbers().n


def _odd_modulus(bits: int) -> int:
    """An odd number of exactly ``bits`` bits: enough to test the loader's bounds, which come
    before any use of the key."""
    return (1 << (bits - 1)) | 0xF00D | 1


@pytest.mark.parametrize("form", ["pem", "jwk"])
@pytest.mark.parametrize(
    ("case", "numbers", "message"),
    [
        ("1024-bit", lambda: rsa.generate_private_key(65537, 1024).public_key(), "1024-bit"),
        ("2047-bit", lambda: rsa.RSAPublicNumbers(65537, _odd_modulus(2047)), "2047-bit"),
        ("8200-bit", lambda: rsa.RSAPublicNumbers(65537, _odd_modulus(8200)), "8200-bit"),
        ("exponent 3", lambda: rsa.RSAPublicNumbers(3, _modulus()), "exponent 3"),
        ("exponent 2**31-1", lambda: rsa.RSAPublicNumbers(2**31 - 1, _modulus()), "2147483647"),
    ],
)  # fmt: skip
def test_weak_or_oversized_rsa_keys_are_refused_at_load_naming_the_key(
    form: str, case: str, numbers: Any, message: str
) -> None:
    made = numbers()
    public = made if isinstance(made, rsa.RSAPublicKey) else made.public_key()
    key: dict[str, Any] = {"keyid": "weak-hsm-key", "alg": "rsa-pss-sha512"}
    if form == "pem":
        key["public_key_pem"] = pem_of(public)
    else:
        values = public.public_numbers()
        key["jwk"] = {"kty": "RSA", "n": b64url(values.n), "e": b64url(values.e)}
    key |= {"not_before": "2026-01-01T00:00:00Z", "not_after": "2027-01-01T00:00:00Z"}
    with pytest.raises(KeySetError) as caught:
        KeySet.from_document({"keys": [key]})
    assert "weak-hsm-key" in str(caught.value)
    # An oversized JWK modulus is refused by its encoded length, before it is decoded.
    expected = "at most 1024 bytes" if (form, case) == ("jwk", "8200-bit") else message
    assert expected in str(caught.value)
    if form == "jwk" and case != "2047-bit":
        # The schema states the same bounds, the modulus by its length in bytes (so a 2047-bit
        # modulus, 256 bytes, is only refused by the loader).
        assert not VALIDATOR.is_valid({"keys": [key]}), case


def test_an_even_modulus_is_refused() -> None:
    doc = keyset_document([entry("hsm-1", rsa_key(), "jwk")])
    modulus = rsa_key().public_key().public_numbers().n ^ 1
    doc["keys"][0]["jwk"]["n"] = b64url(modulus)  # type: ignore[index]
    with pytest.raises(KeySetError, match="even modulus"):
        KeySet.from_document(doc)


def _jwk_mutations() -> list[tuple[str, Any]]:
    def jwk_member(name: str, value: object) -> Any:
        return lambda d: d["keys"][0]["jwk"].update({name: value})

    n = rsa_key().public_key().public_numbers().n
    leading_zero = base64.urlsafe_b64encode(b"\x00" + n.to_bytes(256, "big")).rstrip(b"=")
    return [
        ("private member d", jwk_member("d", "AQAB")),
        ("private member p", jwk_member("p", "AQAB")),
        ("kty EC", jwk_member("kty", "EC")),
        ("leading zero in n", jwk_member("n", leading_zero.decode())),
        ("exponent with leading zero", jwk_member("e", "AAEAAQ")),
        ("padded n", jwk_member("n", b64url(n) + "=")),
        ("n not a string", jwk_member("n", 17)),
        ("declared ed25519", lambda d: d["keys"][0].update(alg="ed25519")),
        ("declared ecdsa-p256-sha256", lambda d: d["keys"][0].update(alg="ecdsa-p256-sha256")),
    ]


@pytest.mark.parametrize(("name", "mutate"), _jwk_mutations(), ids=[m[0] for m in _jwk_mutations()])
def test_bad_rsa_jwks_are_refused_by_loader_and_schema(name: str, mutate: Any) -> None:
    refused_by_loader_and_schema(keyset_document([entry("hsm-1", rsa_key(), "jwk")]), mutate, name)


@pytest.mark.parametrize(
    ("key", "alg"),
    [
        ("rsa", "ed25519"),
        ("rsa", "ecdsa-p256-sha256"),
        ("ed", "rsa-pss-sha512"),
        ("ec", "rsa-pss-sha512"),
    ],
)
def test_an_rsa_key_and_its_algorithm_are_bound_both_ways(key: str, alg: str) -> None:
    material = {
        "rsa": rsa_key(),
        "ed": generate_key("ed25519"),
        "ec": generate_key("ecdsa-p256-sha256"),
    }[key]
    doc = keyset_document([entry("k-1", material)])
    doc["keys"][0]["alg"] = alg  # type: ignore[index]
    with pytest.raises(KeySetError, match="does not match alg"):
        KeySet.from_document(doc)
    with pytest.raises(KeySetError):
        PinnedKey("k-1", alg, material.public_key(), T0, T0 + 1)  # type: ignore[arg-type]


def test_an_rsa_jwk_cannot_be_declared_as_another_algorithm() -> None:
    doc = keyset_document([entry("k-1", rsa_key(), "jwk")])
    doc["keys"][0]["alg"] = "ed25519"  # type: ignore[index]
    with pytest.raises(KeySetError, match="not allowed"):
        KeySet.from_document(doc)


def test_the_devkits_jwk_is_rfc_7518s() -> None:
    jwk = public_jwk(rsa_key())
    numbers = rsa_key().public_key().public_numbers()
    assert jwk == {"kty": "RSA", "n": b64url(numbers.n), "e": "AQAB"}


# -- verification ---------------------------------------------------------------------------------


def _both(harness: Harness, tmp_path: Path) -> list[SignatureVerifier]:
    return [harness.verifier, harness.reference_verifier(tmp_path / "reference")]


def _reason(harness: Harness, headers: list[tuple[str, str]], **options: Any) -> object:
    try:
        return harness.verify(headers, **options)
    except SignatureError as error:
        return error.reason


def _raw_signature(headers: list[tuple[str, str]]) -> bytes:
    return base64.b64decode(dict(headers)["Signature"].split(":")[1])


def _with_raw(headers: list[tuple[str, str]], raw: bytes) -> list[tuple[str, str]]:
    value = f"eid=:{base64.b64encode(raw).decode()}:"
    return [(n, value if n.lower() == "signature" else v) for n, v in headers]


@pytest.mark.parametrize("body", [None, b'{"order": 17}'])
def test_an_rsa_pss_signed_request_verifies(
    harness: Harness, tmp_path: Path, body: bytes | None
) -> None:
    for verifier in _both(harness, tmp_path):
        verified = harness.verify(
            harness.sign(harness.rsa, body=body), body=body, verifier=verifier
        )
        assert isinstance(verified, VerifiedRequest)
        assert (verified.keyid, verified.alg) == ("rsa-1", "rsa-pss-sha512")
        assert verified.body_verified == (body is not None)


def test_a_3072_bit_key_verifies_its_384_byte_signatures(tmp_path: Path) -> None:
    harness = Harness(tmp_path / "state")
    harness.verifier.replace_keys(
        harness.keys.with_keys(load(entry("rsa-3072", rsa_3072())).values())
    )
    headers = harness.sign(harness.signer(rsa_3072(), "rsa-3072"))
    assert len(_raw_signature(headers)) == 384
    verified = harness.verify(headers)
    assert isinstance(verified, VerifiedRequest)
    # A 2048-bit-long signature under the 3072-bit key is refused before OpenSSL runs.
    other = harness.sign(harness.signer(rsa_3072(), "rsa-3072"))
    assert _reason(harness, _with_raw(other, _raw_signature(other)[:256])) is Reason.BAD_SIGNATURE


def _signed_base(harness: Harness, params: str = "") -> tuple[list[tuple[str, str]], bytes, str]:
    """A GET the SaaS signs by hand with the RSA key: headers, signature base, parameters."""
    created = int(harness.saas_clock.now)
    params = params or (
        f';created={created};expires={created + 60};keyid="rsa-1";nonce="n-{created}"'
        f';alg="rsa-pss-sha512";tag="{DEFAULT_TAG}"'
    )
    components = request_components()
    headers = handmade_signature(harness.rsa_key, components, params)
    inner = " ".join(f'"{name}"' for name, _ in components)
    lines = [f'"{name}": {value}' for name, value in components]
    lines.append(f'"@signature-params": ({inner}){params}')
    return [*headers, ("x-gateway-id", GATEWAY_ID)], "\n".join(lines).encode(), params


def test_the_handmade_base_is_the_one_the_verifiers_check(harness: Harness, tmp_path: Path) -> None:
    headers, base, _ = _signed_base(harness)
    rsa_key().public_key().verify(_raw_signature(headers), base, PSS, hashes.SHA512())
    for verifier in _both(harness, tmp_path):
        assert isinstance(harness.verify(headers, verifier=verifier), VerifiedRequest)


def _pss(salt: Any, mgf: hashes.HashAlgorithm | None = None) -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(mgf or hashes.SHA512()), salt_length=salt)


V15 = padding.PKCS1v15()
ADVERSARIAL: dict[str, Callable[[rsa.RSAPrivateKey, bytes], bytes]] = {
    "salt of 32 bytes": lambda key, base: key.sign(base, _pss(32), hashes.SHA512()),
    "salt of maximal length": lambda key, base: key.sign(
        base, _pss(padding.PSS.MAX_LENGTH), hashes.SHA512()
    ),
    "no salt": lambda key, base: key.sign(base, _pss(0), hashes.SHA512()),
    "MGF1 with SHA-256": lambda key, base: key.sign(
        base, _pss(64, hashes.SHA256()), hashes.SHA512()
    ),
    "PSS over SHA-256": lambda key, base: key.sign(
        base, _pss(32, hashes.SHA256()), hashes.SHA256()
    ),
    "PKCS#1 v1.5 with SHA-512": lambda key, base: key.sign(base, V15, hashes.SHA512()),
    "PKCS#1 v1.5 with SHA-256": lambda key, base: key.sign(base, V15, hashes.SHA256()),
    "a byte short": lambda key, base: key.sign(base, PSS, hashes.SHA512())[:-1],
    "a byte long": lambda key, base: key.sign(base, PSS, hashes.SHA512()) + b"\x00",
    "a zero byte in front": lambda key, base: b"\x00" + key.sign(base, PSS, hashes.SHA512()),
    "the modulus itself": lambda key, base: _modulus().to_bytes(256, "big"),
    "all ones": lambda key, base: b"\xff" * 256,
    "zero": lambda key, base: bytes(256),
    "one": lambda key, base: (1).to_bytes(256, "big"),
    "64 bytes (Ed25519's size)": lambda key, base: key.sign(base, PSS, hashes.SHA512())[:64],
    "signature of another base": lambda key, base: key.sign(base + b" ", PSS, hashes.SHA512()),
}


@pytest.mark.parametrize("case", list(ADVERSARIAL))
def test_what_an_rsa_pss_key_refuses(harness: Harness, tmp_path: Path, case: str) -> None:
    headers, base, _ = _signed_base(harness)
    forged = _with_raw(headers, ADVERSARIAL[case](harness.rsa_key, base))
    for verifier in _both(harness, tmp_path):
        with pytest.raises(SignatureError) as caught:
            harness.verify(forged, verifier=verifier)
        assert caught.value.reason is Reason.BAD_SIGNATURE, case
    # The genuine signature of the same base still verifies: the refusal was the signature's.
    assert isinstance(harness.verify(headers), VerifiedRequest)


def test_a_signature_shorn_of_its_leading_zero_is_refused_though_openssl_takes_it(
    harness: Harness, tmp_path: Path
) -> None:
    # RFC 8017 section 8.1.2 step 1: the signature is exactly k octets. One signature in 256
    # begins with a zero octet; OpenSSL (so the package) takes it without that octet as the
    # same integer. No signer sends that, and the gateway refuses it: the one deliberate RSA
    # difference from the package (gateway/auth/verifier.py).
    for attempt in range(4096):
        params = f';created={int(T0)};keyid="rsa-1";nonce="z{attempt}";tag="{DEFAULT_TAG}"'
        headers, base, _ = _signed_base(harness, params)
        raw = _raw_signature(headers)
        if raw[0] == 0:
            break
    else:
        pytest.fail("no signature with a leading zero octet in 4096 tries")
    shorn = _with_raw(headers, raw[1:])
    rsa_key().public_key().verify(raw[1:], base, PSS, hashes.SHA512())  # OpenSSL takes it
    reference = harness.reference_verifier(tmp_path / "reference")
    assert isinstance(harness.verify(shorn, verifier=reference), VerifiedRequest)
    assert _reason(harness, shorn) is Reason.BAD_SIGNATURE
    assert isinstance(harness.verify(headers), VerifiedRequest)


def test_an_rsa_signature_for_an_ed25519_keyid_is_refused(harness: Harness, tmp_path: Path) -> None:
    # Key confusion (RFC 9421 section 7.3.6): the algorithm is the pinned key's, never the
    # request's, so an RSA signature named for the Ed25519 key cannot verify whatever it claims.
    created = int(T0)
    for alg, reason in (
        (';alg="rsa-pss-sha512"', Reason.ALG_MISMATCH),
        ("", Reason.BAD_SIGNATURE),
        (';alg="ed25519"', Reason.BAD_SIGNATURE),
    ):
        params = f';created={created};keyid="ed-1";nonce="c{len(alg)}"{alg};tag="{DEFAULT_TAG}"'
        headers, _, _ = _signed_base(harness, params)
        for verifier in _both(harness, tmp_path):
            with pytest.raises(SignatureError) as caught:
                harness.verify(headers, verifier=verifier)
            assert caught.value.reason is reason, alg


def test_other_keys_signatures_for_the_rsa_keyid_are_refused(
    harness: Harness, tmp_path: Path
) -> None:
    for key in (harness.ed_key, harness.ec_key):
        # The package writes the signing key's own alg: a mismatch with the pinned RSA key.
        headers = harness.sign(harness.signer(key, "rsa-1"))
        assert _reason(harness, headers) is Reason.ALG_MISMATCH
        # Without alg, the signature is checked as RSA-PSS, and fails.
        raw = _raw_signature(headers)
        params = f';created={int(T0)};keyid="rsa-1";nonce="o{len(raw)}";tag="{DEFAULT_TAG}"'
        own, _, _ = _signed_base(harness, params)
        for verifier in _both(harness, tmp_path):
            assert _reason(harness, _with_raw(own, raw), verifier=verifier) is Reason.BAD_SIGNATURE


# -- differential against the package --------------------------------------------------------------


class _RecordingPSS(algorithms.RSA_PSS_SHA512):
    """The package's RSA-PSS, remembering the signature base it was last given."""

    bases: ClassVar[list[bytes]] = []

    def sign(self, message: bytes) -> bytes:
        _RecordingPSS.bases.append(message)
        signature: bytes = super().sign(message)
        return signature

    def verify(self, signature: bytes, message: bytes) -> None:
        _RecordingPSS.bases.append(message)
        super().verify(signature, message)


TAMPERS = ["none", "flip", "path", "salt-32", "v1.5", "short", "long", "other-key", "alg-ed25519"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    segments=st.lists(SEGMENT, min_size=1, max_size=3),
    query=QUERY,
    body=st.one_of(st.none(), st.binary(max_size=64)),
    extra=st.sampled_from([(), ('"@query-param";name="x"',), ("content-type",)]),
    tamper=st.sampled_from(TAMPERS),
    where=st.integers(min_value=0, max_value=255),
)
def test_the_verifier_agrees_with_the_packages_rsa_pss_verifier(
    segments: list[str],
    query: str,
    body: bytes | None,
    extra: tuple[str, ...],
    tamper: str,
    where: int,
) -> None:
    # The package checks created and expires against the wall clock (it takes no clock), so
    # both sides use the real time here.
    now = float(int(time.time()))
    key = rsa_key()
    path = PATH + "/" + "/".join(segments)
    query = query + "&x=1" if extra and "@query-param" in extra[0] else query
    method = "POST" if body is not None else "GET"
    url = f"https://{AUTHORITY}{path}" + (f"?{query}" if query else "")
    headers = {"x-gateway-id": GATEWAY_ID, "Content-Type": "application/json"}
    request = PackageRequest(method, url, dict(headers))
    components = (*REQUIRED_COMPONENTS, *extra)
    alg = algorithms.ED25519 if tamper == "alg-ed25519" else _RecordingPSS
    signing_key = generate_key("ed25519") if tamper == "alg-ed25519" else key
    _RecordingPSS.bases.clear()
    HTTPMessageSigner(
        signature_algorithm=alg,
        key_resolver=MappingKeyResolver(public_keys={}, private_keys={"rsa-1": signing_key}),
    ).sign(
        request,
        key_id="rsa-1",
        created=datetime.datetime.fromtimestamp(now, tz=datetime.UTC),
        nonce=f"n{where}-{tamper}",
        label="eid",
        tag=DEFAULT_TAG,
        covered_component_ids=components,
        body=body,
    )
    signed = list(request.headers.items())
    if tamper != "alg-ed25519":
        (signed_base,) = _RecordingPSS.bases
        raw = _raw_signature(signed)
        replacement = {
            "flip": lambda: raw[:where] + bytes([raw[where] ^ 1]) + raw[where + 1 :],
            "salt-32": lambda: key.sign(signed_base, _pss(32), hashes.SHA512()),
            "v1.5": lambda: key.sign(signed_base, V15, hashes.SHA512()),
            "short": lambda: raw[: where % 256],
            "long": lambda: raw + raw[:where % 8 + 1],
            "other-key": lambda: rsa_3072().sign(signed_base, PSS, hashes.SHA512()),
        }.get(tamper)  # fmt: skip
        if replacement is not None:
            signed = _with_raw(signed, replacement())
    seen_path = path + "/x" if tamper == "path" else path
    _RecordingPSS.bases.clear()
    ours = real_time_outcomes(
        load(key_entry("rsa-1", key, not_before=now - 60, not_after=now + 3600)),
        _RecordingPSS,
        key.public_key(),
        now,
        path=seen_path,
        query=query,
        headers=signed,
        body=body,
        expect_tag=DEFAULT_TAG,
    )
    # "short" cuts the end off: never the leading zero octet OpenSSL would forgive (see
    # test_a_signature_shorn_of_its_leading_zero_is_refused_though_openssl_takes_it).
    assert ours == (tamper == "none",) * 3, (tamper, ours)
    if tamper in ("none", "flip", "salt-32", "v1.5", "short", "long", "other-key"):
        # The package checked the very base the signer signed; ours accepted exactly when the
        # signature verifies over that base, so the bases agree.
        (checked,) = _RecordingPSS.bases
        assert checked == signed_base
        try:
            key.public_key().verify(_raw_signature(signed), checked, PSS, hashes.SHA512())
            valid = True
        except (InvalidSignature, ValueError):
            valid = False
        assert valid == ours[0]


def test_ec_keys_of_another_curve_are_not_rsa(tmp_path: Path) -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(KeySetError):
        PinnedKey("k", "rsa-pss-sha512", other.public_key(), T0, T0 + 1)
    signer = RequestSigner(rsa_key(), keyid="rsa-1", gateway_id=GATEWAY_ID)
    assert signer.alg == "rsa-pss-sha512"
