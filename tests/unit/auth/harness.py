"""Test bed for sender authentication: keys, a key set, a replay cache, a verifier, signers.

Time is the one injected seam: a ``Clock`` the tests move by hand, shared by the signer (the SaaS's
clock) and, with an optional offset, the verifier (the gateway's clock). Used by the unit tests here
and by ``tests/security/test_signatures.py``.
"""

from __future__ import annotations

import base64
import functools
import json
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from http_message_signatures import (
    HTTPMessageVerifier,
    HTTPSignatureComponentResolver,
    MappingKeyResolver,
    algorithms,
)
from http_sf.compat import Item
from hypothesis import strategies as st

from gateway.auth import (
    KeySet,
    ReplayCache,
    SignatureError,
    SignatureVerifier,
    VerifiedRequest,
    VerifierSettings,
)
from gateway.devkit.signing import (
    PrivateKey,
    RequestSigner,
    SigningMaterial,
    generate_key,
    key_entry,
    keyset_document,
)

AUTHORITY = "contoso.servicebus.windows.net"
GATEWAY_ID = "agent-1"
HC_PATH = "hc-agent-1"
PATH = "/hc-agent-1/api/orders"
T0 = 1_750_000_000.0


@functools.cache
def rsa_key() -> rsa.RSAPrivateKey:
    """One RSA-PSS signing key (2048 bits) per test process: making one costs tens of ms."""
    key = generate_key("rsa-pss-sha512")
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


class Clock:
    """A settable clock: ``now`` Unix seconds, returned by calling the instance."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Harness:
    """One gateway's verifier plus the SaaS's signers, sharing a hand-moved clock."""

    def __init__(self, state_dir: Path, *, max_entries: int = 1000) -> None:
        self.saas_clock = Clock()
        self.gateway_offset = 0.0
        self.state_dir = state_dir
        self.ed_key = generate_key("ed25519")
        self.ec_key = generate_key("ecdsa-p256-sha256")
        self.rsa_key = rsa_key()
        self.settings = VerifierSettings(max_age=60, max_skew=30)
        self.keys = self.keyset(
            ("ed-1", self.ed_key), ("ec-1", self.ec_key), ("rsa-1", self.rsa_key)
        )
        ReplayCache.initialise(state_dir)
        self.cache = ReplayCache.open(
            state_dir, max_entries=max_entries, max_skew=30, clock=self.gateway_clock
        )
        self.verifier = SignatureVerifier(
            self.keys,
            self.cache,
            gateway_id=GATEWAY_ID,
            hc_path=HC_PATH,
            settings=self.settings,
            clock=self.gateway_clock,
        )
        self.ed = self.signer(self.ed_key, "ed-1")
        self.ec = self.signer(self.ec_key, "ec-1")
        self.rsa = self.signer(self.rsa_key, "rsa-1")

    def prime(self) -> None:
        """Let the verifier learn the signer's shapes (a GET, and a POST with a body) from
        authentic requests, as the gateway does from the SaaS's first requests.

        They are verified long before ``T0``: by then their nonces have left the replay memory
        and their clock offsets the skew estimate, so the test starts from the state it expects
        except for the shapes learnt.
        """
        now = self.saas_clock.now
        try:
            for moment, body in ((T0 - 2000, None), (T0 - 1000, b"{}")):
                self.saas_clock.now = moment
                assert isinstance(self.verify(self.sign(body=body), body=body), VerifiedRequest)
        finally:
            self.saas_clock.now = now

    def gateway_clock(self) -> float:
        return self.saas_clock.now + self.gateway_offset

    def reference_verifier(self, state_dir: Path) -> SignatureVerifier:
        """A verifier of the same keys and settings that uses only the package (no fast path),
        with a replay cache of its own in ``state_dir``."""
        ReplayCache.initialise(state_dir)
        cache = ReplayCache.open(state_dir, max_entries=1000, max_skew=30, clock=self.gateway_clock)
        return SignatureVerifier(
            self.verifier.keys,
            cache,
            gateway_id=GATEWAY_ID,
            hc_path=HC_PATH,
            settings=self.settings,
            clock=self.gateway_clock,
            reference=True,
        )

    def keyset(self, *pairs: tuple[str, PrivateKey], lifetime: float = 86400.0) -> KeySet:
        entries = [
            key_entry(keyid, key, not_before=T0 - 3600, not_after=T0 + lifetime)
            for keyid, key in pairs
        ]
        return KeySet.from_json(json.dumps(keyset_document(entries)))

    def signer(self, key: SigningMaterial, keyid: str, **options: object) -> RequestSigner:
        return RequestSigner(
            key,
            keyid=keyid,
            gateway_id=GATEWAY_ID,
            clock=self.saas_clock,
            **options,  # type: ignore[arg-type]
        )

    def sign(
        self, signer: RequestSigner | None = None, *, body: bytes | None = None, **options: object
    ) -> list[tuple[str, str]]:
        """Headers of a signed request to ``PATH?expand=1`` (POST with a body, GET without)."""
        return (signer or self.ed).sign(
            method="POST" if body is not None else "GET",
            authority=AUTHORITY,
            path=str(options.pop("path", PATH)),
            query=str(options.pop("query", "expand=1")),
            headers=[("Content-Type", "application/json")] if body is not None else [],
            body=body,
            **options,  # type: ignore[arg-type]
        )

    def verify(
        self,
        headers: list[tuple[str, str]],
        *,
        body: bytes | None = None,
        method: str | None = None,
        path: str = PATH,
        query: str = "expand=1",
        verifier: SignatureVerifier | None = None,
    ) -> object:
        return (verifier or self.verifier).verify(
            method=method or ("POST" if body is not None else "GET"),
            authority=AUTHORITY,
            path=path,
            query=query,
            headers=headers,
            body=body,
        )


def request_components(path: str = PATH, query: str = "?expand=1") -> list[tuple[str, str]]:
    """The components a signature of ``GET path?query`` covers, with their values, in the
    order the SaaS signs them (the verifier's required set, RFC 9421 section 2.2)."""
    return [
        ("@method", "GET"),
        ("@authority", AUTHORITY),
        ("@path", path),
        ("@query", query),
        ("x-gateway-id", GATEWAY_ID),
    ]


def handmade_signature(
    key: PrivateKey,
    components: list[tuple[str, str]],
    params: str,
    label: str = "eid",
) -> list[tuple[str, str]]:
    """Signature headers built by hand from the RFC 9421 section 2.5 signature base.

    Independent of the signing package, so tests can produce signatures it refuses to make
    (a weak digest, missing parameters) and cross-check its signature base.
    """
    inner = " ".join(f'"{name}"' for name, _ in components)
    signature_params = f"({inner}){params}"
    lines = [f'"{name}": {value}' for name, value in components]
    lines.append(f'"@signature-params": {signature_params}')
    base = "\n".join(lines).encode("ascii")
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(base, ec.ECDSA(hashes.SHA256())))
        raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    elif isinstance(key, rsa.RSAPrivateKey):
        # RFC 9421 section 3.3.1: PSS, MGF1 with SHA-512, a 64-byte salt.
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64)
        raw = key.sign(base, pss, hashes.SHA512())
    else:
        raw = key.sign(base)
    return [
        ("Signature-Input", f"{label}={signature_params}"),
        ("Signature", f"{label}=:{base64.b64encode(raw).decode()}:"),
    ]


