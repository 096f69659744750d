"""Real ``gateway run`` processes with workers on one Hybrid Connection of the relay emulator.

A :class:`Fleet` is the development stack (relay emulator, control plane, sample targets), an
optional real ``redis-server`` (the replay store every gateway shares) and any number of gateway
installations registered with the same gateway id, each its own directory, state and process
(``python -m gateway run``, its supervisor and workers). The tests in this package and
benchmarks/bench_capacity.py drive it. Waits are bounded by generous timeouts and nothing here
measures time: a busy machine makes the runs slower, not different.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis
import yaml

from gateway.auth.replaystores import SQLITE_FILE, default_prefix
from gateway.auth.sqlitestore import SqliteReplayStore
from gateway.devkit.saas import SaaSClient, SaaSResponse
from gateway.devkit.stack import STATE_DIR, DevStack, demo_config
from gateway.observability.health import ENDPOINT_FILE, published_endpoint
from gateway.outbound.sessions import client_session
from tests.redisserver import PASSWORD, RedisServer

ROOT = Path(__file__).resolve().parents[3]
START_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0
_ids = itertools.count(1)


@dataclass
class Gateway:
    """One installation: its directory, configuration and ``gateway run`` process."""

    name: str
    directory: Path
    config: Path
    process: asyncio.subprocess.Process | None = None
    log_file: Path | None = None
    health_port: int | None = None
    """The operator endpoint's port, once this run published it (it listens on port 0)."""

    def published_port(self) -> int | None:
        """The operator endpoint's port if the supervisor has published it by now."""
        if self.health_port is None:
            address = published_endpoint(self.directory / STATE_DIR)
            self.health_port = None if address is None else int(address.rpartition(":")[2])
        return self.health_port

    async def start(self) -> None:
        """Start ``gateway run`` (supervisor and workers) with its log in the directory."""
        # A run that was killed leaves its address behind: this run publishes its own.
        (self.directory / STATE_DIR / ENDPOINT_FILE).unlink(missing_ok=True)
        self.health_port = None
        self.log_file = self.directory / "gateway.log"
        with self.log_file.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway",
                "run",
                "--config",
                str(self.config),
                "--allow-root",
                "--shutdown-grace",
                "20",
                cwd=ROOT,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the supervisor."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signum)

    async def wait(self, within: float = STOP_TIMEOUT) -> int:
        """The supervisor's exit code, within ``within`` s (killed, and the test fails, past it)."""
        assert self.process is not None
        try:
            async with asyncio.timeout(within):
                return await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise

    async def stop(self) -> int | None:
        """SIGTERM and wait (for clean-up; None if it was not running)."""
        if self.process is None or self.process.returncode is not None:
            return None if self.process is None else self.process.returncode
        self.signal(signal.SIGTERM)
        return await self.wait()

    async def get(self, page: str) -> tuple[int, str]:
        """GET an operator page: (status, body); (0, "") while nothing answers."""
        port = self.published_port()
        if port is None:
            return 0, ""
        try:
            async with (
                client_session(timeout=aiohttp.ClientTimeout(total=10)) as session,
                session.get(f"http://127.0.0.1:{port}/{page}") as response,
            ):
                return response.status, await response.text()
        except (aiohttp.ClientError, OSError, TimeoutError):
            return 0, ""

    async def readyz(self) -> dict[str, Any]:
        """The aggregated /readyz body ({} while nothing answers)."""
        status, body = await self.get("readyz")
        return json.loads(body) if status else {}

    async def wait_state(
        self, wanted: Callable[[dict[str, Any]], bool], within: float = START_TIMEOUT
    ) -> dict[str, Any]:
        """Poll /readyz until ``wanted`` holds for its body (the gateway exposes no event to
        wait on from another process); returns that body."""
        async with asyncio.timeout(within):
            while True:
                assert self.process is not None
                if self.process.returncode is not None:
                    raise AssertionError(f"{self.name} exited {self.process.returncode}")
                state = await self.readyz()
                if state and wanted(state):
                    return state
                await asyncio.sleep(0.2)

    async def wait_ready(self, workers: int, within: float = START_TIMEOUT) -> dict[str, Any]:
        """Wait until ``workers`` workers are ready; returns that /readyz body."""
        return await self.wait_state(lambda s: s.get("workers_ready") == workers, within)

    async def worker_pids(self) -> dict[int, int]:
        """The pid of each worker, from /readyz."""
        state = await self.readyz()
        return {w["worker"]: w["pid"] for w in state.get("workers", [])}

    def log_events(self) -> list[dict[str, Any]]:
        """Every JSON log line of the supervisor and its workers."""
        events: list[dict[str, Any]] = []
        if self.log_file is None or not self.log_file.exists():
            return events
        for line in self.log_file.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    events.append(entry)
        return events


@dataclass
class Outcome:
    """What happened to a batch of requests, by request id."""

    statuses: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def count(self) -> Counter[int]:
        """Requests per status (0: no HTTP answer at all)."""
        return Counter(self.statuses.values())


