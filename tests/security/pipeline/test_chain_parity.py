"""``gateway explain`` and ``gateway run`` give the same verdict, because they run one chain.

Each request of the corpus is sent signed through the relay emulator to the running agent, and
the same request (the very header lines the listener received, signature fields included) is
given to ``gateway explain``. For every request the two must agree on: forwarded or refused, the
status and reason of a refusal, the decision-log result, reasons and stage, the policy input
document, and which header names reached the target (the rest are dropped).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.cli import main
from tests.security.pipeline.conftest import PipelineEnv

pytestmark = pytest.mark.asyncio(loop_scope="module")

AUDIT_FILE = "decisions.jsonl"


@pytest.fixture(scope="module")
def gateway_sections() -> dict[str, Any]:
    """The baseline sections plus a decision log to compare explain's verdict with."""
    return {
        "limits": {"request_timeout_seconds": 3, "connect_timeout_seconds": 1},
        "logging": {"audit_file": AUDIT_FILE},
    }


H = list[tuple[str, str]]

# (method, selector, path, headers): allowed ones, policy denials, refusals before the policy,
# and header drops (credentials the operation does not name, forwarding and hop-by-hop fields).
HTTP_CORPUS: list[tuple[str, str, str, H]] = [
    ("GET", "erp", "/api/orders", [("Accept", "application/json")]),
    ("GET", "erp", "/api/orders?x=1", [("X-Custom", "1"), ("Authorization", "Bearer t")]),
    ("GET", "erp", "/session/me", [("Authorization", "Bearer t"), ("Cookie", "sid=1")]),
    (
        "GET",
        "erp",
        "/api/orders",
        [("Forwarded", "for=1.2.3.4"), ("X-Forwarded-For", "1.2.3.4"), ("Via", "1.1 x")],
    ),
    ("GET", "erp", "/api/orders", [("Connection", "x-drop-me"), ("X-Drop-Me", "1")]),
    ("POST", "erp", "/api/orders", [("Content-Type", "application/json")]),
    ("GET", "erp.corp.local:8443", "/api/orders", []),
    ("DELETE", "erp", "/api/orders", []),
    ("GET", "erp", "/admin", []),
    ("GET", "erp", "/API/orders", []),
    ("GET", "erp", "/api", []),
    ("GET", "erp", "/api/a/b", []),
    ("POST", "erp", "/session/me", []),
    ("GET", "erp", "/api/../admin", []),
    ("GET", "erp", "/api/%2e%2e/admin", []),
    ("GET", "erp", "/api%2Fadmin", []),
    ("GET", "erp", "/api//orders", []),
    ("GET", "nowhere", "/api/orders", []),
    ("GET", "ldap", "/", []),
]


def explain(
    config: Path, method: str, selector: str, path: str, headers: H, **flags: Any
) -> list[str]:
    """The ``gateway explain --format json`` command line for one request (run in a thread, as
    the command runs its own event loop)."""
    args = ["explain", "-c", str(config), method, selector, path, "--format", "json"]
    for name, value in headers:
        args += ["-H", f"{name}: {value}"]
    if flags.get("websocket"):
        args.append("--websocket")
    args += ["--keyid", flags.get("keyid", "explain")]
    return args


def last_record(env: PipelineEnv) -> dict[str, Any]:
    """The newest decision-log record of the running agent."""
    lines = (env.config.parent / AUDIT_FILE).read_text(encoding="utf-8").splitlines()
    return dict(json.loads(lines[-1]))


@pytest.mark.parametrize(
    ("method", "selector", "path", "headers"),
    HTTP_CORPUS,
    ids=[f"{m}-{s}-{p}-{len(h)}" for m, s, p, h in HTTP_CORPUS],
)
async def test_explain_and_run_agree_on_every_http_request(
    env: PipelineEnv,
    capsys: pytest.CaptureFixture[str],
    method: str,
    selector: str,
    path: str,
    headers: H,
) -> None:
    request_target, _, query = path.partition("?")
    async with env.saas() as saas:
        response, sent = await saas.relay_json(
            method, selector, request_target, query=query, headers=headers
        )
    record = last_record(env)
    args = explain(env.config, method, selector, path, sent, keyid=str(record["keyid"]))
    code = await asyncio.to_thread(main, args)
    report = json.loads(capsys.readouterr().out)
    verdict = report["verdict"]
    # The verdict as the SaaS sees it.
    if verdict["forwarded"]:
        assert code == 0
        assert response.status == 200, response.body
        assert response.reason_code == ""
        arrival = env.forwarded_once()
        # The target sees exactly the fields explain says are forwarded, in that order (the
        # upstream client adds only the framing of the body it sends).
        names = [name.lower() for name, _ in arrival.headers if name.lower() != "content-length"]
        assert names == report["headers"]["forwarded"]
        assert set(report["headers"]["dropped"]).isdisjoint(names)
    else:
        assert code == 3
        assert (response.status, response.reason_code) == (verdict["status"], verdict["reason"])
        env.assert_never_forwarded()
    # The verdict as the decision log records it.
    assert (record["result"], record["reasons"], record["stage"]) == (
        verdict["result"],
        verdict["reasons"],
        verdict["stage"],
    )
    decision = report["decision"]
    assert record["operation"] == (decision["operation"] if decision else None)
    # The policy saw the same input document.
    if report["canonical"] is None:
        assert env.policy_inputs == []
    else:
        assert env.policy_inputs == [report["canonical"]]


STREAM_CORPUS: list[tuple[str, str]] = [
    ("ldap", ""),
    ("ldap", "/x"),
    ("erp", "/api/orders"),
    ("erp", "/admin"),
    ("nowhere", ""),
]


@pytest.mark.parametrize(("selector", "path"), STREAM_CORPUS)
async def test_explain_and_run_agree_on_every_stream(
    env: PipelineEnv, capsys: pytest.CaptureFixture[str], selector: str, path: str
) -> None:
    status = 101
    async with env.saas() as saas:
        try:
            socket = await saas.stream(selector, path)
        except aiohttp.WSServerHandshakeError as exc:
            status = exc.status
        else:
            await socket.close()
    record = last_record(env)
    keyid = str(record["keyid"])
    args = explain(env.config, "GET", selector, path or "/", [], websocket=True, keyid=keyid)
    code = await asyncio.to_thread(main, args)
    report = json.loads(capsys.readouterr().out)
    verdict = report["verdict"]
    assert code == (0 if verdict["forwarded"] else 3)
    assert status == (101 if verdict["forwarded"] else verdict["status"])
    assert record["reasons"][: len(verdict["reasons"])] == verdict["reasons"]
    if not verdict["forwarded"]:
        assert (record["result"], record["stage"]) == (verdict["result"], verdict["stage"])
    if report["canonical"] is not None:
        # The signed handshake carries fields of its own; the policy reads only the rest.
        live = dict(env.policy_inputs[-1])
        assert {k: v for k, v in live.items() if k != "header_names"} == {
            k: v for k, v in report["canonical"].items() if k != "header_names"
        }