class _Fields:
    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs

    def items(self) -> list[tuple[str, str]]:
        return self.pairs


class _Message:
    def __init__(self, method: str, url: str, headers: list[tuple[str, str]]) -> None:
        self.method = method
        self.url = url
        self.headers = _Fields(headers)


def package_components(
    method: str, authority: str, path: str, query: str, headers: list[tuple[str, str]],
    names: list[str],
) -> dict[str, str] | None:  # fmt: skip
    """The signing package's resolver values for ``https://{authority}{path}?{query}`` (the
    reference the verifier's fast path is held to), or ``None`` where it refuses the request or
    a component."""
    url = f"https://{authority}{path}" + (f"?{query}" if query else "")
    try:
        resolver = HTTPSignatureComponentResolver(_Message(method, url, headers))  # type: ignore[no-untyped-call]
        return {name: resolver.resolve(Item(name)) for name in names}
    except Exception:
        return None


# RFC 3986 pchar and query pieces (the signer signs only URLs in that grammar), for the
# differential tests against the package's own verifier.
_PIECES = ["a", "Z", "0", "-", ".", "_", "~", "%2F", "%41", "%20", "!", "$", "'", "*", ":", "@"]
SEGMENT = st.lists(st.sampled_from(_PIECES), min_size=1, max_size=6).map("".join)
QUERY = st.lists(st.sampled_from([*_PIECES, "=", "&", "+", "/", "?"]), max_size=8).map("".join)


class PackageRequest:
    """The message shape the signing package signs and verifies."""

    def __init__(self, method: str, url: str, headers: dict[str, str]) -> None:
        self.method = method
        self.url = url
        self.headers = headers


def real_time_outcomes(
    keys: KeySet,
    package_algorithm: type[algorithms.HTTPSignatureAlgorithm],
    package_key: Any,
    now: float,
    *,
    path: str,
    query: str,
    headers: list[tuple[str, str]],
    body: bytes | None,
    **package_options: Any,
) -> tuple[bool, bool, bool]:
    """Whether a verifier of ``keys`` with its fast paths, one using only the package, and the
    package's own ``HTTPMessageVerifier`` (``package_algorithm`` with ``package_key`` under the
    first key id, checking the Content-Digest against ``body``) accept the request ``POST``
    (with a body) or ``GET`` at ``now``.

    The package checks created and expires against the wall clock (it takes no clock), so the
    callers sign at the real time and pass it here.
    """
    method = "POST" if body is not None else "GET"
    ours: dict[bool, bool] = {}
    with tempfile.TemporaryDirectory() as state:
        ReplayCache.initialise(Path(state))
        cache = ReplayCache.open(Path(state), max_entries=100, max_skew=30, clock=lambda: now)
        for reference in (False, True):
            verifier = SignatureVerifier(
                keys,
                ReplayCache(max_entries=100) if reference else cache,
                gateway_id=GATEWAY_ID,
                hc_path=HC_PATH,
                clock=lambda: now,
                reference=reference,
            )
            try:
                verifier.verify(
                    method=method,
                    authority=AUTHORITY,
                    path=path,
                    query=query,
                    headers=headers,
                    body=body,
                )
                ours[reference] = True
            except SignatureError:
                ours[reference] = False
    url = f"https://{AUTHORITY}{path}" + (f"?{query}" if query else "")
    package = HTTPMessageVerifier(
        signature_algorithm=package_algorithm,
        key_resolver=MappingKeyResolver(
            public_keys={next(iter(keys)): package_key}, private_keys={}
        ),
    )
    try:
        package.verify(PackageRequest(method, url, dict(headers)), body=body, **package_options)
        theirs = True
    except Exception:
        theirs = False
    return ours[False], ours[True], theirs