class Fleet:
    """The stack, the shared store and the gateways on one Hybrid Connection."""

    def __init__(self, work: Path, *, workers: int = 2, store: str = "redis") -> None:
        self.work = work
        self.workers = workers
        self.store = store
        self.stack = DevStack("fleet-gateway")
        self.redis: RedisServer | None = None
        self.gateways: list[Gateway] = []
        self.failures: dict[str, str] = {}
        self._exit = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Fleet:
        await self._exit.__aenter__()
        await self._exit.enter_async_context(self.stack)
        if self.store == "redis":
            self.redis = RedisServer(self.work / "redis")
            self.redis.directory.mkdir(parents=True, exist_ok=True)
            self.redis.start()
            self._exit.callback(self.redis.stop)
            # A Hybrid Connection that never accepted a request: no start barrier.
            client = redis.Redis(host="127.0.0.1", port=self.redis.port, password=PASSWORD)
            client.set(default_prefix(self.stack.hc) + "barrier", repr(-1e300))
            client.close()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for gateway in self.gateways:
            with contextlib.suppress(Exception):
                await gateway.stop()
        await self._exit.__aexit__(None, None, None)

    def document(self, gateways: int, *, workers: int | None = None) -> dict[str, Any]:
        """gateway.yaml for one installation of ``gateways`` on the HC."""
        document = demo_config(self.stack)
        document["workers"] = self.workers if workers is None else workers
        document["relay"]["gateways"] = gateways
        document["logging"] = {"level": "info", "format": "json", "audit_file": "decisions.log"}
        document["limits"] = {"request_timeout_seconds": 20}
        if self.store == "redis":
            assert self.redis is not None
            secret = self.work / "redis-password"
            secret.write_text(PASSWORD + "\n")
            secret.chmod(0o600)
            store = self.redis.replay_store({"file": str(secret)}, timeout_seconds=2)
        else:
            store = {"kind": "sqlite"}
        document["signatures"] = {"replay_store": store}
        return document

    async def add(self, gateways: int, *, workers: int | None = None) -> Gateway:
        """Prepare and register one more installation (not started)."""
        name = f"gw{len(self.gateways) + 1}"
        directory = self.work / name
        # Its operator endpoint listens on port 0 (demo_config), and publishes the port it got.
        document = self.document(gateways, workers=workers)
        config = self.stack.write_gateway_dir(directory, document=document)
        await self.stack.register_gateway(directory)
        if self.store == "sqlite":
            # A store that never accepted a request: no start barrier (see replaystores).
            SqliteReplayStore.initialise(directory / "state" / SQLITE_FILE)
        gateway = Gateway(name, directory, config)
        self.gateways.append(gateway)
        return gateway

    def rewrite(self, gateway: Gateway, change: dict[str, Any]) -> None:
        """Replace top-level sections of ``gateway``'s file (written whole, then renamed)."""
        document = yaml.safe_load(gateway.config.read_text())
        document.update(change)
        self.stack.write_gateway_dir(gateway.directory, document=document)

    def saas(self, *, timeout: float = 2 * START_TIMEOUT) -> SaaSClient:
        """A signing SaaS client (use with ``async with``).

        Its timeout is far beyond any relay deadline the tests set, so a request that a listener
        leaves unanswered ends with the relay's 504, never with the client giving up first (which
        two timers racing on a busy machine would otherwise decide).
        """
        base = self.stack.saas()
        return SaaSClient(
            http_base=base.http_base,
            ws_base=base.ws_base,
            namespace=base.namespace,
            hc=base.hc,
            send_token=base.send_token,
            signer=base.signer,
            timeout=timeout,
            relay=base.relay,
            gateway_id=base.gateway_id,
            ca_pem=base.ca_pem,
        )

    def arrivals(self, request_id: str) -> int:
        """How often the sample target received request ``request_id``."""
        marker = f"/api/accounts/{request_id}"
        return sum(1 for r in self.stack.targets.http_requests if r.path_qs.startswith(marker))

    async def send(
        self,
        saas: SaaSClient,
        request_id: str | None = None,
        *,
        query: str = "",
        signed_headers: list[tuple[str, str]] | None = None,
    ) -> tuple[str, SaaSResponse | None, list[tuple[str, str]]]:
        """One signed GET of ``/api/accounts/ID``: (id, response or None, headers sent)."""
        request_id = request_id or f"r{next(_ids)}-{os.getpid()}"
        try:
            response, sent = await saas.request(
                "GET", "erp", f"/api/accounts/{request_id}", query=query,
                signed_headers=signed_headers,
            )  # fmt: skip
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.failures[request_id] = f"{type(exc).__name__}: {exc}"
            return request_id, None, signed_headers or []
        return request_id, response, sent

    async def load(
        self, saas: SaaSClient, count: int, *, in_flight: int = 8, query: str = ""
    ) -> Outcome:
        """``count`` distinct signed requests, ``in_flight`` at a time."""
        outcome = Outcome()
        gate = asyncio.Semaphore(in_flight)

        async def one() -> None:
            async with gate:
                request_id, response, _ = await self.send(saas, query=query)
            if response is None:
                outcome.statuses[request_id] = 0
                outcome.errors[request_id] = self.failures.get(request_id, "no answer")
            else:
                outcome.statuses[request_id] = response.status
                outcome.reasons[request_id] = response.headers.get("x-gateway-reason", "")

        await asyncio.gather(*(one() for _ in range(count)))
        return outcome
