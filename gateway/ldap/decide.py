"""The decision on one LDAP operation: the same Rego policy and engine as every HTTP request.

``LdapChain.decide(LdapFacts)`` builds the policy input from a decoded request
(:func:`gateway.ldap.policy_input.ldap_input`: DNs as root-first RDN paths prepared the way the
directory compares them, attribute types normalised, no secret) plus what the connection is bound
as, asks the engine for ``data.gateway.authz.decision`` (``policies/gateway/authz.rego``, LDAP
section; the rules are ``data.gateway.ldap`` from :mod:`gateway.policy.data`), and returns an
:class:`LdapVerdict`. The proxy, ``gateway explain --ldap``, ``policy-test`` and decision replay
all call it, so none of them can answer differently from a running gateway.

It never raises for a refused operation: a DN the gateway cannot compare (the core refuses it) and
an engine that cannot decide are denies too, with ``ldap_dn_*`` and ``policy_unavailable`` /
``policy_undefined`` as ``reasons[0]``. Monitor mode does not apply: LDAP operations are always
enforced (a "would deny" of an LDAP write cannot be undone, and stripping a secret in a trial
costs nothing).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from gateway.config.model import (
    LDAP_SCHEMES,
    PAGED_RESULTS_OID,
    GatewayConfig,
    LdapOperation,
    Target,
)
from gateway.ldap.codec import Change, Control, FilterNode, Operation, Request
from gateway.ldap.disclosure import Reach
from gateway.ldap.dn import DEFAULT_RULES, Dn, MatchingRules, normalise_attribute
from gateway.ldap.errors import DnError, LdapRefusedError
from gateway.ldap.policy_input import (
    bind_name,
    bind_subject,
    dn_path,
    ldap_input,
    subtree_path,
)
from gateway.policy.cache import BoundedLru
from gateway.policy.engine import POLICY_UNAVAILABLE, POLICY_UNDEFINED

if TYPE_CHECKING:
    from gateway.pipeline import Decider

__all__ = [
    "LdapChain",
    "LdapFacts",
    "LdapVerdict",
    "matching_rules",
    "policy_document",
    "refusal_reason",
    "smoke_facts",
    "verdict_key",
]

_ENGINE_FAULTS = frozenset({POLICY_UNAVAILABLE, POLICY_UNDEFINED})
VERDICT_CACHE_ENTRIES = 4096


@dataclass(frozen=True)
class LdapFacts:
    """One LDAP operation on a stream, as the policy decides it.

    ``bound_as`` is the bind identity's name when the gateway bound with a stored credential
    (``injected``), the DN or user principal name the stream bound with otherwise, and None while
    it is anonymous or unbound. ``inner_tls`` says the SaaS reached the gateway over the TLS
    inside the relayed stream (simple binds are refused without it).
    """

    target: str
    request: Request
    bound_as: str | None
    injected: bool
    keyid: str | None
    inner_tls: bool


@dataclass(frozen=True)
class LdapVerdict:
    """What the policy decided for one LDAP operation.

    ``reasons[0]`` is a stable reason code for a deny (``ldap_not_granted``,
    ``ldap_never_reachable``, ``ldap_control_refused``, ...); the proxy puts it in the diagnostic
    message. For an allowed search, ``strip_attributes`` (lower-case types) must be removed from
    every result entry and entries within ``hidden_subtrees`` (root-first RDN paths of never
    reachable subtrees the scope reaches) must not be returned: :meth:`strips`, :meth:`hides`.
    ``granted_subtrees``, when not None, are the subtrees of the rule that granted a search
    which dereferences aliases or carries a control other than paged results: entries outside
    all of them are not returned either (an alias or a control can lead anywhere, RFC 4511
    4.5.1.3, and the policy judged the base and scope, not where they lead).
    """

    allowed: bool
    reasons: tuple[str, ...]
    operation: str | None
    strip_attributes: frozenset[str]
    revision: str
    document: Mapping[str, Any]
    hidden_subtrees: tuple[tuple[str, ...], ...] = ()
    granted_subtrees: tuple[tuple[str, ...], ...] | None = None
    matching: MatchingRules = field(default=DEFAULT_RULES, repr=False)
    latency: float = 0.0
    """Seconds the engine took (for the decision-latency metric)."""
    reach: Reach | None = field(default=None, repr=False)
    """For an allowed operation: which referral URLs and matchedDNs of the directory's answers
    may pass (:mod:`gateway.ldap.disclosure`); None passes none."""

    @property
    def unavailable(self) -> bool:
        """The engine could not decide (answer busy/other, not insufficientAccessRights)."""
        return not self.allowed and bool(self.reasons) and self.reasons[0] in _ENGINE_FAULTS

    def strips(self, description: str) -> bool:
        """Whether an attribute of a result entry, by its description, must be removed."""
        return normalise_attribute(description) in self.strip_attributes

    def hides(self, entry_dn: str) -> bool:
        """Whether a search result entry with this DN must not be returned.

        An entry whose DN cannot be compared is hidden when any subtree is: fail closed.
        """
        granted = self.granted_subtrees
        if not self.hidden_subtrees and granted is None:
            return False
        # Called for every entry a search returns: only the RDNs the prefix test looks at are
        # written out (the whole DN is still parsed, so one that cannot be is hidden).
        depth = max(len(subtree) for subtree in (*self.hidden_subtrees, *(granted or ())))
        try:
            path = dn_path(Dn.parse(entry_dn, self.matching), depth)
        except DnError:
            return True
        if path is None:
            return True
        if granted is not None and not any(_prefix(path, subtree) for subtree in granted):
            return True
        return any(_prefix(path, hidden) for hidden in self.hidden_subtrees)


def _unscoped(request: Request) -> bool:
    """Whether something besides a search's base and scope decides which entries it returns:
    alias dereferencing (RFC 4511 4.5.1.3), or a control other than paged results (RFC 2696
    only pages): AD's attribute scoped query returns the entries an attribute of the base names,
    show deleted reaches deleted objects, and the gateway does not read control values. The
    policy's ``ldap_unscoped`` says the same."""
    return bool(request.deref_aliases) or any(
        control.oid != PAGED_RESULTS_OID for control in request.controls
    )


