"""Command-line entry point: ``gateway VERB ...`` and ``python -m gateway VERB ...``.

Exit codes shared by every verb:

* 0 - success (for ``explain``: the request would be allowed)
* 1 - the configuration or another input is invalid, or the operation failed
* 2 - usage error (unknown verb, bad flag)
* 3 - ``explain``: the request would be denied
* 130 - interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gateway import __version__

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_DENIED = 3
EXIT_INTERRUPTED = 130

# Verb modules under gateway.commands, in the order `gateway --help` lists them.
COMMANDS: tuple[str, ...] = (
    "init",
    "validate",
    "explain",
    "policy_test",
    "diff",
    "sign",
    "verify_config",
    "audit",
    "run",
    "register",
    "status",
    "check",
    "docs",
    "schema",
    "version",
    "demo",
    "dev",
)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser with every verb registered (the ``dev`` tools only if ``argv`` asks for them)."""
    parser = argparse.ArgumentParser(
        prog="gateway",
        description=(
            "Policy-enforcing on-premises gateway agent for Azure Relay Hybrid Connections."
        ),
    )
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"gateway.commands.{name}")
        if name == "dev":
            module.register(subparsers, with_tools=list(argv[:1]) == ["dev"])
        else:
            module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen verb; returns the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(arguments)
    try:
        args = parser.parse_args(arguments)
    except SystemExit as exc:  # argparse exits 2 on usage errors and 0 for --help
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code
