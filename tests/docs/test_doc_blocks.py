"""Documentation that cannot drift: the shell blocks the docs mark ``<!-- test: run -->`` are run
as written, and every documented exit code is checked against the constants the code returns.

A marked block runs in bash (``set -e`` semantics are the block's own) in an empty temporary
directory, with ``gateway`` on ``PATH`` running this checkout's interpreter; it passes when it
exits 0. Blocks that need a machine of their own (systemd, containers, a wheel on PyPI) stay
unmarked: tests/integration/check/test_docs_commands.py checks that their command lines parse.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import cli, service
from gateway.commands import audit, explain, replay, sign
from gateway.gitops import diff

# Tens of seconds: started first in a parallel run (tests/conftest.py).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "packaging").glob("*/README.md")),
]
_MARKED = re.compile(r"<!-- test: run -->\n```sh\n(.*?)```", re.DOTALL)
BLOCK_TIMEOUT = 600


def _marked_blocks() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for match in _MARKED.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{path.relative_to(ROOT)}:{line}", match.group(1)))
    return found


BLOCKS = _marked_blocks()


def test_the_runnable_docs_are_marked() -> None:
    where = {name.split(":")[0] for name, _ in BLOCKS}
    assert {"docs/development.md", "docs/install.md"} <= where


@pytest.mark.timeout(BLOCK_TIMEOUT + 60)
@pytest.mark.parametrize(("where", "script"), BLOCKS, ids=[w for w, _ in BLOCKS])
def test_marked_block_runs(where: str, script: str, tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "gateway"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m gateway "$@"\n', encoding="utf-8")
    wrapper.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONWARNINGS": "ignore",
        "TMPDIR": str(tmp_path),
    }
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, (
        f"{where}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    )


# --- exit codes ------------------------------------------------------------------------------


def _table_codes(path: Path, heading: str) -> set[int]:
    """The codes in the first column of the table under ``heading``."""
    text = path.read_text(encoding="utf-8")
    start = text.index(heading)
    codes: set[int] = set()
    for line in text[start:].splitlines()[1:]:
        if line.startswith("#"):
            break
        cell = re.match(r"\|\s*(\d+)\s*[|,]", line)
        if cell:
            codes.add(int(cell.group(1)))
    return codes


def _constants(*modules: object) -> set[int]:
    return {
        value
        for module in modules
        for name, value in vars(module).items()
        if name.startswith("EXIT_") and isinstance(value, int)
    }


def test_readme_exit_codes_are_exactly_the_codes_the_commands_return() -> None:
    documented = _table_codes(ROOT / "README.md", "## Exit codes")
    assert documented == _constants(cli, service, diff, explain, audit, replay)


def test_run_exit_codes_match_the_service() -> None:
    documented = _table_codes(ROOT / "docs" / "operations.md", "### Exit codes of `gateway run`")
    assert documented == _constants(service)


def test_diff_exit_codes_match_the_diff() -> None:
    documented = _table_codes(ROOT / "docs" / "gitops.md", "### Exit codes")
    assert documented == _constants(diff) | {cli.EXIT_FAILURE, cli.EXIT_USAGE}


def test_troubleshooting_names_only_codes_run_returns() -> None:
    documented = _table_codes(ROOT / "docs" / "troubleshooting.md", "## The service does not start")
    assert documented
    assert documented <= _constants(service)


def test_systemd_does_not_restart_what_a_restart_cannot_fix() -> None:
    unit = (ROOT / "packaging" / "systemd" / "gateway.service").read_text(encoding="utf-8")
    [line] = re.findall(r"^RestartPreventExitStatus=(.*)$", unit, re.MULTILINE)
    assert {int(code) for code in line.split()} == {service.EXIT_CONFIG, service.EXIT_IDENTITY}


# --- the README's command table --------------------------------------------------------------


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Commands") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"^\| `(gateway [^`]*)`", section, re.MULTILINE)


def test_readme_lists_every_verb() -> None:
    listed = {command.split()[1] for command in _readme_commands()}
    parser = cli.build_parser()
    verbs = {
        name
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name in action.choices
    }
    assert verbs <= listed, f"missing from README.md's command table: {sorted(verbs - listed)}"


def test_readme_sign_usage_is_the_real_one() -> None:
    usage = [line.strip().removeprefix("gateway ") for line in sign.USAGE.splitlines()]
    rows = [c.removeprefix("gateway ") for c in _readme_commands() if c.startswith("gateway sign")]
    # The README shows the essentials of each form: every word it shows is in the real usage.
    assert len(rows) == len(usage)
    for row, real in zip(rows, usage, strict=True):
        real_words = set(_words(real))
        assert set(_words(row)) <= real_words, (row, real)


def _words(usage: str) -> list[str]:
    return usage.replace("[", " ").replace("]", " ").split()


# --- example output ----------------------------------------------------------------------------

_OUTPUT = re.compile(r"<!-- test: output (\w[\w-]*) -->\n```\w*\n(.*?)```", re.DOTALL)
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _output_blocks() -> list[tuple[str, str, str]]:
    found: list[tuple[str, str, str]] = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for match in _OUTPUT.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{path.relative_to(ROOT)}:{line}", match.group(1), match.group(2)))
    return found


OUTPUTS = _output_blocks()


def _matches(shown: str, printed: str) -> bool:
    """Whether a documented line is a printed one; ``...`` in the docs stands for any text."""
    pattern = ".*?".join(re.escape(part) for part in shown.split("..."))
    return re.fullmatch(pattern, printed) is not None


def test_the_example_outputs_are_marked() -> None:
    assert {where.split(":")[0] for where, _, _ in OUTPUTS} >= {"README.md", "docs/policy.md"}


@pytest.mark.parametrize(("where", "fixture", "block"), OUTPUTS, ids=[w for w, _, _ in OUTPUTS])
def test_example_output_is_what_the_command_prints(
    where: str, fixture: str, block: str, tmp_path: Path
) -> None:
    """Each ``$ command`` of the block is run in a copy of tests/docs/fixtures/FIXTURE; the lines
    shown after it must be lines it prints, in order (the docs may leave lines out)."""
    work = tmp_path / "work"
    shutil.copytree(FIXTURES / fixture, work)
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif line.strip() and steps:
            steps[-1][1].append(line)
    assert steps, f"{where}: no $ command in the block"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "100"}
    for command, shown in steps:
        argv = shlex.split(command)
        assert argv[0] == "gateway", f"{where}: only gateway commands are run: {command}"
        result = subprocess.run(
            [sys.executable, "-m", "gateway", *argv[1:]],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
            check=False,
        )
        printed = iter(result.stdout.splitlines())
        for line in shown:
            assert any(_matches(line, out) for out in printed), (
                f"{where}: `{command}` did not print (in this order): {line!r}\n{result.stdout}"
            )
