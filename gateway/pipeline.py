"""The per-request chain: parse -> authenticate -> select target -> canonicalise -> decide ->
forward -> answer -> audit, as small steps that each either pass the request on or refuse it.

Every refusal carries a stable reason code and one HTTP status; nothing reaches an on-prem system
unless every earlier step passed. Each request is decided entirely under one configuration and
policy revision (the :class:`Runtime` snapshot taken when it arrives), so a reload in the middle
of a request cannot mix two revisions.

Addressing (the contract with the SaaS, see docs/relay-contract.md): the relayed request target is
``/{selector}/{on-prem path}?{query}``, where ``selector`` is a target name from gateway.yaml or the
exact ``host:port`` of a declared target. A stream (WebSocket ``accept``) uses the same form.

Streams: on ``accept`` the signed connect headers are verified, the target is canonicalised as a
WebSocket request, the policy decides (an http or https target needs an operation with
``websocket: true`` on the path; for a tcp target the target itself is the grant), the stream
limits are counted, and the upstream is opened (raw TCP, or a WebSocket through
:mod:`gateway.forward.websocket`). Only then is the stream accepted, so a refusal at any step,
including a target that refuses the upgrade, is a rejected handshake for the SaaS rather than a
stream that opens and dies. The listener then serves it and :func:`gateway.forward.streams.relay`
splices the two until either ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import re
import secrets
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol, cast

from gateway.auth import BadSignatureLimiter, SignatureError, SignatureVerifier
from gateway.config import LoadedConfig
from gateway.config.model import LDAP_SCHEMES, GatewayConfig, Operation, Target
from gateway.forward.canonical import CanonicalRequest, canonicalise
from gateway.forward.credentials import CredentialError, CredentialSet, Injector
from gateway.forward.dial import DialError, Guard, Redirect, Resolver, system_resolver
from gateway.forward.headers import (
    check_declared_length,
    credential_name,
    forwardable_names,
    host_header,
    outbound_headers,
    refuse_saas_credentials,
)
from gateway.forward.rejections import RequestRejected
from gateway.forward.streams import CLOSE_POLICY, TcpEnd, UpstreamEnd, open_tcp, relay
from gateway.forward.upstream import Upstream, UpstreamError, UpstreamResponse
from gateway.forward.websocket import WebSocketUpstream
from gateway.hybridconnection.records import slot_setters
from gateway.ldap.innertls import InnerTlsError
from gateway.observability.metrics import Metrics
from gateway.policy.decision_log import RECORD_VERSION, recorded_input
from gateway.policy.input import build_input
from gateway.relay.handlers import (
    AcceptInfo,
    AcceptStream,
    RejectStream,
    RelayedRequest,
    RelayedResponse,
    RelayRefusal,
    StreamDecision,
    StreamSocket,
)

if TYPE_CHECKING:
    # The LDAP proxy (its BER codec, DN parser and their ASN.1 libraries) is imported only by
    # a revision with an LDAP target: a gateway without one never loads it (issue 13, memory).
    from gateway.ldap import stream as ldap_stream
    from gateway.ldap.decide import LdapChain
    from gateway.ldap.proxy import OperationOutcome

log = logging.getLogger(__name__)

# Largest error body we produce; keeps refusals on the relay's control channel.
_MAX_DETAIL = 200
# Seconds the upstream of a stream may take to open (DNS, connect, TLS, WebSocket upgrade): it is
# opened while the listener decides on the accept, which it bounds at 10 s.
STREAM_OPEN_TIMEOUT = 8.0
# Seconds a decided stream waits for the listener to serve it. The listener serves right after its
# rendezvous handshake (bounded at 20 s); a stream not served by then never will be.
ACCEPT_WINDOW = 30.0
MAX_SUBPROTOCOLS = 16
CLOSE_GOING_AWAY = 1001
# RFC 9110 section 5.6.2 token, the syntax of a subprotocol name (RFC 6455 section 4.1).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")


class Decision(Protocol):
    """What the policy engine answers (see gateway.policy.engine.Decision)."""

    @property
    def allow(self) -> bool: ...
    @property
    def target(self) -> str | None: ...
    @property
    def operation(self) -> str | None: ...
    @property
    def reasons(self) -> Sequence[str]: ...
    @property
    def revision(self) -> str: ...
    @property
    def monitor(self) -> bool:
        """Monitor mode and the policy denied: forward anyway, record "would deny"."""
        ...

    @property
    def status(self) -> int:
        """The refusal status: 503 when the engine could not decide, else 403."""
        ...

    @property
    def latency(self) -> float:
        """Seconds the engine took."""
        ...

    @property
    def strip_attributes(self) -> Sequence[str]:
        """LDAP search: attribute types removed from every result entry."""
        ...

    @property
    def hidden_subtrees(self) -> Sequence[Sequence[str]]:
        """LDAP search: root-first RDN paths whose entries are never returned."""
        ...

    def as_dict(self) -> dict[str, Any]:
        """The decision as JSON-ready data (schemas/policy-decision.schema.json plus timing)."""
        ...


class Decider(Protocol):
    """The policy engine seam."""

    @property
    def revision(self) -> str:
        """The configuration and policy revision every decision carries (heartbeats report it)."""
        ...

    @property
    def ready(self) -> bool:
        """Whether the engine can decide now (``/readyz``); its decisions are 503s until then."""
        ...

    async def decide(self, input: Mapping[str, Any]) -> Decision:
        """Decide one canonical request; fail closed (deny with a reason) on any fault."""
        ...


@dataclass(frozen=True)
class Runtime:
    """Everything one request is decided and forwarded under: one revision, swapped as a whole."""

    loaded: LoadedConfig
    engine: Decider
    upstream: Upstream
    websockets: WebSocketUpstream
    resolver: Resolver = system_resolver
    redirect: Redirect | None = None
    guard: Guard | None = None
    credentials: CredentialSet = field(default_factory=lambda: CredentialSet({}))
    """The credentials this revision injects (:mod:`gateway.forward.credentials`)."""
    chain: Chain = field(init=False, repr=False, compare=False)
    """The steps that decide every request of this revision (:class:`Chain`)."""
    ldap_chain: LdapChain | None = field(init=False, repr=False, compare=False)
    """The decision on every LDAP operation of this revision (:mod:`gateway.ldap.decide`);
    None when the revision has no LDAP target."""

    def __post_init__(self) -> None:
        # Frozen: the chains are derived once from the configuration and engine of this revision.
        object.__setattr__(self, "chain", Chain(self.loaded.config, self.engine))
        ldap_chain = None
        if any(t.scheme in LDAP_SCHEMES for t in self.loaded.config.targets.values()):
            from gateway.ldap.decide import LdapChain

            ldap_chain = LdapChain(self.loaded.config, self.engine)
        object.__setattr__(self, "ldap_chain", ldap_chain)

    @property
    def revision(self) -> str:
        """The configuration revision (policy revisions are carried by each decision)."""
        return self.loaded.revision

    @classmethod
    def build(
        cls,
        loaded: LoadedConfig,
        engine: Decider,
        *,
        resolver: Resolver = system_resolver,
        redirect: Redirect | None = None,
        guard: Guard | None = None,
    ) -> Runtime:
        """The revision for ``loaded``: both connection pools share the same dial seams."""
        pools: dict[str, Any] = {
            "resolver": resolver,
            "redirect": redirect,
            "guard": guard,
            "resolve_path": loaded.resolve_path,
        }
        return cls(
            loaded=loaded,
            engine=engine,
            upstream=Upstream(loaded.config, **pools),
            websockets=WebSocketUpstream(loaded.config, **pools),
            resolver=resolver,
            redirect=redirect,
            guard=guard,
            credentials=CredentialSet.build(
                loaded, resolver=resolver, redirect=redirect, guard=guard
            ),
        )

    async def close(self) -> None:
        """Close both connection pools and the engine (once no request uses this revision)."""
        await self.upstream.close()
        await self.websockets.close()
        await self.credentials.close()
        closer = getattr(self.engine, "close", None)
        if closer is not None:
            await closer()


class Refusal(Exception):  # noqa: N818 - a refusal is an expected outcome, not a fault
    """A step refused the request: ``status`` and ``code`` are what the SaaS is told.

    ``cause`` is the underlying reason when ``code`` stands for a policy about it (a 429 for
    the bad signature that tripped the limiter): recorded in the audit log, not told to the SaaS.
    ``retry_after`` (seconds) becomes a ``Retry-After`` header (RFC 9110 section 10.2.3).
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str = "",
        stage: str = "",
        *,
        cause: str = "",
        retry_after: int | None = None,
    ) -> None:
        super().__init__(detail or code)
        self.status = status
        self.code = code
        self.detail = detail[:_MAX_DETAIL]
        self.stage = stage
        self.cause = cause
        self.retry_after = retry_after


