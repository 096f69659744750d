"""WebSocket streams to an HTTP target, end to end: relay emulator -> gateway -> sample target.

The SaaS opens a signed stream through the relay emulator; an in-process agent decides it, opens
the upstream WebSocket on the sample HTTP target and splices the two. Each case asserts what the
SaaS saw, what the target saw (nothing, for every refused stream) and the decision log record.

The relay tells a sender only that the listener closed (1000, protocol notes section 4), so the
close code the gateway sends on its rendezvous leg is asserted in test_websocket_splice.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket as sockets
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.devkit.stack import DevStack
from gateway.service import Agent, AgentOptions

WAIT = 60.0  # bound for a single wait; each ends as soon as its event comes
LIVE_EVENTS = {"name": "live-events", "methods": ["GET"], "paths": ["/ws/*"], "websocket": True}


@dataclass
class Running:
    stack: DevStack
    agent: Agent
    directory: Path

    def decisions(self) -> list[dict[str, Any]]:
        text = (self.directory / "decisions.jsonl").read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines()]

    def streams(self) -> list[dict[str, Any]]:
        return [d for d in self.decisions() if d["kind"] == "stream"]


Start = Callable[..., AbstractAsyncContextManager[Running]]


@pytest.fixture
def start(tmp_path: Path) -> Start:
    """Start the stack and an agent whose gateway.yaml has ``limits`` / ``erp_limits`` merged in."""

    @asynccontextmanager
    async def run(
        limits: dict[str, Any] | None = None,
        erp_limits: dict[str, Any] | None = None,
        directory_port: int | None = None,
    ) -> AsyncIterator[Running]:
        directory = tmp_path / "gw"
        async with DevStack() as stack:
            config = stack.write_gateway_dir(directory, extra_operations=[LIVE_EVENTS])
            document = yaml.safe_load(config.read_text(encoding="utf-8"))
            document["limits"].update(limits or {})
            document["targets"]["erp"]["limits"] = erp_limits or {}
            if directory_port is not None:
                document["targets"]["directory"]["port"] = directory_port
            config.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
            await stack.register_gateway(directory)
            agent = Agent(AgentOptions(config_path=str(config), shutdown_grace=2))
            await agent.start()
            try:
                async with asyncio.timeout(10):
                    await stack.relay.wait_for_listeners(stack.hc, 2)
                yield Running(stack, agent, directory)
            finally:
                await agent.stop()

    return run


async def receive(socket: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    return await asyncio.wait_for(socket.receive(), WAIT)


async def test_allowed_stream_echoes_text_and_binary(start: Start) -> None:
    async with start() as running, running.stack.saas() as saas:
        socket = await saas.stream("erp", "/ws/echo", protocols=["chat.v3", "chat.v1"])
        try:
            await socket.send_str("hello")
            text = await receive(socket)
            await socket.send_bytes(b"\x00\xffbinary")
            binary = await receive(socket)
        finally:
            await socket.close()
        [stream] = running.stack.targets.ws_streams
        await asyncio.wait_for(stream.ended.wait(), WAIT)
        [record] = running.streams()
    assert (text.type, text.data) == (aiohttp.WSMsgType.TEXT, "echo:hello")
    assert (binary.type, binary.data) == (aiohttp.WSMsgType.BINARY, b"echo:\x00\xffbinary")
    # The target chose among the subprotocols the SaaS offered; the SaaS got its choice.
    assert socket.protocol == stream.protocol == "chat.v1"
    assert stream.messages == ["hello", b"\x00\xffbinary"]
    assert stream.path_qs == "/ws/echo"
    # The SaaS's signature headers stay on the gateway; Host names the configured target.
    sent = {name.lower(): value for name, value in stream.headers.items()}
    assert not {"signature", "signature-input", "x-gateway-id"} & set(sent)
    assert sent["host"] == f"127.0.0.1:{running.stack.targets.http_port}"
    assert stream.close_code == 1000
    assert record["result"] == "allowed"
    assert record["operation"] == "live-events"
    assert record["reasons"] == ["client_closed"]
    assert record["status"] == 101


@pytest.mark.parametrize(
    ("selector", "path", "reason"),
    [
        ("erp", "/api/accounts", "websocket_not_allowed"),  # an operation grants GET, not streams
        ("erp", "/admin", "path_not_allowed"),
        ("directory", "/admin", "path_not_allowed"),  # a tcp target has no paths
    ],
)
async def test_stream_without_a_websocket_grant_is_rejected_before_upstream(
    start: Start, selector: str, path: str, reason: str
) -> None:
    async with start() as running, running.stack.saas() as saas:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await saas.stream(selector, path)
        [record] = running.streams()
    assert caught.value.status == 403
    assert record["reasons"] == [reason]
    assert running.stack.targets.ws_streams == []
    assert running.stack.targets.http_requests == []
    assert running.stack.targets.tcp_bytes == []


async def test_unsigned_stream_is_rejected_before_upstream(start: Start) -> None:
    async with start() as running, running.stack.saas(signed=False) as saas:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await saas.stream("erp", "/ws/echo")
        [record] = running.streams()
    assert caught.value.status == 401
    assert record["reasons"] == ["missing_signature"]
    assert running.stack.targets.ws_streams == []


async def test_target_refusing_the_upgrade_rejects_the_stream(start: Start) -> None:
    async with start() as running, running.stack.saas() as saas:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await saas.stream("erp", "/ws/refuse")
        [record] = running.streams()
    assert caught.value.status == 502
    assert (record["result"], record["reasons"]) == ("failed", ["upstream_upgrade_refused"])


@pytest.mark.parametrize(
    ("command", "reason"), [("abort", "upstream_error"), ("close:4001", "upstream_closed")]
)
async def test_target_ending_the_stream_ends_it_for_the_saas(
    start: Start, command: str, reason: str
) -> None:
    async with start() as running, running.stack.saas() as saas:
        socket = await saas.stream("erp", "/ws/echo")
        try:
            await socket.send_str(command)
            message = await receive(socket)
        finally:
            await socket.close()
        await asyncio.sleep(0)
        [record] = running.streams()
    assert message.type is aiohttp.WSMsgType.CLOSE
    assert record["reasons"] == [reason]


async def test_per_target_stream_cap_is_answered_with_503(start: Start) -> None:
    async with start(erp_limits={"max_concurrent_streams": 1}) as running:
        async with running.stack.saas() as saas:
            first = await saas.stream("erp", "/ws/echo")
            with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                await saas.stream("erp", "/ws/echo")
            # Another target is not held back by erp's limit.
            other = await saas.stream("directory")
            await other.close()
            await first.close()
            await asyncio.wait_for(running.stack.targets.ws_streams[0].ended.wait(), WAIT)
            # The slot is free again once the first stream ended.
            again = await saas.stream("erp", "/ws/echo")
            await again.close()
        refused = [r for r in running.streams() if r["status"] == 503]
    assert caught.value.status == 503
    assert [r["reasons"] for r in refused] == [["target_busy"]]
    assert len(running.stack.targets.ws_streams) == 2


async def test_global_stream_cap_is_answered_with_503(start: Start) -> None:
    async with start(limits={"max_concurrent_streams": 1}) as running, running.stack.saas() as saas:
        first = await saas.stream("erp", "/ws/echo")
        try:
            with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                await saas.stream("directory")
        finally:
            await first.close()
    assert caught.value.status == 503
    assert running.stack.targets.tcp_bytes == []


async def test_a_lower_global_stream_cap_takes_effect_on_reload(start: Start) -> None:
    async with start() as running, running.stack.saas() as saas:
        first = await saas.stream("erp", "/ws/echo")
        try:
            config = running.directory / "gateway.yaml"
            document = yaml.safe_load(config.read_text(encoding="utf-8"))
            document["limits"]["max_concurrent_streams"] = 1
            config.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
            assert await running.agent.reload() is True
            with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                await saas.stream("directory")
        finally:
            await first.close()
        refused = [r for r in running.streams() if r["status"] == 503]
    assert caught.value.status == 503
    assert [r["reasons"] for r in refused] == [["gateway_busy"]]


async def test_idle_stream_is_closed_on_both_sides(start: Start) -> None:
    async with start(limits={"stream_idle_timeout_seconds": 0.3}) as running:
        async with running.stack.saas() as saas:
            socket = await saas.stream("erp", "/ws/echo")
            message = await receive(socket)
            await socket.close()
        [stream] = running.stack.targets.ws_streams
        await asyncio.wait_for(stream.ended.wait(), WAIT)
        [record] = running.streams()
    assert message.type is aiohttp.WSMsgType.CLOSE
    assert stream.close_code == 1000
    assert record["reasons"] == ["idle_timeout"]


def tcp_state(connection: sockets.socket) -> int:
    """The kernel's TCP state of ``connection`` (``struct tcp_info``'s first byte, Linux)."""
    state: int = connection.getsockopt(sockets.IPPROTO_TCP, sockets.TCP_INFO, 1)[0]
    return state


TCP_ESTABLISHED = 1


async def test_a_target_that_never_reads_does_not_keep_the_connection(start: Start) -> None:
    """A tcp target that takes no bytes: once the stream ends (idle), the gateway's connection
    to it is released even though the bytes it still holds for the target can never be written
    (closing gracefully would wait for them for ever)."""
    accepted: list[sockets.socket] = []
    got_one = asyncio.Event()

    def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer.get_extra_info("socket").dup())
        got_one.set()

    server = await asyncio.start_server(hold, "127.0.0.1", 0, limit=1024)
    port = server.sockets[0].getsockname()[1]

    async def flood(socket: aiohttp.ClientWebSocketResponse) -> None:
        # Far more than the kernel buffers of both ends hold: the gateway is left with bytes
        # it cannot write, and its idle timer runs only once nothing more gets through.
        with contextlib.suppress(Exception):
            for _ in range(512):
                await socket.send_bytes(b"x" * 65536)

    try:
        async with (
            start(limits={"stream_idle_timeout_seconds": 2}, directory_port=port) as running,
            running.stack.saas() as saas,
        ):
            socket = await saas.stream("directory")
            sender = asyncio.create_task(flood(socket))
            try:
                await asyncio.wait_for(got_one.wait(), WAIT)
                # Paused reading on our side: the server's protocol never reads either.
                message = await receive(socket)
                async with asyncio.timeout(WAIT):
                    # The kernel announces no change of TCP state: it is looked at.
                    while tcp_state(accepted[0]) == TCP_ESTABLISHED:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
                await socket.close()
            # Written once the relay side is closed too; a file announces nothing.
            async with asyncio.timeout(WAIT):
                while not [r for r in running.streams() if r["status"]]:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            [record] = running.streams()
    finally:
        for connection in accepted:
            connection.close()
        server.close()
    assert message.type is aiohttp.WSMsgType.CLOSE
    assert record["reasons"] == ["idle_timeout"]


async def test_a_reload_that_revokes_a_target_ends_its_open_streams(start: Start) -> None:
    """A stream is decided when it opens; a reviewed revocation must not leave it running under
    the old revision. The streams the new revision still allows go on."""
    async with start() as running, running.stack.saas() as saas:
        revoked = await saas.stream("directory")
        kept = await saas.stream("erp", "/ws/echo")
        try:
            await revoked.send_bytes(b"before")
            before = await receive(revoked)
            config = running.directory / "gateway.yaml"
            document = yaml.safe_load(config.read_text(encoding="utf-8"))
            del document["targets"]["directory"]
            config.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
            assert await running.agent.reload() is True
            ended = await receive(revoked)
            await kept.send_str("still here")
            echoed = await receive(kept)
        finally:
            await revoked.close()
            await kept.close()
        async with asyncio.timeout(WAIT):
            while not [r for r in running.streams() if r["target"] == "directory" and r["status"]]:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        [record] = [r for r in running.streams() if r["target"] == "directory"]
    assert before.data == b"echo:before"
    assert ended.type is aiohttp.WSMsgType.CLOSE
    assert (echoed.type, echoed.data) == (aiohttp.WSMsgType.TEXT, "echo:still here")
    assert record["reasons"] == ["revoked"]


async def test_a_reload_that_narrows_an_operation_ends_the_streams_it_allowed(
    start: Start,
) -> None:
    async with start() as running, running.stack.saas() as saas:
        narrowed = await saas.stream("erp", "/ws/echo")
        other = await saas.stream("directory")
        try:
            config = running.directory / "gateway.yaml"
            document = yaml.safe_load(config.read_text(encoding="utf-8"))
            # Another operation added, and live-events no longer covers /ws/echo.
            operations = document["targets"]["erp"]["operations"]
            [events] = [o for o in operations if o["name"] == LIVE_EVENTS["name"]]
            events["paths"] = ["/ws/feed"]
            operations.append({"name": "audit-read", "methods": ["GET"], "paths": ["/audit"]})
            config.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
            assert await running.agent.reload() is True
            ended = await receive(narrowed)
            await other.send_bytes(b"still here")
            echoed = await receive(other)
        finally:
            await narrowed.close()
            await other.close()
        async with asyncio.timeout(WAIT):
            while not [r for r in running.streams() if r["target"] == "erp" and r["status"]]:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        [record] = [r for r in running.streams() if r["target"] == "erp"]
    assert ended.type is aiohttp.WSMsgType.CLOSE
    assert echoed.data == b"echo:still here"
    assert record["reasons"] == ["revoked"]


async def test_an_open_stream_outlives_the_revision_a_reload_replaced(start: Start) -> None:
    """The revision a reload replaces is closed once its requests are done (request timeout +
    1 s, here 2 s); its WebSocket connections are in its pool, so it must wait for the streams
    opened under it too, or every reload cut every open WebSocket stream."""
    async with (
        start(limits={"request_timeout_seconds": 1}) as running,
        running.stack.saas() as saas,
    ):
        kept = await saas.stream("erp", "/ws/echo")
        try:
            config = running.directory / "gateway.yaml"
            document = yaml.safe_load(config.read_text(encoding="utf-8"))
            document["limits"]["max_concurrent_requests"] = 77  # any change the stream allows
            config.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
            assert await running.agent.reload() is True
            # Past the 2 s after which the replaced revision was closed. Nothing announces that
            # it was not: a slow machine can only make this test pass without the fix, never
            # fail with it.
            await asyncio.sleep(5)
            await kept.send_str("after the old revision's time")
            echoed = await receive(kept)
        finally:
            await kept.close()
    assert (echoed.type, echoed.data) == (
        aiohttp.WSMsgType.TEXT,
        "echo:after the old revision's time",
    )
