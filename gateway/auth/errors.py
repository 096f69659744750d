"""Reason codes and the one exception type of sender authentication.

Every way a relayed request can fail authentication has its own stable reason code, so that
metrics, audit records and operators can tell a missing signature from a replay or a skewed clock.
Each code maps to the HTTP status the gateway answers with: 401 for anything that is not an
authentic, fresh, first-seen request; 431 when the headers or the signature fields exceed their
size limits (they are refused before being parsed); 503 when the replay cache is full or already
closed for shutdown, or the shared replay store cannot be reached (the request may be genuine, the
gateway just cannot prove it is not a replay right now).

Messages are fixed phrases plus numbers the gateway computed itself: never signature bytes, nonces,
key material or other attacker-supplied text.
"""

from __future__ import annotations

from enum import StrEnum

from gateway.errors import GatewayError


class Reason(StrEnum):
    """Why a request failed authentication; the value is the code used in logs and metrics."""

    MISSING_SIGNATURE = "missing_signature"
    MALFORMED_SIGNATURE = "malformed_signature"
    HEADERS_TOO_LARGE = "headers_too_large"
    MALFORMED_REQUEST = "malformed_request"
    MISSING_COMPONENT = "missing_component"
    DUPLICATE_FIELD = "duplicate_covered_field"
    MISSING_PARAMETER = "missing_parameter"
    WRONG_GATEWAY = "wrong_gateway"
    UNKNOWN_KEY = "unknown_key"
    KEY_NOT_ACTIVE = "key_not_active"
    ALG_MISMATCH = "alg_mismatch"
    EXPIRED = "expired"
    CLOCK_SKEW = "clock_skew"
    BAD_SIGNATURE = "bad_signature"
    DIGEST_MISMATCH = "digest_mismatch"
    REPLAY = "replay"
    REPLAY_CACHE_FULL = "replay_cache_full"
    REPLAY_CACHE_CLOSED = "replay_cache_closed"
    REPLAY_STORE_UNAVAILABLE = "replay_store_unavailable"

    @property
    def status(self) -> int:
        """The HTTP status the gateway answers with for this reason."""
        if self is Reason.HEADERS_TOO_LARGE:
            return 431
        if self in (
            Reason.REPLAY_CACHE_FULL,
            Reason.REPLAY_CACHE_CLOSED,
            Reason.REPLAY_STORE_UNAVAILABLE,
        ):
            return 503
        return 401


class SignatureError(GatewayError):
    """A relayed request failed sender authentication.

    ``reason`` is the stable code, ``status`` the HTTP status to answer with, ``detail`` a short
    fixed explanation. ``keyid`` is the (syntactically valid) key id the signature named, when the
    failure happened after it was parsed, for logs. ``clock_offset`` is set when the failure looks
    caused by a systematic clock difference: the estimated number of seconds the local clock is
    ahead of the signer's (negative when it is behind).
    """

    def __init__(
        self,
        reason: Reason,
        detail: str,
        *,
        keyid: str | None = None,
        clock_offset: float | None = None,
    ) -> None:
        self.reason = reason
        self.status = reason.status
        self.detail = detail
        self.keyid = keyid
        self.clock_offset = clock_offset
        super().__init__(f"{reason.value}: {detail}")
