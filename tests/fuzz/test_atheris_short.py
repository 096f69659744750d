"""A short coverage-guided fuzzing run in CI: every atheris target, eight seconds each.

The long form is ``python fuzz/run.py --seconds 600`` (see fuzz/run.py); this run starts from
the seeds and a fresh corpus so it behaves the same on every machine.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Tens of seconds: started first in a parallel run (tests/conftest.py).
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("atheris") is None,
        reason="atheris is not installed (pip install atheris; it is a dev extra)",
    ),
]


def test_fuzz_targets_hold_their_invariants_for_a_short_run(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "fuzz" / "run.py"),
            "--seconds",
            "8",
            "--corpus",
            str(tmp_path / "corpus"),
            "--artifacts",
            str(tmp_path / "artifacts"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "control:" in result.stdout
    assert "canonical:" in result.stdout
    assert "ldap:" in result.stdout
    assert not list((tmp_path / "artifacts").iterdir()), "libFuzzer wrote a finding"
