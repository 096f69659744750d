"""Replay memories shared between processes and gateways (the :class:`ReplayStore` seam).

RFC 9421 section 7.2.2 leaves replay protection to the verifier. Azure Relay spreads the requests
of one Hybrid Connection over all its listeners (protocol notes section 2.3), so when several
processes or gateways listen on one Hybrid Connection, "each signed request is served at most once"
holds only if they all record nonces in one memory. Two stores provide it:

:class:`gateway.auth.sqlitestore.SqliteReplayStore`
    a SQLite file in WAL mode, for every process of one host: no network service. Each admission is
    one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE expired`` statement inside a write
    transaction, so SQLite's write lock makes it atomic across processes; ``synchronous=FULL``
    makes an accepted nonce survive a power loss, not only a crash. Admissions that arrive while a
    transaction is being written share the next one (group commit: one fsync for the batch).
:class:`gateway.auth.redisstore.RedisReplayStore`
    a Redis (or Valkey) server for every gateway of the Hybrid Connection: ``SET key 1 NX PX ms``
    (atomic set-if-absent with expiry) under a key prefix per Hybrid Connection.

A store can lose its memory (a Redis restarted without persistence, a deleted SQLite file). Then
nonces accepted before may be unknown, exactly the case of :class:`ReplayCache`'s unclean start,
and the answer is the same start barrier: each store keeps a ``barrier`` timestamp next to the
nonces, written once when the store is found empty (``now + max_skew``, the reasoning is in
:mod:`gateway.auth.replay`), and refuses every signature ``created`` at or before it. Because the
barrier lives inside the store, a store that lost its nonces has lost its barrier too, and the
first gateway to notice writes a new one; nothing outside the store needs to be trusted.

Failure is fail closed: a store that cannot answer within its timeout gives
``Admission.UNAVAILABLE`` (503 ``replay_store_unavailable``). Nothing falls back to per-process
memory by itself; that is a choice the operator makes in gateway.yaml (docs/security.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from gateway.auth.replay import MemoryReplayStore, ReplayCache, ReplayStore
from gateway.config.loader import LoadedConfig
from gateway.config.secrets import SecretSource
from gateway.errors import GatewayError

log = logging.getLogger(__name__)

SQLITE_FILE: Final = "replay.sqlite3"


class ReplayStoreError(GatewayError):
    """The configured replay store cannot be opened; the gateway must not start."""


def nonce_key(keyid: str, nonce: str) -> str:
    # Length-prefixed so that no (keyid, nonce) pair can collide with another one.
    return f"{len(keyid)}:{keyid}:{nonce}"


def default_prefix(hybrid_connection: str) -> str:
    """The key prefix of a Hybrid Connection; the braces are a Redis Cluster hash tag, so a
    nonce and its barrier always live on the same node."""
    return f"gateway:replay:{{{hybrid_connection}}}:"


def open_replay_store(
    loaded: LoadedConfig,
    state_dir: Path,
    hybrid_connection: str,
    *,
    env: Mapping[str, str] | None = None,
    claim_marker: bool = True,
) -> ReplayStore:
    """The replay store gateway.yaml asks for; raises ``ReplayStoreError`` (and ``SecretError``,
    ``ReplayStateError``) when it cannot be opened.

    ``claim_marker=False`` (``gateway check``) only reads the Redis prefix marker
    (:func:`gateway.auth.redisstore.marker_key`): a check run with another prefix must not make
    the serving gateways refuse requests.
    """
    signatures = loaded.config.signatures
    settings = signatures.replay_store
    if settings.kind == "sqlite":
        path = (
            loaded.resolve_path(settings.sqlite_path)
            if settings.sqlite_path is not None
            else state_dir / SQLITE_FILE
        )
        # Imported only when configured, like Redis below: the default store never needs SQLite
        # (its module and library hold about 1 MiB for the life of the process).
        from gateway.auth.sqlitestore import SqliteReplayStore

        return SqliteReplayStore(
            Path(path),
            max_entries=signatures.replay_cache_entries,
            max_skew=signatures.clock_skew_seconds,
        )
    if settings.kind == "redis":
        redis = settings.redis
        if redis is None:  # validate reports it; here only as a guard
            raise ReplayStoreError("signatures.replay_store.redis is missing")
        # Imported only when configured: redis-py adds about 7 MiB and 40 ms to every start,
        # and the default store (per-process memory) never needs it.
        from gateway.auth.redisstore import RedisReplayStore, marker_key

        return RedisReplayStore(
            redis,
            password=SecretSource(redis.password, base_dir=loaded.file.parent, env=env),
            prefix=redis.key_prefix or default_prefix(hybrid_connection),
            max_skew=signatures.clock_skew_seconds,
            ca_file=Path(loaded.resolve_path(redis.ca_file)) if redis.ca_file else None,
            marker=marker_key(hybrid_connection),
            claim_marker=claim_marker,
        )
    return MemoryReplayStore(
        ReplayCache.open(
            state_dir,
            max_entries=signatures.replay_cache_entries,
            max_skew=signatures.clock_skew_seconds,
        )
    )
