"""What the multi-process benchmarks share: child processes that announce ``ready``, process CPU
and memory from ``/proc``, and one timed load sample.

Each benchmark runs its components (relay emulator, listeners, targets, the gateway) as separate
processes so that the CPU of the component under test can be read on its own.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


async def until_terminated() -> None:
    """Wait for SIGINT or SIGTERM (the parent stops its children this way)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


@dataclass
class Child:
    """A started child process and the words after ``ready`` on its stdout."""

    name: str
    process: asyncio.subprocess.Process
    values: list[str] = field(default_factory=list)


async def start_child(
    name: str,
    argv: Sequence[str],
    *,
    step: float,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    errors: Path | None = None,
) -> Child:
    """Start ``argv`` and wait up to ``step`` seconds for its ``ready`` line (stderr to
    ``errors`` when given)."""
    if errors is not None:
        with errors.open("ab") as sink:
            process = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=sink, env=env, cwd=cwd
            )
    else:
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, env=env, cwd=cwd
        )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(step):
            while True:
                line = (await process.stdout.readline()).decode().strip()
                if not line:
                    raise RuntimeError(f"{name} exited before it was ready")
                if line.startswith("ready"):
                    return Child(name, process, line.split()[1:])
    except BaseException:
        process.kill()
        await process.wait()
        raise


async def stop_processes(processes: Sequence[asyncio.subprocess.Process], grace: float) -> None:
    """Terminate every process (by its own pid) and reap it, killing after ``grace`` seconds."""
    for process in processes:
        if process.returncode is None:
            process.terminate()
    for process in processes:
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            process.kill()
            await process.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a whole process (all threads), from ``/proc/PID/stat``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # Fields 14 and 15 of proc(5) (utime, stime); the list starts at field 3.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB (``VmRSS`` of ``/proc/PID/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS missing from /proc status")


@dataclass
class Sample:
    """One timed run of one path at one concurrency."""

    requests: int
    errors: int
    seconds: float
    latencies: list[float]
    cpu: float | None  # CPU seconds of the process under test during the run

    @property
    def rate(self) -> float:
        """Completed requests per second."""
        return self.requests / self.seconds

    def percentile(self, fraction: float) -> float:
        """Nearest-rank percentile latency, in seconds."""
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    @property
    def cpu_per_request(self) -> float | None:
        """CPU microseconds of the process under test per completed request."""
        return None if self.cpu is None or not self.requests else self.cpu / self.requests * 1e6


NOTES_HEADING = "## Notes"


def write_report(path: Path, report: str) -> None:
    """Write ``report`` to ``path``; hand-written analysis below the figures (from
    :data:`NOTES_HEADING` on) in the existing file survives a re-run."""
    previous = path.read_text() if path.exists() else ""
    notes = previous.find("\n" + NOTES_HEADING)
    path.write_text(report + (previous[notes:] if notes >= 0 else ""))
