"""Catalogue section D (signatures and replay) through the full pipeline.

Requests are signed by the SaaS client with the control plane's request-signing key (pinned at
registration) or deliberately mis-signed; every refusal asserts 401 and its reason and that the
``erp`` stand-in received nothing. Items the pipeline adds nothing to beyond the verifier (80
nonce cache full, 85 clock-skew diagnostics, 87 key rotation) are pinned against the real verifier
and replay cache in tests/security/test_signatures.py; docs/security-results.md says so per row.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

import aiohttp
import pytest

from gateway.config import load
from gateway.devkit.signing import RequestSigner, generate_key
from gateway.errors import ConfigError
from gateway.service import Agent
from tests.security.pipeline.conftest import LISTENERS, START_TIMEOUT, PipelineEnv

pytestmark = pytest.mark.asyncio(loop_scope="module")

PATH = "/api/orders"
COMPONENTS = ("@method", "@authority", "@path", "@query", "x-gateway-id")


def relay_path(env: PipelineEnv, hc: str | None = None) -> str:
    return f"/{hc or env.stack.hc}/erp{PATH}"


def signer(env: PipelineEnv) -> RequestSigner:
    key = env.stack.controlplane.signing_key
    return RequestSigner(key.private_key, keyid=key.keyid, gateway_id=env.stack.gateway_id)


def sign(env: PipelineEnv, *, body: bytes | None = None, **kwargs: object) -> list[tuple[str, str]]:
    return signer(env).sign(
        method="POST" if body else "GET",
        authority=env.stack.saas().namespace,
        path=relay_path(env),
        body=body,
        **kwargs,  # type: ignore[arg-type]
    )


def refused_count(env: PipelineEnv, reason: str) -> float:
    for metric in env.agent.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "gateway_requests_total" and sample.labels.get("reason") == reason:
                return float(sample.value)
    return 0.0


async def send(
    env: PipelineEnv, headers: list[tuple[str, str]], body: bytes = b""
) -> tuple[int, str]:
    async with env.saas() as saas:
        response, _ = await saas.request(
            "POST" if body else "GET", "erp", PATH, signed_headers=headers, body=body
        )
    return response.status, response.reason_code


async def test_D69_D89_unsigned_request_with_a_valid_sas_is_401(env: PipelineEnv) -> None:
    # The relay accepted the sender's SAS token (a leaked Send key would do that, item 89); the
    # message signature is what the gateway trusts.
    before = refused_count(env, "missing_signature")
    async with env.saas(signed=False) as saas:
        response, _ = await saas.request("GET", "erp", PATH)
    assert (response.status, response.reason_code) == (401, "missing_signature")
    assert refused_count(env, "missing_signature") == before + 1
    env.assert_never_forwarded()


@pytest.mark.parametrize("omitted", COMPONENTS)
async def test_D71_signature_omitting_a_required_component_is_401(
    env: PipelineEnv, omitted: str
) -> None:
    headers = sign(env, components=[c for c in COMPONENTS if c != omitted])
    assert await send(env, headers) == (401, "missing_component")
    env.assert_never_forwarded()


async def test_D71_D72_body_without_covered_content_digest_is_401(env: PipelineEnv) -> None:
    # A POST signed as bodiless (valid signature, no content-digest covered), with a body added
    # afterwards. Signed as POST on purpose: a GET signature sent as POST fails on "@method"
    # first, and the test would then pass even if the digest requirement were gone.
    headers = signer(env).sign(
        method="POST", authority=env.stack.saas().namespace, path=relay_path(env), body=None
    )
    assert not any(name.lower() == "content-digest" for name, _ in headers)
    assert await send(env, headers, body=b'{"order": 1}') == (401, "missing_component")
    assert env.erp.arrivals == []
    env.assert_never_forwarded()


async def test_D72_body_changed_after_signing_is_401(env: PipelineEnv) -> None:
    headers = sign(env, body=b'{"amount": 1}')
    assert await send(env, headers, body=b'{"amount": 1000}') == (401, "digest_mismatch")
    env.assert_never_forwarded()


@pytest.mark.parametrize(
    ("offset", "expires_in", "reason"),
    [(-600, None, "expired"), (300, None, "clock_skew"), (-50, 5, "expired")],
    ids=["created-10-min-old", "created-5-min-ahead", "expires-in-the-past"],
)
async def test_D73_signature_time_window(
    env: PipelineEnv, offset: int, expires_in: int | None, reason: str
) -> None:
    created = int(time.time()) + offset
    expires = None if expires_in is None else created + expires_in
    headers = sign(env, created=created, expires=expires)
    assert await send(env, headers) == (401, reason)
    env.assert_never_forwarded()


@pytest.mark.parametrize("parameter", ["created", "keyid"])
async def test_D74_missing_parameter_is_401_not_500(env: PipelineEnv, parameter: str) -> None:
    headers = [
        (name, re.sub(rf';{parameter}=("[^"]*"|[0-9]+)', "", value))
        if name.lower() == "signature-input"
        else (name, value)
        for name, value in sign(env)
    ]
    status, reason = await send(env, headers)
    assert status == 401, reason
    env.assert_never_forwarded()


async def test_D75_unknown_keyid_is_401(env: PipelineEnv) -> None:
    stranger = RequestSigner(generate_key(), keyid="other-tenant-key", gateway_id="agent-1")
    headers = stranger.sign(
        method="GET", authority=env.stack.saas().namespace, path=relay_path(env)
    )
    assert await send(env, headers) == (401, "unknown_key")
    env.assert_never_forwarded()


async def test_D75_known_keyid_with_another_key_is_401(env: PipelineEnv) -> None:
    keyid = env.stack.controlplane.signing_key.keyid
    forger = RequestSigner(generate_key(), keyid=keyid, gateway_id="agent-1")
    headers = forger.sign(method="GET", authority=env.stack.saas().namespace, path=relay_path(env))
    assert await send(env, headers) == (401, "bad_signature")
    env.assert_never_forwarded()


async def test_D77_replay_is_refused_and_the_target_sees_one(env: PipelineEnv) -> None:
    headers = sign(env)
    assert (await send(env, headers))[0] == 200
    assert await send(env, headers) == (401, "replay")
    env.forwarded_once()


async def test_D78_replay_after_a_restart_is_refused(env: PipelineEnv) -> None:
    headers = sign(env)
    assert (await send(env, headers))[0] == 200
    await env.agent.stop()
    env.agent = Agent(env.agent.options)
    await env.agent.start()
    async with asyncio.timeout(START_TIMEOUT):
        await env.stack.relay.wait_for_listeners(env.stack.hc, LISTENERS)
    assert await send(env, headers) == (401, "replay")
    env.forwarded_once()


async def test_D79_request_signed_for_another_ha_instance_is_401(env: PipelineEnv) -> None:
    headers = signer(env).sign(
        method="GET",
        authority=env.stack.saas().namespace,
        path=relay_path(env, hc="hc-agent-2"),
    )
    status, _ = await send(env, headers)
    assert status == 401
    env.assert_never_forwarded()


@pytest.mark.parametrize(
    "mangle",
    [
        lambda value: value + ";;;(",
        lambda value: value.replace('"@method"', '"@METHOD"'),
    ],
    ids=["malformed-structured-field", "upper-case-component-id"],
)
async def test_D83_malformed_signature_input_is_401(env: PipelineEnv, mangle: object) -> None:
    headers = [
        (name, mangle(value) if name.lower() == "signature-input" else value)  # type: ignore[operator]
        for name, value in sign(env)
    ]
    records = _Records()
    root = logging.getLogger()
    level = root.level
    root.addHandler(records)
    root.setLevel(logging.DEBUG)  # the refusal line is INFO; a trace could come at any level
    try:
        status, _ = await send(env, headers)
    finally:
        root.setLevel(level)
        root.removeHandler(records)
    assert status == 401
    # Refused as garbage, not as a crash: nothing logged carries an exception or its trace.
    for record in records.records:
        assert record.exc_info is None, record.getMessage()
        assert record.exc_text is None, record.getMessage()
        assert record.stack_info is None
        assert "Traceback" not in records.format(record)
    env.assert_never_forwarded()


class _Records(logging.Handler):
    """Every log record of every logger, formatted as a file handler would write it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_D83_huge_signature_header_is_refused(env: PipelineEnv) -> None:
    # 12 KB rather than the catalogue's 100 KB, as relay JSON: a 100 KB header never reaches the
    # gateway. The relay's front door refuses header lines over 8 KB itself, and the listener's
    # protocol core refuses relay fields over 16 KiB (it drops the channel). Below those limits
    # the verifier refuses the oversized signature before any cryptography.
    headers = [(name, value) for name, value in sign(env) if name.lower() != "signature"]
    headers.append(("Signature", "eid=:" + "A" * 12_000 + ":"))
    async with env.saas() as saas:
        response, _ = await saas.relay_json("GET", "erp", PATH, signed_headers=headers)
        front, _ = await saas.request("GET", "erp", PATH, signed_headers=headers)
    assert (response.status, response.reason_code) == (431, "headers_too_large"), response.body
    assert front.status == 400
    env.assert_never_forwarded()


