"""Certificate renewal against the simulator with an injected clock (catalogue E 94, 96)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import ssl
from collections.abc import Callable

import pytest
from cryptography import x509

from gateway.devkit.controlplane import ControlPlaneSimulator
from gateway.identity import (
    CertificateRenewer,
    ControlPlaneClient,
    IdentityError,
    IdentityStore,
    RegistrationSettings,
    RenewalPolicy,
    load_identity,
    register,
)
from gateway.identity.certs import CertificateHealth, utcnow
from gateway.identity.store import cert_file_name, key_file_name

from .identity_support import PASSWORD, TEST_TIMEOUTS

Settings = Callable[..., RegistrationSettings]


class FakeTime:
    """A settable clock plus a sleep that advances it instead of waiting."""

    def __init__(self, start: dt.datetime) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[], None] = lambda: None

    def clock(self) -> dt.datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.on_sleep()
        self.sleeps.append(seconds)
        if len(self.sleeps) > 100:
            raise StopLoopError("the loop does not end")
        self.now += dt.timedelta(seconds=seconds)
        await asyncio.sleep(0)


class StopLoopError(Exception):
    """Ends a renewal loop from inside the fake sleep."""


def _at_fraction(start: dt.datetime, end: dt.datetime, fraction: float) -> dt.datetime:
    return start + (end - start) * fraction


def _due(cert: x509.Certificate) -> FakeTime:
    """A clock past two thirds of ``cert``'s lifetime: renewal is due."""
    return FakeTime(_at_fraction(cert.not_valid_before_utc, cert.not_valid_after_utc, 0.7))


async def _registered_store(make_settings: Settings) -> IdentityStore:
    settings = make_settings()
    await register(settings, username="alice", password=PASSWORD)
    return IdentityStore(settings.state_dir)