def _prefix(path: list[str], subtree: tuple[str, ...]) -> bool:
    """Whether the entry at ``path`` (root-first, at least as deep as ``subtree`` when it is
    within it) lies in ``subtree``."""
    return tuple(path[: len(subtree)]) == subtree


def refusal_reason(refused: LdapRefusedError) -> str:
    """The policy-style reason code of a refusal by the core (``ldap-dn-syntax`` is
    ``ldap_dn_syntax``), so every deny of an operation reads alike."""
    return refused.reason.replace("-", "_")


def matching_rules(target: Target | None) -> MatchingRules:
    """How the target's directory compares DNs (``ldap.case_insensitive_values`` and
    ``ldap.allow_extended_dn``); the default rules for anything else."""
    if target is None or target.ldap is None:
        return DEFAULT_RULES
    return MatchingRules(
        case_insensitive=target.ldap.case_insensitive_values,
        allow_extended=target.ldap.allow_extended_dn,
    )


class LdapChain:
    """Decides LDAP operations under one revision (``Runtime.ldap_chain``).

    Verdicts are cached (:func:`verdict_key`): a search that a sync job repeats on every page or
    every run costs a dictionary look-up instead of DN preparation and a Rego evaluation. The
    cache belongs to the chain and the chain to one revision (a reload builds a new ``Runtime``
    and with it a new chain); it is also cleared if the engine ever reports another revision, so
    no verdict of an old allow-list is served. An engine fault is never cached.
    """

    __slots__ = ("_forbidden", "_revision", "cache", "config", "engine")

    def __init__(
        self,
        config: GatewayConfig,
        engine: Decider,
        *,
        cache_entries: int = VERDICT_CACHE_ENTRIES,
    ) -> None:
        self.config = config
        self.engine = engine
        self.cache: BoundedLru[LdapVerdict] = BoundedLru(max_entries=cache_entries)
        self._revision: str | None = None  # the revision the cached verdicts were made under
        # Each target's never-reachable paths, prepared once (the configuration is fixed).
        self._forbidden: dict[str, tuple[tuple[str, ...], ...]] = {}

    def matching(self, target: str) -> MatchingRules:
        """The DN matching rules of LDAP target ``target``."""
        return matching_rules(self.config.targets.get(target))

    def document(self, facts: LdapFacts) -> dict[str, Any]:
        """The policy input for ``facts`` (:func:`policy_document`)."""
        return policy_document(self.config, facts)

    async def decide(self, facts: LdapFacts) -> LdapVerdict:
        """The verdict on ``facts``; never raises for a refusal or an engine fault."""
        started = time.perf_counter()
        revision = self.engine.revision
        if revision != self._revision:
            self.cache.clear()
            self._revision = revision
        key = verdict_key(facts)
        cached = self.cache.get(key)
        if cached is not None:
            return replace(cached, latency=time.perf_counter() - started)
        verdict = await self._decide(facts)
        if not verdict.unavailable and verdict.revision == revision:
            self.cache.put(key, verdict)
        return verdict

    async def _decide(self, facts: LdapFacts) -> LdapVerdict:
        rules = self.matching(facts.target)
        try:
            document = self.document(facts)
        except LdapRefusedError as refused:
            return LdapVerdict(
                allowed=False,
                reasons=(refusal_reason(refused),),
                operation=None,
                strip_attributes=frozenset(),
                revision=self.engine.revision,
                document={"target": facts.target, "ldap": {"operation": facts.request.operation}},
                matching=rules,
            )
        started = time.perf_counter()
        decision = await self.engine.decide(document)
        elapsed = time.perf_counter() - started
        allowed = decision.allow
        granted: tuple[tuple[str, ...], ...] | None = None
        reach: Reach | None = None
        if allowed:
            subtrees = self._granted_subtrees(facts.target, decision.operation, document)
            reach = self._reach(facts.target, subtrees, document)
            if facts.request.operation is Operation.SEARCH and _unscoped(facts.request):
                granted = subtrees
        return LdapVerdict(
            allowed=allowed,
            reasons=tuple(decision.reasons) if not allowed else (),
            operation=decision.operation if allowed else None,
            strip_attributes=frozenset(decision.strip_attributes) if allowed else frozenset(),
            revision=decision.revision,
            document=document,
            hidden_subtrees=tuple(tuple(path) for path in decision.hidden_subtrees)
            if allowed
            else (),
            granted_subtrees=granted,
            matching=rules,
            latency=elapsed,
            reach=reach,
        )

    def _reach(
        self,
        target: str,
        granted: tuple[tuple[str, ...], ...] | None,
        document: Mapping[str, Any],
    ) -> Reach | None:
        """What the answers to an allowed operation may name (:class:`Reach`)."""
        config = self.config.targets.get(target)
        if config is None or config.ldap is None:
            return None
        matching = self.matching(target)
        forbidden = self._forbidden.get(target)
        if forbidden is None:
            forbidden = tuple(
                tuple(subtree_path(text, matching)) for text in config.ldap.never_reachable
            )
            self._forbidden[target] = forbidden
        ldap = document["ldap"]
        named = [ldap.get(key) for key in ("dn_path", "new_superior_path", "new_dn_path")]
        return Reach(
            host=config.host.lower(),
            port=config.effective_port,
            granted=granted,
            forbidden=forbidden,
            named=tuple(tuple(path) for path in named if path is not None),
            matching=matching,
        )

    def _granted_subtrees(
        self, target: str, rule_name: str | None, document: Mapping[str, Any]
    ) -> tuple[tuple[str, ...], ...] | None:
        """The subtrees of the rule that granted an operation (None: the whole directory): the
        only entries a search which dereferences aliases may return, and the only places the
        answers may name (:meth:`_reach`). A grant by no rule of the target (an extension
        module's policy) keeps them to the request's DN, and a DN with no place (an AD
        ``<GUID=...>``) to nothing."""
        config = self.config.targets.get(target)
        rules = config.ldap.operations if config is not None and config.ldap is not None else []
        rule = next((rule for rule in rules if rule.name == rule_name), None)
        if rule is None:
            base = document["ldap"].get("dn_path")
            return (tuple(base),) if base is not None else ()
        matching = self.matching(target)
        paths = tuple(tuple(subtree_path(text, matching)) for text in rule.subtrees)
        return None if () in paths else paths


