"""``empowerid.ca_file`` is optional, as documented: without it the system trust store works.

``gateway register`` used to refuse to run without the file although the schema, the reference
and ``validate`` all called it optional. Now the registration call is verified by the system
trust store (OpenSSL's default locations; ``SSL_CERT_FILE`` stands in for the machine's store
here, pointing at the simulator's real TLS CA), and the CA the control plane returns is pinned
for every later connection. A server the system store does not trust still gets neither the
password nor the CSR.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import trustme

from gateway.cli import main
from gateway.devkit.controlplane import ControlPlaneSimulator
from gateway.identity import load_identity, mtls_client
from gateway.identity.store import IDENTITY_FILE
from tests.unit.policy.conftest import SHIPPED_POLICIES, config_text

from .identity_support import PASSWORD

pytestmark = pytest.mark.asyncio


def gateway_yaml(directory: Path, base_url: str) -> Path:
    """A gateway.yaml for gateway ``gw-1`` at ``base_url`` without ``empowerid.ca_file``."""
    text = config_text([SHIPPED_POLICIES])
    text = text.replace("https://tenant.empowerid.example", base_url)
    text = text.replace("  id: agent-1\n", "  id: gw-1\n  state_dir: state\n")
    assert "ca_file" not in text
    path = directory / "gateway.yaml"
    path.write_text(text, encoding="utf-8")
    return path


async def register(config: Path) -> int:
    return await asyncio.to_thread(main, ["register", "-c", str(config), "--person", "alice"])


async def test_register_without_ca_file_trusts_the_system_store_then_pins(
    simulator: ControlPlaneSimulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = gateway_yaml(tmp_path, simulator.base_url)
    assert await asyncio.to_thread(main, ["validate", "-c", str(config)]) == 0
    system_store = simulator.write_ca(tmp_path / "system-store.pem")
    monkeypatch.setenv("SSL_CERT_FILE", str(system_store))
    monkeypatch.setenv("GATEWAY_REGISTER_PASSWORD", PASSWORD)
    assert await register(config) == 0, capsys.readouterr().err
    identity = load_identity(tmp_path / "state")
    assert identity.ca_pem == simulator.ca.pem  # the returned CA, pinned from now on
    # Later calls are pinned to it and no longer read the system store.
    monkeypatch.delenv("SSL_CERT_FILE")
    async with mtls_client(identity) as client:
        info = await client.relay_info()
    assert info.relay.hybrid_connection == "hc-gw-1"


async def test_a_server_the_system_store_does_not_trust_gets_nothing(
    simulator: ControlPlaneSimulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = gateway_yaml(tmp_path, simulator.base_url)
    other = tmp_path / "other-store.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    monkeypatch.setenv("SSL_CERT_FILE", str(other))
    monkeypatch.setenv("GATEWAY_REGISTER_PASSWORD", PASSWORD)
    assert await register(config) == 1
    assert "tls_interception_or_untrusted_ca" in capsys.readouterr().err
    assert simulator.requests == []  # neither the password nor the CSR was sent
    assert not (tmp_path / "state" / IDENTITY_FILE).exists()
