"""No request reaches a target twice, through the full pipeline.

The target keeps connections alive, as most servers do, and closes one the moment a request for
``/api/drop`` arrives on it: what the gateway sees when the target's idle timeout fires just as a
pooled connection is reused. The HTTP client would silently send GET, HEAD, OPTIONS, PUT and DELETE
again on a new connection; the gateway must answer 502 ``upstream_connection_lost`` instead, and
the target must have seen the request exactly once, for every method.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from gateway.config.model import METHODS
from tests.security.pipeline.conftest import PipelineEnv, keep_alive_pool, pool_target
from tests.security.pipeline.target import KeepAliveTarget

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def extra_targets() -> dict[str, Any]:
    """``pool``: the erp host on another port, every method granted on ``/api/*``."""
    return pool_target({"name": "all", "methods": sorted(METHODS), "paths": ["/api/*"]})


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def keep_alive(env: PipelineEnv) -> AsyncIterator[KeepAliveTarget]:
    """The keep-alive stand-in serving ``pool``."""
    async with keep_alive_pool(env) as server:
        yield server


@pytest.mark.parametrize("method", sorted(METHODS))
async def test_a_pooled_connection_that_fails_is_502_and_the_request_is_not_resent(
    env: PipelineEnv, keep_alive: KeepAliveTarget, method: str
) -> None:
    env.dialler.erp_override = ("127.0.0.1", keep_alive.port)
    keep_alive.reset()
    warm = await env.send("GET", "pool", "/api/warm")
    assert warm.status == 200, warm.body
    body = {"body": b"payload"} if method in ("POST", "PUT", "PATCH") else {}
    response = await env.send(method, "pool", "/api/drop", **body)
    assert (response.status, response.reason_code) == (502, "upstream_connection_lost")
    assert [a.method for a in keep_alive.arrivals if a.target == "/api/drop"] == [method]
