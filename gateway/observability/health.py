"""The loopback HTTP endpoint for operators: ``/healthz``, ``/readyz`` and ``/metrics``.

``/healthz`` answers 200 while the process runs its event loop. ``/readyz`` answers 200 only while
the agent can serve: at least one relay listener online and a valid configuration and policy
loaded; otherwise 503 with the reasons, so a load balancer or an operator sees why.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.observability.metrics import Metrics


@dataclass
class Readiness:
    """What ``/readyz`` reports: ready, plus the facts behind it."""

    ready: bool
    reasons: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


# The supervisor of several workers answers by asking each of them (gateway.supervisor).
MetricsPage = Callable[[], Awaitable[bytes]]
ReadinessProbe = Callable[[], Readiness] | Callable[[], Awaitable[Readiness]]


class HealthServer:
    """Serves the three endpoints on ``host:port`` (normally 127.0.0.1).

    ``metrics`` is the agent's registry, or a coroutine function that renders the page;
    ``readiness`` returns the state, or a coroutine that does.
    """

    def __init__(self, metrics: Metrics | MetricsPage, readiness: ReadinessProbe) -> None:
        self._metrics = metrics
        self._readiness = readiness
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        """Bind and serve; ``self.port`` is the bound port (useful with port 0)."""
        app = web.Application(client_max_size=1024)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_page)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        answer = self._readiness()
        state = await answer if inspect.isawaitable(answer) else answer
        body = {"ready": state.ready, "reasons": state.reasons, **state.details}
        return web.Response(
            text=json.dumps(body, default=str),
            status=200 if state.ready else 503,
            content_type="application/json",
        )

    async def _metrics_page(self, request: web.Request) -> web.Response:
        metrics = self._metrics
        body = metrics.render() if isinstance(metrics, Metrics) else await metrics()
        return web.Response(body=body, headers={"Content-Type": Metrics.content_type})
