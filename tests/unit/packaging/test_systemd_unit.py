"""The systemd unit: ``systemd-analyze verify`` accepts it and the hardening stays in place."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
UNIT = ROOT / "packaging" / "systemd" / "gateway.service"
SYSUSERS = ROOT / "packaging" / "systemd" / "gateway.sysusers"
INSTALLED = "/opt/gateway/bin/gateway"


def _settings(text: str) -> dict[tuple[str, str], list[str]]:
    """``(section, key) -> values`` of a unit file (keys may repeat)."""
    section = ""
    found: dict[tuple[str, str], list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        found.setdefault((section, key.strip()), []).append(value.strip())
    return found


SETTINGS = _settings(UNIT.read_text(encoding="utf-8"))


def _one(key: str, section: str = "Service") -> str:
    values = SETTINGS.get((section, key), [])
    assert len(values) == 1, f"{section}.{key} = {values}"
    return values[0]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("User", "gateway"),
        ("StateDirectory", "gateway"),
        ("StateDirectoryMode", "0700"),
        ("ConfigurationDirectory", "gateway"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallFilter", "@system-service"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("KillSignal", "SIGTERM"),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "1 4"),
        ("UMask", "0077"),
    ],
)
def test_hardening_and_lifecycle_settings(key: str, value: str) -> None:
    assert _one(key) == value


def test_stop_timeout_outlasts_the_drain_grace() -> None:
    start = _one("ExecStart").split()
    assert start[:2] == [INSTALLED, "run"]
    grace = float(start[start.index("--shutdown-grace") + 1])
    stop = float(_one("TimeoutStopSec"))
    assert stop >= grace + 10


def test_configuration_is_validated_before_start() -> None:
    assert _one("ExecStartPre").split()[:2] == [INSTALLED, "validate"]
    config = _one("ExecStart").split()[3]
    assert _one("ExecStartPre").endswith(config)


def test_sysusers_entry_creates_the_service_user() -> None:
    [entry] = [
        line
        for line in SYSUSERS.read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    kind, name, *_ = entry.split()
    assert (kind, name) == ("u", _one("User"))


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    # verify insists that the executables exist; point them at this environment's gateway.
    executable = Path(sys.executable).with_name("gateway")
    assert executable.exists(), executable
    unit = tmp_path / "gateway.service"
    unit.write_text(UNIT.read_text(encoding="utf-8").replace(INSTALLED, str(executable)))
    result = subprocess.run(
        [tool, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # verify exits 0 even for unknown keys and only warns; any output at all is a finding.
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
    assert result.stdout.strip() == "", result.stdout


def test_systemd_analyze_reports_a_broken_unit(tmp_path: Path) -> None:
    """The verify test can fail: a misspelt key is reported on stderr."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    executable = Path(sys.executable).with_name("gateway")
    unit = tmp_path / "gateway.service"
    text = UNIT.read_text(encoding="utf-8").replace(INSTALLED, str(executable))
    unit.write_text(text.replace("ProtectSystem=strict", "ProtectSistem=strict"))
    result = subprocess.run(
        [tool, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert "ProtectSistem" in result.stderr
