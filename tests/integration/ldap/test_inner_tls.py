"""The inner TLS of LDAP streams: real TLS over messages, the gateway's registered identity.

The gateway serves with the identity certificate the control-plane simulator issued at a real
registration; the SaaS side trusts only the EmpowerID CA and pins the gateway id (SAN URI). The
messages between them travel through a pair of queues that record every byte, as the relay
would see them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.devkit.controlplane import ControlPlaneSimulator, DevCA
from gateway.identity import RegistrationSettings, StoredIdentity, Timeouts, load_identity, register
from gateway.ldap.innertls import (
    InnerTlsError,
    TlsOverMessages,
    check_gateway_certificate,
    client_context,
    identity_context,
    server_context,
)

PASSWORD = "Pa55-w0rd-for-alice"
MAX_MESSAGE = 1 << 20


class Pipe:
    """One direction of a stream: messages in order, ``None`` once closed; records everything."""

    def __init__(self, seen: list[bytes]) -> None:
        self._queue: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self._seen = seen

    async def put(self, data: str | bytes | None) -> None:
        if isinstance(data, bytes):
            self._seen.append(data)
        await self._queue.put(data)

    async def get(self) -> str | bytes | None:
        return await self._queue.get()


class End:
    """One end of a stream (a ``MessageChannel``)."""

    def __init__(self, inbound: Pipe, outbound: Pipe) -> None:
        self._inbound = inbound
        self._outbound = outbound

    async def receive(self) -> str | bytes | None:
        return await self._inbound.get()

    async def send(self, data: str | bytes) -> None:
        await self._outbound.put(data)

    async def drop(self) -> None:
        """End the stream without a TLS close_notify."""
        await self._outbound.put(None)


def stream() -> tuple[End, End, list[bytes]]:
    """(gateway end, SaaS end, every message either sent)."""
    seen: list[bytes] = []
    up, down = Pipe(seen), Pipe(seen)
    return End(up, down), End(down, up), seen


async def _identity(tmp_path: Path, sim: ControlPlaneSimulator) -> StoredIdentity:
    await register(
        RegistrationSettings(
            base_url=sim.base_url,
            state_dir=tmp_path / "state",
            gateway_id="gw-1",
            ca_file=sim.write_ca(tmp_path / "ca.pem"),
            timeouts=Timeouts(connect=5.0, read=5.0, total=10.0),
        ),
        username="alice",
        password=PASSWORD,
    )
    return load_identity(tmp_path / "state")


@pytest.fixture
async def simulator() -> AsyncIterator[ControlPlaneSimulator]:
    async with ControlPlaneSimulator(cert_lifetime=dt.timedelta(hours=1)) as sim:
        sim.add_person("alice", PASSWORD)
        yield sim


async def _connected(
    identity: StoredIdentity, simulator: ControlPlaneSimulator
) -> tuple[TlsOverMessages, TlsOverMessages, End, list[bytes]]:
    """The gateway and SaaS ends of a stream once their handshake is done, the SaaS's raw end
    and the wire."""
    gateway_end, saas_end, seen = stream()
    gateway = TlsOverMessages(
        gateway_end, identity_context(identity, None), server_side=True, max_message=MAX_MESSAGE
    )
    saas = TlsOverMessages(
        saas_end, client_context(simulator.ca.pem), server_side=False, max_message=MAX_MESSAGE
    )
    await asyncio.gather(gateway.handshake(), saas.handshake())
    return gateway, saas, saas_end, seen


async def test_plaintext_crosses_only_encrypted(
    tmp_path: Path, simulator: ControlPlaneSimulator
) -> None:
    identity = await _identity(tmp_path, simulator)
    gateway, saas, _, seen = await _connected(identity, simulator)
    check_gateway_certificate(saas.peer_certificate, "gw-1")
    secret = b"cn=admin,dc=example,dc=com directory-password " * 3000  # several records
    await saas.send(secret)
    received = b""
    while len(received) < len(secret):
        chunk = await gateway.receive()
        assert chunk is not None
        received += chunk
    assert received == secret
    await gateway.send(b"answer: ms-Mcs-AdmPwd laps-secret")
    assert await saas.receive() == b"answer: ms-Mcs-AdmPwd laps-secret"
    await saas.close()
    assert await gateway.receive() is None  # close_notify: a clean end
    wire = b"".join(seen)
    for plaintext in (b"directory-password", b"cn=admin", b"laps-secret", b"AdmPwd"):
        assert plaintext not in wire


async def test_the_saas_refuses_another_gateway(
    tmp_path: Path, simulator: ControlPlaneSimulator
) -> None:
    identity = await _identity(tmp_path, simulator)
    _, saas, _, _ = await _connected(identity, simulator)
    with pytest.raises(InnerTlsError) as caught:
        check_gateway_certificate(saas.peer_certificate, "gw-2")
    assert caught.value.code == "inner_tls_wrong_gateway"


async def test_the_saas_refuses_a_certificate_of_another_ca(
    tmp_path: Path, simulator: ControlPlaneSimulator
) -> None:
    chain, key = DevCA("Impostor CA").issue_server(["gw-1"])
    (tmp_path / "cert.pem").write_bytes(chain)
    (tmp_path / "key.pem").write_bytes(key)
    gateway_end, saas_end, _ = stream()
    gateway = TlsOverMessages(
        gateway_end,
        server_context(tmp_path / "cert.pem", tmp_path / "key.pem", None),
        server_side=True,
        max_message=MAX_MESSAGE,
    )
    saas = TlsOverMessages(
        saas_end, client_context(simulator.ca.pem), server_side=False, max_message=MAX_MESSAGE
    )
    results = await asyncio.gather(
        gateway.handshake(within=5), saas.handshake(within=5), return_exceptions=True
    )
    assert isinstance(results[1], InnerTlsError)
    assert results[1].code == "inner_tls_handshake_failed"
    assert "CERTIFICATE_VERIFY_FAILED" in str(results[1])


async def test_a_client_only_certificate_cannot_serve(
    tmp_path: Path, simulator: ControlPlaneSimulator
) -> None:
    simulator.faults.issue_client_usage_only = True
    identity = await _identity(tmp_path, simulator)
    with pytest.raises(InnerTlsError) as caught:
        identity_context(identity, None)
    assert caught.value.code == "inner_tls_unavailable"


async def test_text_and_oversized_messages_end_the_stream(
    tmp_path: Path, simulator: ControlPlaneSimulator
) -> None:
    identity = await _identity(tmp_path, simulator)
    for message, code in (("hello", "inner_tls_text_message"), (b"x" * 100, "message_too_large")):
        gateway_end, saas_end, _ = stream()
        gateway = TlsOverMessages(
            gateway_end, identity_context(identity, None), server_side=True, max_message=64
        )
        await saas_end.send(message)
        with pytest.raises(InnerTlsError) as caught:
            await gateway.handshake(within=5)
        assert caught.value.code == code


async def test_a_stream_cut_without_close_notify_is_an_error(
    tmp_path: Path, simulator: ControlPlaneSimulator
) -> None:
    identity = await _identity(tmp_path, simulator)
    gateway, saas, saas_end, _ = await _connected(identity, simulator)
    await saas.send(b"partial")
    assert await gateway.receive() == b"partial"
    await saas_end.drop()  # the relay drops the stream
    with pytest.raises(InnerTlsError):
        await gateway.receive()


class Stalling(End):
    """An end whose peer stops reading once ``stalled`` is set: sending then never completes."""

    stalled = False

    async def send(self, data: str | bytes) -> None:
        if self.stalled:
            await asyncio.Event().wait()
        await super().send(data)


async def test_closing_towards_a_peer_that_stopped_reading_gives_up(
    tmp_path: Path, simulator: ControlPlaneSimulator
) -> None:
    identity = await _identity(tmp_path, simulator)
    seen: list[bytes] = []
    up, down = Pipe(seen), Pipe(seen)
    gateway_end = Stalling(up, down)
    gateway = TlsOverMessages(
        gateway_end, identity_context(identity, None), server_side=True, max_message=MAX_MESSAGE
    )
    saas = TlsOverMessages(
        End(down, up), client_context(simulator.ca.pem), server_side=False, max_message=MAX_MESSAGE
    )
    await asyncio.gather(gateway.handshake(), saas.handshake())
    gateway_end.stalled = True
    # The close_notify cannot leave; close gives up instead of holding the stream.
    async with asyncio.timeout(30):  # guards against a hang; no duration is asserted
        await gateway.close(within=0.05)
