"""The Redis (or Valkey) replay store, shared by every gateway of a Hybrid Connection.

``SET key 1 NX PX ms`` (atomic set-if-absent with expiry) under a key prefix per Hybrid
Connection, behind a start barrier kept in the store itself; the design and the failure rules are
in :mod:`gateway.auth.replaystores`. A module of its own so that redis-py is imported only by
gateways configured to use it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import redis.asyncio as redis_asyncio
from redis.credentials import CredentialProvider
from redis.exceptions import RedisError, ResponseError

from gateway.auth.replay import Admission
from gateway.auth.replaystores import nonce_key
from gateway.config.model import RedisReplayStore as RedisSettings
from gateway.config.secrets import SecretError, SecretSource

log = logging.getLogger(__name__)

# Connections to the server per store (per gateway process).
_MAX_CONNECTIONS: Final = 64
# How often the server's eviction settings are read again (``CONFIG SET`` can change them).
_EVICTION_CHECK_SECONDS: Final = 60.0

# KEYS[1] barrier, KEYS[2] nonce; ARGV[1] created, ARGV[2] time to live in ms, ARGV[3] this
# admission's own token. Returns -1 when the store has no barrier (empty, or it lost its memory),
# 2 when the signature predates the barrier, 1 when the nonce was recorded, 0 when it was already
# there. One script so that the barrier check and the SET NX happen atomically (Redis runs a
# script without interleaving other commands). The nonce's value is the admission's token, so the
# script is idempotent: redis-py sends a command again when its connection is lost (ten times by
# default, which is also what makes a stale pooled connection harmless), and the server may have
# run it already; finding its own token, a re-sent admission is the same acceptance, not a replay
# of it (which would refuse a request seen for the first time).
_ADMIT_SCRIPT: Final = """
local barrier = redis.call('GET', KEYS[1])
if not barrier then return -1 end
if tonumber(ARGV[1]) <= tonumber(barrier) then return 2 end
if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[2]) == ARGV[3] then return 1 end
return 0
"""


# KEYS[1] the Hybrid Connection's prefix marker; ARGV[1] this gateway's prefix, ARGV[2] its time to
# live in ms, ARGV[3] 1 to claim the marker (a serving gateway), 0 only to read it (``gateway
# check``). Returns the prefix the marker names after the call (this gateway's when it holds or
# took the marker). One script, so that two gateways starting together cannot both claim it.
_MARKER_SCRIPT: Final = """
local held = redis.call('GET', KEYS[1])
if ARGV[3] == '1' and (not held or held == ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return held or ARGV[1]
"""
# How long a marker outlives the last gateway that renewed it (each renews it at every check of
# the server, _EVICTION_CHECK_SECONDS): after that another prefix may be taken up.
_MARKER_TTL_MS: Final = int(3 * _EVICTION_CHECK_SECONDS * 1000)


def marker_key(hybrid_connection: str) -> str:
    """The key naming the prefix the gateways of ``hybrid_connection`` keep their nonces under.

    Outside every prefix, so that gateways configured with different ``key_prefix`` values read
    the same key; the braces are the same Redis Cluster hash tag as the default prefix's.
    """
    return f"gateway:replay-prefix:{{{hybrid_connection}}}"


class _SecretCredentials(CredentialProvider):
    """Reads the password from its reference at each new connection (a rotated secret is used
    from the next connection on)."""

    def __init__(self, username: str | None, password: SecretSource) -> None:
        self._username = username
        self._password = password

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        secret = self._password.get().get_secret_value()
        return (secret,) if self._username is None else (self._username, secret)

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        # A file reference costs one stat when unchanged: cheap enough for the event loop.
        return self.get_credentials()


class RedisReplayStore:
    """Nonces in Redis (or Valkey), shared by every gateway of a Hybrid Connection."""

    def __init__(
        self,
        settings: RedisSettings,
        *,
        password: SecretSource,
        prefix: str,
        max_skew: float,
        ca_file: Path | None = None,
        clock: Callable[[], float] = time.time,
        marker: str | None = None,
        claim_marker: bool = True,
    ) -> None:
        """Prepare the client; no connection is made before the first :meth:`admit`.

        ``marker`` is the Hybrid Connection's prefix marker (:func:`marker_key`): the store
        claims it (or, without ``claim_marker``, only reads it) at each check of the server and
        admits nothing while it names another prefix.
        """
        self._settings = settings
        self._prefix = prefix
        self._marker = marker
        self._claim_marker = claim_marker
        # Why the marker could not be read (None: it was, or there is none), for ``gateway check``.
        self.marker_unchecked: str | None = None
        # The other prefix the marker names (None: none, or this store's own).
        self._split: str | None = None
        self._split_logged = False
        self._max_skew = max_skew
        self._clock = clock
        self._closed = False
        # Why the server last did not answer (None: it answered), for ``problem``.
        self._outage: str | None = None
        self._client = redis_asyncio.Redis(
            host=settings.host,
            port=settings.port,
            db=settings.database,
            credential_provider=_SecretCredentials(settings.username, password),
            ssl=settings.tls,
            ssl_ca_certs=str(ca_file) if ca_file is not None else None,
            ssl_cert_reqs="required",
            socket_timeout=settings.timeout_seconds,
            socket_connect_timeout=settings.timeout_seconds,
            max_connections=_MAX_CONNECTIONS,
        )
        # redis-py's pool raises MaxConnectionsError for a command beyond max_connections rather
        # than waiting for a connection to come free: admissions queue here for one of them,
        # inside the same timeout, so a burst of signed requests waits its turn instead of being
        # answered 503 while the server is healthy.
        self._slots = asyncio.Semaphore(_MAX_CONNECTIONS)
        self._script = self._client.register_script(_ADMIT_SCRIPT)
        self._marker_script = self._client.register_script(_MARKER_SCRIPT)
        # Why the server may evict nonces (None: it cannot), and when to look again.
        self._eviction: str | None = None
        self._eviction_due = -math.inf
        self._eviction_lock = asyncio.Lock()
        self._eviction_logged = False

    @property
    def description(self) -> str:
        """Server and key prefix, for logs and ``gateway check``."""
        scheme = "rediss" if self._settings.tls else "redis"
        return f"{scheme}://{self._settings.host}:{self._settings.port} prefix {self._prefix}"

    @property
    def problem(self) -> str | None:
        """See :attr:`ReplayStore.problem`."""
        if self._split is not None:
            return (
                f"another gateway of this Hybrid Connection keeps its nonces under key prefix "
                f"{self._split!r}, this one under {self._prefix!r}: each would accept a request "
                "the other already served; give every gateway of the Hybrid Connection the same "
                "signatures.replay_store.redis.key_prefix (or none)"
            )
        if self._eviction is not None:
            return (
                f"{self._eviction}; no nonce is admitted until the server cannot evict "
                "(maxmemory-policy noeviction, or maxmemory 0) and this user may run INFO"
            )
        return self._outage

    @property
    def prefix(self) -> str:
        """The key prefix of this Hybrid Connection."""
        return self._prefix

    async def _run(self, key: str, created: float, ttl_ms: int) -> int:
        keys = [self._prefix + "barrier", self._prefix + "n:" + key]
        args: list[str | int] = [repr(float(created)), ttl_ms, os.urandom(12).hex()]
        answer = await self._script(keys=keys, args=args)
        if answer == -1:
            # The store is empty or lost its memory: the first gateway to see it sets the
            # barrier (NX, so a concurrent one cannot move it), then the script runs again.
            barrier = self._clock() + self._max_skew
            await self._client.set(keys[0], repr(barrier), nx=True)
            answer = await self._script(keys=keys, args=args)
        return int(answer)

    async def admit(self, keyid: str, nonce: str, *, created: float, expires: float) -> Admission:
        """See :meth:`ReplayStore.admit`."""
        if self._closed:
            return Admission.CLOSED
        # At least 1 ms: PX 0 is an error, and a window that already ended still meets the
        # barrier check.
        ttl_ms = max(1, math.ceil((expires - self._clock()) * 1000))
        try:
            async with asyncio.timeout(self._settings.timeout_seconds), self._slots:
                if time.monotonic() >= self._eviction_due:
                    await self._check_eviction()
                if self._split is not None:
                    return self._splitting()
                if self._eviction is not None:
                    return self._evicting()
                answer = await self._run(nonce_key(keyid, nonce), created, ttl_ms)
        except (RedisError, OSError, TimeoutError, SecretError) as exc:
            # SecretError: redis-py reads the password (the credential provider) on every new
            # connection and passes its error through; a secret file a rotation left unreadable
            # or unsafe makes the store as unavailable as a server refusing the password.
            if self._outage is None:
                log.error(
                    "replay store %s unavailable (%s): refusing signed requests until it answers",
                    self.description,
                    type(exc).__name__,
                    extra={"event": "replay_store_unavailable"},
                )
            # redis-py's messages name the server and what failed, never the password.
            self._outage = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return Admission.UNAVAILABLE
        if self._outage is not None:
            self._outage = None
            log.warning(
                "replay store %s answers again",
                self.description,
                extra={"event": "replay_store_recovered"},
            )
        return {1: Admission.ACCEPTED, 0: Admission.REPLAY, 2: Admission.BEFORE_START}.get(
            answer, Admission.UNAVAILABLE
        )

    async def _check_eviction(self) -> None:
        """Read whether the server may evict keys (``INFO memory``), once per period.

        A nonce is a key with an expiry, which is exactly what ``volatile-*`` eviction policies
        remove first (``volatile-lru`` is a common managed-service default): under memory
        pressure the server would forget nonces silently, and a captured request would be
        accepted again. Only a server that cannot evict (``maxmemory`` 0, or the policy
        ``noeviction``) keeps every nonce for its window; any other, or one that will not say,
        gets no admission (fail closed).
        """
        async with self._eviction_lock:
            now = time.monotonic()
            if now < self._eviction_due:
                return  # another admission looked while this one waited
            try:
                memory = await self._client.info("memory")
                limit = int(memory.get("maxmemory", 0))
                policy = str(memory.get("maxmemory_policy", ""))
            except ResponseError:
                self._eviction = "it refuses INFO, so whether it evicts nonces is unknown"
            except (TypeError, ValueError):
                self._eviction = "its INFO answer does not say whether it evicts nonces"
            else:
                self._eviction = (
                    None
                    if limit == 0 or policy == "noeviction"
                    else f"maxmemory {limit} with maxmemory-policy {policy} evicts nonces"
                )
            await self._check_marker()
            self._eviction_due = now + _EVICTION_CHECK_SECONDS
            if self._eviction is None:
                self._eviction_logged = False
            if self._split is None:
                self._split_logged = False

    async def _check_marker(self) -> None:
        """Claim (or read) the Hybrid Connection's prefix marker.

        Every gateway of a Hybrid Connection must record nonces under one prefix: with two
        prefixes the nonce memory is split in two and a captured request is served once by each
        side within its window (docs/high-availability.md). A gateway whose prefix differs from
        the one the marker names admits nothing (fail closed) until the marker is its own. A
        server user whose key patterns exclude the marker cannot be checked; that is reported,
        not refused, since such a user cannot share a prefix by mistake with another one.
        """
        if self._marker is None:
            return
        args: list[str | int] = [self._prefix, _MARKER_TTL_MS, "1" if self._claim_marker else "0"]
        try:
            held = await self._marker_script(keys=[self._marker], args=args)
        except ResponseError as exc:
            if self.marker_unchecked is None:
                log.warning(
                    "replay store %s: cannot read the prefix marker %s (%s); gateways of this "
                    "Hybrid Connection with another key_prefix would go unnoticed",
                    self.description,
                    self._marker,
                    exc,
                    extra={"event": "replay_store_prefix_unchecked"},
                )
            self.marker_unchecked = str(exc)
            self._split = None
            return
        self.marker_unchecked = None
        text = held.decode("utf-8", "replace") if isinstance(held, bytes) else str(held)
        self._split = None if text == self._prefix else text

    def _splitting(self) -> Admission:
        if not self._split_logged:
            self._split_logged = True
            log.error(
                "replay store %s: %s; refusing signed requests",
                self.description,
                self.problem,
                extra={"event": "replay_store_prefix_conflict"},
            )
        return Admission.UNAVAILABLE

    def _evicting(self) -> Admission:
        if not self._eviction_logged:
            self._eviction_logged = True
            log.error(
                "replay store %s: %s; refusing signed requests until it is set to "
                "maxmemory-policy noeviction (or maxmemory 0)",
                self.description,
                self._eviction,
                extra={"event": "replay_store_evicts"},
            )
        return Admission.UNAVAILABLE

    async def initialise(self) -> None:
        """Write an empty barrier for a Hybrid Connection that has never accepted a request."""
        async with asyncio.timeout(self._settings.timeout_seconds), self._slots:
            await self._client.set(self._prefix + "barrier", repr(-1e300), nx=True)

    async def close(self) -> None:
        """Close the connections."""
        self._closed = True
        await self._client.aclose()
