"""Capacity: requests per second and CPU per request with 1 and 2 workers, and with 1, 2 and 3
gateways on one Hybrid Connection, side by side in one run (issue 14 section 4).

Every layout runs real ``gateway run`` process trees (tests/integration/workers/harness.py) on the
relay emulator's Hybrid Connection with the replay memory in a real ``redis-server`` (the store
several gateways need; the same store for every layout, so the rows compare). The load is a
closed loop of signed GETs to the sample API, ``--in-flight`` at a time, ``--requests`` measured
after ``--warmup``. For each layout it reports:

- requests/s over the measured requests;
- gateway CPU per request: user + system time of every gateway process (supervisors and workers,
  from /proc/PID/stat) over the measured window, divided by the requests;
- the CPU the benchmark process itself used (relay emulator, SaaS client, sample target): on a
  small machine they compete with the gateways for the same cores, which caps requests/s.

Usage: ``.venv/bin/python benchmarks/bench_capacity.py [--requests 1500] [--in-flight 32]
[--json FILE]``. The report (benchmarks/capacity-report.md) explains the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.workers.harness import START_TIMEOUT, Fleet  # noqa: E402

# (gateways, workers per gateway): the layouts, plus both at once.
LAYOUTS = ((1, 1), (1, 2), (2, 1), (3, 1), (2, 2))
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    """One layout's figures."""

    gateways: int
    workers: int
    listeners: int
    requests: int
    ok: int
    seconds: float
    requests_per_second: float
    gateway_cpu_us_per_request: float
    harness_cpu_us_per_request: float
    gateway_cpu_cores: float


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of the processes ``pids`` (0 for one that is gone)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (proc(5), counted from state)
    return total / _TICKS


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(gateways: int, workers: int, requests: int, warmup: int, in_flight: int) -> Row:
    with tempfile.TemporaryDirectory(prefix="bench-capacity-") as work:
        async with Fleet(Path(work), workers=workers) as fleet:
            started = [await fleet.add(gateways) for _ in range(gateways)]
            await asyncio.gather(*(g.start() for g in started))
            pids: list[int] = []
            for gateway in started:
                state = await gateway.wait_state(
                    lambda s: (
                        s.get("ready") is True
                        and s.get("workers_ready", 1) == workers
                        and s.get("listeners_online") == 2 * workers
                    )
                )
                assert gateway.process is not None
                pids.append(gateway.process.pid)
                pids.extend(w["pid"] for w in state.get("workers", []))
            listeners = gateways * workers * 2
            async with asyncio.timeout(START_TIMEOUT):
                await fleet.stack.relay.wait_for_listeners(fleet.stack.hc, listeners)
            async with fleet.saas() as saas:
                await fleet.load(saas, warmup, in_flight=in_flight)
                gateway_before, own_before = cpu_seconds(pids), own_cpu()
                began = time.perf_counter()
                outcome = await fleet.load(saas, requests, in_flight=in_flight)
                seconds = time.perf_counter() - began
                gateway_cpu = cpu_seconds(pids) - gateway_before
                harness_cpu = own_cpu() - own_before
    return Row(
        gateways=gateways,
        workers=workers,
        listeners=listeners,
        requests=requests,
        ok=outcome.count()[200],
        seconds=round(seconds, 2),
        requests_per_second=round(requests / seconds, 1),
        gateway_cpu_us_per_request=round(gateway_cpu / requests * 1e6),
        harness_cpu_us_per_request=round(harness_cpu / requests * 1e6),
        gateway_cpu_cores=round(gateway_cpu / seconds, 2),
    )


def table(rows: list[Row]) -> str:
    lines = [
        "| gateways | workers each | listeners | requests/s | gateway CPU/request | "
        "harness CPU/request | gateway cores busy | ok |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row.gateways} | {row.workers} | {row.listeners} | {row.requests_per_second} | "
            f"{row.gateway_cpu_us_per_request} us | {row.harness_cpu_us_per_request} us | "
            f"{row.gateway_cpu_cores} | {row.ok}/{row.requests} |"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    for gateways, workers in LAYOUTS:
        row = await measure(gateways, workers, args.requests, args.warmup, args.in_flight)
        print(
            f"{gateways} gateway(s) x {workers} worker(s): {row.requests_per_second} req/s, "
            f"{row.gateway_cpu_us_per_request} us gateway CPU per request",
            file=sys.stderr,
            flush=True,
        )
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=1500, help="measured requests per layout")
    parser.add_argument("--warmup", type=int, default=200, help="requests before measuring")
    parser.add_argument("--in-flight", type=int, default=32, help="requests outstanding at once")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = asyncio.run(main_async(args))
    cpus = len(os.sched_getaffinity(0))
    print(f"machine: {cpus} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
