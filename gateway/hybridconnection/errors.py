"""Errors raised by the Hybrid Connections protocol core.

Every failure carries a stable machine-readable ``code`` (used for metrics and log fields) and a
message that is safe to show an operator: no token, signature, key or raw peer input beyond a
short, clearly delimited excerpt is ever put into a message.
"""

from __future__ import annotations

from gateway.errors import GatewayError


class HybridConnectionError(GatewayError):
    """Base of every error the protocol core raises; ``code`` is stable and machine-readable."""

    code: str = "hybrid_connection_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class ProtocolError(HybridConnectionError):
    """The peer broke the wire protocol (control messages, framing, addresses)."""

    code = "protocol_error"


class MessageTooLargeError(ProtocolError):
    """A text control message or a body exceeded the configured bound."""

    code = "message_too_large"


class MalformedMessageError(ProtocolError):
    """A control message is not a single JSON object (bad UTF-8, bad JSON, wrong shape)."""

    code = "malformed_message"


class UnknownCommandError(ProtocolError):
    """A well-formed control message whose single top-level key names no known command."""

    code = "unknown_command"


class MissingFieldError(ProtocolError):
    """A required field of a control message is absent."""

    code = "missing_field"


class InvalidFieldError(ProtocolError):
    """A field of a control message has the wrong type or an out-of-range value."""

    code = "invalid_field"


class MalformedRequestError(ProtocolError):
    """A ``request`` that can still be answered: its ``id`` and ``body`` flag are sound, another
    field is not (a control character in a header value, a method that is not a token ...).

    ``request_id`` and ``body`` are the validated fields, ``field_error`` the defect found. The
    framing stays in step because ``body`` says whether a body message follows; the listener
    answers the request 400 and keeps the socket.
    """

    code = "malformed_request"

    def __init__(self, field_error: ProtocolError, *, request_id: str, body: bool) -> None:
        super().__init__(str(field_error))
        self.field_error = field_error
        self.request_id = request_id
        self.body = body


class MalformedCommandError(ProtocolError):
    """A defective ``accept`` or rendezvous-only ``request``: commands never followed by a body.

    Nothing can be answered (the only route back is the address, which cannot be trusted from a
    defective command), but the framing is not in doubt either, so the socket carries on
    (section 3.2). ``command`` names the command (``accept`` or ``request``); ``field_error`` is
    the defect found.
    """

    code = "malformed_command"

    def __init__(self, field_error: ProtocolError, *, command: str) -> None:
        super().__init__(str(field_error))
        self.field_error = field_error
        self.command = command


class TooManyViolationsError(ProtocolError):
    """A socket exceeded its budget of tolerated protocol violations within the time window."""

    code = "too_many_violations"


class UnexpectedFrameError(ProtocolError):
    """A frame arrived that the framing rules do not allow in the current state."""

    code = "unexpected_frame"


class UnexpectedCommandError(ProtocolError):
    """A known command arrived on a socket or in a direction where it is not allowed."""

    code = "unexpected_command"


class BadRendezvousAddressError(ProtocolError):
    """A rendezvous address handed to the listener is outside the trusted relay endpoints."""

    code = "bad_rendezvous_address"


class TokenError(HybridConnectionError):
    """A Shared Access Signature token is malformed or does not grant access."""

    code = "invalid_token"


class MalformedTokenError(TokenError):
    """The token does not have the ``SharedAccessSignature k=v&...`` shape of section 2.1."""

    code = "malformed_token"


class UnknownKeyNameError(TokenError):
    """The token's ``skn`` names no rule known to the validator."""

    code = "unknown_key_name"


class BadSignatureError(TokenError):
    """The token's ``sig`` does not match the HMAC of its ``sr`` and ``se``."""

    code = "bad_signature"


class TokenExpiredError(TokenError):
    """The token's ``se`` lies in the past."""

    code = "token_expired"


class WrongResourceError(TokenError):
    """The token is valid but its ``sr`` does not cover the entity it is presented for."""

    code = "wrong_resource"
