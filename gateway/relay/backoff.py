"""Reconnect pacing for relay control channels.

Normal failures (a dropped socket, a 1001/1008/1011 close, a ping timeout, an unreachable relay
or proxy) use capped exponential backoff with *full jitter*: the n-th consecutive failure waits a
uniformly random time in ``[0, min(cap, base * 2**n)]``. Full jitter spreads a fleet of agents
that lost the relay at the same moment across the whole window instead of in synchronised waves
(catalogue items 122 and 128; the reference listeners' fixed 0/1/2/5/10/30 s ladder, protocol notes
section 3.4, has no jitter).

Two failures get their own slow policy, because retrying them quickly cannot help:

* ``401``/``403`` (credentials refused) and ``407`` (proxy credentials refused): the first one in
  a row retries at once with a freshly minted token (the token may simply have expired while
  disconnected); any further one waits ``auth_retry_delay`` (jittered between half and all of it),
  so a revoked key never produces a tight loop (catalogue items 124 and 133).
* ``404`` (the Hybrid Connection does not exist): always ``not_found_retry_delay`` (default five
  minutes, jittered the same way); the caller raises an alert (catalogue item 125; .NET stops
  retrying altogether, section 3.4, which would need a restart after the entity is re-created).

A ``403`` for the listener quota (25 per Hybrid Connection) backs off normally: it clears as soon
as another listener leaves (a rolling restart), which a fresh token cannot speed up.

A close with 1008 (the listener token expired, protocol notes section 3.4) is retried at once with
a freshly minted token the first time in a row, like a first 401; repeated ones back off normally.

A connection that stayed up for ``stable_after`` seconds (default 10) resets the counters, so a
relay that recycles a healthy connection is rejoined at once rather than after a delay that grew
over earlier, unrelated failures.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

__all__ = ["Backoff", "BackoffPolicy", "FailureKind"]


class FailureKind(enum.Enum):
    """Why a control channel is down; selects the delay policy and labels the reconnect metric."""

    CLOSED = "closed"  # the relay closed the socket (1000/1001/1011 or no status)
    TOKEN_EXPIRED = "token_expired"  # noqa: S105 - a reason label; 1008, token ran out (3.4)
    ERROR = "error"  # network, TLS, handshake or protocol failure
    PING_TIMEOUT = "ping_timeout"  # no pong in time: half-open socket (catalogue item 123)
    UNAUTHORIZED = "unauthorized"  # 401/403 on the listen handshake
    QUOTA = "quota"  # 403 QuotaExceeded: the HC already has 25 listeners (section 7)
    PROXY_AUTH = "proxy_auth"  # 407 from the outbound proxy
    NOT_FOUND = "not_found"  # 404: the Hybrid Connection is gone


@dataclass(frozen=True)
class BackoffPolicy:
    """Delays in seconds. Defaults follow protocol notes section 9 and catalogue items 122-125."""

    base: float = 1.0
    cap: float = 30.0
    auth_retry_delay: float = 60.0
    not_found_retry_delay: float = 300.0
    stable_after: float = 10.0

    def __post_init__(self) -> None:
        """Reject values that would make the schedule meaningless or a tight loop."""
        if self.base <= 0 or self.cap < self.base:
            raise ValueError("backoff needs 0 < base <= cap")
        if self.auth_retry_delay <= 0 or self.not_found_retry_delay <= 0:
            raise ValueError("slow retry delays must be positive")
        if self.stable_after < 0:
            raise ValueError("stable_after must not be negative")


class Backoff:
    """The reconnect schedule of one control channel.

    ``rng`` is injectable so tests can pin the jitter; by default a fresh ``random.Random`` is
    used (jitter needs spread, not secrecy).
    """

    def __init__(self, policy: BackoffPolicy, rng: random.Random | None = None) -> None:
        """Start with no failures recorded."""
        self.policy = policy
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._failures = 0
        self._auth_failures = 0

    @property
    def failures(self) -> int:
        """Consecutive failures since the last stable connection."""
        return self._failures

    def connected_for(self, seconds: float) -> None:
        """Record how long the last connection lasted; a stable one resets the schedule."""
        if seconds >= self.policy.stable_after:
            self.reset()

    def reset(self) -> None:
        """Forget past failures."""
        self._failures = 0
        self._auth_failures = 0

    def next_delay(self, kind: FailureKind) -> float:
        """Record a failure of ``kind`` and return how long to wait before the next attempt."""
        policy = self.policy
        if kind in (FailureKind.UNAUTHORIZED, FailureKind.PROXY_AUTH):
            self._auth_failures += 1
            self._failures += 1
            if self._auth_failures == 1:
                return 0.0
            return self._slow(policy.auth_retry_delay)
        self._auth_failures = 0
        if kind is FailureKind.TOKEN_EXPIRED and self._failures == 0:
            self._failures += 1
            return 0.0  # the next connect mints a fresh token
        if kind is FailureKind.NOT_FOUND:
            self._failures += 1
            return self._slow(policy.not_found_retry_delay)
        exponent = min(self._failures, 62)  # bounded: 2**62 * base is far beyond any cap
        self._failures += 1
        return self._rng.uniform(0.0, min(policy.cap, policy.base * 2.0**exponent))

    def _slow(self, delay: float) -> float:
        return self._rng.uniform(delay / 2, delay)
