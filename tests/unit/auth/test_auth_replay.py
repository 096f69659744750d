"""Replay cache: bounded, never evicts a live nonce, survives restarts through its state file."""

from __future__ import annotations

import json
import math
import stat
from pathlib import Path

import pytest

from gateway.auth import Admission, ReplayCache, ReplayStateError
from gateway.auth.replay import STATE_FILE
from tests.unit.auth.harness import Clock

SKEW = 30.0


def open_cache(state: Path, clock: Clock, max_entries: int = 10) -> ReplayCache:
    return ReplayCache.open(state, max_entries=max_entries, max_skew=SKEW, clock=clock)


def admit(cache: ReplayCache, nonce: str, clock: Clock, window: float = 90.0) -> Admission:
    return cache.admit("k", nonce, created=clock.now, expires=clock.now + window)


def test_second_use_is_a_replay_until_the_window_ends() -> None:
    clock = Clock()
    cache = ReplayCache(max_entries=10, clock=clock)
    assert admit(cache, "n1", clock) is Admission.ACCEPTED
    assert admit(cache, "n1", clock) is Admission.REPLAY
    assert cache.admit("other-key", "n1", created=clock.now, expires=clock.now + 1) is (
        Admission.ACCEPTED
    )
    clock.now += 90
    assert len(cache) == 0
    assert admit(cache, "n1", clock) is Admission.ACCEPTED


def test_full_cache_refuses_new_nonces_and_keeps_live_ones() -> None:
    clock = Clock()
    cache = ReplayCache(max_entries=3, clock=clock)
    for i in range(3):
        assert admit(cache, f"n{i}", clock, window=100 + i) is Admission.ACCEPTED
    assert admit(cache, "new", clock) is Admission.FULL
    # Nothing was evicted: every live nonce is still a replay.
    for i in range(3):
        assert admit(cache, f"n{i}", clock) is Admission.REPLAY
    clock.now += 100  # exactly one entry has expired
    assert admit(cache, "new", clock) is Admission.ACCEPTED
    assert admit(cache, "newer", clock) is Admission.FULL


def test_bounded_under_churn() -> None:
    clock = Clock()
    cache = ReplayCache(max_entries=50, clock=clock)
    for i in range(5000):
        clock.now += 0.1
        assert admit(cache, f"n{i}", clock, window=4.0) is Admission.ACCEPTED
        assert len(cache._heap) <= 50  # the internal index stays bounded too


def test_clean_restart_restores_live_entries(tmp_path: Path) -> None:
    clock = Clock()
    ReplayCache.initialise(tmp_path)
    first = open_cache(tmp_path, clock)
    assert first.restored_cleanly
    assert first.not_before == -math.inf
    assert admit(first, "seen", clock) is Admission.ACCEPTED
    assert admit(first, "short", clock, window=5) is Admission.ACCEPTED
    first.close()
    clock.now += 10
    second = open_cache(tmp_path, clock)
    assert second.restored_cleanly
    assert admit(second, "seen", clock) is Admission.REPLAY
    assert admit(second, "short", clock) is Admission.ACCEPTED  # its window had ended
    assert admit(second, "fresh", clock) is Admission.ACCEPTED


def test_state_file_is_private_and_complete(tmp_path: Path) -> None:
    clock = Clock()
    ReplayCache.initialise(tmp_path)
    cache = open_cache(tmp_path, clock)
    admit(cache, "n", clock)
    cache.close()
    path = tmp_path / STATE_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["clean"] is True
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]  # no temp files left behind


def test_crash_leaves_dirty_state_and_the_next_start_sets_a_barrier(tmp_path: Path) -> None:
    clock = Clock()
    ReplayCache.initialise(tmp_path)
    crashed = open_cache(tmp_path, clock)
    assert json.loads((tmp_path / STATE_FILE).read_text())["clean"] is False
    captured_created = clock.now
    assert admit(crashed, "seen", clock) is Admission.ACCEPTED
    # No close(): the process died. A restart a moment later:
    clock.now += 1
    restarted = open_cache(tmp_path, clock)
    assert not restarted.restored_cleanly
    assert restarted.not_before == clock.now + SKEW
    assert restarted.admit("k", "seen", created=captured_created, expires=clock.now + 60) is (
        Admission.BEFORE_START
    )
    # Signed well after the restart: accepted.
    clock.now += SKEW + 1
    assert admit(restarted, "later", clock) is Admission.ACCEPTED


@pytest.mark.parametrize(
    "content",
    [
        None,
        b"",
        b"{not json",
        b'{"format": 1, "clean": true, "entries": [["k", "n"]]}',
        b'{"format": 2, "clean": true, "entries": []}',
        b'{"format": 1, "clean": true, "entries": [["k", "n", true]]}',
        b'{"format": 1, "clean": "yes", "entries": []}',
        b'{"format": 1, "clean": true, "entries": [' + b'["k","n",1],' * 20 + b'["k","n",1]]}',
        b" " * 20_000,
    ],
)
def test_missing_or_damaged_state_sets_the_barrier(tmp_path: Path, content: bytes | None) -> None:
    clock = Clock()
    if content is not None:
        (tmp_path / STATE_FILE).write_bytes(content)
    cache = open_cache(tmp_path, clock)
    assert not cache.restored_cleanly
    assert admit(cache, "n", clock) is Admission.BEFORE_START
    # The damaged file was replaced by a valid (dirty) one.
    assert json.loads((tmp_path / STATE_FILE).read_text())["clean"] is False


def test_unwritable_state_directory_refuses_to_open(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the directory should be")
    with pytest.raises(ReplayStateError) as caught:
        open_cache(blocker, Clock())
    assert "replay-cache state" in str(caught.value)


def test_closed_cache_admits_nothing(tmp_path: Path) -> None:
    clock = Clock()
    ReplayCache.initialise(tmp_path)
    cache = open_cache(tmp_path, clock)
    cache.close()
    # The state on disk is already "clean": admitting now would lose the nonce on a crash.
    assert admit(cache, "late", clock) is Admission.CLOSED


def test_memory_only_cache() -> None:
    cache = ReplayCache(max_entries=1)
    cache.close()
    assert cache.admit("k", "n", created=1, expires=2) is Admission.CLOSED
    with pytest.raises(ValueError, match="max_entries"):
        ReplayCache(max_entries=0)


def test_a_signature_created_at_the_start_barrier_is_refused() -> None:
    # The barrier is the latest creation time a lost state could have admitted: equal is refused.
    clock = Clock()
    cache = ReplayCache(max_entries=10, not_before=clock.now, clock=clock)
    assert cache.admit("k", "n1", created=clock.now, expires=clock.now + 90) is (
        Admission.BEFORE_START
    )
    assert cache.admit("k", "n2", created=clock.now + 1, expires=clock.now + 90) is (
        Admission.ACCEPTED
    )


def test_a_full_cache_restores_cleanly_at_exactly_its_capacity(tmp_path: Path) -> None:
    clock = Clock()
    ReplayCache.initialise(tmp_path)
    cache = open_cache(tmp_path, clock, max_entries=2)
    assert admit(cache, "n1", clock) is Admission.ACCEPTED
    assert admit(cache, "n2", clock) is Admission.ACCEPTED
    cache.close()
    again = open_cache(tmp_path, clock, max_entries=2)
    assert again.restored_cleanly
    assert admit(again, "n1", clock) is Admission.REPLAY
