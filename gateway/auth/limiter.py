"""A bounded limiter of failed sender authentication (catalogue J 155: a flood of bad signatures).

Failures are counted per signing key when the failure names a pinned key (a forged or broken
signature under a real key id), and otherwise in one bucket for the whole gateway (unsigned
requests, malformed signature fields, unknown key ids: the sender is anonymous). When a bucket
sees ``threshold`` failures within ``window`` seconds it cools down for ``cooldown`` seconds, and
every failure that keeps arriving at that rate extends it.

While a bucket cools down, the pipeline answers 429 ``too_many_bad_signatures`` (RFC 6585 section
4) instead of 401 to the requests that fail in it, and, while the gateway-wide bucket cools down,
refuses a request that carries no signature fields at all before any signature work. A request
whose signature verifies is never affected, whatever the state of its bucket: it is verified as
always and goes on. That is also the limit of what can be saved: a signature naming a pinned key
can only be told from a forgery by verifying it, so the cryptography still runs for those (one
verification, about 0.1-0.2 ms); everything anonymous is refused before any cryptography, as it
always was.

Memory is bounded: one bucket for the gateway plus at most ``max_keys`` key buckets (key ids come
from the pinned set only, and the least recently failed bucket is dropped beyond the bound). The
thresholds are fixed defaults (docs/operations.md); the module is sans-IO, with the clock
injected.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from gateway.auth.errors import Reason

DEFAULT_THRESHOLD: Final = 100
"""Failures in one bucket within :data:`DEFAULT_WINDOW` that start a cool-down."""
DEFAULT_WINDOW: Final = 10.0
DEFAULT_COOLDOWN: Final = 30.0
DEFAULT_MAX_KEYS: Final = 64

# Failures that do not count: a signer whose clock is off (its requests are authentic, and the
# operator needs to see expired/clock_skew, not 429) and the state of the gateway's own replay
# memory (a full cache, shutdown, a shared store that is down: the signer did nothing wrong, and
# counting them would keep refusing its authentic requests with 429 after the store recovers).
_NOT_COUNTED: Final = frozenset(
    {
        Reason.EXPIRED,
        Reason.CLOCK_SKEW,
        Reason.REPLAY_CACHE_FULL,
        Reason.REPLAY_CACHE_CLOSED,
        Reason.REPLAY_STORE_UNAVAILABLE,
    }
)


@dataclass(slots=True)
class _Bucket:
    window_start: float
    count: int = 0
    cooling_until: float = 0.0


class BadSignatureLimiter:
    """Counts authentication failures per pinned key id (or for the gateway) and says when a
    bucket is cooling down. ``None`` as a key id means the gateway-wide bucket."""

    def __init__(
        self,
        *,
        threshold: int = DEFAULT_THRESHOLD,
        window: float = DEFAULT_WINDOW,
        cooldown: float = DEFAULT_COOLDOWN,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` returns monotonic seconds."""
        if threshold < 1 or window <= 0 or cooldown <= 0 or max_keys < 1:
            raise ValueError("threshold, window, cooldown and max_keys must be positive")
        self.threshold = threshold
        self.window = window
        self.cooldown = cooldown
        self._max_keys = max_keys
        self._clock = clock
        self._gateway = _Bucket(window_start=clock())
        self._keys: OrderedDict[str, _Bucket] = OrderedDict()

    @staticmethod
    def counts(reason: Reason) -> bool:
        """Whether a failure for ``reason`` counts (and may be answered 429)."""
        return reason not in _NOT_COUNTED

    def cooling(self, keyid: str | None) -> float:
        """Seconds the bucket of ``keyid`` (None: the gateway's) still cools down, else 0."""
        bucket = self._gateway if keyid is None else self._keys.get(keyid)
        if bucket is None:
            return 0.0
        return max(0.0, bucket.cooling_until - self._clock())

    def failure(self, keyid: str | None) -> bool:
        """Count one failure; True when its bucket starts a cool-down with this failure."""
        now = self._clock()
        bucket = self._bucket(keyid, now)
        if now - bucket.window_start >= self.window:
            bucket.window_start, bucket.count = now, 0
        bucket.count += 1
        if bucket.count < self.threshold:
            return False
        started = bucket.cooling_until <= now
        bucket.cooling_until = now + self.cooldown
        bucket.window_start, bucket.count = now, 0
        return started

    def __len__(self) -> int:
        """Key buckets held (the gateway's own bucket not included)."""
        return len(self._keys)

    def _bucket(self, keyid: str | None, now: float) -> _Bucket:
        if keyid is None:
            return self._gateway
        bucket = self._keys.get(keyid)
        if bucket is None:
            bucket = self._keys[keyid] = _Bucket(window_start=now)
            if len(self._keys) > self._max_keys:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(keyid)
        return bucket
