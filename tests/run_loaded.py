"""Run test suites beside a CPU hog, so a test that depends on the machine's speed fails here and
not on a user's busy machine (``make test-loaded``; CI runs it after ``make test``).

One busy-looping process per core (at the lowest priority would hide the problem, so at normal
priority) runs for as long as pytest does; the hog is stopped however pytest ends. The exit code
is pytest's.

    python tests/run_loaded.py [PYTEST ARGS...]    # default: the security and pipeline suites
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The suites whose refusals and bounds a user relies on, run through the whole pipeline.
DEFAULT_SUITES = (
    "tests/security",
    "tests/integration/test_end_to_end.py",
    "tests/fuzz/test_fuzz_pipeline.py",
)
# A hog that outlives its runner would load the machine for ever: each one stops by itself.
MAX_HOG_SECONDS = 1800.0


def _spin(seconds: float) -> None:
    import time

    end = time.monotonic() + seconds
    value = 0
    while time.monotonic() < end:
        for _ in range(100_000):
            value = (value * 31 + 7) % 1_000_003


def main(argv: list[str]) -> int:
    """Start the hog, run pytest, stop the hog; return pytest's exit code."""
    cores = os.cpu_count() or 1
    context = multiprocessing.get_context("spawn")
    hogs = [
        context.Process(target=_spin, args=(MAX_HOG_SECONDS,), daemon=True) for _ in range(cores)
    ]
    for hog in hogs:
        hog.start()
    print(f"run_loaded: {cores} busy-looping processes beside pytest", flush=True)
    try:
        args = argv or list(DEFAULT_SUITES)
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
        return subprocess.run(command, cwd=ROOT, check=False).returncode
    finally:
        for hog in hogs:
            hog.terminate()
        for hog in hogs:
            hog.join(10)
            if hog.is_alive():
                hog.kill()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
