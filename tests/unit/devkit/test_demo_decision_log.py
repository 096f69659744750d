"""The demo's decision-log step: it passes only when ``gateway audit verify``'s check does."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.devkit.demo import _decision_log_row
from gateway.observability.audit import AuditLog
from gateway.observability.auditchain import HmacSigner


def _log(path: Path) -> None:
    audit = AuditLog(path, signer=HmacSigner(b"k" * 32), gateway_id="demo")
    audit.write({"kind": "http", "method": "GET", "path": "/a", "status": 200, "reasons": []})
    audit.write(
        {
            "kind": "http",
            "method": "DELETE",
            "path": "/a/1",
            "status": 403,
            "reasons": ["method_not_allowed"],
        }
    )
    audit.close()


def test_an_intact_log_is_a_passing_step_that_names_a_refusal(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    _log(path)
    row = _decision_log_row(path)
    assert row.ok
    assert "DELETE /a/1: method_not_allowed" in row.reason


def test_an_edited_record_fails_the_demo(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    _log(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    index = next(i for i, line in enumerate(lines) if '"DELETE"' in line)
    record = json.loads(lines[index])
    record["status"] = 200
    lines[index] = json.dumps(record, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    row = _decision_log_row(path)
    assert not row.ok
    assert row.got == "broken"
