"""Policy tests: every ``test_*`` rule of every ``*_test.rego`` module, reported by name.

A test rule is one of two kinds:

* a **fact**: a rule that must be ``true``, evaluated with the policy modules and the data of the
  configuration being tested, so an organisation can pin facts about its own allow-list
  (``test_no_delete_on_erp if { ... data.gateway.targets.erp ... }``);
* a **case**: a rule whose value is an object ``{"input": {...}, "expect": {...}}``, optionally
  with ``"targets"`` (an allow-list written exactly like ``targets`` in gateway.yaml, used instead
  of the configured one) and ``"extensions"`` (stand-in values for ``data.gateway_extensions``).
  The gateway evaluates ``data.gateway.authz.decision`` for that input with the embedded engine,
  exactly as it does for a relayed request, and every key of ``expect`` must equal the
  decision's value.

Cases exist because rego-cpp 1.5, the embedded engine, does not evaluate ``with input as ...``
reliably for a policy of this size: every rule that uses a set, a default or a function comes back
as an error under ``with``. A case gives the same test without ``with``. A fact that is undefined
(a condition was false) fails, as does any other value or an evaluation error; the query binds the
rule to a variable because rego-cpp reports a bare ``false`` rule as undefined.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import regopy
from pydantic import ValidationError

from gateway.config.model import GatewayConfig
from gateway.errors import ConfigError, Problem
from gateway.policy.cache import strip_comments
from gateway.policy.data import policy_data
from gateway.policy.embedded import EmbeddedEngine, new_interpreter
from gateway.policy.engine import UNDEFINED, EngineError
from gateway.policy.loader import PolicyModule, PolicySet

__all__ = ["CASE_REVISION", "PolicyTestResult", "discover_tests", "run_policy_tests"]

CASE_REVISION = "policy-test"
"""``data.gateway.revision`` of a case that brings its own ``targets``."""

_TEST_RULE = re.compile(r"^(test_[A-Za-z0-9_]*)\b", re.MULTILINE)
_CASE_KEYS = frozenset({"input", "expect", "targets", "extensions"})


@dataclass(frozen=True, slots=True)
class PolicyTestResult:
    """The outcome of one test rule."""

    name: str
    """``package.rule``, for example ``gateway.authz_test.test_unknown_target_denied``."""
    file: Path
    line: int
    passed: bool
    detail: str = ""
    """Why it failed: ``undefined``, the decision keys that differ, or an error."""


def discover_tests(module: PolicyModule) -> list[tuple[str, int]]:
    """The ``test_*`` rules of ``module`` with the line of their first definition, in order."""
    code = strip_comments(module.source)
    found: dict[str, int] = {}
    for match in _TEST_RULE.finditer(code):
        found.setdefault(match.group(1), code.count("\n", 0, match.start()) + 1)
    return list(found.items())


def run_policy_tests(policies: PolicySet) -> list[PolicyTestResult]:
    """Run every test of ``policies``; raises ConfigError if the modules do not compile."""
    rego = new_interpreter(policies.modules + policies.tests, {"gateway": policies.data})
    runner = _CaseRunner(policies)
    results: list[PolicyTestResult] = []
    for module in policies.tests:
        for rule, line in discover_tests(module):
            name = f"{module.package}.{rule}"
            try:
                output = rego.query(f"result := data.{name}")
            except regopy.RegoError as exc:
                raise ConfigError(
                    [Problem(f"{name}: {str(exc).splitlines()[0]}", code="policy_compile_error")]
                ) from None
            passed, detail = _judge(output, runner)
            results.append(PolicyTestResult(name, module.path, line, passed, detail))
    return results


def _judge(output: regopy.Output, runner: _CaseRunner) -> tuple[bool, str]:
    # Never render a failed output as text: rego-cpp 1.5 crashes doing so.
    if not output.ok():
        return False, "error during evaluation"
    bindings = output.results[0].bindings if output.results else {}
    if "result" not in bindings:
        return False, "undefined (a condition was false)"
    value = bindings["result"]
    if value is True:
        return True, ""
    if isinstance(value, dict) and "input" in value and "expect" in value:
        return runner.run(value)
    return False, f"evaluated to {_short(value)}, not true"


class _CaseRunner:
    """Evaluates cases with one compiled engine per distinct allow-list."""

    def __init__(self, policies: PolicySet) -> None:
        self._policies = policies
        self._engines: dict[str, EmbeddedEngine] = {}

    def run(self, case: Mapping[str, Any]) -> tuple[bool, str]:
        unknown = set(case) - _CASE_KEYS
        if unknown:
            return False, f"unknown case keys: {', '.join(sorted(unknown))}"
        expect = case["expect"]
        if not isinstance(expect, dict) or not expect:
            return False, "'expect' must be a non-empty object of decision keys"
        try:
            engine = self._engine(case.get("targets"), case.get("extensions"))
        except ValueError as exc:
            return False, str(exc)
        try:
            decision = engine.evaluate(case["input"])
        except EngineError as exc:
            return False, exc.detail
        if decision is UNDEFINED or not isinstance(decision, dict):
            return False, "the policy returned no decision document"
        wrong = [
            f"{key}: expected {_short(value)}, got {_short(decision.get(key))}"
            for key, value in expect.items()
            if decision.get(key) != value
        ]
        return (False, "; ".join(wrong)) if wrong else (True, "")

    def _engine(self, targets: Any, extensions: Any) -> EmbeddedEngine:
        key = json.dumps([targets, extensions], sort_keys=True)
        engine = self._engines.get(key)
        if engine is not None:
            return engine
        policies = self._policies
        if targets is not None:
            policies = dataclasses.replace(
                policies, data=policy_data(_config(targets), CASE_REVISION)
            )
        if extensions is not None:
            if not isinstance(extensions, dict):
                raise ValueError("'extensions' must be an object of packages")
            # Stand-in base data at data.gateway_extensions, merged by the engine at build time.
            policies = dataclasses.replace(policies, extra_data={"gateway_extensions": extensions})
        try:
            engine = EmbeddedEngine(policies, mode="enforce", cache=None)
        except ConfigError as exc:
            raise ValueError(exc.problems[0].message) from None
        self._engines[key] = engine
        return engine


def _config(targets: Any) -> GatewayConfig:
    """A configuration around ``targets`` (checked by the model, not the overlap rules)."""
    try:
        return GatewayConfig.model_validate(
            {
                "version": 1,
                "gateway": {"id": "policy-test"},
                "empowerid": {"url": "https://policy-test.invalid"},
                "targets": targets,
            }
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"invalid targets: {where}: {first['msg']}") from None


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."
