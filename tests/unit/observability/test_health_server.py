"""The health endpoint's own HTTP/1.1 server, spoken to byte by byte over loopback sockets.

Routes, methods, framing and keep-alive as an operator's probe or a scraper sees them; and what
it does with requests it must refuse (malformed, oversize, upgrades, slow or silent clients).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.observability.health import MAX_HEADERS, MAX_LINE, HealthServer, Readiness
from gateway.observability.metrics import Metrics

pytestmark = pytest.mark.asyncio

WAIT = 30.0  # bound on any one read in these tests; never reached when the server is right


class Answer:
    """One parsed answer (status, headers, body), read with httptools' response parser."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""
        self.complete = False
        self.keep_alive = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_message_complete(self) -> None:
        self.complete = True


async def read_answers(
    reader: asyncio.StreamReader, count: int, *, head: bool = False
) -> list[Answer]:
    """``count`` answers from ``reader`` (answers to HEAD carry no body)."""
    answers: list[Answer] = []
    while len(answers) < count:
        answer = Answer()
        parser = httptools.HttpResponseParser(answer)
        buffered = b""
        while not answer.complete:
            if head and buffered.endswith(b"\r\n\r\n"):
                break
            byte = await asyncio.wait_for(reader.read(1), WAIT)
            if not byte:
                raise ConnectionError("closed before the answer ended")
            buffered += byte
            parser.feed_data(byte)
        answer.status = parser.get_status_code()
        # The server's own say (RFC 9112 section 9.3): it sends "close" before it closes.
        answer.keep_alive = answer.headers.get("connection", "").lower() != "close"
        answers.append(answer)
    return answers


async def closed(reader: asyncio.StreamReader) -> bool:
    """Whether the server closes the connection (reads to the end)."""
    return await asyncio.wait_for(reader.read(), WAIT) == b""


@pytest.fixture
async def server() -> AsyncIterator[HealthServer]:
    metrics = Metrics()
    state = Readiness(ready=False, reasons=["no relay listener online"], details={"n": 1})
    health = HealthServer(metrics, lambda: state)
    await health.start("127.0.0.1", 0)
    try:
        yield health
    finally:
        await health.stop()


