"""Errors raised by the LDAP core.

Two kinds, because RFC 4511 answers them differently:

* ``LdapProtocolError``: the bytes are not an LDAP PDU the gateway can trust (bad BER, wrong
  grammar, reserved or reused message id, over a size bound before the PDU could be read). The
  stream cannot be resynchronised, so the answer is a Notice of Disconnection with resultCode
  protocolError and the stream closes (section 4.1.1 and 4.4.1).
* ``LdapRefusedError``: a well-formed request the gateway will not pass on (over a count bound,
  a DN it cannot compare the way the directory does, ...). It is answered like a policy
  denial, with the response matching the request and resultCode insufficientAccessRights, and
  the connection stays usable.

``reason`` is a stable machine-readable code used in responses, decision records and metrics.
"""

from __future__ import annotations

from gateway.errors import GatewayError


class LdapError(GatewayError):
    """Base class of the LDAP core's errors."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class LdapProtocolError(LdapError):
    """The peer sent something that is not a usable LDAP PDU; close the stream."""


class LdapRefusedError(LdapError):
    """A well-formed request the gateway refuses before policy; answer it and carry on."""

    def __init__(
        self, reason: str, detail: str, *, message_id: int = 0, operation: str = ""
    ) -> None:
        super().__init__(reason, detail)
        self.message_id = message_id
        # The operation (a ``codec.Operation`` value) once known, so the refusal can be answered
        # with the matching response type.
        self.operation = operation


class DnError(LdapError):
    """A DN string the gateway cannot parse or cannot compare the way the directory does."""
