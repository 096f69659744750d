"""Catalogue sections A, B and C, as far as the canonicaliser and the header policy decide them.

Numbers refer to docs/security-test-catalogue.md; every test id starts with its item (``A02``,
``B27``, ``C52``). Three kinds of rows:

* refusals: the request never gets past canonicalisation, with the reason code and status pinned;
* policy inputs (B 37-39, 46, 51): the canonicaliser keeps the request as sent, and the canonical
  segments do not match the baseline pattern ``/api/*`` (the 403 itself is the policy engine's);
* forwarding (A 1, 3; B 42, 48; C 59, 61, 66): the canonical request and the outbound header list
  go through the real forwarder (:class:`gateway.forward.upstream.Upstream`) over real TLS to a
  loopback server standing in for erp.corp.local, which records exactly what arrived.

Items 49 and 50 are the hypothesis properties in tests/unit/forward/test_canonical_properties.py.
Items that depend on other parts (resolution, redirects, proxies, rendezvous, upstream responses,
signatures) are tested with those parts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import trustme
from aiohttp import web

from gateway.config.model import GatewayConfig, Operation
from gateway.config.patterns import PathPattern
from gateway.forward.canonical import CanonicalRequest, RequestRejected, canonicalise
from gateway.forward.dial import IPAddress
from gateway.forward.headers import outbound_headers
from gateway.forward.upstream import Upstream, drain
from gateway.policy.input import build_input
from tests.unit.forward.configs import make_config

CONFIG = make_config()
API = PathPattern.parse("/api/*")
E2E_TIMEOUT = 10.0


def request(**kwargs: Any) -> CanonicalRequest:
    arguments: dict[str, Any] = {
        "method": "GET",
        "target": "erp",
        "request_target": "/api/orders",
        "headers": [],
    }
    arguments.update(kwargs)
    return canonicalise(CONFIG, **arguments)


# --- refusals -----------------------------------------------------------------------------------

Case = dict[str, Any]
REFUSALS: list[Any] = [
    pytest.param([{"target": "erp.corp.local:8444"}], "target_not_allowed", 403, id="A02-port"),
    pytest.param(
        [{"target": "erp.corp.local.:8443"}, {"target": "ERP.CORP.LOCAL.:8443"}],
        "non_canonical_host",
        400,
        id="A04-trailing-dot",
    ),
    pytest.param([{"target": "[fe80::1%25eth0]:8443"}], "ipv6_zone_id", 400, id="A07-zone-id"),
    pytest.param(
        [
            {"target": "user@erp.corp.local:8443"},
            {"target": "erp.corp.local@evil.example:8443"},
            {"target": "erp.corp.local\\@evil:8443"},
        ],
        "userinfo",
        400,
        id="A08-userinfo",
    ),
    pytest.param(
        [{"target": "erp%2ecorp.local:8443"}], "percent_encoded_host", 400, id="A10-pct-host"
    ),
    pytest.param(
        [
            {"request_target": "http://evil.example/api/x"},
            {"request_target": "https://erp.corp.local:8443/api/x"},
        ],
        "absolute_form",
        400,
        id="A17-absolute-form",
    ),
    pytest.param(
        [{"request_target": "//evil.example/api/x"}], "empty_segment", 400, id="A18-network-path"
    ),
    pytest.param(
        [
            {"method": "CONNECT", "request_target": "erp.corp.local:22"},
            {"method": "CONNECT", "request_target": "erp.corp.local:22", "target": "x:22"},
        ],
        "method_not_allowed",
        405,
        id="A19-connect",
    ),
    pytest.param(
        [{"method": "OPTIONS", "request_target": "*"}], "asterisk_form", 400, id="A20-asterisk"
    ),
    pytest.param(
        [
            {"request_target": "http://erp.corp.local:8443/api/x"},
            {"request_target": "file:///etc/passwd"},
            {"request_target": "gopher://erp.corp.local:8443/_x"},
            {"request_target": "ws://erp.corp.local:8443/api/x"},
        ],
        "absolute_form",
        400,
        id="A21-scheme",
    ),
    pytest.param(
        [
            {"target": f"erp.corp.local:{port}"}
            for port in ("08443", "+8443", " 8443", "0", "65536", "-1")
        ],
        "invalid_port",
        400,
        id="A22-port-spelling",
    ),
    pytest.param(
        [
            {"websocket": True, "target": "billing"},
            {"websocket": True, "target": "erp.corp.local:9000"},
        ],
        ("unknown_target", "target_not_allowed"),
        403,
        id="A25-websocket-undeclared-target",
    ),
    pytest.param(
        [{"request_target": "/api/%2e%2e/admin"}],
        "encoded_dot_segment",
        400,
        id="B27-encoded-dot-segment",
    ),
    pytest.param(
        [{"request_target": "/api/../admin"}, {"request_target": "/api/./orders"}],
        "dot_segment",
        400,
        id="B28-dot-segment",
    ),
    pytest.param(
        [
            {"request_target": "/api/%2e"},
            {"request_target": "/api/.%2e/x"},
            {"request_target": "/api/%2E%2e/x"},
        ],
        "encoded_dot_segment",
        400,
        id="B29-mixed-dots",
    ),
    pytest.param(
        [
            {"request_target": "/api%2Fadmin"},
            {"request_target": "/api/%2fadmin"},
            {"request_target": "/api/..%2fadmin"},
        ],
        "encoded_slash",
        400,
        id="B30-encoded-slash",
    ),
    pytest.param(
        [
            {"request_target": "/api\\..\\admin"},
            {"request_target": "/api/..%5cadmin"},
            {"request_target": "/api/%5C"},
        ],
        "backslash",
        400,
        id="B31-backslash",
    ),
    pytest.param(
        [
            {"request_target": "/api/%C0%AE%C0%AE/admin"},
            {"request_target": "/api/%C0%AFadmin"},
            {"request_target": "/api/%FF"},
        ],
        "invalid_utf8",
        400,
        id="B33-utf8",
    ),
    pytest.param(
        [
            {"request_target": "/api/orders%00.json"},
            {"request_target": "/api/%00"},
            {"request_target": "/api/orders\x00"},
        ],
        "nul_byte",
        400,
        id="B34-nul",
    ),
    pytest.param(
        [
            {"request_target": "//api/orders"},
            {"request_target": "/api//orders"},
            {"request_target": "/api/orders//"},
        ],
        "empty_segment",
        400,
        id="B36-empty-segment",
    ),
    pytest.param(
        [{"request_target": "/api/orders#/../../admin"}], "fragment", 400, id="B41-fragment"
    ),
    pytest.param(
        [
            {"request_target": "/api/a\tb"},
            {"request_target": "/api/a\rb"},
            {"request_target": "/api/a\nb"},
            {"request_target": "/api/a%0ab"},
            {"request_target": "/api/a%0db"},
        ],
        "control_character",
        400,
        id="B44-control",
    ),
    pytest.param(
        [{"request_target": "/api/" + "a" * 8192}], "uri_too_long", 414, id="B45-long-path"
    ),
    pytest.param(
        [{"method": "get"}, {"method": "Get"}, {"method": "GET "}],
        "invalid_method",
        400,
        id="B46-method-case",
    ),
    pytest.param(
        [{"headers": [("Content-Length", "5"), ("Transfer-Encoding", "chunked")]}],
        "content_length_with_transfer_encoding",
        400,
        id="C52-cl-and-te",
    ),
    pytest.param(
        [
            {"headers": [("Content-Length", "5"), ("content-length", "6")]},
            {"headers": [("Content-Length", "+5")]},
            {"headers": [("Content-Length", "5, 5")]},
            {"headers": [("Content-Length", "-1")]},
            {"headers": [("Content-Length", "0x5")]},
        ],
        "invalid_content_length",
        400,
        id="C54-content-length",
    ),
    pytest.param(
        [
            {"headers": [("X-A", "a\r\nX-Injected: 1")]},
            {"headers": {"X-A": "a\nb"}},
            {"headers": [("X-A", "a\x00")]},
        ],
        "invalid_header_value",
        400,
        id="C56-crlf-nul",
    ),
    pytest.param(
        [
            {"headers": [("X A", "1")]},
            {"headers": [("X:A", "1")]},
            {"headers": [("", "1")]},
            {"headers": [("X-Ä", "1")]},
            {"headers": [("X" * 10_240, "1")]},
        ],
        "invalid_header_name",
        400,
        id="C57-header-names",
    ),
    pytest.param(
        [{"headers": [("X-A", "a\r\n b")]}, {"headers": [("X-A", "a\r\n\tb")]}],
        "invalid_header_value",
        400,
        id="C58-obs-fold",
    ),
    pytest.param(
        [
            {"headers": [(f"X-H{i}", "v") for i in range(500)]},
            {"headers": [(f"X-H{i}", "v" * 2048) for i in range(33)]},
        ],
        ("too_many_headers", "headers_too_large"),
        431,
        id="C68-header-volume",
    ),
]


@pytest.mark.parametrize(("cases", "codes", "status"), REFUSALS)
def test_refused_before_policy_or_upstream(
    cases: list[Case], codes: str | tuple[str, ...], status: int
) -> None:
    allowed = (codes,) if isinstance(codes, str) else codes
    for case in cases:
        with pytest.raises(RequestRejected) as caught:
            request(**case)
        assert caught.value.code in allowed, case
        assert caught.value.status == status, case


def test_C68_limits_are_the_configured_ones() -> None:
    """The 431 bounds are gateway.yaml's limits: 500 headers and 64 KiB are both over default."""
    assert len(request(headers=[(f"X-H{i}", "v") for i in range(100)]).headers) == 100
    assert CONFIG.limits.max_header_count < 500
    assert CONFIG.limits.max_header_bytes < 64 * 1024


