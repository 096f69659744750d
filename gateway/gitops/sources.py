"""Where the two sides of ``gateway diff`` come from: a file, or ``REV:PATH`` in a Git repository.

A Git side is read with ``git cat-file blob REV:PATH`` (raw bytes, no text conversion filters),
size-checked first, under a timeout, and written to a private temporary directory so that the
configuration loader reads it exactly like a file. Problems in it are reported against the
``REV:PATH`` label, not the temporary name.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from gateway import config as gwconfig
from gateway.config.yamlsafe import MAX_FILE_BYTES
from gateway.errors import ConfigError, Problem

__all__ = ["GIT_TIMEOUT_SECONDS", "is_git_spec", "load_side", "read_git_blob"]

GIT_TIMEOUT_SECONDS = 10.0
# Enough for git's error message; anything longer is cut.
_MAX_GIT_STDERR = 4096


def is_git_spec(spec: str, *, cwd: Path | None = None) -> bool:
    """Whether ``spec`` names a Git revision (``REV:PATH``) rather than an existing file."""
    if ((cwd or Path.cwd()) / spec).exists():
        return False
    rev, sep, path = spec.partition(":")
    return bool(sep and rev and path)


def _fail(label: str, message: str, *, code: str, hint: str = "") -> ConfigError:
    return ConfigError([Problem(message, code=code, file=label, hint=hint)])


def _git(args: list[str], *, cwd: Path, label: str, timeout: float) -> bytes:
    git = shutil.which("git")
    if git is None:
        raise _fail(label, "git is not installed", code="git_missing")
    try:
        # An argument list, no shell; revisions starting with '-' are refused by the caller.
        done = subprocess.run(  # noqa: S603
            [git, *args],
            cwd=cwd,
            capture_output=True,
            timeout=timeout,
            check=False,
            # No pager, no prompts: a CI runner must never wait for input.
            env={**os.environ, "GIT_PAGER": "cat", "GIT_TERMINAL_PROMPT": "0"},
        )
    except FileNotFoundError:
        raise _fail(label, "git is not installed", code="git_missing") from None
    except subprocess.TimeoutExpired:
        raise _fail(label, f"git did not answer within {timeout:g} s", code="git_timeout") from None
    if done.returncode != 0:
        detail = done.stderr[:_MAX_GIT_STDERR].decode("utf-8", "replace").strip()
        if "not a git repository" in detail.lower():
            raise _fail(
                label,
                "not inside a Git repository",
                code="not_a_repository",
                hint="run in a checkout of the repository, or compare two files",
            )
        raise _fail(
            label,
            f"git cannot read it: {detail.splitlines()[-1] if detail else 'unknown error'}",
            code="git_error",
            hint="REV:PATH takes PATH from the repository root; write REV:./PATH for a path "
            "relative to the current directory",
        )
    return done.stdout


def read_git_blob(spec: str, *, cwd: Path, timeout: float = GIT_TIMEOUT_SECONDS) -> bytes:
    """The bytes of ``REV:PATH``; raises :class:`ConfigError` saying what went wrong."""
    rev, _, path = spec.partition(":")
    if rev.startswith("-") or path.startswith("-"):
        # Never let a revision be read as an option of git.
        raise _fail(spec, "a revision cannot start with '-'", code="invalid_revision")
    size_text = _git(["cat-file", "-s", spec], cwd=cwd, label=spec, timeout=timeout)
    try:
        size = int(size_text.strip() or b"-1")
    except ValueError:
        size = -1
    if size < 0:
        raise _fail(spec, "git did not report the file's size", code="git_error")
    if size > MAX_FILE_BYTES:
        raise _fail(
            spec,
            f"file is {size} bytes; the limit is {MAX_FILE_BYTES // 1024} KiB",
            code="file_too_large",
        )
    kind = _git(["cat-file", "-t", spec], cwd=cwd, label=spec, timeout=timeout).strip()
    if kind != b"blob":
        raise _fail(spec, f"is a {kind.decode('ascii', 'replace')}, not a file", code="not_a_file")
    return _git(["cat-file", "blob", spec], cwd=cwd, label=spec, timeout=timeout)


def load_side(
    spec: str,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = GIT_TIMEOUT_SECONDS,
) -> gwconfig.LoadedConfig:
    """Load one side of a diff without host checks (CI has neither secrets nor target CAs).

    ``env`` defaults to no environment at all: a diff compares files, and a variable on the
    machine running it must not make both sides look alike or different.
    """
    env = {} if env is None else env
    here = Path.cwd() if cwd is None else cwd
    if not is_git_spec(spec, cwd=here):
        # Loaded by the name the user typed, so problems are reported against it.
        path = Path(spec) if cwd is None else cwd / spec
        return gwconfig.load(path, env=env, check_host=False)
    data = read_git_blob(spec, cwd=here, timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="gateway-diff-") as scratch:
        path = Path(scratch) / Path(spec.partition(":")[2]).name
        path.write_bytes(data)
        try:
            return gwconfig.load(path, env=env, check_host=False)
        except ConfigError as exc:
            for problem in exc.problems:
                if problem.file in (str(path), ""):
                    problem.file = spec
            raise
