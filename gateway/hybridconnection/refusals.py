"""What a refused listen handshake means (protocol notes section 3.1), from its status and reason.

The relay answers a refused control-channel handshake with a plain HTTP status and puts its
explanation, with a tracking id for Microsoft support, in the reason phrase:
``Endpoint does not exist. TrackingId:..., SystemTracker:..., Timestamp:...``. A 403 means
either a token without the Listen right for this path or, with ``QuotaExceeded`` /
``MaximumListenersPerEndpoint`` in the text, that the Hybrid Connection already has its 25
listeners (section 7; .NET maps it to ``QuotaExceededException``). The two need different
fixes, so they are told apart here.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final

__all__ = ["ListenRefusal", "RefusalKind", "classify_listen_refusal", "clean_reason"]

_QUOTA: Final = re.compile(r"quota|maximumlisteners", re.IGNORECASE)
_TRACKING: Final = re.compile(r"TrackingId:\s*([A-Za-z0-9_.:-]{1,100})")
_UNPRINTABLE: Final = re.compile(r"[^\x20-\x7e]")
MAX_REASON: Final = 300


class RefusalKind(enum.Enum):
    """Why the relay refused a listener."""

    UNAUTHORIZED = "unauthorized"  # 401, or 403 without a quota reason: the token
    QUOTA = "quota"  # 403 QuotaExceeded: 25 listeners on the Hybrid Connection
    NOT_FOUND = "not_found"  # 404: no such Hybrid Connection
    OTHER = "other"  # anything else (500, 503 ...): transient service trouble


@dataclass(frozen=True, slots=True)
class ListenRefusal:
    """A classified refusal; ``reason`` is printable ASCII, at most 300 characters."""

    status: int
    kind: RefusalKind
    reason: str
    tracking_id: str | None


def clean_reason(text: str | None) -> str:
    """The relay's reason text, safe for a log line: printable ASCII only, bounded."""
    return _UNPRINTABLE.sub("?", text or "")[:MAX_REASON]


def classify_listen_refusal(status: int, reason: str | None = None) -> ListenRefusal:
    """Classify a listen handshake answered with ``status`` and reason phrase ``reason``."""
    text = clean_reason(reason)
    if status == 403 and _QUOTA.search(text):
        kind = RefusalKind.QUOTA
    elif status in (401, 403):
        kind = RefusalKind.UNAUTHORIZED
    elif status == 404:
        kind = RefusalKind.NOT_FOUND
    else:
        kind = RefusalKind.OTHER
    match = _TRACKING.search(text)
    return ListenRefusal(status, kind, text, match.group(1).rstrip(",") if match else None)
