"""Bounded load and soak: a fixed request rate through relay emulator -> ``gateway run`` (its own
process) -> sample targets, sampling the gateway's RSS, open file descriptors and asyncio tasks
(see tests/soak/harness.py for the method).

``python benchmarks/soak.py --seconds 20`` is the short form (tests/soak runs the same);
``python benchmarks/soak.py --minutes 30`` runs longer and writes benchmarks/soak-report.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.soak.harness import SoakResult, soak, summary  # noqa: E402 - after the path set-up

REPORT = ROOT / "benchmarks" / "soak-report.md"


def write_report(result: SoakResult, command: str) -> None:
    """benchmarks/soak-report.md with the summary and every sample."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Soak: fixed-rate load through a separate `gateway run` process",
        "",
        f"Command: `{command}`  ",
        f"Measured: {now}  ",
        f"Machine: {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}",
        "",
        "| figure | value |",
        "| --- | --- |",
        *(f"| {key} | {value} |" for key, value in summary(result).items()),
        "",
        "Samples (seconds since the first sample, RSS MiB, open fds, asyncio tasks):",
        "",
        "| t s | RSS MiB | fds | tasks |",
        "| ---: | ---: | ---: | ---: |",
    ]
    origin = result.samples[0].at
    step = max(1, len(result.samples) // 60)
    for sample in result.samples[::step]:
        lines.append(
            f"| {sample.at - origin:.0f} | {sample.rss_kib / 1024:.1f} | {sample.fds} "
            f"| {sample.tasks} |"
        )
    REPORT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {REPORT.relative_to(ROOT)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run a soak (``--seconds`` or ``--minutes``); the long form writes the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--minutes", type=float, help="long form; writes the report")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--sample", type=float, default=2.0, help="seconds between samples")
    parser.add_argument("--stream-every", type=float, default=1.0)
    args = parser.parse_args(argv)
    seconds = args.minutes * 60 if args.minutes else args.seconds
    result = asyncio.run(
        soak(seconds, rate=args.rate, sample_every=args.sample, stream_every=args.stream_every)
    )
    for key, value in summary(result).items():
        print(f"{key}: {value}")
    if args.minutes:
        write_report(result, f"python benchmarks/soak.py --minutes {args.minutes:g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
