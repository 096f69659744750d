"""What-if replay: decide the requests of a decision log again under a candidate configuration.

Every replayable record (version 2, see :mod:`gateway.policy.decision_log`) is turned back into
the :class:`gateway.pipeline.RequestFacts` the live gateway built for it and decided by the same
:class:`gateway.pipeline.Chain` ``gateway run`` uses, with the candidate's configuration and
policy. Outcomes are compared on what matters for review: whether the request went on to its
target (allowed, or forwarded as a monitor-mode would-deny) or was refused.

Not re-decided, and counted as such: records refused by the signature check (that step needs the
live signature and nonce, and does not depend on gateway.yaml), records of an internal error,
version 1 records (no input), and records of a kind no replayer knows. Record kinds are
dispatched through :data:`REPLAYERS`: ``http`` and ``stream`` records go through the chain,
``ldap`` records (one per LDAP operation, their input a
:class:`gateway.ldap.questions.LdapQuestion`) through :class:`gateway.ldap.decide.LdapChain`;
comparison, reports and exit codes are the same for every kind.

Steps after the chain (stream counts, the connection to the target) are live conditions, not
configuration: a stream refused as ``target_busy`` or a request whose target failed was allowed
by the chain, and is compared as allowed.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gateway.errors import one_line
from gateway.gitops.diff import EXIT_NARROWED, EXIT_UNCHANGED, EXIT_WIDENED, _md_code, _md_text
from gateway.ldap.decide import LdapChain
from gateway.ldap.questions import question_from_record
from gateway.observability.auditchain import MAX_LINE_BYTES, order_files
from gateway.pipeline import Chain, Refusal, RequestFacts, Verdict
from gateway.policy.decision_log import RECORD_VERSION, RecordedInput

__all__ = [
    "REPLAYERS",
    "Outcome",
    "ReplayReport",
    "read_records",
    "render_json",
    "render_markdown",
    "render_text",
    "replay",
]

# Refusals after the chain, by live conditions rather than configuration.
_AFTER_CHAIN = frozenset({"gateway_busy", "target_busy"})
MAX_EXAMPLES = 10


@dataclass(frozen=True)
class Outcome:
    """One decision reduced to what a review compares."""

    forwarded: bool
    """The request went on to its target (allowed, or a monitor-mode would-deny)."""
    result: str
    """allowed, would_deny, denied, rejected."""
    reason: str
    """The first reason of a refusal or would-deny; empty when allowed."""
    operation: str | None


@dataclass(frozen=True)
class Change:
    """A record whose outcome changed."""

    decision_id: str
    time: str
    request: str
    target: str | None
    before: Outcome
    after: Outcome


@dataclass
class ReplayReport:
    """Counts and the first examples of each kind of change."""

    records: int = 0
    replayed: int = 0
    unchanged: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    newly_denied: list[Change] = field(default_factory=list)
    newly_allowed: list[Change] = field(default_factory=list)
    denied_by_operation: Counter[str] = field(default_factory=Counter)
    allowed_by_operation: Counter[str] = field(default_factory=Counter)
    denied_count: int = 0
    allowed_count: int = 0
    reason_changed: int = 0

    @property
    def exit_code(self) -> int:
        """0 nothing changes, 10 something newly allowed, 11 only newly denied (as diff)."""
        if self.allowed_count:
            return EXIT_WIDENED
        return EXIT_NARROWED if self.denied_count else EXIT_UNCHANGED


def recorded_outcome(record: Mapping[str, Any]) -> Outcome | None:
    """The chain's part of a recorded decision; None when the chain did not decide it."""
    result, stage = record.get("result"), record.get("stage")
    reasons = record.get("reasons") or []
    reason = str(reasons[0]) if reasons else ""
    operation = record.get("operation")
    operation = operation if isinstance(operation, str) else None
    if stage == "authenticate" or result == "error":
        return None
    if result in ("allowed", "failed") or (stage == "limits" and reason in _AFTER_CHAIN):
        # failed: the chain allowed it and the target (or the stream's rendezvous) failed.
        return Outcome(True, "allowed", "", operation)
    if result == "would_deny":
        return Outcome(True, "would_deny", reason, operation)
    if result in ("denied", "rejected"):
        return Outcome(False, str(result), reason, operation)
    return None


def verdict_outcome(verdict: Verdict) -> Outcome:
    """A replayed verdict, reduced the same way."""
    reasons = verdict.reasons
    operation = verdict.decision.operation if verdict.decision is not None else None
    return Outcome(verdict.forwarded, verdict.result, reasons[0] if reasons else "", operation)


@dataclass(frozen=True)
class Replayed:
    """What a replayer gives back: the outcome now, and the request as a reviewer reads it."""

    outcome: Outcome
    request: str


