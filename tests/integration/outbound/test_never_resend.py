"""No request is ever sent twice (gateway.outbound.sessions).

aiohttp re-sends GET, HEAD, OPTIONS, PUT and DELETE when the connection fails after the request
was written. A real loopback server that keeps connections alive and closes one the moment a
request arrives on it shows whether that happens: it records every request it reads. Every session
the gateway builds goes through :func:`client_session`, which a source scan keeps true.
"""

from __future__ import annotations

import ast
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config.model import METHODS
from gateway.outbound.sessions import ConnectionLostError, client_session
from tests.security.pipeline.target import KeepAliveTarget

GATEWAY = Path(__file__).resolve().parents[3] / "gateway"


@pytest.fixture
async def target() -> AsyncIterator[KeepAliveTarget]:
    server = KeepAliveTarget()
    await server.start()
    yield server
    await server.stop()


@pytest.mark.parametrize("method", sorted(METHODS))
async def test_a_request_on_a_connection_that_closes_is_not_sent_again(
    target: KeepAliveTarget, method: str
) -> None:
    base = f"http://127.0.0.1:{target.port}"
    async with client_session() as session:
        async with session.get(f"{base}/api/warm") as response:
            assert await response.read() == b"kept"
        with pytest.raises(ConnectionLostError):
            await session.request(
                method, f"{base}/api/drop", data=b"x" if method != "GET" else None
            )
    drops = [a for a in target.arrivals if a.target == "/api/drop"]
    assert [a.method for a in drops] == [method]
    # The warm-up connection was the one reused: the request went out on a pooled connection.
    assert target.connections == 1


async def test_a_websocket_handshake_is_not_sent_again(target: KeepAliveTarget) -> None:
    base = f"http://127.0.0.1:{target.port}"
    async with client_session() as session:
        async with session.get(f"{base}/api/warm") as response:
            await response.read()
        with pytest.raises(ConnectionLostError):
            await session.ws_connect(f"{base}/api/drop-ws")
    assert [a.target for a in target.arrivals].count("/api/drop-ws") == 1


def _session_constructors(tree: ast.AST) -> list[int]:
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute | ast.Name)
        and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
        == "ClientSession"
    ]


def test_every_session_in_the_gateway_is_built_by_client_session() -> None:
    found = {
        str(path.relative_to(GATEWAY)): lines
        for path in sorted(GATEWAY.rglob("*.py"))
        if (lines := _session_constructors(ast.parse(path.read_text())))
    }
    assert list(found) == ["outbound/sessions.py"], found
    assert len(found["outbound/sessions.py"]) == 1
