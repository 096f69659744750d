"""``gateway replay`` of LDAP decision records: each record's question decided again by
LdapChain under a candidate configuration, with the real policy and engine."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.gitops.replay import replay
from gateway.ldap.codec import Operation
from gateway.ldap.decide import LdapFacts, LdapVerdict
from gateway.ldap.proxy import OperationOutcome
from gateway.ldap.questions import question_from_record
from gateway.pipeline import Chain, LdapRecord
from gateway.policy.loader import build_engine
from tests.unit.ldap.directory_config import CONFIG, embedded_chain, load_directory
from tests.unit.ldap.test_decide import CASES

pytestmark = pytest.mark.asyncio

# What an LDAP record's input keeps since replay needed it (older records lack it).
_KEPT_SINCE = (
    "size_limit",
    "time_limit",
    "deref_aliases",
    "version",
    "mechanism",
    "empty_password",
)


def _record(
    index: int, facts: LdapFacts, verdict: LdapVerdict, *, amended: bool = True
) -> dict[str, Any]:
    """The decision record a running gateway writes for the operation (pipeline.LdapRecord);
    ``amended``: with whether the stream had the inner TLS (not recorded: it always has);
    otherwise as written before the record kept limits, dereferencing and bind details."""
    outcome = OperationOutcome(
        request=facts.request,
        started=0.0,
        bound_as=facts.bound_as,
        injected=facts.injected,
        result="allowed" if verdict.allowed else "denied",
        reasons=list(verdict.reasons),
        rule=verdict.operation,
    )
    record = LdapRecord(
        decision_id=f"ldap-{index}",
        kind="ldap",
        revision="r",
        started=0.0,
        result=outcome.result,
        reasons=outcome.reasons,
        stage="decide",
        target=facts.target,
        operation=verdict.operation,
        keyid=facts.keyid,
        outcome=outcome,
    )
    written: dict[str, Any] = json.loads(json.dumps(record.as_dict()))
    if amended:
        # The one fact a record does not keep: a served stream is always over the inner TLS.
        written["input"]["inner_tls"] = facts.inner_tls
    else:
        for key in _KEPT_SINCE:
            del written["input"][key]
    return written


async def test_records_replay_unchanged_and_a_narrowing_shows(tmp_path: Path) -> None:
    (tmp_path / "now").mkdir()
    (tmp_path / "candidate").mkdir()
    chain = embedded_chain(load_directory(tmp_path / "now"))
    records = []
    for index, (_, facts, _, _) in enumerate(CASES):
        if facts.request.operation in (Operation.UNBIND, Operation.ABANDON):
            continue
        records.append(_record(index, facts, await chain.decide(facts)))
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


async def test_records_without_search_limits_skip_searches_only(tmp_path: Path) -> None:
    chain = embedded_chain(load_directory(tmp_path))
    records, searches = [], 0
    for index, (case, facts, _, _) in enumerate(CASES):
        operation = facts.request.operation
        if operation in (Operation.UNBIND, Operation.ABANDON) or case in _BIND_DETAILS:
            continue
        searches += operation is Operation.SEARCH
        records.append(_record(index, facts, await chain.decide(facts), amended=False))
    report = await replay(records, Chain(chain.config, chain.engine))
    assert dict(report.skipped) == {"malformed input": searches}
    assert report.unchanged == report.replayed == len(records) - searches


# Binds whose verdict depends on what the record shape of today does not keep (a live stream is
# always over the inner TLS, so "bind-without-inner-tls" cannot be recorded either).
_BIND_DETAILS = {"bind-v2", "unauthenticated-bind", "sasl-gssapi", "bind-without-inner-tls"}


async def test_a_malformed_ldap_input_is_counted_not_fatal(tmp_path: Path) -> None:
    loaded = load_directory(tmp_path)
    [record] = [_record(1, CASES[0][1], await embedded_chain(loaded).decide(CASES[0][1]))]
    record["input"]["operation"] = 7
    records = [record, {**record, "input": {**record["input"], "colour": "red"}}]
    report = await replay(records, Chain(loaded.config, build_engine(loaded)))
    assert dict(report.skipped) == {"malformed input": 2}


async def test_a_record_keeps_what_a_search_and_a_bind_were_decided_on(tmp_path: Path) -> None:
    chain = embedded_chain(load_directory(tmp_path))
    for index, (case, facts, _, _) in enumerate(CASES):
        request = facts.request
        if request.operation not in (Operation.SEARCH, Operation.BIND):
            continue
        if request.operation is Operation.SEARCH:
            # RFC 4511 4.5.1.3: dereferencing changes which entries the proxy lets through.
            facts = replace(facts, request=replace(request, deref_aliases=3))
        written = _record(index, facts, await chain.decide(facts))
        question = question_from_record({**written["input"], "target": written["target"]})
        again = question.facts(chain.config).request
        assert again.deref_aliases == facts.request.deref_aliases, case
        assert (again.size_limit, again.time_limit) == (request.size_limit, request.time_limit)
        if request.operation is Operation.BIND:
            assert again.version == request.version, case
            assert (again.sasl_mechanism or None) == (request.sasl_mechanism or None), case
