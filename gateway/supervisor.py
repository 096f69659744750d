"""``gateway run`` with ``workers`` > 1: a supervisor process and N worker processes.

Each worker is the whole agent (:class:`gateway.service.Agent`) in a process of its own, with its
own relay listeners, so the relay spreads requests over all of them (hybrid-connections-protocol,
"Load balancing": every listener of a Hybrid Connection is a candidate for each request) and each
uses its own CPU. What must happen once per host stays with one process: the supervisor checks a
new configuration once and moves every worker to it together, and serves ``/healthz``,
``/readyz`` and ``/metrics`` for the whole gateway on ``observability.listen``; worker 1 renews
the certificate (:class:`gateway.service.WorkerRole`).

Workers are started as ``python -m gateway run ... --worker I/N --worker-control FD``: the same
entry point and start-up checks as a gateway with one process, nothing inherited but the
environment and one end of a socket pair. Unlike a ``multiprocessing`` child, a worker is
exactly what an operator could run by hand, its exit code says why it stopped, native libraries
(the policy engine) are loaded fresh in it, and nothing of the supervisor's state is pickled.

The socket pair carries JSON lines. Worker to supervisor: ``started`` (pid, health port,
revision) and the answers below. Supervisor to worker: ``prepare`` (build the revision on disk,
which must be the one the supervisor checked, without serving it), then ``commit`` to every
worker only if all of them prepared the same revision, otherwise ``abort`` to those that did: all
workers move or none does, and a bad file keeps the last good revision everywhere. When the
supervisor goes away (even killed), its end of the pair closes and each worker drains and exits;
``stop`` asks a worker to drain (a second SIGTERM to the supervisor kills the workers).

A worker that exits is logged and started again after a back-off (1 s doubling to 30 s; back to
1 s once a worker ran a minute). SIGTERM drains every worker within the grace period.

Every worker starts from the release the supervisor runs, not from the files as they are now:
the supervisor captures the whole release (:mod:`gateway.release`: gateway.yaml's exact bytes,
the policy modules, the release signature and the trusted keys) when it starts, and again the one
it checked before each commit, writes it to ``supervisor-release.json`` (0600) in the state
directory, and starts each worker with that file and its revision (``--worker-snapshot``,
``--worker-revision``); the worker refuses to start when they differ, and reads its policies and
signature from the snapshot, never from the disk. A gateway.yaml, a policy or a signature saved
since, invalid, unsigned or just different, waits for the next reload instead of keeping a crashed
worker down or giving it another policy. A commit needs every worker to have prepared the policy
revision the supervisor captured and checked, so the snapshot is what they serve. A restart waits
for a running reload (and a reload for a starting worker), so no worker starts between the
prepare and the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from gateway import eventloop
from gateway.config import LoadedConfig, load
from gateway.errors import ConfigError, GatewayError
from gateway.filewatch import FileWatch
from gateway.observability.health import HealthServer, Readiness
from gateway.observability.metrics import Metrics
from gateway.outbound.sessions import client_session
from gateway.release import capture, write_snapshot
from gateway.service import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_START,
    Agent,
    AgentOptions,
    OperatorEndpoint,
    StartError,
    check_release,
    stop_on_signals,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# A control message is a few hundred bytes; anything longer is not from our peer.
MAX_MESSAGE_BYTES = 64 * 1024
# The running revision's configuration, in the state directory, for workers (re)started.
SNAPSHOT_FILE = "supervisor-release.json"
# The families the supervisor itself keeps (gateway.observability.metrics); workers have them at 0.
SUPERVISOR_FAMILIES = frozenset(
    {"gateway_workers_running", "gateway_worker_restarts", "gateway_worker_reloads"}
)


@dataclass
class SupervisorOptions:
    """How to run the workers. Timeouts bound every wait on a worker: a worker that does not
    answer in time counts as failed, never as a hang of the supervisor."""

    config_path: str
    count: int
    shutdown_grace: float = 30.0
    allow_root: bool = False
    event_loop: eventloop.Choice | None = None
    """Passed to each worker as ``--event-loop`` (the loop the supervisor itself picked, so all
    processes run one kind, whatever a reload has since written to ``event_loop``)."""
    env: Mapping[str, str] | None = None
    start_timeout: float = 300.0
    command_timeout: float = 120.0
    probe_timeout: float = 5.0
    backoff_initial: float = 1.0
    backoff_cap: float = 30.0
    stable_after: float = 60.0
    reload_poll_interval: float = 2.0


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    state: str = "starting"  # starting | running | restarting | stopped
    health_port: int | None = None
    revision: str | None = None
    policy_revision: str | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)
    replies: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    restarts: int = 0
    last_exit: int | None = None
    since: float = 0.0
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


class Supervisor:
    """Starts, watches, reloads and stops the worker processes of one gateway."""

    def __init__(self, options: SupervisorOptions) -> None:
        self.options = options
        self.metrics = Metrics()
        self.revision: str | None = None
        self.policy_revision: str | None = None
        self.reload_failures = 0
        self.reload_error: dict[str, str] | None = None
        self._workers = [_Worker(index) for index in range(1, options.count + 1)]
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._health: OperatorEndpoint | None = None
        self._session: aiohttp.ClientSession | None = None
        self._watch = FileWatch(options.config_path)
        # The running revision's exact configuration bytes, written 0600 to the state directory
        # for every worker started (gateway.service.WorkerRole.snapshot).
        self._snapshot: Path | None = None
        self._snapshot_revision: str | None = None

    @property
    def health_port(self) -> int | None:
        """The operator endpoint's port (useful with port 0), or None if it is off."""
        return self._health.server.port if self._health is not None else None

    def pids(self) -> dict[int, int]:
        """The process id of each running worker, by worker number."""
        return {
            w.index: w.process.pid
            for w in self._workers
            if w.process is not None and w.process.returncode is None
        }

    # --- start and stop --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker and wait until all are serving; raises :class:`StartError` with the
        first failing worker's exit code (the codes of a one-process ``gateway run``)."""
        seen = self._watch.state()
        try:
            loaded = capture(load(self.options.config_path, env=self.options.env))
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("%s", problem.render(), extra={"event": "config_invalid"})
            raise StartError("the configuration is invalid", EXIT_CONFIG) from None
        self._watch.follow(loaded, seen)
        try:
            self._keep(loaded)
        except OSError as exc:
            raise StartError(f"cannot write {SNAPSHOT_FILE}: {exc.strerror}", EXIT_START) from None
        self._session = client_session(
            timeout=aiohttp.ClientTimeout(total=self.options.probe_timeout)
        )
        for worker in self._workers:
            await self._launch(worker)
        waits = [self._first_start(worker) for worker in self._workers]
        codes = await asyncio.gather(*waits)
        failed = [code for code in codes if code is not None]
        if failed:
            raise StartError(f"a worker could not start (exit code {failed[0]})", failed[0])
        revisions = {(w.revision, w.policy_revision) for w in self._workers}
        self.revision, self.policy_revision = (
            self._workers[0].revision,
            self._workers[0].policy_revision,
        )
        self._count_running()
        if loaded.config.observability.enabled:
            self._health = OperatorEndpoint(
                HealthServer(self.metrics_page, self.readiness),
                loaded.resolve_path(loaded.config.gateway.state_dir),
            )
            await self._health.start(loaded.config.observability.listen)
        for worker in self._workers:
            self._spawn(self._supervise(worker), f"supervise-{worker.index}")
        self._spawn(self._watch_config(), "config-watch")
        if len(revisions) > 1:
            # The file changed while the workers started: bring them to one revision.
            self._spawn(self._reload_logged(), "start-reload")
        log.info(
            "gateway started with %d workers, revision %s",
            len(self._workers),
            self.revision,
            extra={"event": "workers_started", "pids": self.pids()},
        )

    async def stop(self) -> None:
        """Drain every worker (SIGTERM; each finishes its in-flight requests within the grace
        period), then stop serving the operator endpoint."""
        self._stopping.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for worker in self._workers:
            worker.state = "stopped"
            # Asked over the control channel rather than with SIGTERM: a service manager that
            # signals every process of the service (systemd's KillMode=control-group) already
            # sent each worker its SIGTERM, and a second one means "exit at once".
            if not self._tell(worker, {"type": "stop"}):
                self._signal(worker, signal.SIGTERM)
        deadline = self.options.shutdown_grace + 15.0
        await asyncio.gather(*(self._reap(w, deadline) for w in self._workers))
        if self._health is not None:
            await self._health.stop()
        if self._session is not None:
            await self._session.close()
        self._count_running()
        log.info("gateway stopped", extra={"event": "stopped"})

    def force(self) -> None:
        """A second stop signal: every worker exits at once too."""
        for worker in self._workers:
            self._signal(worker, signal.SIGKILL)

    def _keep(self, loaded: LoadedConfig) -> None:
        """Make ``loaded`` (a captured release) the one every worker started from now on runs;
        raises OSError."""
        state_dir = loaded.resolve_path(loaded.config.gateway.state_dir)
        self._snapshot = write_snapshot(state_dir, SNAPSHOT_FILE, loaded)
        self._snapshot_revision = loaded.revision

    @staticmethod
    def _tell(worker: _Worker, message: dict[str, Any]) -> bool:
        """Send ``message`` without waiting for an answer; False if the channel is gone."""
        if worker.writer is None or worker.writer.is_closing():
            return False
        try:
            worker.writer.write(json.dumps(message).encode() + b"\n")
        except (ConnectionError, RuntimeError):
            return False
        return True

    async def _reap(self, worker: _Worker, deadline: float) -> None:
        process = worker.process
        if process is None:
            return
        try:
            async with asyncio.timeout(deadline):
                await process.wait()
        except TimeoutError:
            log.error(
                "worker %d did not stop within %.0f s; killing it",
                worker.index,
                deadline,
                extra={"event": "worker_killed", "worker": worker.index},
            )
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        for task in list(worker.tasks):
            task.cancel()
        if worker.writer is not None:
            worker.writer.close()

    @staticmethod
    def _signal(worker: _Worker, signum: int) -> None:
        if worker.process is not None and worker.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signum)

    def _spawn(self, coro: Any, name: str, owner: set[asyncio.Task[Any]] | None = None) -> None:
        tasks = self._tasks if owner is None else owner
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    # --- one worker ------------------------------------------------------------------------------

    async def _launch(self, worker: _Worker) -> None:
        """Start worker ``worker``'s process with a fresh control channel."""
        ours, theirs = socket.socketpair()
        argv = [
            sys.executable,
            "-m",
            "gateway",
            "run",
            "--config",
            self.options.config_path,
            "--shutdown-grace",
            str(self.options.shutdown_grace),
            "--worker",
            f"{worker.index}/{len(self._workers)}",
            "--worker-control",
            str(theirs.fileno()),
        ]
        if self._snapshot is not None and self._snapshot_revision is not None:
            argv += [
                "--worker-snapshot",
                str(self._snapshot),
                "--worker-revision",
                self._snapshot_revision,
            ]
        if self.options.allow_root:
            argv.append("--allow-root")
        if self.options.event_loop is not None:
            argv += ["--event-loop", self.options.event_loop]
        try:
            # Its own session: a terminal's Ctrl-C reaches the supervisor only, which then stops
            # the workers once (a worker seeing both would take the second as "exit at once").
            worker.process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
                env=dict(self.options.env) if self.options.env is not None else None,
            )
        finally:
            theirs.close()
        reader, worker.writer = await asyncio.open_connection(sock=ours, limit=MAX_MESSAGE_BYTES)
        worker.state = "starting"
        worker.started = asyncio.Event()
        worker.replies = asyncio.Queue()
        worker.since = time.monotonic()
        self._spawn(self._read(worker, reader), f"worker-{worker.index}-read", worker.tasks)
        log.info(
            "worker %d started as pid %d",
            worker.index,
            worker.process.pid,
            extra={"event": "worker_spawned", "worker": worker.index, "pid": worker.process.pid},
        )

    async def _first_start(self, worker: _Worker) -> int | None:
        """Wait until ``worker`` serves; its exit code if it stopped (or hung) instead."""
        assert worker.process is not None
        if await _before_exit(worker.process, worker.started.wait(), self.options.start_timeout):
            return None
        code = worker.process.returncode
        if code is None:
            log.error(
                "worker %d did not start within %.0f s",
                worker.index,
                self.options.start_timeout,
                extra={"event": "worker_start_timeout", "worker": worker.index},
            )
            self._signal(worker, signal.SIGKILL)
            return EXIT_START
        return code if code > 0 else EXIT_START

    async def _read(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await reader.readline()
            except (ValueError, ConnectionError):
                return  # an over-long line or a reset: the process watch sees the rest
            if not line:
                return
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            if message.get("type") == "started":
                worker.health_port = _int(message.get("health_port"))
                worker.revision = _text(message.get("revision"))
                worker.policy_revision = _text(message.get("policy_revision"))
                worker.state = "running"
                worker.started.set()
                self._count_running()
            else:
                worker.replies.put_nowait(message)

    async def _supervise(self, worker: _Worker) -> None:
        """Restart ``worker`` whenever it exits, with back-off, until the supervisor stops."""
        delay = self.options.backoff_initial
        while not self._stopping.is_set():
            assert worker.process is not None
            code = await worker.process.wait()
            if self._stopping.is_set():
                return
            ran = time.monotonic() - worker.since
            worker.state = "restarting"
            worker.last_exit = code
            worker.restarts += 1
            worker.health_port = None
            self._count_running()
            self.metrics.worker_restarts.labels(worker=str(worker.index)).inc()
            if ran >= self.options.stable_after:
                delay = self.options.backoff_initial
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            log.error(
                "worker %d (pid %d) stopped with %s; restarting it in %.0f s",
                worker.index,
                worker.process.pid,
                how,
                delay,
                extra={"event": "worker_exited", "worker": worker.index, "code": code},
            )
            for task in list(worker.tasks):
                task.cancel()
            if worker.writer is not None:
                worker.writer.close()  # the dead worker's end of the control channel
                worker.writer = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            if self._stopping.is_set():
                return
            delay = min(delay * 2, self.options.backoff_cap)
            # Not while a reload runs: a worker started from the old snapshot while the others
            # move would miss the move (it was not running when they prepared). Waiting for the
            # reload to finish starts it from the new revision's snapshot.
            async with self._lock:
                await self._launch(worker)
                started = await self._first_start(worker) is None
            if started and worker.revision != self.revision:
                # Started from a file that changed since the running revision: move every worker
                # to it together, or stop this one until they can (the back-off applies).
                log.warning(
                    "worker %d started with revision %s, the others run %s",
                    worker.index,
                    worker.revision,
                    self.revision,
                    extra={"event": "worker_revision_mismatch", "worker": worker.index},
                )
                await self.reload()
                if worker.revision != self.revision:
                    self._signal(worker, signal.SIGTERM)

    def _count_running(self) -> None:
        running = sum(1 for w in self._workers if w.state == "running")
        self.metrics.workers_running.set(running)

    async def _request(
        self, worker: _Worker, message: dict[str, Any], expect: str
    ) -> dict[str, Any] | None:
        """Send ``message`` and wait for the answer of type ``expect``; None if the worker died,
        answered something else or took longer than ``command_timeout``."""
        if worker.process is None or not self._tell(worker, message):
            return None
        reply = await _before_exit(
            worker.process, worker.replies.get(), self.options.command_timeout
        )
        return reply if reply is not None and reply.get("type") == expect else None

    # --- reload ----------------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Check the file once, then move every running worker to it together (or none)."""
        async with self._lock:
            # Taken before the files are read: a change made meanwhile is one for the watch.
            seen = self._watch.state()
            self._watch.follow(None, seen)
            try:
                loaded, checked = await asyncio.to_thread(self._check)
            except ConfigError as exc:
                for problem in exc.problems:
                    log.error("%s", problem.render(), extra={"event": "reload_rejected"})
                first = exc.problems[0].render() if exc.problems else ""
                return self._reload_failed(f"the new configuration is invalid: {first}")
            except GatewayError as exc:
                return self._reload_failed(f"the new policy could not be built: {exc}")
            live = [w for w in self._workers if w.state == "running"]
            command = {"type": "prepare", "revision": loaded.revision}
            answers = await asyncio.gather(*(self._request(w, command, "prepared") for w in live))
            prepared = [
                (w, a) for w, a in zip(live, answers, strict=True) if a is not None and a.get("ok")
            ]
            revisions = {(a.get("revision"), a.get("policy_revision")) for _, a in prepared}
            if not live or len(prepared) < len(live) or len(revisions) != 1:
                why = _why_not(live, answers, revisions)
            elif revisions != {(loaded.revision, checked)}:
                # A file changed between the check and the workers' prepare: what they would
                # serve is not the release checked (and kept for workers started later).
                why = "the release changed on disk while it was being checked"
            else:
                why = None
            if why is not None:
                abort = {"type": "abort", "why": why}
                await asyncio.gather(*(self._request(w, abort, "aborted") for w, _ in prepared))
                return self._reload_failed(why)
            try:
                self._keep(loaded)
            except OSError as exc:
                why = f"cannot write {SNAPSHOT_FILE}: {exc.strerror}"
                abort = {"type": "abort", "why": why}
                await asyncio.gather(*(self._request(w, abort, "aborted") for w, _ in prepared))
                return self._reload_failed(why)
            for worker, _ in prepared:
                answer = await self._request(worker, {"type": "commit"}, "committed")
                if answer is not None:
                    worker.revision = _text(answer.get("revision"))
                    worker.policy_revision = _text(answer.get("policy_revision"))
            ((self.revision, self.policy_revision),) = revisions
            self._watch.follow(loaded, seen)
            self.reload_error = None
            self.metrics.worker_reloads.labels(result="ok").inc()
            log.info(
                "configuration reloaded in %d workers: revision %s",
                len(prepared),
                self.revision,
                extra={"event": "reloaded"},
            )
            return True

    def _check(self) -> tuple[LoadedConfig, str]:
        # What a worker would refuse, refused once here with the workers' own check
        # (check_release): the configuration, the files and proxy settings, the release
        # signature, and a policy that does not decide. The log then says why, not only that a
        # worker refused. The release is captured first, so what is checked is what is kept.
        loaded = capture(load(self.options.config_path, env=self.options.env))
        return loaded, check_release(loaded).revision

    def _reload_failed(self, why: str) -> bool:
        self.reload_failures += 1
        self.reload_error = {"error": why, "at": _iso_now()}
        self.metrics.worker_reloads.labels(result="failed").inc()
        log.error(
            "reload failed, every worker keeps revision %s: %s",
            self.revision,
            why,
            extra={"event": "reload_failed"},
        )
        return False

    async def _reload_logged(self) -> None:
        await self.reload()

    async def _watch_config(self) -> None:
        # The watched files and why only settled changes are reloaded: gateway.filewatch.
        while True:
            await asyncio.sleep(self.options.reload_poll_interval)
            if self._watch.poll():
                await self.reload()

    # --- the operator endpoint -------------------------------------------------------------------

    async def _ask(self, worker: _Worker, page: str) -> bytes | None:
        if worker.state != "running" or worker.health_port is None or self._session is None:
            return None
        url = f"http://127.0.0.1:{worker.health_port}/{page}"
        try:
            async with self._session.get(url) as response:
                return await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None

    async def readiness(self) -> Readiness:
        """Ready while at least one worker is; the body lists every worker, and a worker that is
        down or not ready makes the gateway ``degraded`` (it serves with fewer workers)."""
        pages = await asyncio.gather(*(self._ask(w, "readyz") for w in self._workers))
        workers: list[dict[str, Any]] = []
        degraded: list[str] = []
        reasons: list[str] = []
        states: list[dict[str, Any]] = []
        for worker, page in zip(self._workers, pages, strict=True):
            state = _json(page)
            ready = bool(state.get("ready"))
            entry: dict[str, Any] = {
                "worker": worker.index,
                "pid": worker.process.pid if worker.process else None,
                "state": worker.state,
                "ready": ready,
                "revision": worker.revision,
                "policy_revision": worker.policy_revision,
                "listeners_online": _int(state.get("listeners_online")) or 0,
                "restarts": worker.restarts,
            }
            if worker.last_exit is not None:
                entry["last_exit"] = worker.last_exit
            # Each worker heartbeats on its own (its own counters and decision-log chain), so
            # `gateway status` shows each one's last heartbeat and the head EmpowerID holds.
            for key in ("event_loop", "last_heartbeat", "heartbeat_error", "audit_head"):
                if key in state:
                    entry[key] = state[key]
            workers.append(entry)
            if ready:
                states.append(state)
                for item in state.get("degraded") or ():
                    degraded.append(f"worker {worker.index}: {item}")
                continue
            why = [str(r) for r in state.get("reasons") or ()] or [worker.state]
            degraded.append(f"worker {worker.index} is not serving ({'; '.join(why)})")
            reasons.extend(r for r in why if r not in reasons)
        ready_count = len(states)
        if self.reload_error is not None:
            degraded.append("the last reload was rejected; the previous revision still serves")
        details: dict[str, Any] = {
            # The supervisor's own loop; each worker's is in its entry (they are started with
            # the same --event-loop, see _launch).
            "event_loop": eventloop.in_use(),
            "workers_configured": len(self._workers),
            "workers_ready": ready_count,
            "listeners_online": sum(entry["listeners_online"] for entry in workers),
            "revision": self.revision,
            "policy_revision": self.policy_revision,
            "reload_failures": self.reload_failures,
        }
        if states:
            first = states[0]
            for key in ("mode", "policy_engine_ready", "last_heartbeat", "clock_skew"):
                if key in first:
                    details[key] = first[key]
        if self.reload_error is not None:
            details["reload_error"] = self.reload_error
        details["workers"] = workers
        details["degraded"] = degraded
        return Readiness(
            ready=ready_count > 0, reasons=[] if ready_count else reasons, details=details
        )

    async def metrics_page(self) -> bytes:
        """Every worker's metrics with a ``worker`` label, and the supervisor's own."""
        pages = await asyncio.gather(*(self._ask(w, "metrics") for w in self._workers))
        merged: dict[str, Metric] = {}
        for family in self.metrics.registry.collect():
            if family.name in SUPERVISOR_FAMILIES:
                merged[family.name] = family
        for worker, page in zip(self._workers, pages, strict=True):
            if page is None:
                continue
            try:
                families = list(text_string_to_metric_families(page.decode()))
            except (ValueError, UnicodeDecodeError):
                continue
            for family in families:
                if family.name in SUPERVISOR_FAMILIES:
                    continue
                target = merged.get(family.name)
                if target is None:
                    target = Metric(family.name, family.documentation, family.type)
                    merged[family.name] = target
                for sample in family.samples:
                    labels = {**sample.labels, "worker": str(worker.index)}
                    target.add_sample(sample.name, labels, sample.value)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(merged.values()))
        return generate_latest(registry)


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


