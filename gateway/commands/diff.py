"""``gateway diff OLD NEW``: what a change to gateway.yaml grants or takes away.

``OLD`` and ``NEW`` are files or ``REV:PATH`` Git revisions (``origin/main:gateway.yaml``). Both
files are checked by the configuration rules of ``gateway validate --skip-host-checks``; invalid
sides are reported with their located problems. Their policies are not compiled (a revision's
Rego files are not at hand): ``gateway validate`` proves the new side's policy decides.

Exit codes (for CI gates):

* 0 - no change in effective permissions or settings
* 10 - a permission was widened or a safety setting weakened: needs security review
* 11 - changes, but none widens (narrowed or neutral only)
* 1 - a side is invalid or cannot be read
* 2 - usage error
"""

from __future__ import annotations

import argparse
import sys

from gateway.errors import ConfigError, Problem
from gateway.gitops.diff import diff_configs, render_json, render_markdown, render_text
from gateway.gitops.sources import load_side

_RENDERERS = {"text": render_text, "json": render_json, "markdown": render_markdown}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``diff`` verb."""
    parser = subparsers.add_parser(
        "diff",
        help="show which permissions a configuration change adds or removes",
        description=(
            "Compare the effective permissions of two configurations. Exit 0: unchanged; "
            "10: widened (needs review); 11: narrowed or neutral changes only; 1: invalid input."
        ),
    )
    parser.add_argument(
        "old", metavar="OLD", help="file, or REV:PATH (e.g. origin/main:gateway.yaml)"
    )
    parser.add_argument("new", metavar="NEW", help="file, or REV:PATH")
    parser.add_argument(
        "--format",
        choices=tuple(_RENDERERS),
        default="text",
        help="text (default), json for scripts, or markdown for a pull-request comment",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Load both sides, diff them and print the report."""
    problems: list[Problem] = []
    sides = []
    for spec in (args.old, args.new):
        try:
            sides.append(load_side(spec))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        for problem in problems:
            print(problem.render(), file=sys.stderr)
        print(
            "gateway diff: a side is not a valid configuration; nothing compared", file=sys.stderr
        )
        return 1
    old, new = sides
    diff = diff_configs(old.config, new.config)
    sys.stdout.write(_RENDERERS[args.format](diff, args.old, args.new))
    return diff.exit_code
