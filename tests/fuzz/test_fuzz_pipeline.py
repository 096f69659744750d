"""The whole request chain under generated input: nothing reaches the target that the allow-list
does not grant, and what does reach it arrives once, exactly as judged.

The chain is the real one (:class:`gateway.pipeline.Pipeline`: signature check, canonicaliser,
header policy, embedded Rego engine, hardened forwarder) driven without relay sockets; the target
is a real HTTP server on 127.0.0.1 that records what it receives. The dial step resolves the
configured name to 10.1.2.3 and the ``redirect`` seam connects to the loopback target instead
(catalogue baseline fixture). Requests are signed like the SaaS signs them, with generated methods,
paths and extra header sets; each carries a unique ``rid`` query parameter so the target's record
can be matched to the request and duplicates counted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from http_message_signatures import HTTPMessageSignaturesException
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.auth import KeySet, ReplayCache, SignatureVerifier, VerifierSettings
from gateway.config import LoadedConfig, load
from gateway.config.patterns import PathPattern
from gateway.devkit.signing import RequestSigner, generate_key, key_entry, keyset_document
from gateway.forward.canonical import CanonicalRequest, RequestRejected, canonicalise
from gateway.forward.dial import IPAddress
from gateway.forward.headers import DEFAULT_FORWARDED
from gateway.observability.metrics import Metrics
from gateway.pipeline import AuditRecord, Pipeline, Runtime
from gateway.policy.loader import build_engine
from gateway.relay.handlers import RelayedRequest
from tests.fuzz.strategies import (
    HEADER_NAMES,
    header_sets,
    paths_near,
    request_methods,
    request_paths,
)

NAMESPACE = "relay.fuzz.invalid"
HC = "hc-agent-1"
POLICIES = Path(__file__).resolve().parents[2] / "policies"
OPERATIONS: list[dict[str, Any]] = [
    {"name": "read", "methods": ["GET", "HEAD"], "paths": ["/api/*", "/api/orders/**"]},
    {
        "name": "submit",
        "methods": ["POST"],
        "paths": ["/api/orders/", "/v1/*/a.b"],
        "headers": ["Authorization", "X-Api-Key"],
    },
    {"name": "remove", "methods": ["DELETE"], "paths": ["/api/orders/*"]},
]
PATTERNS = [text for operation in OPERATIONS for text in operation["paths"]]


def _load() -> LoadedConfig:
    document = {
        "version": 1,
        "gateway": {"id": "agent-1"},
        "empowerid": {"url": "https://tenant.empowerid.example"},
        "policy": {"directories": [str(POLICIES)]},
        "limits": {"request_timeout_seconds": 5, "connect_timeout_seconds": 2},
        "targets": {
            "erp": {
                "scheme": "http",
                "host": "erp.corp.local",
                "port": 8080,
                "allowed_cidrs": ["10.1.2.0/24"],
                "operations": OPERATIONS,
            }
        },
    }
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "gateway.yaml"
        path.write_text(yaml.safe_dump(document), encoding="utf-8")
        return load(path, check_host=False)


LOADED = _load()
ENGINE = build_engine(LOADED)
KEY = generate_key("ed25519")
KEYS = KeySet.from_document(
    keyset_document(
        [key_entry("saas-1", KEY, not_before=time.time() - 3600, not_after=time.time() + 86400)]
    )
)
SIGNER = RequestSigner(KEY, keyid="saas-1", gateway_id="agent-1")


async def resolve(host: str, port: int) -> Sequence[IPAddress]:
    """The catalogue's fake resolver: the configured name is 10.1.2.3."""
    return [ipaddress.ip_address("10.1.2.3")]


def granted(request: CanonicalRequest) -> str | None:
    """The operation the allow-list grants ``request`` by the pattern language alone."""
    for operation in LOADED.config.targets["erp"].operations:
        if request.method in operation.methods and any(
            PathPattern.parse(text).matches(request.segments, request.trailing_slash)
            for text in operation.paths
        ):
            return operation.name
    return None


