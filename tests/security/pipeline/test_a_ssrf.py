"""Catalogue section A (SSRF and target selection) through the full pipeline.

Addressing is ours, not a ``Host`` header (docs/relay-contract.md): the SaaS sends
``/{hc}/{selector}/{path}`` and the selector is a target name or the exact ``host:port`` of a
declared target. The catalogue's "Host ..." items are therefore sent as selectors; the upstream
``Host`` is always the allow-list spelling. Every refusal asserts the SaaS's status and
``x-gateway-reason`` and that nothing was resolved, dialled or received on-prem.
"""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest

from gateway.hybridconnection.messages import AcceptCommand, RendezvousRequestCommand
from tests.security.pipeline.conftest import ERP_ADDRESS, PipelineEnv
from tests.security.pipeline.target import fixed, response_bytes

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_A01_baseline_is_forwarded_once_with_the_allow_list_host(env: PipelineEnv) -> None:
    response = await env.send("GET", "erp", "/api/orders")
    assert response.status == 200, response.body
    arrival = env.forwarded_once()
    assert (arrival.method, arrival.target) == ("GET", "/api/orders")
    assert arrival.values("host") == ["erp.corp.local:8443"]
    assert env.dns.calls == ["erp.corp.local"]
    assert env.dialler.dialled == [(ERP_ADDRESS, 8443)]
    # Relayed back unchanged: the target's body and its end-to-end headers.
    assert json.loads(response.body) == {
        "target": "/api/orders",
        "method": "GET",
        "received_bytes": 0,
    }
    assert response.headers["x-target"] == "erp"
    assert response.reason_code == ""


async def test_A03_selector_host_case_is_folded(env: PipelineEnv) -> None:
    response = await env.send("GET", "ERP.CORP.LOCAL:8443", "/api/orders")
    assert response.status == 200, response.body
    assert env.forwarded_once().values("host") == ["erp.corp.local:8443"]


# (selector, status, reason), sent through the relay's HTTP front door.
SELECTOR_REFUSALS = [
    pytest.param("erp.corp.local:8444", 403, "target_not_allowed", id="A02-port-8444"),
    pytest.param("erp.corp.local.:8443", 400, "non_canonical_host", id="A04-dot"),
    pytest.param("user@erp.corp.local:8443", 400, "userinfo", id="A08-user"),
    pytest.param("erp.corp.local@evil.example:8443", 400, "userinfo", id="A08-at-evil"),
    pytest.param("erp%2ecorp.local:8443", 400, "percent_encoded_host", id="A10"),
    pytest.param("erp.corp.local:08443", 400, "invalid_port", id="A22-leading-zero"),
    pytest.param("erp.corp.local:+8443", 400, "invalid_port", id="A22-plus"),
    pytest.param("erp.corp.local:0", 400, "invalid_port", id="A22-zero"),
    pytest.param("erp.corp.local:65536", 400, "invalid_port", id="A22-65536"),
    pytest.param("erp.corp.local:-1", 400, "invalid_port", id="A22-minus-one"),
    # The address the name resolves to is not a declared host:port (nothing is resolved).
    pytest.param("10.1.2.3:8443", 403, "target_not_allowed", id="A02-ip-literal"),
    # A21: the selector has no scheme; a scheme where the selector goes is a malformed one.
    pytest.param("http:", 400, "invalid_port", id="A21-http"),
    pytest.param("file:", 400, "invalid_port", id="A21-file"),
    pytest.param("gopher:", 400, "invalid_port", id="A21-gopher"),
    pytest.param("ws:", 400, "invalid_port", id="A21-ws"),
]


@pytest.mark.parametrize(("selector", "status", "reason"), SELECTOR_REFUSALS)
async def test_A_selector_refusals_never_resolve_or_dial(
    env: PipelineEnv, selector: str, status: int, reason: str
) -> None:
    response = await env.send("GET", selector, "/api/orders")
    assert (response.status, response.reason_code) == (status, reason), response.body
    assert env.dns.calls == []
    env.assert_never_forwarded()


async def test_A12_only_permitted_addresses_are_dialled(env: PipelineEnv) -> None:
    # Forbidden answers first: a dial step that tried the resolver's answers in order without
    # filtering them would dial these before the permitted one (and the test would see it).
    env.dns.answers["erp.corp.local"] = ["169.254.169.254", "127.0.0.1", "10.1.4.5", ERP_ADDRESS]
    response = await env.send("GET", "erp", "/api/orders")
    assert response.status == 200, response.body
    env.forwarded_once()
    assert env.dialler.dialled == [(ERP_ADDRESS, 8443)]


