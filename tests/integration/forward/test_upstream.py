"""The forwarder and dial step against real loopback servers (catalogue A 1, 12, 15, 23; C 63-65).

The resolver is a table (erp.corp.local -> 10.1.2.3 ...), and the dial step's redirect records the
checked (ip, port) and connects to a loopback server instead, so no packet leaves loopback.
"""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import pytest
import trustme
from aiohttp import web

from gateway.config.model import GatewayConfig
from gateway.forward.dial import IPAddress
from gateway.forward.upstream import Upstream, UpstreamError, drain
from tests.integration.relay.listener_support import wait_until

pytestmark = pytest.mark.asyncio


def make_config(scheme: str = "http", **target_extra: object) -> GatewayConfig:
    target: dict[str, object] = {
        "scheme": scheme,
        "host": "erp.corp.local",
        "port": 8443,
        "allowed_cidrs": ["10.1.2.0/24"],
        "operations": [{"name": "all", "methods": ["GET", "POST"], "paths": ["/api/**"]}],
    }
    target.update(target_extra)
    return GatewayConfig.model_validate(
        {
            "version": 1,
            "gateway": {"id": "agent-1"},
            "empowerid": {"url": "https://tenant.example"},
            "limits": {"max_response_body_bytes": 100_000, "request_timeout_seconds": 3},
            "targets": {"erp": target},
        }
    )


@dataclass
class Dialled:
    """Where the dial step decided to connect, and the loopback port standing in for it."""

    port: int
    calls: list[tuple[str, int]] = field(default_factory=list)

    def __call__(self, address: IPAddress, port: int) -> tuple[str, int]:
        self.calls.append((str(address), port))
        return "127.0.0.1", self.port


def table(
    answers: dict[str, Sequence[str]], delay: float = 0.0
) -> Callable[[str, int], Awaitable[list[IPAddress]]]:
    async def resolve(host: str, port: int) -> list[IPAddress]:
        if delay:
            await asyncio.sleep(delay)
        if host not in answers:
            raise OSError(f"unknown host {host}")
        return [ipaddress.ip_address(a) for a in answers[host]]

    return resolve


@dataclass
class Recorder:
    requests: list[web.Request] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)