# Stands in where no operation applies: a raw tcp stream (the target itself is the grant) and, in
# monitor mode, a request no operation grants. It forwards the default headers only.
_NO_OPERATION = Operation.model_validate(
    {"name": "no-operation", "methods": ["GET"], "paths": ["/"]}
)


def split_selector(relayed_target: str) -> tuple[str, str]:
    """``/erp/api/x?q`` -> (``erp``, ``/api/x?q``); a bare ``/erp`` or ``/erp?q`` gives ``/``."""
    match = _SELECTOR.match(relayed_target)
    if match is None:
        raise Refusal(400, "invalid_request_target", "the request target must start with '/'")
    selector, remainder = match.groups()
    if not selector:
        raise Refusal(400, "missing_target", "the first path segment must name a target")
    if not remainder.startswith("/"):
        remainder = "/" + remainder
    return selector, remainder


# The first segment of a relayed target, up to the first '/' or '?', and the rest: matches every
# string that starts with '/' (newlines included) and no other.
_SELECTOR = re.compile(r"/([^/?]*)(.*)", re.DOTALL)


def error_response(refusal: Refusal, request_id: str) -> RelayedResponse:
    """A small JSON error body the SaaS can act on (and that fits the control channel)."""
    body = json.dumps(
        {"error": refusal.code, "detail": refusal.detail, "request_id": request_id},
        separators=(",", ":"),
    ).encode()
    headers: tuple[tuple[str, str], ...] = (
        ("content-type", "application/json"),
        ("x-gateway-reason", refusal.code),
    )
    if refusal.retry_after is not None:
        headers += (("retry-after", str(refusal.retry_after)),)
    return RelayedResponse(status=refusal.status, reason="", headers=headers, body=body)


@dataclass(frozen=True, slots=True, init=False)
class RequestFacts:
    """A request as the chain of steps decides it: the one description live and offline share.

    The live path builds it from a relayed request once its signature verified (``signed`` and
    ``keyid`` come from the verifier); ``gateway explain`` builds it from the command line, and a
    tool re-deciding recorded requests builds it from a decision-log record. ``selector`` is a
    target name or the exact ``host:port`` of a declared target; ``request_target`` is the
    origin-form ``/path?query`` as relayed, with the selector already removed.
    """

    method: str
    selector: str
    request_target: str
    headers: tuple[tuple[str, str], ...] = ()
    websocket: bool = False
    body_size: int = 0
    signed: bool = True
    keyid: str | None = None

    def __init__(
        self,
        method: str,
        selector: str,
        request_target: str,
        headers: tuple[tuple[str, str], ...] = (),
        websocket: bool = False,
        body_size: int = 0,
        signed: bool = True,
        keyid: str | None = None,
    ) -> None:
        # Made per relayed request: each slot set by its own setter, about half the cost of the
        # frozen dataclass's own __init__ (gateway.hybridconnection.records).
        s_method, s_selector, s_target, s_headers, s_ws, s_size, s_signed, s_keyid = _FACTS_SLOTS
        s_method(self, method)
        s_selector(self, selector)
        s_target(self, request_target)
        s_headers(self, headers)
        s_ws(self, websocket)
        s_size(self, body_size)
        s_signed(self, signed)
        s_keyid(self, keyid)

    def signed_by(self, keyid: str | None) -> RequestFacts:
        """These facts once the signature by ``keyid`` verified. Built directly, like
        :meth:`gateway.policy.engine.Decision.from_cache`: ``dataclasses.replace`` cost 8 us of
        every relayed request (a test checks every field is carried over)."""
        return RequestFacts(
            self.method,
            self.selector,
            self.request_target,
            self.headers,
            self.websocket,
            self.body_size,
            self.signed,
            keyid,
        )

    @classmethod
    def relayed(
        cls,
        method: str,
        relayed_target: str,
        headers: Sequence[tuple[str, str]],
        *,
        websocket: bool = False,
        body_size: int = 0,
        keyid: str | None = None,
    ) -> RequestFacts:
        """The facts of a relayed ``/{selector}/{path}?{query}``; raises :class:`Refusal` (400)
        when the target does not have that form."""
        selector, request_target = split_selector(relayed_target)
        return cls(
            method=method,
            selector=selector,
            request_target=request_target,
            headers=tuple(headers),
            websocket=websocket,
            body_size=body_size,
            keyid=keyid,
        )


_FACTS_SLOTS: Final = slot_setters(
    RequestFacts,
    "method",
    "selector",
    "request_target",
    "headers",
    "websocket",
    "body_size",
    "signed",
    "keyid",
)


