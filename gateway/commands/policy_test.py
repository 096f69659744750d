"""``gateway policy-test``: run the ``test_*`` rules of every ``*_test.rego`` file.

The built-in policy's own tests run against the built-in modules alone (they describe the
decision policy, not an organisation's extensions, which may rightly veto what they expect to
pass); the tests in ``policy.directories`` run with every module loaded. Exit 0 when every
test passes, 1 when one fails, none is found, or the configuration or a policy is invalid
(including a policy ``gateway run`` would refuse because it cannot decide). Each failure is
printed with its name and location, so CI logs point at the test, and with the engine's own
error message when an evaluation failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from gateway import config as gwconfig
from gateway.commands._common import add_config_argument, add_format_argument
from gateway.config.model import GatewayConfig
from gateway.errors import ConfigError
from gateway.packaged import POLICY_ROOT
from gateway.policy.loader import PolicySet, rego_files, verify_policy
from gateway.policy.testing import PolicyTestResult, run_policy_tests


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``policy-test`` verb."""
    parser = subparsers.add_parser(
        "policy-test",
        help="run the Rego policy tests (*_test.rego) with the configured allow-list",
    )
    add_config_argument(parser)
    add_format_argument(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="list passing tests too")
    parser.set_defaults(handler=run)


def _run_all(policies: PolicySet, config: GatewayConfig) -> list[PolicyTestResult]:
    builtin_tests = tuple(t for t in policies.tests if t.builtin)
    own_tests = tuple(t for t in policies.tests if not t.builtin)
    results: list[PolicyTestResult] = []
    if builtin_tests:
        # A replaced built-in module (policy development) is what its tests must check.
        ids = {module_id for module_id, _ in rego_files(POLICY_ROOT)}
        builtin = tuple(m for m in policies.modules if m.id in ids)
        results += run_policy_tests(
            dataclasses.replace(policies, modules=builtin, tests=builtin_tests), config
        )
    if own_tests:
        results += run_policy_tests(dataclasses.replace(policies, tests=own_tests), config)
    return results


def run(args: argparse.Namespace) -> int:
    """Run the tests and report."""
    path = args.config or gwconfig.default_config_path()
    try:
        # Secrets are not needed to test a policy, so CI can run this without them.
        loaded = gwconfig.load(path, check_host=False)
        # The policy is proven to decide exactly as `gateway run` proves it: a policy that run
        # would refuse fails here with the same located problem, before any test runs.
        policies = verify_policy(loaded)
        results = _run_all(policies, loaded.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem.render(), file=sys.stderr)
        return 1
    failed = [r for r in results if not r.passed]
    if args.format == "json":
        print(
            json.dumps(
                {
                    "revision": policies.revision,
                    "passed": len(results) - len(failed),
                    "failed": len(failed),
                    "tests": [
                        {
                            "name": r.name,
                            "file": str(r.file),
                            "line": r.line,
                            "passed": r.passed,
                            "detail": r.detail,
                        }
                        for r in results
                    ],
                },
                indent=2,
            )
        )
    else:
        for result in results:
            if not result.passed:
                print(f"FAIL {result.name} ({result.file}:{result.line}): {result.detail}")
            elif args.verbose:
                print(f"PASS {result.name}")
        print(
            f"{len(results)} tests, {len(results) - len(failed)} passed, {len(failed)} failed "
            f"(revision {policies.revision})"
        )
    if not results:
        print("no test_* rules found in any *_test.rego file", file=sys.stderr)
        return 1
    return 1 if failed else 0
