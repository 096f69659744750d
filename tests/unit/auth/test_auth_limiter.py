"""The bad-signature limiter (catalogue J 155): buckets, window, cool-down and its memory bound."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.auth import BadSignatureLimiter, Reason


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, **kwargs: float) -> BadSignatureLimiter:
    options: dict[str, float] = {"threshold": 3, "window": 10.0, "cooldown": 30.0}
    options.update(kwargs)
    return BadSignatureLimiter(
        threshold=int(options["threshold"]),
        window=options["window"],
        cooldown=options["cooldown"],
        clock=clock,
    )


def test_threshold_failures_in_the_window_start_a_cooldown() -> None:
    clock = Clock()
    limits = limiter(clock)
    assert [limits.failure(None) for _ in range(3)] == [False, False, True]
    assert limits.cooling(None) == 30.0
    clock.now += 29.5
    assert limits.cooling(None) == pytest.approx(0.5)
    clock.now += 1
    assert limits.cooling(None) == 0.0


def test_failures_spread_wider_than_the_window_never_trip() -> None:
    clock = Clock()
    limits = limiter(clock)
    for _ in range(10):
        assert not limits.failure(None)
        assert not limits.failure(None)
        clock.now += 10.0
    assert limits.cooling(None) == 0.0


def test_a_continuing_flood_extends_the_cooldown() -> None:
    clock = Clock()
    limits = limiter(clock)
    for _ in range(3):
        limits.failure(None)
    clock.now += 20
    # Three more within the cool-down: it runs 30 s from the last trip (not a new start).
    assert [limits.failure(None) for _ in range(3)] == [False, False, False]
    assert limits.cooling(None) == 30.0


def test_buckets_are_per_key_and_the_gateway_bucket_is_separate() -> None:
    clock = Clock()
    limits = limiter(clock)
    for _ in range(3):
        limits.failure("key-a")
    assert limits.cooling("key-a") == 30.0
    assert limits.cooling("key-b") == 0.0
    assert limits.cooling(None) == 0.0


def test_clock_problems_and_the_replay_cache_state_do_not_count() -> None:
    counted = {reason for reason in Reason if BadSignatureLimiter.counts(reason)}
    assert Reason.BAD_SIGNATURE in counted
    assert Reason.MISSING_SIGNATURE in counted
    assert Reason.REPLAY in counted
    assert not counted & {
        Reason.EXPIRED,
        Reason.CLOCK_SKEW,
        Reason.REPLAY_CACHE_FULL,
        Reason.REPLAY_CACHE_CLOSED,
        Reason.REPLAY_STORE_UNAVAILABLE,
    }


def test_settings_must_be_positive() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        BadSignatureLimiter(threshold=0)
    with pytest.raises(ValueError, match="must be positive"):
        BadSignatureLimiter(cooldown=0)


@settings(max_examples=50)
@given(st.lists(st.text(min_size=1, max_size=8) | st.none(), max_size=400))
def test_memory_is_bounded_and_the_recent_flood_keeps_its_bucket(keyids: list[str | None]) -> None:
    clock = Clock()
    limits = BadSignatureLimiter(threshold=2, max_keys=8, clock=clock)
    for keyid in keyids:
        limits.failure(keyid)
        assert len(limits) <= 8
    for _ in range(2):
        limits.failure("flooding-key")
    assert limits.cooling("flooding-key") > 0