@dataclass(frozen=True, slots=True, init=False)
class Verdict:
    """What the chain decided for one request, and every step's contribution to it.

    ``refusal`` is None when the request goes on to its target: allowed, or denied by the policy
    in monitor mode (``monitor``). Otherwise it is the answer the SaaS gets (status and reason),
    and ``stage`` names the step that refused. Later fields are None when an earlier step refused:
    ``canonical`` is set once canonicalisation passed, ``input`` and ``decision`` once the policy
    was asked.
    """

    refusal: Refusal | None
    stage: str
    canonical: CanonicalRequest | None = None
    input: dict[str, Any] | None = None
    decision: Decision | None = None
    decide_seconds: float = 0.0
    """Time the engine took (for the decision-latency metric)."""
    operation: Operation | None = None
    """The operation whose headers are forwarded (a stand-in for tcp streams and monitor mode)."""
    headers: tuple[tuple[str, str], ...] = ()
    """The headers sent upstream (``host`` first), for a request that goes on."""
    protocols: tuple[str, ...] = ()
    """The subprotocols a stream's sender offered."""
    monitor: bool = False
    credential: str | None = None
    """The name of the credential the gateway adds before forwarding (its value is fetched only
    then, by :class:`gateway.forward.credentials.CredentialSet`)."""

    def __init__(
        self,
        refusal: Refusal | None,
        stage: str,
        canonical: CanonicalRequest | None = None,
        input: dict[str, Any] | None = None,
        decision: Decision | None = None,
        decide_seconds: float = 0.0,
        operation: Operation | None = None,
        headers: tuple[tuple[str, str], ...] = (),
        protocols: tuple[str, ...] = (),
        monitor: bool = False,
        credential: str | None = None,
    ) -> None:
        # Made per relayed request: each slot set by its own setter (see RequestFacts).
        (
            s_refusal,
            s_stage,
            s_canonical,
            s_input,
            s_decision,
            s_seconds,
            s_operation,
            s_headers,
            s_protocols,
            s_monitor,
            s_credential,
        ) = _VERDICT_SLOTS
        s_refusal(self, refusal)
        s_stage(self, stage)
        s_canonical(self, canonical)
        s_input(self, input)
        s_decision(self, decision)
        s_seconds(self, decide_seconds)
        s_operation(self, operation)
        s_headers(self, headers)
        s_protocols(self, protocols)
        s_monitor(self, monitor)
        s_credential(self, credential)

    @property
    def forwarded(self) -> bool:
        """Whether the request goes on to its target."""
        return self.refusal is None

    @property
    def dropped(self) -> tuple[str, ...]:
        """Names of relayed headers the allow-list keeps from the target, in first-seen order
        (none for a request that does not go on). Derived when asked (``gateway explain``), not
        for every relayed request."""
        if self.refusal is not None or self.canonical is None:
            return ()
        kept = {name for name, _ in self.headers}
        return tuple(dict.fromkeys(n for n, _ in self.canonical.headers if n not in kept))

    @property
    def allowed(self) -> bool:
        """Whether every step, the policy included, allowed it (a would-deny is not allowed)."""
        return self.refusal is None and not self.monitor

    def granted(self) -> CanonicalRequest:
        """The canonical request to forward; raises the refusal when there is none."""
        if self.refusal is not None:
            raise self.refusal
        if self.canonical is None:  # a forwarded verdict always passed canonicalisation
            raise Refusal(500, "internal_error", "no canonical request", self.stage)
        return self.canonical

    @property
    def result(self) -> str:
        """The decision-log result: allowed, would_deny, denied, rejected or failed."""
        if self.refusal is None:
            return "would_deny" if self.monitor else "allowed"
        return _refusal_result(self.refusal)

    @property
    def reasons(self) -> list[str]:
        """The decision-log reasons: empty when allowed, the refusal code (and its cause) or the
        policy's reasons otherwise."""
        if self.decision is not None and not self.decision.allow:
            return list(self.decision.reasons) or ["policy_denied"]
        if self.refusal is None:
            return []
        cause = self.refusal.cause
        return [self.refusal.code, cause] if cause else [self.refusal.code]

    def record(self, record: AuditRecord) -> None:
        """Write what the chain decided into the request's audit record."""
        canonical = self.canonical
        if canonical is not None:
            record.target, record.path = canonical.target, canonical.path
            record.query_present = canonical.query is not None
        if self.decision is not None:
            record.policy_revision = self.decision.revision
            record.operation = self.decision.operation
        record.result, record.reasons, record.stage = self.result, self.reasons, self.stage
        record.monitor = self.monitor
        if self.refusal is not None:
            record.status = self.refusal.status


_VERDICT_SLOTS: Final = slot_setters(
    Verdict,
    "refusal",
    "stage",
    "canonical",
    "input",
    "decision",
    "decide_seconds",
    "operation",
    "headers",
    "protocols",
    "monitor",
    "credential",
)


class Chain:
    """The steps every request and stream is decided by, under one revision.

    canonicalise (one form for policy and forwarding) -> limits (the body size) -> decide (the
    policy engine, fail closed) -> select headers (the allow-list of the granting operation).
    ``gateway run`` calls it for every relayed request (after the signature check) and every
    stream; ``gateway explain`` calls it for the request given on the command line; anything that
    re-decides a request offline must call it too, so that no tool can answer differently from a
    running gateway. Steps that need the live request (the signature check before, the stream
    limits and the connection to the target after) are not part of it.
    """

    __slots__ = ("_plans", "config", "engine")

    def __init__(self, config: GatewayConfig, engine: Decider) -> None:
        self.config = config
        self.engine = engine
        # Derived once per revision rather than for every request (:class:`_TargetPlan`).
        self._plans = {
            name: _TargetPlan.of(config, target) for name, target in config.targets.items()
        }

    async def decide(self, facts: RequestFacts) -> Verdict:
        """Run every step for ``facts``; never raises for a refusal (it is in the verdict)."""
        try:
            canonical = canonicalise(
                self.config,
                method=facts.method,
                target=facts.selector,
                request_target=facts.request_target,
                headers=facts.headers,
                websocket=facts.websocket,
            )
        except RequestRejected as exc:
            rejected = Refusal(exc.status, str(exc.code), str(exc), "canonicalise")
            return Verdict(rejected, rejected.stage)
        plan = self._plans[canonical.target]
        try:
            protocols = _limits(plan, facts, canonical)
        except Refusal as limited:
            return Verdict(limited, limited.stage, canonical)
        document = build_input(canonical, signed=facts.signed, keyid=facts.keyid)
        started = time.perf_counter()
        decision = await self.engine.decide(document)
        elapsed = time.perf_counter() - started
        # The first operation of the granted name, as a scan would find it (None: no grant).
        grant = plan.grants.get(decision.operation)
        monitor = False
        if decision.allow and grant is None and plan.stream_only:
            grant = plan.ungranted
        elif not decision.allow or grant is None:
            if not decision.monitor:
                reasons = list(decision.reasons) or ["policy_denied"]
                unavailable = decision.status == 503
                detail = "the policy engine could not decide" if unavailable else "not allowed"
                denial = Refusal(decision.status, reasons[0], detail, "decide")
                return Verdict(denial, "decide", canonical, document, decision, elapsed)
            # Monitor mode (a trial setting, never the default): record "would deny" and forward
            # with the default header allow-list only, as no operation granted more.
            monitor = True
            grant = grant or plan.ungranted
        headers: tuple[tuple[str, str], ...] = ()
        # The header step: the operation's allow-list, and the credential the gateway injects
        # (which the SaaS may then not bring itself: refused, never silently replaced).
        credential = grant.credential
        if credential is not None:
            try:
                refuse_saas_credentials(self.config.credentials[credential], canonical.headers)
            except RequestRejected as exc:
                refused = Refusal(exc.status, str(exc.code), str(exc), "headers")
                return Verdict(refused, "headers", canonical, document, decision, elapsed)
        if not plan.stream_only:
            headers = tuple(
                outbound_headers(
                    plan.target,
                    grant.operation,
                    canonical.headers,
                    forwardable=grant.forwardable,
                    host=plan.host,
                )
            )
        return Verdict(
            None,
            "decide",
            canonical,
            document,
            decision,
            elapsed,
            grant.operation,
            headers,
            protocols,
            monitor,
            credential,
        )


