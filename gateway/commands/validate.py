"""``gateway validate``: check gateway.yaml and report every problem with its location.

"Valid" means ``gateway run`` would accept the same files: the checks are the ones ``run`` makes
before it starts, called rather than copied. The configuration is loaded and checked; the policy
is loaded, compiled and proven to decide (:func:`gateway.policy.loader.verify_policy`: no call to
an undefined function, a decision document for one request per operation); and, unless
``--skip-host-checks``, the files are protected as ``run`` requires, the proxy settings are
usable and the release signature verifies against this host's anti-rollback state (all one
function, :func:`gateway.service.check_release`, which the supervisor and each worker call too).
Problems name their ``FILE:LINE`` where one is known (Rego errors included) and never print a
secret.

Exit 0 when valid, 1 when not (or unreadable), 2 on usage errors. ``--format json`` prints a list
of problems for CI bots; the text form is ``FILE:LINE:COL: json.path: message (hint: ...)``.
"""

from __future__ import annotations

import argparse
import json
import sys

from gateway import config as gwconfig
from gateway.commands._common import add_config_argument, add_format_argument
from gateway.errors import ConfigError
from gateway.service import check_release


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``validate`` verb."""
    parser = subparsers.add_parser(
        "validate", help="check gateway.yaml and report every problem with its location"
    )
    add_config_argument(parser)
    add_format_argument(parser)
    parser.add_argument(
        "--skip-host-checks",
        action="store_true",
        help="do not resolve secret references or check referenced files (for CI pipelines)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Validate and print the result."""
    path = args.config or gwconfig.default_config_path()
    try:
        loaded = gwconfig.load(path, check_host=not args.skip_host_checks)
        policies = check_release(loaded, files=not args.skip_host_checks)
    except ConfigError as exc:
        if args.format == "json":
            print(
                json.dumps(
                    {"valid": False, "problems": [p.as_dict() for p in exc.problems]}, indent=2
                )
            )
        else:
            for problem in exc.problems:
                print(problem.render(), file=sys.stderr)
            count = len(exc.problems)
            print(f"{path}: {count} problem{'s' if count != 1 else ''}", file=sys.stderr)
        return 1
    config = loaded.config
    operations = sum(
        len(t.operations) + (len(t.ldap.operations) if t.ldap else 0)
        for t in config.targets.values()
    )
    if args.format == "json":
        print(
            json.dumps(
                {
                    "valid": True,
                    "revision": loaded.revision,
                    "policy_revision": policies.revision,
                    "policy_modules": len(policies.modules),
                    "targets": len(config.targets),
                    "operations": operations,
                    "overrides": [
                        {"path": o.path, "variable": o.variable} for o in loaded.overrides
                    ],
                    "warnings": [w.as_dict() for w in loaded.warnings],
                    "problems": [],
                },
                indent=2,
            )
        )
    else:
        for override in loaded.overrides:
            print(f"note: {override.path} is set by {override.variable}")
        for warning in loaded.warnings:
            print(f"warning: {warning.render()}", file=sys.stderr)
        print(
            f"{path}: valid ({len(config.targets)} targets, {operations} operations, "
            f"{len(policies.modules)} policy modules, revision {loaded.revision})"
        )
    return 0