async def start_app(
    app: web.Application, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


@pytest.fixture
async def target_app() -> AsyncIterator[tuple[Recorder, int]]:
    recorder = Recorder()

    async def handler(request: web.Request) -> web.StreamResponse:
        recorder.requests.append(request)
        recorder.bodies.append(await request.read())
        if request.path == "/api/redirect":
            raise web.HTTPTemporaryRedirect("/admin")
        if request.path == "/api/gzip":
            return web.Response(
                body=gzip.compress(b"x" * 100), headers={"Content-Encoding": "gzip"}
            )
        if request.path == "/api/big":
            return web.Response(body=b"y" * 200_000)
        if request.path == "/api/slow":
            await asyncio.sleep(5)
        if request.path == "/api/stream":
            response = web.StreamResponse()
            await response.prepare(request)
            for _ in range(10):
                await response.write(b"z" * 65536)
            return response
        return web.Response(
            text=f"hello {request.path_qs}",
            headers={"X-Upstream": "1", "Connection": "close, X-Secret-Hop", "X-Secret-Hop": "1"},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner, port = await start_app(app)
    yield recorder, port
    await runner.cleanup()


async def test_forwarded_once_to_the_checked_address_with_configured_host(
    target_app: tuple[Recorder, int],
) -> None:
    recorder, port = target_app
    dialled = Dialled(port)
    upstream = Upstream(
        make_config(), resolver=table({"erp.corp.local": ["10.1.2.3"]}), redirect=dialled
    )
    try:
        response = await upstream.send(
            "erp",
            method="GET",
            path="/api/orders",
            query="x=/../admin&y=%2F",
            headers=[("Accept", "text/plain")],
            body=b"",
        )
        body = await drain(response)
    finally:
        await upstream.close()
    assert response.status == 200
    assert body == b"hello /api/orders?x=/../admin&y=%2F"
    assert dialled.calls == [("10.1.2.3", 8443)]
    [request] = recorder.requests
    assert request.headers["Host"] == "erp.corp.local:8443"
    assert request.raw_path == "/api/orders?x=/../admin&y=%2F"
    # aiohttp adds nothing of its own: the outbound headers are exactly the allow-listed ones.
    assert set(request.headers) <= {"Host", "Accept"}
    names = {name.lower() for name, _ in response.headers}
    assert "x-upstream" in names
    assert "connection" not in names
    assert "x-secret-hop" not in names


async def test_only_permitted_addresses_are_dialled(target_app: tuple[Recorder, int]) -> None:
    recorder, port = target_app
    dialled = Dialled(port)
    resolver = table({"erp.corp.local": ["169.254.169.254", "10.1.2.3", "10.9.9.9"]})
    upstream = Upstream(make_config(), resolver=resolver, redirect=dialled)
    try:
        response = await upstream.send(
            "erp", method="GET", path="/api/x", query=None, headers=[], body=b""
        )
        await drain(response)
    finally:
        await upstream.close()
    assert dialled.calls == [("10.1.2.3", 8443)]
    assert len(recorder.requests) == 1


@pytest.mark.parametrize(
    "answer",
    [["169.254.169.254"], ["127.0.0.1"], ["168.63.129.16"], ["::ffff:127.0.0.1"], ["10.9.9.9"]],
)
async def test_forbidden_resolution_is_never_dialled(
    target_app: tuple[Recorder, int], answer: list[str]
) -> None:
    recorder, port = target_app
    dialled = Dialled(port)
    upstream = Upstream(make_config(), resolver=table({"erp.corp.local": answer}), redirect=dialled)
    try:
        with pytest.raises(UpstreamError) as caught:
            await upstream.send(
                "erp", method="GET", path="/api/x", query=None, headers=[], body=b""
            )
    finally:
        await upstream.close()
    assert (caught.value.code, caught.value.status) == ("resolved_address_not_allowed", 502)
    assert dialled.calls == []
    assert recorder.requests == []


async def test_loopback_target_needs_the_explicit_flag(target_app: tuple[Recorder, int]) -> None:
    recorder, port = target_app
    config = make_config(
        host="127.0.0.1", port=port, allowed_cidrs=["127.0.0.1/32"], allow_special_addresses=True
    )
    upstream = Upstream(config)
    try:
        response = await upstream.send(
            "erp", method="GET", path="/api/x", query=None, headers=[], body=b""
        )
        assert (await drain(response)).startswith(b"hello")
    finally:
        await upstream.close()
    assert len(recorder.requests) == 1


async def test_dns_failure_and_timeout() -> None:
    upstream = Upstream(make_config(), resolver=table({}))
    slow = Upstream(make_config(), resolver=table({"erp.corp.local": ["10.1.2.3"]}, delay=5))
    try:
        with pytest.raises(UpstreamError) as failed:
            await upstream.send(
                "erp", method="GET", path="/api/x", query=None, headers=[], body=b""
            )
        with pytest.raises(UpstreamError) as timed_out:
            await asyncio.wait_for(
                slow.send("erp", method="GET", path="/api/x", query=None, headers=[], body=b""), 10
            )
    finally:
        await upstream.close()
        await slow.close()
    assert (failed.value.code, failed.value.status) == ("dns_failure", 502)
    assert (timed_out.value.code, timed_out.value.status) == ("dns_timeout", 504)


async def test_redirects_are_not_followed(target_app: tuple[Recorder, int]) -> None:
    recorder, port = target_app
    upstream = Upstream(
        make_config(), resolver=table({"erp.corp.local": ["10.1.2.3"]}), redirect=Dialled(port)
    )
    try:
        response = await upstream.send(
            "erp", method="GET", path="/api/redirect", query=None, headers=[], body=b""
        )
        await drain(response)
    finally:
        await upstream.close()
    assert response.status == 307
    assert dict(response.headers)["Location"] == "/admin"
    assert [r.path for r in recorder.requests] == ["/api/redirect"]


async def test_bodies_are_not_decompressed(target_app: tuple[Recorder, int]) -> None:
    _, port = target_app
    upstream = Upstream(
        make_config(), resolver=table({"erp.corp.local": ["10.1.2.3"]}), redirect=Dialled(port)
    )
    try:
        response = await upstream.send(
            "erp", method="GET", path="/api/gzip", query=None, headers=[], body=b""
        )
        body = await drain(response)
    finally:
        await upstream.close()
    assert gzip.decompress(body) == b"x" * 100


async def test_response_size_cap(target_app: tuple[Recorder, int]) -> None:
    _, port = target_app
    upstream = Upstream(
        make_config(), resolver=table({"erp.corp.local": ["10.1.2.3"]}), redirect=Dialled(port)
    )
    try:
        with pytest.raises(UpstreamError) as declared:
            await upstream.send(
                "erp", method="GET", path="/api/big", query=None, headers=[], body=b""
            )
        streamed = await upstream.send(
            "erp", method="GET", path="/api/stream", query=None, headers=[], body=b""
        )
        with pytest.raises(UpstreamError) as chunked:
            await drain(streamed)
    finally:
        await upstream.close()
    assert declared.value.code == "upstream_body_too_large"
    assert chunked.value.code == "upstream_body_too_large"


async def test_timeout_is_504(target_app: tuple[Recorder, int]) -> None:
    _, port = target_app
    upstream = Upstream(
        make_config(), resolver=table({"erp.corp.local": ["10.1.2.3"]}), redirect=Dialled(port)
    )
    try:
        with pytest.raises(UpstreamError) as caught:
            await upstream.send(
                "erp", method="GET", path="/api/slow", query=None, headers=[], body=b""
            )
    finally:
        await upstream.close()
    assert (caught.value.code, caught.value.status) == ("upstream_timeout", 504)


async def test_per_target_concurrency_cap_answers_503(target_app: tuple[Recorder, int]) -> None:
    recorder, port = target_app
    config = make_config(limits={"max_concurrent_requests": 1})
    upstream = Upstream(
        config, resolver=table({"erp.corp.local": ["10.1.2.3"]}), redirect=Dialled(port)
    )
    try:
        slow = asyncio.create_task(
            upstream.send("erp", method="GET", path="/api/slow", query=None, headers=[], body=b"")
        )
        # The slow request holds the target's only slot once the target has it.
        await wait_until(lambda: any(r.path == "/api/slow" for r in recorder.requests), 60)
        with pytest.raises(UpstreamError) as caught:
            await upstream.send(
                "erp", method="GET", path="/api/x", query=None, headers=[], body=b""
            )
        slow.cancel()
        with pytest.raises((asyncio.CancelledError, UpstreamError)):
            await slow
    finally:
        await upstream.close()
    assert (caught.value.code, caught.value.status) == ("target_busy", 503)


async def test_environment_proxy_variables_are_ignored(
    target_app: tuple[Recorder, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder, port = target_app
    seen: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.read(1024))
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    proxy_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.setenv(name, proxy_url)
    upstream = Upstream(
        make_config(), resolver=table({"erp.corp.local": ["10.1.2.3"]}), redirect=Dialled(port)
    )
    try:
        response = await upstream.send(
            "erp", method="GET", path="/api/x", query=None, headers=[], body=b""
        )
        await drain(response)
    finally:
        await upstream.close()
        server.close()
        await server.wait_closed()
    assert seen == []
    assert len(recorder.requests) == 1


async def fetch(upstream: Upstream) -> bytes:
    response = await upstream.send(
        "erp", method="GET", path="/api/x", query=None, headers=[], body=b""
    )
    return await drain(response)


async def raw_target(reply: bytes) -> tuple[asyncio.Server, int, list[bytes]]:
    received: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], received


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n",
            "upstream_protocol_error",
        ),
        (
            b"HTTP/1.1 200 OK\r\n"
            + b"".join(b"X-H%d: v\r\n" % i for i in range(200))
            + b"Content-Length: 0\r\n\r\n",
            "upstream_headers_too_large",
        ),
        (
            b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 9000 + b"\r\nContent-Length: 0\r\n\r\n",
            "upstream_headers_too_large",
        ),
        (b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n", "upstream_protocol_error"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            "upstream_protocol_error",
        ),
    ],
    ids=["cl-and-te", "too-many-headers", "long-header", "bare-cr", "bad-chunk"],
)
async def test_malformed_upstream_responses_are_502(reply: bytes, code: str) -> None:
    server, port, received = await raw_target(reply)
    upstream = Upstream(
        make_config(), resolver=table({"erp.corp.local": ["10.1.2.3"]}), redirect=Dialled(port)
    )
    try:
        with pytest.raises(UpstreamError) as caught:
            await fetch(upstream)
    finally:
        await upstream.close()
        server.close()
        await server.wait_closed()
    assert (caught.value.code, caught.value.status) == (code, 502)
    assert len(received) == 1


