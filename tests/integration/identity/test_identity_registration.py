"""Registration against the simulator over real TLS on 127.0.0.1 (catalogue E 90, 91, 98, 101)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import ssl
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from gateway.devkit.controlplane import ControlPlaneSimulator, DevCA
from gateway.identity import (
    IdentityError,
    IdentityStore,
    RegistrationSettings,
    load_identity,
    register,
    status,
)
from gateway.identity.store import IDENTITY_FILE
from gateway.outbound.proxy import basic_credentials

from .identity_support import PASSWORD, TEST_TIMEOUTS

Settings = Callable[..., RegistrationSettings]


async def _register_error(
    settings: RegistrationSettings, *, username: str, password: str
) -> IdentityError:
    with pytest.raises(IdentityError) as info:
        await register(settings, username=username, password=password)
    return info.value


async def test_register_with_a_person_holding_the_operations(
    simulator: ControlPlaneSimulator, make_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = make_settings()
    outcome = await register(settings, username="alice", password=PASSWORD)

    assert outcome.gateway_id == "gw-1"
    assert outcome.relay.hybrid_connection == "hc-gw-1"
    assert outcome.signing_key_ids == (simulator.signing_key.keyid,)
    identity = load_identity(settings.state_dir)
    assert identity.certificate.serial_number == outcome.certificate_serial
    assert identity.ca_pem == simulator.ca.pem
    report = status(settings.state_dir)
    assert report["ready"] is True
    assert report["certificate"]["state"] == "valid"
    assert report["problems"] == []
    # The CSR was sent once, then the new pair proved itself over mTLS before it was committed;
    # the password was used once and is stored and logged nowhere.
    assert [(r.path, r.client_serial) for r in simulator.requests] == [
        ("/api/gateway/v1/registrations", None),
        ("/api/gateway/v1/signing-keys", outcome.certificate_serial),
    ]
    assert b"BEGIN CERTIFICATE REQUEST" in simulator.requests[0].body
    for name in os.listdir(settings.state_dir):
        assert PASSWORD.encode() not in (settings.state_dir / name).read_bytes()
    assert PASSWORD not in caplog.text
    assert PASSWORD not in repr(outcome)


async def test_person_without_the_operations_gets_missing_operation(
    simulator: ControlPlaneSimulator, make_settings: Settings
) -> None:
    settings = make_settings()
    for user, password, missing in (
        ("bob", "bobs-password", "Register Server, Update Heart Beat"),
        ("carol", "carols-password", "Update Heart Beat"),
    ):
        error = await _register_error(settings, username=user, password=password)
        assert error.code == "missing_operation"
        assert missing in str(error)
    assert not (settings.state_dir / IDENTITY_FILE).exists()


@pytest.mark.parametrize(("user", "password"), [("alice", "wrong"), ("mallory", PASSWORD)])
async def test_wrong_credentials(make_settings: Settings, user: str, password: str) -> None:
    error = await _register_error(make_settings(), username=user, password=password)
    assert error.code == "bad_credentials"
    assert password not in str(error)


async def test_a_registration_whose_server_ca_is_not_the_returned_one_stores_nothing(
    make_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # EmpowerID's TLS certificate from a public CA (here: the "system store"), gateway
    # certificates from a private one, no empowerid.ca_file. Every later connection is pinned to
    # the returned CA and would fail: registration must say so rather than report success.
    public = DevCA("Public web CA")
    async with ControlPlaneSimulator(server_ca=public) as split:
        split.add_person("alice", PASSWORD)
        system_store = tmp_path / "system-store.pem"
        system_store.write_bytes(public.pem)
        monkeypatch.setenv("SSL_CERT_FILE", str(system_store))
        settings = make_settings(base_url=split.base_url, ca_file=None)
        error = await _register_error(settings, username="alice", password=PASSWORD)
        assert error.code == "tls_interception_or_untrusted_ca"
        assert "nothing was stored" in str(error)
        assert not IdentityStore(settings.state_dir).has_identity()
        assert os.listdir(settings.state_dir) == []


async def test_credentials_the_control_plane_echoes_are_not_in_the_error(
    simulator: ControlPlaneSimulator, make_settings: Settings
) -> None:
    simulator.faults.echo_credentials = True
    error = await _register_error(make_settings(), username="alice", password=PASSWORD)
    assert error.code == "bad_credentials"
    assert "***" in str(error)
    assert PASSWORD not in str(error)
    assert basic_credentials("alice", PASSWORD).split()[1] not in str(error)


async def test_server_certificate_from_another_ca_aborts_before_the_csr_is_sent(
    simulator: ControlPlaneSimulator, make_settings: Settings, tmp_path: Path
) -> None:
    intercepting_ca = tmp_path / "other-ca.pem"
    intercepting_ca.write_bytes(DevCA("Inspecting proxy CA").pem)
    error = await _register_error(
        make_settings(ca_file=intercepting_ca), username="alice", password=PASSWORD
    )
    assert error.code == "tls_interception_or_untrusted_ca"
    assert simulator.requests == []
    # Control: the same simulator accepts the registration with the right pin.
    await register(make_settings(), username="alice", password=PASSWORD)
    assert simulator.requests[0].path == "/api/gateway/v1/registrations"


async def test_hostname_mismatch_aborts(make_settings: Settings, tmp_path: Path) -> None:
    async with ControlPlaneSimulator(server_names=("cp.other.example",)) as wrong_name:
        wrong_name.add_person("alice", PASSWORD)
        settings = make_settings(
            base_url=wrong_name.base_url, ca_file=wrong_name.write_ca(tmp_path / "wrong-ca.pem")
        )
        error = await _register_error(settings, username="alice", password=PASSWORD)
        assert error.code == "hostname_mismatch"
        assert wrong_name.requests == []


async def test_an_expired_server_certificate_aborts_and_is_called_expired(
    make_settings: Settings, tmp_path: Path
) -> None:
    async with ControlPlaneSimulator(server_cert_lifetime=-dt.timedelta(seconds=30)) as expired:
        expired.add_person("alice", PASSWORD)
        settings = make_settings(
            base_url=expired.base_url, ca_file=expired.write_ca(tmp_path / "expired-ca.pem")
        )
        error = await _register_error(settings, username="alice", password=PASSWORD)
        # Issued by the pinned CA: not interception, which would send the operator hunting
        # for a proxy.
        assert error.code == "server_certificate_expired"
        assert "proxy" not in str(error)
        assert expired.requests == []


def _legacy_context(*, server: bool) -> ssl.SSLContext:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    return context


@pytest.fixture
async def tls11_server(tmp_path: Path) -> AsyncIterator[tuple[str, DevCA, list[str]]]:
    """An HTTPS server that speaks only TLS 1.0/1.1, if the local OpenSSL can still build one."""
    ca = DevCA("Legacy CA")
    chain, key = ca.issue_server(["127.0.0.1"])
    (tmp_path / "legacy.crt").write_bytes(chain)
    (tmp_path / "legacy.key").write_bytes(key)
    try:
        context = _legacy_context(server=True)
        context.load_cert_chain(tmp_path / "legacy.crt", tmp_path / "legacy.key")
    except (ssl.SSLError, ValueError) as exc:
        pytest.skip(f"this OpenSSL cannot configure a TLS 1.1-only server: {exc}")
    seen: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        client = _legacy_context(server=False)
        client.load_verify_locations(cadata=ca.pem.decode())
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=client), timeout=5
            )
        except (ssl.SSLError, OSError) as exc:
            pytest.skip(f"this OpenSSL cannot negotiate TLS 1.1 even when allowed: {exc}")
        version = writer.get_extra_info("ssl_object").version()
        writer.close()
        if version not in ("TLSv1", "TLSv1.1"):
            pytest.skip(f"legacy server negotiated {version}")
        yield f"https://127.0.0.1:{port}/", ca, seen
    finally:
        await runner.cleanup()


async def test_tls11_only_server_is_refused(
    tls11_server: tuple[str, DevCA, list[str]], make_settings: Settings, tmp_path: Path
) -> None:
    """Refused by the TLS 1.2 floor and, independently, by the AEAD-only cipher list."""
    url, ca, seen = tls11_server
    (tmp_path / "legacy-ca.pem").write_bytes(ca.pem)
    settings = make_settings(base_url=url, ca_file=tmp_path / "legacy-ca.pem")
    error = await _register_error(settings, username="alice", password=PASSWORD)
    assert error.code == "tls_handshake_failed"
    assert seen == []


async def test_certificate_for_another_key_is_rejected_and_nothing_stored(
    simulator: ControlPlaneSimulator, make_settings: Settings
) -> None:
    simulator.faults.issue_wrong_key = True
    settings = make_settings()
    error = await _register_error(settings, username="alice", password=PASSWORD)
    assert error.code == "key_certificate_mismatch"
    assert os.listdir(settings.state_dir) == []


async def test_already_expired_certificate_is_rejected(
    simulator: ControlPlaneSimulator, make_settings: Settings
) -> None:
    simulator.faults.issue_expired = True
    error = await _register_error(make_settings(), username="alice", password=PASSWORD)
    assert error.code == "client_certificate_expired"


async def test_existing_identity_needs_force(
    simulator: ControlPlaneSimulator, make_settings: Settings
) -> None:
    first = await register(make_settings(), username="alice", password=PASSWORD)
    error = await _register_error(make_settings(), username="alice", password=PASSWORD)
    assert error.code == "already_registered"
    # The refused second registration sent nothing (the first: its call and its proof).
    assert len(simulator.requests) == 2
    second = await register(make_settings(force=True), username="alice", password=PASSWORD)
    assert second.certificate_serial != first.certificate_serial
    identity = load_identity(make_settings().state_dir)
    assert identity.certificate.serial_number == second.certificate_serial
    assert identity.record.generation == 2


async def test_encrypted_key_and_wrong_passphrase(
    make_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = make_settings()
    await register(settings, username="alice", password=PASSWORD, passphrase=b"s3cret-phrase")
    assert load_identity(settings.state_dir, passphrase=b"s3cret-phrase").gateway_id == "gw-1"
    with pytest.raises(IdentityError) as info:
        load_identity(settings.state_dir, passphrase=b"not-the-phrase")
    assert info.value.code == "wrong_passphrase"
    report = status(settings.state_dir, passphrase=b"not-the-phrase")
    assert report["ready"] is False
    assert report["problems"][0]["code"] == "wrong_passphrase"
    without = status(settings.state_dir)
    assert without["registered"] is True
    assert without["key_checked"] is False
    assert without["certificate"]["state"] == "valid"
    for text in (str(info.value), caplog.text, json.dumps(report), json.dumps(without)):
        assert "s3cret-phrase" not in text
        assert "not-the-phrase" not in text


async def test_plain_http_is_never_attempted(
    simulator: ControlPlaneSimulator, make_settings: Settings
) -> None:
    url = simulator.base_url.replace("https://", "http://")
    error = await _register_error(make_settings(base_url=url), username="alice", password=PASSWORD)
    assert error.code == "invalid_url"
    assert simulator.requests == []


async def test_unreachable_control_plane(make_settings: Settings) -> None:
    # A port that was just free: connection refused on loopback, reported plainly.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    settings = make_settings(base_url=f"https://127.0.0.1:{port}/", timeouts=TEST_TIMEOUTS)
    error = await _register_error(settings, username="alice", password=PASSWORD)
    assert error.code == "unreachable"
