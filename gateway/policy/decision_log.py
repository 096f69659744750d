"""The decision log record: one JSON object per decision (``schemas/decision-log.schema.json``).

The record holds the canonical input the policy judged, so an auditor can replay a decision with
``gateway explain``, but never a secret: header values are not in the input at all, and the values
of query parameters whose names suggest a credential (``token``, ``sig``, ``password``, ...) are
replaced by ``***`` (names are compared after percent-decoding). Parameter names, order and
the rest of the query stay as received.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

from gateway.policy.engine import Decision

__all__ = ["MASK", "decision_record", "mask_query"]

MASK = "***"

# Parameter names that carry credentials in the wild: OAuth (RFC 6749 access_token, code),
# Azure SAS (sig, se, skn), API keys, session ids, passwords.
_SECRET_NAME = re.compile(
    r"(token|secret|passw|pwd|key|sig|auth|session|credential|code|cookie|^sk[n]?$|^se$)",
    re.IGNORECASE,
)


def decision_record(
    decision: Decision, input: Mapping[str, Any], *, now: dt.datetime | None = None
) -> dict[str, Any]:
    """The decision log record of ``decision`` made for ``input``."""
    moment = now or dt.datetime.now(dt.UTC)
    if decision.allow:
        result = "allow"
    elif decision.monitor:
        result = "would_deny"
    else:
        result = "deny"
    return {
        "decision_id": str(uuid.uuid4()),
        "time": moment.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "revision": decision.revision,
        "input": _masked_input(input),
        "result": result,
        "target": decision.target,
        "operation": decision.operation,
        "reasons": list(decision.reasons),
        "latency_us": round(decision.latency * 1e6, 1),
        "cached": decision.cached,
    }


def mask_query(query: str) -> str:
    """``query`` with the values of credential-like parameters replaced by ``***``."""
    parts = []
    for part in query.split("&"):
        name, sep, _ = part.partition("=")
        parts.append(f"{name}={MASK}" if sep and _SECRET_NAME.search(unquote_plus(name)) else part)
    return "&".join(parts)


def _masked_input(input: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(input)
    query = out.get("query")
    if isinstance(query, str):
        out["query"] = mask_query(query)
    return out
