"""Cost of verifying one relayed request's RFC 9421 signature (p50/p99, microseconds).

Cases: Ed25519, ECDSA P-256, RSA-PSS with SHA-512 (2048- and 3072-bit keys) and hmac-sha256 (the
gateway's own key, ``signatures.hmac_sha256``),
without a body and with a 1 KiB and a 64 KiB body (Content-Digest over the body included), each
against a warm replay cache already holding ``--prefill`` live nonces. Two rejection cases show
what a flood costs: malformed ``Signature-Input`` (refused before any cryptography) and a
well-formed signature by an unknown party under a pinned keyid (one failed verification). Requests
are signed beforehand; only ``SignatureVerifier.verify`` is timed.

Each case runs twice, back to back: with the verifier's fast paths (what the gateway runs) and
with ``reference=True`` (every field parsed and every component resolved by http-message-signatures
and http_sf), so the report shows what the fast paths save, measured side by side.

``--primitives`` times the cryptographic check alone instead, as the verifier calls it (each key's
check prepared once, the call timed over a 300-byte message): Ed25519 by libsodium and by OpenSSL,
ECDSA P-256, and RSA-PSS with SHA-512 at 2048, 3072 and 4096 bits.

Run: ``.venv/bin/python benchmarks/bench_signatures.py [--requests N] [--prefill N] [--primitives]``
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import secrets
import statistics
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from gateway.auth import (
    KeySet,
    ReplayCache,
    SignatureError,
    SignatureVerifier,
    VerifierSettings,
)
from gateway.auth.keys import shared_key
from gateway.devkit.signing import (
    PrivateKey,
    RequestSigner,
    generate_key,
    key_entry,
    keyset_document,
)

AUTHORITY = "contoso.servicebus.windows.net"
GATEWAY_ID = "agent-1"
HC_PATH = "hc-agent-1"
PATH = "/hc-agent-1/api/orders/17"
QUERY = "expand=lines"


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile of ``samples``."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


HMAC_SECRET = secrets.token_bytes(32)


def build_verifier(
    keys: dict[str, PrivateKey], state_dir: Path, prefill: int, reference: bool = False
) -> SignatureVerifier:
    """A verifier whose replay cache already holds ``prefill`` live nonces."""
    now = time.time()
    document = keyset_document(
        key_entry(keyid, key, not_before=now - 60, not_after=now + 3600)
        for keyid, key in keys.items()
    )
    # A generous max_age so that signing everything up front cannot make late requests stale.
    settings = VerifierSettings(max_age=3600, max_skew=30)
    ReplayCache.initialise(state_dir)
    cache = ReplayCache.open(state_dir, max_entries=prefill + 1_000_000, max_skew=30)
    for index in range(prefill):
        cache.admit("prefill", f"nonce-{index}", created=now, expires=now + 3600)
    # The gateway's own hmac-sha256 key (signatures.hmac_sha256), pinned beside the public ones.
    shared = shared_key("hmac", HMAC_SECRET, not_before=now - 60, not_after=now + 3600)
    return SignatureVerifier(
        KeySet.from_json(json.dumps(document)).with_keys([shared]),
        cache,
        gateway_id=GATEWAY_ID,
        hc_path=HC_PATH,
        settings=settings,
        reference=reference,
    )


def measure(
    verifier: SignatureVerifier,
    requests: list[list[tuple[str, str]]],
    body: bytes | None,
    expect_error: bool,
) -> list[float]:
    """Verification time of each request in microseconds."""
    method = "POST" if body is not None else "GET"
    samples: list[float] = []
    for headers in requests:
        start = time.perf_counter_ns()
        try:
            verifier.verify(
                method=method,
                authority=AUTHORITY,
                path=PATH,
                query=QUERY,
                headers=headers,
                body=body,
            )
            failed = False
        except SignatureError:
            failed = True
        samples.append((time.perf_counter_ns() - start) / 1000)
        if failed is not expect_error:
            raise SystemExit("benchmark request had an unexpected outcome")
    return samples


def primitives(count: int) -> None:
    """Time each signature algorithm's check alone (best of five rounds of ``count``)."""
    from nacl.signing import VerifyKey

    message = secrets.token_bytes(300)
    checks: list[tuple[str, Callable[[], object]]] = []
    ed = ed25519.Ed25519PrivateKey.generate()
    ed_signature = ed.sign(message)
    verify_key = VerifyKey(ed.public_key().public_bytes_raw())
    checks.append(("ed25519 (libsodium)", lambda: verify_key.verify(message, ed_signature)))
    ed_public = ed.public_key()
    checks.append(("ed25519 (OpenSSL)", lambda: ed_public.verify(ed_signature, message)))
    ecdsa = ec.ECDSA(hashes.SHA256())
    p256 = ec.generate_private_key(ec.SECP256R1())
    p256_signature, p256_public = p256.sign(message, ecdsa), p256.public_key()
    checks.append(("ecdsa-p256-sha256", lambda: p256_public.verify(p256_signature, message, ecdsa)))
    # RFC 9421 section 3.3.1, as gateway/auth/verifier.py prepares it once per key.
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64)
    sha512 = hashes.SHA512()
    for bits in (2048, 3072, 4096):
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        signature, public = key.sign(message, pss, sha512), key.public_key()

        def check(s: bytes = signature, k: rsa.RSAPublicKey = public) -> None:
            k.verify(s, message, pss, sha512)

        checks.append((f"rsa-pss-sha512 {bits}", check))
    print(f"The check alone, best of 5 x {count}; Python {platform.python_version()}")
    print()
    print("| algorithm | us per check |")
    print("| --- | ---: |")
    for name, call in checks:
        best = min(timeit.repeat(call, number=count, repeat=5)) / count
        print(f"| {name} | {best * 1e6:.1f} |")


