"""The embedded engine and the OPA engine decide every input alike (catalogue G).

Both engines are built from the same configuration and policy (the shipped one, and the shipped
one with the example extension), the OPA engine talking to the devkit OPA server over loopback.
Hypothesis draws inputs around the allow-list (known and unknown targets, every method, paths
that match, almost match or do not, streams, unsigned requests, extra fields the policy does
not read) and each must get the same decision from both, through ``decide`` (projection, the
wire format and the document check included). The devkit server evaluates with rego-cpp too,
so this is the agreement of the two engines' code paths, not of two Rego implementations.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import LoadedConfig, load
from gateway.devkit.opa_server import OpaServer
from gateway.policy.embedded import EmbeddedEngine
from gateway.policy.loader import load_policies
from gateway.policy.opa import OpaEngine
from tests.unit.policy.conftest import SHIPPED_POLICIES, config_text


def _with_path(document: dict[str, Any]) -> dict[str, Any]:
    """The input with ``path`` written from its segments, as the input builder does."""
    return {**document, "path": "/" + "/".join(document["path_segments"])}


_SEGMENT = st.sampled_from(["api", "orders", "events", "a", "API", "x y", "%C3%A9", "*", ""])
_INPUT = st.fixed_dictionaries(
    {
        "target": st.sampled_from(["erp", "directory", "ERP", "nope", ""]),
        "method": st.sampled_from(["GET", "POST", "PUT", "DELETE", "get", "OPTIONS"]),
        "path_segments": st.lists(_SEGMENT, max_size=4),
        "trailing_slash": st.booleans(),
        "websocket": st.booleans(),
        "signature": st.fixed_dictionaries(
            {"verified": st.booleans(), "keyid": st.sampled_from(["empowerid-2026", None])}
        ),
    },
    optional={
        "query": st.sampled_from(["x=1", "", None]),
        "header_names": st.lists(st.sampled_from(["accept", "authorization"]), max_size=2),
    },
).map(_with_path)


_GRANTED = {
    "target": "erp",
    "method": "POST",
    "path": "/api/orders",
    "path_segments": ["api", "orders"],
    "trailing_slash": False,
    "websocket": False,
    "query": "",
    "signature": {"verified": True, "keyid": "empowerid-2026"},
}


def _loaded(tmp_path: Path, *, extension: bool) -> LoadedConfig:
    directories = [SHIPPED_POLICIES]
    if extension:
        own = tmp_path / "own"
        own.mkdir(exist_ok=True)
        # A veto reading fields the built-in policy does not (the cache key and projection grow).
        (own / "corp.rego").write_text(
            "package gateway_extensions.corp\n\n"
            'deny contains "no_query_writes" if {\n'
            '\tinput.method != "GET"\n'
            '\tinput.query == "x=1"\n'
            "}\n",
            encoding="utf-8",
        )
        directories.append(own)
    path = tmp_path / "gateway.yaml"
    path.write_text(config_text(directories), encoding="utf-8")
    return load(path, check_host=False)


def _view(decision: Any) -> tuple[Any, ...]:
    return (decision.allow, decision.target, decision.operation, decision.reasons)


async def _compare(loaded: LoadedConfig, inputs: list[dict[str, Any]]) -> None:
    policies = load_policies(loaded)
    embedded = EmbeddedEngine(policies, mode="enforce", cache=None)
    async with OpaServer() as server:
        opa = OpaEngine(
            policies, url=server.url, timeout=5.0, mode="enforce", cache=None, sync_timeout=5.0
        )
        await opa.start()
        try:
            assert opa.ready, opa.status
            granted = await opa.decide(_GRANTED)
            assert (granted.allow, granted.operation) == (True, "read-orders")
            for document in inputs:
                here = await embedded.decide(document)
                there = await opa.decide(document)
                assert _view(here) == _view(there), document
        finally:
            await opa.close()


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(inputs=st.lists(_INPUT, min_size=1, max_size=25), extension=st.booleans())
def test_embedded_and_opa_engines_decide_alike(
    tmp_path: Path, inputs: list[dict[str, Any]], extension: bool
) -> None:
    shutil.rmtree(tmp_path / "own", ignore_errors=True)
    asyncio.run(_compare(_loaded(tmp_path, extension=extension), inputs))