class Recorder:
    """The on-prem target: records (rid, method, path, header names) of everything it receives."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str, frozenset[str]]] = []

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        names = frozenset(name.lower() for name in request.headers)
        self.seen.append(
            (request.query.get("rid", ""), request.method, request.rel_url.raw_path, names)
        )
        return web.Response(text="ok")


Case = tuple[str, str, list[tuple[str, str]], bytes]

# Mostly well-formed extra headers (so requests get as far as the forwarder and the header
# policy is what decides), sometimes the adversarial sets.
EXTRA_HEADERS: st.SearchStrategy[list[tuple[str, str]]] = st.one_of(
    st.just([]),
    st.lists(
        st.tuples(st.sampled_from(HEADER_NAMES), st.sampled_from(["1", "text/plain", "Bearer t"])),
        max_size=5,
        unique_by=lambda pair: pair[0].lower(),
    ),
    header_sets,
)
CASES = st.lists(
    st.tuples(
        request_methods,
        st.one_of(paths_near(PATTERNS), paths_near(PATTERNS), request_paths()),
        EXTRA_HEADERS,
        st.sampled_from([b"", b"", b"{}"]),
    ),
    min_size=1,
    max_size=12,
)


async def run_cases(cases: list[Case]) -> None:
    recorder = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]

    def redirect(address: IPAddress, _: int) -> tuple[str, int]:
        return "127.0.0.1", port

    runtime = Runtime.build(LOADED, ENGINE, resolver=resolve, redirect=redirect)
    verifier = SignatureVerifier(
        KEYS,
        ReplayCache(max_entries=10_000),
        gateway_id="agent-1",
        hc_path=HC,
        settings=VerifierSettings(max_age=60, max_skew=30),
    )
    audit: list[AuditRecord] = []
    pipeline = Pipeline(
        lambda: runtime,
        verifier,
        authority=NAMESPACE,
        hc_path=HC,
        metrics=Metrics(),
        audit=audit.append,
    )
    expected: dict[str, tuple[str, CanonicalRequest] | None] = {}
    statuses: dict[str, int] = {}
    try:
        for index, (method, raw, extra, body) in enumerate(cases):
            rid = str(index)
            path, _, query = raw.partition("?")
            query = f"{query}&rid={rid}" if query else f"rid={rid}"
            relay_path = f"/{HC}/erp{path}"
            try:
                # The signing package signs upper-case methods only; a lower-case method is then
                # a request altered after signing (catalogue B 46).
                signed = SIGNER.sign(
                    method=method.upper(),
                    authority=NAMESPACE,
                    path=relay_path,
                    query=query,
                    body=body or None,
                )
            except (ValueError, HTTPMessageSignaturesException):
                continue  # the signing package refuses this path: the SaaS could not send it
            try:
                canonical = canonicalise(
                    LOADED.config,
                    method=method,
                    target="erp",
                    request_target=f"{path}?{query}",
                    headers=[*signed, *extra],
                )
                operation = granted(canonical)
                expected[rid] = (operation, canonical) if operation else None
            except RequestRejected:
                expected[rid] = None
            response = await asyncio.wait_for(
                pipeline(
                    RelayedRequest(
                        request_id=rid,
                        method=method,
                        target=f"/erp{path}?{query}",
                        raw_target=f"{relay_path}?{query}",
                        headers=(*signed, *extra),
                        body=body,
                    )
                ),
                timeout=10,
            )
            statuses[rid] = response.status
    finally:
        # The engine is shared by every example; only this example's pools are closed.
        await runtime.upstream.close()
        await runtime.websockets.close()
        await runner.cleanup()

    counts = Counter(rid for rid, *_ in recorder.seen)
    assert all(count == 1 for count in counts.values()), f"forwarded twice: {counts}"
    assert len(audit) == len(statuses), "every request gets exactly one audit record"
    for rid, received_method, received_path, names in recorder.seen:
        grant = expected.get(rid)
        assert grant is not None, f"request {rid} reached the target without a grant"
        operation, canonical = grant
        assert received_method == canonical.method
        assert received_path == canonical.path
        allowed = DEFAULT_FORWARDED | {"host", "content-length"}
        allowed |= {
            name.lower()
            for op in LOADED.config.targets["erp"].operations
            if op.name == operation
            for name in op.headers
        }
        assert names <= allowed, f"headers outside the allow-list: {sorted(names - allowed)}"
    for rid, status in statuses.items():
        if rid in counts:
            event("forwarded")
            assert status == 200
        else:
            event("refused")
            assert status >= 400, f"request {rid} answered {status} without reaching the target"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CASES)
def test_only_granted_requests_reach_the_target_once_as_judged(cases: list[Case]) -> None:
    asyncio.run(run_cases(cases))
