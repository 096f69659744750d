"""Bounded nonce replay cache that survives restarts.

RFC 9421 section 7.2.2 leaves replay protection to the application: a signature stays valid for
its whole freshness window, so the verifier remembers every ``(keyid, nonce)`` it accepted until
that window ends. The cache is bounded: when it holds ``max_entries`` live nonces it refuses new
ones (``Admission.FULL``, answered 503) and never evicts a live entry, because evicting one would
reopen exactly that nonce to replay.

Restarts. A restarted process must not accept a request the previous process already accepted.
The state directory holds one file, ``replay-cache.json``, with a ``clean`` flag:

* ``close()`` writes every live entry with ``clean: true`` (temp file, fsync, ``os.replace``,
  mode 0600, then fsync of the directory, so a crash leaves either the old or the new file).
* ``open()`` loads a clean file and immediately rewrites it with ``clean: false``, so that a crash
  later in this process's life is recognisable at the next start.
* If no clean state can be loaded (missing, unreadable, corrupt, or left by a crash), nonces the
  previous process accepted may be unknown. The cache then rejects every signature ``created`` at
  or before ``start + max_skew`` (the "start barrier"). The ``+ max_skew`` (rather than ``-``) is
  deliberate: the previous process accepted signatures whose ``created`` was up to ``max_skew``
  ahead of its clock, right up to the moment it stopped. The cost is that, after an unclean start,
  requests signed within the first ``max_skew`` seconds are refused and must be re-signed.
* Registration (or a demo) creates the state with ``initialise()``: an empty, clean file, because
  a brand-new gateway has provably accepted nothing yet.

One process per state directory. The cache is thread-safe (one lock around the in-memory state).

The seam. The verifier records nonces through a :class:`ReplayStore`. :class:`MemoryReplayStore`
puts this cache behind it: the memory of one gateway process, complete only while that process is
the single listener of its Hybrid Connection. Several processes or gateways on one Hybrid
Connection need one memory for all of them, or a request captured once can be served once by each:
:mod:`gateway.auth.replaystores` has the shared stores (SQLite for the processes of one host,
Redis for every gateway), and ``open_replay_store`` there picks one from gateway.yaml.
"""

from __future__ import annotations

import heapq
import json
import math
import threading
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Final, Protocol

from gateway.errors import GatewayError
from gateway.statefile import replace_atomically

STATE_FILE: Final = "replay-cache.json"
_FORMAT: Final = 1
# Upper bound on the bytes one persisted entry may take (keyid <= 128, nonce <= 128, JSON framing),
# used to refuse absurdly large state files before reading them.
_MAX_ENTRY_BYTES: Final = 600


class ReplayStateError(GatewayError):
    """The replay-cache state directory cannot be written; the gateway must not start."""


class Admission(Enum):
    """Outcome of ``ReplayCache.admit``."""

    ACCEPTED = "accepted"
    REPLAY = "replay"
    BEFORE_START = "before_start"
    FULL = "full"
    CLOSED = "closed"
    UNAVAILABLE = "unavailable"


