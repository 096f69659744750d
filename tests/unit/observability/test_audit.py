"""The decision log: one JSON line per record, nothing held back, write failures never raised."""

from __future__ import annotations

import json
import logging
import stat
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.observability.audit import AuditLog
from gateway.observability.auditchain import GENESIS, line_hash
from gateway.pipeline import AuditRecord, _DecisionIds


def test_records_are_json_lines_in_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "decisions.log"
    audit = AuditLog(path)
    audit.write({"decision_id": "a", "reasons": ["x"], "latency_ms": 1.5, "path": "/ü"})
    audit.write({"decision_id": "b", "when": Path("/not/json")})  # str() for non-JSON values
    audit.close()
    audit.write({"decision_id": "c"})  # reopened after close, appended
    audit.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["decision_id"] for line in lines] == ["a", "b", "c"]
    assert json.loads(lines[0])["path"] == "/ü"
    assert json.loads(lines[1])["when"] == "/not/json"
    assert stat.S_IMODE(path.stat().st_mode) & 0o027 == 0


def _in_a_process(lines: str, path: Path) -> int:
    """Run ``lines`` in a new Python process with ``audit``, an AuditLog on ``path``, made;
    its exit status."""
    script = (
        "import os, resource, signal, sys\n"
        "from pathlib import Path\n"
        "from gateway.observability.audit import AuditLog\n"
        "path = Path(sys.argv[1])\n"
        "audit = AuditLog(path)\n"
    ) + lines
    done = subprocess.run([sys.executable, "-c", script, str(path)], timeout=30, check=False)
    return done.returncode


def test_a_record_is_on_disk_when_the_process_dies_right_after(tmp_path: Path) -> None:
    # The answer to the SaaS goes out after the record is written: a killed process must not
    # take records with it (no user-space buffering).
    path = tmp_path / "decisions.log"
    lines = "for n in range(3):\n    audit.write({'n': n})\nos._exit(9)\n"
    assert _in_a_process(lines, path) == 9
    assert [json.loads(line)["n"] for line in path.read_text().splitlines()] == [0, 1, 2]


def test_a_record_cut_short_stays_one_damaged_line_and_the_chain_goes_on(tmp_path: Path) -> None:
    # A file size limit (RLIMIT_FSIZE) makes the kernel take part of a record and refuse the
    # rest, as a nearly full disk does: the part stays one damaged line, the next record starts
    # a line of its own and continues the chain from the last whole record.
    path = tmp_path / "decisions.log"
    lines = (
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "audit.write({'n': 0})\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 10, hard))\n"
        "audit.write({'n': 1, 'pad': 'x' * 50})\n"
        "assert audit.failures == 1 and audit.failing\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))\n"
        "audit.write({'n': 2})\n"
        "assert audit.failures == 1 and not audit.failing\n"
    )
    assert _in_a_process(lines, path) == 0
    first, damaged, last, end = path.read_bytes().split(b"\n")
    assert (json.loads(first)["n"], json.loads(last)["n"], end) == (0, 2, b"")
    assert len(damaged) == 10
    assert orjson.dumps({"seq": 1, "prev": line_hash(first), "n": 1}).startswith(damaged)
    assert json.loads(last)["seq"] == 1
    assert json.loads(last)["prev"] == line_hash(first)


def test_write_failures_are_counted_logged_once_and_never_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    audit = AuditLog(tmp_path / "missing-directory" / "decisions.log")
    with caplog.at_level(logging.ERROR, logger="gateway.observability.audit"):
        for _ in range(5):
            audit.write({"decision_id": "x"})
    assert audit.failures == 5
    assert len([r for r in caplog.records if "decision log write failed" in r.message]) == 1
    # Once the directory exists the next record gets through.
    (tmp_path / "missing-directory").mkdir()
    audit.write({"decision_id": "y"})
    assert audit.failures == 5
    assert "y" in (tmp_path / "missing-directory" / "decisions.log").read_text()


def test_standard_output_when_no_file(capsys: pytest.CaptureFixture[str]) -> None:
    AuditLog(None).write({"decision_id": "z", "ok": True})
    assert json.loads(capsys.readouterr().out) == {
        "seq": 0,
        "prev": "0" * 64,
        "decision_id": "z",
        "ok": True,
    }


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)


@given(st.lists(st.dictionaries(st.text(max_size=6), _json, max_size=5), max_size=4))
def test_each_line_is_the_record_behind_its_place_in_the_chain(
    records: list[dict[str, object]],
) -> None:
    # Byte for byte what serialising {"seq", "prev", **record} gives (verification re-hashes
    # these bytes), for any record, the empty one included.
    lines: list[bytes] = []
    audit = AuditLog(None, observers=[lines.append])
    records = [r for r in records if "seq" not in r and "prev" not in r]
    for record in records:
        audit.write(record)
    prev = GENESIS
    for seq, (record, line) in enumerate(zip(records, lines, strict=True)):
        assert line == orjson.dumps({"seq": seq, "prev": prev, **record})
        prev = line_hash(line)
    assert audit.head == (len(records), prev)


@pytest.mark.parametrize("field", ["seq", "prev"])
def test_a_record_cannot_name_its_own_place_in_the_chain(tmp_path: Path, field: str) -> None:
    audit = AuditLog(tmp_path / "decisions.log")
    with pytest.raises(ValueError, match="place in the chain"):
        audit.write({"decision_id": "x", field: 7})
    audit.write({"decision_id": "y"})
    [line] = (tmp_path / "decisions.log").read_bytes().splitlines()
    assert json.loads(line)["seq"] == 0


def test_decision_ids_are_unique_and_differ_between_processes() -> None:
    first, second = _DecisionIds(), _DecisionIds()
    ids = {first.next() for _ in range(10_000)}
    assert len(ids) == 10_000
    other = second.next()
    assert other.split("-")[0] != next(iter(ids)).split("-")[0]
    prefix, counter = other.split("-")
    assert len(prefix) == 16
    assert int(prefix, 16) >= 0
    assert int(counter, 16) == 1


def test_record_time_is_rfc3339_utc_to_the_second() -> None:
    when = 1_764_000_000.75
    texts = []
    for started in (when, when + 0.1, when + 1):
        record = AuditRecord(decision_id="d", kind="http", revision="r", started=started)
        texts.append(record.as_dict()["time"])
    expected = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
    assert texts[0] == texts[1] == expected
    assert texts[2] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when + 1))


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_record_latency_is_kept_to_the_microsecond(latency: float) -> None:
    record = AuditRecord(decision_id="d", kind="http", revision="r", started=0.0)
    record.latency_ms = latency
    written = orjson.loads(orjson.dumps(record.as_dict()))["latency_ms"]
    # Within half a microsecond (and the float's own spacing) of the measured time, and
    # written with at most three decimals, as rounding to three places writes it.
    assert abs(written - latency) <= 0.0005 + 1e-9 * latency
    assert written == round(written, 3)
    assert len(repr(float(written)).partition(".")[2]) <= 3 or "e" in repr(float(written))
