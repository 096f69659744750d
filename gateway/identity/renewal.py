"""Client certificate renewal at two thirds of the lifetime (security catalogue items 93-96).

One renewal:

1. generate a new key and CSR; ``POST certificates`` over mTLS with the *current* pair;
2. validate the answer exactly like a registration (key, subject, clientAuth, validity, chain to
   the pinned CA). A wrong certificate is rejected here and nothing is written;
3. write the new pair as an uncommitted generation (atomic per file);
4. prove it: a full mTLS handshake and request with the new pair (it fetches the signing keys,
   which are pinned again on the way);
5. commit (``identity.json`` now names the new generation) and delete the old pair.

Until step 5 the old pair stays current. If any step fails the new pair is discarded.

The loop (:meth:`CertificateRenewer.run`) sleeps until the renewal time, then retries failures
with exponential backoff and jitter (so a fleet does not stampede a recovering endpoint), keeps
using the old certificate meanwhile, raises an alert once ``alert_fraction`` of the lifetime has
passed, and stops with ``client_certificate_expired`` when the certificate runs out.

Every failed attempt is reported, not only logged: ``on_failure`` gets the error (the agent turns
it into an alert, a metric and a degraded ``/readyz`` detail), because a control plane that hands
out a certificate for the wrong key, subject or usage is either broken or hostile, and an
unattended gateway would otherwise run quietly into its expiry.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.identity.certs import (
    DEFAULT_ALERT_FRACTION,
    CertificateHealth,
    Clock,
    answer_pem,
    certificate_health,
    parse_certificate_chain,
    utcnow,
    validate_client_certificate,
)
from gateway.identity.controlplane import ControlPlaneClient
from gateway.identity.errors import IdentityError
from gateway.identity.keys import (
    DEFAULT_KEY_ALGORITHM,
    KeyAlgorithm,
    build_csr,
    generate_private_key,
)
from gateway.identity.store import IdentityRecord, IdentityStore, StoredIdentity
from gateway.identity.tls import mtls_context

log = logging.getLogger(__name__)

ClientFactory = Callable[[ssl.SSLContext], ControlPlaneClient]
Sleep = Callable[[float], Awaitable[None]]
AlertHook = Callable[[CertificateHealth], None]
FailureHook = Callable[[IdentityError], None]
RenewedHook = Callable[[StoredIdentity], None]

# Sleep in slices so a wall-clock jump (suspend, NTP step) is noticed within the hour.
MAX_SLEEP_SECONDS = 3600.0
MIN_RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class RenewalPolicy:
    """Backoff and alerting parameters of the renewal loop."""

    retry_base: float = 30.0
    retry_cap: float = 3600.0
    alert_fraction: float = DEFAULT_ALERT_FRACTION
    key_algorithm: KeyAlgorithm = DEFAULT_KEY_ALGORITHM


class CertificateRenewer:
    """Renews the gateway's client certificate; run :meth:`run` as an owned background task.

    ``client_factory`` turns an mTLS context into a :class:`ControlPlaneClient` (the caller adds
    base URL, timeouts and proxy); ``clock``, ``sleep`` and ``rng`` are injectable for tests.
    """

    def __init__(
        self,
        store: IdentityStore,
        *,
        passphrase: bytes | None,
        client_factory: ClientFactory,
        policy: RenewalPolicy | None = None,
        clock: Clock = utcnow,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        on_alert: AlertHook | None = None,
        on_failure: FailureHook | None = None,
        on_renewed: RenewedHook | None = None,
    ) -> None:
        self._store = store
        self._passphrase = passphrase
        self._client_factory = client_factory
        self._policy = policy or RenewalPolicy()
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.SystemRandom()
        self._on_alert = on_alert
        self._on_failure = on_failure
        self._on_renewed = on_renewed
        self._lock = asyncio.Lock()
        self._identity = store.load()

    @property
    def identity(self) -> StoredIdentity:
        """The current identity (the new one as soon as a renewal has committed)."""
        return self._identity

    def health(self) -> CertificateHealth:
        """The current certificate's state at the injected clock's ``now``."""
        return certificate_health(
            self._identity.certificate, self._clock(), alert_fraction=self._policy.alert_fraction
        )

    async def renew_if_due(self) -> bool:
        """Renew if two thirds of the lifetime have passed; returns True if it renewed."""
        if self.health().state not in ("renewal_due", "alert"):
            return False
        await self.renew()
        return True

    async def renew(self) -> StoredIdentity:
        """Renew now (steps 1-5 of the module docstring); returns the new identity."""
        async with self._lock:
            if self._store.read_record().generation != self._identity.record.generation:
                # Another writer committed since this identity was loaded: renew from what is
                # on disk. Numbering the new pair after a stale generation would write it over
                # the committed files.
                self._identity = self._store.load()
            current = self._identity
            old_context = mtls_context(
                current.ca_pem, current.cert_path, current.key_path, self._passphrase
            )
            private_key = generate_private_key(self._policy.key_algorithm)
            csr_pem = build_csr(private_key, current.gateway_id)
            async with self._client_factory(old_context) as client:
                answer = await client.renew_certificate(csr_pem)
            chain = parse_certificate_chain(
                answer_pem(answer.certificate_chain, source="the renewal answer"),
                source="the renewal answer",
            )
            try:
                validate_client_certificate(
                    chain,
                    private_key=private_key,
                    ca=current.ca_certificate,
                    gateway_id=current.gateway_id,
                    now=self._clock(),
                )
            except IdentityError as exc:
                raise IdentityError(
                    exc.code, f"the renewed certificate was rejected: {exc.args[0]}"
                ) from None
            generation = current.record.generation + 1
            key_path, cert_path = self._store.write_key_pair(generation, private_key, chain)
            try:
                new_context = mtls_context(current.ca_pem, cert_path, key_path, self._passphrase)
                async with self._client_factory(new_context) as client:
                    signing_keys = await client.signing_keys()
            except IdentityError:
                self._store.discard_key_pair(generation)
                raise
            self._store.write_signing_keys(signing_keys)
            record = current.record
            self._store.commit(
                IdentityRecord(
                    record.gateway_id, record.control_plane_url, generation, record.registered_at
                )
            )
            self._identity = self._store.load()
            log.info(
                "client certificate renewed",
                extra={
                    "event": "certificate_renewed",
                    "gateway_id": record.gateway_id,
                    "generation": generation,
                    "not_after": chain[0].not_valid_after_utc.isoformat(),
                },
            )
            if self._on_renewed is not None:
                self._on_renewed(self._identity)
            return self._identity

    async def attempt(self) -> bool:
        """Renew now; on failure report it (log event and ``on_failure``) and return False.

        The current certificate stays in use after a failure.
        """
        failure = await self._try()
        if failure is not None:
            self._report(failure, attempt=1, retry_in=None)
        return failure is None

    async def _try(self) -> IdentityError | None:
        try:
            await self.renew()
        except IdentityError as exc:
            return exc
        return None

    def _report(self, exc: IdentityError, *, attempt: int, retry_in: float | None) -> None:
        log.warning(
            "client certificate renewal failed; the current certificate stays in use: %s",
            exc,
            extra={
                "event": "certificate_renewal_failed",
                "code": exc.code,
                "attempt": attempt,
                "retry_in": None if retry_in is None else round(retry_in, 1),
            },
        )
        if self._on_failure is not None:
            self._on_failure(exc)

    def _retry_delay(self, attempt: int, seconds_left: float) -> float:
        ceiling = min(self._policy.retry_cap, self._policy.retry_base * 2 ** min(attempt, 30))
        # Jitter in [ceiling/2, ceiling]: spread across a fleet, yet never a tight loop.
        delay = self._rng.uniform(ceiling / 2, ceiling)
        return max(MIN_RETRY_SECONDS, min(delay, seconds_left))

    def _alert(self, health: CertificateHealth) -> None:
        log.error(
            "client certificate renewal overdue",
            extra={
                "event": "certificate_renewal_overdue",
                "not_after": health.not_after.isoformat(),
                "seconds_left": health.seconds_left,
            },
        )
        if self._on_alert is not None:
            self._on_alert(health)

    async def run(self) -> None:
        """Renew whenever due, forever; raises ``client_certificate_expired`` when out of time."""
        attempt = 0
        while True:
            health = self.health()
            if health.state == "expired":
                self._alert(health)
                raise IdentityError(
                    "client_certificate_expired",
                    f"the client certificate expired at {health.not_after.isoformat()} "
                    "without a successful renewal; register the gateway again",
                )
            if health.state in ("valid", "not_yet_valid"):
                attempt = 0
                wait = (health.renew_at - self._clock()).total_seconds()
                await self._sleep(min(max(wait, MIN_RETRY_SECONDS), MAX_SLEEP_SECONDS))
                continue
            if health.state == "alert":
                self._alert(health)
            failure = await self._try()
            if failure is not None:
                delay = self._retry_delay(attempt, health.seconds_left)
                attempt += 1
                self._report(failure, attempt=attempt, retry_in=delay)
                await self._sleep(delay)
                continue
            renewed = self.health()
            if renewed.state in ("renewal_due", "alert"):
                # A fresh certificate that is already due means the local clock is far ahead or
                # the lifetime is tiny; renewing again at once would hammer the control plane.
                delay = self._retry_delay(attempt, renewed.seconds_left)
                attempt += 1
                log.warning(
                    "the renewed certificate is already due for renewal; check the clock",
                    extra={
                        "event": "certificate_renewed_already_due",
                        "not_before": renewed.not_before.isoformat(),
                        "retry_in": delay,
                    },
                )
                await self._sleep(delay)
            else:
                attempt = 0
