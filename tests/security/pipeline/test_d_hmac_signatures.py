"""Catalogue D with ``signatures.hmac_sha256``: this gateway's own symmetric key (RFC 9421
section 3.3.3), handed out and rotated by the control plane over mTLS.

The agent fetches its key from the control-plane simulator at start (real mTLS on loopback),
stores it 0600 beside its identity key, and accepts requests EmpowerID signs with it, beside the
Ed25519 key. A rotation keeps the outgoing key valid for its overlap window, so requests signed
just before it still verify; a key past its window, another gateway's key and a public key
misused as an HMAC secret are refused; turning the option off removes the key from the verifier
and the disk at once; the secret is never logged.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.devkit.saas import SaaSResponse
from gateway.devkit.signing import RequestSigner
from gateway.identity.store import REQUEST_SECRETS_FILE
from tests.integration.relay.listener_support import wait_until
from tests.security.pipeline.conftest import GATEWAY_ID, PipelineEnv

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def gateway_sections() -> dict[str, Any]:
    """The baseline sections plus ``signatures.hmac_sha256: true``."""
    return {
        "limits": {"request_timeout_seconds": 3, "connect_timeout_seconds": 1},
        "signatures": {"hmac_sha256": True},
    }


def state_dir(env: PipelineEnv) -> Path:
    loaded = env.agent.runtime().loaded
    return loaded.resolve_path(loaded.config.gateway.state_dir)


async def send_signed(env: PipelineEnv, signer: RequestSigner | None = None) -> SaaSResponse:
    """GET /api/orders on erp, signed with the gateway's current HMAC key (or ``signer``)."""
    async with env.stack.saas(hmac=True) as saas:
        if signer is not None:
            saas.signer = signer
        response, _ = await saas.request("GET", "erp", "/api/orders")
    return response


async def test_a_request_signed_with_the_gateways_hmac_key_is_forwarded(env: PipelineEnv) -> None:
    response = await send_signed(env)
    assert response.status == 200, response.body
    env.forwarded_once()


async def test_ed25519_signatures_still_verify_beside_hmac(env: PipelineEnv) -> None:
    response = await env.send("GET", "erp", "/api/orders")
    assert response.status == 200, response.body


async def test_the_key_is_stored_like_the_identity_key(env: PipelineEnv) -> None:
    path = state_dir(env) / REQUEST_SECRETS_FILE
    mode = os.stat(path, follow_symlinks=False).st_mode
    assert stat.S_ISREG(mode)
    assert stat.S_IMODE(mode) == 0o600
    current = env.stack.controlplane.request_secret(GATEWAY_ID)
    assert current.keyid in path.read_text()


async def test_another_gateways_key_and_a_wrong_secret_are_refused(env: PipelineEnv) -> None:
    other = env.stack.controlplane.request_secret("another-gateway")
    foreign = RequestSigner(other.secret, keyid=other.keyid, gateway_id=GATEWAY_ID)
    response = await send_signed(env, foreign)
    assert (response.status, response.reason_code) == (401, "unknown_key")
    mine = env.stack.controlplane.request_secret(GATEWAY_ID)
    forged = RequestSigner(other.secret, keyid=mine.keyid, gateway_id=GATEWAY_ID)
    response = await send_signed(env, forged)
    assert (response.status, response.reason_code) == (401, "bad_signature")
    env.assert_never_forwarded()


async def test_a_public_key_cannot_be_used_as_an_hmac_secret(env: PipelineEnv) -> None:
    # Algorithm confusion: an HMAC made with the published Ed25519 key's bytes as the secret,
    # claimed under that key's id. The algorithm is the pinned key's, never the request's.
    published = env.stack.controlplane.signing_key.public_document()
    secret = published["public_key_pem"].encode()[:64]
    confused = RequestSigner(secret, keyid=published["keyid"], gateway_id=GATEWAY_ID)
    response = await send_signed(env, confused)
    assert (response.status, response.reason_code) == (401, "alg_mismatch")
    env.assert_never_forwarded()


async def test_a_rotation_keeps_the_outgoing_key_for_its_overlap_window(
    env: PipelineEnv, caplog: pytest.LogCaptureFixture
) -> None:
    simulator = env.stack.controlplane
    outgoing = simulator.request_secret(GATEWAY_ID)
    before = RequestSigner(outgoing.secret, keyid=outgoing.keyid, gateway_id=GATEWAY_ID)
    incoming = simulator.rotate_request_secret(GATEWAY_ID, overlap=dt.timedelta(minutes=5))
    with caplog.at_level(logging.DEBUG):
        await env.agent.refresh_keys()
    assert (await send_signed(env, before)).status == 200
    assert (await send_signed(env)).status == 200  # signed with the incoming key
    # The overlap ends (the control plane stops listing the key): refused after the refresh.
    newest = simulator.rotate_request_secret(GATEWAY_ID, overlap=dt.timedelta(0))
    with caplog.at_level(logging.DEBUG):
        await env.agent.refresh_keys()
    after = RequestSigner(incoming.secret, keyid=incoming.keyid, gateway_id=GATEWAY_ID)
    assert (await send_signed(env, after)).reason_code == "unknown_key"
    assert (await send_signed(env)).status == 200
    stored = (state_dir(env) / REQUEST_SECRETS_FILE).read_text()
    assert newest.keyid in stored
    assert incoming.keyid not in stored
    # No secret in any log record, in any form.
    for key in (outgoing, incoming, newest):
        for form in (base64.b64encode(key.secret).decode(), key.secret.hex()):
            assert all(form not in str(record.__dict__) for record in caplog.records)


async def test_turning_the_option_off_removes_the_key_at_once(env: PipelineEnv) -> None:
    document = yaml.safe_load(env.config.read_text())
    document["signatures"]["hmac_sha256"] = False
    env.config.write_text(yaml.safe_dump(document))
    path = state_dir(env) / REQUEST_SECRETS_FILE
    try:
        assert await env.agent.reload()
        await wait_until(lambda: not path.exists(), within=30)
        response = await send_signed(env)
        assert (response.status, response.reason_code) == (401, "unknown_key")
        env.assert_never_forwarded()
    finally:
        document["signatures"]["hmac_sha256"] = True
        env.config.write_text(yaml.safe_dump(document))
        assert await env.agent.reload()
        await wait_until(path.exists, within=30)
    assert (await send_signed(env)).status == 200
