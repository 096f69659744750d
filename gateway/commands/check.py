"""``gateway check``: a connectivity self-test, one line per check with a hint on failure.

Checks the configuration, the state directory, the identity, name resolution, the outbound
proxy, TLS to EmpowerID against the pinned CA (detecting TLS interception), relay-info over
mTLS, a listener on the relay and the clock (see :mod:`gateway.diagnostics`). Every check is
bounded by ``--timeout``. Exit 0 when no check failed, 1 otherwise. ``--format json`` prints
``{"ok": ..., "checks": [{name, status, detail, hint, seconds}]}``.
"""

from __future__ import annotations

import argparse
import asyncio

from gateway.commands._common import (
    add_config_argument,
    add_format_argument,
    config_path,
    print_json,
)
from gateway.diagnostics import DiagnosticsOptions, all_passed, render_text, run_checks
from gateway.errors import redact


def _positive(text: str) -> float:
    value = float(text)
    if not 0 < value <= 120:
        raise argparse.ArgumentTypeError("must be between 0 and 120 seconds")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``check`` verb."""
    parser = subparsers.add_parser(
        "check", help="test connectivity: DNS, proxy, TLS to EmpowerID, relay, clock"
    )
    add_config_argument(parser)
    add_format_argument(parser)
    parser.add_argument(
        "--timeout",
        type=_positive,
        default=10.0,
        metavar="SECONDS",
        help="time allowed for each check (default 10)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run every check and print the results."""
    options = DiagnosticsOptions(config_path=config_path(args), timeout=args.timeout)
    results = asyncio.run(run_checks(options))
    passed = all_passed(results)
    if args.format == "json":
        print_json({"ok": passed, "checks": [result.as_dict() for result in results]})
    else:
        print(redact(render_text(results)), end="")
    return 0 if passed else 1