async def test_D86_signature_verification_cannot_be_switched_off(env: PipelineEnv) -> None:
    # There is no verify switch at all: the key is unknown and gateway.yaml is strict.
    text = env.config.read_text(encoding="utf-8") + "signatures:\n  verify: false\n"
    variant = env.config.with_name("verify-off.yaml")
    variant.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError):
        load(str(variant))


async def test_D88_unsigned_stream_is_rejected_before_any_upstream(env: PipelineEnv) -> None:
    async with env.saas(signed=False) as saas:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await saas.stream("ldap")
    assert caught.value.status == 401
    env.assert_never_forwarded()


def stream_headers(
    env: PipelineEnv, forger: RequestSigner | None = None, **kwargs: object
) -> list[tuple[str, str]]:
    """Signature headers for a stream to the ``ldap`` target, as the SaaS would send them."""
    return (forger or signer(env)).sign(
        method="GET",
        authority=env.stack.saas().namespace,
        path=f"/{env.stack.hc}/ldap",
        **kwargs,  # type: ignore[arg-type]
    )


async def open_stream(env: PipelineEnv, headers: list[tuple[str, str]]) -> int:
    """Open a stream with exactly ``headers`` as its signature; the handshake's refusal status."""
    async with env.saas(signed=False) as saas:  # unsigned client: ``headers`` go out as given
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await saas.stream("ldap", headers=headers)
    return caught.value.status