class ReplayCache:
    """Remembers accepted ``(keyid, nonce)`` pairs until their signature's window ends."""

    def __init__(
        self,
        *,
        max_entries: int,
        state_dir: Path | None = None,
        not_before: float = -math.inf,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Create an empty cache; use ``open()`` to restore one from a state directory.

        ``not_before`` is the start barrier: signatures created at or before it are refused.
        ``state_dir`` is where ``close()`` persists the entries (``None``: memory only).
        """
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        self._state_dir = state_dir
        self._not_before = not_before
        self._clock = clock
        self._lock = threading.Lock()
        self._expiry: dict[tuple[str, str], float] = {}
        self._heap: list[tuple[float, tuple[str, str]]] = []
        self._closed = False
        self.restored_cleanly = False

    @classmethod
    def open(
        cls,
        state_dir: Path,
        *,
        max_entries: int,
        max_skew: float,
        clock: Callable[[], float] = time.time,
    ) -> ReplayCache:
        """Restore the cache from ``state_dir`` and mark the state as in use (see module doc).

        Raises ``ReplayStateError`` when the state cannot be written back, because a cache that
        cannot record that it is in use could let a crash go unnoticed.
        """
        start = clock()
        entries = _load_clean_entries(state_dir / STATE_FILE, max_entries)
        barrier = -math.inf if entries is not None else start + max_skew
        cache = cls(max_entries=max_entries, state_dir=state_dir, not_before=barrier, clock=clock)
        for (keyid, nonce), expires in (entries or {}).items():
            if expires > start:
                cache._insert((keyid, nonce), expires)
        cache.restored_cleanly = entries is not None
        cache._persist(clean=False)
        return cache

    @staticmethod
    def initialise(state_dir: Path) -> None:
        """Write an empty, clean state for a gateway that has never accepted a request."""
        _write_state(state_dir, {"format": _FORMAT, "clean": True, "entries": []})

    @property
    def not_before(self) -> float:
        """The start barrier (Unix seconds); ``-inf`` when clean state was restored."""
        return self._not_before

    def __len__(self) -> int:
        with self._lock:
            self._purge(self._clock())
            return len(self._expiry)

    def admit(self, keyid: str, nonce: str, *, created: float, expires: float) -> Admission:
        """Record a nonce of an authentic signature, or say why it must be refused.

        ``expires`` is when the signature's acceptance window ends (local clock); the entry is
        kept until then. Signatures whose window has already ended are never stored.
        """
        if created <= self._not_before:
            return Admission.BEFORE_START
        key = (keyid, nonce)
        with self._lock:
            now = self._clock()
            if self._closed:
                # Persisted state already says "clean"; a nonce admitted now would be lost.
                return Admission.CLOSED
            self._purge(now)
            if key in self._expiry:
                return Admission.REPLAY
            if len(self._expiry) >= self._max_entries:
                return Admission.FULL
            if expires > now:
                self._insert(key, expires)
            return Admission.ACCEPTED

    def close(self) -> None:
        """Stop admitting nonces and persist the live entries as clean state.

        For a memory-only cache only the first part applies.
        """
        with self._lock:
            self._closed = True
        self._persist(clean=True)

    def _insert(self, key: tuple[str, str], expires: float) -> None:
        self._expiry[key] = expires
        heapq.heappush(self._heap, (expires, key))

    def _purge(self, now: float) -> None:
        # Every live key has exactly one heap item (a key is only re-inserted after its old item
        # was popped here), so popping expired items keeps dict and heap in step in O(log n).
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            del self._expiry[key]

    def _persist(self, *, clean: bool) -> None:
        if self._state_dir is None:
            return
        with self._lock:
            self._purge(self._clock())
            entries = [[keyid, nonce, expires] for (keyid, nonce), expires in self._expiry.items()]
        _write_state(self._state_dir, {"format": _FORMAT, "clean": clean, "entries": entries})


def _load_clean_entries(path: Path, max_entries: int) -> dict[tuple[str, str], float] | None:
    """The entries of a clean, well-formed state file, or ``None`` if there is no such file."""
    limit = 1024 + max_entries * _MAX_ENTRY_BYTES
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError:
        return None
    if len(data) > limit:
        return None
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if (
        not isinstance(document, dict)
        or document.get("format") != _FORMAT
        or document.get("clean") is not True
        or not isinstance(document.get("entries"), list)
        or len(document["entries"]) > max_entries
    ):
        return None
    entries: dict[tuple[str, str], float] = {}
    for item in document["entries"]:
        if not (
            isinstance(item, list)
            and len(item) == 3
            and isinstance(item[0], str)
            and isinstance(item[1], str)
            and isinstance(item[2], int | float)
            and not isinstance(item[2], bool)
        ):
            return None
        entries[(item[0], item[1])] = float(item[2])
    return entries


def _write_state(state_dir: Path, document: dict[str, object]) -> None:
    """Atomically replace the state file: temp file, fsync, ``os.replace``, fsync the directory."""
    payload = json.dumps(document, separators=(",", ":")).encode()
    try:
        replace_atomically(state_dir, STATE_FILE, payload)
    except OSError as exc:
        raise ReplayStateError(
            f"cannot write replay-cache state in {state_dir}: {exc.strerror or type(exc).__name__}"
        ) from exc


class ReplayStore(Protocol):
    """A replay memory: where the verifier records the nonce of each authentic request."""

    @property
    def description(self) -> str:
        """What and where the store is, for logs and ``gateway check`` (never a secret)."""
        ...

    @property
    def problem(self) -> str | None:
        """Why the last admission was ``UNAVAILABLE``, in words an operator can act on (never a
        secret); ``None`` once the store answers. ``gateway check`` shows it beside its probe."""
        ...

    async def admit(self, keyid: str, nonce: str, *, created: float, expires: float) -> Admission:
        """Record ``(keyid, nonce)`` until ``expires`` if no one recorded it before.

        Atomic: of any number of concurrent calls with the same pair, on any process sharing the
        store, exactly one is ``ACCEPTED``. ``UNAVAILABLE`` when the store cannot answer in time:
        the caller refuses the request (fail closed).
        """
        ...

    async def close(self) -> None:
        """Release the store's resources; no admission is made after this."""
        ...


class MemoryReplayStore:
    """The per-process :class:`ReplayCache` behind the :class:`ReplayStore` seam."""

    def __init__(self, cache: ReplayCache) -> None:
        self.cache = cache

    @property
    def description(self) -> str:
        """Per-process memory (the weaker mode with more than one listener process)."""
        return "memory (this gateway process only)"

    @property
    def problem(self) -> None:
        """Never unavailable: the memory is in this process."""
        return None

    async def admit(self, keyid: str, nonce: str, *, created: float, expires: float) -> Admission:
        """See :meth:`ReplayCache.admit`."""
        return self.cache.admit(keyid, nonce, created=created, expires=expires)

    async def close(self) -> None:
        """Persist the cache as clean state (see the module doc)."""
        self.cache.close()
