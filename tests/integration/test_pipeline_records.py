"""A relayed request's answer leaves the pipeline only once its decision record is in the file.

Requests answered in the same event-loop turn share one write of the decision log
(:meth:`gateway.observability.audit.AuditLog.submit`); this drives many at once through the real
pipeline (real signatures, replay memory, Rego policy, forward to a loopback target) and checks,
the moment each answer comes back, that its record is already on file, then that the whole log
verifies as one chain holding every request once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from pathlib import Path

from gateway.devkit.stack import SampleTargets
from gateway.observability.audit import AuditLog
from gateway.observability.auditchain import order_files, verify_files
from gateway.observability.metrics import Metrics
from gateway.pipeline import AuditRecord, Pipeline
from gateway.relay.handlers import RelayedRequest
from tests.integration.pipeline_parts import HC, NAMESPACE, pipeline_parts

IN_FLIGHT = 24


async def test_each_answer_waits_for_its_record_and_the_log_is_one_chain(
    tmp_path: Path, targets: SampleTargets
) -> None:
    parts = await pipeline_parts(
        tmp_path,
        targets.http_port,
        [{"name": "read", "methods": ["GET"], "paths": ["/api/*"]}],
    )
    runtime, verifier, signer = parts.runtime, parts.verifier, parts.signer
    log_path = tmp_path / "decisions.jsonl"
    audit = AuditLog(log_path)
    submitted: list[str] = []

    def submit(record: AuditRecord) -> Awaitable[None]:
        submitted.append(record.decision_id)
        return audit.submit(record.as_dict())

    pipeline = Pipeline(
        lambda: runtime,
        verifier,
        authority=NAMESPACE,
        hc_path=HC,
        metrics=Metrics(),
        audit=lambda record: audit.write(record.as_dict()),
        audit_submit=submit,
    )

    def on_file(n: int) -> bool:
        for line in log_path.read_bytes().splitlines():
            if json.loads(line)["input"]["target"].endswith(f"?n={n}"):
                return True
        return False

    async def one(n: int) -> tuple[int, bool]:
        # Allowed, denied by the policy (a path no operation names) and refused before it
        # (a signature that does not verify): every outcome's record is written first.
        path = ("/api/item", "/admin", "/api/item")[n % 3]
        query = f"n={n}"
        headers = signer.sign(
            method="GET", authority=NAMESPACE, path=f"/{HC}/erp{path}", query=query
        )
        if n % 3 == 2:
            headers = [(name, value.replace("k1", "k2")) for name, value in headers]
        response = await pipeline(
            RelayedRequest(
                request_id=str(n),
                method="GET",
                target=f"/erp{path}?{query}",
                raw_target=f"/{HC}/erp{path}?{query}",
                headers=tuple(headers),
                body=b"",
            )
        )
        return response.status, on_file(n)

    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(one(n) for n in range(IN_FLIGHT * 3))), 120
        )
    finally:
        await runtime.close()
    assert [on for _, on in results] == [True] * len(results)
    assert {status for status, _ in results} == {200, 403, 401}
    # The submitted path was taken (requests were under way together), and the log is one
    # chain with every request in it once.
    assert submitted
    report = verify_files(order_files([log_path]), from_genesis=True)
    assert report.problem is None, report.problem
    lines = log_path.read_bytes().splitlines()
    assert len(lines) == len(results)
    targets_seen = sorted(json.loads(line)["input"]["target"].split("=")[-1] for line in lines)
    assert targets_seen == sorted(str(n) for n in range(len(results)))