# A request whose key would hold more characters than this is decided without the cache, so the
# cache holds at most about VERDICT_CACHE_ENTRIES * _MAX_KEY_CHARS characters of keys (16 Mi).
_MAX_KEY_CHARS = 4096


def verdict_key(facts: LdapFacts) -> Hashable | None:
    """The verdict cache key of ``facts``: everything the verdict can depend on, nothing else.

    The verdict is a function of the chain's configuration and policy (fixed for one revision)
    and of the policy document, which :func:`policy_document` builds from ``facts``. So the key is
    ``facts`` itself with the fields the document never reads taken out: the message id (new on
    every PDU), and the values the document leaves out on purpose because they are secret or
    per-page noise: the bind password (only whether it is empty counts, RFC 4513 5.1.2), the
    compare assertion, filter values (only the filter's shape counts) and control values (a
    paged-results cookie changes on every page; only OID and criticality count). Anything else,
    including fields added later, stays in the key: the key may only err towards being larger,
    which costs hits, never correctness. None (not cached) for a request above the size bound.
    """
    request = facts.request
    noise: dict[str, Any] = {"message_id": 0}
    subject = ""
    if request.credentials and request.auth_method == "sasl":
        # A SASL bind is decided by the identity its credentials carry (bind_subject), never
        # by their password: that identity (or that there is none to read) is the key.
        read = bind_subject(request)
        subject = "" if read is None else read
        noise["credentials"] = b"\x01" if read is None else b"\x00" + subject.encode()
    elif request.credentials:
        noise["credentials"] = b"\x00"  # "not empty", never the password itself
    if request.assertion:
        noise["assertion"] = b""
    if any(control.value is not None for control in request.controls):
        noise["controls"] = tuple(Control(c.oid, c.critical) for c in request.controls)
    weight = (
        len(request.dn)
        + len(request.new_rdn)
        + len(request.new_superior or "")
        + sum(len(item) for item in request.attributes)
        + sum(len(change.attribute) + 8 for change in request.changes)
        + len(request.request_value or b"")
        + len(facts.bound_as or "")
        + len(subject)
        + len(facts.keyid or "")
    )
    shape: Hashable = None
    if request.filter is not None:
        noise["filter"] = None
        shape, size = _filter_shape(request.filter)
        weight += size
    if weight > _MAX_KEY_CHARS:
        return None
    stripped = replace(request, **noise)
    return (
        facts.target,
        facts.bound_as,
        facts.injected,
        facts.keyid,
        facts.inner_tls,
        stripped,
        shape,
    )