def _renewer(
    store: IdentityStore,
    simulator: ControlPlaneSimulator,
    time: FakeTime,
    **kwargs: object,
) -> CertificateRenewer:
    def factory(context: ssl.SSLContext) -> ControlPlaneClient:
        return ControlPlaneClient(
            simulator.base_url, context, client_certificate=True, timeouts=TEST_TIMEOUTS
        )

    return CertificateRenewer(
        store,
        passphrase=None,
        client_factory=factory,
        clock=time.clock,
        sleep=time.sleep,
        rng=random.Random(7),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_renewal_happens_at_two_thirds_and_is_proved_by_a_handshake(
    simulator: ControlPlaneSimulator, make_settings: Settings
) -> None:
    store = await _registered_store(make_settings)
    old = store.load().certificate
    start, end = old.not_valid_before_utc, old.not_valid_after_utc
    time = FakeTime(_at_fraction(start, end, 0.66))
    renewer = _renewer(store, simulator, time)
    assert await renewer.renew_if_due() is False
    assert all(r.path != "/api/gateway/v1/certificates" for r in simulator.requests)

    time.now = _at_fraction(start, end, 2 / 3) + dt.timedelta(seconds=1)
    assert await renewer.renew_if_due() is True
    new = renewer.identity.certificate
    assert new.serial_number != old.serial_number
    assert renewer.identity.record.generation == 2
    # The CSR went out over mTLS with the old certificate; then the new pair did a handshake.
    paths = [(r.path, r.client_serial) for r in simulator.requests]
    assert paths[-2:] == [
        ("/api/gateway/v1/certificates", old.serial_number),
        ("/api/gateway/v1/signing-keys", new.serial_number),
    ]
    loaded = load_identity(store.state_dir)
    assert loaded.certificate.serial_number == new.serial_number
    assert not (store.state_dir / key_file_name(1)).exists()
    assert not (store.state_dir / cert_file_name(1)).exists()
    assert os.stat(store.state_dir / key_file_name(2)).st_mode & 0o777 == 0o600


async def test_wrong_certificate_on_renewal_is_rejected(
    simulator: ControlPlaneSimulator, make_settings: Settings
) -> None:
    store = await _registered_store(make_settings)
    old = store.load().certificate
    time = _due(old)
    renewer = _renewer(store, simulator, time)
    simulator.faults.issue_wrong_key = True
    with pytest.raises(IdentityError) as info:
        await renewer.renew()
    assert info.value.code == "key_certificate_mismatch"
    assert "renewed certificate was rejected" in str(info.value)
    assert load_identity(store.state_dir).certificate.serial_number == old.serial_number
    assert not (store.state_dir / key_file_name(2)).exists()
    # No handshake was attempted with the rejected pair.
    assert simulator.requests[-1].path == "/api/gateway/v1/certificates"


async def test_endpoint_down_retries_with_jitter_keeps_old_cert_alerts_then_expires(
    simulator: ControlPlaneSimulator, make_settings: Settings
) -> None:
    store = await _registered_store(make_settings)
    old = store.load().certificate
    start, end = old.not_valid_before_utc, old.not_valid_after_utc
    time = FakeTime(_at_fraction(start, end, 0.5))
    alerts: list[CertificateHealth] = []
    serials_seen: list[int] = []

    def on_alert(health: CertificateHealth) -> None:
        alerts.append(health)

    policy = RenewalPolicy(retry_base=30.0, retry_cap=600.0, alert_fraction=0.9)
    renewer = _renewer(store, simulator, time, policy=policy, on_alert=on_alert)
    simulator.faults.renewal_unavailable = True
    time.on_sleep = lambda: serials_seen.append(renewer.identity.certificate.serial_number)
    with pytest.raises(IdentityError) as info:
        await asyncio.wait_for(renewer.run(), timeout=30)
    assert info.value.code == "client_certificate_expired"

    attempts = [r for r in simulator.requests if r.path == "/api/gateway/v1/certificates"]
    retry_sleeps = time.sleeps[1:]  # the first sleep waits for the renewal time
    assert len(attempts) >= 4
    assert time.sleeps[0] == pytest.approx((end - start).total_seconds() / 6, abs=1)
    # Exponential backoff with jitter: each delay within [ceiling/2, ceiling], not all equal.
    for attempt, delay in enumerate(retry_sleeps[:-1]):
        ceiling = min(600.0, 30.0 * 2**attempt)
        assert ceiling / 2 <= delay <= ceiling, (attempt, delay)
    assert len({round(d, 3) for d in retry_sleeps}) == len(retry_sleeps)
    # The old certificate stayed in use throughout; the alert fired past 90 % of the lifetime.
    assert set(serials_seen) == {old.serial_number}
    assert alerts
    assert all(a.state in ("alert", "expired") for a in alerts)
    assert (
        load_identity(store.state_dir, now=start + dt.timedelta(seconds=1)).record.generation == 1
    )


async def test_endpoint_recovers_and_the_loop_renews(
    simulator: ControlPlaneSimulator, make_settings: Settings
) -> None:
    store = await _registered_store(make_settings)
    old = store.load().certificate
    time = _due(old)
    renewer = _renewer(store, simulator, time)
    simulator.faults.renewal_unavailable = True

    def recover_after_two_failures() -> None:
        if len(time.sleeps) == 2:
            simulator.faults.renewal_unavailable = False
        if renewer.identity.record.generation == 2:
            raise StopLoopError

    time.on_sleep = recover_after_two_failures
    with pytest.raises(StopLoopError):
        await asyncio.wait_for(renewer.run(), timeout=30)
    posts = [r for r in simulator.requests if r.path == "/api/gateway/v1/certificates"]
    # Three 503s, then one success. The frozen clock makes the new certificate look due at
    # once; the loop must back off instead of renewing again in a tight loop.
    assert len(posts) == 4
    assert len(time.sleeps) == 3
    assert load_identity(store.state_dir).record.generation == 2


async def test_a_renewal_answer_that_is_not_ascii_pem_is_reported_not_raised(
    simulator: ControlPlaneSimulator, make_settings: Settings
) -> None:
    store = await _registered_store(make_settings)
    old = store.load().certificate
    time = _due(old)
    failures: list[IdentityError] = []
    renewer = _renewer(store, simulator, time, on_failure=failures.append)
    simulator.faults.garble_pem = True
    # JSON carries any character; a chain with one outside ASCII used to escape as
    # UnicodeEncodeError and end the renewal loop without a report.
    assert await renewer.attempt() is False
    assert [f.code for f in failures] == ["corrupt_file"]
    assert load_identity(store.state_dir).certificate.serial_number == old.serial_number
    assert not (store.state_dir / key_file_name(2)).exists()


async def test_registration_answer_that_is_not_ascii_pem_stores_nothing(
    simulator: ControlPlaneSimulator, make_settings: Settings
) -> None:
    simulator.faults.garble_pem = True
    settings = make_settings()
    with pytest.raises(IdentityError) as info:
        await register(settings, username="alice", password=PASSWORD)
    assert info.value.code == "corrupt_file"
    assert not IdentityStore(settings.state_dir).has_identity()


async def test_a_certificate_file_gone_under_the_renewer_is_reported_and_retried(
    simulator: ControlPlaneSimulator, make_settings: Settings
) -> None:
    store = await _registered_store(make_settings)
    old = store.load().certificate
    time = _due(old)
    failures: list[IdentityError] = []
    renewer = _renewer(store, simulator, time, on_failure=failures.append)
    cert_path = store.state_dir / cert_file_name(1)
    saved = cert_path.read_bytes()
    cert_path.unlink()
    # OpenSSL's FileNotFoundError used to escape, ending the loop with no alert.
    assert await renewer.attempt() is False
    assert [f.code for f in failures] == ["unreadable"]
    cert_path.write_bytes(saved)
    os.chmod(cert_path, 0o600)
    assert await renewer.attempt() is True
    assert renewer.identity.record.generation == 2


async def test_a_clock_behind_the_control_plane_is_named_not_called_expiry(
    simulator: ControlPlaneSimulator, make_settings: Settings
) -> None:
    store = await _registered_store(make_settings)
    old = store.load().certificate
    # The local clock runs ten minutes behind EmpowerID's, which backdates by one minute only:
    # every renewed certificate starts in the local future.
    time = FakeTime(utcnow() - dt.timedelta(minutes=10))
    failures: list[IdentityError] = []
    renewer = _renewer(store, simulator, time, on_failure=failures.append)
    assert await renewer.attempt() is False
    [failure] = failures
    assert failure.code == "certificate_not_yet_valid"
    assert "clock" in str(failure)
    assert load_identity(store.state_dir).certificate.serial_number == old.serial_number
    # Registration says the same, and stores nothing.
    settings = make_settings(state_dir=store.state_dir.parent / "other")
    with pytest.raises(IdentityError) as info:
        await register(settings, username="alice", password=PASSWORD, clock=time.clock)
    assert info.value.code == "certificate_not_yet_valid"
    assert not IdentityStore(settings.state_dir).has_identity()


async def test_a_renewer_behind_the_committed_identity_renews_from_it(
    simulator: ControlPlaneSimulator, make_settings: Settings
) -> None:
    store = await _registered_store(make_settings)
    old = store.load().certificate
    time = _due(old)
    first = _renewer(store, simulator, time)
    behind = _renewer(store, simulator, time)  # loaded at generation 1 as well
    await first.renew()
    committed = load_identity(store.state_dir)
    await behind.renew()
    # It renewed with the committed certificate, as generation 3. Before, it kept presenting the
    # replaced pair, whose files the other commit had deleted, and failed every attempt until a
    # restart (and would have numbered a new pair 2, over the committed files).
    post = [r for r in simulator.requests if r.path.endswith("/certificates")][-1]
    assert post.client_serial == committed.certificate.serial_number
    assert behind.identity.record.generation == 3
    assert load_identity(store.state_dir).record.generation == 3
