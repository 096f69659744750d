"""Fault injection figures: requests lost, forwarded twice or forwarded unauthorised, reconnect
times and recovery, for every fault scenario in tests/faults/scenarios.py.

``python benchmarks/faults.py`` runs the short forms (the ones CI runs, about a minute);
``python benchmarks/faults.py --long`` runs longer forms (minutes of load, more faults) and
writes benchmarks/faults-report.md. Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import platform
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.faults import scenarios  # noqa: E402 - after the path set-up above
from tests.faults.scenarios import Figures  # noqa: E402

REPORT = ROOT / "benchmarks" / "faults-report.md"
Scenario = Callable[[Path], Awaitable[Figures]]
METHOD = (
    "Every scenario runs the whole product on loopback: relay emulator -> in-process gateway "
    "(`gateway.service.Agent`) -> recording sample targets, with signed SaaS traffic. Faults come "
    "from the emulator's knobs, an in-process TCP fault proxy (tests/faults/faultproxy.py: as the "
    "gateway's outbound proxy for relay traffic, or in front of a target), the resolver seam, the "
    "OPA stand-in's knobs, `/dev/full` as the decision log, and a SaaS clock offset."
)
DEFINITIONS = (
    "Definitions: *lost* = the relay accepted the request and the SaaS never got an HTTP answer; "
    "*duplicates* = requests the target received more than once (unique `rid` query parameter); "
    "*unauthorised* = requests for `/api/admin/...` (never granted) that reached the target; "
    "*relay_5xx* = the relay's own 502/504 (no listener connected, or the listener it chose went "
    "away); *not_accepted* = the relay's front door was down; *recovered_after* = seconds until "
    "the same agent answered 200 again once the fault was cleared; reconnect times run from the "
    "fault until every control channel is connected again."
)


def plan(long: bool) -> list[Scenario]:
    """The scenarios with their short (CI) or long parameters."""
    k = 8 if long else 1
    return [
        lambda d: scenarios.relay_drops(d, seconds=8 * k, rate=40 if not long else 100, every=1.5),
        lambda d: scenarios.blackholed_relay(d, rate=5 * k),
        lambda d: scenarios.token_expiry(d, rate=20 * (2 if long else 1), rounds=2 * k),
        lambda d: scenarios.relay_restart(d, downtime=1.0 * (5 if long else 1), rate=10 * k),
        lambda d: scenarios.target_faults(d, requests=3 * k),
        lambda d: scenarios.dns_faults(d, requests=3 * k),
        lambda d: scenarios.opa_faults(d, requests=3 * k),
        lambda d: scenarios.audit_disk_full(d, rate=20 * k, seconds=1.5 * k),
        lambda d: scenarios.clock_skew(d, offset=180, requests=3 * k),
    ]


async def run(long: bool) -> list[tuple[Figures, float]]:
    """Run every scenario in a fresh directory; (figures, seconds) each."""
    results: list[tuple[Figures, float]] = []
    for scenario in plan(long):
        with tempfile.TemporaryDirectory(prefix="gateway-faults-") as directory:
            started = time.monotonic()
            figures = await scenario(Path(directory) / "gw")
            results.append((figures, time.monotonic() - started))
            print(f"{figures.line()}  ({results[-1][1]:.1f} s)", flush=True)
    return results


def _cell(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
    return "-" if value is None else str(value)


def write_report(results: Sequence[tuple[Figures, float]], command: str) -> None:
    """benchmarks/faults-report.md: one table per scenario plus the totals."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Fault injection: what the gateway does when things break",
        "",
        f"Command: `{command}`  ",
        f"Measured: {now}  ",
        f"Machine: {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}",
        "",
        *textwrap.wrap(METHOD, width=96),
        "",
        *textwrap.wrap(DEFINITIONS, width=96),
        "",
    ]
    totals = {"lost": 0, "duplicates": 0, "unauthorised": 0, "truncated_200": 0}
    for figures, seconds in results:
        lines += [
            f"## {figures.scenario} ({seconds:.1f} s)",
            "",
            "| figure | value |",
            "| --- | --- |",
        ]
        for key, value in figures.values.items():
            lines.append(f"| {key} | {_cell(value)} |")
            if key in totals and isinstance(value, int):
                totals[key] += value
        lines.append("")
    lines += [
        "## Totals over all scenarios",
        "",
        "| figure | value |",
        "| --- | --- |",
        *(f"| {key} | {value} |" for key, value in totals.items()),
        "",
    ]
    REPORT.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {REPORT.relative_to(ROOT)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scenarios; with ``--long`` also write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--long", action="store_true", help="longer forms; writes the report")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    results = asyncio.run(run(args.long))
    if args.long:
        write_report(results, "python benchmarks/faults.py --long")
    broken = [
        figures.scenario
        for figures, _ in results
        if any(figures.values.get(key) for key in ("lost", "duplicates", "unauthorised"))
    ]
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
