"""Why a relayed request is refused before any policy or upstream sees it.

Every refusal has a stable reason code (logs, metrics, audit records and tests use it) and exactly
one HTTP status, so a code always means the same answer. Messages are fixed phrases plus numbers
the gateway computed itself: never header values, path bytes or other text the sender supplied,
because a relayed request may carry credentials in any of them.
"""

from __future__ import annotations

from enum import StrEnum

from gateway.errors import GatewayError


class RejectReason(StrEnum):
    """Stable reason codes of :class:`RequestRejected`; the value is the code."""

    # Method (RFC 9110 section 9.1).
    INVALID_METHOD = "invalid_method"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    # Target selection (catalogue A).
    UNKNOWN_TARGET = "unknown_target"
    TARGET_NOT_ALLOWED = "target_not_allowed"
    STREAM_ONLY_TARGET = "stream_only_target"
    INVALID_TARGET = "invalid_target"
    USERINFO = "userinfo"
    PERCENT_ENCODED_HOST = "percent_encoded_host"
    IPV6_ZONE_ID = "ipv6_zone_id"
    NON_CANONICAL_HOST = "non_canonical_host"
    INVALID_HOST = "invalid_host"
    MISSING_PORT = "missing_port"
    INVALID_PORT = "invalid_port"
    # Request-target form (RFC 9112 section 3.2).
    URI_TOO_LONG = "uri_too_long"
    ABSOLUTE_FORM = "absolute_form"
    AUTHORITY_FORM = "authority_form"
    ASTERISK_FORM = "asterisk_form"
    INVALID_REQUEST_TARGET = "invalid_request_target"
    FRAGMENT = "fragment"
    INVALID_QUERY = "invalid_query"
    # Path (RFC 3986 sections 2 and 3.3; catalogue B).
    NON_ASCII = "non_ascii"
    INVALID_CHARACTER = "invalid_character"
    CONTROL_CHARACTER = "control_character"
    NUL_BYTE = "nul_byte"
    BACKSLASH = "backslash"
    MATRIX_PARAMETER = "matrix_parameter"
    EMPTY_SEGMENT = "empty_segment"
    DOT_SEGMENT = "dot_segment"
    ENCODED_DOT_SEGMENT = "encoded_dot_segment"
    ENCODED_DOT = "encoded_dot"
    ENCODED_SLASH = "encoded_slash"
    DOUBLE_ENCODING = "double_encoding"
    ENCODED_DELIMITER = "encoded_delimiter"
    PADDED_DOT_SEGMENT = "padded_dot_segment"
    INVALID_PERCENT_ENCODING = "invalid_percent_encoding"
    INVALID_UTF8 = "invalid_utf8"
    UNICODE_CONFUSABLE = "unicode_confusable"
    # Headers (RFC 9110 section 5, RFC 9112 section 6; catalogue C).
    TOO_MANY_HEADERS = "too_many_headers"
    HEADERS_TOO_LARGE = "headers_too_large"
    INVALID_HEADER_NAME = "invalid_header_name"
    INVALID_HEADER_VALUE = "invalid_header_value"
    INVALID_CONTENT_LENGTH = "invalid_content_length"
    CONTENT_LENGTH_WITH_TRANSFER_ENCODING = "content_length_with_transfer_encoding"
    INVALID_TRANSFER_ENCODING = "invalid_transfer_encoding"
    DUPLICATE_HOST = "duplicate_host"
    DUPLICATE_HEADER = "duplicate_header"
    CONTENT_LENGTH_MISMATCH = "content_length_mismatch"
    # The gateway injects this target's credential; the SaaS may not bring one.
    SAAS_CREDENTIAL = "saas_credential_refused"


# One status per code. 403: well-formed, but names something the file does not declare.
# 405: a method no operation can ever allow. 414 and 431: RFC 9110 section 15.5.15 and
# RFC 6585 section 5. Everything else is a malformed request: 400.
_STATUS: dict[RejectReason, int] = {
    RejectReason.UNKNOWN_TARGET: 403,
    RejectReason.TARGET_NOT_ALLOWED: 403,
    RejectReason.STREAM_ONLY_TARGET: 403,
    RejectReason.METHOD_NOT_ALLOWED: 405,
    RejectReason.URI_TOO_LONG: 414,
    RejectReason.TOO_MANY_HEADERS: 431,
    RejectReason.HEADERS_TOO_LARGE: 431,
}


def status_of(reason: RejectReason) -> int:
    """The HTTP status the gateway answers with for ``reason``."""
    return _STATUS.get(reason, 400)


# The name is fixed by the contract with the policy engine and the pipeline, hence no "Error".
class RequestRejected(GatewayError):  # noqa: N818
    """A relayed request is refused; ``code`` is the stable reason, ``status`` the HTTP answer."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.code: RejectReason = reason
        self.status: int = status_of(reason)

    def __repr__(self) -> str:
        return f"RequestRejected({self.code.value!r}, {self.status}, {str(self)!r})"
