"""The control-plane client against a hostile HTTPS server: size bounds, redirects, bad answers."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from gateway.devkit.controlplane import DevCA
from gateway.identity import ControlPlaneClient, ControlPlaneError, Timeouts
from gateway.identity.tls import registration_context

from .identity_support import TEST_TIMEOUTS


def server_tls(directory: Path) -> tuple[DevCA, ssl.SSLContext]:
    """A CA of its own and a server context with its certificate for 127.0.0.1."""
    ca = DevCA("Hostile CA")
    chain, key = ca.issue_server(["127.0.0.1"])
    (directory / "s.crt").write_bytes(chain)
    (directory / "s.key").write_bytes(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "s.crt", directory / "s.key")
    return ca, context


@pytest.fixture
async def hostile(tmp_path: Path) -> AsyncIterator[tuple[str, DevCA, list[str]]]:
    """An HTTPS server on 127.0.0.1 whose relay-info answer is chosen by the test via a path."""
    ca, context = server_tls(tmp_path)
    behaviour: list[str] = ["big"]
    hits: list[str] = []

    async def relay_info(request: web.Request) -> web.StreamResponse:
        hits.append(request.path)
        mode = behaviour[0]
        if mode == "big":
            return web.json_response({"pad": "x" * 300_000})
        if mode == "big-chunked":
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            for _ in range(100):
                await response.write(b"x" * 8192)
            return response
        if mode == "redirect":
            raise web.HTTPFound("/api/gateway/v1/elsewhere")
        if mode == "html":
            return web.Response(text="<html></html>", content_type="text/html")
        if mode == "gzip":
            return web.Response(
                body=b"\x1f\x8b",
                headers={"Content-Encoding": "gzip"},
                content_type="application/json",
            )
        if mode == "slow":
            await asyncio.sleep(5)
        if mode == "drip":
            # Never silent for a read timeout, never done: only the total bound ends it.
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            for _ in range(100):
                await response.write(b" ")
                await asyncio.sleep(0.1)
            return response
        return web.json_response({"gateway_id": "gw-1", "relay": {"namespace": "bad host!"}})

    app = web.Application()
    app.router.add_get("/api/gateway/v1/relay-info", relay_info)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}/", ca, behaviour
    finally:
        await runner.cleanup()
    assert hits, "the hostile server was never reached"


@pytest.mark.parametrize(
    ("mode", "code"),
    [
        ("big", "response_too_large"),
        ("big-chunked", "response_too_large"),
        ("redirect", "unexpected_status"),
        ("html", "unexpected_response"),
        ("gzip", "unexpected_response"),
        ("invalid", "unexpected_response"),
    ],
)
async def test_bad_answers_become_one_error_type(
    hostile: tuple[str, DevCA, list[str]], mode: str, code: str
) -> None:
    url, ca, behaviour = hostile
    behaviour[0] = mode
    client = ControlPlaneClient(
        url, registration_context(ca.pem), client_certificate=False, timeouts=TEST_TIMEOUTS
    )
    async with client:
        with pytest.raises(ControlPlaneError) as info:
            await client.relay_info()
    assert info.value.code == code


@pytest.mark.parametrize("mode", ["slow", "drip"])
async def test_a_silent_or_dripping_server_times_out(
    hostile: tuple[str, DevCA, list[str]], mode: str
) -> None:
    url, ca, behaviour = hostile
    behaviour[0] = mode
    client = ControlPlaneClient(
        url,
        registration_context(ca.pem),
        client_certificate=False,
        timeouts=Timeouts(connect=2.0, read=0.3, total=1.0),
    )
    async with client:
        with pytest.raises(ControlPlaneError) as info:
            await client.relay_info()
    assert info.value.code == "timeout"


# Answers a raw server sends, bytes as written, and the error each must become.
RAW_ANSWERS = {
    "repeated-length": (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        "unexpected_response",
    ),
    "not-http": (b"SSH-2.0-OpenSSH_9.6\r\n", "unexpected_response"),
    "short-body": (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{",
        "unexpected_response",
    ),
    "closed-before-answer": (b"", "unreachable"),
    "header-flood": (
        b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 200 + b"Content-Length: 2\r\n\r\n{}",
        "unexpected_response",
    ),
}


@pytest.mark.parametrize("mode", sorted(RAW_ANSWERS))
async def test_broken_http_answers_are_errors_and_the_request_goes_out_once(
    tmp_path: Path, mode: str
) -> None:
    answer, code = RAW_ANSWERS[mode]
    ca, context = server_tls(tmp_path)
    requests: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            requests.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(answer)
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        client = ControlPlaneClient(
            f"https://127.0.0.1:{port}/",
            registration_context(ca.pem),
            client_certificate=False,
            timeouts=TEST_TIMEOUTS,
        )
        async with client:
            with pytest.raises(ControlPlaneError) as info:
                await client.relay_info()
    finally:
        server.close()
        await server.wait_closed()
    assert info.value.code == code, info.value
    assert len(requests) == 1
    assert requests[0].startswith(b"GET /api/gateway/v1/relay-info HTTP/1.1\r\n")
    assert b"\r\nConnection: close\r\n" in requests[0]
