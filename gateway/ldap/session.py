"""Sans-IO state of one LDAP connection: framing both directions and the outstanding operations.

No sockets, no asyncio: bytes in, decoded PDUs out (the h11 pattern). The proxy feeds what it
reads from the SaaS side to ``receive_from_client`` and what it reads from the directory to
``receive_from_server``, decides each request, and tells the session which ones it forwarded.

What the session enforces (RFC 4511 section 4.1.1.1 and the gateway's bounds):

* every PDU is framed and size-bounded before its content is read;
* a request's message id is 1..2^31-1 and neither the id of an operation still outstanding nor
  that of an abandoned one the directory may still be answering (4.1.1.1: "unless it can be
  determined that the server is no longer servicing the earlier request");
* at most ``Limits.max_outstanding`` operations are outstanding at the directory at once, and
  at most as many abandoned ones are remembered (an abandon beyond that is not passed on);
* the directory answers only outstanding operations, each with the response types of its own
  operation (or sends an unsolicited notification with message id 0), and an operation ends with
  its final response; abandon ends one without it.

Why the ids matter: the proxy applies a search's verdict (hidden subtrees, stripped attributes)
to the answers by message id. An answer attributed to the wrong request would be judged by
another request's verdict, or by none.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.ldap.codec import (
    DEFAULT_LIMITS,
    Limits,
    Operation,
    Request,
    Response,
    answers,
    decode_request,
    pdu_length,
)
from gateway.ldap.errors import LdapProtocolError, LdapRefusedError
from gateway.ldap.fastread import read_response


@dataclass(frozen=True)
class ClientPdu:
    """One PDU from the client: a ``request`` to decide, or a ``refused`` one to answer."""

    raw: bytes
    request: Request | None = None
    refused: LdapRefusedError | None = None


@dataclass(frozen=True)
class ServerPdu:
    """One PDU from the directory with its decoded ``response``."""

    raw: bytes
    response: Response


def _frames(buffer: bytearray, max_bytes: int) -> list[bytes]:
    pdus: list[bytes] = []
    while True:
        length = pdu_length(buffer, max_bytes)
        if length is None or len(buffer) < length:
            return pdus
        pdus.append(bytes(buffer[:length]))
        del buffer[:length]


class LdapSession:
    """Framing and operation bookkeeping for one relayed LDAP connection."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or DEFAULT_LIMITS
        self._from_client = bytearray()
        self._from_server = bytearray()
        self._outstanding: dict[int, Operation] = {}
        # Abandoned ids whose late responses are dropped (section 4.11: the directory may still
        # send some). An id stays here, and cannot be reused, until the directory answers it
        # after all or a bind completes (4.2.1: the directory finishes or abandons every
        # operation before a bind). Bounded like the outstanding set: see ``forwarding``.
        self._abandoned: set[int] = set()
        self.unbound = False

    @property
    def outstanding(self) -> int:
        """How many forwarded operations the directory has not finished yet."""
        return len(self._outstanding)

    def receive_from_client(self, data: bytes) -> list[ClientPdu]:
        """Frame and decode client bytes; raises ``LdapProtocolError`` (then close the stream)."""
        if self.unbound:
            # Section 4.3: after an UnbindRequest the client sends nothing more.
            raise LdapProtocolError("ldap-after-unbind", "data after an UnbindRequest")
        self._from_client += data
        pdus: list[ClientPdu] = []
        for raw in _frames(self._from_client, self.limits.max_request_bytes):
            if self.unbound:
                raise LdapProtocolError("ldap-after-unbind", "data after an UnbindRequest")
            try:
                request = decode_request(raw, self.limits)
            except LdapRefusedError as refused:
                pdus.append(ClientPdu(raw, refused=refused))
                continue
            self._check_id(request.message_id)
            if request.operation is Operation.UNBIND:
                self.unbound = True
            pdus.append(ClientPdu(raw, request=request))
        if self.unbound and self._from_client:
            raise LdapProtocolError("ldap-after-unbind", "data after an UnbindRequest")
        return pdus

    def _check_id(self, message_id: int) -> None:
        if message_id in self._outstanding:
            raise LdapProtocolError(
                "ldap-bad-message-id",
                f"message id {message_id} is still outstanding (section 4.1.1.1)",
            )
        if message_id in self._abandoned:
            # Late answers to the abandoned operation could not be told from answers to this
            # one (section 4.1.1.1 leaves that undefined): the stream cannot go on.
            raise LdapProtocolError(
                "ldap-bad-message-id",
                f"message id {message_id} belongs to an abandoned operation the directory may "
                "still answer (section 4.1.1.1)",
            )

    def forwarding(self, request: Request) -> bool:
        """Record that ``request`` goes to the directory; False for an abandon not to pass on.

        An abandon is passed on only for an outstanding operation, and only while fewer than
        ``Limits.max_outstanding`` abandoned ones are remembered: forgetting one would let its
        id be reused while its late answers may still come. Not passing an abandon on is what a
        directory may do anyway (section 4.11); the operation then runs to its end as usual.

        Raises ``LdapRefusedError`` when too many are already outstanding (the request is then
        answered, not forwarded), and ``LdapProtocolError`` when its message id is in use: the
        check at decoding cannot see the requests of the same read that went before it.
        """
        if request.operation is Operation.ABANDON:
            # Section 4.11: the abandoned operation may never be answered.
            if (
                request.abandon_id not in self._outstanding
                or len(self._abandoned) >= self.limits.max_outstanding
            ):
                return False
            del self._outstanding[request.abandon_id]
            self._abandoned.add(request.abandon_id)
            return True
        if not request.expects_response:
            return True
        self._check_id(request.message_id)
        if len(self._outstanding) >= self.limits.max_outstanding:
            raise LdapRefusedError(
                "ldap-too-many-outstanding",
                f"{len(self._outstanding)} operations are already outstanding",
                message_id=request.message_id,
                operation=request.operation,
            )
        self._outstanding[request.message_id] = request.operation
        return True

    def operation_of(self, message_id: int) -> Operation | None:
        """The operation an outstanding message id belongs to."""
        return self._outstanding.get(message_id)

    def receive_from_server(self, data: bytes) -> list[ServerPdu]:
        """Frame and decode directory bytes; raises ``LdapProtocolError`` for a response that
        answers nothing outstanding (a confused or hostile directory: close both ends).

        Responses to abandoned operations are dropped here: the client asked not to see them.
        """
        self._from_server += data
        pdus: list[ServerPdu] = []
        for raw in _frames(self._from_server, self.limits.max_response_bytes):
            # The directory's answers go through the lazy reader (gateway.ldap.fastread says why
            # that is safe): an entry's values are never parsed, only what the gateway decides on.
            response = read_response(raw, self.limits)
            if response.message_id == 0:
                # Section 4.4: unsolicited notifications use message id 0.
                pdus.append(ServerPdu(raw, response))
                continue
            if response.message_id in self._abandoned:
                if response.final:
                    self._abandoned.discard(response.message_id)
                continue
            operation = self._outstanding.get(response.message_id)
            if operation is None:
                raise LdapProtocolError(
                    "ldap-unexpected-response",
                    f"a {response.kind} for message id {response.message_id}, not outstanding",
                )
            if not answers(operation, response.kind):
                # An entry for a modify, a bind's answer to a search: judged by the wrong
                # request's verdict (or none), it would pass unfiltered. Sections 4.2-4.13.
                raise LdapProtocolError(
                    "ldap-unexpected-response",
                    f"a {response.kind} for message id {response.message_id}, a {operation}",
                )
            if response.final:
                del self._outstanding[response.message_id]
                if operation is Operation.BIND:
                    # Section 4.2.1: the directory finished or abandoned every earlier operation
                    # before it processed the bind; their ids may be used again.
                    self._abandoned.clear()
            pdus.append(ServerPdu(raw, response))
        return pdus