def _filter_shape(node: FilterNode) -> tuple[Hashable, int]:
    """A filter without its values (RFC 4511 4.5.1.7: what is tested, not against what), and
    roughly how many characters that shape holds."""
    children = [_filter_shape(child) for child in node.children]
    shape = (
        node.kind,
        node.attribute,
        node.rule,
        node.dn_attributes,
        tuple(kind for kind, _ in node.substrings),
        tuple(child for child, _ in children),
    )
    return shape, 8 + len(node.attribute) + len(node.rule) + sum(size for _, size in children)


def policy_document(config: GatewayConfig, facts: LdapFacts) -> dict[str, Any]:
    """The policy input for ``facts``; raises ``LdapRefusedError`` for a DN the gateway cannot
    compare the way the target's directory does."""
    rules = matching_rules(config.targets.get(facts.target))
    request = facts.request
    ldap = ldap_input(request, rules)
    # The message id is not the policy's business, and keeping it out lets equal operations
    # share a cache entry.
    ldap.pop("message_id", None)
    if request.operation is Operation.BIND:
        # RFC 4513 5.1.2: a name with an empty password is an unauthenticated bind. Only
        # whether it is empty enters the input, never the password.
        ldap["bind"]["empty_credentials"] = not request.credentials
    elif request.operation is Operation.SEARCH:
        # RFC 4511 4.5.1.3: with dereferencing on, the directory may return entries found
        # through an alias, from anywhere, whatever the base and scope say.
        ldap["deref_aliases"] = request.deref_aliases
    return {
        "target": facts.target,
        "ldap": ldap,
        "connection": _connection(facts, rules),
        # The stream's connect was verified before any operation on it is decided.
        "signature": {"verified": True, "keyid": facts.keyid},
    }


