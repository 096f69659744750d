"""Every outbound connection goes through the one dial step (catalogue A).

The HTTP client connects to an IP literal without asking any resolver, so a target declared by
address used to skip the dial step: no address check, no test seam, a real connection to the
address. Here the resolver denies every name and the guard (conftest :class:`LoopbackGuard`)
refuses every socket outside loopback; HTTP, HTTPS, WebSocket and TCP targets, each declared by
name and by literal, must then behave exactly as the dial step decides: literals are checked
against their CIDRs, redirected by the seam and reach their loopback stand-ins; names fail
closed (502 ``dns_failure``) without a socket being made.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.security.pipeline.conftest import ERP_HOST, PipelineEnv

pytestmark = pytest.mark.asyncio(loop_scope="module")

API_LITERAL = "10.1.3.7"
ERP_LITERAL = "10.1.2.9"
LDAP_LITERAL = "10.1.4.9"
_API_OPERATIONS = [
    {"name": "api", "methods": ["GET"], "paths": ["/api/*"]},
    {"name": "ws", "methods": ["GET"], "paths": ["/ws/*"], "websocket": True},
]


@pytest.fixture(scope="module")
def extra_targets() -> dict[str, Any]:
    """The sample API (HTTP and WebSocket) by name and by literal, plus https and tcp literals."""
    return {
        "api": {
            "scheme": "http",
            "host": "api.corp.local",
            "port": 8080,
            "allowed_cidrs": ["10.1.3.0/24"],
            "operations": _API_OPERATIONS,
        },
        "api-ip": {
            "scheme": "http",
            "host": API_LITERAL,
            "port": 8080,
            "operations": _API_OPERATIONS,
        },
        "erp-ip": {
            "scheme": "https",
            "host": ERP_LITERAL,
            "port": 8443,
            # The stand-in's certificate names erp.corp.local; the address is what is dialled.
            "tls": {"ca_file": "target-ca.pem", "server_name": ERP_HOST},
            "operations": [{"name": "orders", "methods": ["GET"], "paths": ["/api/*"]}],
        },
        "ldap-ip": {"scheme": "tcp", "host": LDAP_LITERAL, "port": 636},
    }


@pytest.fixture(autouse=True)
def no_dns(env: PipelineEnv) -> None:
    """The resolver denies every name for every test of this module."""
    env.dns.answers = {}


@pytest.mark.parametrize(
    ("selector", "address", "port"),
    [("api-ip", API_LITERAL, 8080), ("erp-ip", ERP_LITERAL, 8443)],
)
async def test_http_to_a_literal_goes_through_the_dial_step(
    env: PipelineEnv, selector: str, address: str, port: int
) -> None:
    response = await env.send("GET", selector, "/api/orders")
    assert response.status == 200, response.body
    assert env.dialler.dialled == [(address, port)]
    assert env.dns.calls == []  # a literal is never resolved
    assert len(env.guard.connects) == 1
    assert env.guard.refused == []
    arrived = env.stack.targets.http_requests if selector == "api-ip" else env.erp.arrivals
    assert len(arrived) == 1


async def test_websocket_to_a_literal_goes_through_the_dial_step(env: PipelineEnv) -> None:
    async with env.saas() as saas:
        ws = await saas.stream("api-ip", "/ws/echo")
        await ws.send_str("hi")
        message = await ws.receive(timeout=10)
        await ws.close()
    assert message.data == "echo:hi"
    assert env.dialler.dialled == [(API_LITERAL, 8080)]
    assert len(env.guard.connects) == 1
    assert env.guard.refused == []


async def test_tcp_to_a_literal_goes_through_the_dial_step(env: PipelineEnv) -> None:
    async with env.saas() as saas:
        ws = await saas.stream("ldap-ip")
        await ws.send_bytes(b"bind")
        message = await ws.receive(timeout=10)
        await ws.close()
    assert message.data == b"echo:bind"
    assert env.dialler.dialled == [(LDAP_LITERAL, 636)]
    assert len(env.guard.connects) == 1
    assert env.guard.refused == []


@pytest.mark.parametrize("selector", ["api", "erp"])
async def test_http_to_a_name_that_does_not_resolve_makes_no_socket(
    env: PipelineEnv, selector: str
) -> None:
    response = await env.send("GET", selector, "/api/orders")
    assert (response.status, response.reason_code) == (502, "dns_failure")
    env.assert_never_forwarded()


@pytest.mark.parametrize(("selector", "path"), [("api", "/ws/echo"), ("ldap", "")])
async def test_streams_to_a_name_that_does_not_resolve_make_no_socket(
    env: PipelineEnv, selector: str, path: str
) -> None:
    async with env.saas() as saas:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await saas.stream(selector, path)
    assert caught.value.status == 502
    env.assert_never_forwarded()


async def test_the_guard_sees_the_real_endpoint_of_every_kind_of_connection(
    env: PipelineEnv,
) -> None:
    # The seam sends checked addresses off loopback: the guard, at socket creation, must refuse
    # them for HTTP, WebSocket and TCP alike, and nothing may be received anywhere.
    env.dialler.everything_to = "192.0.2.1"
    response = await env.send("GET", "erp-ip", "/api/orders")
    assert (response.status, response.reason_code) == (502, "connect_refused_by_guard")
    async with env.saas() as saas:
        for selector, path in (("api-ip", "/ws/echo"), ("ldap-ip", "")):
            with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                await saas.stream(selector, path)
            assert caught.value.status == 502
    assert env.guard.refused == [("192.0.2.1", 8443), ("192.0.2.1", 8080), ("192.0.2.1", 636)]
    assert env.guard.connects == []
    assert env.erp.connections == 0
    assert env.stack.targets.tcp_bytes == []
    assert env.stack.targets.ws_streams == []
