"""Sender authentication: RFC 9421 signature verification, pinned signing keys, replay cache.

Every relayed request and WebSocket connect must carry a signature made by the SaaS's
request-signing key pinned at registration; see ``verifier`` for the exact rules.
"""

from gateway.auth.errors import Reason, SignatureError
from gateway.auth.keys import KeySet, KeySetError, PinnedKey
from gateway.auth.limiter import BadSignatureLimiter
from gateway.auth.replay import Admission, ReplayCache, ReplayStateError
from gateway.auth.skew import ClockSkewEstimate
from gateway.auth.verifier import (
    DEFAULT_TAG,
    GATEWAY_ID_HEADER,
    SignatureVerifier,
    VerifiedRequest,
    VerifierSettings,
)

__all__ = [
    "DEFAULT_TAG",
    "GATEWAY_ID_HEADER",
    "Admission",
    "BadSignatureLimiter",
    "ClockSkewEstimate",
    "KeySet",
    "KeySetError",
    "PinnedKey",
    "Reason",
    "ReplayCache",
    "ReplayStateError",
    "SignatureError",
    "SignatureVerifier",
    "VerifiedRequest",
    "VerifierSettings",
]
