"""The policy engine seam: one interface, ``await engine.decide(input) -> Decision``.

Two engines implement it: :mod:`gateway.policy.embedded` (Rego in-process, the default) and
:mod:`gateway.policy.opa` (an OPA server). This base class holds what they share, so both behave
the same at the edges:

* fail closed: an engine fault, a timeout, an undefined result or a result that is not a
  well-formed decision document is a deny with a stable reason, never an exception and never an
  allow (architecture rule 3; catalogue G);
* the decision cache (:mod:`gateway.policy.cache`), consulted before the engine and filled only
  with decisions the policy really made, never with faults;
* monitor mode: the real decision is returned with ``monitor=True`` when the policy denied, which
  tells the caller to log "would deny" and forward anyway. Faults are never monitored: an engine
  that cannot decide never lets a request through.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gateway.policy.cache import DecisionCache

__all__ = [
    "POLICY_UNAVAILABLE",
    "POLICY_UNDEFINED",
    "Decision",
    "PolicyEngine",
    "document_problem",
]

log = logging.getLogger("gateway.policy")

# Reasons the engine layer adds itself; the policy's own reasons are listed in docs/policy.md.
POLICY_UNAVAILABLE = "policy_unavailable"
"""The engine could not decide (unreachable, timed out, failed, or decided on another revision)."""
POLICY_UNDEFINED = "policy_undefined"
"""The engine answered, but not with a decision document (rule missing, package renamed, ...)."""

_FAULTS = frozenset({POLICY_UNAVAILABLE, POLICY_UNDEFINED})

Mode = Literal["enforce", "monitor"]


@dataclass(frozen=True, slots=True)
class Decision:
    """One policy decision, as the pipeline, ``gateway explain`` and the decision log see it."""

    allow: bool
    target: str | None
    operation: str | None
    reasons: tuple[str, ...]
    revision: str
    latency: float
    """Seconds from ``decide`` being called to the decision. A decision served from the cache
    (``cached``) is the one stored when the policy made it, and carries the time that took."""
    cached: bool = False
    monitor: bool = False
    """Monitor mode and the policy denied: log "would deny" and forward anyway."""
    strip_attributes: tuple[str, ...] = ()
    """LDAP search: attribute types removed from every result entry (lower case)."""
    hidden_subtrees: tuple[tuple[str, ...], ...] = ()
    """LDAP search: root-first RDN paths of subtrees whose entries are never returned."""

    def from_cache(self, latency: float) -> Decision:
        """This decision as the decision cache serves it (``cached``), ``latency`` seconds after
        it was asked for. Built directly: ``dataclasses.replace`` inspects the fields on every
        call, which cost 9 us against 3 us (every field is carried over, which a test checks
        against ``replace``)."""
        return Decision(
            self.allow,
            self.target,
            self.operation,
            self.reasons,
            self.revision,
            latency,
            True,
            self.monitor,
            self.strip_attributes,
            self.hidden_subtrees,
        )

    @property
    def forward(self) -> bool:
        """Whether the request goes on to the upstream (allowed, or denied in monitor mode)."""
        return self.allow or self.monitor

    @property
    def status(self) -> int:
        """The HTTP status of a refusal: 503 when the engine could not decide, else 403."""
        return 503 if POLICY_UNAVAILABLE in self.reasons else 403

    def as_dict(self) -> dict[str, Any]:
        """The decision as JSON-ready data (schemas/policy-decision.schema.json plus timing)."""
        return {
            "allow": self.allow,
            "target": self.target,
            "operation": self.operation,
            "reasons": list(self.reasons),
            "revision": self.revision,
            "latency_us": round(self.latency * 1e6, 1),
            "cached": self.cached,
            "monitor": self.monitor,
        }


class EngineError(Exception):
    """Raised by an engine's ``_evaluate`` when it cannot produce a result; becomes a deny."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


UNDEFINED: Any = object()
"""What ``_evaluate`` returns when the query had no result (Rego "undefined")."""


