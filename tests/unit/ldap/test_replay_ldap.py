"""``gateway replay`` of LDAP decision records: each record's question decided again by
LdapChain under a candidate configuration, with the real policy and engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.gitops.replay import replay
from gateway.ldap.codec import Operation
from gateway.ldap.questions import question_of
from gateway.pipeline import Chain
from gateway.policy.decision_log import RECORD_VERSION
from gateway.policy.loader import build_engine
from tests.unit.ldap.directory_config import CONFIG, embedded_chain, load_directory
from tests.unit.ldap.test_decide import CASES

pytestmark = pytest.mark.asyncio


def _record(
    index: int, input: dict[str, Any], allowed: bool, reason: str, rule: str | None
) -> dict[str, Any]:
    return {
        "v": RECORD_VERSION,
        "kind": "ldap",
        "decision_id": f"ldap-{index}",
        "time": "2026-12-07T09:00:00Z",
        "result": "allowed" if allowed else "denied",
        "reasons": [] if allowed else [reason],
        "stage": "decide",
        "target": "directory",
        "operation": rule,
        "input": input,
    }


async def test_records_replay_unchanged_and_a_narrowing_shows(tmp_path: Path) -> None:
    (tmp_path / "now").mkdir()
    (tmp_path / "candidate").mkdir()
    chain = embedded_chain(load_directory(tmp_path / "now"))
    records = []
    for index, (_, facts, _, _) in enumerate(CASES):
        if facts.request.operation in (Operation.UNBIND, Operation.ABANDON):
            continue
        verdict = await chain.decide(facts)
        reason = verdict.reasons[0] if verdict.reasons else ""
        records.append(
            _record(index, question_of(facts).as_dict(), verdict.allowed, reason, verdict.operation)
        )
    same = await replay(records, Chain(chain.config, chain.engine))
    assert (same.replayed, same.unchanged, same.exit_code) == (len(records), len(records), 0)
    # The candidate drops group membership changes.
    narrowed = CONFIG.replace("change_types: [add, delete]", "change_types: [delete]")
    candidate = load_directory(tmp_path / "candidate", narrowed)
    report = await replay(records, Chain(candidate.config, build_engine(candidate)))
    assert report.exit_code == 11
    assert [c.request for c in report.newly_denied] == [
        "LDAP modify directory CN=Sales,OU=Managed Groups,DC=corp,DC=example"
    ]
    assert report.newly_denied[0].after.reason == "ldap_change_not_granted"
    assert dict(report.denied_by_operation) == {"directory/group-membership": 1}


async def test_a_malformed_ldap_input_is_counted_not_fatal(tmp_path: Path) -> None:
    loaded = load_directory(tmp_path)
    records = [_record(1, {"target": "directory", "operation": 7}, True, "", None)]
    report = await replay(records, Chain(loaded.config, build_engine(loaded)))
    assert dict(report.skipped) == {"malformed input": 1}
