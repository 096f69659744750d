"""Fixtures for the identity integration tests: the control-plane simulator and a real squid."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.devkit.controlplane import ControlPlaneSimulator
from gateway.identity import RegistrationSettings

from ..squid import Squid, squid_for_fixture
from .identity_support import PASSWORD, TEST_TIMEOUTS


@pytest.fixture(scope="session")
def squid_auth_proxy() -> Iterator[Squid]:
    """A squid on loopback that demands Basic credentials, shared by the session."""
    yield from squid_for_fixture(with_auth=True)


@pytest.fixture
async def simulator() -> AsyncIterator[ControlPlaneSimulator]:
    """The simulator with Person ``alice`` (both operations) and ``bob`` (none)."""
    async with ControlPlaneSimulator(cert_lifetime=dt.timedelta(hours=1)) as sim:
        sim.add_person("alice", PASSWORD)
        sim.add_person("bob", "bobs-password", operations=())
        sim.add_person("carol", "carols-password", operations=["Register Server"])
        yield sim


@pytest.fixture
def ca_file(tmp_path: Path, simulator: ControlPlaneSimulator) -> Path:
    """The simulator's CA, as the operator's pinned CA file."""
    return simulator.write_ca(tmp_path / "empowerid-ca.pem")


@pytest.fixture
def make_settings(
    tmp_path: Path, simulator: ControlPlaneSimulator, ca_file: Path
) -> Callable[..., RegistrationSettings]:
    """Registration settings against the simulator; keyword arguments override fields."""

    def make(**overrides: Any) -> RegistrationSettings:
        values: dict[str, Any] = {
            "base_url": simulator.base_url,
            "state_dir": tmp_path / "state",
            "gateway_id": "gw-1",
            "ca_file": ca_file,
            "timeouts": TEST_TIMEOUTS,
        }
        values.update(overrides)
        return RegistrationSettings(**values)

    return make
