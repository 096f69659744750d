"""The LDAP proxy: one relayed stream served PDU by PDU against the policy.

The SaaS side is plaintext LDAP from inside the stream's inner TLS
(:mod:`gateway.ldap.innertls`); the directory side is the gateway's own connection
(:mod:`gateway.ldap.directory`). Between them, :class:`gateway.ldap.session.LdapSession` frames
and decodes every PDU, and each request is decided before a byte of it reaches the directory:

* allowed: forwarded as received, except a simple bind to a configured bind identity, which is
  rewritten to the identity's DN and stored password (credential injection, read at bind time);
* denied by policy, or refused by the codec's bounds: answered by the gateway with the response
  matching the request, resultCode 50 (insufficientAccessRights, RFC 4511 section 4.1.9) and the
  reason code in the diagnostic message; the connection stays usable (issue item 7);
* the policy engine failed: resultCode 80 (other), reason ``policy_unavailable`` (fail closed);
* malformed (anything the codec cannot trust): a Notice of Disconnection with protocolError
  (section 4.4.1) and the stream closes. Nothing decoded after it is acted on.

Search result entries lose the attributes the verdict strips (and any attribute named by a
numeric OID the gateway cannot name, when something is to be stripped: the directory returns an
attribute under the description the client asked for, so an OID would otherwise slip past a
rule that names the type). Continuation references, referrals and matchedDNs pass only as far
as the operation's grant reaches (:mod:`gateway.ldap.disclosure`): a withheld URL is removed, a
reference left with none is dropped, a referral result left with none becomes resultCode 50
``ldap_referral_withheld``, a withheld matchedDN becomes empty, and the diagnostic message of a
result that lost either is replaced by the reason code (Active Directory repeats the best match
and the referral's servers there). StartTLS from the SaaS is refused: the stream is already
encrypted and the gateway owns the TLS to the directory.

RFC 4511 section 4.2.1: a client sends nothing while a bind is in progress; one that does is
malformed. That is also what keeps decisions honest: every operation is decided under the
identity the directory will execute it as. After a bind request the connection counts as
anonymous until the directory answers success (RFC 4513 section 5.1: a failed bind leaves it
anonymous).

Each operation ends in one :class:`OperationOutcome`, handed to ``record`` when its final
response went back (or when the stream ended first), so the decision log holds the directory's
result code too. Bounds: the session's (PDU size, outstanding operations, message ids), one read
chunk per direction in flight (a 10,000-entry search streams through at the client's pace), an
idle timeout, and a deadline on every write to the directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from gateway.errors import GatewayError
from gateway.ldap.codec import (
    Operation,
    Request,
    Response,
    ResultCode,
    encode_notice_of_disconnection,
    encode_result,
    encode_simple_bind,
    rewrite_reference,
    rewrite_result,
    strip_entry_attributes,
)
from gateway.ldap.directory import START_TLS
from gateway.ldap.disclosure import Reach, screen
from gateway.ldap.dn import normalise_attribute
from gateway.ldap.errors import LdapProtocolError, LdapRefusedError
from gateway.ldap.policy_input import bind_name, bind_subject
from gateway.ldap.session import LdapSession

log = logging.getLogger(__name__)

_NUMERIC_OID = re.compile(r"[0-9]+(\.[0-9]+)+")
# Seconds a Notice of Disconnection may take to leave before the stream closes without it.
NOTICE_TIMEOUT = 2.0


class ClientChannel(Protocol):
    """The SaaS side: plaintext bytes (the inner TLS's :class:`TlsOverMessages`)."""

    async def receive(self) -> bytes | None:
        """The next bytes, or ``None`` at the end of the stream."""
        ...

    async def send(self, data: bytes) -> None:
        """Send bytes to the SaaS."""
        ...


class DirectoryChannel(Protocol):
    """The directory side (:class:`gateway.ldap.directory.DirectoryConnection`)."""

    async def read(self) -> bytes:
        """The next bytes; empty at the end of the stream."""
        ...

    async def write(self, data: bytes) -> None:
        """Write bytes (with a deadline)."""
        ...


class Verdict(Protocol):
    """What the policy decided for one operation (``gateway.ldap.decide.LdapVerdict``)."""

    @property
    def allowed(self) -> bool: ...
    @property
    def reasons(self) -> tuple[str, ...]: ...
    @property
    def operation(self) -> str | None: ...
    @property
    def revision(self) -> str: ...
    @property
    def unavailable(self) -> bool:
        """The engine could not decide (fail closed, answered busy)."""
        ...

    @property
    def strip_attributes(self) -> frozenset[str]:
        """Attribute types removed from every result entry of an allowed search."""
        ...

    def strips(self, description: str) -> bool:
        """Whether an entry's attribute, by its description, must be removed."""
        ...

    def hides(self, entry_dn: str) -> bool:
        """Whether a result entry with this DN must not be returned (never reachable)."""
        ...

    @property
    def reach(self) -> Reach | None:
        """Which referral URLs and matchedDNs of the answers may pass (None: none)."""
        ...


class Decide(Protocol):
    """Decide one request under the connection's binding (``LdapChain.decide`` behind it)."""

    def __call__(
        self, request: Request, bound_as: str | None, injected: bool
    ) -> Awaitable[Verdict]: ...


@dataclass(frozen=True)
class BindIdentity:
    """A configured bind identity: the SaaS binds with ``name``, the directory sees ``dn``.

    ``password`` reads the stored secret when called (at bind time, so a rotated secret is used
    from the next bind on); it never appears in a log, a record or a repr.
    """

    name: str
    dn: str
    password: Callable[[], bytes] = field(repr=False)


@dataclass
class OperationOutcome:
    """One LDAP operation as decided and, when forwarded, as the directory answered it.

    ``result``: allowed, denied (policy), rejected (the gateway's bounds or a request it refuses
    before policy), failed (the stream ended before the answer, or the credential could not be
    read) or error (the policy engine failed). ``result_code`` is the LDAP resultCode the SaaS
    got (None when no answer was sent: abandon, unbind, or the stream ended first).
    """

    request: Request
    started: float
    bound_as: str | None
    injected: bool
    result: str = "allowed"
    reasons: list[str] = field(default_factory=list)
    rule: str | None = None
    policy_revision: str | None = None
    decide_ms: float = 0.0
    result_code: int | None = None
    stripped: set[str] = field(default_factory=set)
    entries: int = 0
    hidden: int = 0
    referrals_withheld: int = 0
    """Referral and continuation reference URLs not passed on (outside the grant)."""
    matched_dn_withheld: bool = False
    """A result's matchedDN named a place outside the grant and was sent empty."""


class LdapProxyError(GatewayError):
    """The proxy cannot go on (a failing directory write): ``code`` for the stream's record."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class LdapProxy:
    """Serve one LDAP connection between ``client`` and ``directory`` until either ends."""

    def __init__(
        self,
        client: ClientChannel,
        directory: DirectoryChannel,
        *,
        decide: Decide,
        record: Callable[[OperationOutcome], None],
        identities: Mapping[str, BindIdentity] | None = None,
        session: LdapSession | None = None,
        idle_timeout: float = 300.0,
    ) -> None:
        self._client = client
        self._directory = directory
        self._decide = decide
        self._record = record
        self._identities = dict(identities or {})
        self._session = session or LdapSession()
        self._idle_timeout = idle_timeout
        self._last_activity = time.monotonic()
        # PDUs to the SaaS come from both directions' tasks; one PDU is written whole.
        self._client_lock = asyncio.Lock()
        self._pending: dict[int, OperationOutcome] = {}
        # The verdict of every operation the directory is answering: its answers are judged by
        # it (a search's entries, every answer's referrals and matchedDN).
        self._verdicts: dict[int, Verdict] = {}
        self._bound_as: str | None = None
        self._injected = False
        self._bind_in_progress: int | None = None
        self._pending_binding: tuple[str | None, bool] = (None, False)
        self.operations = 0

    # --- running -------------------------------------------------------------------------------

    async def run(self) -> str:
        """Serve until either side ends; returns why (a reason code for the stream's record).

        Operations still waiting for the directory's answer are recorded as failed.
        """
        tasks = [
            asyncio.create_task(self._from_client()),
            asyncio.create_task(self._from_directory()),
            asyncio.create_task(self._idle()),
        ]
        reason = "internal_error"
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            reason = done.pop().result()
        except LdapProxyError as exc:
            reason = exc.code
        except Exception as exc:  # the stream ends; the caller closes both ends
            log.warning("LDAP stream failed: %s", exc, extra={"event": "ldap_stream_error"})
            reason = getattr(exc, "code", "internal_error")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for outcome in self._pending.values():
                outcome.result = "failed"
                outcome.reasons = [*outcome.reasons, "stream_ended"]
                self._finish(outcome)
            self._pending.clear()
        return reason

    async def _idle(self) -> str:
        while True:
            remaining = self._last_activity + self._idle_timeout - time.monotonic()
            if remaining <= 0:
                return "idle_timeout"
            await asyncio.sleep(remaining)

    async def _send_client(self, data: bytes) -> None:
        async with self._client_lock:
            await self._client.send(data)

    async def _disconnect(self, result_code: int, reason: str) -> None:
        """Section 4.4.1: tell the SaaS why before the stream closes (best effort, bounded: a
        SaaS that stopped reading does not hold the stream open)."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(NOTICE_TIMEOUT):
                await self._send_client(encode_notice_of_disconnection(result_code, reason))

    # --- SaaS to directory ----------------------------------------------------------------------

    async def _from_client(self) -> str:
        while True:
            data = await self._client.receive()
            if data is None:
                return "client_closed"
            self._last_activity = time.monotonic()
            try:
                pdus = self._session.receive_from_client(data)
                for pdu in pdus:
                    if self._bind_in_progress is not None:
                        # RFC 4511 section 4.2.1: nothing may follow a bind until its answer.
                        raise LdapProtocolError(
                            "ldap-pdu-during-bind", "a PDU was sent while a bind was in progress"
                        )
                    if pdu.refused is not None:
                        await self._refuse(pdu.refused)
                        continue
                    assert pdu.request is not None
                    if pdu.request.operation is Operation.UNBIND:
                        await self._unbind(pdu.request, pdu.raw)
                        return "unbind"
                    if pdu.request.operation is Operation.ABANDON:
                        await self._abandon_request(pdu.request, pdu.raw)
                        continue
                    await self._handle(pdu.request, pdu.raw)
            except LdapProtocolError as exc:
                log.info(
                    "LDAP protocol error from the SaaS: %s",
                    exc,
                    extra={"event": "ldap_protocol_error", "reason": exc.reason},
                )
                await self._disconnect(ResultCode.PROTOCOL_ERROR, exc.reason)
                return "ldap_protocol_error"

    def _outcome(self, request: Request) -> OperationOutcome:
        self.operations += 1
        return OperationOutcome(
            request=request,
            started=time.time(),
            bound_as=self._bound_as,
            injected=self._injected,
        )

    async def _answer(self, outcome: OperationOutcome, code: int, diagnostic: str) -> None:
        """Answer a request the directory never sees, and record it."""
        request = outcome.request
        outcome.result_code = code
        if request.expects_response:
            await self._send_client(
                encode_result(request.message_id, request.operation, code, diagnostic)
            )
        else:
            outcome.result_code = None
        self._finish(outcome)

    async def _refuse(self, refused: LdapRefusedError) -> None:
        """A well-formed request over a bound (the codec's or the session's): code 50."""
        operation = Operation(refused.operation) if refused.operation else Operation.EXTENDED
        outcome = self._outcome(Request(message_id=refused.message_id, operation=operation))
        outcome.result, outcome.reasons = "rejected", [refused.reason]
        await self._answer(outcome, ResultCode.INSUFFICIENT_ACCESS_RIGHTS, refused.reason)

    async def _unbind(self, request: Request, raw: bytes) -> None:
        """Section 4.3: pass the unbind on so the directory ends the connection cleanly."""
        outcome = self._outcome(request)
        outcome.reasons = ["ldap_unbind"]
        with contextlib.suppress(Exception):
            await self._directory.write(raw)
        self._finish(outcome)

    async def _abandon_request(self, request: Request, raw: bytes) -> None:
        """Section 4.11: passed on only for an operation the directory has; never decided, as
        it can only stop something the policy already allowed."""
        outcome = self._outcome(request)
        outcome.reasons = ["ldap_abandon"]
        forward = self._session.forwarding(request)
        self._finish(outcome)
        if forward:
            # Only now is the operation over for the gateway: one whose abandon is not passed
            # on keeps its verdict, and its answers are still judged by it.
            self._abandon(request.abandon_id)
            await self._directory.write(raw)

    async def _handle(self, request: Request, raw: bytes) -> None:
        outcome = self._outcome(request)
        if request.operation is Operation.EXTENDED and request.request_name == START_TLS:
            # Section 4.14: the stream is already encrypted end to end (the inner TLS) and the
            # gateway alone negotiates TLS with the directory; a second layer would blind it.
            outcome.result, outcome.reasons = "rejected", ["ldap_starttls_refused"]
            await self._answer(
                outcome, ResultCode.INSUFFICIENT_ACCESS_RIGHTS, "ldap_starttls_refused"
            )
            return
        identity = self._injection(request)
        if request.operation is Operation.BIND:
            # A bind is decided on the name it carries; an injected one as that identity.
            bound_as = identity.name if identity is not None else self._bound_as
            injected = identity is not None
        else:
            bound_as, injected = self._bound_as, self._injected
        clock = time.perf_counter()
        try:
            verdict = await self._decide(request, bound_as, injected)
        except Exception:  # fail closed: the decision could not be made
            log.exception("LDAP decision failed", extra={"event": "policy_unavailable"})
            outcome.result, outcome.reasons = "error", ["policy_unavailable"]
            await self._answer(outcome, ResultCode.BUSY, "policy_unavailable")
            return
        outcome.decide_ms = (time.perf_counter() - clock) * 1000
        outcome.rule, outcome.policy_revision = verdict.operation, verdict.revision
        if verdict.unavailable:
            # The engine could not decide: busy (RFC 4511 4.1.9, 51) invites a retry, and
            # nothing went to the directory.
            outcome.result, outcome.reasons = "error", list(verdict.reasons)
            await self._answer(outcome, ResultCode.BUSY, verdict.reasons[0])
            return
        if not verdict.allowed:
            reasons = list(verdict.reasons) or ["ldap_not_granted"]
            outcome.result, outcome.reasons = "denied", reasons
            await self._answer(outcome, ResultCode.INSUFFICIENT_ACCESS_RIGHTS, reasons[0])
            return
        if identity is not None:
            try:
                password = identity.password()
            except Exception as exc:  # the secret cannot be read: fail closed, say which
                log.warning(
                    "bind identity %s: its password cannot be read: %s",
                    identity.name,
                    getattr(exc, "code", type(exc).__name__),
                    extra={"event": "ldap_credential_unavailable"},
                )
                outcome.result, outcome.reasons = "failed", ["ldap_credential_unavailable"]
                await self._answer(outcome, ResultCode.UNAVAILABLE, "ldap_credential_unavailable")
                return
            raw = encode_simple_bind(request.message_id, identity.dn, password, request.controls)
        try:
            self._session.forwarding(request)
        except LdapRefusedError as refused:
            outcome.result, outcome.reasons = "rejected", [refused.reason]
            await self._answer(outcome, ResultCode.INSUFFICIENT_ACCESS_RIGHTS, refused.reason)
            return
        if request.operation is Operation.BIND:
            # RFC 4513 section 5.1: from now on the connection is anonymous unless this succeeds.
            self._bind_in_progress = request.message_id
            # A SASL bind binds as the identity in its credentials (RFC 4513 5.2), which is
            # what the policy judged it by (bind_subject).
            self._pending_binding = (
                (identity.name, True)
                if identity is not None
                else (bind_subject(request) or None, False)
            )
            self._bound_as, self._injected = None, False
        if request.expects_response:
            self._verdicts[request.message_id] = verdict
            self._pending[request.message_id] = outcome
        else:
            self._finish(outcome)
        await self._directory.write(raw)

    def _injection(self, request: Request) -> BindIdentity | None:
        """The bind identity a simple bind names, if any (credential injection), read as the
        policy reads it (:func:`gateway.ldap.policy_input.bind_name`)."""
        if request.operation is not Operation.BIND or request.auth_method != "simple":
            return None
        return self._identities.get(bind_name(request.dn))

    def _abandon(self, message_id: int) -> None:
        """Section 4.11: the abandoned operation may never be answered; record it as such."""
        self._verdicts.pop(message_id, None)
        outcome = self._pending.pop(message_id, None)
        if outcome is not None:
            outcome.result = "failed"
            outcome.reasons = [*outcome.reasons, "ldap_abandoned"]
            self._finish(outcome)

    # --- directory to SaaS ----------------------------------------------------------------------

    async def _from_directory(self) -> str:
        while True:
            data = await self._directory.read()
            if not data:
                if self._session.unbound:
                    return "unbind"
                await self._disconnect(ResultCode.UNAVAILABLE, "directory_closed")
                return "directory_closed"
            self._last_activity = time.monotonic()
            try:
                pdus = self._session.receive_from_server(data)
            except LdapProtocolError as exc:
                # A confused or hostile directory: nothing more it says can be trusted.
                log.warning(
                    "LDAP protocol error from the directory: %s",
                    exc,
                    extra={"event": "ldap_directory_protocol_error", "reason": exc.reason},
                )
                await self._disconnect(ResultCode.UNAVAILABLE, "directory_protocol_error")
                return "directory_protocol_error"
            for pdu in pdus:
                response = pdu.response
                raw = pdu.raw
                if response.message_id == 0:
                    # Section 4.4: an unsolicited notification (e.g. the directory's own notice
                    # of disconnection) goes to the SaaS, with no place named: no operation's
                    # grant covers it.
                    await self._send_client(self._screened(None, response, raw, None)[0])
                    continue
                outcome = self._pending.get(response.message_id)
                verdict = self._verdicts.get(response.message_id)
                if response.kind == "searchResRef":
                    reach = verdict.reach if verdict is not None else None
                    kept, withheld = screen(reach, response.referrals)
                    if outcome is not None:
                        outcome.referrals_withheld += withheld
                    if not kept:
                        continue  # section 4.5.3: a reference carries at least one URI
                    if withheld:
                        raw = rewrite_reference(raw, kept)
                elif response.kind == "searchResEntry":
                    if verdict is None or verdict.hides(response.dn):
                        # Within a never-reachable subtree: the SaaS does not learn it exists.
                        # (An entry with no search verdict to judge it is dropped too; the
                        # session lets entries answer only outstanding searches.)
                        if outcome is not None:
                            outcome.hidden += 1
                        continue
                    raw = self._stripped(verdict, raw, response.attributes, outcome)
                    if outcome is not None:
                        outcome.entries += 1
                if response.final:
                    # Settled before the answer leaves: once the SaaS has it, the binding and
                    # the operation's record are already what it implies.
                    self._verdicts.pop(response.message_id, None)
                    raw, sent_code = self._screened(verdict, response, raw, outcome)
                    if response.kind == "bindResponse":
                        self._bound(response.message_id, response.result_code)
                    if outcome is not None:
                        del self._pending[response.message_id]
                        outcome.result_code = sent_code
                        self._finish(outcome)
                await self._send_client(raw)

    @staticmethod
    def _screened(
        verdict: Verdict | None,
        response: Response,
        raw: bytes,
        outcome: OperationOutcome | None,
    ) -> tuple[bytes, int | None]:
        """A result (section 4.1.9) with the referral URLs (4.1.10) and the matchedDN its
        operation's grant does not reach withheld (:mod:`gateway.ldap.disclosure`), and the
        resultCode it now carries."""
        if response.result_code is None or (not response.referrals and not response.dn):
            return raw, response.result_code
        reach = verdict.reach if verdict is not None else None
        kept, withheld = screen(reach, response.referrals)
        matched = response.dn
        hide_matched = bool(matched) and (reach is None or not reach.shows_matched(matched))
        if not withheld and not hide_matched:
            return raw, response.result_code
        code, diagnostic = response.result_code, response.diagnostic
        if hide_matched:
            matched, diagnostic = "", "ldap_matched_dn_withheld"
        if withheld:
            diagnostic = "ldap_referral_withheld"
            if code == ResultCode.REFERRAL and not kept:
                # A referral result must carry a URI (4.1.10); with none left the operation
                # was not performed and the gateway will not say where it could be: refused.
                code, matched = ResultCode.INSUFFICIENT_ACCESS_RIGHTS, ""
        if outcome is not None:
            outcome.referrals_withheld += withheld
            outcome.matched_dn_withheld = outcome.matched_dn_withheld or hide_matched
            if diagnostic not in outcome.reasons:
                outcome.reasons.append(diagnostic)
        return rewrite_result(
            raw, result_code=code, matched_dn=matched, diagnostic=diagnostic, referrals=kept
        ), code

    def _stripped(
        self,
        verdict: Verdict | None,
        raw: bytes,
        attributes: tuple[str, ...],
        outcome: OperationOutcome | None,
    ) -> bytes:
        if verdict is None or not verdict.strip_attributes:
            return raw

        def stripped(description: str) -> bool:
            if verdict.strips(description):
                return True
            # The directory names an attribute the way the client asked for it; an OID the
            # gateway cannot map to a name could be a stripped type under another spelling.
            return _NUMERIC_OID.fullmatch(normalise_attribute(description)) is not None

        # The session decoded the entry already: only an entry that carries something to strip
        # is decoded again and re-encoded without it (the common entry passes as it came).
        if not any(stripped(description) for description in attributes):
            return raw
        kept, removed = strip_entry_attributes(raw, stripped)
        if removed and outcome is not None:
            outcome.stripped.update(normalise_attribute(item) for item in removed)
        return kept

    def _bound(self, message_id: int, result_code: int | None) -> None:
        if message_id != self._bind_in_progress:
            return
        self._bind_in_progress = None
        if result_code == ResultCode.SUCCESS:
            self._bound_as, self._injected = self._pending_binding
        self._pending_binding = (None, False)

    def _finish(self, outcome: OperationOutcome) -> None:
        try:
            self._record(outcome)
        except Exception:  # the record sink must never take the stream down
            log.exception("LDAP operation record failed", extra={"event": "audit_error"})
