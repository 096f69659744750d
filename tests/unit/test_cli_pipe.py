"""A reader that stops reading (``gateway ... | head``) ends a command quietly."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gateway.cli import EXIT_BROKEN_PIPE


@pytest.mark.parametrize(
    "verb",
    [
        ["schema"],  # 50 kB: written while the command runs
        ["version"],  # a few lines: still buffered when the command returns
    ],
)
def test_a_closed_reader_ends_the_command_without_a_traceback(verb: list[str]) -> None:
    # The read end is closed before the command starts, so its first write meets a pipe nobody
    # reads, as `| head` leaves it once head has its lines.
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "gateway", *verb],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write)
    assert result.stderr == ""
    assert result.returncode == EXIT_BROKEN_PIPE
