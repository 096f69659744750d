"""``gateway replay`` on the decision log of a real run: the same decisions for the configuration
that recorded it, and the right changes for narrowing and widening edits."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import main
from gateway.commands.replay import candidate, replay_files
from gateway.gitops.replay import read_records, recorded_outcome
from tests.integration.test_decision_log import TRAFFIC, Recorded, record_run

STREAMS = [("directory", ""), ("erp", "/api/accounts")]  # allowed; websocket not allowed


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    return asyncio.run(record_run(tmp_path_factory.mktemp("run"), TRAFFIC, streams=STREAMS))


def _candidate(recorded: Recorded, tmp_path: Path, edit: Any = None) -> Path:
    """A copy of the recorded run's configuration (and its policies), edited by ``edit``."""
    directory = tmp_path / "candidate"
    shutil.copytree(recorded.directory / "policies", directory / "policies")
    shutil.copy(recorded.directory / "empowerid-ca.pem", directory / "empowerid-ca.pem")
    document = yaml.safe_load((recorded.directory / "gateway.yaml").read_text())
    if edit is not None:
        edit(document)
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def _replay(path: Path, recorded: Recorded, policies: str | None = None) -> Any:
    return asyncio.run(replay_files(candidate(str(path), policies), [recorded.log]))


def test_the_recorded_configuration_decides_every_request_as_run_did(
    recorded: Recorded, tmp_path: Path
) -> None:
    records = [r for r in read_records([recorded.log]) if r and "decision_id" in r]
    assert len(records) == len(TRAFFIC) + len(STREAMS)
    assert {r["kind"] for r in records} == {"http", "stream"}
    # Every kind of outcome is in the log: allowed, denied by policy, rejected before it.
    assert {r["result"] for r in records} >= {"allowed", "denied", "rejected"}
    report = _replay(_candidate(recorded, tmp_path), recorded)
    assert report.records == len(records)
    assert report.replayed == len([r for r in records if recorded_outcome(r) is not None])
    assert report.replayed == len(records)  # all were signed: none stopped at the signature
    assert report.unchanged == report.replayed
    assert report.reason_changed == 0  # same result and same reason, record by record
    assert report.exit_code == 0


def test_narrowing_edits_are_newly_denied(recorded: Recorded, tmp_path: Path) -> None:
    def narrow(document: dict[str, Any]) -> None:
        [accounts] = [
            o for o in document["targets"]["erp"]["operations"] if o["name"] == "read-accounts"
        ]
        accounts["paths"] = ["/api/accounts"]  # /api/accounts/* no longer granted
        document["limits"]["max_request_body_bytes"] = 10  # the 100-byte GET is now too large

    path = _candidate(recorded, tmp_path, narrow)
    report = _replay(path, recorded)
    assert report.exit_code == 11
    assert report.allowed_count == 0
    assert report.denied_count == 2
    assert dict(report.denied_by_operation) == {"erp/read-accounts": 2}
    reasons = {c.request: c.after.reason for c in report.newly_denied}
    assert reasons == {
        "GET /erp/api/accounts/17?expand=groups&access_token=***": "path_not_allowed",
        "GET /erp/api/accounts": "request_body_too_large",
    }
    assert main(["replay", "--decisions", str(recorded.log), "-c", str(path)]) == 11


def test_widening_edits_are_newly_allowed(
    recorded: Recorded, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def widen(document: dict[str, Any]) -> None:
        operations = document["targets"]["erp"]["operations"]
        operations.append(
            {"name": "delete-accounts", "methods": ["DELETE"], "paths": ["/api/accounts/*"]}
        )
        operations.append(
            {"name": "account-feed", "methods": ["GET"], "paths": ["/api"], "websocket": True}
        )
        [accounts] = [o for o in operations if o["name"] == "read-accounts"]
        accounts["paths"] = ["/api/accounts/*"]
        accounts["websocket"] = True  # the refused stream to /api/accounts: still no match

    path = _candidate(recorded, tmp_path, widen)
    code = main(["replay", "--decisions", str(recorded.log), "-c", str(path), "--format", "json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 10
    assert report["result"] == "newly_allowed"
    assert report["newly_allowed"]["by_operation"] == {"erp/delete-accounts": 1}
    [example] = report["newly_allowed"]["examples"]
    assert example["request"] == "DELETE /erp/api/accounts/9"
    assert example["before"]["reason"] == "method_not_allowed"
    assert example["after"]["operation"] == "delete-accounts"
    # /api/accounts itself lost its grant in this edit: narrowing and widening both reported.
    assert report["newly_denied"]["by_operation"] == {"erp/read-accounts": 1}
    markdown_code = main(
        ["replay", "--decisions", str(recorded.log), "-c", str(path), "--format", "markdown"]
    )
    markdown = capsys.readouterr().out
    assert markdown_code == 10
    assert "#### Newly allowed (1)" in markdown
    assert "#### Newly denied (1)" in markdown
    assert "needs review" in markdown


def test_a_policy_directory_replaces_the_candidates(recorded: Recorded, tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(recorded.directory / "policies", policies)
    (policies / "extensions").mkdir()
    (policies / "extensions" / "no_blob.rego").write_text(
        "package gateway_extensions.no_blob\n\n"
        'deny contains "blob_downloads_paused" if input.path == "/api/blob"\n'
    )
    report = _replay(_candidate(recorded, tmp_path), recorded, policies=str(policies))
    assert report.exit_code == 11
    [change] = report.newly_denied
    assert change.request == "GET /erp/api/blob"
    assert change.after.reason == "blob_downloads_paused"


def test_unusable_inputs(recorded: Recorded, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ntargets: {}\n")
    assert main(["replay", "--decisions", str(recorded.log), "-c", str(bad)]) == 1
    good = _candidate(recorded, tmp_path)
    assert main(["replay", "--decisions", str(tmp_path / "absent"), "-c", str(good)]) == 1
    # Version 1 records, broken lines and checkpoints are counted, never replayed.
    old = tmp_path / "old.jsonl"
    old.write_text('{"decision_id":"x","result":"allowed"}\nnot json\n')
    report = asyncio.run(replay_files(candidate(str(good), None), [old]))
    assert report.replayed == 0
    assert dict(report.skipped) == {"version 1 record (no input)": 1, "unreadable line": 1}
