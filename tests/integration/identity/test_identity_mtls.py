"""mTLS calls with a registered identity: relay info, heartbeats, signing keys (catalogue E 93)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.devkit.controlplane import ControlPlaneSimulator, DevCA
from gateway.hybridconnection.sas import validate_token
from gateway.identity import (
    ControlPlaneClient,
    ControlPlaneError,
    IdentityError,
    IdentityStore,
    RegistrationSettings,
    StoredIdentity,
    load_identity,
    mtls_client,
    refresh_signing_keys,
    register,
    status,
)
from gateway.identity.keys import build_csr, generate_private_key, serialize_private_key
from gateway.identity.models import Heartbeat
from gateway.identity.tls import mtls_context, registration_context
from gateway.service import signing_keyset

from .identity_support import PASSWORD, TEST_TIMEOUTS

Settings = Callable[..., RegistrationSettings]


@pytest.fixture
async def identity(make_settings: Settings) -> StoredIdentity:
    settings = make_settings()
    await register(settings, username="alice", password=PASSWORD)
    return load_identity(settings.state_dir)


async def test_relay_info_over_mtls(
    simulator: ControlPlaneSimulator, identity: StoredIdentity
) -> None:
    async with mtls_client(identity, timeouts=TEST_TIMEOUTS) as client:
        info = await client.relay_info()
    assert info.gateway_id == "gw-1"
    assert info.relay == identity.relay
    token = info.listener_token.token.get_secret_value()
    assert token not in repr(info)
    parsed = validate_token(
        token,
        keys={simulator.relay_key_name: simulator.relay_key},
        namespace_host=simulator.relay_namespace,
        entity_path=info.relay.hybrid_connection,
    )
    assert parsed.expiry == int(info.listener_token.expires_at.timestamp())
    request = simulator.requests[-1]
    assert request.path == "/api/gateway/v1/relay-info"
    assert request.client_gateway_id == "gw-1"
    assert request.client_serial == identity.certificate.serial_number


async def test_heartbeat_is_recorded(
    simulator: ControlPlaneSimulator, identity: StoredIdentity
) -> None:
    heartbeat = Heartbeat(
        status="online",
        version="1.2.3",
        config_hash="sha256:" + "ab" * 32,
        policy_revision="rev-42",
        listeners_online=2,
        counters={"requests_allowed": 10, "requests_denied": 3},
    )
    async with mtls_client(identity, timeouts=TEST_TIMEOUTS) as client:
        ack = await client.heartbeat(heartbeat)
    assert ack.interval_seconds == 60
    [recorded] = simulator.heartbeats
    assert recorded.gateway_id == "gw-1"
    # Fields without a value are left out rather than sent as null (the contract has no nulls).
    assert recorded.body == heartbeat.model_dump(mode="json", exclude_none=True)
    assert "audit_head" not in recorded.body


async def test_signing_keys_refresh_is_pinned(
    simulator: ControlPlaneSimulator, identity: StoredIdentity, make_settings: Settings
) -> None:
    state_dir = make_settings().state_dir
    store = IdentityStore(state_dir)
    store.write_signing_keys([])
    assert load_identity(state_dir).signing_keys == ()
    async with mtls_client(identity, timeouts=TEST_TIMEOUTS) as client:
        keys = await refresh_signing_keys(store, client)
    assert [key.keyid for key in keys] == [simulator.signing_key.keyid]
    assert load_identity(state_dir).signing_keys == tuple(keys)


async def test_a_rotation_to_an_rsa_pss_key_is_pinned_as_rsa_pss(
    simulator: ControlPlaneSimulator, identity: StoredIdentity, make_settings: Settings
) -> None:
    # EmpowerID moving its request-signing key into Azure Key Vault (RSA, PS512): the refreshed
    # set holds the RSA key, and the verifier's key set takes it as rsa-pss-sha512.
    old = simulator.signing_key.keyid
    simulator.signing_alg = "rsa-pss-sha512"
    new = simulator.rotate_signing_key()
    store = IdentityStore(make_settings().state_dir)
    async with mtls_client(identity, timeouts=TEST_TIMEOUTS) as client:
        keys = await refresh_signing_keys(store, client)
    assert [(key.keyid, key.alg) for key in keys] == [(new.keyid, "rsa-pss-sha512")]
    pinned = signing_keyset(load_identity(store.state_dir).signing_keys)
    assert list(pinned) == [new.keyid] != [old]
    assert pinned[new.keyid].alg == "rsa-pss-sha512"


async def test_a_further_rsa_pss_key_is_published_beside_the_current_one(
    simulator: ControlPlaneSimulator, identity: StoredIdentity, make_settings: Settings
) -> None:
    # Two keys at once (the Ed25519 key and an HSM-held RSA key), a key scoped to another
    # gateway left out: the gateway pins exactly what is published to it.
    further = simulator.add_signing_key("rsa-pss-sha512", gateway_ids=["gw-1"])
    simulator.add_signing_key("ecdsa-p256-sha256", gateway_ids=["gw-2"])
    store = IdentityStore(make_settings().state_dir)
    async with mtls_client(identity, timeouts=TEST_TIMEOUTS) as client:
        keys = await refresh_signing_keys(store, client)
    expected = [(simulator.signing_key.keyid, "ed25519"), (further.keyid, "rsa-pss-sha512")]
    assert [(key.keyid, key.alg) for key in keys] == expected
    pinned = signing_keyset(keys)
    assert [(keyid, pinned[keyid].alg) for keyid in pinned] == expected
    # A rotation replaces the current key and keeps the further one.
    simulator.rotate_signing_key()
    async with mtls_client(identity, timeouts=TEST_TIMEOUTS) as client:
        keys = await refresh_signing_keys(store, client)
    assert [key.keyid for key in keys] == [simulator.signing_key.keyid, further.keyid]


async def test_expired_client_certificate_is_not_attempted(
    simulator: ControlPlaneSimulator, identity: StoredIdentity, make_settings: Settings
) -> None:
    before = len(simulator.requests)
    later = identity.certificate.not_valid_after_utc + dt.timedelta(seconds=1)
    with pytest.raises(IdentityError) as loading:
        load_identity(make_settings().state_dir, now=later)
    assert loading.value.code == "client_certificate_expired"
    with pytest.raises(IdentityError) as connecting:
        mtls_client(identity, timeouts=TEST_TIMEOUTS, now=later)
    assert connecting.value.code == "client_certificate_expired"
    report = status(make_settings().state_dir, now=later)
    assert report["ready"] is False
    assert report["certificate"]["state"] == "expired"
    assert len(simulator.requests) == before


async def test_renewal_overdue_is_reported_by_status(
    identity: StoredIdentity, make_settings: Settings
) -> None:
    cert = identity.certificate
    late = cert.not_valid_before_utc + (cert.not_valid_after_utc - cert.not_valid_before_utc) * 0.95
    report = status(make_settings().state_dir, now=late)
    assert report["ready"] is True
    assert report["certificate"]["state"] == "alert"
    assert [p["code"] for p in report["problems"]] == ["certificate_renewal_overdue"]


async def test_server_side_rejection_is_client_certificate_rejected(
    simulator: ControlPlaneSimulator, tmp_path: Path
) -> None:
    # A certificate the simulator's CA did not issue: the server refuses the handshake.
    key = generate_private_key()
    now = dt.datetime.now(dt.UTC)
    cert = DevCA("Foreign CA").issue_client(
        x509.load_pem_x509_csr(build_csr(key, "gw-1")),
        not_before=now - dt.timedelta(minutes=1),
        not_after=now + dt.timedelta(hours=1),
    )
    (tmp_path / "foreign.crt").write_bytes(cert.public_bytes(Encoding.PEM))
    (tmp_path / "foreign.key").write_bytes(serialize_private_key(key, None))
    context = mtls_context(
        simulator.ca.pem, tmp_path / "foreign.crt", tmp_path / "foreign.key", None
    )
    client = ControlPlaneClient(
        simulator.base_url, context, client_certificate=True, timeouts=TEST_TIMEOUTS
    )
    async with client:
        with pytest.raises(ControlPlaneError) as info:
            await client.relay_info()
    assert info.value.code == "client_certificate_rejected"
    assert simulator.requests == []


async def test_mtls_endpoints_require_a_client_certificate(
    simulator: ControlPlaneSimulator,
) -> None:
    client = ControlPlaneClient(
        simulator.base_url,
        registration_context(simulator.ca.pem),
        client_certificate=False,
        timeouts=TEST_TIMEOUTS,
    )
    async with client:
        for call in (client.relay_info, client.signing_keys):
            with pytest.raises(ControlPlaneError) as info:
                await call()
            assert info.value.code == "client_certificate_required"
            assert info.value.status == 401
