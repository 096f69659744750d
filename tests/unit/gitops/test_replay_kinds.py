"""Replay dispatches on the record kind: another kind of target plugs in one replayer and gets
the same comparison, reports and exit codes (the seam LDAP operations use)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

import pytest

from gateway.gitops import replay as replay_module
from gateway.gitops.replay import Outcome, Replayed, render_markdown, replay
from gateway.pipeline import Chain


def _record(kind: str, result: str, reason: str, **input: Any) -> dict[str, Any]:
    return {
        "v": 2,
        "kind": kind,
        "decision_id": f"{kind}-1",
        "time": "2026-12-07T07:00:00Z",
        "result": result,
        "reasons": [reason] if reason else [],
        "stage": "decide",
        "target": "directory",
        "operation": None,
        "input": input,
    }


async def _search(input: Mapping[str, Any], chain: Chain) -> Replayed:
    if "base" not in input:
        raise ValueError("no base")
    allowed = input["base"].endswith("ou=people,dc=corp")
    outcome = Outcome(allowed, "allowed" if allowed else "denied", "", "search-people")
    return Replayed(outcome, f"SEARCH {input['base']}")


def test_a_new_record_kind_is_replayed_through_its_own_replayer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(replay_module.REPLAYERS, "ldap", _search)
    records = [
        _record("ldap", "denied", "dn_not_allowed", base="cn=a,ou=people,dc=corp"),
        _record("ldap", "denied", "dn_not_allowed", base="ou=admins,dc=corp"),
        _record("ldap", "denied", "dn_not_allowed"),  # malformed for its replayer
        _record("smtp", "denied", "x", to="a@b"),  # a kind nobody replays
    ]
    report = asyncio.run(replay(records, cast(Chain, None)))
    assert (report.records, report.replayed, report.unchanged) == (4, 2, 1)
    assert report.exit_code == 10
    [change] = report.newly_allowed
    assert change.request == "SEARCH cn=a,ou=people,dc=corp"
    assert dict(report.allowed_by_operation) == {"directory/search-people": 1}
    assert dict(report.skipped) == {
        "malformed input": 1,
        "record kind 'smtp' has no replayer": 1,
    }
    assert "`SEARCH cn=a,ou=people,dc=corp`" in render_markdown(report, "candidate.yaml")