# --- what the policy is given -------------------------------------------------------------------

POLICY_INPUTS: list[Any] = [
    pytest.param("/API/orders", ("API", "orders"), False, False, id="B37-case-variant"),
    pytest.param("/apiadmin", ("apiadmin",), False, False, id="B38-prefix"),
    pytest.param("/api-internal/x", ("api-internal", "x"), False, False, id="B38-sibling"),
    pytest.param("/api", ("api",), False, False, id="B39-bare"),
    pytest.param("/api/", ("api",), True, False, id="B39-trailing-slash"),
    pytest.param("/api/x", ("api", "x"), False, True, id="B39-one-segment"),
    pytest.param("/api/x/", ("api", "x"), True, False, id="B39-one-segment-slash"),
    pytest.param("/api/orders", ("api", "orders"), False, True, id="B51-segments"),
]


@pytest.mark.parametrize(("path", "segments", "trailing", "matches"), POLICY_INPUTS)
def test_policy_sees_the_request_as_sent(
    path: str, segments: tuple[str, ...], trailing: bool, matches: bool
) -> None:
    canonical = request(request_target=path)
    document = build_input(canonical, signed=True, keyid="empowerid-2026")
    assert document["path"] == path
    assert document["path_segments"] == list(segments)
    assert document["trailing_slash"] is trailing
    assert API.matches(canonical.segments, canonical.trailing_slash) is matches


