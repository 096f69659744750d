"""The dial step is the only way to a socket (gateway.forward.dial.DialStep).

A real loopback listener counts the connections it accepts: a client built on the dial step's
connector must not reach it by any URL the dial step did not resolve itself, IP literals included
(an HTTP client connects to those without asking its resolver), and what the dial step does
resolve is checked against the target's CIDRs each time a connection is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Sequence

import aiohttp
import pytest

from gateway.config.model import GatewayConfig
from gateway.forward.dial import ConnectRefusedError, DialError, DialStep, IPAddress

pytestmark = pytest.mark.asyncio


class Listener:
    """A loopback TCP listener that answers every request with 204 and counts connections."""

    def __init__(self) -> None:
        self.accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    server = Listener()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def bystander() -> AsyncIterator[Listener]:
    server = Listener()
    await server.start()
    yield server
    await server.stop()


def _config(host: str, cidrs: list[str]) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "version": 1,
            "gateway": {"id": "agent-1"},
            "empowerid": {"url": "https://tenant.example"},
            "targets": {
                "erp": {
                    "scheme": "http",
                    "host": host,
                    "port": 8080,
                    "allowed_cidrs": cidrs,
                    "operations": [{"name": "all", "methods": ["GET"], "paths": ["/**"]}],
                }
            },
        }
    )


async def _answers(table: dict[str, list[str]], host: str, port: int) -> Sequence[IPAddress]:
    if host not in table:
        raise OSError(f"{host} does not resolve")
    return [ipaddress.ip_address(a) for a in table[host]]


@contextlib.asynccontextmanager
async def _erp_session(
    listener: Listener, table: dict[str, list[str]]
) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """A client on the dial step's connector for target ``erp`` (redirected to ``listener``),
    and the URL that names ``erp`` through the dial step."""
    dial = DialStep(
        _config("erp.corp.local", ["10.1.2.0/24"]).targets,
        resolver=lambda host, port: _answers(table, host, port),
        redirect=lambda address, port: ("127.0.0.1", listener.port),
    )
    connector = dial.connector(limit=4, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session, f"http://{dial.dial_host('erp')}:8080/x"


async def _refused(session: aiohttp.ClientSession, url: str) -> bool:
    """Whether the dial step refused ``url`` (at its resolver or at its socket factory)."""
    try:
        await session.get(url)
    except DialError:
        return True  # a name the dial step does not know
    except aiohttp.ClientConnectorError as exc:
        return isinstance(exc.os_error, DialError)  # no socket for an endpoint not issued
    return False


async def test_a_url_the_dial_step_did_not_resolve_gets_no_socket(
    listener: Listener, bystander: Listener
) -> None:
    async with _erp_session(listener, {"erp.corp.local": ["10.1.2.3"]}) as (session, url):
        # Through the dial step: allowed, and it lands on the listener.
        async with session.get(url) as response:
            assert response.status == 204
        assert listener.accepted == 1
        # IP literals (which the client connects to without asking any resolver) and real
        # names, to the endpoint just dialled and to another one: no socket is made.
        for port in (listener.port, bystander.port):
            for bypass in (f"http://127.0.0.1:{port}/x", f"http://localhost:{port}/x"):
                assert await _refused(session, bypass), bypass
    assert listener.accepted == 1
    assert bystander.accepted == 0


async def test_the_socket_factory_refuses_endpoints_it_did_not_issue() -> None:
    dial = DialStep(_config("10.1.2.3", []).targets)
    info = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("10.1.2.3", 8080))
    with pytest.raises(ConnectRefusedError) as caught:
        dial.socket(info)
    assert caught.value.code == "connect_not_dialled"
    assert await dial.endpoints("erp") == [("10.1.2.3", 8080)]
    # Same address, another port: not issued.
    with pytest.raises(ConnectRefusedError):
        dial.socket((*info[:4], ("10.1.2.3", 8081)))
    dial.socket(info).close()
    # One socket per endpoint issued: a second needs a new resolution (and check).
    with pytest.raises(ConnectRefusedError):
        dial.socket(info)


async def test_the_check_runs_for_every_new_connection(listener: Listener) -> None:
    table = {"erp.corp.local": ["10.1.2.3"]}
    async with _erp_session(listener, table) as (session, url):
        async with session.get(url) as response:
            assert response.status == 204
        # DNS now answers outside the CIDRs: the next connection is refused before any socket.
        table["erp.corp.local"] = ["10.9.9.9"]
        with pytest.raises(DialError) as caught:
            await session.get(url)
        assert caught.value.code == "resolved_address_not_allowed"
    assert listener.accepted == 1


async def test_tcp_streams_use_the_same_gate(listener: Listener) -> None:
    refused: list[tuple[str, int]] = []

    def guard(address: IPAddress, port: int) -> None:
        refused.append((str(address), port))
        raise OSError("refused by the test guard")

    dial = DialStep(
        _config("10.1.2.3", []).targets,
        redirect=lambda address, port: ("127.0.0.1", listener.port),
        guard=guard,
    )
    with pytest.raises(ConnectRefusedError) as caught:
        await dial.open_stream("erp", connect_timeout=2, limit=1024)
    assert caught.value.code == "connect_refused_by_guard"
    assert refused == [("127.0.0.1", listener.port)]
    assert listener.accepted == 0
