"""The CLI guides: every verb and option says what it does, bare ``gateway`` lists the verbs, a
mistyped verb gets a suggestion, ``--version`` works, and tab completion answers from the parser
through a real bash."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import __version__
from gateway.cli import build_parser, main


def _parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """Every parser of the CLI, the dev tools included, by its command line."""
    found: list[tuple[str, argparse.ArgumentParser]] = []
    pending = [("gateway", build_parser(["dev"]))]
    while pending:
        name, parser = pending.pop()
        found.append((name, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending += [(f"{name} {verb}", sub) for verb, sub in action.choices.items()]
    return found


PARSERS = _parsers()


def test_the_dev_tools_are_among_the_parsers() -> None:
    names = {name for name, _ in PARSERS}
    assert {"gateway dev controlplane", "gateway dev relay", "gateway dev send"} <= names


@pytest.mark.parametrize(("name", "parser"), PARSERS, ids=[n for n, _ in PARSERS])
def test_every_verb_and_option_has_a_one_line_description(
    name: str, parser: argparse.ArgumentParser
) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                assert choice.help, f"{name} {choice.dest}: no description"
            continue
        label = "/".join(action.option_strings) or action.dest
        assert action.help, f"{name} {label}: no help"
        assert action.help != argparse.SUPPRESS, f"{name} {label}: hidden"
        assert "\n" not in action.help, f"{name} {label}: more than one line"


def test_bare_gateway_prints_the_verbs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out = capsys.readouterr().out
    for verb in ("init", "validate", "explain", "run", "status", "completion", "dev"):
        assert f"\n    {verb} " in out


@pytest.mark.parametrize(
    ("argv", "suggestion"),
    [(["valdate"], "'validate'"), (["polcy-test"], "'policy-test'"), (["dev", "rely"], "'relay'")],
)
def test_a_mistyped_verb_gets_a_suggestion(
    argv: list[str], suggestion: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"did you mean {suggestion}?" in err


def test_a_verb_far_from_any_gets_no_guess(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["xyzzy"]) == 2
    err = capsys.readouterr().err
    assert "unknown verb 'xyzzy'" in err
    assert "did you mean" not in err


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"gateway {__version__}"


def test_sign_usage_shows_its_required_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sign", "--help"]) == 0
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert "--key KEY --epoch N" in usage
    assert "[--key" not in usage
    assert "sign --generate-key KEY" in usage
    assert main(["sign", "--key", "k.pem"]) == 2
    assert "--epoch N is required with --key" in capsys.readouterr().err


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_are_printed(shell: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    assert "gateway" in script
    assert "_ARGCOMPLETE" in script


def _bash_complete(line: str, tmp_path: Path) -> list[str]:
    """Press TAB at the end of ``line`` in a real bash with the printed completion loaded."""
    script = tmp_path / "complete.sh"
    script.write_text(
        'eval "$(gateway completion bash)"\n'
        'COMP_LINE="$1"; COMP_POINT=${#COMP_LINE}; read -ra COMP_WORDS <<< "$COMP_LINE"\n'
        '[[ "$COMP_LINE" == *" " ]] && COMP_WORDS+=("")\n'
        "COMP_CWORD=$((${#COMP_WORDS[@]} - 1))\n"
        "_python_argcomplete gateway\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n',
        encoding="utf-8",
    )
    # The `gateway` on PATH is this interpreter's (python -m gateway through a tiny wrapper).
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "gateway"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m gateway "$@"\n', encoding="utf-8")
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", str(script), line],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return [word.strip() for word in result.stdout.splitlines() if word.strip()]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("gateway val", ["validate"]),
        ("gateway dev con", ["controlplane"]),
        ("gateway completion ", ["bash", "fish", "zsh"]),
    ],
)
def test_bash_completes_verbs_tools_and_choices(
    line: str, expected: list[str], tmp_path: Path
) -> None:
    assert set(expected) <= set(_bash_complete(line, tmp_path))


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completes_options(tmp_path: Path) -> None:
    words = _bash_complete("gateway sign --", tmp_path)
    assert {"--key", "--epoch", "--generate-key", "--format"} <= set(words)


def test_sign_speaks_json_like_the_other_verbs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "release.key"
    assert main(["sign", "--generate-key", str(key), "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["private_key"] == str(key)
    assert document["public_key"] == f"{key}.pub"
    assert document["key_id"]
