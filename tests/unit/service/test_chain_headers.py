"""The chain's header step under one revision: what goes upstream, and what ``gateway explain``
reports as kept from the target (``Verdict.dropped``), for the operations of two targets.

The chain derives each operation's forwardable names and each target's Host once per revision;
these checks hold the verdicts to the allow-list rules of :mod:`gateway.forward.headers`, with
the real embedded policy engine deciding.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml

from gateway.config import LoadedConfig, load
from gateway.pipeline import Chain, RequestFacts
from gateway.policy.loader import build_engine
from tests.unit.forward.configs import document

POLICIES = Path(__file__).resolve().parents[3] / "policies"


def _loaded() -> LoadedConfig:
    # The header policy tests' configuration (tests/unit/forward/configs.py), decided by the
    # repository's policies.
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "gateway.yaml"
        text = yaml.safe_dump({**document(), "policy": {"directories": [str(POLICIES)]}})
        path.write_text(text, encoding="utf-8")
        return load(path, check_host=False)


LOADED = _loaded()
CHAIN = Chain(LOADED.config, build_engine(LOADED))
RELAYED = [
    ("Accept", "application/json"),
    ("X-Api-Key", "k"),
    ("Authorization", "Bearer t"),
    ("Connection", "accept"),
    ("X-Forwarded-For", "10.0.0.1"),
    ("User-Agent", "EmpowerID"),
    ("Host", "evil.example"),
    ("Content-Type", "text/plain"),
]


@pytest.mark.parametrize(
    ("method", "selector", "sent", "dropped"),
    [
        (
            "GET",
            "erp",
            [("host", "erp.corp.local:8443"), ("content-type", "text/plain")],
            ("accept", "x-api-key", "authorization", "connection", "x-forwarded-for",
             "user-agent"),
        ),
        (
            "POST",
            "intranet",
            [
                ("host", "intranet.corp.local"),
                ("authorization", "Bearer t"),
                ("content-type", "text/plain"),
            ],
            ("accept", "x-api-key", "connection", "x-forwarded-for", "user-agent",
             "content-length"),
        ),
    ],
)  # fmt: skip
async def test_each_operation_forwards_its_own_allow_list(
    method: str, selector: str, sent: list[tuple[str, str]], dropped: tuple[str, ...]
) -> None:
    headers = [*RELAYED, ("Content-Length", "0")] if method == "POST" else RELAYED
    verdict = await CHAIN.decide(
        RequestFacts(method, selector, "/api/x", tuple(headers), body_size=0, keyid="k1")
    )
    assert verdict.refusal is None
    # Accept is named by Connection, so it is kept from the target like a hop-by-hop header; the
    # relayed Host is replaced by the target's (and so not reported as kept from it).
    assert list(verdict.headers) == sent
    assert verdict.dropped == dropped


async def test_a_refused_request_keeps_nothing_and_sends_nothing() -> None:
    verdict = await CHAIN.decide(RequestFacts("DELETE", "erp", "/api/x", tuple(RELAYED)))
    assert verdict.refusal is not None
    assert verdict.headers == ()
    assert verdict.dropped == ()
