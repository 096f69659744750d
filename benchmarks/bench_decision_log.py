"""Cost of the tamper-evident decision log per record, of signing a checkpoint, of handing a
record to an export, and how fast ``gateway replay`` re-decides recorded requests.

Timed per call (p50/p99, microseconds) on a typical version 2 record written to a file in a
temporary directory:

* ``plain write``: build the record, serialise it and ``write()`` one line, what the log did
  before the chain (the baseline, measured side by side);
* ``chained write``: ``AuditLog.write`` (seq, SHA-256 of the previous line, the same write);
* ``chained write + 2 exports``: the same with two exporters whose queues are never drained, so
  every record takes the drop path after the first ``queue_size`` (the worst case for the
  request path);
* ``checkpoint``: signing and writing one checkpoint, HMAC-SHA256 and ECDSA P-256.

Replay: records per second re-decided through the chain of steps with the embedded engine, for a
log of N records over a few distinct requests (the decision cache is warm after the first of
each, as in a running gateway).

Run: ``.venv/bin/python benchmarks/bench_decision_log.py [--records N]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.commands.replay import candidate, replay_files
from gateway.observability.audit import AuditLog, Rotation
from gateway.observability.auditchain import HmacSigner, KeySigner
from gateway.observability.export import Exporter, StdoutSink
from gateway.pipeline import AuditRecord, Chain, RequestFacts, new_decision_id
from gateway.policy.loader import build_engine

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """\
version: 1
gateway: {id: bench}
empowerid: {url: https://tenant.example}
targets:
  erp:
    scheme: https
    host: erp.corp.local
    port: 8443
    allowed_cidrs: [10.1.2.0/24]
    operations:
      - {name: list-accounts, methods: [GET], paths: [/api/accounts, /api/accounts/*]}
      - {name: update-account, methods: [PATCH], paths: [/api/accounts/*]}
"""
REQUESTS = [
    ("GET", "/erp/api/accounts/17?expand=groups&access_token=x"),
    ("PATCH", "/erp/api/accounts/17"),
    ("DELETE", "/erp/api/accounts/17"),
    ("GET", "/erp/api/admin"),
]
HEADERS = [("accept", "application/json"), ("authorization", "Bearer " + "x" * 40)]


def _record(method: str = "GET", relayed: str = REQUESTS[0][1]) -> AuditRecord:
    return AuditRecord(
        decision_id=new_decision_id(),
        kind="http",
        revision="sha256:" + "0" * 64,
        started=time.time(),
        result="allowed",
        method=method,
        relayed=relayed,
        headers=HEADERS,
        keyid="empowerid-1",
        target="erp",
        path="/api/accounts/17",
        operation="list-accounts",
    )


def _time(call: Callable[[], object], calls: int) -> tuple[float, float]:
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def per_record(directory: Path, calls: int) -> None:
    fd = os.open(directory / "plain.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def plain() -> None:
        os.write(fd, orjson.dumps(_record().as_dict(), option=orjson.OPT_APPEND_NEWLINE))

    chained = AuditLog(directory / "chained.jsonl", rotation=Rotation(checkpoint_seconds=3600))
    exporters = [Exporter(StdoutSink(), capacity=1000) for _ in range(2)]
    exported = AuditLog(directory / "exported.jsonl", observers=[e.offer for e in exporters])
    rows = {
        "plain write (baseline)": _time(plain, calls),
        "chained write": _time(lambda: chained.write(_record().as_dict()), calls),
        "chained write + 2 exports": _time(lambda: exported.write(_record().as_dict()), calls),
        "record as_dict only": _time(lambda: _record().as_dict(), calls),
    }
    os.close(fd)
    for name, signer in (
        ("checkpoint, HMAC-SHA256", HmacSigner(b"k" * 32)),
        ("checkpoint, ECDSA P-256", KeySigner(ec.generate_private_key(ec.SECP256R1()))),
    ):
        signed = AuditLog(directory / f"{name[-6:]}.jsonl", signer=signer, gateway_id="bench")

        def checkpoint(log: AuditLog = signed) -> None:
            log.write({"decision_id": "x"})
            log.checkpoint()

        rows[name + " (+ one write)"] = _time(checkpoint, max(1, calls // 10))
    for name, (p50, p99) in rows.items():
        print(f"{name:<40} p50 {p50:8.1f} us   p99 {p99:8.1f} us")
    print(f"export drops counted (not drained): {sum(e.dropped for e in exporters)}")


async def _sample(config: Path, log: Path, records: int) -> None:
    loaded = candidate(str(config), None)
    engine = build_engine(loaded)
    chain = Chain(loaded.config, engine)
    audit = AuditLog(log)
    await engine.start()
    try:
        for n in range(records):
            method, relayed = REQUESTS[n % len(REQUESTS)]
            facts = RequestFacts.relayed(method, relayed, HEADERS, keyid="empowerid-1")
            record = _record(method, relayed)
            (await chain.decide(facts)).record(record)
            audit.write(record.as_dict())
    finally:
        await engine.close()


def replay_rate(directory: Path, records: int) -> None:
    config = directory / "gateway.yaml"
    config.write_text(CONFIG)
    shutil.copytree(ROOT / "policies", directory / "policies", dirs_exist_ok=True)
    log = directory / "decisions.jsonl"
    asyncio.run(_sample(config, log, records))
    started = time.perf_counter()
    report = asyncio.run(replay_files(candidate(str(config), None), [log]))
    elapsed = time.perf_counter() - started
    assert report.replayed == records
    assert report.unchanged == records
    print(f"replay: {records} records in {elapsed:.2f} s = {records / elapsed:,.0f} records/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--records", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-decision-log-") as work:
        per_record(Path(work), args.calls)
        replay_rate(Path(work), args.records)


if __name__ == "__main__":
    main()
