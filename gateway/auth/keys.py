"""The pinned set of request-signing public keys of the SaaS, with validity windows.

The control plane delivers the key set at registration and on every registration refresh as a JSON
document (``schemas/signing-keys.schema.json``)::

    {"keys": [{"keyid": "eid-2025-01", "alg": "ed25519",
               "public_key_pem": "-----BEGIN PUBLIC KEY-----...",
               "not_before": "2025-01-01T00:00:00Z", "not_after": "2026-01-01T00:00:00Z"},
              {"keyid": "eid-2025-02", "alg": "ecdsa-p256-sha256",
               "jwk": {"kty": "EC", "crv": "P-256", "x": "...", "y": "..."},
               "not_before": "...", "not_after": "..."},
              {"keyid": "eid-hsm-01", "alg": "rsa-pss-sha512",
               "jwk": {"kty": "RSA", "n": "...", "e": "AQAB"},
               "not_before": "...", "not_after": "..."}]}

Rotation semantics: a document is the complete truth. During a rotation the control plane keeps
listing the outgoing key until its ``not_after`` while it adds the new one; a key absent from the
newest document is revoked and stops verifying the moment the new set is installed. A ``KeySet``
is immutable, so replacing the verifier's reference swaps the whole set atomically.

The public key document carries only Ed25519 (RFC 9421 section 3.3.6), ECDSA P-256 with
SHA-256 (section 3.3.4) and RSASSA-PSS with SHA-512 (section 3.3.1): asymmetric, and no shared
secret to leak from the on-premises host. RSA-PSS is there for a signer whose key lives in an
HSM that holds only RSA and EC keys (Azure Key Vault and Managed HSM have no Ed25519; their
``PS512`` is RSA-PSS with SHA-512 and a 64-byte salt, exactly ``rsa-pss-sha512``), and because
its check is the cheapest of the three for the gateway. An RSA key must have a modulus of 2048
to 8192 bits (below 2048 is no longer a safe key, NIST SP 800-131A; above 8192 only makes every
request's check dearer, and the bound keeps the work per request bounded) and the public
exponent 65537: every HSM and signing library uses it, a small exponent such as 3 is the classic
weakness behind forged signatures on careless verifiers, and a large one would make each check
cost as much as a private-key operation. RSASSA-PKCS1-v1_5 (``rsa-v1_5-sha256``) is not
offered: PSS has a security proof and randomised padding, and v1.5's deterministic padding is
what Bleichenbacher-style forgeries against lax parsers exploit (docs/security.md).

HMAC-SHA256 (section 3.3.3) is an option beside them (``signatures.hmac_sha256``): a per-gateway
symmetric key EmpowerID hands out over the mTLS control plane
(``GET request-secrets``), never through this document. :func:`shared_key` pins one; its secret
is held in a :class:`SharedSecret`, which never shows it in a ``repr`` or a log line. What the
option changes in the threat model is in docs/security.md.

An Ed25519 public key must be the canonical encoding of a point of the prime-order subgroup
(RFC 8032 section 5.1.3 decoding, and not one of the small-order points): the verifier checks
Ed25519 with libsodium, which refuses every signature under a small-order or non-canonical key,
so such a key is refused here, when the set is loaded, with a message that names it, rather than
installed to fail every request it signs. A key made as RFC 8032 section 5.1.5 says (the secret
scalar times the base point) always passes.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.errors import GatewayError

Algorithm = Literal["ed25519", "ecdsa-p256-sha256", "rsa-pss-sha512", "hmac-sha256"]
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey

ALGORITHMS: Final[tuple[Algorithm, ...]] = (
    "ed25519",
    "ecdsa-p256-sha256",
    "rsa-pss-sha512",
    "hmac-sha256",
)
# What a public key-set document may name: never the shared-secret algorithm.
PUBLIC_ALGORITHMS: Final[tuple[Algorithm, ...]] = (
    "ed25519",
    "ecdsa-p256-sha256",
    "rsa-pss-sha512",
)
_ALGORITHM_BY_NAME: Final[dict[str, Algorithm]] = {name: name for name in PUBLIC_ALGORITHMS}
# RFC 2104 section 3: a key shorter than the hash output (32 bytes for SHA-256) weakens HMAC;
# longer than the block size (64 bytes) it is hashed first and gains nothing.
MIN_SECRET_BYTES: Final = 32
MAX_SECRET_BYTES: Final = 64
# RSA moduli the key set takes (bits): see the module notes.
MIN_RSA_BITS: Final = 2048
MAX_RSA_BITS: Final = 8192
RSA_EXPONENT: Final = 65537
MAX_KEYS: Final = 32
MAX_DOCUMENT_BYTES: Final = 256 * 1024
# Key ids travel as Structured Field Strings (RFC 8941 section 3.3.3) inside Signature-Input; a
# conservative character set keeps them safe to log and to use as file and metric labels.
KEYID_PATTERN: Final = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
_RFC3339: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}"
    r"(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)

_KEY_FIELDS: Final = frozenset({"keyid", "alg", "public_key_pem", "jwk", "not_before", "not_after"})
_JWK_FIELDS: Final = {
    "ed25519": frozenset({"kty", "crv", "x", "kid"}),
    "ecdsa-p256-sha256": frozenset({"kty", "crv", "x", "y", "kid"}),
    "rsa-pss-sha512": frozenset({"kty", "n", "e", "kid"}),
}


class KeySetError(GatewayError):
    """A signing-key document or key cannot be used; the message names the offending field."""


class SharedSecret:
    """The symmetric key of an ``hmac-sha256`` signature (RFC 9421 section 3.3.3).

    Only :meth:`reveal` gives the bytes (to the HMAC computation and to the identity store's
    0600 file); ``repr`` and ``str`` never do, so a key set in a log line or a traceback shows
    no secret.
    """

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if not MIN_SECRET_BYTES <= len(secret) <= MAX_SECRET_BYTES:
            raise KeySetError(
                f"an hmac-sha256 key must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes"
            )
        self._secret = bytes(secret)

    def reveal(self) -> bytes:
        """The key bytes."""
        return self._secret

    def __repr__(self) -> str:
        return "SharedSecret(<redacted>)"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class PinnedKey:
    """One public key of the SaaS: its id, algorithm and validity window (Unix seconds)."""

    keyid: str
    alg: Algorithm
    public_key: PublicKey | SharedSecret
    """The verification key: a public key, or the shared secret of an ``hmac-sha256`` key."""
    not_before: float
    not_after: float

    def __post_init__(self) -> None:
        if not KEYID_PATTERN.fullmatch(self.keyid):
            raise KeySetError("keyid: must be 1-128 characters of A-Z a-z 0-9 . _ : / + = -")
        if self.alg not in ALGORITHMS:
            raise KeySetError(f"{self.keyid}: alg must be one of {', '.join(ALGORITHMS)}")
        _check_key_type(self.alg, self.public_key, self.keyid, self.keyid)
        if not self.not_before < self.not_after:
            raise KeySetError(f"{self.keyid}: not_before must be earlier than not_after")

    def active_at(self, when: float) -> bool:
        """Whether the key may verify a signature checked at ``when`` (Unix seconds)."""
        return self.not_before <= when < self.not_after


class KeySet(Mapping[str, PinnedKey]):
    """An immutable mapping ``keyid -> PinnedKey`` with at most ``MAX_KEYS`` entries."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[PinnedKey]) -> None:
        collected: dict[str, PinnedKey] = {}
        for key in keys:
            if key.keyid in collected:
                raise KeySetError(f"{key.keyid}: duplicate keyid")
            collected[key.keyid] = key
            if len(collected) > MAX_KEYS:
                raise KeySetError(f"keys: more than {MAX_KEYS} keys")
        self._keys = collected

    def __getitem__(self, keyid: str) -> PinnedKey:
        return self._keys[keyid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"KeySet({sorted(self._keys)!r})"

    def with_keys(self, keys: Iterable[PinnedKey]) -> KeySet:
        """This set plus ``keys`` (a key id may appear once in all)."""
        return KeySet([*self._keys.values(), *keys])

    @classmethod
    def from_json(cls, document: bytes | str) -> KeySet:
        """Parse and validate a key-set document (see the module docstring for the format)."""
        size = len(document.encode() if isinstance(document, str) else document)
        if size > MAX_DOCUMENT_BYTES:
            raise KeySetError(f"document: larger than {MAX_DOCUMENT_BYTES} bytes")
        try:
            parsed = json.loads(document)
        except (ValueError, RecursionError) as exc:
            raise KeySetError("document: not valid JSON") from exc
        return cls.from_document(parsed)

    @classmethod
    def from_document(cls, document: object) -> KeySet:
        """Validate an already decoded key-set document."""
        if not isinstance(document, dict) or set(document) != {"keys"}:
            raise KeySetError("document: must be an object with exactly the member 'keys'")
        entries = document["keys"]
        if not isinstance(entries, list) or not entries:
            raise KeySetError("keys: must be a non-empty array")
        if len(entries) > MAX_KEYS:
            raise KeySetError(f"keys: more than {MAX_KEYS} keys")
        return cls(_parse_entry(entry, f"keys[{index}]") for index, entry in enumerate(entries))


def _parse_entry(entry: object, where: str) -> PinnedKey:
    if not isinstance(entry, dict):
        raise KeySetError(f"{where}: must be an object")
    unknown = set(entry) - _KEY_FIELDS
    if unknown:
        raise KeySetError(f"{where}: unknown member(s) {', '.join(sorted(map(str, unknown)))}")
    keyid = _string(entry, "keyid", where)
    if not KEYID_PATTERN.fullmatch(keyid):
        raise KeySetError(f"{where}.keyid: must be 1-128 characters of A-Z a-z 0-9 . _ : / + = -")
    alg = _string(entry, "alg", where)
    algorithm = _ALGORITHM_BY_NAME.get(alg)
    if algorithm is None:
        raise KeySetError(f"{where}.alg: must be one of {', '.join(PUBLIC_ALGORITHMS)}")
    has_pem, has_jwk = "public_key_pem" in entry, "jwk" in entry
    if has_pem == has_jwk:
        raise KeySetError(f"{where}: exactly one of public_key_pem and jwk is required")
    if has_pem:
        public_key = _load_pem(_string(entry, "public_key_pem", where), algorithm, keyid, where)
    else:
        public_key = _load_jwk(entry["jwk"], algorithm, keyid, f"{where}.jwk")
    not_before = _timestamp(entry, "not_before", where)
    not_after = _timestamp(entry, "not_after", where)
    if not not_before < not_after:
        raise KeySetError(f"{where}: not_before must be earlier than not_after")
    return PinnedKey(keyid, algorithm, public_key, not_before, not_after)


def _string(entry: Mapping[str, object], name: str, where: str) -> str:
    value = entry.get(name)
    if not isinstance(value, str):
        raise KeySetError(f"{where}.{name}: required string")
    return value


def _timestamp(entry: Mapping[str, object], name: str, where: str) -> float:
    text = _string(entry, name, where)
    # RFC 3339 section 5.6 date-time with an explicit offset (a naive time would depend on the
    # host's zone); the same pattern as the schema, since fromisoformat alone accepts more forms.
    if not _RFC3339.fullmatch(text):
        raise KeySetError(f"{where}.{name}: RFC 3339 date-time with a time zone offset required")
    try:
        return datetime.fromisoformat(text.upper()).timestamp()
    except ValueError as exc:
        raise KeySetError(f"{where}.{name}: not an RFC 3339 date-time") from exc


def _load_pem(pem: str, alg: Algorithm, keyid: str, where: str) -> PublicKey:
    try:
        key = load_pem_public_key(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm) as exc:
        raise KeySetError(f"{where}.public_key_pem: not a PEM public key") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise KeySetError(f"{where}.public_key_pem: key type does not match alg {alg}")
    _check_key_type(alg, key, f"{where}.public_key_pem", keyid)
    return key


def _load_jwk(jwk: object, alg: Algorithm, keyid: str, where: str) -> PublicKey:
    # RFC 7517 / RFC 8037 (OKP Ed25519) / RFC 7518 section 6.2 (EC P-256) and 6.3.1 (RSA).
    # Private members such as "d" (or RSA's "p", "q", "dp", "dq", "qi", "oth") are refused
    # outright: a private key must never be shipped to the gateway.
    if not isinstance(jwk, dict):
        raise KeySetError(f"{where}: must be an object")
    unknown = set(jwk) - _JWK_FIELDS[alg]
    if unknown:
        raise KeySetError(f"{where}: member(s) not allowed: {', '.join(sorted(map(str, unknown)))}")
    if "kid" in jwk and jwk["kid"] != keyid:
        raise KeySetError(f"{where}.kid: differs from keyid")
    if alg == "ed25519":
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            raise KeySetError(f"{where}: ed25519 needs kty OKP and crv Ed25519")
        raw = _b64url(jwk.get("x"), 32, f"{where}.x")
        return ed25519.Ed25519PublicKey.from_public_bytes(raw)
    if alg == "rsa-pss-sha512":
        return _load_rsa_jwk(jwk, keyid, where)
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise KeySetError(f"{where}: ecdsa-p256-sha256 needs kty EC and crv P-256")
    x = int.from_bytes(_b64url(jwk.get("x"), 32, f"{where}.x"), "big")
    y = int.from_bytes(_b64url(jwk.get("y"), 32, f"{where}.y"), "big")
    try:
        # public_key() checks that the point lies on the curve.
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    except ValueError as exc:
        raise KeySetError(f"{where}: not a point on P-256") from exc


def _load_rsa_jwk(jwk: Mapping[str, object], keyid: str, where: str) -> rsa.RSAPublicKey:
    if jwk.get("kty") != "RSA":
        raise KeySetError(f"{where}: rsa-pss-sha512 needs kty RSA")
    # RFC 7518 section 6.3.1: n and e are Base64urlUInt, big-endian in the fewest octets
    # (section 2), so a leading zero octet is a malformed value, not another spelling. The
    # length bound on n comes before any arithmetic, so an oversized modulus costs nothing.
    n_raw = _b64url(jwk.get("n"), (1, MAX_RSA_BITS // 8), f"{where}.n of key {keyid}")
    e_raw = _b64url(jwk.get("e"), (1, 8), f"{where}.e of key {keyid}")
    for name, raw in (("n", n_raw), ("e", e_raw)):
        if raw[0] == 0:
            raise KeySetError(
                f"{where}.{name} of key {keyid}: has a leading zero octet (RFC 7518 section 2)"
            )
    exponent, modulus = int.from_bytes(e_raw, "big"), int.from_bytes(n_raw, "big")
    _check_rsa_numbers(exponent, modulus, where, keyid)
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()


def _check_rsa_numbers(exponent: int, modulus: int, where: str, keyid: str) -> None:
    """Refuse an RSA public key outside what the key set takes (see the module notes); the
    message names the key, so an operator knows which one the control plane must replace."""
    bits = modulus.bit_length()
    if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
        raise KeySetError(
            f"{where}: rsa-pss-sha512 key {keyid} has a {bits}-bit modulus; "
            f"{MIN_RSA_BITS} to {MAX_RSA_BITS} bits are accepted"
        )
    if exponent != RSA_EXPONENT:
        raise KeySetError(
            f"{where}: rsa-pss-sha512 key {keyid} has public exponent {exponent}; only "
            f"{RSA_EXPONENT} is accepted (what every HSM and signer uses; a small exponent is a "
            "classic weakness and a large one makes every check as dear as a private-key operation)"
        )
    if modulus % 2 == 0:
        # A product of two odd primes is odd: an even modulus is no RSA key at all.
        raise KeySetError(f"{where}: rsa-pss-sha512 key {keyid} has an even modulus")


def _b64url(value: object, length: int | tuple[int, int], where: str) -> bytes:
    """``value`` decoded from unpadded base64url: ``length`` bytes, or a ``(min, max)`` range."""
    low, high = (length, length) if isinstance(length, int) else length
    # The text length is checked before decoding: 4 characters carry 3 bytes.
    if (
        not isinstance(value, str)
        or len(value) > (high * 4 + 2) // 3
        or not re.fullmatch(r"[A-Za-z0-9_-]+", value)
    ):
        raise KeySetError(f"{where}: must be unpadded base64url of at most {high} bytes")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise KeySetError(f"{where}: must be unpadded base64url") from exc
    if not low <= len(raw) <= high:
        wanted = f"exactly {low}" if low == high else f"{low} to {high}"
        raise KeySetError(f"{where}: must encode {wanted} bytes")
    return raw


def shared_key(keyid: str, secret: bytes, *, not_before: float, not_after: float) -> PinnedKey:
    """A pinned ``hmac-sha256`` key: this gateway's own secret from the control plane."""
    return PinnedKey(keyid, "hmac-sha256", SharedSecret(secret), not_before, not_after)


def _check_key_type(alg: Algorithm, key: object, where: str, keyid: str) -> None:
    if alg == "hmac-sha256":
        ok = isinstance(key, SharedSecret)
    elif alg == "ed25519":
        ok = isinstance(key, ed25519.Ed25519PublicKey)
        if isinstance(key, ed25519.Ed25519PublicKey) and not _ed25519_point_ok(key):
            raise KeySetError(
                f"{where}: ed25519 public key is not a canonical point of the prime-order "
                "subgroup (small-order or non-canonical); libsodium would refuse every signature"
            )
    elif alg == "rsa-pss-sha512":
        ok = isinstance(key, rsa.RSAPublicKey)
        if isinstance(key, rsa.RSAPublicKey):
            numbers = key.public_numbers()
            _check_rsa_numbers(numbers.e, numbers.n, where, keyid)
    else:
        ok = isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    if not ok:
        raise KeySetError(f"{where}: key type does not match alg {alg}")


def _ed25519_point_ok(key: ed25519.Ed25519PublicKey) -> bool:
    """Whether libsodium takes ``key``: a canonical encoding of a point on the curve, in the
    prime-order subgroup and not of small order (``crypto_core_ed25519_is_valid_point``)."""
    # Imported here: only a gateway that pins an Ed25519 key pays for loading libsodium.
    from nacl.bindings import crypto_core_ed25519_is_valid_point

    return bool(crypto_core_ed25519_is_valid_point(key.public_bytes_raw()))
