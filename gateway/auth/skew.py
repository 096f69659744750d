"""Estimate of the offset between the local clock and the signer's clock.

When the gateway's clock is wrong, every genuine request looks expired (or from the future) and an
operator reading "expired" would chase the SaaS. The verifier therefore feeds this estimator the
offset ``local time of verification - created`` of every signature that verified
cryptographically (forged ``created`` values never count). The median of the recent samples is a
robust estimate that includes the normal few-hundred-millisecond delivery delay; when it exceeds the
tolerated skew across several samples the skew is called systematic, and rejections and health
output say so with the estimated offset. The estimate is advisory only: it never shifts the
acceptance window, so a wrong estimate cannot widen what the gateway accepts.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass


def median(values: list[float]) -> float:
    """The median of a non-empty list, with the arithmetic of :func:`statistics.median`.

    Written out because importing :mod:`statistics` (with what it imports) costs a running
    gateway about 0.25 MiB for one sort and one addition (issue 13: idle memory).
    """
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


@dataclass(frozen=True, slots=True)
class ClockSkewEstimate:
    """``offset``: seconds the local clock runs ahead of the signer's (negative: behind)."""

    offset: float
    samples: int
    systematic: bool


class SkewEstimator:
    """Median of the last ``max_samples`` authentic offsets seen within ``window`` seconds."""

    def __init__(
        self,
        *,
        threshold: float,
        window: float = 300.0,
        max_samples: int = 9,
        min_samples: int = 3,
    ) -> None:
        """A median offset beyond ``threshold`` over ``min_samples`` samples is systematic."""
        if not 1 <= min_samples <= max_samples:
            raise ValueError("need 1 <= min_samples <= max_samples")
        self._threshold = threshold
        self._window = window
        self._min_samples = min_samples
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._lock = threading.Lock()

    def record(self, offset: float, now: float) -> None:
        """Add the offset of one authentic signature verified at local time ``now``."""
        with self._lock:
            self._samples.append((now, offset))

    def estimate(self, now: float) -> ClockSkewEstimate | None:
        """The current estimate, or ``None`` when no recent sample exists."""
        with self._lock:
            recent = [offset for seen, offset in self._samples if now - self._window <= seen]
        if not recent:
            return None
        offset = median(recent)
        systematic = len(recent) >= self._min_samples and abs(offset) > self._threshold
        return ClockSkewEstimate(offset=offset, samples=len(recent), systematic=systematic)
