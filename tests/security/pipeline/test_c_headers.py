"""Catalogue section C (headers and smuggling) through the full pipeline.

Request-side cases that no HTTP/1.1 client can send, and that the relay's front door would
normalise away (it removes ``Content-Length``/``Transfer-Encoding`` and joins repeated names,
protocol notes section 5.2), are handed to the listener as relay JSON with a valid signature:
that is exactly what the gateway would see if a sender or relay let them through. Response-side
cases script the raw bytes the ``erp`` stand-in answers with.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.devkit.saas import SaaSResponse
from tests.security.pipeline.conftest import PipelineEnv, keep_alive_pool, pool_target
from tests.security.pipeline.target import KeepAliveTarget, response_bytes

pytestmark = pytest.mark.asyncio(loop_scope="module")

JSON_REFUSALS = [
    pytest.param(
        [("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
        400,
        "content_length_with_transfer_encoding",
        id="C52",
    ),
    *(
        pytest.param(
            [("Transfer-Encoding", coding), *length],
            400,
            "invalid_transfer_encoding",
            id=f"TE-{coding.strip() or 'empty'}{'-with-length' if length else ''}",
        )
        for coding in (
            "gzip, chunked",
            "chunked, identity",
            "xchunked",
            " chunked",
            "chunked, chunked",
        )
        for length in ([], [("Content-Length", "5")])
    ),
    pytest.param([("Content-Length", "5, 6")], 400, "invalid_content_length", id="C54-two"),
    pytest.param([("Content-Length", "+5")], 400, "invalid_content_length", id="C54-plus"),
    pytest.param([("Content-Length", "5, 5")], 400, "invalid_content_length", id="C54-repeat"),
    pytest.param([("Content-Length", "-1")], 400, "invalid_content_length", id="C54-minus"),
    pytest.param([("Content-Length", "0x5")], 400, "invalid_content_length", id="C54-hex"),
    pytest.param([("X" * 10240, "1")], 400, "invalid_header_name", id="C57-10KB-name"),
    pytest.param(
        [(f"X-Pad-{i}", "v") for i in range(150)], 431, "too_many_headers", id="C68-count"
    ),
    pytest.param(
        [(f"X-Pad-{i}", "v" * 4000) for i in range(10)], 431, "headers_too_large", id="C68-bytes"
    ),
]


@pytest.mark.parametrize(("headers", "status", "reason"), JSON_REFUSALS)
async def test_C_malformed_request_headers_are_refused(
    env: PipelineEnv, headers: list[tuple[str, str]], status: int, reason: str
) -> None:
    response = await env.send_json("POST", "erp", "/api/orders", headers=headers, body=b"hello")
    assert (response.status, response.reason_code) == (status, reason), response.body
    env.assert_never_forwarded()


async def test_transfer_encoding_on_two_json_keys_is_400(env: PipelineEnv) -> None:
    # JSON keys differing only in case are two field lines; the signer covers neither.
    async with env.saas() as saas:
        signed = saas.signed_headers(
            "POST", f"/{saas.hc}/erp/api/orders", "", [("Transfer-Encoding", "chunked")], b"hi"
        )
        response, _ = await saas.relay_json(
            "POST",
            "erp",
            "/api/orders",
            body=b"hi",
            signed_headers=[*signed, ("transfer-encoding", "chunked")],
        )
    assert (response.status, response.reason_code) == (400, "invalid_transfer_encoding")
    env.assert_never_forwarded()


@pytest.mark.parametrize(
    "headers",
    [
        [("X-A", "a\r\nX-Injected: 1")],
        [("X-A", "a\x00b")],
        [("X-A", "a\r\n b")],
        [("X A", "1")],
        [("X:A", "1")],
        [("", "1")],
        [("X-Ä", "1")],
    ],
    ids=["C56-crlf", "C56-nul", "C58-obs-fold", "C57-space", "C57-colon", "C57-empty", "C57-utf8"],
)
async def test_C56_C57_C58_are_refused_by_the_listener(
    env: PipelineEnv, headers: list[tuple[str, str]]
) -> None:
    # The relay's JSON must carry header names that are tokens and values without controls;
    # the listener's protocol core refuses anything else before the pipeline: 400
    # 'malformed_request' on the control channel, which it keeps. The aiohttp client is never
    # called, so no 500 from its ValueError is possible. (The pipeline's own 400 for each is
    # pinned in tests/security/test_catalogue_a_b_c.py.)
    response = await env.send_json("GET", "erp", "/api/orders", headers=headers)
    assert (response.status, response.reason_code) == (400, "malformed_request"), response.body
    env.assert_never_forwarded()


async def test_C59_forwarding_headers_are_removed(env: PipelineEnv) -> None:
    spoofed = [
        ("X-Forwarded-For", "127.0.0.1"),
        ("Forwarded", "for=127.0.0.1;host=admin"),
        ("X-Real-IP", "127.0.0.1"),
        ("X-Forwarded-Host", "admin"),
    ]
    response = await env.send("GET", "erp", "/api/orders", headers=spoofed)
    assert response.status == 200, response.body
    arrival = env.forwarded_once()
    assert not {"x-forwarded-for", "forwarded", "x-real-ip", "x-forwarded-host"} & arrival.names
    assert arrival.values("host") == ["erp.corp.local:8443"]


async def test_C61_expect_100_continue_completes_and_the_body_arrives_once(
    env: PipelineEnv,
) -> None:
    body = b'{"order": 17}'
    headers = [("Expect", "100-continue"), ("Content-Type", "application/json")]
    # Through the front door (the relay answers the 100 itself) and as relay JSON (the gateway
    # receives Expect and must not pass it on: the body is already here).
    front = await env.send("POST", "erp", "/api/orders", headers=headers, body=body)
    relayed = await env.send_json("POST", "erp", "/api/orders", headers=headers, body=body)
    assert (front.status, relayed.status) == (200, 200)
    assert [arrival.body for arrival in env.erp.arrivals] == [body, body]
    assert all("expect" not in arrival.names for arrival in env.erp.arrivals)


# Bad responses without "Connection: close": the keep-alive target leaves the connection open
# after each, with whatever the client did not consume still on it.
BAD_RESPONSES = [
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
        "upstream_protocol_error",
        id="C63-cl-and-te",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        "upstream_protocol_error",
        id="C63-bad-chunk",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nX-A: a\rX-Injected: 1\r\nContent-Length: 0\r\n\r\n",
        "upstream_protocol_error",
        id="C63-bare-cr",
    ),
    pytest.param(
        response_bytes(200, b"x", [(f"X-H{i}", "v") for i in range(200)], framing=False),
        "upstream_headers_too_large",
        id="C64-count",
    ),
    pytest.param(
        response_bytes(200, b"x", [("X-Long", "v" * 9000)], framing=False),
        "upstream_headers_too_large",
        id="C64-line",
    ),
    # Within the line and count limits, but over the 32 KB of header metadata the relay carries
    # (protocol notes section 5.2): relayed as it was, the response message would be over the
    # relay's 64 KiB control-message size, and the relay would drop the control channel.
    pytest.param(
        response_bytes(200, b"x", [(f"X-H{i}", "v" * 7000) for i in range(12)], framing=False),
        "upstream_headers_too_large",
        id="C64-relay-metadata",
    ),
    pytest.param(
        response_bytes(200, b"x", [(f"X-H{i}", "v" * 3000) for i in range(12)], framing=False),
        "upstream_headers_too_large",
        id="C64-relay-metadata-under-64k",
    ),
    # 5000 bytes of obs-text: a line within the target's limit, but twice as long in the UTF-8
    # the relay writes to the SaaS, whose client would refuse the whole answer.
    pytest.param(
        response_bytes(200, b"x", [("X-Latin", "\xe9" * 5000)], framing=False),
        "upstream_headers_too_large",
        id="C64-relayed-line",
    ),
]


@pytest.fixture(scope="module")
def extra_targets() -> dict[str, Any]:
    """``pool``: the erp host on another port, served by the keep-alive stand-in."""
    return pool_target({"name": "read", "methods": ["GET"], "paths": ["/api/*"]})


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def keep_alive(env: PipelineEnv) -> AsyncIterator[KeepAliveTarget]:
    """The keep-alive stand-in serving ``pool``."""
    async with keep_alive_pool(env) as server:
        yield server


async def bad_then_good(
    env: PipelineEnv, keep_alive: KeepAliveTarget, raw: bytes
) -> tuple[SaaSResponse, SaaSResponse]:
    """A good request (pools a connection), the scripted bad one, then a good one again."""
    env.dialler.erp_override = ("127.0.0.1", keep_alive.port)
    keep_alive.reset()
    keep_alive.scripted["/api/bad"] = raw
    warm = await env.send("GET", "pool", "/api/warm")
    assert (warm.status, warm.body) == (200, b"kept")
    bad = await env.send("GET", "pool", "/api/bad")
    # Pooled: the bad response came on the connection the good one left open.
    assert keep_alive.connection_of["/api/bad"] == keep_alive.connection_of["/api/warm"]
    after = await env.send("GET", "pool", "/api/after")
    return bad, after


@pytest.mark.parametrize(("raw", "reason"), BAD_RESPONSES)
async def test_C63_C64_malformed_upstream_responses_are_502(
    env: PipelineEnv, keep_alive: KeepAliveTarget, raw: bytes, reason: str
) -> None:
    bad, after = await bad_then_good(env, keep_alive, raw)
    assert (bad.status, bad.reason_code) == (502, reason), bad
    assert "x-injected" not in bad.headers
    # The bad request reached the target once and was not retried; the connection that carried
    # the bad response was never used again: the next request got its own answer on a new one
    # (a reused connection would hand it the rest of the bad response).
    assert [a.target for a in keep_alive.arrivals] == ["/api/warm", "/api/bad", "/api/after"]
    assert (after.status, after.body) == (200, b"kept")
    assert "x-injected" not in after.headers
    assert keep_alive.connection_of["/api/after"] != keep_alive.connection_of["/api/bad"]


async def test_C65_reason_phrase_with_cr_never_splits_the_response(
    env: PipelineEnv, keep_alive: KeepAliveTarget
) -> None:
    raw = b"HTTP/1.1 200 OK\rX-Injected: 1\r\nContent-Length: 2\r\n\r\nok"
    bad, after = await bad_then_good(env, keep_alive, raw)
    assert "x-injected" not in bad.headers
    assert bad.status in (200, 502)
    if bad.status == 502:
        assert bad.reason_code == "upstream_protocol_error"
        assert keep_alive.connection_of["/api/after"] != keep_alive.connection_of["/api/bad"]
    assert (after.status, after.body) == (200, b"kept")
    # The phrase the relay hands the SaaS (the response command's statusDescription) carries
    # no CR, LF or injected field, whichever way the response was judged.
    phrase = await relayed_phrase(env, "/api/bad")
    assert "\r" not in phrase
    assert "\n" not in phrase
    assert "X-Injected" not in phrase
    assert phrase in ("OK", "Bad Gateway")


async def relayed_phrase(env: PipelineEnv, path: str) -> str:
    """The status description the listener answers a signed ``pool`` request with."""
    target = f"/{env.stack.hc}/pool{path}"
    async with env.saas() as saas:
        headers = saas.signed_headers("GET", target)
    got = await env.stack.relay.deliver_request(
        env.stack.hc, method="GET", request_target=target, headers=dict(headers), body=b""
    )
    return got.command.status_description or ""


@pytest.mark.parametrize(
    ("path", "forwarded"),
    [("/api/orders", False), ("/session/current", True)],
    ids=["not-named", "named-by-operation"],
)
async def test_C66_credentials_pass_only_where_the_operation_names_them(
    env: PipelineEnv, path: str, forwarded: bool
) -> None:
    headers = [("Authorization", "Bearer on-prem-token"), ("Cookie", "sid=1")]
    response = await env.send("GET", "erp", path, headers=headers)
    assert response.status == 200, response.body
    arrival = env.forwarded_once()
    if forwarded:
        assert arrival.values("authorization") == ["Bearer on-prem-token"]
        assert arrival.values("cookie") == ["sid=1"]
    else:
        assert not {"authorization", "cookie"} & arrival.names


async def test_C67_pure_python_parser_and_old_aiohttp_are_refused() -> None:
    # A fresh interpreter: aiohttp picks its parser when it is imported.
    probe = (
        "from gateway.outbound.sessions import aiohttp_version_problem, http_parser_problem;"
        "print(bool(http_parser_problem()), bool(aiohttp_version_problem('3.13.3')),"
        " aiohttp_version_problem('3.13.4') is None)"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        probe,
        env={**os.environ, "AIOHTTP_NO_EXTENSIONS": "1"},
        stdout=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, _ = await process.communicate()
    assert out.decode().split() == ["True", "True", "True"]


# Every byte a target may put in a reason phrase or field value that llhttp lets through: HTAB,
# visible ASCII, obs-text; the reason phrase also takes the other control characters but CR/LF.
_FIELD_CHARS = st.sampled_from(["\t", *map(chr, range(0x20, 0x7F)), *map(chr, range(0x80, 0x100))])
_FIELD_TEXT = st.one_of(
    st.text(_FIELD_CHARS, max_size=40),
    # Long values, so that some heads are over the relay's 32 KB of metadata and some JSON
    # texts over its 64 KiB (quotes and obs-text take two bytes there).
    st.builds(
        lambda text, times: (text * times)[:8000],
        st.text(_FIELD_CHARS, min_size=1, max_size=8),
        st.integers(500, 8000),
    ),
)
_REASON = st.text(
    st.sampled_from([c for c in map(chr, range(0x100)) if c not in "\r\n"]), max_size=200
)
_RESPONSES = st.tuples(
    st.sampled_from([200, 201, 299, 404, 500, 599]),
    _REASON,
    st.lists(
        st.tuples(st.from_regex(r"X-[A-Za-z0-9]{1,20}", fullmatch=True), _FIELD_TEXT),
        max_size=24,
        unique_by=lambda pair: pair[0].lower(),
    ),
)


def _drawn(count: int) -> list[tuple[int, str, list[tuple[str, str]]]]:
    # Drawn first, run afterwards on the module's event loop (a hypothesis body cannot await).
    drawn: list[tuple[int, str, list[tuple[str, str]]]] = []

    @settings(max_examples=count, database=None, derandomize=True, deadline=None)
    @given(_RESPONSES)
    def collect(value: tuple[int, str, list[tuple[str, str]]]) -> None:
        drawn.append(value)

    collect()
    return drawn


async def test_every_answer_a_target_can_give_reaches_the_saas_or_is_a_502_with_a_reason(
    env: PipelineEnv, keep_alive: KeepAliveTarget
) -> None:
    # The class of C 63-65: whatever head a target sends within the parser's limits, the relay
    # gets a response message it reads (the target's, or the gateway's 502 with its reason),
    # and no control channel is lost over it (a message the relay cannot read costs the channel
    # and every answer due on it).
    env.dialler.erp_override = ("127.0.0.1", keep_alive.port)
    listeners = env.stack.relay.listener_count(env.stack.hc)
    for status, reason, headers in _drawn(40):
        keep_alive.reset()
        raw = f"HTTP/1.1 {status} ".encode() + reason.encode("latin-1") + b"\r\n"
        raw += b"".join(f"{n}: {v}\r\n".encode("latin-1") for n, v in headers)
        raw += b"Content-Length: 2\r\nConnection: close\r\n\r\nok"
        keep_alive.scripted["/api/drawn"] = raw
        got = await env.send("GET", "pool", "/api/drawn")
        # What the relay writes to the SaaS: each value (without its padding) in UTF-8.
        lines = [len(n) + 2 + len(v.strip(" \t").encode()) for n, v in headers]
        if max(lines, default=0) > 8190 or sum(line + 2 for line in lines) > 32 * 1024:
            assert (got.status, got.reason_code) == (502, "upstream_headers_too_large"), got
        else:
            assert (got.status, got.body) == (status, b"ok"), (got, reason, headers)
            assert not got.reason_code
            received = {name.lower(): value for name, value in got.headers.items()}
            for name, value in headers:
                assert received[name.lower()] == value.strip(" \t"), name
        assert env.stack.relay.listener_count(env.stack.hc) == listeners
