"""Streams the listener decided on but never served (its rendezvous failed) are released: the
upstream opened for them is closed, their slot freed and their decision logged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from gateway.auth import KeySet, ReplayCache, SignatureVerifier, VerifierSettings
from gateway.config import load
from gateway.devkit.signing import RequestSigner, generate_key, key_entry, keyset_document
from gateway.devkit.stack import SampleTargets
from gateway.observability.metrics import Metrics
from gateway.pipeline import AuditRecord, Pipeline, Runtime
from gateway.policy.loader import build_engine
from gateway.relay.handlers import AcceptInfo, AcceptStream

HC = "hc-agent-1"
NAMESPACE = "relay.test.invalid"
POLICIES = Path(__file__).resolve().parents[3] / "policies"
WAIT = 60.0  # bound for a single wait; each ends as soon as its event comes


@pytest.fixture
async def targets() -> AsyncIterator[SampleTargets]:
    sample = SampleTargets()
    await sample.start()
    yield sample
    await sample.stop()


@pytest.fixture
async def pipeline(
    request: pytest.FixtureRequest, tmp_path: Path, targets: SampleTargets
) -> AsyncIterator[tuple[Pipeline, list[AuditRecord], RequestSigner]]:
    path = tmp_path / "gateway.yaml"
    document = {
        "version": 1,
        "gateway": {"id": "agent-1"},
        "empowerid": {"url": "https://tenant.example"},
        "policy": {"directories": [str(POLICIES)]},
        "limits": {"max_concurrent_streams": 1},
        "targets": {
            "erp": {
                "scheme": "http",
                "host": "127.0.0.1",
                "port": targets.http_port,
                "allow_special_addresses": True,
                "operations": [
                    {"name": "events", "methods": ["GET"], "paths": ["/ws/*"], "websocket": True}
                ],
            }
        },
    }
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    loaded = load(str(path))
    engine = build_engine(loaded)
    await engine.start()
    key = generate_key()
    now = time.time()
    keys = KeySet.from_document(
        keyset_document([key_entry("k1", key, not_before=now - 60, not_after=now + 3600)])
    )
    runtime = Runtime.build(loaded, engine)
    verifier = SignatureVerifier(
        keys,
        ReplayCache(max_entries=1000),
        gateway_id="agent-1",
        hc_path=HC,
        settings=VerifierSettings(max_age=60, max_skew=30),
    )
    audit: list[AuditRecord] = []
    under_test = Pipeline(
        lambda: runtime,
        verifier,
        authority=NAMESPACE,
        hc_path=HC,
        metrics=Metrics(),
        audit=audit.append,
        accept_window=getattr(request, "param", 0.2),
    )
    try:
        yield under_test, audit, RequestSigner(key, keyid="k1", gateway_id="agent-1")
    finally:
        await under_test.close()
        await runtime.close()


def accept(signer: RequestSigner, stream_id: str) -> AcceptInfo:
    headers = signer.sign(method="GET", authority=NAMESPACE, path=f"/{HC}/erp/ws/echo")
    return AcceptInfo(stream_id=stream_id, target="/erp/ws/echo", connect_headers=tuple(headers))


async def test_a_stream_never_served_is_released(
    pipeline: tuple[Pipeline, list[AuditRecord], RequestSigner], targets: SampleTargets
) -> None:
    under_test, audit, signer = pipeline
    assert isinstance(await under_test.decide(accept(signer, "s1")), AcceptStream)
    [stream] = targets.ws_streams
    await asyncio.wait_for(stream.ended.wait(), WAIT)
    assert stream.close_code == 1001
    assert [r.reasons for r in audit] == [["not_served"]]
    # Its slot is free again: the limit is one stream and another is accepted.
    assert isinstance(await under_test.decide(accept(signer, "s2")), AcceptStream)


@pytest.mark.parametrize("pipeline", [60.0], indirect=True)  # no expiry during the test
async def test_closing_the_pipeline_releases_decided_streams(
    pipeline: tuple[Pipeline, list[AuditRecord], RequestSigner], targets: SampleTargets
) -> None:
    under_test, audit, signer = pipeline
    await under_test.decide(accept(signer, "s1"))
    await asyncio.sleep(0.3)
    assert audit == []
    await under_test.close()
    [stream] = targets.ws_streams
    await asyncio.wait_for(stream.ended.wait(), WAIT)
    assert [r.reasons for r in audit] == [["not_served"]]