class _Grant(NamedTuple):
    """What an operation allows on one target, derived once per revision."""

    operation: Operation
    credential: str | None
    """The credential injected (:func:`gateway.forward.headers.credential_name`)."""
    forwardable: frozenset[str]
    """The header names forwarded (:func:`gateway.forward.headers.forwardable_names`)."""

    @classmethod
    def of(cls, target: Target, operation: Operation) -> _Grant:
        return cls(operation, credential_name(target, operation), forwardable_names(operation))


class _TargetPlan(NamedTuple):
    """One target as every request to it is decided: read once per revision, not per request."""

    target: Target
    stream_only: bool
    host: str
    """The ``Host`` value sent upstream (HTTP targets; empty for a stream-only one)."""
    max_body: int
    """The request body limit: the target's own, else the gateway's."""
    grants: dict[str | None, _Grant]
    """Each operation by name (the first of a name, as a scan would find it)."""
    ungranted: _Grant
    """The stand-in where no operation applies (a tcp stream; monitor mode)."""

    @classmethod
    def of(cls, config: GatewayConfig, target: Target) -> _TargetPlan:
        grants: dict[str | None, _Grant] = {}
        for operation in target.operations:
            if operation.name not in grants:
                grants[operation.name] = _Grant.of(target, operation)
        limit = target.limits.max_request_body_bytes
        return cls(
            target,
            target.stream_only,
            "" if target.stream_only else host_header(target),
            config.limits.max_request_body_bytes if limit is None else limit,
            grants,
            _Grant.of(target, _NO_OPERATION),
        )


def _limits(plan: _TargetPlan, facts: RequestFacts, canonical: CanonicalRequest) -> tuple[str, ...]:
    """The checks between canonical form and policy; a stream's offered subprotocols."""
    if facts.websocket:
        if plan.stream_only and canonical.path != "/":
            # Not granted by the allow-list, like any other path no operation names (403).
            raise Refusal(
                403,
                "path_not_allowed",
                f"a {plan.target.scheme} target has no paths",
                "canonicalise",
            )
        return offered_protocols(canonical.headers)
    limit = plan.max_body
    if facts.body_size > limit:
        raise Refusal(413, "request_body_too_large", f"body exceeds {limit} bytes", "limits")
    try:
        check_declared_length(canonical.headers, facts.body_size)
    except RequestRejected as exc:
        raise Refusal(exc.status, str(exc.code), str(exc), "limits") from None
    return ()


@dataclass(slots=True)
class AuditRecord:
    """One decision, as written to the decision log (schemas/decision-log.schema.json).

    Slotted: one is made per request, and without slots each would carry a dictionary of its
    twenty fields."""

    decision_id: str
    kind: str
    revision: str
    started: float
    result: str = "error"
    reasons: list[str] = field(default_factory=list)
    stage: str = ""
    status: int = 0
    target: str | None = None
    operation: str | None = None
    method: str | None = None
    path: str | None = None
    query_present: bool = False
    keyid: str | None = None
    policy_revision: str | None = None
    monitor: bool = False
    latency_ms: float = 0.0
    # What replay needs (gateway.policy.decision_log): kept as received, reduced when written.
    relayed: str = ""
    headers: Sequence[tuple[str, str]] = ()
    body_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The JSON-ready record (no header values, no credential query values, no bodies)."""
        return {
            "v": RECORD_VERSION,
            "decision_id": self.decision_id,
            "time": _utc_seconds(self.started),
            "kind": self.kind,
            "revision": self.revision,
            "policy_revision": self.policy_revision,
            "result": self.result,
            "reasons": self.reasons,
            "stage": self.stage,
            "status": self.status,
            "target": self.target,
            "operation": self.operation,
            "method": self.method,
            "path": self.path,
            "query_present": self.query_present,
            "keyid": self.keyid,
            "monitor": self.monitor,
            # To the microsecond: an integer count of them over 1000 is the double nearest that
            # decimal, as round(x, 3) gives, for a fifth of its cost (done for every record).
            "latency_ms": round(self.latency_ms * 1000) / 1000,
            "input": self._input(),
        }

    def _input(self) -> dict[str, Any]:
        """The record's ``input``: what replay needs (:mod:`gateway.policy.decision_log`)."""
        return recorded_input(
            method=self.method or "",
            relayed=self.relayed,
            headers=self.headers,
            websocket=self.kind == "stream",
            body_bytes=self.body_bytes,
            keyid=self.keyid,
        )


@dataclass(slots=True)
class LdapRecord(AuditRecord):
    """One LDAP operation on an LDAP target's stream (``kind: ldap``).

    ``input`` holds what was decided, read from the PDU (never a password, a compare value or a
    filter's values: only the attributes a filter tests); ``ldap`` what came of it: the
    directory's resultCode as the SaaS got it, the attributes stripped from entries, the entries
    hidden, the referral URLs and matchedDN withheld, the stream it belongs to.
    """

    outcome: OperationOutcome | None = None
    stream_id: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The JSON-ready record (schemas/decision-log.schema.json, kind ``ldap``)."""
        # Named, not super(): a slotted dataclass is a new class, which super()'s cell misses.
        record = AuditRecord.as_dict(self)
        outcome = self.outcome
        assert outcome is not None
        record["ldap"] = {
            "stream": self.stream_id,
            "result_code": outcome.result_code,
            "stripped": sorted(outcome.stripped),
            "entries": outcome.entries,
            "hidden_entries": outcome.hidden,
            "referrals_withheld": outcome.referrals_withheld,
            "matched_dn_withheld": outcome.matched_dn_withheld,
        }
        return record

    def _input(self) -> dict[str, Any]:
        """What was decided, read from the PDU (no password, compare value or filter value)."""
        # Loaded with the LDAP proxy that made the outcome (see the TYPE_CHECKING imports).
        from gateway.ldap.policy_input import bind_subject

        outcome = self.outcome
        assert outcome is not None
        request = outcome.request
        bind = request.operation.value == "bind"
        return {
            "operation": str(request.operation),
            "message_id": request.message_id,
            "dn": request.dn if request.operation.value != "bind" else None,
            # A SASL bind is recorded by the identity its credentials carry, as it was decided.
            "bind_name": bind_subject(request) if request.operation.value == "bind" else None,
            "scope": request.scope or None,
            "attributes": list(request.attributes),
            "changes": [[change.operation, change.attribute] for change in request.changes],
            # Sort keys are judged as filter attributes (policy_input), so replay reads them here.
            "filter_attributes": sorted(
                {*(request.filter.attributes() if request.filter else ()), *request.sort_keys}
            ),
            "new_rdn": request.new_rdn or None,
            "new_superior": request.new_superior,
            "extended_oid": request.request_name or None,
            "controls": [control.oid for control in request.controls],
            "bound_as": outcome.bound_as,
            "injected": outcome.injected,
            "keyid": self.keyid,
            # What replay needs to decide the operation again as it was decided (a rule may cap
            # the limits; dereferencing changes what a search may return; a bind's version,
            # mechanism and whether its password was empty change its verdict), never a secret.
            "size_limit": request.size_limit,
            "time_limit": request.time_limit,
            "deref_aliases": request.deref_aliases,
            "version": request.version if bind else None,
            "mechanism": request.sasl_mechanism or None,
            "empty_password": not request.credentials if bind else None,
        }


AuditSink = Callable[[AuditRecord], None]
"""Writes a decision record before its answer is sent (returns once it is written)."""
AuditSubmit = Callable[[AuditRecord], Awaitable[None] | None]
"""Gives a decision record its place in the log and returns what to await before the answer is
sent (None: nothing): the records of requests answered in the same event-loop turn share one write
(:meth:`gateway.observability.audit.AuditLog.submit`)."""


class _DecisionIds:
    """Decision ids: a random 64-bit prefix per process plus a counter.

    Unique within the process by the counter and across processes and restarts by the prefix
    (two processes share one with probability 2**-64), for a fraction of the cost of a UUID 4,
    which reads the system's random source on every request. They only name a decision; nothing
    is authorised by knowing one, so they need not be unpredictable.
    """

    def __init__(self) -> None:
        self._prefix = f"{secrets.randbits(64):016x}-"
        self._counter = itertools.count(1)

    def next(self) -> str:
        """The next id, for example ``3f9a1c0d5e7b2a41-0000002a``."""
        return f"{self._prefix}{next(self._counter):08x}"


new_decision_id = _DecisionIds().next


class _UtcSeconds:
    """RFC 3339 UTC time to the second, formatted once per distinct second (records written in
    the same second, the common case under load, share the text)."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self, when: float) -> str:
        second = int(when)
        if second != self._second:
            self._text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
            self._second = second
        return self._text


