"""Catalogue section D (signatures and replay), as far as the signature verifier decides it.

Numbers refer to docs/security-test-catalogue.md. What happens around the verifier (the request is
never forwarded, a metric is incremented, the HTTP answer the relay gets) belongs to the request
pipeline and is asserted by its tests; here every case checks the verifier's decision, its reason
code and its HTTP status. Item 78 restarts the replay cache for real: a child process accepts a
request and is then killed (or shut down cleanly), and a new process-level cache loads the state
from disk.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.auth import (
    DEFAULT_TAG,
    KeySet,
    Reason,
    ReplayCache,
    SignatureError,
    SignatureVerifier,
    VerifiedRequest,
)
from gateway.devkit.signing import RequestSigner, generate_key, key_entry, keyset_document
from tests.unit.auth.harness import (
    AUTHORITY,
    GATEWAY_ID,
    HC_PATH,
    PATH,
    Harness,
    handmade_signature,
)

BODY = b'{"name": "new account"}'
REQUIRED = ["@method", "@authority", "@path", "@query", "x-gateway-id"]


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path / "state")


def rejected(harness: Harness, headers: list[tuple[str, str]], **kwargs: object) -> SignatureError:
    with pytest.raises(SignatureError) as caught:
        harness.verify(headers, **kwargs)  # type: ignore[arg-type]
    return caught.value


def test_69_no_signature_headers_is_401_missing_signature(harness: Harness) -> None:
    error = rejected(harness, [("x-gateway-id", GATEWAY_ID), ("Accept", "application/json")])
    assert (error.status, error.reason) == (401, Reason.MISSING_SIGNATURE)


@pytest.mark.parametrize("omitted", [*REQUIRED, "content-digest"])
def test_71_signature_omitting_a_required_component_is_401(harness: Harness, omitted: str) -> None:
    if omitted == "content-digest":
        headers = harness.sign()  # signed without a body, then sent with one
    else:
        headers = harness.sign(components=[c for c in REQUIRED if c != omitted], body=BODY)
    error = rejected(harness, headers, body=BODY, method="POST")
    assert (error.status, error.reason) == (401, Reason.MISSING_COMPONENT)


def test_72_body_changed_after_signing_is_401(harness: Harness) -> None:
    headers = harness.sign(body=BODY)
    error = rejected(harness, headers, body=BODY.replace(b"new", b"evil"))
    assert (error.status, error.reason) == (401, Reason.DIGEST_MISMATCH)


def test_72_body_without_covered_content_digest_is_401(harness: Harness) -> None:
    headers = harness.sign(body=BODY, components=REQUIRED)
    # Strip content-digest from the covered list: the signature no longer verifies either way,
    # but the missing coverage is found first, before any cryptography.
    sig_input = dict(headers)["Signature-Input"].replace(' "content-digest"', "")
    headers = [(n, sig_input if n == "Signature-Input" else v) for n, v in headers]
    error = rejected(harness, headers, body=BODY)
    assert (error.status, error.reason) == (401, Reason.MISSING_COMPONENT)


def test_73_created_ten_minutes_old_is_expired(harness: Harness) -> None:
    error = rejected(harness, harness.sign(created=int(harness.saas_clock.now) - 600))
    assert (error.status, error.reason) == (401, Reason.EXPIRED)


def test_73_created_five_minutes_ahead_is_clock_skew(harness: Harness) -> None:
    error = rejected(harness, harness.sign(created=int(harness.saas_clock.now) + 300))
    assert (error.status, error.reason) == (401, Reason.CLOCK_SKEW)


def test_73_expires_in_the_past_is_401(harness: Harness) -> None:
    now = int(harness.saas_clock.now)
    error = rejected(harness, harness.sign(created=now - 45, expires=now - 35))
    assert (error.status, error.reason) == (401, Reason.EXPIRED)


@pytest.mark.parametrize("missing", ["created", "keyid"])
def test_74_created_or_keyid_missing_is_401_not_500(harness: Harness, missing: str) -> None:
    now = int(harness.saas_clock.now)
    params = {"created": str(now), "keyid": '"ed-1"', "nonce": '"n-74"', "tag": f'"{DEFAULT_TAG}"'}
    del params[missing]
    # A cryptographically valid signature, made by hand because the signing library always
    # writes both parameters.
    signature = handmade_signature(
        harness.ed_key,
        [
            ("@method", "GET"),
            ("@authority", AUTHORITY),
            ("@path", PATH),
            ("@query", "?expand=1"),
            ("x-gateway-id", GATEWAY_ID),
        ],
        "".join(f";{name}={value}" for name, value in params.items()),
    )
    error = rejected(harness, [("x-gateway-id", GATEWAY_ID), *signature])
    assert (error.status, error.reason) == (401, Reason.MISSING_PARAMETER)
    assert missing in error.detail


def test_75_unknown_keyid_is_401(harness: Harness) -> None:
    stranger = RequestSigner(
        generate_key(), keyid="eid-unknown", gateway_id=GATEWAY_ID, clock=harness.saas_clock
    )
    error = rejected(harness, harness.sign(stranger))
    assert (error.status, error.reason) == (401, Reason.UNKNOWN_KEY)


def test_75_keyid_of_another_tenants_key_set_is_401(harness: Harness) -> None:
    other_key = generate_key()
    now = harness.saas_clock.now
    other_tenant = KeySet.from_document(
        keyset_document([key_entry("tenant-b-1", other_key, not_before=0, not_after=now + 9e5)])
    )
    assert "tenant-b-1" in other_tenant
    assert "tenant-b-1" not in harness.verifier.keys
    signer = RequestSigner(
        other_key, keyid="tenant-b-1", gateway_id=GATEWAY_ID, clock=harness.saas_clock
    )
    error = rejected(harness, harness.sign(signer))
    assert (error.status, error.reason) == (401, Reason.UNKNOWN_KEY)
    # Same keyid spelling as one of ours, other tenant's key material: still refused.
    impostor = RequestSigner(
        other_key, keyid="ed-1", gateway_id=GATEWAY_ID, clock=harness.saas_clock
    )
    error = rejected(harness, harness.sign(impostor))
    assert (error.status, error.reason) == (401, Reason.BAD_SIGNATURE)


def test_77_same_signed_request_twice_is_accepted_once(harness: Harness) -> None:
    headers = harness.sign(body=BODY)
    outcomes: list[object] = []
    for _ in range(2):
        try:
            outcomes.append(harness.verify(headers, body=BODY))
        except SignatureError as error:
            outcomes.append(error.reason)
    assert isinstance(outcomes[0], VerifiedRequest)
    assert outcomes[1] is Reason.REPLAY


_CHILD = r"""
import json, os, signal, sys, time
from pathlib import Path
from gateway.auth import KeySet, ReplayCache, SignatureVerifier

