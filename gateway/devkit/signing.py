"""The SaaS side of request signing, for tests, the demo and benchmarks.

``RequestSigner`` signs a relayed request exactly as the SaaS does (RFC 9421): it adds the
``x-gateway-id`` header, a ``Content-Digest`` (RFC 9530, SHA-256) when there is a body, and a
signature labelled ``eid`` with the application tag, ``created``, ``expires``, a random ``nonce``,
``keyid`` and ``alg``, covering ``@method @authority @path @query x-gateway-id`` (plus
``content-digest``). ``key_entry`` and ``keyset_document`` produce the key-set document the control
plane delivers (``schemas/signing-keys.schema.json``). Given the bytes of a gateway's shared
secret instead of a private key, it signs with ``hmac-sha256`` (RFC 9421 section 3.3.3), as
EmpowerID does for a gateway configured with ``signatures.hmac_sha256``; given an RSA private key,
with ``rsa-pss-sha512`` (section 3.3.1), as a signer whose key is held in Azure Key Vault or
Managed HSM does (Key Vault's ``PS512``).

Never imported by production code.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Literal

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from http_message_signatures import HTTPMessageSigner, MappingKeyResolver, algorithms

from gateway.auth.keys import Algorithm
from gateway.auth.verifier import DEFAULT_TAG, GATEWAY_ID_HEADER, REQUIRED_COMPONENTS

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
SigningMaterial = PrivateKey | bytes
"""A private key, or the bytes of a gateway's hmac-sha256 shared secret."""
SIGNATURE_LABEL = "eid"
RSA_BITS = 2048
"""The modulus of a generated RSA key: the smallest the gateway takes, and Key Vault's default."""

_ALGORITHM_CLASSES: dict[str, type[algorithms.HTTPSignatureAlgorithm]] = {
    "ed25519": algorithms.ED25519,
    "ecdsa-p256-sha256": algorithms.ECDSA_P256_SHA256,
    "rsa-pss-sha512": algorithms.RSA_PSS_SHA512,
    "hmac-sha256": algorithms.HMAC_SHA256,
}


def generate_key(alg: Algorithm = "ed25519", *, rsa_bits: int = RSA_BITS) -> PrivateKey:
    """A fresh private key for ``alg`` (``rsa_bits``: the modulus of an RSA key)."""
    if alg == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "rsa-pss-sha512":
        # 65537: the only public exponent the gateway takes (gateway/auth/keys.py).
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    if alg == "ecdsa-p256-sha256":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"{alg} has no private key (an hmac-sha256 key is a shared secret)")


def algorithm_of(key: SigningMaterial) -> Algorithm:
    """The RFC 9421 algorithm name for ``key``."""
    if isinstance(key, bytes):
        return "hmac-sha256"
    if isinstance(key, rsa.RSAPrivateKey):
        return "rsa-pss-sha512"
    return "ed25519" if isinstance(key, ed25519.Ed25519PrivateKey) else "ecdsa-p256-sha256"


class _Request:
    """The message shape the signing package works on."""

    def __init__(self, method: str, url: str, headers: dict[str, str]) -> None:
        self.method = method
        self.url = url
        self.headers = headers


class RequestSigner:
    """Signs requests for one gateway with one private key (or its hmac-sha256 secret)."""

    def __init__(
        self,
        private_key: SigningMaterial,
        *,
        keyid: str,
        gateway_id: str,
        tag: str = DEFAULT_TAG,
        expires_in: float | None = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``expires_in``: seconds from ``created`` to ``expires`` (``None``: no ``expires``)."""
        self.keyid = keyid
        self.alg = algorithm_of(private_key)
        self.gateway_id = gateway_id
        self._tag = tag
        self._expires_in = expires_in
        self._clock = clock
        self._signer = HTTPMessageSigner(
            signature_algorithm=_ALGORITHM_CLASSES[self.alg],
            key_resolver=MappingKeyResolver(public_keys={}, private_keys={keyid: private_key}),
        )

    def sign(
        self,
        *,
        method: str,
        authority: str,
        path: str,
        query: str = "",
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | None = None,
        created: int | None = None,
        expires: int | None = None,
        nonce: str | None = None,
        components: Sequence[str] = REQUIRED_COMPONENTS,
    ) -> list[tuple[str, str]]:
        """The request's headers with the signature headers added.

        ``created`` defaults to now, ``expires`` to ``created + expires_in``, ``nonce`` to 128
        random bits; ``components`` may be changed to produce deliberately deficient signatures
        (``content-digest`` is added whenever ``body`` is given, as the SaaS does).
        """
        fields: dict[str, str] = {}
        for name, value in headers:
            if name.lower() in {field.lower() for field in fields}:
                raise ValueError(f"duplicate header {name!r}")
            fields[name] = value
        if GATEWAY_ID_HEADER not in {name.lower() for name in fields}:
            fields[GATEWAY_ID_HEADER] = self.gateway_id
        created = int(self._clock()) if created is None else created
        if expires is None and self._expires_in is not None:
            expires = int(created + self._expires_in)
        url = f"https://{authority}{path}" + (f"?{query}" if query else "")
        request = _Request(method, url, fields)
        self._signer.sign(
            request,
            key_id=self.keyid,
            created=datetime.fromtimestamp(created, tz=UTC),
            expires=None if expires is None else datetime.fromtimestamp(expires, tz=UTC),
            nonce=secrets.token_urlsafe(16) if nonce is None else nonce,
            label=SIGNATURE_LABEL,
            tag=self._tag,
            covered_component_ids=tuple(components),
            body=body,
            # A caller-supplied Content-Digest is kept (and checked against the body if given).
            use_existing_digest="content-digest" in {name.lower() for name in fields},
        )
        return list(request.headers.items())


def public_jwk(key: PrivateKey) -> dict[str, str]:
    """The public half of ``key`` as a JWK (RFC 8037 OKP, RFC 7518 EC or RSA)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw)}
    if isinstance(key, rsa.RSAPrivateKey):
        public = key.public_key().public_numbers()
        # RFC 7518 section 6.3.1: n and e as Base64urlUInt, big-endian in the fewest octets.
        return {"kty": "RSA", "n": _b64url(_uint(public.n)), "e": _b64url(_uint(public.e))}
    numbers = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
    }


def key_entry(
    keyid: str,
    key: PrivateKey,
    *,
    not_before: float,
    not_after: float,
    form: Literal["pem", "jwk"] = "pem",
) -> dict[str, object]:
    """One entry of a key-set document for the public half of ``key`` (times in Unix seconds)."""
    entry: dict[str, object] = {"keyid": keyid, "alg": algorithm_of(key)}
    if form == "pem":
        pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        entry["public_key_pem"] = pem.decode("ascii")
    else:
        entry["jwk"] = public_jwk(key)
    entry["not_before"] = _rfc3339(not_before)
    entry["not_after"] = _rfc3339(not_after)
    return entry


def keyset_document(entries: Iterable[dict[str, object]]) -> dict[str, object]:
    """A key-set document as the control plane delivers it."""
    return {"keys": list(entries)}


def _uint(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _rfc3339(moment: float) -> str:
    return datetime.fromtimestamp(moment, tz=UTC).isoformat().replace("+00:00", "Z")
