"""The installed product: build the wheel, install it into a fresh virtual environment outside
the checkout, and run a new user's first hour there (init, validate, explain, policy-test, demo),
plus the pipx install path of docs/install.md.

Nothing here imports the checkout: every command runs the installed ``gateway`` script with the
fresh environment's interpreter, in an empty directory, with ``PYTHONPATH`` cleared. Dependencies
come from the package index pip is configured with (its cache makes a second run quick).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway import __version__

ROOT = Path(__file__).resolve().parents[2]
# pip resolving and installing the dependencies is the slow part (network); generous bounds for
# a busy machine, no assertion on how long anything took.
INSTALL_TIMEOUT = 900
COMMAND_TIMEOUT = 300

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@dataclass(frozen=True)
class Installed:
    """A fresh virtual environment with the wheel installed, and an empty working directory."""

    wheel: Path
    bin: Path
    work: Path

    def run(self, *argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run the installed ``gateway`` with ``argv``."""
        return _run([str(self.bin / "gateway"), *argv], cwd=cwd or self.work)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run(
    argv: list[str],
    *,
    cwd: Path,
    timeout: float = COMMAND_TIMEOUT,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=cwd,
        env={**_clean_env(), **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _check(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (
        f"{result.args}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def build_wheel(destination: Path) -> Path:
    """Build the wheel from a copy of the project's sources (so no build/ lands in the checkout)."""
    source = destination / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "gateway", source / "gateway", ignore=shutil.ignore_patterns("__pycache__")
    )
    dist = destination / "dist"
    _check(
        _run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
            cwd=destination,
            timeout=INSTALL_TIMEOUT,
        )
    )
    [wheel] = dist.glob("gateway-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    assert ROOT not in base.parents
    wheel = build_wheel(base)
    venv = base / "venv"
    _check(_run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=base))
    # This interpreter's pip installs into the new environment (--python): no pip bootstrap.
    _check(
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                str(venv / "bin" / "python"),
                "install",
                "-q",
                "--no-compile",
                str(wheel),
            ],
            cwd=base,
            timeout=INSTALL_TIMEOUT,
        )
    )
    work = base / "work"
    work.mkdir()
    return Installed(wheel=wheel, bin=venv / "bin", work=work)


def test_the_installed_package_is_the_one_running(installed: Installed) -> None:
    out = _check(
        _run(
            [str(installed.bin / "python"), "-c", "import gateway; print(gateway.__file__)"],
            cwd=installed.work,
        )
    )
    assert Path(out.strip()).is_relative_to(installed.bin.parent)
    assert _check(installed.run("--version")).strip() == f"gateway {__version__}"
    # The event loop gateway run serves on comes with the wheel where uvloop ships wheels (its
    # marker: CPython on Linux and macOS), as on this machine.
    if sys.implementation.name == "cpython" and sys.platform in ("linux", "darwin"):
        report = json.loads(_check(installed.run("version", "--format", "json")))
        assert report["components"]["uvloop"] != "not installed", report


def test_first_hour_from_the_wheel(installed: Installed) -> None:
    out = _check(installed.run("init"))
    assert "wrote gateway.yaml" in out
    work = installed.work
    starter = (work / "gateway.yaml").read_text(encoding="utf-8")
    assert starter == (ROOT / "gateway.yaml.example").read_text(encoding="utf-8")
    assert (work / "gateway.schema.json").read_text(encoding="utf-8") == (
        ROOT / "schemas" / "gateway.schema.json"
    ).read_text(encoding="utf-8")
    assert "valid (2 targets" in _check(installed.run("validate", "--skip-host-checks"))
    # With the starter's secret reference resolved, as systemd's LoadCredential= provides it.
    credentials = work / "credentials"
    credentials.mkdir(mode=0o700)
    (credentials / "erp-client-secret").write_text("sample-secret\n", encoding="utf-8")
    (credentials / "erp-client-secret").chmod(0o400)
    (credentials / "empowerid-ldap").write_text("sample-password\n", encoding="utf-8")
    (credentials / "empowerid-ldap").chmod(0o400)
    result = _run(
        [str(installed.bin / "gateway"), "validate"],
        cwd=work,
        extra_env={"CREDENTIALS_DIRECTORY": str(credentials)},
    )
    assert "valid (2 targets" in _check(result)
    allowed = installed.run("explain", "GET", "erp", "/api/accounts")
    assert (allowed.returncode, "ALLOW" in allowed.stdout) == (0, True), allowed.stdout
    denied = installed.run("explain", "DELETE", "erp", "/api/accounts/7")
    assert (denied.returncode, "DENY" in denied.stdout) == (3, True), denied.stdout
    assert ", 0 failed" in _check(installed.run("policy-test"))
    # The example extension, enabled as its comment says, passes its own test.
    for example in (work / "policies" / "examples").glob("*.rego"):
        shutil.copy2(example, work / "policies" / example.name)
    out = _check(installed.run("policy-test", "-v"))
    assert "PASS change_window_test.test_six_is_the_first_hour_inside" in out
    # A second init keeps everything as it is.
    (work / "gateway.yaml").write_text(starter + "# edited\n", encoding="utf-8")
    assert "kept  gateway.yaml" in _check(installed.run("init"))
    assert (work / "gateway.yaml").read_text(encoding="utf-8").endswith("# edited\n")


def test_demo_from_the_wheel_in_an_empty_directory(installed: Installed) -> None:
    empty = installed.work.parent / "empty"
    empty.mkdir()
    out = _check(installed.run("demo", cwd=empty))
    assert "demo passed" in out
    # Without slapd or an LDAP client (the wheel has no ldap3) the demo says what it skipped.
    assert "LDAP steps SKIPPED: " in out or "LDAP modify" in out
    assert list(empty.iterdir()) == []


def test_pipx_installs_the_wheel(installed: Installed) -> None:
    """docs/install.md's pipx path: pipx itself comes from the package index."""
    tools = installed.work.parent / "pipx-tools"
    _check(
        _run(
            [sys.executable, "-m", "venv", str(tools)],
            cwd=installed.work.parent,
            timeout=INSTALL_TIMEOUT,
        )
    )
    _check(
        _run(
            [str(tools / "bin" / "python"), "-m", "pip", "install", "-q", "pipx"],
            cwd=installed.work.parent,
            timeout=INSTALL_TIMEOUT,
        )
    )
    home = installed.work.parent / "pipx-home"
    env_bin = installed.work.parent / "pipx-bin"
    result = subprocess.run(
        [str(tools / "bin" / "pipx"), "install", str(installed.wheel)],
        cwd=installed.work.parent,
        env={**_clean_env(), "PIPX_HOME": str(home), "PIPX_BIN_DIR": str(env_bin)},
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        check=False,
    )
    _check(result)
    out = _check(_run([str(env_bin / "gateway"), "--version"], cwd=installed.work.parent))
    assert out.strip() == f"gateway {__version__}"