@pytest.mark.parametrize(
    ("selector", "status", "reason"),
    [
        ("[fe80::1%25eth0]:8443", 401, None),
        ("erp.corp.local\\@evil:8443", 401, None),
        ("erp.corp.local: 8443", 400, "malformed_request"),
    ],
    ids=["A07-zone-id", "A08-backslash", "A22-space"],
)
async def test_A07_A08_A22_selectors_no_sender_can_sign_are_refused_earlier(
    env: PipelineEnv, selector: str, status: int, reason: str | None
) -> None:
    # Deliberate difference from the catalogue (400): RFC 9421 signs the request URL, and these
    # selectors make it an invalid URL ('[' outside the authority, a backslash, a space), so
    # neither the SaaS's signing library nor the gateway's verifier can build a signature base.
    # The gateway refuses them one step earlier, at authentication (401). A raw space is not even
    # a valid relay requestTarget: the listener answers it 400 'malformed_request' itself and
    # keeps its control channel. The outcome is the catalogue's: no resolution, no dial. The
    # canonicaliser's own 400 for each is pinned in tests/security/test_catalogue_a_b_c.py.
    async with env.saas() as saas:
        baseline = saas.signed_headers("GET", f"/{env.stack.hc}/erp/api/orders")
        response, _ = await saas.relay_json("GET", selector, "/api/orders", signed_headers=baseline)
    assert response.status == status, response.body
    if reason is not None:
        assert response.reason_code == reason
    assert env.dns.calls == []
    env.assert_never_forwarded()


@pytest.mark.parametrize("answer", ["169.254.169.254", "127.0.0.1", "168.63.129.16"])
async def test_A12_resolving_outside_allowed_cidrs_is_502(env: PipelineEnv, answer: str) -> None:
    env.dns.answers["erp.corp.local"] = [answer]
    response = await env.send("GET", "erp", "/api/orders")
    assert (response.status, response.reason_code) == (502, "resolved_address_not_allowed")
    assert env.dns.calls == ["erp.corp.local"]
    env.assert_never_forwarded()


async def test_A15_redirects_are_relayed_not_followed(env: PipelineEnv) -> None:
    env.erp.responder = fixed(response_bytes(307, headers=[("Location", "/admin")]))
    response = await env.send("GET", "erp", "/api/orders")
    assert response.status == 307
    assert response.headers["location"] == "/admin"
    assert [arrival.target for arrival in env.erp.arrivals] == ["/api/orders"]


# A17, A18, A20: only origin-form reaches the canonicaliser. After the selector, the on-prem
# request target always starts with '/', so an absolute URL or a network-path reference written
# there is an empty segment ('//'); written where the selector goes, its scheme is a malformed
# host:port; and the relay's requestTarget itself must lie under this Hybrid Connection.
TARGET_REFUSALS = [
    pytest.param("erp", "/http://evil.example/api/x", "empty_segment", id="A17-absolute"),
    pytest.param("erp", "/https://erp.corp.local:8443/api/x", "empty_segment", id="A17-self"),
    pytest.param("erp", "//evil.example/api/x", "empty_segment", id="A18-network-path"),
    pytest.param("https:", "//erp.corp.local:8443/api/x", "invalid_port", id="A17-as-selector"),
]


@pytest.mark.parametrize(("selector", "path", "reason"), TARGET_REFUSALS)
async def test_A17_A18_non_origin_forms_are_400(
    env: PipelineEnv, selector: str, path: str, reason: str
) -> None:
    response = await env.send("GET", selector, path)
    assert (response.status, response.reason_code) == (400, reason), response.body
    env.assert_never_forwarded()


@pytest.mark.parametrize(
    "request_target",
    ["http://evil.example/api/x", "https://erp.corp.local:8443/api/x", "//evil.example/x", "*"],
)
async def test_A17_A20_relay_targets_outside_the_hc_are_400(
    env: PipelineEnv, request_target: str
) -> None:
    response = await env.deliver("OPTIONS", request_target)
    # Refused by the listener before the pipeline: not origin-form (answered 400
    # 'malformed_request'), or not addressed to this Hybrid Connection (400). Never a dropped
    # control channel.
    assert response.status == 400, response
    env.assert_never_forwarded()


