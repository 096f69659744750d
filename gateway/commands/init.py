"""``gateway init [DIR]``: start a configuration directory, ready to be a Git repository.

Writes, from the files that ship inside the package (:mod:`gateway.packaged`):

* ``gateway.yaml``: the commented starter configuration (the repository's
  ``gateway.yaml.example``, byte for byte);
* ``gateway.schema.json``: the schema its ``yaml-language-server`` modeline names, so editors
  check and complete keys offline (``gateway schema --output`` rewrites it after an upgrade);
* ``policies/``: the extensions directory, with no active module: the built-in decision policy
  ships with the gateway. ``policies/examples/`` holds one example extension and its test, to
  copy up one level to enable;
* ``.gitignore``: keeps state, private keys and decision logs out of Git.

An existing file is never overwritten (each file is created exclusively) and is reported as
kept. Exit 0 when every file was written or already there, 1 when one could not be written.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from gateway.commands.schema import SCHEMA_FILE
from gateway.commands.schema import render as render_schema
from gateway.packaged import EXAMPLE_EXTENSIONS, starter_config

GITIGNORE = """\
# Written by `gateway init`.
# The gateway's state (private key, certificates, pinned keys, replay cache) never belongs in
# Git: it lives in gateway.state_dir, /var/lib/gateway unless set to a directory here for trials.
/state/
# Private keys made by `gateway sign --generate-key` (commit the .pub files, never these).
*.key
# Decision (audit) logs written next to the configuration.
*.jsonl
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``init`` verb."""
    parser = subparsers.add_parser(
        "init",
        help="write a starter gateway.yaml, its schema, an extensions directory and .gitignore",
        description=(
            "Start a configuration directory: a commented gateway.yaml, the schema editors use, "
            "an extensions directory with an example and its test, and a .gitignore. Existing "
            "files are never overwritten."
        ),
    )
    parser.add_argument(
        "directory",
        metavar="DIR",
        nargs="?",
        default=".",
        help="directory to write into (created if missing; default: the current one)",
    )
    parser.set_defaults(handler=run)


def _files() -> list[tuple[str, str]]:
    """``(relative path, text)`` of everything ``init`` writes."""
    files = [
        ("gateway.yaml", starter_config()),
        (SCHEMA_FILE, render_schema()),
        (".gitignore", GITIGNORE),
    ]
    for example in sorted(EXAMPLE_EXTENSIONS.glob("*.rego")):
        files.append((f"policies/examples/{example.name}", example.read_text(encoding="utf-8")))
    return files


def _directory(path: Path) -> None:
    """Make ``path`` and its missing parents, mode 0755 (existing ones are left as they are)."""
    if path.is_dir():
        return
    _directory(path.parent)
    path.mkdir()
    # Policy directories must not be group-writable (the agent refuses them), whatever the umask.
    path.chmod(0o755)


def _create(path: Path, text: str) -> bool:
    """Write ``text`` to a new file ``path`` (mode 0644); False if it already exists."""
    _directory(path.parent)
    try:
        # O_EXCL: never replace a file, even one that appears after a check.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    # The gateway refuses group- or world-writable configuration and policies whatever the umask
    # made; 0644 is what it accepts.
    path.chmod(0o644)
    return True


def run(args: argparse.Namespace) -> int:
    """Write the starter files and say what to do next."""
    root = Path(args.directory)
    failed = False
    for relative, text in _files():
        path = root / relative
        try:
            created = _create(path, text)
        except OSError as exc:
            print(f"cannot write {path}: {exc.strerror}", file=sys.stderr)
            failed = True
            continue
        print(f"{'wrote' if created else 'kept '} {path}")
    if failed:
        return 1
    config = shlex.quote(str(root / "gateway.yaml"))
    print(
        "\nnext: edit gateway.yaml (empowerid.url, targets), then\n"
        f"  gateway validate -c {config}\n"
        f"  gateway explain -c {config} GET erp /api/accounts\n"
        f"  gateway policy-test -c {config}\n"
        "extensions (vetoes in Rego) go in policies/; see policies/examples/"
    )
    return 0