@pytest.mark.parametrize(
    "variant", ["wrong-key", "known-keyid-other-key", "expired", "expires-in-the-past"]
)
async def test_D88_badly_signed_stream_is_rejected_before_any_upstream(
    env: PipelineEnv, variant: str
) -> None:
    keyid = env.stack.controlplane.signing_key.keyid
    now = int(time.time())
    if variant == "wrong-key":
        headers = stream_headers(
            env, RequestSigner(generate_key(), keyid="other-tenant-key", gateway_id="agent-1")
        )
    elif variant == "known-keyid-other-key":
        headers = stream_headers(
            env, RequestSigner(generate_key(), keyid=keyid, gateway_id="agent-1")
        )
    elif variant == "expired":
        headers = stream_headers(env, created=now - 600)
    else:
        headers = stream_headers(env, created=now - 50, expires=now - 45)
    assert await open_stream(env, headers) == 401
    env.assert_never_forwarded()


async def test_D88_replayed_stream_signature_opens_one_stream(env: PipelineEnv) -> None:
    headers = stream_headers(env)
    async with env.saas(signed=False) as saas:
        ws = await saas.stream("ldap", headers=headers)
        await ws.send_bytes(b"first")
        echoed = await ws.receive(timeout=30)
        await ws.close()
    assert echoed.data == b"echo:first"
    dialled = list(env.dialler.dialled)
    assert len(dialled) == 1
    assert await open_stream(env, headers) == 401
    assert env.dialler.dialled == dialled
    assert env.stack.targets.tcp_bytes == [b"first"]
