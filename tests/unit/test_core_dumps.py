"""`gateway register` and `gateway run` forbid core files before any secret is in the process."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

# The real entry point in a process of its own, with a core limit the test raised first (as a
# shell with `ulimit -c unlimited` or a service manager would); it prints the limit the verb
# left in place. A missing configuration ends either verb at once, after the limit was set.
_PROBE = """
import resource, sys
resource.setrlimit(resource.RLIMIT_CORE, (1 << 20, resource.getrlimit(resource.RLIMIT_CORE)[1]))
assert resource.getrlimit(resource.RLIMIT_CORE)[0] == 1 << 20
from gateway import cli
cli.main(sys.argv[1:])
print("core-limit", resource.getrlimit(resource.RLIMIT_CORE)[0])
"""


@pytest.mark.parametrize("verb", [["register", "--person", "svc-enrol"], ["run"]])
def test_the_secret_holding_verbs_leave_no_core_file(tmp_path: Path, verb: list[str]) -> None:
    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    if hard != resource.RLIM_INFINITY and hard < 1 << 20:
        pytest.skip("the hard core limit here is already below what the probe raises it to")
    missing = tmp_path / "absent.yaml"
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, verb[0], "-c", str(missing), *verb[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    [line] = [line for line in result.stdout.splitlines() if line.startswith("core-limit")]
    assert line == "core-limit 0", result.stderr
