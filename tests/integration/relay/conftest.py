"""Fixtures for the relay integration tests: squid proxies, a test CA and TLS WebSocket servers."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import trustme

from gateway.devkit.relay_emulator import RelayEmulator, SasRule

from ..squid import Squid, squid_for_fixture
from .listener_support import HC, KEY
from .relay_servers import (
    ConnectionRecorder,
    ScriptedRelay,
    WsServer,
    start_connection_recorder,
    start_scripted_relay,
    start_ws_server,
)


@pytest.fixture(scope="session")
def squid_proxy() -> Iterator[Squid]:
    """A squid without authentication, shared by the session."""
    yield from squid_for_fixture(with_auth=False)


@pytest.fixture(scope="session")
def squid_auth_proxy() -> Iterator[Squid]:
    """A squid that demands Basic credentials, shared by the session."""
    yield from squid_for_fixture(with_auth=True)


@pytest.fixture(scope="session")
def test_ca() -> trustme.CA:
    """A throw-away certificate authority for every TLS server in these tests."""
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(test_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test CA's certificate as a PEM file, as an operator would configure it."""
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    test_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="session")
def server_ssl_context(test_ca: trustme.CA) -> ssl.SSLContext:
    """Server context with a certificate for 127.0.0.1 and localhost signed by the test CA."""
    cert = test_ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


@pytest.fixture
async def tls_ws_server(server_ssl_context: ssl.SSLContext) -> AsyncIterator[WsServer]:
    """A TLS WebSocket echo server on 127.0.0.1 with a certificate from the test CA."""
    runner, server = await start_ws_server(server_ssl_context)
    try:
        yield server
    finally:
        await runner.cleanup()


@pytest.fixture
async def connection_recorder() -> AsyncIterator[ConnectionRecorder]:
    """Proves that nothing connects: ``connections`` stays empty unless something dialled it."""
    server, recorder = await start_connection_recorder()
    try:
        yield recorder
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def relay() -> AsyncIterator[RelayEmulator]:
    """The devkit relay emulator on 127.0.0.1 (plain ws://) with one Hybrid Connection."""
    async with RelayEmulator([HC], [SasRule("gateway", KEY)], seed=7) as emulator:
        yield emulator


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client playing the SaaS sender."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedRelay]:
    """A relay whose control messages the test writes by hand."""
    runner, relay = await start_scripted_relay()
    try:
        yield relay
    finally:
        await runner.cleanup()