async def test_https_target_is_verified_with_sni_of_the_configured_name(tmp_path: object) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("erp.corp.local")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    sni_seen: list[str | None] = []
    server_context.sni_callback = lambda sock, name, ctx: sni_seen.append(name)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="secure")

    app = web.Application()
    app.router.add_get("/api/x", handler)
    runner, port = await start_app(app, server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    trusted = Upstream(
        make_config("https"),
        resolver=table({"erp.corp.local": ["10.1.2.3"]}),
        redirect=Dialled(port),
        tls_contexts={"erp": client_context},
    )
    untrusted = Upstream(
        make_config("https"),
        resolver=table({"erp.corp.local": ["10.1.2.3"]}),
        redirect=Dialled(port),
    )
    try:
        response = await trusted.send(
            "erp", method="GET", path="/api/x", query=None, headers=[], body=b""
        )
        assert await drain(response) == b"secure"
        with pytest.raises(UpstreamError) as caught:
            await untrusted.send(
                "erp", method="GET", path="/api/x", query=None, headers=[], body=b""
            )
    finally:
        await trusted.close()
        await untrusted.close()
        await runner.cleanup()
    assert sni_seen[0] == "erp.corp.local"
    assert (caught.value.code, caught.value.status) == ("upstream_tls", 502)


async def test_https_target_declared_by_address_is_verified_against_that_address() -> None:
    # The client URL names the dial step's host, so TLS must be told the configured one: for an
    # address that means no SNI (RFC 6066 section 3 allows names only) and a certificate that
    # names the address; one for another address is refused.
    ca = trustme.CA()
    runners: list[web.AppRunner] = []
    ports: dict[str, int] = {}

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="by address")

    sni_seen: list[str | None] = []
    for named in ("10.1.2.3", "10.1.2.4"):
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(named).configure_cert(server_context)
        server_context.sni_callback = lambda sock, name, ctx: sni_seen.append(name)
        app = web.Application()
        app.router.add_get("/api/x", handler)
        runner, ports[named] = await start_app(app, server_context)
        runners.append(runner)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    config = make_config("https", host="10.1.2.3", allowed_cidrs=[])
    right = Upstream(
        config, redirect=Dialled(ports["10.1.2.3"]), tls_contexts={"erp": client_context}
    )
    wrong = Upstream(
        config, redirect=Dialled(ports["10.1.2.4"]), tls_contexts={"erp": client_context}
    )
    try:
        response = await right.send(
            "erp", method="GET", path="/api/x", query=None, headers=[], body=b""
        )
        assert await drain(response) == b"by address"
        with pytest.raises(UpstreamError) as caught:
            await wrong.send("erp", method="GET", path="/api/x", query=None, headers=[], body=b"")
    finally:
        await right.close()
        await wrong.close()
        for runner in runners:
            await runner.cleanup()
    assert sni_seen[0] is None
    assert (caught.value.code, caught.value.status) == ("upstream_tls", 502)
