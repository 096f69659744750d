"""Records submitted in one event-loop turn share one write, in chain order, before any answer.

:meth:`AuditLog.submit` gives a record its ``seq`` and ``prev`` at once and writes it with the
others submitted in the same turn; the future it returns is what a request's answer waits for.
These tests hold it to what :meth:`AuditLog.write` promises record by record: each line is in the
file when its future is done, lines are in ``seq`` order whatever mix of submits, writes and
checkpoints made them, the chain verifies, and a write cut short damages one line and loses the
rest of its batch without breaking the chain.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.observability.audit import MAX_BATCH, AuditLog
from gateway.observability.auditchain import (
    GENESIS,
    HeadVerifier,
    HmacSigner,
    line_hash,
    order_files,
    verify_files,
)

KEY = b"k" * 32


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.exists() else []


def _ids(path: Path) -> list[Any]:
    return [json.loads(line).get("decision_id") for line in _lines(path)]


def _verified(path: Path) -> bool:
    keys = HeadVerifier()
    keys.add_hmac_key(KEY)
    report = verify_files(order_files([path]), keys=keys, from_genesis=True)
    return report.problem is None


async def test_each_submitted_record_is_in_the_file_when_its_future_is_done(
    tmp_path: Path,
) -> None:
    path = tmp_path / "decisions.log"
    audit = AuditLog(path)
    seen: dict[str, bool] = {}
    futures = []
    for n in range(5):
        future = audit.submit({"decision_id": f"d{n}"})

        def check(_: object, name: str = f"d{n}") -> None:
            # Run when the answer would be released: its record must already be on file.
            seen[name] = name in _ids(path)

        future.add_done_callback(check)
        futures.append(future)
    # Submitted in one turn: nothing is released before the loop turns.
    assert not any(future.done() for future in futures)
    await asyncio.gather(*futures)
    assert seen == {f"d{n}": True for n in range(5)}
    assert _ids(path) == [f"d{n}" for n in range(5)]
    assert [json.loads(line)["seq"] for line in path.read_bytes().splitlines()] == [0, 1, 2, 3, 4]
    assert audit.head[0] == 5
    assert _verified(path)


async def test_a_write_after_submissions_writes_them_first(tmp_path: Path) -> None:
    path = tmp_path / "decisions.log"
    audit = AuditLog(path)
    first, second = audit.submit({"decision_id": "a"}), audit.submit({"decision_id": "b"})
    audit.write({"decision_id": "c"})
    # The write took the waiting records with it, in their order, and released them.
    assert _ids(path) == ["a", "b", "c"]
    assert first.done()
    assert second.done()
    await audit.submit({"decision_id": "d"})
    assert _ids(path) == ["a", "b", "c", "d"]
    assert _verified(path)


async def test_a_batch_is_written_at_once_when_it_reaches_its_bound(tmp_path: Path) -> None:
    path = tmp_path / "decisions.log"
    audit = AuditLog(path)
    futures = [audit.submit({"decision_id": f"d{n}"}) for n in range(MAX_BATCH + 1)]
    # The record that reached the bound wrote the batch; the next one waits for the loop.
    assert all(future.done() for future in futures[:MAX_BATCH])
    assert not futures[MAX_BATCH].done()
    assert len(_ids(path)) == MAX_BATCH
    await futures[MAX_BATCH]
    assert _ids(path) == [f"d{n}" for n in range(MAX_BATCH + 1)]


async def test_a_cancelled_answer_does_not_hold_up_the_others(tmp_path: Path) -> None:
    path = tmp_path / "decisions.log"
    audit = AuditLog(path)
    gone, kept = audit.submit({"decision_id": "a"}), audit.submit({"decision_id": "b"})
    gone.cancel()  # its request was cancelled: its record is written all the same
    await kept
    assert _ids(path) == ["a", "b"]


async def test_a_failing_observer_still_releases_the_batch(tmp_path: Path) -> None:
    path = tmp_path / "decisions.log"

    def broken(_: bytes) -> None:
        raise RuntimeError("exporter fault")

    audit = AuditLog(path, observers=[broken])
    futures = [audit.submit({"decision_id": f"d{n}"}) for n in range(3)]
    await asyncio.wait_for(asyncio.gather(*futures), 30)
    assert _ids(path) == ["d0", "d1", "d2"]


def test_a_batch_cut_short_damages_one_line_and_the_chain_goes_on(tmp_path: Path) -> None:
    # A file size limit cuts the batch's one write inside its second record: the first is
    # whole, the second one damaged line, the third lost; all three answers are released, both
    # losses are counted, and the next record continues the chain from the first.
    path = tmp_path / "decisions.log"
    script = (
        "import asyncio, resource, signal, sys\n"
        "from pathlib import Path\n"
        "from gateway.observability.audit import AuditLog\n"
        "path = Path(sys.argv[1])\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "audit = AuditLog(path)\n"
        "import orjson\n"
        "first = orjson.dumps({'seq': 0, 'prev': '0' * 64, 'n': 0, 'pad': ''}) + b'\\n'\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (len(first) + 10, hard))\n"
        "async def main():\n"
        "    futures = [audit.submit({'n': n, 'pad': 'x' * 20 * n}) for n in range(3)]\n"
        "    await asyncio.wait_for(asyncio.gather(*futures), 30)\n"
        "asyncio.run(main())\n"
        "assert audit.failures == 2 and audit.failing, audit.failures\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))\n"
        "audit.write({'n': 3})\n"
        "assert audit.failures == 2 and not audit.failing\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], timeout=60, check=False)
    assert done.returncode == 0
    first, damaged, last, end = path.read_bytes().split(b"\n")
    assert (json.loads(first)["n"], json.loads(last)["n"], end) == (0, 3, b"")
    assert len(damaged) == 10
    second = orjson.dumps({"seq": 1, "prev": line_hash(first), "n": 1, "pad": "x" * 20})
    assert second.startswith(damaged)
    assert json.loads(last)["seq"] == 1
    assert json.loads(last)["prev"] == line_hash(first)


# One step of a test run: submit a record, write one, sign a checkpoint, or let the loop turn.
_STEPS = st.lists(st.sampled_from(["submit", "write", "checkpoint", "turn"]), max_size=30)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_STEPS)
def test_any_mix_of_submits_writes_and_checkpoints_keeps_the_chain_in_order(
    tmp_path_factory: Any, steps: list[str]
) -> None:
    path = tmp_path_factory.mktemp("mix") / "decisions.log"
    lines: list[bytes] = []
    audit = AuditLog(path, signer=HmacSigner(KEY), gateway_id="gw-1", observers=[lines.append])

    async def run() -> list[str]:
        made: list[str] = []
        futures = []
        for index, step in enumerate(steps):
            if step == "submit":
                futures.append(audit.submit({"decision_id": f"d{index}"}))
                made.append(f"d{index}")
            elif step == "write":
                audit.write({"decision_id": f"d{index}"})
                made.append(f"d{index}")
            elif step == "checkpoint":
                audit.checkpoint()
            else:
                await asyncio.sleep(0)
        await asyncio.gather(*futures)
        return made

    made = asyncio.run(run())
    audit.close()
    # Every record is in the file once, in the order it was given its place, the chain and
    # its checkpoints verify, and exporters saw exactly the lines of the file.
    assert [i for i in _ids(path) if i is not None] == made
    assert not lines or _verified(path)
    assert lines == _lines(path)
    prev = GENESIS
    for seq, line in enumerate(lines):
        assert json.loads(line)["seq"] == seq
        assert json.loads(line)["prev"] == prev
        prev = line_hash(line)


async def test_records_submitted_to_standard_output_are_written_in_order(
    capsys: pytest.CaptureFixture[str],
) -> None:
    audit = AuditLog(None)
    await asyncio.gather(*(audit.submit({"decision_id": f"d{n}"}) for n in range(3)))
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["decision_id"] for line in lines] == ["d0", "d1", "d2"]
    assert [json.loads(line)["seq"] for line in lines] == [0, 1, 2]
    assert json.loads(lines[1])["prev"] == line_hash(lines[0].encode())
