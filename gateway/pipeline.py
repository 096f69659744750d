"""The per-request chain: parse -> authenticate -> select target -> canonicalise -> decide ->
forward -> answer -> audit, as small steps that each either pass the request on or refuse it.

Every refusal carries a stable reason code and one HTTP status; nothing reaches an on-prem system
unless every earlier step passed. Each request is decided entirely under one configuration and
policy revision (the :class:`Runtime` snapshot taken when it arrives), so a reload in the middle
of a request cannot mix two revisions.

Addressing (the contract with the SaaS, see docs/relay-contract.md): the relayed request target is
``/{selector}/{on-prem path}?{query}``, where ``selector`` is a target name from gateway.yaml or the
exact ``host:port`` of a declared target. A stream (WebSocket ``accept``) uses the same form.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.auth import SignatureError, SignatureVerifier
from gateway.config import LoadedConfig
from gateway.config.model import Operation, Target
from gateway.forward.canonical import CanonicalRequest, canonicalise
from gateway.forward.dial import DialError, Redirect, Resolver, system_resolver
from gateway.forward.headers import outbound_headers
from gateway.forward.rejections import RequestRejected
from gateway.forward.streams import open_tcp, splice
from gateway.forward.upstream import Upstream, UpstreamError, UpstreamResponse
from gateway.observability.metrics import Metrics
from gateway.policy.input import build_input
from gateway.relay.handlers import (
    AcceptInfo,
    AcceptStream,
    RejectStream,
    RelayedRequest,
    RelayedResponse,
    StreamDecision,
    StreamSocket,
)

log = logging.getLogger(__name__)

# Largest error body we produce; keeps refusals on the relay's control channel.
_MAX_DETAIL = 200


class Decision(Protocol):
    """What the policy engine answers (see gateway.policy.engine.Decision)."""

    @property
    def allow(self) -> bool: ...
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


class Decider(Protocol):
    """The policy engine seam."""

    async def decide(self, input: Mapping[str, Any]) -> Decision:
        """Decide one canonical request; fail closed (deny with a reason) on any fault."""
        ...


@dataclass(frozen=True)
class Runtime:
    """Everything one request is decided and forwarded under: one revision, swapped as a whole."""

    loaded: LoadedConfig
    engine: Decider
    upstream: Upstream
    resolver: Resolver = system_resolver
    redirect: Redirect | None = None

    @property
    def revision(self) -> str:
        """The configuration revision (policy revisions are carried by each decision)."""
        return self.loaded.revision


class Refusal(Exception):  # noqa: N818 - a refusal is an expected outcome, not a fault
    """A step refused the request: ``status`` and ``code`` are what the SaaS is told."""

    def __init__(self, status: int, code: str, detail: str = "", stage: str = "") -> None:
        super().__init__(detail or code)
        self.status = status
        self.code = code
        self.detail = detail[:_MAX_DETAIL]
        self.stage = stage


# Used in monitor mode for requests no operation grants: default forwarded headers only.
_MONITOR_OPERATION = Operation.model_validate(
    {"name": "monitor-mode", "methods": ["GET"], "paths": ["/"]}
)


def split_selector(relayed_target: str) -> tuple[str, str]:
    """``/erp/api/x?q`` -> (``erp``, ``/api/x?q``); a bare ``/erp`` or ``/erp?q`` gives ``/``."""
    if not relayed_target.startswith("/"):
        raise Refusal(400, "invalid_request_target", "the request target must start with '/'")
    rest = relayed_target[1:]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    selector, remainder = rest[:cut], rest[cut:]
    if not selector:
        raise Refusal(400, "missing_target", "the first path segment must name a target")
    if not remainder.startswith("/"):
        remainder = "/" + remainder
    return selector, remainder


def error_response(refusal: Refusal, request_id: str) -> RelayedResponse:
    """A small JSON error body the SaaS can act on (and that fits the control channel)."""
    body = json.dumps(
        {"error": refusal.code, "detail": refusal.detail, "request_id": request_id},
        separators=(",", ":"),
    ).encode()
    return RelayedResponse(
        status=refusal.status,
        reason="",
        headers=(("content-type", "application/json"), ("x-gateway-reason", refusal.code)),
        body=body,
    )


@dataclass
class AuditRecord:
    """One decision, as written to the decision log (schemas/decision-log.schema.json)."""

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

    def as_dict(self) -> dict[str, Any]:
        """The JSON-ready record (no header values, no query values, no bodies)."""
        return {
            "decision_id": self.decision_id,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
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
            "latency_ms": round(self.latency_ms, 3),
        }


AuditSink = Callable[[AuditRecord], None]


@dataclass
class _PendingStream:
    runtime: Runtime
    target: Target
    request: CanonicalRequest
    record: AuditRecord


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
    ) -> None:
        self._runtime = runtime
        self._hc_path = hc_path.strip("/")
        self._verifier = verifier
        self._authority = authority
        self._metrics = metrics
        self._audit = audit
        self._streams: dict[str, _PendingStream] = {}

    # --- HTTP requests ---------------------------------------------------------------------------

    async def __call__(self, request: RelayedRequest) -> RelayedResponse:
        """Handle one relayed HTTP request (the listener's RequestHandler)."""
        runtime = self._runtime()
        record = AuditRecord(
            decision_id=str(uuid.uuid4()),
            kind="http",
            revision=runtime.revision,
            started=time.time(),
            method=request.method,
        )
        clock = time.perf_counter()
        try:
            response = await self._handle(request, runtime, record)
        except Refusal as refusal:
            record.result = "denied" if refusal.status in (401, 403) else "rejected"
            if refusal.stage == "forward":
                record.result = "failed"
            record.reasons = record.reasons or [refusal.code]
            record.stage = record.stage or refusal.stage
            record.status = refusal.status
            response = error_response(refusal, record.decision_id)
        except Exception:  # fail closed: an internal error is a 500 and nothing more
            log.exception("request pipeline failed", extra={"event": "pipeline_error"})
            record.result, record.reasons, record.status = "error", ["internal_error"], 500
            response = error_response(Refusal(500, "internal_error"), record.decision_id)
        record.latency_ms = (time.perf_counter() - clock) * 1000
        self._finish(record)
        return response

    async def _handle(
        self, request: RelayedRequest, runtime: Runtime, record: AuditRecord
    ) -> RelayedResponse:
        config = runtime.loaded.config
        selector, request_target = split_selector(request.target)
        record.keyid = self._authenticate(
            request.method, request.raw_target, request.headers, request.body
        )
        canonical = self._canonicalise(
            runtime, request.method, selector, request_target, request.headers, False
        )
        record.target, record.path = canonical.target, canonical.path
        record.query_present = canonical.query is not None
        target = config.targets[canonical.target]
        limit = target.limits.max_request_body_bytes
        limit = config.limits.max_request_body_bytes if limit is None else limit
        if len(request.body) > limit:
            raise Refusal(413, "request_body_too_large", f"body exceeds {limit} bytes", "limits")
        operation = await self._decide(runtime, canonical, record)
        headers = outbound_headers(target, operation, canonical.headers)
        try:
            upstream = await runtime.upstream.send(
                canonical.target,
                method=canonical.method,
                path=canonical.path,
                query=canonical.query,
                headers=headers,
                body=request.body,
            )
        except UpstreamError as exc:
            raise Refusal(exc.status, exc.code, str(exc), "forward") from None
        record.status = upstream.status
        return await _relayed(upstream)

    def _authenticate(
        self, method: str, raw_target: str, headers: Sequence[tuple[str, str]], body: bytes | None
    ) -> str | None:
        path, _, query = raw_target.partition("?")
        try:
            verified = self._verifier.verify(
                method=method,
                authority=self._authority,
                path=path,
                query=query,
                headers=list(headers),
                body=body or None,
            )
        except SignatureError as exc:
            raise Refusal(exc.status, str(exc.reason), exc.detail, "authenticate") from None
        return verified.keyid

    def _canonicalise(
        self,
        runtime: Runtime,
        method: str,
        selector: str,
        request_target: str,
        headers: Sequence[tuple[str, str]],
        websocket: bool,
    ) -> CanonicalRequest:
        try:
            return canonicalise(
                runtime.loaded.config,
                method=method,
                target=selector,
                request_target=request_target,
                headers=headers,
                websocket=websocket,
            )
        except RequestRejected as exc:
            raise Refusal(exc.status, str(exc.code), str(exc), "canonicalise") from None

    async def _decide(
        self, runtime: Runtime, canonical: CanonicalRequest, record: AuditRecord
    ) -> Operation:
        started = time.perf_counter()
        decision = await runtime.engine.decide(
            build_input(canonical, signed=True, keyid=record.keyid)
        )
        self._metrics.decision_seconds.observe(time.perf_counter() - started)
        record.policy_revision = decision.revision
        record.operation = decision.operation
        record.stage = "decide"
        target = runtime.loaded.config.targets[canonical.target]
        operation = next((o for o in target.operations if o.name == decision.operation), None)
        if decision.allow and operation is not None:
            record.result, record.reasons = "allowed", []
            return operation
        record.reasons = list(decision.reasons) or ["policy_denied"]
        if decision.monitor:
            # Monitor mode (a trial setting, never the default): record "would deny" and forward
            # with the default header allow-list only, as no operation granted more.
            record.monitor = True
            record.result = "would_deny"
            return operation or _MONITOR_OPERATION
        detail = "the policy engine could not decide" if decision.status == 503 else "not allowed"
        raise Refusal(decision.status, record.reasons[0], detail, "decide")

    def _finish(self, record: AuditRecord) -> None:
        reason = record.reasons[0] if record.reasons else ""
        self._metrics.requests.labels(result=record.result, reason=reason).inc()
        self._metrics.decisions.labels(result=record.result, reason=reason).inc()
        self._metrics.request_seconds.labels(result=record.result).observe(record.latency_ms / 1000)
        try:
            self._audit(record)
        except Exception:  # the audit log must never take a request down with it
            log.exception("audit record could not be written", extra={"event": "audit_error"})

    # --- streams ---------------------------------------------------------------------------------

    async def decide(self, info: AcceptInfo) -> StreamDecision:
        """Accept a relayed WebSocket only if it is signed, targets a declared stream and policy
        allows it; nothing is opened upstream before this returns (catalogue A 25, D 88)."""
        runtime = self._runtime()
        record = AuditRecord(
            decision_id=str(uuid.uuid4()),
            kind="stream",
            revision=runtime.revision,
            started=time.time(),
            method="GET",
        )
        clock = time.perf_counter()
        try:
            selector, request_target = split_selector(info.target)
            hc_target = self._verifier_target(info.target)
            record.keyid = self._authenticate("GET", hc_target, info.connect_headers, None)
            canonical = self._canonicalise(runtime, "GET", selector, request_target, (), True)
            record.target, record.path = canonical.target, canonical.path
            target = runtime.loaded.config.targets[canonical.target]
            if target.scheme != "tcp":
                raise Refusal(
                    501,
                    "websocket_upstream_unsupported",
                    "only tcp targets carry streams",
                    "decide",
                )
            if canonical.path != "/":
                raise Refusal(404, "path_not_allowed", "a tcp target has no paths", "canonicalise")
            record.result, record.stage = "allowed", "decide"
        except Refusal as refusal:
            record.result = "denied" if refusal.status in (401, 403) else "rejected"
            record.reasons, record.stage = [refusal.code], refusal.stage
            record.status = refusal.status
            record.latency_ms = (time.perf_counter() - clock) * 1000
            self._finish_stream(record)
            return RejectStream(refusal.status, refusal.code)
        record.latency_ms = (time.perf_counter() - clock) * 1000
        self._streams[info.stream_id] = _PendingStream(runtime, target, canonical, record)
        return AcceptStream()

    def _verifier_target(self, accept_target: str) -> str:
        # The SaaS signs the stream's path as it addressed it: /{hc path}{target}.
        return f"/{self._hc_path}{accept_target}"

    async def serve(self, info: AcceptInfo, socket: StreamSocket) -> None:
        """Open the upstream and splice until either side ends."""
        pending = self._streams.pop(info.stream_id, None)
        if pending is None:
            await socket.close(1011, "no decision")
            return
        config = pending.runtime.loaded.config
        target, record = pending.target, pending.record
        connect = target.limits.connect_timeout_seconds or config.limits.connect_timeout_seconds
        self._metrics.streams_active.inc()
        try:
            try:
                reader, writer = await open_tcp(
                    target,
                    resolver=pending.runtime.resolver,
                    connect_timeout=connect,
                    redirect=pending.runtime.redirect,
                )
            except DialError as exc:
                record.result, record.reasons, record.status = "failed", [exc.code], exc.status
                await socket.close(1011, exc.code)
                return
            result = await splice(
                socket,
                reader,
                writer,
                idle_timeout=config.limits.stream_idle_timeout_seconds,
                max_message=config.limits.max_request_body_bytes,
            )
            record.status = 101
            record.reasons = [result.reason]
        finally:
            self._metrics.streams_active.dec()
            self._finish_stream(record)

    def _finish_stream(self, record: AuditRecord) -> None:
        reason = record.reasons[0] if record.reasons else ""
        self._metrics.streams.labels(result=record.result, reason=reason).inc()
        try:
            self._audit(record)
        except Exception:
            log.exception("audit record could not be written", extra={"event": "audit_error"})


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