def test_B46_delete_reaches_the_policy_unchanged() -> None:
    """DELETE is a valid method, so the 403 for a GET/POST rule is the policy's to give."""
    canonical = request(method="DELETE")
    assert build_input(canonical, signed=True, keyid=None)["method"] == "DELETE"
    assert "DELETE" not in CONFIG.targets["erp"].operations[0].methods


# --- forwarding through the real forwarder ------------------------------------------------------


@dataclass
class Arrival:
    """One request as the stand-in target saw it."""

    raw_path: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Target:
    """Loopback servers standing in for erp.corp.local (TLS) and intranet.corp.local (plain)."""

    tls_port: int
    plain_port: int
    client_tls: ssl.SSLContext
    arrivals: list[Arrival] = field(default_factory=list)
    dialled: list[tuple[str, int]] = field(default_factory=list)

    def redirect(self, address: IPAddress, port: int) -> tuple[str, int]:
        self.dialled.append((str(address), port))
        return "127.0.0.1", self.tls_port if port == 8443 else self.plain_port


@pytest.fixture
async def stand_in() -> AsyncIterator[Target]:
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("erp.corp.local").configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    arrivals: list[Arrival] = []

    async def handler(incoming: web.Request) -> web.Response:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in incoming.raw_headers]
        arrivals.append(Arrival(incoming.raw_path, headers, await incoming.read()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    tls_site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls)
    plain_site = web.TCPSite(runner, "127.0.0.1", 0)
    await tls_site.start()
    await plain_site.start()
    ports = [address[1] for address in runner.addresses]
    stand = Target(ports[0], ports[1], client_tls)
    stand.arrivals = arrivals
    try:
        yield stand
    finally:
        await runner.cleanup()


async def _resolve(host: str, port: int) -> Sequence[IPAddress]:
    table = {"erp.corp.local": "10.1.2.3", "intranet.corp.local": "10.1.3.4"}
    return [ipaddress.ip_address(table[host])]


def _operation(config: GatewayConfig, canonical: CanonicalRequest) -> Operation:
    """The operation a policy would match: method and a pattern on the canonical segments."""
    for candidate in config.targets[canonical.target].operations:
        if canonical.method in candidate.methods and any(
            PathPattern.parse(text).matches(canonical.segments, canonical.trailing_slash)
            for text in candidate.paths
        ):
            return candidate
    raise AssertionError("no operation matches; the policy would deny")


async def relay(stand: Target, body: bytes = b"", **kwargs: Any) -> Arrival:
    """Canonicalise, build outbound headers, forward once; return what the target received."""
    canonical = request(**kwargs)
    operation = _operation(CONFIG, canonical)
    upstream = Upstream(
        CONFIG,
        resolver=_resolve,
        redirect=stand.redirect,
        tls_contexts={"erp": stand.client_tls},
    )
    try:
        async with asyncio.timeout(E2E_TIMEOUT):
            response = await upstream.send(
                canonical.target,
                method=canonical.method,
                path=canonical.path,
                query=canonical.query,
                headers=outbound_headers(
                    CONFIG.targets[canonical.target], operation, canonical.headers
                ),
                body=body,
            )
            assert response.status == 200
            assert await drain(response) == b"ok"
    finally:
        await upstream.close()
    [arrival] = stand.arrivals
    return arrival


def names(arrival: Arrival) -> set[str]:
    return {name.lower() for name, _ in arrival.headers}


def value(arrival: Arrival, name: str) -> list[str]:
    return [v for n, v in arrival.headers if n.lower() == name]


async def test_A01_forwarded_once_with_the_configured_host(stand_in: Target) -> None:
    arrival = await relay(stand_in, headers=[("Accept", "application/json")])
    assert stand_in.dialled == [("10.1.2.3", 8443)]
    assert arrival.raw_path == "/api/orders"
    assert value(arrival, "host") == ["erp.corp.local:8443"]
    assert value(arrival, "accept") == ["application/json"]


async def test_A03_host_case_is_folded_and_the_allow_list_spelling_sent(stand_in: Target) -> None:
    arrival = await relay(stand_in, target="ERP.CORP.LOCAL:8443")
    assert value(arrival, "host") == ["erp.corp.local:8443"]


async def test_B42_query_reaches_the_target_byte_for_byte(stand_in: Target) -> None:
    arrival = await relay(stand_in, request_target="/api/orders?x=/../admin&y=%2F")
    assert arrival.raw_path == "/api/orders?x=/../admin&y=%2F"


async def test_B49_the_canonical_string_is_the_string_forwarded(stand_in: Target) -> None:
    canonical = request(request_target="/api/%7e%c3%a9%3a%41?q=%2e%2E")
    arrival = await relay(stand_in, request_target="/api/%7e%c3%a9%3a%41?q=%2e%2E")
    assert arrival.raw_path == canonical.request_target == "/api/~%C3%A9%3AA?q=%2e%2E"


async def test_B48_rewrite_headers_are_stripped(stand_in: Target) -> None:
    arrival = await relay(
        stand_in,
        headers=[
            ("X-Original-URL", "/admin"),
            ("X-Rewrite-URL", "/admin"),
            ("X-Forwarded-Uri", "/admin"),
            ("X-HTTP-Method-Override", "DELETE"),
        ],
    )
    assert arrival.raw_path == "/api/orders"
    assert names(arrival).isdisjoint(
        {"x-original-url", "x-rewrite-url", "x-forwarded-uri", "x-http-method-override"}
    )


async def test_C59_forwarding_headers_are_removed(stand_in: Target) -> None:
    arrival = await relay(
        stand_in,
        headers=[
            ("X-Forwarded-For", "127.0.0.1"),
            ("Forwarded", "for=127.0.0.1;host=admin"),
            ("X-Real-IP", "127.0.0.1"),
            ("X-Forwarded-Host", "admin"),
            ("Via", "1.1 evil"),
        ],
    )
    assert names(arrival).isdisjoint(
        {"x-forwarded-for", "forwarded", "x-real-ip", "x-forwarded-host", "via"}
    )
    assert value(arrival, "host") == ["erp.corp.local:8443"]


async def test_C61_expect_is_not_relayed_and_the_body_arrives_once(stand_in: Target) -> None:
    body = b'{"name": "new account"}'
    arrival = await relay(
        stand_in,
        body=body,
        method="POST",
        headers=[
            ("Expect", "100-continue"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
        ],
    )
    assert arrival.body == body
    assert "expect" not in names(arrival)
    assert value(arrival, "content-length") == [str(len(body))]
    assert value(arrival, "content-type") == ["application/json"]


async def test_C66_credentials_pass_only_where_the_operation_names_them(stand_in: Target) -> None:
    credentials = [("Authorization", "Bearer t0ken"), ("Cookie", "session=1")]
    arrival = await relay(stand_in, headers=credentials)
    assert names(arrival).isdisjoint({"authorization", "cookie"})
    stand_in.arrivals.clear()
    arrival = await relay(
        stand_in, target="intranet", request_target="/api/sessions", headers=credentials
    )
    assert stand_in.dialled[-1] == ("10.1.3.4", 80)
    assert value(arrival, "host") == ["intranet.corp.local"]
    assert value(arrival, "authorization") == ["Bearer t0ken"]
    assert value(arrival, "cookie") == ["session=1"]