async def test_A19_connect_is_405_and_nothing_is_dialled(env: PipelineEnv) -> None:
    # The relay's HTTP front door never relays CONNECT (protocol notes section 3.2) ...
    async with env.saas() as saas:
        front, _ = await saas.request("CONNECT", "erp.corp.local:22", "")
        # ... and if a relay did, the gateway refuses the method before looking at the target.
        relayed, _ = await saas.relay_json(
            "CONNECT",
            "erp.corp.local:22",
            "",
            signed_headers=saas.signed_headers("CONNECT", f"/{env.stack.hc}/erp.corp.local:22"),
        )
    assert front.status in (400, 404)
    assert (relayed.status, relayed.reason_code) == (405, "method_not_allowed")
    env.assert_never_forwarded()


async def test_A21_the_file_scheme_is_used_never_a_requested_one(env: PipelineEnv) -> None:
    # Selecting by host:port carries no scheme; the entry's https is used (the stand-in only
    # speaks TLS, so an arrival proves there was no downgrade).
    response = await env.send("GET", "erp.corp.local:8443", "/api/orders")
    assert response.status == 200
    env.forwarded_once()


async def test_A23_proxy_environment_is_ignored_for_on_prem_requests(
    env: PipelineEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.read(1024))
        writer.close()

    recorder = await asyncio.start_server(record, "127.0.0.1", 0)
    port = recorder.sockets[0].getsockname()[1]
    try:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{port}")
        response = await env.send("GET", "erp", "/api/orders")
    finally:
        recorder.close()
        await recorder.wait_closed()
    assert response.status == 200
    env.forwarded_once()
    assert seen == []


class _Refusals(logging.Handler):
    """Counts the listener's ``bad_rendezvous_address`` log lines and wakes a waiting test."""

    def __init__(self, wanted: int) -> None:
        super().__init__(logging.WARNING)
        self.wanted = wanted
        self.lines: list[str] = []
        self.done = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "bad_rendezvous_address" in text:
            self.lines.append(text)
            if len(self.lines) >= self.wanted:
                self.done.set()


@pytest.mark.parametrize(
    "scheme_and_host",
    ["ws://127.0.0.1:{decoy}", "wss://127.0.0.1:{decoy}", "ws://127.0.0.2:{relay}"],
    ids=["other-endpoint-no-tls", "other-endpoint-tls", "other-host"],
)
async def test_A24_foreign_rendezvous_addresses_are_never_dialled(
    env: PipelineEnv, scheme_and_host: str
) -> None:
    # Only loopback decoys: a listener that wrongly dialled would reach them, not the internet.
    dialled: list[bytes] = []

    async def decoy_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dialled.append(await reader.read(4096))
        writer.close()

    decoy = await asyncio.start_server(decoy_handler, "127.0.0.1", 0)
    decoy_port = decoy.sockets[0].getsockname()[1]
    base = scheme_and_host.format(decoy=decoy_port, relay=env.stack.relay.port)
    address = f"{base}/$hc/{env.stack.hc}?sb-hc-action=accept&sb-hc-id=x&sb-hc-rdv=secret"
    refusals = _Refusals(wanted=2)
    logger = logging.getLogger("gateway.relay")
    logger.addHandler(refusals)
    try:
        await env.stack.relay.deliver_command(
            env.stack.hc, AcceptCommand(address=address, id="x", connect_headers={})
        )
        await env.stack.relay.deliver_command(
            env.stack.hc,
            RendezvousRequestCommand(address=address.replace("accept", "request"), id="y"),
        )
        async with asyncio.timeout(60):
            await refusals.done.wait()
    finally:
        logger.removeHandler(refusals)
        decoy.close()
        await decoy.wait_closed()
    assert dialled == []
    # The rendezvous secret is a credential: refusing the address must not log it.
    assert not any("sb-hc-rdv=secret" in line for line in refusals.lines)
    env.assert_never_forwarded()


@pytest.mark.parametrize(
    ("selector", "path", "reason"),
    [
        ("payroll", "", "unknown_target"),
        ("dc1.corp.local:637", "", "target_not_allowed"),
        ("ldap", "/admin", "path on a tcp target"),
        ("erp", "", "no websocket operation"),
    ],
)
async def test_A25_streams_the_allow_list_does_not_grant_are_403_before_dialling(
    env: PipelineEnv, selector: str, path: str, reason: str
) -> None:
    async with env.saas() as saas:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await saas.stream(selector, path)
    # The relay carries the gateway's reason in the handshake's status text, which the
    # WebSocket client does not expose; the status is the observable part.
    assert caught.value.status == 403, reason
    env.assert_never_forwarded()