def smoke_facts(config: GatewayConfig) -> Iterator[LdapFacts]:
    """Operations that exercise every LDAP rule (for the policy check): each kind of each rule
    inside its first subtree, bound as its first identity, plus an unbound search and a search
    with a control no target allows."""
    for name in sorted(config.targets):
        target = config.targets[name]
        if target.ldap is None or target.scheme not in LDAP_SCHEMES:
            continue
        for rule in target.ldap.operations:
            bound = rule.bind_as[0] if rule.bind_as else None
            injected = bound is not None and bound in target.ldap.bind_identities
            base = rule.subtrees[0] if rule.subtrees else ""
            for kind in rule.kinds:
                request = _smoke_request(kind, base, rule, target)
                yield LdapFacts(
                    name, request, bound if kind != "bind" else None, injected, None, True
                )
        probe = Request(1, Operation.SEARCH, dn="", scope="base", attributes=("1.1",))
        yield LdapFacts(name, probe, None, False, None, True)
        refused = replace(probe, controls=(Control(_SMOKE_CONTROL, True),))
        yield LdapFacts(name, refused, "policy-check", False, None, True)


# The documentation arc for private enterprise numbers (RFC 5612): no directory implements it.
_SMOKE_CONTROL = "1.3.6.1.4.1.32473.1"


def _smoke_request(kind: str, base: str, rule: LdapOperation, target: Target) -> Request:
    named = [a for a in rule.attributes if a not in ("*", "+")] or ["cn"]
    entry = f"cn=policy-check,{base}" if base else "cn=policy-check"
    if kind == "bind":
        name = rule.bind_as[0] if rule.bind_as else ""
        identity = target.ldap is not None and name in target.ldap.bind_identities
        password = b"" if identity else b"policy-check"
        return Request(
            1, Operation.BIND, dn=name, version=3, auth_method="simple", credentials=password
        )
    if kind == "search":
        return Request(
            1,
            Operation.SEARCH,
            dn=base,
            scope=rule.scopes[0],
            size_limit=rule.max_size_limit or 0,
            time_limit=rule.max_time_limit or 0,
            filter=FilterNode("present", attribute="objectClass"),
            attributes=tuple(named[:4]),
        )
    if kind == "compare":
        return Request(1, Operation.COMPARE, dn=entry, attributes=(named[0],))
    if kind == "add":
        return Request(1, Operation.ADD, dn=entry, attributes=tuple(named[:4]))
    if kind == "delete":
        return Request(1, Operation.DELETE, dn=entry)
    if kind == "modify":
        change = Change(rule.change_types[0], named[0], 1)
        return Request(1, Operation.MODIFY, dn=entry, changes=(change,))
    if kind == "modify_dn":
        return Request(1, Operation.MODIFY_DN, dn=entry, new_rdn="cn=policy-check-2")
    oid = (
        target.ldap.extended_operations[0]
        if target.ldap and target.ldap.extended_operations
        else ""
    )
    return Request(1, Operation.EXTENDED, request_name=oid)


def _connection(facts: LdapFacts, rules: MatchingRules) -> dict[str, Any]:
    """``input.connection``: what the stream is bound as, in the forms bind rules compare."""
    bound = facts.bound_as
    path: list[str] | None = None
    if bound is not None and not facts.injected:
        with contextlib.suppress(DnError):
            path = dn_path(Dn.parse(bound, rules))
    return {
        "bound": bound is not None,
        "injected": bool(facts.injected and bound is not None),
        "identity": bound if facts.injected else None,
        "dn_path": path,
        # A user principal name or DOMAIN\user compares case-insensitively, as in AD.
        "name": "" if bound is None or facts.injected else bind_name(bound),
        "inner_tls": facts.inner_tls,
    }
