"""Streams the listener decided on but never served (its rendezvous failed) are released: the
upstream opened for them is closed, their slot freed and their decision logged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.devkit.signing import RequestSigner
from gateway.devkit.stack import SampleTargets
from gateway.observability.metrics import Metrics
from gateway.pipeline import AuditRecord, Pipeline
from gateway.relay.handlers import AcceptInfo, AcceptStream
from tests.integration.pipeline_parts import HC, NAMESPACE, pipeline_parts

WAIT = 60.0  # bound for a single wait; each ends as soon as its event comes


@pytest.fixture
async def pipeline(
    request: pytest.FixtureRequest, tmp_path: Path, targets: SampleTargets
) -> AsyncIterator[tuple[Pipeline, list[AuditRecord], RequestSigner]]:
    parts = await pipeline_parts(
        tmp_path,
        targets.http_port,
        [{"name": "events", "methods": ["GET"], "paths": ["/ws/*"], "websocket": True}],
        limits={"max_concurrent_streams": 1},
    )
    runtime, verifier = parts.runtime, parts.verifier
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
        yield under_test, audit, parts.signer
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
