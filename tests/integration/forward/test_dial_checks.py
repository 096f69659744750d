"""What the dial step lets through: address checks, resolution failures and the connect loop.

The companion of test_dial_step.py (which proves the dial step is the only way to a socket): here
each check is driven to both of its answers. Connections are real loopback sockets; names resolve
through the dial step's resolver seam (a table) or the system resolver for literals and
``localhost``, so no test depends on outside DNS.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import aiohttp
import pytest

from gateway.config.model import GatewayConfig, Target
from gateway.devkit.ports import refused_port as refusing
from gateway.forward.dial import (
    MAX_ADDRESSES,
    AddressPolicy,
    ConnectRefusedError,
    DialError,
    DialStep,
    IPAddress,
    resolve_checked,
    system_resolver,
)

pytestmark = pytest.mark.asyncio

ip = ipaddress.ip_address


def _targets(**targets: dict[str, Any]) -> dict[str, Target]:
    document: dict[str, Any] = {
        "version": 1,
        "gateway": {"id": "agent-1"},
        "empowerid": {"url": "https://tenant.example"},
        "targets": {
            name: {
                "scheme": "http",
                "port": 8080,
                "operations": [{"name": "all", "methods": ["GET"], "paths": ["/**"]}],
                **fields,
            }
            for name, fields in targets.items()
        },
    }
    return dict(GatewayConfig.model_validate(document).targets)


def _erp(cidrs: list[str], *, host: str = "erp.corp.local", special: bool = False) -> Target:
    fields = {"host": host, "allowed_cidrs": cidrs, "allow_special_addresses": special}
    return _targets(erp=fields)["erp"]


def _table(*addresses: str) -> Any:
    async def resolve(host: str, port: int) -> Sequence[IPAddress]:
        return [ip(a) for a in addresses]

    return resolve


# --- the address policy -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cidrs", "special", "address", "permitted"),
    [
        (["10.1.2.0/24"], False, "10.1.2.3", True),
        (["10.1.2.0/24"], False, "10.1.3.3", False),
        # An IPv4-mapped IPv6 address is judged as the IPv4 address it reaches.
        (["10.1.2.0/24"], False, "::ffff:10.1.2.3", True),
        (["10.1.2.0/24"], False, "::ffff:10.1.3.3", False),
        # Special ranges stay closed inside allowed_cidrs unless the target opens them.
        (["0.0.0.0/0"], False, "169.254.169.254", False),
        (["0.0.0.0/0"], False, "::ffff:127.0.0.1", False),
        (["0.0.0.0/0"], True, "169.254.169.254", True),
        (["127.0.0.0/8"], True, "::ffff:127.0.0.1", True),
        (["::/0"], False, "::1", False),
        (["::/0"], False, "fd00::1", True),
        (["::/0"], True, "::1", True),
    ],
)
async def test_the_address_policy(
    cidrs: list[str], special: bool, address: str, permitted: bool
) -> None:
    assert AddressPolicy.for_target(_erp(cidrs, special=special)).permits(ip(address)) is permitted


async def test_a_literal_host_without_cidrs_allows_exactly_itself() -> None:
    policy = AddressPolicy.for_target(_erp([], host="10.1.2.3"))
    assert policy.networks == (ipaddress.ip_network("10.1.2.3/32"),)
    assert policy.allow_special is False


# --- resolution ---------------------------------------------------------------------------------


async def test_a_literal_host_is_never_resolved() -> None:
    async def no_resolver(host: str, port: int) -> Sequence[IPAddress]:
        raise AssertionError("an IP literal went to the resolver")

    target = _erp([], host="10.1.2.3")
    assert await resolve_checked(target, AddressPolicy.for_target(target), no_resolver) == [
        ip("10.1.2.3")
    ]


async def test_only_permitted_addresses_are_kept_in_resolver_order() -> None:
    target = _erp(["10.1.2.0/24"])
    resolver = _table("10.1.2.9", "10.9.9.9", "10.1.2.1", "169.254.169.254")
    assert await resolve_checked(target, AddressPolicy.for_target(target), resolver) == [
        ip("10.1.2.9"),
        ip("10.1.2.1"),
    ]


async def test_at_most_max_addresses_of_an_answer_are_considered() -> None:
    target = _erp(["10.1.2.0/24"])
    policy = AddressPolicy.for_target(target)
    outside = [f"10.9.0.{i}" for i in range(MAX_ADDRESSES - 1)]
    last = await resolve_checked(target, policy, _table(*outside, "10.1.2.3"))
    assert last == [ip("10.1.2.3")]
    with pytest.raises(DialError) as caught:
        await resolve_checked(target, policy, _table(*outside, "10.9.1.1", "10.1.2.3"))
    assert caught.value.code == "resolved_address_not_allowed"


async def test_nothing_permitted_names_the_first_four_answers() -> None:
    target = _erp(["10.1.2.0/24"])
    policy = AddressPolicy.for_target(target)
    with pytest.raises(DialError) as caught:
        await resolve_checked(target, policy, _table(*(f"10.9.9.{i}" for i in range(1, 7))))
    assert (caught.value.code, caught.value.status, str(caught.value)) == (
        "resolved_address_not_allowed",
        502,
        "erp.corp.local resolved to 10.9.9.1, 10.9.9.2, 10.9.9.3, 10.9.9.4, "
        "none inside allowed_cidrs",
    )
    with pytest.raises(DialError) as caught:
        await resolve_checked(target, policy, _table())
    assert str(caught.value) == "erp.corp.local resolved to no addresses, none inside allowed_cidrs"


@pytest.mark.parametrize("error", [OSError("no such name"), UnicodeError("label too long")])
async def test_a_name_that_does_not_resolve_is_502(error: Exception) -> None:
    async def failing(host: str, port: int) -> Sequence[IPAddress]:
        raise error

    target = _erp(["10.1.2.0/24"])
    with pytest.raises(DialError) as caught:
        await resolve_checked(target, AddressPolicy.for_target(target), failing)
    assert (caught.value.code, caught.value.status, str(caught.value)) == (
        "dns_failure",
        502,
        f"cannot resolve erp.corp.local: {error}",
    )


async def test_a_resolver_that_does_not_answer_is_504() -> None:
    async def silent(host: str, port: int) -> Sequence[IPAddress]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    target = _erp(["10.1.2.0/24"])
    with pytest.raises(DialError) as caught:
        await resolve_checked(target, AddressPolicy.for_target(target), silent, 0.05)
    assert (caught.value.code, caught.value.status, str(caught.value)) == (
        "dns_timeout",
        504,
        "resolving erp.corp.local took longer than 0.05s",
    )


async def test_the_dial_step_bounds_resolution_by_its_timeout() -> None:
    async def silent(host: str, port: int) -> Sequence[IPAddress]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    dial = DialStep({"erp": _erp(["10.1.2.0/24"])}, resolver=silent, timeout=0.05)
    with pytest.raises(DialError) as caught:
        await dial.endpoints("erp")
    assert (caught.value.code, caught.value.status, str(caught.value)) == (
        "dns_timeout",
        504,
        "resolving erp.corp.local took longer than 0.05s",
    )


async def test_the_resolver_is_asked_for_the_target_host_and_port() -> None:
    asked: list[tuple[str, int]] = []

    async def recording(host: str, port: int) -> Sequence[IPAddress]:
        asked.append((host, port))
        return [ip("10.1.2.3")]

    dial = DialStep({"erp": _erp(["10.1.2.0/24"])}, resolver=recording)
    assert await dial.endpoints("erp") == [("10.1.2.3", 8080)]
    assert asked == [("erp.corp.local", 8080)]


async def test_the_system_resolver_answers_literals_names_and_scoped_addresses() -> None:
    assert await system_resolver("127.0.0.1", 80) == [ip("127.0.0.1")]
    assert ip("127.0.0.1") in await system_resolver("localhost", 80)
    # A scope id ('%lo') is not part of the address the checks judge.
    assert await system_resolver("fe80::1%lo", 80) == [ip("fe80::1")]


async def test_the_system_resolver_is_the_default() -> None:
    target = _erp(["127.0.0.0/8"], host="localhost", special=True)
    assert await resolve_checked(target, AddressPolicy.for_target(target)) == [ip("127.0.0.1")]
    dial = DialStep({"erp": target})
    assert ("127.0.0.1", 8080) in await dial.endpoints("erp")


# --- the socket factory and the connect loop ----------------------------------------------------


class Echo:
    """A loopback listener that sends back what it reads, and counts connections."""

    def __init__(self) -> None:
        self.accepted = 0
        self.port = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    listener = Echo()
    listener.server = await asyncio.start_server(listener._serve, "127.0.0.1", 0)
    listener.port = listener.server.sockets[0].getsockname()[1]
    yield listener
    listener.server.close()
    await listener.server.wait_closed()


@contextlib.contextmanager
def _unanswered_port() -> Iterator[int]:
    """A loopback port whose listener never accepts and whose accept queue is full.

    With a backlog of 0 the kernel queues one finished handshake; once that is taken by a
    connection nobody accepts, every further SYN is dropped, so a connect stays pending until
    its own timeout (Linux tcp_conn_request: a full accept queue drops the SYN).
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        fillers = [socket.socket() for _ in range(4)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
            yield port
        finally:
            for filler in fillers:
                filler.close()


async def _stream_through(first_port: int, second_port: int, connect_timeout: float) -> None:
    """Open a stream to a target with two checked addresses, sent to the two loopback ports,
    and check the connection made echoes what it is sent."""
    ports = {"10.1.2.3": first_port, "10.1.2.4": second_port}
    dial = DialStep(
        {"erp": _erp(["10.1.2.0/24"])},
        resolver=_table("10.1.2.3", "10.1.2.4"),
        redirect=lambda address, port: ("127.0.0.1", ports[str(address)]),
    )
    reader, writer = await dial.open_stream("erp", connect_timeout=connect_timeout, limit=1 << 16)
    try:
        writer.write(b"ping\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"ping\n"
    finally:
        writer.close()


async def test_a_stream_tries_the_next_endpoint_when_one_refuses(
    echo: Echo, refused_port: int
) -> None:
    await _stream_through(refused_port, echo.port, connect_timeout=5)
    assert echo.accepted == 1


async def test_a_stream_gives_up_on_an_unanswered_endpoint_and_tries_the_next(
    echo: Echo,
) -> None:
    with _unanswered_port() as silent:
        await _stream_through(silent, echo.port, connect_timeout=0.2)
    assert echo.accepted == 1


async def test_an_unanswered_endpoint_alone_is_502_timed_out() -> None:
    with _unanswered_port() as silent:
        dial = DialStep(
            {"erp": _erp(["10.1.2.0/24"])},
            resolver=_table("10.1.2.3"),
            redirect=lambda address, port: ("127.0.0.1", silent),
        )
        with pytest.raises(DialError) as caught:
            await dial.open_stream("erp", connect_timeout=0.2, limit=1024)
    assert (caught.value.code, caught.value.status, str(caught.value)) == (
        "upstream_unreachable",
        502,
        "connect to 127.0.0.1 timed out",
    )


async def test_a_stream_reaches_an_ipv6_endpoint() -> None:
    echo = Echo()
    server = await asyncio.start_server(echo._serve, "::1", 0)
    port = server.sockets[0].getsockname()[1]
    dial = DialStep(
        {"erp": _erp(["fd00::/64"])},
        resolver=_table("fd00::7"),
        redirect=lambda address, _: ("::1", port),
    )
    try:
        reader, writer = await dial.open_stream("erp", connect_timeout=5, limit=1 << 16)
        writer.write(b"ping\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"ping\n"
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    assert echo.accepted == 1


async def test_the_redirect_seam_sees_each_checked_address_and_the_target_port() -> None:
    seen: list[tuple[IPAddress, int]] = []

    def redirect(address: IPAddress, port: int) -> tuple[str, int]:
        seen.append((address, port))
        return str(address), port + 1

    dial = DialStep(
        {"erp": _erp(["10.1.2.0/24"])},
        resolver=_table("10.1.2.3", "10.9.9.9", "10.1.2.4"),
        redirect=redirect,
    )
    assert await dial.endpoints("erp") == [("10.1.2.3", 8081), ("10.1.2.4", 8081)]
    assert seen == [(ip("10.1.2.3"), 8080), (ip("10.1.2.4"), 8080)]


async def test_a_stream_reader_keeps_the_line_limit(echo: Echo) -> None:
    dial = DialStep(
        {"erp": _erp(["10.1.2.0/24"])},
        resolver=_table("10.1.2.3"),
        redirect=lambda address, port: ("127.0.0.1", echo.port),
    )
    reader, writer = await dial.open_stream("erp", connect_timeout=5, limit=16)
    try:
        writer.write(b"x" * 64 + b"\n")
        with pytest.raises(ValueError, match="limit"):
            await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


async def test_no_endpoint_answering_is_502_naming_the_last_failure() -> None:
    with refusing() as first, refusing() as second:
        ports = {"10.1.2.3": first, "10.1.2.4": second}
        dial = DialStep(
            {"erp": _erp(["10.1.2.0/24"])},
            resolver=_table("10.1.2.3", "10.1.2.4"),
            redirect=lambda address, port: ("127.0.0.1", ports[str(address)]),
        )
        with pytest.raises(DialError) as caught:
            await dial.open_stream("erp", connect_timeout=5, limit=1024)
    assert (caught.value.code, caught.value.status, str(caught.value)) == (
        "upstream_unreachable",
        502,
        f"connect to 127.0.0.1 failed: Connect call failed ('127.0.0.1', {ports['10.1.2.4']})",
    )


async def test_an_issued_endpoint_gets_a_socket_of_the_family_asked_for() -> None:
    guarded: list[tuple[IPAddress, int]] = []
    dial = DialStep(
        {"erp": _erp(["fd00::/64", "10.1.2.0/24"])},
        resolver=_table("fd00::7", "10.1.2.3"),
        guard=lambda address, port: guarded.append((address, port)),
    )
    assert await dial.endpoints("erp") == [("fd00::7", 8080), ("10.1.2.3", 8080)]
    v6 = dial.socket((socket.AF_INET6, socket.SOCK_STREAM, 0, "", ("fd00::7%lo", 8080, 0, 1)))
    v4 = dial.socket(
        (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("10.1.2.3", 8080))
    )
    with v6, v4:
        assert (v6.family, v6.type) == (socket.AF_INET6, socket.SOCK_STREAM)
        assert (v4.family, v4.type, v4.proto) == (
            socket.AF_INET,
            socket.SOCK_STREAM,
            socket.IPPROTO_TCP,
        )
    assert guarded == [(ip("fd00::7"), 8080), (ip("10.1.2.3"), 8080)]


async def test_the_guard_refusal_is_reported_with_its_reason() -> None:
    def guard(address: IPAddress, port: int) -> None:
        raise OSError("not on loopback")

    dial = DialStep({"erp": _erp([], host="10.1.2.3")}, guard=guard)
    await dial.endpoints("erp")
    with pytest.raises(ConnectRefusedError) as caught:
        dial.socket((socket.AF_INET, socket.SOCK_STREAM, 0, "", ("10.1.2.3", 8080)))
    assert (caught.value.code, str(caught.value)) == ("connect_refused_by_guard", "not on loopback")


async def test_a_socket_address_that_is_no_address_is_refused() -> None:
    dial = DialStep({"erp": _erp([], host="10.1.2.3")})
    await dial.endpoints("erp")
    with pytest.raises(ConnectRefusedError) as caught:
        dial.socket((socket.AF_INET, socket.SOCK_STREAM, 0, "", ("erp.corp.local", 8080)))
    assert (caught.value.code, str(caught.value)) == (
        "connect_not_dialled",
        "the endpoint is not an address",
    )
    with pytest.raises(ConnectRefusedError) as caught:
        dial.socket((socket.AF_INET, socket.SOCK_STREAM, 0, "", ("10.1.2.4", 8080)))
    assert str(caught.value) == "10.1.2.4 port 8080 was not issued by the dial step"


# --- the HTTP client's way in -------------------------------------------------------------------


async def test_dial_hosts_name_targets_case_insensitively_on_their_port() -> None:
    dial = DialStep(_targets(a={"host": "10.1.2.3"}, b={"host": "10.1.2.4"}))
    assert (dial.dial_host("a"), dial.dial_host("b")) == ("t0.dial.invalid", "t1.dial.invalid")
    assert dial.target_at("t1.dial.invalid", 8080) == "b"
    assert dial.target_at("T0.Dial.Invalid", 8080) == "a"
    for host, port in (("t0.dial.invalid", 8081), ("t2.dial.invalid", 8080), ("10.1.2.3", 8080)):
        with pytest.raises(DialError) as caught:
            dial.target_at(host, port)
        assert (caught.value.code, str(caught.value)) == (
            "connect_not_dialled",
            f"{host}:{port} is not a declared target",
        )


async def test_the_connector_is_built_as_asked() -> None:
    dial = DialStep({"erp": _erp([], host="10.1.2.3")})
    pooled = dial.connector(limit=3, force_close=False)
    single = dial.connector(limit=5, force_close=True)
    try:
        assert (pooled.limit, pooled.force_close, pooled.use_dns_cache) == (3, False, False)
        assert (single.limit, single.force_close) == (5, True)
    finally:
        await pooled.close()
        await single.close()


@pytest.mark.parametrize(("listen", "address"), [("127.0.0.1", "10.1.2.3"), ("::1", "fd00::7")])
async def test_an_http_client_reaches_a_checked_endpoint_of_either_family(
    listen: str, address: str
) -> None:
    served: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append((await reader.readuntil(b"\r\n\r\n")).decode("latin-1"))
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, listen, 0)
    port = server.sockets[0].getsockname()[1]
    dial = DialStep(
        {"erp": _erp(["10.1.2.0/24", "fd00::/64"])},
        resolver=_table(address),
        redirect=lambda checked, _: (listen, port),
    )
    url = f"http://{dial.dial_host('erp')}:8080/x"
    try:
        async with (
            aiohttp.ClientSession(connector=dial.connector(limit=1, force_close=True)) as session,
            session.get(url) as response,
        ):
            assert response.status == 204
    finally:
        server.close()
        await server.wait_closed()
    assert len(served) == 1
    assert served[0].startswith("GET /x HTTP/1.1\r\n")