class PolicyEngine(abc.ABC):
    """Base of every engine. Subclasses implement :meth:`_evaluate` and may override the rest."""

    name: str = "engine"

    def __init__(self, *, revision: str, mode: Mode, cache: DecisionCache | None) -> None:
        self._revision = revision
        self._mode: Mode = mode
        self._cache = cache
        if mode == "monitor":
            # Loud on purpose (issue item 7): in monitor mode the policy does not protect anything.
            log.warning(
                "policy mode is MONITOR: denied requests are logged as 'would deny' and "
                "FORWARDED ANYWAY; use this only for trials",
                extra={"event": "policy_monitor_mode", "engine": self.name, "revision": revision},
            )

    @property
    def revision(self) -> str:
        """The configuration and policy revision every decision of this engine carries."""
        return self._revision

    @property
    def mode(self) -> Mode:
        """``enforce`` or ``monitor``."""
        return self._mode

    @property
    def cache(self) -> DecisionCache | None:
        """The decision cache, or None when the policy cannot be cached (see the cache module)."""
        return self._cache

    @property
    def ready(self) -> bool:
        """Whether the engine can decide now (for /readyz); decisions are denies until it can."""
        return True

    async def start(self) -> None:  # noqa: B027 - engines without start-up work inherit this
        """Prepare the engine (connect, push the policy). Never raises: faults show in ``ready``."""

    async def close(self) -> None:  # noqa: B027 - engines without resources inherit this
        """Release the engine's resources; ``decide`` must not be called afterwards."""

    async def decide(self, input: Mapping[str, Any]) -> Decision:
        """Decide one request. Never raises; every fault is a deny carrying its reason.

        A decision found in the cache is returned as it was stored (immutable, shared by every
        request it answers): building a copy per request to carry that request's look-up time
        cost more than the look-up itself."""
        cache = self._cache
        key = None
        if cache is not None:
            key = cache.key(input)
            hit = cache.get(key)
            if hit is not None:
                return hit
        started = time.perf_counter()
        try:
            document = await self._evaluate(input)
        except EngineError as fault:
            log.warning(
                "policy engine fault: %s",
                fault.detail,
                extra={"event": "policy_fault", "engine": self.name, "reason": fault.reason},
            )
            return self._fault(fault.reason, input, started)
        decision = self._interpret(document, input, started)
        if cache is not None and key is not None and not _FAULTS.intersection(decision.reasons):
            cache.put(key, decision.from_cache(decision.latency))
        return decision

    @abc.abstractmethod
    async def _evaluate(self, input: Mapping[str, Any]) -> Any:
        """Return ``data.gateway.authz.decision`` for ``input``, or :data:`UNDEFINED`.

        Raise :class:`EngineError` when the engine cannot answer.
        """

    def _interpret(self, document: Any, input: Mapping[str, Any], started: float) -> Decision:
        """Check the decision document strictly; anything unexpected is a deny."""
        if document is UNDEFINED:
            return self._fault(POLICY_UNDEFINED, input, started)
        if document_problem(document, None) is not None:
            log.warning(
                "policy returned something that is not a decision document",
                extra={"event": "policy_invalid_result", "engine": self.name},
            )
            return self._fault(POLICY_UNDEFINED, input, started)
        if document["revision"] != self._revision:
            # The engine decided with other data than ours (an OPA server restarted or changed
            # by someone else): that decision is about a different allow-list.
            log.warning(
                "policy decided with revision %r, expected %r",
                document["revision"],
                self._revision,
                extra={"event": "policy_stale_revision", "engine": self.name},
            )
            return self._fault(POLICY_UNAVAILABLE, input, started)
        allow = document["allow"]
        ldap = document.get("ldap") or {}
        return Decision(
            allow=allow,
            target=document["target"],
            operation=document["operation"],
            reasons=tuple(document["reasons"]),
            revision=self._revision,
            latency=time.perf_counter() - started,
            monitor=self._mode == "monitor" and not allow,
            strip_attributes=tuple(ldap.get("strip_attributes", ())),
            hidden_subtrees=tuple(tuple(path) for path in ldap.get("hidden_subtrees", ())),
        )

    def _fault(self, reason: str, input: Mapping[str, Any], started: float) -> Decision:
        target = input.get("target")
        return Decision(
            allow=False,
            target=target if isinstance(target, str) else None,
            operation=None,
            reasons=(reason,),
            revision=self._revision,
            latency=time.perf_counter() - started,
        )


def document_problem(document: Any, revision: str | None) -> str | None:
    """Why ``document`` is not exactly a decision document (schemas/policy-decision.schema.json)
    of ``revision`` (any revision when None), or None when it is one.

    The decision on an LDAP operation has one more key, ``ldap``: what the answer must not
    carry (``strip_attributes``: attribute types; ``hidden_subtrees``: RDN paths)."""
    if not isinstance(document, dict) or set(document) - {"ldap"} != _DECISION_KEYS:
        return "not an object with exactly allow, target, operation, reasons and revision"
    if "ldap" in document and _ldap_problem(document["ldap"]) is not None:
        return _ldap_problem(document["ldap"])
    allow = document["allow"]
    reasons = document["reasons"]
    if allow is not True and allow is not False:
        return "allow is not a boolean"
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        return "reasons is not a list of strings"
    if allow and reasons:
        return "an allow with reasons"  # contradictory: treat it as no decision
    if not allow and not reasons:
        return "a deny without a reason"  # every deny says why; a silent one means a bug
    if not isinstance(document["revision"], str):
        return "revision is not a string"
    if revision is not None and document["revision"] != revision:
        return f"revision {document['revision'][:80]!r} is not this revision"
    for key in ("target", "operation"):
        if document[key] is not None and not isinstance(document[key], str):
            return f"{key} is neither null nor a string"
    return None


_DECISION_KEYS = frozenset({"allow", "target", "operation", "reasons", "revision"})


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _ldap_problem(ldap: Any) -> str | None:
    """Why the ``ldap`` part of a decision is malformed (a deny: the proxy could not know what to
    hide), or None."""
    if not isinstance(ldap, dict) or set(ldap) != {"strip_attributes", "hidden_subtrees"}:
        return "ldap is not an object with exactly strip_attributes and hidden_subtrees"
    if not _strings(ldap["strip_attributes"]):
        return "ldap.strip_attributes is not a list of strings"
    hidden = ldap["hidden_subtrees"]
    if not isinstance(hidden, list) or not all(_strings(path) for path in hidden):
        return "ldap.hidden_subtrees is not a list of RDN paths"
    return None