class Replayer(Protocol):
    """Decides one kind of recorded input again; raises ``ValueError`` for a malformed input."""

    async def __call__(self, input: Mapping[str, Any], chain: Chain) -> Replayed: ...


async def _replay_http(input: Mapping[str, Any], chain: Chain) -> Replayed:
    """An HTTP request or a stream handshake, through the chain ``gateway run`` uses."""
    recorded = RecordedInput.parse(input)
    request = f"{recorded.method} {recorded.target}"
    try:
        facts = RequestFacts.relayed(
            recorded.method,
            recorded.target,
            recorded.header_pairs(),
            websocket=recorded.websocket,
            body_size=recorded.body_bytes,
            keyid=recorded.keyid,
        )
    except Refusal as refusal:  # the relayed target has no selector: no configuration helps
        return Replayed(Outcome(False, "rejected", refusal.code, None), request)
    return Replayed(verdict_outcome(await chain.decide(facts)), request)


async def _replay_ldap(input: Mapping[str, Any], chain: Chain) -> Replayed:
    """An LDAP operation: what the proxy recorded of it (never a password or a filter value)
    as a question (gateway.ldap.questions), decided by LdapChain.decide under the candidate's
    configuration and engine."""
    question = question_from_record(input)  # QuestionError is a ValueError: malformed
    request = f"LDAP {question.operation} {question.target} {question.dn}"
    verdict = await LdapChain(chain.config, chain.engine).decide(question.facts(chain.config))
    reason = verdict.reasons[0] if verdict.reasons else ""
    result = "allowed" if verdict.allowed else "denied"
    return Replayed(Outcome(verdict.allowed, result, reason, verdict.operation), request)


# The replayer of each record kind. Each kind records its own input and decides through its own
# steps; the comparison, reports and exit codes are the same for every kind.
REPLAYERS: dict[str, Replayer] = {
    "http": _replay_http,
    "stream": _replay_http,
    "ldap": _replay_ldap,
}


def read_records(paths: Iterable[Path]) -> Iterator[dict[str, Any] | None]:
    """Every line of the logs in chain order, parsed (None for a line that is not a record)."""
    for path in order_files(paths):
        with path.open("rb") as handle:
            for line in handle:
                if len(line) > MAX_LINE_BYTES:
                    yield None
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    yield None
                    continue
                yield record if isinstance(record, dict) else None


async def replay(
    records: Iterable[dict[str, Any] | None], chain: Chain, *, examples: int = MAX_EXAMPLES
) -> ReplayReport:
    """Decide every replayable record again with ``chain`` and compare."""
    report = ReplayReport()
    for record in records:
        if record is None:
            report.skipped["unreadable line"] += 1
            continue
        if record.get("kind") in ("checkpoint", "seal"):
            continue
        report.records += 1
        why = await _replay_one(record, chain, report, examples)
        if why:
            report.skipped[why] += 1
    return report


async def _replay_one(
    record: dict[str, Any], chain: Chain, report: ReplayReport, examples: int
) -> str:
    """Replay one record into ``report``; returns why it was skipped, or ""."""
    if record.get("v") != RECORD_VERSION or not isinstance(record.get("input"), dict):
        return "version 1 record (no input)"
    replayer = REPLAYERS.get(str(record.get("kind")))
    if replayer is None:
        return f"record kind {record.get('kind')!r} has no replayer"
    before = recorded_outcome(record)
    if before is None:
        return "refused by the signature check or an internal error"
    input = record["input"]
    if "target" not in input and isinstance(record.get("target"), str):
        # An input that does not name its target (an LDAP operation's) is replayed against the
        # target the record names.
        input = {**input, "target": record["target"]}
    try:
        replayed = await replayer(input, chain)
    except ValueError:
        return "malformed input"
    after = replayed.outcome
    report.replayed += 1
    if before.forwarded == after.forwarded:
        report.unchanged += 1
        if (before.result, before.reason) != (after.result, after.reason):
            report.reason_changed += 1
        return ""
    change = Change(
        decision_id=str(record.get("decision_id", "")),
        time=str(record.get("time", "")),
        request=replayed.request,
        target=record.get("target") if isinstance(record.get("target"), str) else None,
        before=before,
        after=after,
    )
    if after.forwarded:
        report.allowed_count += 1
        report.allowed_by_operation[_operation_label(change.target, after.operation)] += 1
        if len(report.newly_allowed) < examples:
            report.newly_allowed.append(change)
    else:
        report.denied_count += 1
        report.denied_by_operation[_operation_label(change.target, before.operation)] += 1
        if len(report.newly_denied) < examples:
            report.newly_denied.append(change)
    return ""


def _operation_label(target: str | None, operation: str | None) -> str:
    return f"{target or '?'}/{operation or '(no operation)'}"


