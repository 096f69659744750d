"""A gateway's hmac-sha256 keys over the real mTLS control plane, and at rest.

``GET request-secrets`` answers only over mTLS and only with the caller's own keys; a rotation
lists the outgoing key beside the new one until the overlap ends; the identity store keeps them
0600 and refuses a file others can read, as it does for the private key; no secret appears in a
model's ``repr`` or in an error.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import stat
from collections.abc import Callable

import pytest

from gateway.devkit.controlplane import ControlPlaneSimulator
from gateway.identity import (
    ControlPlaneClient,
    IdentityStore,
    RegistrationSettings,
    load_identity,
    mtls_client,
    register,
)
from gateway.identity.errors import ControlPlaneError, IdentityError
from gateway.identity.models import RequestSecret
from gateway.identity.store import REQUEST_SECRETS_FILE
from gateway.identity.tls import registration_context

from .identity_support import PASSWORD, TEST_TIMEOUTS


async def fetch(settings: RegistrationSettings) -> list[RequestSecret]:
    identity = load_identity(settings.state_dir)
    async with mtls_client(identity, timeouts=TEST_TIMEOUTS) as client:
        return await client.request_secrets()


async def test_each_gateway_gets_its_own_key_over_mtls_only(
    simulator: ControlPlaneSimulator, make_settings: Callable[..., RegistrationSettings]
) -> None:
    first = make_settings()
    await register(first, username="alice", password=PASSWORD)
    second = make_settings(gateway_id="gw-2", state_dir=first.state_dir.parent / "state-2")
    await register(second, username="alice", password=PASSWORD)
    [mine] = await fetch(first)
    [theirs] = await fetch(second)
    assert mine.key_bytes() == simulator.request_secret("gw-1").secret
    assert theirs.key_bytes() == simulator.request_secret("gw-2").secret
    assert mine.key_bytes() != theirs.key_bytes()
    assert mine.keyid != theirs.keyid
    # Without the gateway's certificate there is no key at all.
    plain = registration_context(simulator.ca.pem)
    async with ControlPlaneClient(
        simulator.base_url, plain, client_certificate=False, timeouts=TEST_TIMEOUTS
    ) as anonymous:
        with pytest.raises(ControlPlaneError) as caught:
            await anonymous.request_secrets()
    assert caught.value.code == "client_certificate_required"


async def test_a_rotation_lists_the_outgoing_key_until_its_overlap_ends(
    simulator: ControlPlaneSimulator, make_settings: Callable[..., RegistrationSettings]
) -> None:
    settings = make_settings()
    await register(settings, username="alice", password=PASSWORD)
    outgoing = simulator.request_secret("gw-1")
    incoming = simulator.rotate_request_secret("gw-1", overlap=dt.timedelta(minutes=10))
    listed = await fetch(settings)
    assert [key.keyid for key in listed] == [outgoing.keyid, incoming.keyid]
    assert listed[0].not_after <= dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)
    simulator.rotate_request_secret("gw-1", overlap=dt.timedelta(0))
    assert incoming.keyid not in [key.keyid for key in await fetch(settings)]


async def test_the_store_keeps_them_like_the_private_key(
    simulator: ControlPlaneSimulator, make_settings: Callable[..., RegistrationSettings]
) -> None:
    settings = make_settings()
    await register(settings, username="alice", password=PASSWORD)
    secrets = await fetch(settings)
    store = IdentityStore(settings.state_dir)
    assert store.read_request_secrets() == []
    store.write_request_secrets(secrets)
    path = settings.state_dir / REQUEST_SECRETS_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [s.key_bytes() for s in store.read_request_secrets()] == [s.key_bytes() for s in secrets]
    os.chmod(path, 0o640)
    with pytest.raises(IdentityError):
        store.read_request_secrets()
    assert store.remove_request_secrets()
    assert not path.exists()
    assert store.read_request_secrets() == []
    assert not store.remove_request_secrets()


async def test_a_damaged_file_is_refused_without_quoting_it(
    simulator: ControlPlaneSimulator, make_settings: Callable[..., RegistrationSettings]
) -> None:
    settings = make_settings()
    await register(settings, username="alice", password=PASSWORD)
    [secret] = await fetch(settings)
    store = IdentityStore(settings.state_dir)
    store.write_request_secrets([secret])
    path = settings.state_dir / REQUEST_SECRETS_FILE
    encoded = secret.secret.get_secret_value()
    path.write_text(path.read_text().replace('"hmac-sha256"', '"hmac-sha1"'))
    with pytest.raises(IdentityError) as caught:
        store.read_request_secrets()
    assert encoded not in str(caught.value)
    assert encoded not in repr(secret)
    assert base64.b64decode(encoded).hex() not in repr(secret)


async def test_a_new_registration_drops_the_keys_of_the_previous_one(
    simulator: ControlPlaneSimulator, make_settings: Callable[..., RegistrationSettings]
) -> None:
    settings = make_settings()
    await register(settings, username="alice", password=PASSWORD)
    store = IdentityStore(settings.state_dir)
    store.write_request_secrets(await fetch(settings))
    assert store.read_request_secrets()
    # A forced re-registration (after a host compromise, say) starts over. The agent falls back
    # to the stored keys whenever EmpowerID cannot hand out fresh ones, so keys of the previous
    # installation left here would go on verifying requests for up to their not_after.
    await register(make_settings(force=True), username="alice", password=PASSWORD)
    assert store.read_request_secrets() == []
    assert not (settings.state_dir / REQUEST_SECRETS_FILE).exists()