async def connect(
    server: HealthServer,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def test_the_three_routes_answer_on_one_kept_alive_connection(server: HealthServer) -> None:
    reader, writer = await connect(server)
    try:
        for path in ("/healthz", "/readyz", "/metrics?x=1"):
            writer.write(f"GET {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        healthz, readyz, metrics = await read_answers(reader, 3)
    finally:
        writer.close()
    assert (healthz.status, json.loads(healthz.body)) == (200, {"status": "ok"})
    assert healthz.headers["content-type"] == "application/json; charset=utf-8"
    assert healthz.headers["content-length"] == str(len(healthz.body))
    assert readyz.status == 503
    assert json.loads(readyz.body) == {
        "ready": False,
        "reasons": ["no relay listener online"],
        "n": 1,
    }
    assert metrics.status == 200
    assert metrics.headers["content-type"] == Metrics.content_type
    assert b"gateway_requests_total" in metrics.body
    assert all(a.keep_alive for a in (healthz, readyz, metrics))


async def test_head_has_the_head_of_get_and_no_body(server: HealthServer) -> None:
    reader, writer = await connect(server)
    try:
        writer.write(b"HEAD /healthz HTTP/1.1\r\nHost: h\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n")
        [head] = await read_answers(reader, 1, head=True)
        [get] = await read_answers(reader, 1)
    finally:
        writer.close()
    assert head.status == 200
    assert head.body == b""
    assert head.headers["content-length"] == str(len(get.body))


@pytest.mark.parametrize(
    ("request_line", "status", "body"),
    [
        ("GET /nothing HTTP/1.1", 404, b"404: Not Found"),
        ("GET / HTTP/1.1", 404, b"404: Not Found"),
        ("POST /healthz HTTP/1.1", 405, b"405: Method Not Allowed"),
        ("DELETE /metrics HTTP/1.1", 405, b"405: Method Not Allowed"),
    ],
)
async def test_unknown_paths_and_methods(
    server: HealthServer, request_line: str, status: int, body: bytes
) -> None:
    reader, writer = await connect(server)
    try:
        writer.write(f"{request_line}\r\nContent-Length: 0\r\n\r\n".encode())
        [answer] = await read_answers(reader, 1)
    finally:
        writer.close()
    assert (answer.status, answer.body) == (status, body)
    assert answer.headers["content-type"] == "text/plain; charset=utf-8"
    if status == 405:
        assert answer.headers["allow"] == "GET,HEAD"


async def test_connection_close_and_http10_end_the_connection(server: HealthServer) -> None:
    for request in (
        b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET /healthz HTTP/1.0\r\n\r\n",
    ):
        reader, writer = await connect(server)
        try:
            writer.write(request)
            [answer] = await read_answers(reader, 1)
            assert answer.status == 200
            assert not answer.keep_alive
            assert await closed(reader)
        finally:
            writer.close()


async def test_http10_keep_alive_is_honoured(server: HealthServer) -> None:
    reader, writer = await connect(server)
    try:
        writer.write(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" * 2)
        answers = await read_answers(reader, 2)
    finally:
        writer.close()
    assert [a.status for a in answers] == [200, 200]
    assert answers[0].headers["connection"] == "keep-alive"


@pytest.mark.parametrize(
    ("sent", "status"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost h\r\n\r\n", 400),  # no colon
        (b"GET /healthz HTTP/1.1\r\nHost: a\rb\r\n\r\n", 400),  # bare CR
        (b"GET /healthz HTTP/9.9\r\n\r\n", 400),
        (b"G\x00T /healthz HTTP/1.1\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET /" + b"a" * (MAX_LINE + 1) + b" HTTP/1.1\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nX: " + b"v" * (MAX_LINE + 1) + b"\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\n" + b"X: v\r\n" * (MAX_HEADERS + 1) + b"\r\n", 400),
        (b"POST /healthz HTTP/1.1\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000, 413),
        (
            b"GET /healthz HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            200,  # answered as any request; what follows is not HTTP/1.1
        ),
    ],
    ids=[
        "no-colon",
        "bare-cr",
        "version",
        "nul-method",
        "cl-and-te",
        "long-target",
        "long-field",
        "many-fields",
        "big-body",
        "upgrade",
    ],
)
async def test_refused_requests_are_answered_and_the_connection_closes(
    server: HealthServer, sent: bytes, status: int
) -> None:
    reader, writer = await connect(server)
    try:
        writer.write(sent + b"GET /healthz HTTP/1.1\r\n\r\n")
        [answer] = await read_answers(reader, 1)
        assert answer.status == status
        assert not answer.keep_alive
        # Nothing after the refused request is answered.
        assert await closed(reader)
    finally:
        writer.close()


async def test_a_small_body_is_read_and_dropped(server: HealthServer) -> None:
    reader, writer = await connect(server)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
        writer.write(
            b"GET /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        )
        answers = await read_answers(reader, 2)
    finally:
        writer.close()
    assert [a.status for a in answers] == [200, 200]


async def test_a_silent_client_is_closed_after_the_idle_limit() -> None:
    health = HealthServer(Metrics(), lambda: Readiness(ready=True), idle_seconds=0.2)
    await health.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", health.port)
        try:
            # Half a request, then nothing: the server ends the wait, not the client.
            writer.write(b"GET /healthz HTTP/1.1\r\nHo")
            assert await closed(reader)
        finally:
            writer.close()
    finally:
        await health.stop()


async def test_a_probe_that_fails_is_a_500_and_the_server_goes_on() -> None:
    calls = 0

    def readiness() -> Readiness:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("probe broke")
        return Readiness(ready=True)

    health = HealthServer(Metrics(), readiness)
    await health.start("127.0.0.1", 0)
    try:
        statuses = []
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", health.port)
            try:
                writer.write(b"GET /readyz HTTP/1.1\r\n\r\n")
                [answer] = await read_answers(reader, 1)
                statuses.append(answer.status)
            finally:
                writer.close()
    finally:
        await health.stop()
    assert statuses == [500, 200]


async def test_stop_closes_open_connections(server: HealthServer) -> None:
    reader, writer = await connect(server)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\n\r\n")
        await read_answers(reader, 1)
        await server.stop()
        assert await closed(reader)
    finally:
        writer.close()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(garbage=st.binary(min_size=1, max_size=300))
async def test_any_bytes_get_an_answer_or_a_close_and_the_server_still_serves(
    server: HealthServer, garbage: bytes
) -> None:
    reader, writer = await connect(server)
    try:
        writer.write(garbage)
        writer.write_eof()
        data = await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()
    # Whatever came back is whole HTTP/1.1 answers, each with a status the server knows.
    for line in data.split(b"\r\n"):
        if line.startswith(b"HTTP/"):
            assert line.split(b" ")[1] in (b"200", b"400", b"404", b"405", b"413", b"503")
    reader, writer = await connect(server)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\n\r\n")
        [answer] = await read_answers(reader, 1)
    finally:
        writer.close()
    assert answer.status == 200
