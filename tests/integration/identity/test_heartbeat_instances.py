"""The simulator keeps heartbeats per instance (gateway id, installation, worker index) and checks
the audit heads as EmpowerID must: within one instance a head only moves forward; heads of
different workers (different hash chains, ``NAME.w1``, ``NAME.w2``) or of different hosts
registered with the same gateway id are never compared with each other."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from cryptography import x509

from gateway.devkit.controlplane import ControlPlaneSimulator, Instance
from gateway.identity import (
    ControlPlaneClient,
    ControlPlaneError,
    RegistrationSettings,
    load_identity,
    mtls_client,
    register,
)
from gateway.identity.keys import build_csr, generate_private_key
from gateway.identity.models import AuditHead, Heartbeat, WorkerInstance

from .identity_support import PASSWORD, TEST_TIMEOUTS


@pytest.fixture
async def client(
    make_settings: Callable[..., RegistrationSettings],
) -> AsyncIterator[ControlPlaneClient]:
    settings = make_settings()
    await register(settings, username="alice", password=PASSWORD)
    async with mtls_client(load_identity(settings.state_dir), timeouts=TEST_TIMEOUTS) as client:
        yield client


def beat(
    worker: int | None, seq: int | None = None, digest: str = "a", count: int = 2
) -> Heartbeat:
    head = None
    if seq is not None:
        head = AuditHead(
            seq=seq,
            hash=digest * 64,
            time="2026-12-07T12:00:00.000000Z",
            alg="ecdsa-sha256",
            key_id="0123456789abcdef",
            signature="MEUCIQ==",
        )
    return Heartbeat(
        status="online",
        version="1",
        config_hash="sha256:" + "0" * 64,
        policy_revision="r1",
        listeners_online=2,
        counters={"requests_allowed": seq or 0},
        audit_head=head,
        worker=WorkerInstance(index=worker, count=count) if worker is not None else None,
    )


async def test_workers_are_kept_apart_and_their_heads_are_not_compared(
    simulator: ControlPlaneSimulator, client: ControlPlaneClient
) -> None:
    # Worker 1 is far ahead of worker 2 and of the one-process chain: no chain was cut.
    for heartbeat in (beat(1, 90), beat(2, 40), beat(1, 95, "b"), beat(None, 7), beat(2, 41, "c")):
        await client.heartbeat(heartbeat)
    assert simulator.audit_alarms == []
    assert simulator.audit_heads == {
        Instance("gw-1", 1, 1): (95, "b" * 64),
        Instance("gw-1", 1, 2): (41, "c" * 64),
        Instance("gw-1", 1, None): (7, "a" * 64),
    }
    assert {
        key: b.body["counters"]["requests_allowed"] for key, b in simulator.instances.items()
    } == {
        Instance("gw-1", 1, 1): 95,
        Instance("gw-1", 1, 2): 41,
        Instance("gw-1", 1, None): 7,
    }
    # The chain is named by the index alone (NAME.w2), so it goes on when the count changes.
    await client.heartbeat(beat(2, 60, "d", count=4))
    assert simulator.audit_alarms == []
    assert simulator.audit_heads[Instance("gw-1", 1, 2)] == (60, "d" * 64)


async def test_a_head_that_does_not_move_forward_in_its_own_chain_is_an_alarm(
    simulator: ControlPlaneSimulator, client: ControlPlaneClient, caplog: pytest.LogCaptureFixture
) -> None:
    await client.heartbeat(beat(1, 90, "a"))
    await client.heartbeat(beat(2, 40, "a"))
    await client.heartbeat(beat(1, 90, "a"))  # no record since: the same head again
    assert simulator.audit_alarms == []
    await client.heartbeat(beat(1, 80, "a"))  # worker 1's log was cut back
    await client.heartbeat(beat(2, 40, "e"))  # worker 2's log was rewritten
    await client.heartbeat(beat(1, 85, "a"))  # still behind the newest head seen
    alarms = [
        (a.instance.worker, a.kind, a.newest[0], a.reported[0]) for a in simulator.audit_alarms
    ]
    assert alarms == [(1, "behind", 90, 80), (2, "forked", 40, 40), (1, "behind", 90, 85)]
    assert "gw-1 installation 1 worker 1: audit head 80:" in str(simulator.audit_alarms[0])
    logged = [r.getMessage() for r in caplog.records if "audit head alarm" in r.getMessage()]
    assert logged == [f"audit head alarm: {alarm}" for alarm in simulator.audit_alarms]
    # The newest head stays the reference: a cut log cannot make itself look whole again.
    assert simulator.audit_heads[Instance("gw-1", 1, 1)] == (90, "a" * 64)


async def test_hosts_sharing_a_gateway_id_are_apart_and_a_renewal_continues_its_host(
    simulator: ControlPlaneSimulator,
    client: ControlPlaneClient,
    make_settings: Callable[..., RegistrationSettings],
    tmp_path: Path,
) -> None:
    # A second host registers the same gateway id (docs/high-availability.md): its worker 1
    # writes another chain than the first host's worker 1.
    second = make_settings(state_dir=tmp_path / "second")
    await register(second, username="alice", password=PASSWORD)
    await client.heartbeat(beat(1, 90))
    async with mtls_client(load_identity(second.state_dir), timeouts=TEST_TIMEOUTS) as other:
        await other.heartbeat(beat(1, 12))
        # A renewed certificate (a new key) still speaks for the second host.
        chain = await other.renew_certificate(build_csr(generate_private_key(), "gw-1"))
    renewed = x509.load_pem_x509_certificate(chain.certificate_chain.encode())
    assert simulator.installations[renewed.serial_number] == 2
    assert simulator.audit_alarms == []
    assert simulator.audit_heads == {
        Instance("gw-1", 1, 1): (90, "a" * 64),
        Instance("gw-1", 2, 1): (12, "a" * 64),
    }


async def test_a_control_plane_on_contract_1_0_refuses_only_the_worker_member(
    simulator: ControlPlaneSimulator, client: ControlPlaneClient
) -> None:
    simulator.faults.heartbeat_contract_1_0 = True
    await client.heartbeat(beat(None, 3))  # a one-process gateway is what 1.0.0 describes
    with pytest.raises(ControlPlaneError) as refused:
        await client.heartbeat(beat(1, 4))
    assert refused.value.status == 400
    assert refused.value.code == "invalid_request"
    assert "unknown: worker" in str(refused.value)
    assert [b.worker for b in simulator.heartbeats] == [None]
