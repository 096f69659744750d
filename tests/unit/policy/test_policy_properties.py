"""Property tests: allowed implies a declared operation matches; encodings of a denied path never
pass. The canonicaliser, the input builder and the embedded engine are the real ones; the oracle
is gateway.config.patterns.PathPattern, which the policy must agree with."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import LoadedConfig
from gateway.config.patterns import PathPattern
from gateway.forward.canonical import CanonicalRequest, RequestRejected, canonicalise
from gateway.policy.engine import Decision, PolicyEngine
from gateway.policy.input import build_input
from gateway.policy.loader import build_engine
from tests.unit.policy.conftest import SHIPPED_POLICIES, config_text

SEGMENTS = st.sampled_from(
    [
        "api",
        "API",
        "apiadmin",
        "api-internal",
        "orders",
        "events",
        "x",
        "admin",
        "%41",
        "%2e",
        "%2E%2e",
        "..",
        ".",
        "%2F",
        "%5c",
        "a%00",
        "%C0%AE",
        "%FF",
        "",
        ";x",
        "a;b",
        "~u",
        "%7E",
    ]
)
METHODS = st.sampled_from(["GET", "POST", "DELETE", "HEAD", "get", "PATCH"])


def _setup() -> tuple[LoadedConfig, PolicyEngine]:
    import tempfile
    from pathlib import Path

    from gateway.config import load

    directory = Path(tempfile.mkdtemp())
    path = directory / "gateway.yaml"
    path.write_text(config_text([SHIPPED_POLICIES]), encoding="utf-8")
    loaded = load(path, check_host=False)
    return loaded, build_engine(loaded)


LOADED, ENGINE = _setup()


def _decide(
    method: str, raw_path: str, websocket: bool = False
) -> tuple[CanonicalRequest, Decision] | None:
    try:
        request = canonicalise(
            LOADED.config,
            method=method,
            target="erp",
            request_target=raw_path,
            headers=[],
            websocket=websocket,
        )
    except RequestRejected:
        return None
    return request, asyncio.run(ENGINE.decide(build_input(request, signed=True, keyid="k")))


@settings(max_examples=300, deadline=None)
@given(METHODS, st.lists(SEGMENTS, max_size=4), st.booleans(), st.booleans())
def test_allowed_implies_a_declared_operation_matches(
    method: str, segments: list[str], trailing: bool, websocket: bool
) -> None:
    raw = "/" + "/".join(segments) + ("/" if trailing and segments else "")
    outcome = _decide(method, raw, websocket)
    if outcome is None or not outcome[1].allow:
        return
    request, decision = outcome
    operations = LOADED.config.targets["erp"].operations
    granting = [
        op
        for op in operations
        if request.method in op.methods
        and (op.websocket or not request.websocket)
        and any(
            PathPattern.parse(p).matches(request.segments, request.trailing_slash) for p in op.paths
        )
    ]
    assert [op.name for op in granting] == [decision.operation]
    # The string the policy judged is the string that would be forwarded, and it is stable.
    again = canonicalise(
        LOADED.config,
        method=method,
        target="erp",
        request_target=request.path,
        headers=[],
        websocket=websocket,
    )
    assert again.path == request.path


ENCODINGS_OF_ADMIN = st.builds(
    lambda prefix, admin, suffix: prefix + admin + suffix,
    st.sampled_from(
        [
            "/",
            "/api/../",
            "/api/%2e%2e/",
            "/api/..%2f",
            "/api/%2E%2E/",
            "//",
            "/api/./../",
            "/api\\..\\",
            "/api%2f..%2f",
            "/API/../",
            "/%2e/",
        ]
    ),
    st.sampled_from(["admin", "%61dmin", "ADMIN", "adm%69n", "admin%00", "admin;x"]),
    st.sampled_from(["", "/", "?x=1", "#frag", "%2f"]),
)


@settings(max_examples=200, deadline=None)
@given(ENCODINGS_OF_ADMIN)
def test_no_encoding_of_a_denied_path_is_allowed(raw: str) -> None:
    outcome = _decide("GET", raw)
    assert outcome is None or not outcome[1].allow