_utc_seconds = _UtcSeconds()


@dataclass
class _PendingStream:
    """A stream that was accepted and whose upstream is open, until the listener serves it."""

    runtime: Runtime
    record: AuditRecord
    upstream: UpstreamEnd | ldap_stream.LdapConnection
    release: Callable[[], None]
    expiry: asyncio.TimerHandle
    max_message: int
    ldap: bool = False
    """Whether ``upstream`` is an LDAP target's directory connection."""
    facts: RequestFacts | None = None
    """What the stream was decided on (signature verified), to decide again at a reload."""
    target: str = ""


@dataclass(eq=False)  # kept in a set, by identity
class _OpenStream:
    """A stream being served: what it was allowed under, and how to end it (:meth:`revise`)."""

    runtime: Runtime
    facts: RequestFacts
    target: str
    stop: asyncio.Future[tuple[str, int]]


class _StreamCounts:
    """Streams decided and not yet ended, in all and per target (catalogue J 152)."""

    def __init__(self) -> None:
        self.total = 0
        self.per_target: Counter[str] = Counter()

    def take(self, config: GatewayConfig, name: str) -> Callable[[], None]:
        """Count one more stream to ``name``, or refuse with 503; returns its (idempotent)
        release. The limits are read from ``config``, so a reload changes them at once."""
        overall = config.limits.max_concurrent_streams
        cap = config.targets[name].limits.max_concurrent_streams or overall
        if self.total >= overall:
            raise Refusal(503, "gateway_busy", f"{overall} streams are open", "limits")
        if self.per_target[name] >= cap:
            raise Refusal(503, "target_busy", f"{name} has {cap} streams open", "limits")
        self.total += 1
        self.per_target[name] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.total -= 1
                self.per_target[name] -= 1
                if not self.per_target[name]:
                    del self.per_target[name]

        return release


