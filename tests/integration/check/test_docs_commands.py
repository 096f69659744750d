"""The commands the operator docs show: every ``gateway ...`` line of README.md, docs/ and the
packaging guides parses, and the ones that can run here (validate, status, check) succeed against
a registered gateway on the devkit. Blocks marked ``<!-- test: run -->`` are run whole by
tests/docs/test_doc_blocks.py."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
from pathlib import Path

import pytest

from gateway.cli import build_parser

from .conftest import Registered

ROOT = Path(__file__).resolve().parents[3]
# Every operator-facing document: README, docs/ and the packaging guides.
DOCS = (
    [ROOT / "README.md"]
    + sorted((ROOT / "docs").glob("*.md"))
    + [ROOT / "packaging" / part / "README.md" for part in ("systemd", "container", "windows")]
)

# `ENV=value`, `sudo -u USER` and install paths in front of the command itself.
_PREFIX = re.compile(r"^(?:sudo -u \S+ )?(?:[A-Z_]+=\S* )*(?:\S*/)?gateway$")


def _shell_lines(text: str) -> list[str]:
    """Command lines of the ``sh`` blocks, continuations joined, comments dropped."""
    lines: list[str] = []
    for marker, block in re.findall(r"(<!-- test: run -->\n)?```sh\n(.*?)```", text, re.DOTALL):
        if marker:  # run whole by tests/docs/test_doc_blocks.py, shell variables and all
            continue
        pending = ""
        for raw in block.splitlines():
            line = raw.split(" #", 1)[0].rstrip() if not raw.startswith("#") else ""
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            if pending + line:
                lines.append(" ".join((pending + line).split()))
            pending = ""
    return lines


def _gateway_invocations() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for path in DOCS:
        for line in _shell_lines(path.read_text(encoding="utf-8")):
            words = shlex.split(line)
            # The command ends where the shell takes over: a redirection, pipe or list operator.
            for index, word in enumerate(words):
                if word in {"|", "&&", "||", ";", "&"} or re.match(r"\d?>", word):
                    words = words[:index]
                    break
            for index in range(len(words)):
                head = " ".join(words[: index + 1])
                if _PREFIX.match(head) and index + 1 < len(words):
                    found.append((f"{path.name}: {line}", words[index + 1 :]))
                    break
    return found


INVOCATIONS = _gateway_invocations()


def test_no_operator_document_writes_the_password_on_a_command_line() -> None:
    # A value after GATEWAY_REGISTER_PASSWORD= stays in the shell history, and as an argument
    # of sudo every local user can read it in /proc/PID/cmdline. The development guide's
    # value is the devkit's fixed, public one.
    written = [
        f"{path.name}: {line}"
        for path in DOCS
        if path.name != "development.md"
        for _, block in re.findall(
            r"(<!-- test: run -->\n)?```sh\n(.*?)```", path.read_text(), re.DOTALL
        )
        for line in block.splitlines()
        if re.search(r"GATEWAY_REGISTER_PASSWORD=", line)
    ]
    assert written == []


def test_the_docs_show_commands() -> None:
    verbs = {argv[0] for _, argv in INVOCATIONS}
    assert {"validate", "register", "check", "status", "diff", "policy-test", "explain"} <= verbs


@pytest.mark.parametrize(("where", "argv"), INVOCATIONS, ids=[w for w, _ in INVOCATIONS])
def test_every_documented_command_line_parses(where: str, argv: list[str]) -> None:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse reports usage errors by exiting 2
        if exc.code == 0:  # --version and --help answer at once
            return
        pytest.fail(f"{where}: not a valid command line (exit {exc.code})")
    assert callable(args.handler)


async def _run(*argv: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode()


async def test_documented_first_steps_succeed_on_the_devkit(registered: Registered) -> None:
    config = str(registered.config)
    code, out = await _run("validate", "-c", config)
    assert (code, "valid" in out) == (0, True), out
    code, out = await _run("status", "-c", config)
    assert code == 0, out
    assert "registered  yes" in out
    code, out = await _run("check", "-c", config)
    assert code == 0, out
    assert "0 failed" in out.splitlines()[-1]