def _verdict_line(report: ReplayReport) -> str:
    verdict = {
        EXIT_WIDENED: "requests newly ALLOWED: needs security review",
        EXIT_NARROWED: "requests newly denied: check for outages",
        EXIT_UNCHANGED: "no recorded request changes outcome",
    }[report.exit_code]
    return (
        f"{verdict} ({report.replayed} replayed: {report.denied_count} newly denied, "
        f"{report.allowed_count} newly allowed, {report.unchanged} unchanged; "
        f"{sum(report.skipped.values())} not replayable; exit {report.exit_code})"
    )


def _describe(outcome: Outcome) -> str:
    if outcome.result == "allowed":
        return f"allowed by {outcome.operation}" if outcome.operation else "allowed"
    return f"{outcome.result} ({outcome.reason})" if outcome.reason else outcome.result


def render_text(report: ReplayReport, label: str) -> str:
    """Counts per operation and the first examples, then a verdict line."""
    lines: list[str] = []
    for title, count, by_operation, changes in (
        ("newly denied", report.denied_count, report.denied_by_operation, report.newly_denied),
        ("newly allowed", report.allowed_count, report.allowed_by_operation, report.newly_allowed),
    ):
        if not count:
            continue
        lines.append(f"{title}: {count}")
        for operation, n in by_operation.most_common():
            lines.append(f"  {n:>6}  {operation}")
        for change in changes:
            # The request's words come from the decision log, so from the relay: one line each.
            lines.append(
                one_line(
                    f"  e.g. {change.request}  [{change.time} {change.decision_id}]: "
                    f"{_describe(change.before)} -> {_describe(change.after)}"
                )
            )
    for why, n in sorted(report.skipped.items()):
        lines.append(f"not replayable: {n} ({why})")
    lines.append(f"{label}: {_verdict_line(report)}")
    return "\n".join(lines) + "\n"


def _change_json(change: Change) -> dict[str, Any]:
    return {
        "decision_id": change.decision_id,
        "time": change.time,
        "request": change.request,
        "target": change.target,
        "before": change.before.__dict__,
        "after": change.after.__dict__,
    }


def render_json(report: ReplayReport, label: str) -> str:
    """The machine-readable report."""
    document = {
        "candidate": label,
        "result": {
            EXIT_WIDENED: "newly_allowed",
            EXIT_NARROWED: "newly_denied",
            EXIT_UNCHANGED: "unchanged",
        }[report.exit_code],
        "exit_code": report.exit_code,
        "records": report.records,
        "replayed": report.replayed,
        "unchanged": report.unchanged,
        "unchanged_with_other_reason": report.reason_changed,
        "not_replayable": dict(sorted(report.skipped.items())),
        "newly_denied": {
            "count": report.denied_count,
            "by_operation": dict(report.denied_by_operation.most_common()),
            "examples": [_change_json(c) for c in report.newly_denied],
        },
        "newly_allowed": {
            "count": report.allowed_count,
            "by_operation": dict(report.allowed_by_operation.most_common()),
            "examples": [_change_json(c) for c in report.newly_allowed],
        },
    }
    return json.dumps(document, indent=2) + "\n"


def render_markdown(report: ReplayReport, label: str) -> str:
    """A merge-request comment: verdict, then newly allowed (exposure), newly denied (outage)."""
    lines = [f"### gateway replay: recorded traffic under {_md_code(label)}", ""]
    if report.allowed_count:
        lines.append("**Recorded requests would be newly ALLOWED: this change needs review.**")
    elif report.denied_count:
        lines.append("Recorded requests would be newly **denied**: check they should be.")
    else:
        lines.append("No recorded request changes outcome.")
    lines.append("")
    for title, count, by_operation, changes in (
        ("Newly allowed", report.allowed_count, report.allowed_by_operation, report.newly_allowed),
        ("Newly denied", report.denied_count, report.denied_by_operation, report.newly_denied),
    ):
        if not count:
            continue
        lines += [f"#### {title} ({count})", "", "| requests | target/operation |", "| --- | --- |"]
        lines += [f"| {n} | {_md_code(op)} |" for op, n in by_operation.most_common()]
        lines += ["", "First examples:", ""]
        for change in changes:
            lines.append(
                f"- {_md_code(change.request)} at {_md_code(change.time)}: "
                f"{_md_text(_describe(change.before))} → {_md_text(_describe(change.after))}"
            )
        lines.append("")
    for why, n in sorted(report.skipped.items()):
        lines.append(f"- not replayable: {n} ({_md_text(why)})")
    lines.append("")
    lines.append(f"<sub>{_md_text(_verdict_line(report))}</sub>")
    return "\n".join(lines) + "\n"