def main() -> None:
    """Run every case and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per case")
    parser.add_argument("--prefill", type=int, default=10_000, help="live nonces in the cache")
    parser.add_argument(
        "--primitives", action="store_true", help="time each algorithm's check alone"
    )
    options = parser.parse_args()
    if options.primitives:
        primitives(options.requests)
        return

    keys: dict[str, PrivateKey] = {
        "ed": generate_key("ed25519"),
        "ec": generate_key("ecdsa-p256-sha256"),
        "rsa": generate_key("rsa-pss-sha512"),
        "rsa3072": generate_key("rsa-pss-sha512", rsa_bits=3072),
    }
    signers = {
        keyid: RequestSigner(key, keyid=keyid, gateway_id=GATEWAY_ID, expires_in=3600)
        for keyid, key in keys.items()
    }
    signers["hmac"] = RequestSigner(
        HMAC_SECRET, keyid="hmac", gateway_id=GATEWAY_ID, expires_in=3600
    )
    impostor = RequestSigner(generate_key("ed25519"), keyid="ed", gateway_id=GATEWAY_ID)
    bodies: dict[str, bytes | None] = {
        "none": None,
        "1 KiB": b"x" * 1024,
        "64 KiB": b"x" * 65536,
    }

    def signed(signer: RequestSigner, body: bytes | None) -> Callable[[], list[tuple[str, str]]]:
        return lambda: signer.sign(
            method="POST" if body is not None else "GET",
            authority=AUTHORITY,
            path=PATH,
            query=QUERY,
            headers=[("Content-Type", "application/json")],
            body=body,
        )

    def malformed() -> list[tuple[str, str]]:
        return [
            ("Signature-Input", 'eid=("@method" "@path";created=1'),
            ("Signature", "eid=:AAAA:"),
            (GATEWAY_ID, "x"),
        ]

    cases: list[tuple[str, str, Callable[[], list[tuple[str, str]]], bytes | None, bool]] = []
    for label, body in bodies.items():
        cases.append(("ed25519", label, signed(signers["ed"], body), body, False))
        cases.append(("ecdsa-p256-sha256", label, signed(signers["ec"], body), body, False))
        cases.append(("rsa-pss-sha512 2048", label, signed(signers["rsa"], body), body, False))
        cases.append(("rsa-pss-sha512 3072", label, signed(signers["rsa3072"], body), body, False))
        cases.append(("hmac-sha256", label, signed(signers["hmac"], body), body, False))
    cases.append(("reject: malformed", "none", malformed, None, True))
    cases.append(("reject: bad signature", "none", signed(impostor, None), None, True))

    with tempfile.TemporaryDirectory(prefix="bench-signatures-") as scratch:
        verifiers = {
            "fast": build_verifier(keys, Path(scratch) / "fast", options.prefill),
            "reference": build_verifier(
                keys, Path(scratch) / "reference", options.prefill, reference=True
            ),
        }
        rows = []
        for algorithm, body_label, make, body, expect_error in cases:
            p50: dict[str, float] = {}
            for name, verifier in verifiers.items():
                warmup = [make() for _ in range(200)]
                measure(verifier, warmup, body, expect_error)
                timed = [make() for _ in range(options.requests)]
                gc.collect()  # start each case without garbage left by signing the requests
                samples = measure(verifier, timed, body, expect_error)
                p50[name] = statistics.median(samples)
                if name == "fast":
                    p99, rate = percentile(samples, 0.99), 1e6 / statistics.mean(samples)
            rows.append((algorithm, body_label, p50["fast"], p99, rate, p50["reference"]))

    print(
        f"Signature verification, {options.requests} requests per case, replay cache prefilled "
        f"with {options.prefill} nonces; Python {platform.python_version()} on {platform.machine()}"
    )
    print()
    print(
        "| case | body | p50 (us) | p99 (us) | verifications/s (1 core) | "
        "p50 reference path (us) | fast / reference |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for algorithm, body_label, fast50, p99, rate, reference50 in rows:
        print(
            f"| {algorithm} | {body_label} | {fast50:.0f} | {p99:.0f} | {rate:,.0f} | "
            f"{reference50:.0f} | {fast50 / reference50:.2f} |"
        )


if __name__ == "__main__":
    main()
