"""Generated allow-lists: the real canonicaliser and embedded Rego engine decide exactly what the
allow-list says, no more and no less.

The oracle is :meth:`gateway.config.patterns.PathPattern.matches` applied to the operations of a
generated gateway.yaml (random patterns with ``*``, ``**`` and trailing slashes, random method
sets, WebSocket flags). For every generated request the pair "canonicaliser + engine" must allow it
if and only if the oracle grants it, and name the operation the oracle names. The existing
properties in tests/unit/policy fix one allow-list; here the allow-list itself is adversarial, so a
policy rule that only works for ``/api/*`` cannot pass.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from gateway.config import LoadedConfig, load
from gateway.config.model import Operation
from gateway.config.patterns import PathPattern
from gateway.errors import ConfigError
from gateway.forward.canonical import CanonicalRequest, RequestRejected, canonicalise
from gateway.policy.input import build_input
from gateway.policy.loader import build_engine
from tests.fuzz.strategies import operation_sets, paths_near, request_methods, request_paths

# Tens of seconds: started first in a parallel run (tests/conftest.py).
pytestmark = pytest.mark.slow

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def load_allow_list(operations: list[dict[str, Any]]) -> LoadedConfig | None:
    """gateway.yaml with ``operations`` on one HTTP target, loaded (None if it is refused)."""
    document = {
        "version": 1,
        "gateway": {"id": "agent-1"},
        "empowerid": {"url": "https://tenant.empowerid.example"},
        "policy": {"directories": [str(POLICIES)]},
        "targets": {
            "erp": {
                "scheme": "http",
                "host": "erp.corp.local",
                "port": 8080,
                "allowed_cidrs": ["10.1.2.0/24"],
                "operations": operations,
            }
        },
    }
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "gateway.yaml"
        path.write_text(yaml.safe_dump(document), encoding="utf-8")
        try:
            return load(path, check_host=False)
        except ConfigError:
            return None


def oracle(operations: list[Operation], request: CanonicalRequest) -> list[str]:
    """Names of the operations that grant ``request`` according to the pattern language alone."""
    return [
        operation.name
        for operation in operations
        if request.method in operation.methods
        and (operation.websocket or not request.websocket)
        and any(
            PathPattern.parse(text).matches(request.segments, request.trailing_slash)
            for text in operation.paths
        )
    ]


@st.composite
def requests_for(draw: st.DrawFn, operations: list[dict[str, Any]]) -> list[tuple[str, str, bool]]:
    """8 to 25 requests: most built near the allow-list's patterns, some from scratch."""
    patterns = [text for operation in operations for text in operation["paths"]]
    methods = [m for operation in operations for m in operation["methods"]]
    method = st.one_of(st.sampled_from(methods), request_methods)
    path = st.one_of(paths_near(patterns), paths_near(patterns), request_paths())
    return draw(st.lists(st.tuples(method, path, st.booleans()), min_size=8, max_size=25))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(st.data())
def test_engine_allows_exactly_what_the_allow_list_grants(data: st.DataObject) -> None:
    operations = data.draw(operation_sets(), label="operations")
    loaded = load_allow_list(operations)
    assume(loaded is not None)
    assert loaded is not None
    engine = build_engine(loaded)
    declared = loaded.config.targets["erp"].operations
    requests = data.draw(requests_for(operations), label="requests")

    async def decide_all() -> None:
        for method, path, websocket in requests:
            try:
                request = canonicalise(
                    loaded.config,
                    method=method,
                    target="erp",
                    request_target=path,
                    headers=[],
                    websocket=websocket,
                )
            except RequestRejected:
                event("refused by the canonicaliser")
                continue  # refused before policy: never forwarded
            decision = await engine.decide(build_input(request, signed=True, keyid="k"))
            granted = oracle(declared, request)
            event("allowed" if decision.allow else "denied by policy")
            assert decision.allow == bool(granted), (method, path, websocket, decision)
            if decision.allow:
                assert granted == [decision.operation]

    asyncio.run(decide_all())
