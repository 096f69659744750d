"""How the gateway opens an LDAP stream's directory side, and the streams it refuses before
accepting them: it cannot serve the inner TLS, or it cannot reach the directory securely. The
SaaS then gets a failed handshake with the reason and the stream's decision record says why.

The whole agent runs in this process (as in test_end_to_end.py): registered with the control-plane
simulator, real Rego, the relay emulator, and slapd with TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from ldap3 import NONE, Connection, Server

from gateway.devkit.controlplane import DevCA
from gateway.devkit.slapd import BIND_IDENTITY, SERVICE_PASSWORD, SUFFIX, directory_target
from gateway.devkit.stack import DevStack
from gateway.service import Agent, AgentOptions

from .conftest import TlsDirectory

Prepare = Callable[[DevStack, Path], None]


@dataclass
class Running:
    stack: DevStack
    directory: Path
    agent: Agent


@pytest.fixture
def start(
    tmp_path: Path, tls_directory: TlsDirectory
) -> Callable[[Prepare | None, dict[str, Any] | None], Any]:
    """Start an agent whose ``directory`` target is the TLS slapd (``overrides`` merged into the
    target); ``prepare`` runs before registration (to set control-plane faults)."""

    @contextlib.asynccontextmanager
    async def run(
        prepare: Prepare | None, overrides: dict[str, Any] | None
    ) -> AsyncIterator[Running]:
        directory = tmp_path / "gw"
        directory.mkdir()
        (directory / "directory-ca.pem").write_bytes(tls_directory.ca_pem)
        password = directory / "directory-password"
        password.write_text(SERVICE_PASSWORD + "\n")
        password.chmod(0o600)
        async with DevStack("ldap-refusals") as stack:
            target = directory_target(
                tls_directory.slapd,
                ca_file="directory-ca.pem",
                password_file="directory-password",
            )
            target.update(overrides or {})
            document = stack.gateway_document({"directory": target})
            document["observability"] = {"enabled": False}
            config = stack.write_gateway_dir(directory, document=document)
            if prepare is not None:
                prepare(stack, directory)
            await stack.register_gateway(directory)
            agent = Agent(AgentOptions(config_path=str(config), shutdown_grace=1))
            await agent.start()
            try:
                async with asyncio.timeout(30):
                    await stack.relay.wait_for_listeners(stack.hc, 2)
                yield Running(stack, directory, agent)
            finally:
                await agent.stop()

    return run


async def _refused(running: Running) -> tuple[int, dict[str, Any]]:
    """Open a stream to the LDAP target; the handshake status and the stream's record."""
    async with running.stack.saas() as saas:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await saas.stream("directory")
    lines = (running.directory / "decisions.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    [stream] = [r for r in records if r.get("kind") == "stream"]
    return caught.value.status, stream


async def test_a_certificate_without_server_auth_refuses_ldap_streams(
    start: Callable[[Prepare | None, dict[str, Any] | None], Any], tls_directory: TlsDirectory
) -> None:
    def client_only(stack: DevStack, _: Path) -> None:
        stack.controlplane.faults.issue_client_usage_only = True

    before = len(tls_directory.slapd.operations())
    async with start(client_only, None) as running:
        status, record = await _refused(running)
    assert status == 503
    assert (record["result"], record["reasons"]) == ("failed", ["inner_tls_unavailable"])
    # Refused before the directory was dialled: slapd saw nothing at all.
    assert len(tls_directory.slapd.operations()) == before


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"tls": {"ca_file": "other-ca.pem", "server_name": "localhost"}}, "directory_tls_failed"),
        (
            {"tls": {"ca_file": "directory-ca.pem", "server_name": "dc1.corp.example"}},
            "directory_tls_failed",
        ),
    ],
    ids=["another-ca", "another-name"],
)
async def test_a_directory_that_fails_tls_refuses_the_stream(
    start: Callable[[Prepare | None, dict[str, Any] | None], Any],
    overrides: dict[str, Any],
    reason: str,
) -> None:
    def other_ca(_: DevStack, directory: Path) -> None:
        (directory / "other-ca.pem").write_bytes(DevCA("Another CA").pem)

    async with start(other_ca, overrides) as running:
        status, record = await _refused(running)
    assert status == 502
    assert (record["result"], record["reasons"]) == ("failed", [reason])


async def test_scheme_ldap_starts_tls_to_the_directory(
    start: Callable[[Prepare | None, dict[str, Any] | None], Any], tls_directory: TlsDirectory
) -> None:
    slapd = tls_directory.slapd
    before = len(slapd.operations())
    async with (
        start(None, {"scheme": "ldap", "port": slapd.ldap_port}) as running,
        running.stack.saas() as saas,
        saas.ldap_endpoint("directory") as port,
    ):

        def work() -> list[str]:
            server = Server("127.0.0.1", port=port, get_info=NONE)
            connection = Connection(
                server, BIND_IDENTITY, "placeholder", receive_timeout=30, auto_bind=True
            )
            connection.search(f"ou=People,{SUFFIX}", "(uid=user1)", attributes=["uid"])
            uids = [str(entry["attributes"]["uid"][0]) for entry in connection.response]
            connection.unbind()
            return uids

        assert await asyncio.to_thread(work) == ["user1"]
        counted = {
            (sample.labels["operation"], sample.labels["result"]): sample.value
            for metric in running.agent.metrics.ldap_operations.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        }
    # Each operation is counted before its answer leaves (the unbind has none to wait for).
    assert counted[("bind", "allowed")] == counted[("search", "allowed")] == 1
    received = slapd.operations()[before:]
    # The gateway's StartTLS came first on its connection, then the SaaS's operations.
    assert received[0].startswith("EXT oid=1.3.6.1.4.1.1466.20037")
    assert [line.split()[0] for line in received[1:3]] == ["BIND", "SRCH"]