class Pipeline:
    """Implements the listener's request and stream handlers (gateway.relay.handlers)."""

    def __init__(
        self,
        runtime: Callable[[], Runtime],
        verifier: SignatureVerifier,
        *,
        authority: str,
        hc_path: str,
        metrics: Metrics,
        audit: AuditSink,
        audit_submit: AuditSubmit | None = None,
        accept_window: float = ACCEPT_WINDOW,
        limiter: BadSignatureLimiter | None = None,
        inner_tls: Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        """``accept_window``: seconds a decided stream waits to be served before it is released;
        ``limiter``: the bad-signature limiter (default: one with the documented defaults);
        ``inner_tls``: the TLS server context of LDAP streams' inner TLS (the gateway's current
        identity certificate, :func:`gateway.ldap.innertls.identity_context`); without it LDAP
        streams are refused. ``audit_submit``: how relayed HTTP requests' records are written
        (:data:`AuditSubmit`; without it each is written alone by ``audit``)."""
        self._inner_tls = inner_tls
        self._runtime = runtime
        # Not `limiter or ...`: a limiter defines __len__, so an empty one is falsy.
        self._limiter = limiter if limiter is not None else BadSignatureLimiter()
        self._hc_path = hc_path.strip("/")
        self._verifier = verifier
        self._authority = authority
        self._metrics = metrics
        self._audit = audit
        self._audit_submit = audit_submit
        # Relayed HTTP requests between receipt and their record (see __call__).
        self._active = 0
        self._streams: dict[str, _PendingStream] = {}
        # Streams being served (TCP and WebSocket), for :meth:`revise`.
        self._serving: set[_OpenStream] = set()
        # Streams decided and not yet ended, per revision (by id: each is alive while counted),
        # for :meth:`unused`; ``_freed`` is set whenever a revision's count drops to none.
        self._uses: Counter[int] = Counter()
        self._freed = asyncio.Event()
        self._counts = _StreamCounts()
        self._accept_window = accept_window
        self._closing: set[asyncio.Future[None]] = set()

    # --- HTTP requests ---------------------------------------------------------------------------

    async def __call__(self, request: RelayedRequest) -> RelayedResponse:
        """Handle one relayed HTTP request (the listener's RequestHandler).

        One coroutine from receipt to answer: a step that cannot suspend is a plain call, and
        the credential step is awaited only for a target that injects one."""
        runtime = self._runtime()
        method, body = request.method, request.body
        record = AuditRecord(
            new_decision_id(),
            "http",
            runtime.revision,
            time.time(),
            method=method,
            relayed=request.target,
            headers=request.headers,
            body_bytes=len(body),
        )
        clock = time.perf_counter()
        self._active += 1
        try:
            # The target's form is checked (400) before the signature; the facts are built once
            # the key that verified it is known, in one step (it is done for every request).
            selector, request_target = split_selector(request.target)
            keyid = await self._authenticate(method, request.raw_target, request.headers, body)
            record.keyid = keyid
            facts = RequestFacts(
                method,
                selector,
                request_target,
                tuple(request.headers),
                body_size=len(body),
                keyid=keyid,
            )
            verdict = await runtime.chain.decide(facts)
            self._decided(verdict, record)
            canonical = verdict.granted()
            injector: Injector | None = None
            injected: tuple[tuple[str, str], ...] = ()
            if verdict.credential is not None:
                injector, injected = await _inject(runtime, verdict)
            try:
                upstream = await runtime.upstream.send(
                    canonical.target,
                    method=canonical.method,
                    path=canonical.path,
                    query=canonical.query,
                    headers=[*verdict.headers, *injected],
                    body=body,
                )
            except UpstreamError as exc:
                raise Refusal(exc.status, exc.code, str(exc), "forward") from None
            record.status = upstream.status
            if injector is not None and upstream.status == 401:
                # RFC 6750 section 3.1: the token may have been revoked; the next request gets a
                # new one rather than the same refusal until the cached token expires.
                injector.rejected(injected[0][1])
            response = await _relayed(upstream)
        except Refusal as refusal:
            _refused(record, refusal)
            response = error_response(refusal, record.decision_id)
        except Exception:  # fail closed: an internal error is a 500 and nothing more
            log.exception("request pipeline failed", extra={"event": "pipeline_error"})
            record.result, record.reasons, record.status = "error", ["internal_error"], 500
            response = error_response(Refusal(500, "internal_error"), record.decision_id)
        finally:
            self._active -= 1
        record.latency_ms = (time.perf_counter() - clock) * 1000
        submit = self._audit_submit
        if submit is None or not self._active:
            # No other request is under way to share a write with: written now (with any
            # records submitted before it), without a turn of the event loop.
            self._finish(record)
        else:
            written = self._finish(record, submit)
            if written is not None:
                # The answer leaves only once its record is written (or counted as lost).
                await written
        return response

    def _decided(self, verdict: Verdict, record: AuditRecord) -> None:
        """Record the chain's verdict; raise its refusal, if any."""
        if verdict.decision is not None:
            self._metrics.decision_seconds.observe(verdict.decide_seconds)
        verdict.record(record)
        if verdict.refusal is not None:
            raise verdict.refusal

    async def _authenticate(
        self, method: str, raw_target: str, headers: Sequence[tuple[str, str]], body: bytes | None
    ) -> str | None:
        limiter = self._limiter
        # Catalogue J 155: while anonymous failures flood the gateway, a request without
        # signature fields is refused before any signature work.
        wait = limiter.cooling(None)
        if wait and not _carries_signature(headers):
            raise _too_many(wait, "missing_signature")
        path, _, query = raw_target.partition("?")
        try:
            verified = await self._verifier.verify_async(
                method=method,
                authority=self._authority,
                path=path,
                query=query,
                headers=list(headers),
                body=body or None,
            )
        except SignatureError as exc:
            if limiter.counts(exc.reason):
                if limiter.failure(exc.keyid):
                    log.warning(
                        "too many failed signatures %s: answering 429 for at least %.0f s",
                        f"for key {exc.keyid}" if exc.keyid else "without a known key",
                        limiter.cooldown,
                        extra={"event": "bad_signature_cooldown", "keyid": exc.keyid},
                    )
                wait = limiter.cooling(exc.keyid)
                if wait:
                    raise _too_many(wait, str(exc.reason)) from None
            raise Refusal(exc.status, str(exc.reason), exc.detail, "authenticate") from None
        return verified.keyid

    def record_refusal(self, refusal: RelayRefusal) -> None:
        """Write the decision record of a request or stream the listener refused itself
        (the listener's ``RefusalSink``): it never reached these steps, but it is a decision."""
        record = AuditRecord(
            decision_id=new_decision_id(),
            kind=refusal.kind,
            revision=self._runtime().revision,
            started=time.time(),
            method=refusal.method,
            result="failed" if refusal.status >= 500 or refusal.status == 0 else "rejected",
            reasons=[refusal.reason],
            stage="relay",
            status=refusal.status,
        )
        if refusal.kind == "stream":
            self._finish_stream(record)
        else:
            self._finish(record)

    def _finish(
        self, record: AuditRecord, submit: AuditSubmit | None = None
    ) -> Awaitable[None] | None:
        reason = record.reasons[0] if record.reasons else ""
        self._metrics.outcome(record.result, reason).finished(record.latency_ms / 1000)
        return self._record(record, submit)

    def _record(
        self, record: AuditRecord, submit: AuditSubmit | None = None
    ) -> Awaitable[None] | None:
        """Write ``record`` now, or hand it to ``submit`` (:data:`AuditSubmit`); what to await
        before the answer is sent."""
        try:
            if submit is None:
                self._audit(record)
                return None
            return submit(record)
        except Exception:  # the audit log must never take a request down with it
            self._metrics.audit_write_failures.inc()
            log.exception("audit record could not be written", extra={"event": "audit_error"})
            return None

    # --- streams ---------------------------------------------------------------------------------

    async def decide(self, info: AcceptInfo) -> StreamDecision:
        """Accept a relayed WebSocket only once it is signed, canonical, granted by policy, within
        the stream limits and its upstream is open (catalogue A 25, D 88); a stream that fails any
        step is rejected, and nothing is opened upstream before the policy said yes."""
        runtime = self._runtime()
        config = runtime.loaded.config
        record = AuditRecord(
            decision_id=new_decision_id(),
            kind="stream",
            revision=runtime.revision,
            started=time.time(),
            method="GET",
            relayed=info.target,
            headers=info.connect_headers,
        )
        clock = time.perf_counter()
        release: Callable[[], None] | None = None
        try:
            facts = RequestFacts.relayed("GET", info.target, info.connect_headers, websocket=True)
            hc_target = self._verifier_target(info.target)
            keyid = await self._authenticate("GET", hc_target, info.connect_headers, None)
            record.keyid = keyid
            verdict = await runtime.chain.decide(facts.signed_by(keyid))
            self._decided(verdict, record)
            canonical = verdict.granted()
            target = config.targets[canonical.target]
            release = self._counts.take(config, canonical.target)
            limit = target.limits.max_request_body_bytes
            max_message = config.limits.max_request_body_bytes if limit is None else limit
            upstream, protocol = await self._open(runtime, verdict, max_message)
        except Refusal as refusal:
            if release is not None:
                release()
            _refused(record, refusal)
            record.stage = refusal.stage
            record.latency_ms = (time.perf_counter() - clock) * 1000
            self._finish_stream(record)
            return RejectStream(refusal.status, refusal.code)
        except BaseException as exc:
            # The listener gave up waiting (cancelled) or a step failed unexpectedly: it answers
            # the sender itself; the slot and the audit record are settled here.
            if release is not None:
                release()
            cancelled = isinstance(exc, asyncio.CancelledError)
            record.result, record.status = "error", 503 if cancelled else 500
            record.reasons = ["decision_timeout" if cancelled else "internal_error"]
            record.latency_ms = (time.perf_counter() - clock) * 1000
            self._finish_stream(record)
            raise
        record.latency_ms = (time.perf_counter() - clock) * 1000
        # A duplicate id would orphan the first stream's upstream: settle that one first.
        self._expire(info.stream_id)
        expiry = asyncio.get_running_loop().call_later(
            self._accept_window, self._expire, info.stream_id
        )
        self._streams[info.stream_id] = _PendingStream(
            runtime,
            record,
            upstream,
            self._use(runtime, release),
            expiry,
            max_message,
            target.scheme in LDAP_SCHEMES,
            facts.signed_by(keyid),
            canonical.target,
        )
        return AcceptStream(subprotocol=protocol)

    async def _open(
        self, runtime: Runtime, verdict: Verdict, max_message: int
    ) -> tuple[UpstreamEnd | ldap_stream.LdapConnection, str | None]:
        """Open the upstream end of an allowed stream; a failure is a refusal (502/504)."""
        canonical = verdict.granted()
        config = runtime.loaded.config
        target = config.targets[canonical.target]
        connect = target.limits.connect_timeout_seconds or config.limits.connect_timeout_seconds
        # The whole opening must fit in the listener's window for deciding on an accept.
        deadline = min(connect, STREAM_OPEN_TIMEOUT)
        if target.scheme in LDAP_SCHEMES:
            return await self._open_ldap(runtime, canonical.target, deadline), None
        if target.scheme == "tcp":
            try:
                async with asyncio.timeout(deadline):
                    reader, writer = await open_tcp(
                        target,
                        resolver=runtime.resolver,
                        connect_timeout=deadline,
                        redirect=runtime.redirect,
                        guard=runtime.guard,
                    )
            except DialError as exc:
                raise Refusal(exc.status, exc.code, str(exc), "forward") from None
            except TimeoutError:
                raise Refusal(504, "upstream_timeout", "no connection in time", "forward") from None
            return TcpEnd(reader, writer), None
        _, injected = await _inject(runtime, verdict)
        try:
            socket = await runtime.websockets.connect(
                canonical.target,
                path=canonical.path,
                query=canonical.query,
                headers=[*verdict.headers, *injected],
                protocols=verdict.protocols,
                max_message=max_message,
                handshake_timeout=deadline,
            )
        except UpstreamError as exc:
            raise Refusal(exc.status, exc.code, str(exc), "forward") from None
        return socket, socket.protocol

    async def _open_ldap(
        self, runtime: Runtime, name: str, deadline: float
    ) -> ldap_stream.LdapConnection:
        """The inner TLS context and the directory connection of an allowed LDAP stream."""
        from gateway.ldap import stream as ldap_stream
        from gateway.ldap.directory import DirectoryError

        if self._inner_tls is None:
            raise Refusal(503, "inner_tls_unavailable", "no identity to serve TLS", "forward")
        try:
            # First: a gateway that cannot serve the inner TLS opens nothing to the directory.
            context = self._inner_tls()
        except InnerTlsError as exc:
            log.warning("%s", exc, extra={"event": "inner_tls_unavailable"})
            raise Refusal(503, exc.code, str(exc), "forward") from None
        try:
            directory = await ldap_stream.open_directory(
                runtime.loaded,
                name,
                resolver=runtime.resolver,
                redirect=runtime.redirect,
                guard=runtime.guard,
                within=deadline,
            )
        except DialError as exc:
            raise Refusal(exc.status, exc.code, str(exc), "forward") from None
        except DirectoryError as exc:
            log.warning("directory %s: %s", name, exc, extra={"event": "directory_unreachable"})
            raise Refusal(502, exc.code, str(exc), "forward") from None
        except TimeoutError:
            raise Refusal(504, "upstream_timeout", "no connection in time", "forward") from None
        return ldap_stream.LdapConnection(name, directory, context)

    def _verifier_target(self, accept_target: str) -> str:
        # The SaaS signs the stream's path as it addressed it: /{hc path}{target}.
        return f"/{self._hc_path}{accept_target}"

    def _expire(self, stream_id: str) -> None:
        """Release a decided stream the listener never served (its rendezvous failed)."""
        pending = self._streams.pop(stream_id, None)
        if pending is None:
            return
        pending.expiry.cancel()
        pending.release()
        record = pending.record
        record.result, record.reasons, record.status = "failed", ["not_served"], 0
        self._finish_stream(record)
        task = asyncio.ensure_future(pending.upstream.close(CLOSE_GOING_AWAY, "not served"))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def serve(self, info: AcceptInfo, socket: StreamSocket) -> None:
        """Splice the accepted stream onto the upstream opened for it until either side ends."""
        pending = self._streams.pop(info.stream_id, None)
        if pending is None:
            await socket.close(1011, "no decision")
            return
        pending.expiry.cancel()
        config = pending.runtime.loaded.config
        record = pending.record
        self._metrics.streams_active.inc()
        try:
            if pending.ldap:
                reason = await self._serve_ldap(info, socket, pending)
            else:
                stop: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
                assert pending.facts is not None  # set for every decided stream
                open_stream = _OpenStream(pending.runtime, pending.facts, pending.target, stop)
                self._serving.add(open_stream)
                try:
                    result = await relay(
                        socket,
                        # Not an LDAP connection (``pending.ldap``): a TCP or WebSocket end.
                        cast("UpstreamEnd", pending.upstream),
                        idle_timeout=config.limits.stream_idle_timeout_seconds,
                        max_message=pending.max_message,
                        stop=stop,
                    )
                finally:
                    self._serving.discard(open_stream)
                reason = result.reason
            record.status = 101
            record.reasons = [*record.reasons, reason]
        finally:
            pending.release()
            self._metrics.streams_active.dec()
            self._finish_stream(record)

    async def _serve_ldap(
        self, info: AcceptInfo, socket: StreamSocket, pending: _PendingStream
    ) -> str:
        """Serve an LDAP target's stream operation by operation (:mod:`gateway.ldap.stream`)."""
        from gateway.ldap import stream as ldap_stream

        connection = pending.upstream
        assert isinstance(connection, ldap_stream.LdapConnection)
        runtime, stream_record = pending.runtime, pending.record
        assert runtime.ldap_chain is not None  # an LDAP target's revision has its chain

        def record(outcome: OperationOutcome) -> None:
            self._finish_ldap(runtime, stream_record, outcome)

        try:
            return await ldap_stream.serve(
                socket,
                connection,
                loaded=runtime.loaded,
                chain=runtime.ldap_chain,
                keyid=stream_record.keyid,
                record=record,
                idle_timeout=runtime.loaded.config.limits.stream_idle_timeout_seconds,
                max_message=pending.max_message,
            )
        finally:
            with contextlib.suppress(Exception):
                await socket.close(1000, "")

    def _finish_ldap(
        self, runtime: Runtime, stream: AuditRecord, outcome: OperationOutcome
    ) -> None:
        """Write the decision record and metrics of one LDAP operation."""
        record = LdapRecord(
            decision_id=new_decision_id(),
            kind="ldap",
            revision=runtime.revision,
            started=outcome.started,
            result=outcome.result,
            reasons=list(outcome.reasons),
            stage="decide",
            target=stream.target,
            operation=outcome.rule,
            keyid=stream.keyid,
            policy_revision=outcome.policy_revision,
            latency_ms=outcome.decide_ms,
            outcome=outcome,
            stream_id=stream.decision_id,
        )
        operation = str(outcome.request.operation)
        self._metrics.ldap_operations.labels(operation=operation, result=outcome.result).inc()
        if outcome.referrals_withheld:
            self._metrics.ldap_withheld.labels(what="referral").inc(outcome.referrals_withheld)
        if outcome.matched_dn_withheld:
            self._metrics.ldap_withheld.labels(what="matched_dn").inc()
        self._metrics.decision_seconds.observe(outcome.decide_ms / 1000)
        self._record(record)

    def _use(self, runtime: Runtime, release: Callable[[], None]) -> Callable[[], None]:
        """Count a stream on ``runtime`` until the returned (idempotent) release, which also
        calls ``release``."""
        key = id(runtime)
        self._uses[key] += 1
        released = False

        def done() -> None:
            nonlocal released
            if released:
                return
            released = True
            release()
            self._uses[key] -= 1
            if self._uses[key] <= 0:
                del self._uses[key]
                self._freed.set()

        return done

    async def unused(self, runtime: Runtime) -> None:
        """Wait until no stream decided under ``runtime`` is open any more.

        A stream keeps the revision it opened under (its WebSocket connection is in that
        revision's pool, an LDAP stream decides with its engine), so a revision replaced by a
        reload may be closed only after this: closing it sooner cut every open stream.
        """
        while self._uses.get(id(runtime), 0) > 0:
            self._freed.clear()
            await self._freed.wait()

    async def revise(self, runtime: Runtime) -> int:
        """End the open TCP and WebSocket streams that ``runtime`` (a revision just committed)
        no longer allows; returns how many.

        A stream is decided once, when it opens; a database connection may then stay open for
        days. Without this, a reviewed and reloaded revocation (a target removed, an operation
        narrowed) would leave every stream it revokes running under the old revision. Each open
        stream is decided again, on the facts it was allowed on, by the new revision's chain (the
        signature is not checked again: it was, and its window has passed). A stream whose
        target's connection settings changed ends too: it is connected where the old ones said.
        The stream ends with 1008 (policy violation, RFC 6455 section 7.4.1) and reason
        ``revoked``; the SaaS may open it again, and the new revision decides.
        """
        ended = 0
        for stream in list(self._serving):
            if stream.stop.done():
                continue
            why = await self._no_longer_allowed(stream, runtime)
            if why is None or stream.stop.done():
                continue
            stream.stop.set_result(("revoked", CLOSE_POLICY))
            ended += 1
            log.info(
                "stream to %s ended: revision %s %s",
                stream.target,
                runtime.revision,
                why,
                extra={"event": "stream_revoked", "target": stream.target},
            )
        return ended

    async def _no_longer_allowed(self, stream: _OpenStream, runtime: Runtime) -> str | None:
        """Why ``runtime`` would not allow ``stream`` as it runs (None: it would)."""
        old = stream.runtime.loaded.config.targets.get(stream.target)
        new = runtime.loaded.config.targets.get(stream.target)
        if new is None or old is None:
            return "removed the target"
        # Limits apply to new streams, and what the operations allow is decided again below;
        # the rest says where and how the stream is connected.
        ignored = {"limits", "description", "operations"}
        if old.model_dump(exclude=ignored) != new.model_dump(exclude=ignored):
            return "changed the target"
        verdict = await runtime.chain.decide(stream.facts)
        try:
            canonical = verdict.granted()
        except Refusal as refusal:
            return f"does not allow it ({refusal.code})"
        if canonical.target != stream.target:
            return f"sends it to {canonical.target}"
        return None

    async def close(self) -> None:
        """Release every decided stream not yet served (at shutdown, after the listener)."""
        for stream_id in list(self._streams):
            self._expire(stream_id)
        await asyncio.gather(*self._closing, return_exceptions=True)

    def _finish_stream(self, record: AuditRecord) -> None:
        reason = record.reasons[0] if record.reasons else ""
        self._metrics.streams.labels(result=record.result, reason=reason).inc()
        self._record(record)


def _carries_signature(headers: Sequence[tuple[str, str]]) -> bool:
    """Whether both RFC 9421 fields are present (their content is the verifier's business)."""
    names = {name.lower() for name, _ in headers}
    return "signature" in names and "signature-input" in names


def _too_many(wait: float, cause: str) -> Refusal:
    return Refusal(
        429,
        "too_many_bad_signatures",
        "too many requests failed authentication; retry later",
        "authenticate",
        cause=cause,
        retry_after=max(1, math.ceil(wait)),
    )


async def _inject(
    runtime: Runtime, verdict: Verdict
) -> tuple[Injector | None, tuple[tuple[str, str], ...]]:
    """The credential header the gateway adds to an allowed request, if its target has one.
    Fetched only now, after every check passed, so a refused request never costs a token; a
    credential that cannot be had fails the request closed (502/503, nothing is forwarded)."""
    if verdict.credential is None:
        return None, ()
    injector = runtime.credentials.injectors[verdict.credential]
    try:
        header = await injector.header()
    except CredentialError as exc:
        raise Refusal(exc.status, exc.code, str(exc), "forward") from None
    return injector, (header,)


def _refusal_result(refusal: Refusal) -> str:
    """The decision-log result of a refusal."""
    if refusal.stage == "forward":
        return "failed"
    return "denied" if refusal.status in (401, 403) else "rejected"


def _refused(record: AuditRecord, refusal: Refusal) -> None:
    record.result = _refusal_result(refusal)
    if not record.reasons:
        record.reasons = [refusal.code, refusal.cause] if refusal.cause else [refusal.code]
    record.stage = record.stage or refusal.stage
    record.status = refusal.status


def offered_protocols(headers: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    """The subprotocols a stream's sender offered (``Sec-WebSocket-Protocol``, RFC 6455 section
    11.3.4: comma-separated tokens, possibly over several header lines), in its order.

    Raises :class:`Refusal` (400 ``invalid_subprotocol``) for a value that is not a token list or
    offers more than :data:`MAX_SUBPROTOCOLS`.
    """
    offered: list[str] = []
    for name, value in headers:
        if name != "sec-websocket-protocol":
            continue
        for item in value.split(","):
            token = item.strip(" \t")
            if not _TOKEN.fullmatch(token):
                raise Refusal(
                    400, "invalid_subprotocol", "a subprotocol is not a token", "canonicalise"
                )
            if token not in offered:
                offered.append(token)
    if len(offered) > MAX_SUBPROTOCOLS:
        raise Refusal(
            400,
            "invalid_subprotocol",
            f"more than {MAX_SUBPROTOCOLS} subprotocols offered",
            "canonicalise",
        )
    return tuple(offered)


async def _relayed(upstream: UpstreamResponse) -> RelayedResponse:
    if upstream.complete:
        # Small bodies (the common case) are complete after the first read: answer with bytes so
        # the listener can use the control channel, and give the connection back to the pool.
        await upstream.release()
        return RelayedResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=tuple(upstream.headers),
            body=upstream.first_chunk,
        )
    return RelayedResponse(
        status=upstream.status,
        reason=upstream.reason,
        headers=tuple(upstream.headers),
        body=_chain(upstream),
    )


async def _chain(upstream: UpstreamResponse) -> AsyncIterator[bytes]:
    try:
        yield upstream.first_chunk
        async for chunk in upstream.body:
            yield chunk
    finally:
        await upstream.release()