state_dir, keys_json, request_json, shutdown = sys.argv[1:5]
request = json.loads(request_json)
cache = ReplayCache.open(Path(state_dir), max_entries=100, max_skew=30)
verifier = SignatureVerifier(KeySet.from_json(keys_json), cache, gateway_id=request["gateway_id"],
                             hc_path=request["hc_path"])
verifier.verify(method="GET", authority=request["authority"], path=request["path"],
                query=request["query"], headers=[tuple(h) for h in request["headers"]])
if shutdown == "clean":
    cache.close()
print("accepted", flush=True)
if shutdown == "crash":
    time.sleep(30)  # killed by the test long before this ends
"""


@pytest.mark.parametrize("shutdown", ["clean", "crash"])
def test_78_replay_after_a_real_restart_is_rejected(tmp_path: Path, shutdown: str) -> None:
    key = generate_key()
    now = time.time()
    keys_json = json.dumps(
        keyset_document([key_entry("ed-1", key, not_before=now - 60, not_after=now + 3600)])
    )
    signer = RequestSigner(key, keyid="ed-1", gateway_id=GATEWAY_ID)
    headers = signer.sign(method="GET", authority=AUTHORITY, path=PATH, query="expand=1")
    request = {
        "gateway_id": GATEWAY_ID,
        "hc_path": HC_PATH,
        "authority": AUTHORITY,
        "path": PATH,
        "query": "expand=1",
        "headers": headers,
    }
    state_dir = tmp_path / "state"
    ReplayCache.initialise(state_dir)
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(state_dir), keys_json, json.dumps(request), shutdown],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "accepted", child.stderr.read() if child.stderr else ""
        if shutdown == "crash":
            os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=20) in (0, -signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=5)
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()

    cache = ReplayCache.open(state_dir, max_entries=100, max_skew=30)
    assert cache.restored_cleanly is (shutdown == "clean")
    verifier = SignatureVerifier(
        KeySet.from_json(keys_json), cache, gateway_id=GATEWAY_ID, hc_path=HC_PATH
    )
    with pytest.raises(SignatureError) as caught:
        verifier.verify(
            method="GET", authority=AUTHORITY, path=PATH, query="expand=1", headers=headers
        )
    assert (caught.value.status, caught.value.reason) == (401, Reason.REPLAY)


def test_79_request_for_another_ha_instance_is_401(harness: Harness) -> None:
    headers = harness.sign()  # signed for agent-1 on /hc-agent-1/...
    other = SignatureVerifier(
        harness.keys,
        ReplayCache(max_entries=10, clock=harness.gateway_clock),
        gateway_id="agent-2",
        hc_path="hc-agent-2",
        clock=harness.gateway_clock,
    )
    for path in (PATH, PATH.replace("hc-agent-1", "hc-agent-2")):
        error = rejected(harness, headers, path=path, verifier=other)
        assert (error.status, error.reason) == (401, Reason.WRONG_GATEWAY)


def test_80_full_nonce_cache_is_503_evicts_nothing_and_clears(
    make_harness: Callable[..., Harness],
) -> None:
    harness = make_harness(max_entries=3)
    accepted = [harness.sign() for _ in range(3)]
    for headers in accepted:
        assert isinstance(harness.verify(headers), VerifiedRequest)
    error = rejected(harness, harness.sign())
    assert (error.status, error.reason) == (503, Reason.REPLAY_CACHE_FULL)
    for headers in accepted:  # every live entry is still there
        assert rejected(harness, headers).reason is Reason.REPLAY
    harness.saas_clock.now += 60 + 30 + 1
    assert isinstance(harness.verify(harness.sign()), VerifiedRequest)


@pytest.fixture
def make_harness(tmp_path: Path) -> Callable[..., Harness]:
    def make(**options: int) -> Harness:
        return Harness(tmp_path / "state", **options)

    return make


@pytest.mark.parametrize(
    ("name", "value", "status"),
    [
        ("Signature-Input", 'eid=("@method" "@path";created=1', 401),
        ("Signature-Input", 'eid=("@method"),,', 401),
        ("Signature-Input", 'eid=("@METHOD" "@AUTHORITY" "@PATH" "@QUERY" "X-GATEWAY-ID")', 401),
        ("Signature", "eid=:" + "A" * 100_000 + ":", 431),
        ("Signature", "eid=:not base64!:", 401),
    ],
)
def test_83_malformed_or_oversized_fields_are_rejected_without_a_trace(
    harness: Harness, caplog: pytest.LogCaptureFixture, name: str, value: str, status: int
) -> None:
    headers = [(n, value if n == name else v) for n, v in harness.sign()]
    caplog.set_level(logging.DEBUG)
    error = rejected(harness, headers)
    assert error.status == status
    assert error.reason in (Reason.MALFORMED_SIGNATURE, Reason.HEADERS_TOO_LARGE)
    assert caplog.records == []
    assert "A" * 100 not in str(error)


def test_85_fast_local_clock_is_reported_as_clock_skew_then_recovers(harness: Harness) -> None:
    harness.gateway_offset = 180.0
    errors = [rejected(harness, harness.sign()) for _ in range(3)]
    assert errors[-1].reason is Reason.CLOCK_SKEW
    assert errors[-1].clock_offset == pytest.approx(180, abs=1)
    health = harness.verifier.clock_skew()
    assert health is not None
    assert health.systematic
    assert health.offset == pytest.approx(180, abs=1)
    harness.gateway_offset = 0.0
    assert isinstance(harness.verify(harness.sign()), VerifiedRequest)


def test_87_key_rotation_and_revocation(harness: Harness) -> None:
    now = harness.saas_clock.now
    new_key = generate_key("ecdsa-p256-sha256")
    refresh = keyset_document(
        [
            key_entry("ed-1", harness.ed_key, not_before=now - 3600, not_after=now + 300),
            key_entry("eid-2", new_key, not_before=now - 1, not_after=now + 86400, form="jwk"),
        ]
    )  # "ec-1" is revoked: absent from the refresh
    new_signer = RequestSigner(
        new_key, keyid="eid-2", gateway_id=GATEWAY_ID, clock=harness.saas_clock
    )
    pending_revoked = harness.sign(harness.ec)
    harness.verifier.replace_keys(KeySet.from_json(json.dumps(refresh)))
    assert isinstance(harness.verify(harness.sign(new_signer)), VerifiedRequest)
    assert isinstance(harness.verify(harness.sign(harness.ed)), VerifiedRequest)
    assert rejected(harness, pending_revoked).reason is Reason.UNKNOWN_KEY
    harness.saas_clock.now += 301
    assert rejected(harness, harness.sign(harness.ed)).reason is Reason.KEY_NOT_ACTIVE
    assert isinstance(harness.verify(harness.sign(new_signer)), VerifiedRequest)


def test_88_websocket_connect_without_signature_is_refused(harness: Harness) -> None:
    connect_headers = [
        ("Host", AUTHORITY),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "l8fWd829IrZbEqUcLejv+Q=="),
        ("Sec-WebSocket-Version", "13"),
    ]
    error = rejected(harness, connect_headers, path=f"/$hc/{HC_PATH}", query="")
    assert (error.status, error.reason) == (401, Reason.MISSING_SIGNATURE)


def test_89_valid_relay_sas_without_message_signature_is_401(harness: Harness) -> None:
    # The relay accepted the sender's SAS token, so it reached us; a SAS is no substitute.
    headers = [
        ("Authorization", "SharedAccessSignature sr=x&sig=y&se=1&skn=RootManageSharedAccessKey"),
        ("x-gateway-id", GATEWAY_ID),
    ]
    error = rejected(harness, headers, body=BODY)
    assert (error.status, error.reason) == (401, Reason.MISSING_SIGNATURE)