async def _before_exit(
    process: asyncio.subprocess.Process, waited: Awaitable[T], within: float
) -> T | None:
    """What ``waited`` gives, or None when ``process`` exits first or ``within`` s pass."""
    wanted = asyncio.ensure_future(waited)
    exited = asyncio.ensure_future(process.wait())
    try:
        done, _ = await asyncio.wait(
            {wanted, exited}, timeout=within, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        wanted.cancel()
        exited.cancel()
    return wanted.result() if wanted in done else None


def _why_not(live: list[_Worker], answers: list[dict[str, Any] | None], revisions: set[Any]) -> str:
    if not live:
        return "no worker is running"
    for worker, answer in zip(live, answers, strict=True):
        if answer is None:
            return f"worker {worker.index} did not answer"
        if not answer.get("ok"):
            return f"worker {worker.index} refused it: {answer.get('error') or 'no reason'}"
    return f"the workers built different revisions ({len(revisions)})"


def _json(page: bytes | None) -> dict[str, Any]:
    if page is None:
        return {}
    try:
        document = json.loads(page)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())


# --- the worker's side ---------------------------------------------------------------------------


async def serve_worker(options: AgentOptions, control: socket.socket) -> int:
    """Run one worker: start the agent, report to the supervisor over ``control``, follow its
    reload commands, and drain on SIGTERM or when the supervisor goes away."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    stop_on_signals(stop)
    # The supervisor reloads every worker together; a SIGHUP sent to one worker would let it
    # move alone.
    loop.add_signal_handler(
        signal.SIGHUP,
        lambda: log.warning(
            "SIGHUP ignored: send it to the supervisor (it reloads every worker together)",
            extra={"event": "reload_ignored"},
        ),
    )
    reader, writer = await asyncio.open_connection(sock=control, limit=MAX_MESSAGE_BYTES)
    agent = Agent(options)
    try:
        await agent.start()
    except StartError as exc:
        log.error("cannot start: %s", exc, extra={"event": "start_failed"})
        await agent.stop()
        return exc.exit_code
    runtime = agent.runtime()
    _send(
        writer,
        {
            "type": "started",
            "pid": os.getpid(),
            "health_port": agent.health_port,
            "revision": runtime.revision,
            "policy_revision": runtime.engine.revision,
        },
    )
    commands = asyncio.ensure_future(_follow(agent, reader, writer, stop))
    await stop.wait()
    commands.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await commands
    await agent.stop()
    writer.close()
    return EXIT_OK


def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        writer.write(json.dumps(message).encode() + b"\n")


async def _follow(
    agent: Agent,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    stop: asyncio.Event,
) -> None:
    prepared = None
    while True:
        try:
            line = await reader.readline()
        except (ValueError, ConnectionError):
            line = b""
        if not line:
            # The supervisor is gone (stopped, killed or crashed): nobody restarts or reloads
            # this worker any more, so drain and exit rather than run unsupervised.
            if not stop.is_set():
                log.error("the supervisor is gone: draining", extra={"event": "supervisor_gone"})
                stop.set()
            return
        try:
            command = json.loads(line)
        except ValueError:
            continue
        kind = command.get("type") if isinstance(command, dict) else None
        if kind == "prepare":
            if prepared is not None:
                await agent.discard(prepared, "superseded by a newer reload")
            revision = command.get("revision")
            prepared = await agent.prepare_reload(revision if isinstance(revision, str) else None)
            answer: dict[str, Any] = {"type": "prepared", "ok": prepared is not None}
            if prepared is not None:
                answer["revision"] = prepared.revision
                answer["policy_revision"] = prepared.engine.revision
            else:
                error = agent.readiness().details.get("reload_error") or {}
                answer["error"] = error.get("error") if isinstance(error, dict) else None
            _send(writer, answer)
        elif kind == "commit" and prepared is not None:
            agent.commit_reload(prepared)
            prepared = None
            runtime = agent.runtime()
            _send(
                writer,
                {
                    "type": "committed",
                    "revision": runtime.revision,
                    "policy_revision": runtime.engine.revision,
                },
            )
        elif kind == "stop":
            if not stop.is_set():
                log.info("stop requested by the supervisor: draining", extra={"event": "draining"})
                stop.set()
        elif kind == "abort":
            if prepared is not None:
                why = command.get("why")
                await agent.discard(prepared, f"not every worker could move: {why}")
                prepared = None
            _send(writer, {"type": "aborted"})
