"""The event loop ``gateway run`` serves on (:mod:`gateway.eventloop`): what each ``event_loop``
choice means on a host with uvloop and on one without it.

A host without uvloop is made for real: the import system refuses a module whose
``sys.modules`` entry is None, exactly as it refuses one that is not installed.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway import eventloop
from gateway.config import load
from gateway.service import EXIT_CONFIG, EXIT_IDENTITY, self_check

from ...eventloops import needs_uvloop
from .test_self_checks import minimal_config

# `gateway ...` in an interpreter where `import uvloop` fails as on a host without it.
WITHOUT_UVLOOP = (
    "import sys\n"
    "sys.modules['uvloop'] = None\n"
    "from gateway.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.fixture
def no_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process as a host without uvloop: ``import uvloop`` raises ImportError."""
    monkeypatch.setitem(sys.modules, "uvloop", None)


def _served_on(loop: eventloop.EventLoop) -> str:
    async def main() -> str:
        return eventloop.in_use()

    return eventloop.run(main(), loop)


def test_asyncio_is_the_standard_librarys_loop() -> None:
    loop = eventloop.pick("asyncio")
    assert (loop.name, loop.describe(), loop.why) == ("asyncio", "asyncio", "")
    assert _served_on(loop) == "asyncio"


@needs_uvloop
@pytest.mark.parametrize("choice", ["uvloop", "auto"])
def test_uvloop_and_auto_serve_on_uvloop_where_it_is_installed(choice: eventloop.Choice) -> None:
    loop = eventloop.pick(choice)
    assert loop.name == "uvloop"
    assert loop.describe() == f"uvloop {importlib.metadata.version('uvloop')}"
    assert _served_on(loop) == loop.describe()
    assert eventloop.problem(choice) is None


def test_without_uvloop_auto_falls_back_and_says_why(no_uvloop: None) -> None:
    loop = eventloop.pick("auto")
    assert loop.name == "asyncio"
    assert loop.why.startswith("uvloop is not available: ")
    assert _served_on(loop) == "asyncio"
    assert eventloop.problem("auto") is None
    assert eventloop.problem("asyncio") is None


def test_without_uvloop_demanding_it_is_refused_never_replaced(no_uvloop: None) -> None:
    with pytest.raises(
        eventloop.EventLoopUnavailableError, match="is required but cannot be imported"
    ):
        eventloop.pick("uvloop")
    assert "or choose auto" in (eventloop.problem("uvloop") or "")


def test_the_self_check_names_the_setting(tmp_path: Path, no_uvloop: None) -> None:
    # gateway validate, gateway check, start and reload all refuse through self_check.
    config = _with_loop(minimal_config(tmp_path / "gw"), "uvloop")
    problems = self_check(load(config).config)
    assert [(p.code, p.path) for p in problems] == [("event_loop_unavailable", "event_loop")]
    auto = _with_loop(config, "auto")
    assert self_check(load(auto).config) == []


async def test_in_use_reads_the_running_loop() -> None:
    # Whatever loop the tests run on (TEST_EVENT_LOOP): the name comes from the loop itself.
    running = asyncio.get_running_loop()
    expected = "asyncio" if type(running).__module__.startswith("asyncio.") else "uvloop"
    assert eventloop.in_use().partition(" ")[0] == expected


def _with_loop(config: Path, choice: str) -> Path:
    document = yaml.safe_load(config.read_text(encoding="utf-8"))
    document["event_loop"] = choice
    config.write_text(yaml.safe_dump(document), encoding="utf-8")
    return config


def _gateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_UVLOOP, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_a_host_without_uvloop_refuses_to_run_what_demands_it(tmp_path: Path) -> None:
    config = _with_loop(minimal_config(tmp_path / "gw"), "uvloop")
    done = _gateway("run", "--allow-root", "-c", str(config))
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert "cannot start: event_loop uvloop: the uvloop event loop is required" in done.stderr
    checked = _gateway("validate", "-c", str(config))
    assert checked.returncode == 1, checked
    assert "event_loop" in checked.stdout + checked.stderr
    # The flag asks for the loop of this run; it is refused the same way.
    flagged = _gateway("run", "--allow-root", "--event-loop", "uvloop", "-c", str(config))
    assert flagged.returncode == EXIT_CONFIG, flagged.stderr
    assert "cannot start: --event-loop uvloop: the uvloop event loop" in flagged.stderr


def test_a_host_without_uvloop_runs_auto_on_asyncio(tmp_path: Path) -> None:
    # Start-up goes on past the loop to the identity (none registered here): exit 4.
    config = _with_loop(minimal_config(tmp_path / "gw"), "auto")
    done = _gateway("run", "--allow-root", "-c", str(config))
    assert done.returncode == EXIT_IDENTITY, done.stderr
    assert "event loop: asyncio (event_loop auto; uvloop is not available" in done.stderr
