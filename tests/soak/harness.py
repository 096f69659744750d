"""Soak harness: fixed-rate load through relay emulator -> ``gateway run`` (its own process) ->
sample targets, sampling the gateway process's RSS, open file descriptors and asyncio tasks.

Load: ``rate`` signed requests per second (four in five allowed, one in five denied by policy)
plus a TCP stream opened, used and closed every ``stream_every`` seconds. Samples every
``sample_every`` seconds: RSS from ``/proc/PID/status``, descriptors from ``/proc/PID/fd``, and the
number of asyncio tasks of the gateway's event loop. The gateway exposes no task count itself, so
the gateway process is started through :func:`gateway_main`: it wraps the event-loop factories
so that the loop ``gateway run`` makes (uvloop's or asyncio's) writes ``len(asyncio.all_tasks())``
to a file once a second, then runs the unchanged ``gateway run`` command. "Flat" = the mean of
the last third of the samples is within a tolerance of the mean of the first third (after a
warm-up).

Used by tests/soak (short form) and benchmarks/soak.py (long form and report).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.auth import ReplayCache
from gateway.devkit.saas import SaaSClient
from gateway.devkit.stack import PERSON, PERSON_PASSWORD, DevStack
from gateway.identity import RegistrationSettings, register

ROOT = Path(__file__).resolve().parents[2]
TASKS_FILE_VARIABLE = "GATEWAY_SOAK_TASKS_FILE"


@dataclass
class Sample:
    """One observation of the gateway process."""

    at: float
    rss_kib: int
    fds: int
    tasks: int


@dataclass
class SoakResult:
    """Everything a soak run measured."""

    seconds: float
    rate: float
    samples: list[Sample] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    streams_ok: int = 0
    streams_failed: int = 0
    latencies: list[float] = field(default_factory=list)
    idle_before: Sample | None = None
    """The gateway before any load: its control channels up, nothing in flight."""
    idle_after: Sample | None = None
    """The gateway once the load ended and its descriptors settled (see ``settle``)."""

    def growth(self) -> dict[str, float]:
        """Mean of the last third minus mean of the first third, per measure."""
        third = max(1, len(self.samples) // 3)
        first, last = self.samples[:third], self.samples[-third:]

        def change(pick: str) -> float:
            before = statistics.fmean(getattr(s, pick) for s in first)
            after = statistics.fmean(getattr(s, pick) for s in last)
            return round(after - before, 1)

        return {"rss_kib": change("rss_kib"), "fds": change("fds"), "tasks": change("tasks")}


# --- the gateway process ------------------------------------------------------------------------


def gateway_main() -> int:
    """``gateway run --config ARGV[1]`` with a task-count sampler on its event loop.

    The sampler writes to the file named by the ``GATEWAY_SOAK_TASKS_FILE`` variable.
    """
    import gateway.cli

    config, tasks_file = sys.argv[1], os.environ[TASKS_FILE_VARIABLE]

    def sampling(factory: Callable[[], asyncio.AbstractEventLoop]) -> Callable[[], Any]:
        def new_event_loop() -> asyncio.AbstractEventLoop:
            loop = factory()

            def sample() -> None:
                # Written aside and renamed: a reader never sees the file empty mid-write.
                partial = Path(tasks_file + ".partial")
                partial.write_text(str(len(asyncio.all_tasks(loop))), encoding="ascii")
                partial.replace(tasks_file)
                loop.call_later(1.0, sample)

            loop.call_soon(sample)
            return loop

        return new_event_loop

    # `gateway run` makes its loop with the public factory of the loop it picks
    # (gateway.eventloop: uvloop's where installed, else asyncio's), looked up when it picks:
    # each is wrapped in this process so that whichever runs carries the sampler.
    asyncio.new_event_loop = sampling(asyncio.new_event_loop)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.new_event_loop = sampling(uvloop.new_event_loop)
    return gateway.cli.main(["run", "--config", config, "--allow-root", "--shutdown-grace", "2"])


def observe(pid: int, tasks_file: Path) -> Sample:
    """RSS, open descriptors and task count of process ``pid`` now."""
    status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    try:
        tasks = int(tasks_file.read_text(encoding="ascii") or 0)
    except (OSError, ValueError):
        tasks = -1
    return Sample(time.monotonic(), rss, fds, tasks)


# --- load ---------------------------------------------------------------------------------------


async def soak(
    seconds: float,
    *,
    rate: float,
    sample_every: float = 2.0,
    stream_every: float = 1.0,
    warmup: float = 3.0,
    keep: Path | None = None,
    max_in_flight: int | None = None,
    settle: float = 0.0,
) -> SoakResult:
    """Run the soak and return what it measured; with ``keep``, the gateway's directory (its
    configuration, policies and decision log) is copied there once the gateway has stopped.

    ``max_in_flight`` caps the requests outstanding at once: past it the sender waits for an
    answer instead of keeping to the rate. On a machine too busy for the rate, an open loop
    piles up requests, and with them connections and tasks the gateway legitimately holds;
    with the cap, what the samples measure is the same on any machine.

    With ``settle`` above 0, after the load the gateway's descriptors and asyncio tasks are
    watched for up to ``settle`` seconds until both are back at their counts before the load
    (``idle_after``): every descriptor and task a request or stream started must end once it
    ends and the forward's keep-alive connections expire. Counts sampled during the load depend
    on what is in flight at that instant, which on a busy machine is more; these do not."""
    result = SoakResult(seconds, rate)
    with tempfile.TemporaryDirectory(prefix="gateway-soak-") as work:
        directory = Path(work) / "gw"
        async with DevStack("soak-gateway") as stack:
            config = stack.write_gateway_dir(directory)
            await register(
                RegistrationSettings(
                    base_url=stack.controlplane.base_url,
                    state_dir=directory / "state",
                    gateway_id=stack.gateway_id,
                    ca_file=directory / "empowerid-ca.pem",
                ),
                username=PERSON,
                password=PERSON_PASSWORD,
            )
            ReplayCache.initialise(directory / "state")
            tasks_file = Path(work) / "tasks"
            log = (Path(work) / "gateway.log").open("wb")
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                "import sys; from tests.soak.harness import gateway_main; sys.exit(gateway_main())",
                str(config),
                cwd=ROOT,
                env={**os.environ, TASKS_FILE_VARIABLE: str(tasks_file)},
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
            try:
                # A bound for a busy machine, not a measure: it returns once both are up.
                async with asyncio.timeout(120):
                    await stack.relay.wait_for_listeners(stack.hc, 2)
                await _drive(
                    stack,
                    process.pid,
                    tasks_file,
                    result,
                    sample_every,
                    stream_every,
                    warmup,
                    max_in_flight,
                    settle,
                )
            finally:
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 15)
                except TimeoutError:
                    process.kill()
                    await process.wait()
                log.close()
            if keep is not None:
                shutil.copytree(directory, keep, ignore=shutil.ignore_patterns("state"))
    return result


async def _drive(
    stack: DevStack,
    pid: int,
    tasks_file: Path,
    result: SoakResult,
    sample_every: float,
    stream_every: float,
    warmup: float,
    max_in_flight: int | None,
    settle: float,
) -> None:
    # The task count is written once a second: read it only once it was written twice since the
    # listeners came up, so it counts the idle gateway's tasks, not those of its start.
    for _ in range(2):
        await _next_sample(tasks_file)
    before = result.idle_before = observe(pid, tasks_file)
    counter = itertools.count()
    pending: set[asyncio.Task[None]] = set()

    async def one(saas: SaaSClient) -> None:
        n = next(counter)
        path = f"/api/admin/{n}" if n % 5 == 0 else f"/api/accounts/{n}"
        started = time.perf_counter()
        try:
            response, _ = await saas.request("GET", "erp", path)
        except Exception:
            result.errors += 1
            return
        result.latencies.append(time.perf_counter() - started)
        result.statuses[response.status] += 1

    async def streams(saas: SaaSClient) -> None:
        while True:
            await asyncio.sleep(stream_every)
            try:
                async with asyncio.timeout(10):
                    socket = await saas.stream("directory")
                    try:
                        await socket.send_bytes(b"ping")
                        await socket.receive()
                    finally:
                        await socket.close()
                result.streams_ok += 1
            except Exception:
                result.streams_failed += 1

    async with stack.saas() as saas:
        stream_task = asyncio.create_task(streams(saas))
        started = time.monotonic()
        next_sample = started + warmup
        try:
            for index in itertools.count():
                due = started + index / result.rate
                now = time.monotonic()
                if due - started >= result.seconds:
                    break
                if now >= next_sample:
                    result.samples.append(observe(pid, tasks_file))
                    next_sample += sample_every
                await asyncio.sleep(max(0.0, due - now))
                if max_in_flight is not None and len(pending) >= max_in_flight:
                    await asyncio.wait(set(pending), return_when=asyncio.FIRST_COMPLETED)
                task = asyncio.create_task(one(saas))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)
            result.samples.append(observe(pid, tasks_file))
        finally:
            stream_task.cancel()
            await asyncio.gather(stream_task, return_exceptions=True)
    if settle > 0:
        deadline = time.monotonic() + settle
        while True:
            result.idle_after = after = observe(pid, tasks_file)
            settled = after.fds <= before.fds and after.tasks <= before.tasks
            if settled or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.5)


async def _next_sample(tasks_file: Path, within: float = 60.0) -> None:
    """Wait until the gateway has written its task count again (bounded; polled, since another
    process writes it)."""

    def written() -> int:
        try:
            return tasks_file.stat().st_mtime_ns
        except OSError:
            return 0

    first = written()
    deadline = time.monotonic() + within
    while written() == first and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)


def summary(result: SoakResult) -> dict[str, object]:
    """The figures of a run, for printing and the report."""
    first, last = result.samples[0], result.samples[-1]
    latencies = sorted(result.latencies)
    return {
        "duration_s": round(result.seconds),
        "rate_per_s": result.rate,
        "requests": sum(result.statuses.values()) + result.errors,
        "statuses": dict(sorted(result.statuses.items())),
        "errors": result.errors,
        "streams_ok": result.streams_ok,
        "streams_failed": result.streams_failed,
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2) if latencies else None,
        "rss_mib_first_last": f"{first.rss_kib / 1024:.1f} -> {last.rss_kib / 1024:.1f}",
        "fds_first_last": f"{first.fds} -> {last.fds}",
        "tasks_first_last": f"{first.tasks} -> {last.tasks}",
        "fds_max_under_load": max(sample.fds for sample in result.samples),
        "fds_idle_before_after": (
            f"{result.idle_before.fds} -> {result.idle_after.fds}"
            if result.idle_before is not None and result.idle_after is not None
            else None
        ),
        "tasks_idle_before_after": (
            f"{result.idle_before.tasks} -> {result.idle_after.tasks}"
            if result.idle_before is not None and result.idle_after is not None
            else None
        ),
        "growth_last_third_vs_first": result.growth(),
        "samples": len(result.samples),
    }
