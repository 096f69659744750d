"""Policy tests: every ``test_*`` rule of every ``*_test.rego`` module, reported by name.

A test rule is one of two kinds:

* a **fact**: a rule that must be ``true``, evaluated with the policy modules and the data of the
  configuration being tested, so an organisation can pin facts about its own allow-list
  (``test_no_delete_on_erp if { ... data.gateway.targets.erp ... }``);
* a **case**: a rule whose value is an object ``{"input": {...}, "expect": {...}}``, optionally
  with ``"targets"`` (an allow-list written exactly like ``targets`` in gateway.yaml, used instead
  of the configured one) and ``"extensions"`` (stand-in values for ``data.gateway_extensions``).
  The gateway evaluates ``data.gateway.authz.decision`` for that input with the embedded engine,
  exactly as it does for a relayed request; the answer must be a decision document the gateway
  acts on (:func:`gateway.policy.engine.document_problem`, of the revision in the data: anything
  else a running gateway refuses as ``policy_undefined`` or ``policy_unavailable``), and every
  key of ``expect`` must equal the decision's value as JSON values (``1`` is not ``true``).

A fact may also be written the way OPA tests are, with ``with input as X``:
``test_x if { data.gateway.authz.decision.allow with input as {"target": "erp", ...} }``.
rego-cpp 1.5, the embedded engine, cannot evaluate ``with`` for a policy like this one (every rule
that uses a set, a default or a function comes back as an error, and one such rule spoils every
other rule of its package), so the gateway never gives it a ``with``: in a module that uses it,
each ``with input as X`` is cut out of the test, X becomes a rule of its own
(``policy_test_input_<test>``), and the test is evaluated with the value of X as the real input.
That is what ``with`` means for a test whose every ``with`` replaces the input by the same X, the
usual shape; anything else is refused with a failure that says why, never guessed:

* ``with`` replacing anything but ``input`` (``with data.x as ...``, ``with time.now_ns as ...``);
* two different inputs in one test, or ``with`` outside a ``test_*`` rule;
* an X that uses the test's own variables (X is evaluated on its own, before the test).

Rules are found as ``opa fmt`` writes them: a rule starts at the beginning of a line. A fact that
is undefined (a condition was false) fails, as does any other value or an evaluation error; the
query binds the rule to a variable because rego-cpp reports a bare ``false`` rule as undefined.
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
from gateway.errors import ConfigError, PolicyError, Problem
from gateway.ldap.decide import policy_document, refusal_reason
from gateway.ldap.errors import LdapRefusedError
from gateway.ldap.questions import LdapQuestion, QuestionError
from gateway.policy.cache import strip_comments
from gateway.policy.data import policy_data
from gateway.policy.embedded import EmbeddedEngine, evaluation_error, new_interpreter
from gateway.policy.engine import UNDEFINED, EngineError, document_problem
from gateway.policy.loader import PolicyModule, PolicySet

__all__ = [
    "CASE_REVISION",
    "INPUT_RULE_PREFIX",
    "PolicyTestResult",
    "discover_tests",
    "run_policy_tests",
]

CASE_REVISION = "policy-test"
"""``data.gateway.revision`` of a case that brings its own ``targets``."""
INPUT_RULE_PREFIX = "policy_test_input_"
"""Name prefix of the rule that holds the X of a test's ``with input as X``."""

_TEST_RULE = re.compile(r"^(test_[A-Za-z0-9_]*)\b", re.MULTILINE)
_RULE_HEAD = re.compile(r"^(?!(?:package|import)\b)([A-Za-z_][A-Za-z0-9_]*)", re.MULTILINE)
_WITH = re.compile(r"\bwith\b")
_WITH_INPUT = re.compile(r"with\s+input\s+as\s+")
_CASE_KEYS = frozenset({"input", "ldap", "expect", "targets", "extensions"})


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


def run_policy_tests(
    policies: PolicySet, config: GatewayConfig | None = None
) -> list[PolicyTestResult]:
    """Run every test of ``policies``; raises ConfigError if the modules do not compile.

    ``config`` is the configuration ``policies`` was built from: LDAP cases without their own
    ``targets`` are asked of its LDAP targets."""
    plain = tuple(m for m in policies.tests if not _with_positions(strip_comments(m.source)))
    rego = new_interpreter(policies.modules + plain, {"gateway": policies.data})
    runner = _CaseRunner(policies, config)
    results: list[PolicyTestResult] = []
    for module in policies.tests:
        if module not in plain:
            results.extend(_run_with_module(policies, plain, module, runner))
            continue
        for rule, line in discover_tests(module):
            name = f"{module.package}.{rule}"
            try:
                output = rego.query(f"result := data.{name}")
            except regopy.RegoError as exc:
                raise PolicyError(
                    [Problem(f"{name}: {str(exc).splitlines()[0]}", code="policy_compile_error")]
                ) from None
            except ValueError as exc:
                # regopy could not parse the output: rego-cpp rendered an evaluation error.
                results.append(PolicyTestResult(name, module.path, line, False, _failure(exc)))
                continue
            passed, detail = _judge(output, runner)
            results.append(PolicyTestResult(name, module.path, line, passed, detail))
    return results


@dataclass(frozen=True, slots=True)
class _Rewrite:
    """A test module with its ``with input as X`` clauses cut out."""

    source: str
    inputs: dict[str, str]
    """Test rule -> the X it evaluates with (also a rule named INPUT_RULE_PREFIX + test)."""
    refused: dict[str, str]
    """Test rule -> why its ``with`` cannot be evaluated faithfully."""
    module_error: str = ""
    """Set when no test of the module can run (``with`` outside a test rule)."""


def _run_with_module(
    policies: PolicySet,
    plain: tuple[PolicyModule, ...],
    module: PolicyModule,
    runner: _CaseRunner,
) -> list[PolicyTestResult]:
    """The tests of a module that uses ``with``: each run with its X as the real input."""
    tests = discover_tests(module)
    rewrite = _rewrite(strip_comments(module.source))
    verdicts: dict[str, tuple[bool, str]] = {}
    rego: regopy.Interpreter | None = None
    if rewrite.module_error:
        verdicts = {rule: (False, rewrite.module_error) for rule, _ in tests}
    else:
        changed = dataclasses.replace(module, source=rewrite.source)
        try:
            rego = new_interpreter(
                policies.modules + plain + (changed,), {"gateway": policies.data}
            )
        except ConfigError as exc:
            verdicts = {rule: (False, exc.problems[0].message) for rule, _ in tests}
    if rego is not None:
        verdicts = _run_rewritten(rego, module.package, tests, rewrite, runner)
    return [
        PolicyTestResult(f"{module.package}.{rule}", module.path, line, *verdicts[rule])
        for rule, line in tests
    ]


def _run_rewritten(
    rego: regopy.Interpreter,
    package: str,
    tests: list[tuple[str, int]],
    rewrite: _Rewrite,
    runner: _CaseRunner,
) -> dict[str, tuple[bool, str]]:
    verdicts: dict[str, tuple[bool, str]] = {}
    inputs: dict[str, Any] = {}
    # First everything that runs without an input: the Xs themselves and the tests without
    # `with` (which must not see another test's input).
    for rule, _ in tests:
        if rule in rewrite.refused:
            verdicts[rule] = (False, rewrite.refused[rule])
        elif rule in rewrite.inputs:
            found, value = _value(rego, f"data.{package}.{INPUT_RULE_PREFIX}{rule}")
            if found:
                inputs[rule] = value
            else:
                verdicts[rule] = (False, f"the X of 'with input as X' {value}")
        else:
            verdicts[rule] = _query_test(rego, f"{package}.{rule}", runner)
    for rule, value in inputs.items():
        try:
            rego.set_input(regopy.Input(value))
        except (regopy.RegoError, ValueError, TypeError):
            verdicts[rule] = (False, "the X of 'with input as X' cannot be an input document")
            continue
        verdicts[rule] = _query_test(rego, f"{package}.{rule}", runner)
    return verdicts


def _value(rego: regopy.Interpreter, reference: str) -> tuple[bool, Any]:
    """(True, value) of ``reference``, or (False, why not)."""
    try:
        output = rego.query(f"value := {reference}")
    except regopy.RegoError as exc:
        return False, f"does not compile: {_first_line(exc)}"
    except ValueError:
        # rego-cpp 1.5 renders an error inside the value (for example for a variable of the
        # test, unbound where X is evaluated) instead of failing the query.
        return False, "has no value on its own (does it use a variable of the test?)"
    if not output.ok():
        return False, "fails to evaluate"
    bindings = output.results[0].bindings if output.results else {}
    if "value" not in bindings:
        return False, "is undefined"
    return True, bindings["value"]


def _query_test(rego: regopy.Interpreter, name: str, runner: _CaseRunner) -> tuple[bool, str]:
    try:
        output = rego.query(f"result := data.{name}")
    except regopy.RegoError as exc:
        return False, f"does not compile: {_first_line(exc)}"
    except ValueError as exc:
        return False, _failure(exc)
    return _judge(output, runner)


def _failure(exc: ValueError) -> str:
    """The engine's own words for an evaluation that failed (kept by json's error as ``doc``)."""
    document = getattr(exc, "doc", None)
    if isinstance(document, str) and document.startswith("(error"):
        return evaluation_error(document)
    return "error during evaluation (the result is not a value)"


def _rewrite(code: str) -> _Rewrite:
    """Cut each ``with input as X`` out of ``code`` (comments already stripped).

    Cut text is replaced by spaces, so every line and column of the module stays where it was
    and errors point at the file as written. Each X becomes a rule appended at the end.
    """
    heads = [(m.start(), m.group(1)) for m in _RULE_HEAD.finditer(code)]
    chars = list(code)
    inputs: dict[str, str] = {}
    refused: dict[str, str] = {}
    for position in _with_positions(code):
        owner = max(((s, n) for s, n in heads if s < position), default=(0, ""))[1]
        if not owner.startswith("test_"):
            return _Rewrite(code, {}, {}, f"'with' is only supported in test_* rules ({owner})")
        match = _WITH_INPUT.match(code, position)
        if match is None:
            refused[owner] = "only 'with input as X' is supported by the embedded engine"
            continue
        end = _expression_end(code, match.end())
        expression = " ".join(code[match.end() : end].split())
        if inputs.setdefault(owner, expression) != expression:
            refused[owner] = "one test may replace the input by only one X"
        for i in range(position, end):
            if chars[i] != "\n":
                chars[i] = " "
    # A refused rule is dropped whole: rego-cpp would fail every rule of the package for it.
    for index, (start, name) in enumerate(heads):
        if name in refused:
            stop = heads[index + 1][0] if index + 1 < len(heads) else len(code)
            for i in range(start, stop):
                if chars[i] != "\n":
                    chars[i] = " "
            inputs.pop(name, None)
    source = "".join(chars)
    for rule, expression in inputs.items():
        source += f"\n{INPUT_RULE_PREFIX}{rule} := {expression}\n"
    return _Rewrite(source, inputs, refused)


def _with_positions(code: str) -> list[int]:
    """Offsets of the ``with`` keywords of ``code`` (comments stripped), outside strings."""
    strings = _string_spans(code)
    return [m.start() for m in _WITH.finditer(code) if not _inside(m.start(), strings)]


def _string_spans(code: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(code):
        if code[i] in '"`':
            end = _string_end(code, i)
            spans.append((i, end))
            i = end
        else:
            i += 1
    return spans


def _inside(position: int, spans: list[tuple[int, int]]) -> bool:
    return any(start <= position < end for start, end in spans)


def _string_end(code: str, start: int) -> int:
    quote = code[start]
    i = start + 1
    while i < len(code):
        if quote == '"' and code[i] == "\\":
            i += 2
            continue
        if code[i] == quote or (quote == '"' and code[i] == "\n"):
            return i + 1
        i += 1
    return len(code)


def _expression_end(code: str, start: int) -> int:
    """Where the term starting at ``start`` ends: a line end, ``;``, an unopened bracket, or
    another ``with``, outside brackets and strings."""
    depth = 0
    i = start
    while i < len(code):
        char = code[i]
        if char in '"`':
            i = _string_end(code, i)
            continue
        if char in "([{":
            depth += 1
        elif char in ")]}":
            if depth == 0:
                return i
            depth -= 1
        elif depth == 0 and (char in "\n;" or (code[i - 1].isspace() and _WITH.match(code, i))):
            return i
        i += 1
    return len(code)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


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
    if isinstance(value, dict) and ("input" in value or "ldap" in value) and "expect" in value:
        return runner.run(value)
    return False, f"evaluated to {_short(value)}, not true"


class _CaseRunner:
    """Evaluates cases with one compiled engine per distinct allow-list."""

    def __init__(self, policies: PolicySet, config: GatewayConfig | None) -> None:
        self._policies = policies
        self._config = config
        self._engines: dict[str, EmbeddedEngine] = {}
        self._revision = str(policies.data.get("revision"))

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
        if ("input" in case) == ("ldap" in case):
            return False, "a case has either 'input' or 'ldap' (an LDAP operation in words)"
        try:
            if "input" in case:
                decision, from_policy = engine.evaluate(case["input"]), True
            else:
                decision, from_policy = self._ldap(case)
        except EngineError as exc:
            return False, exc.detail
        except ValueError as exc:
            return False, str(exc)
        if decision is UNDEFINED or not isinstance(decision, dict):
            return False, "the policy returned no decision document"
        # What the engine checks before acting on a decision (PolicyEngine._interpret): a case
        # must not pass on a document every running gateway would refuse.
        revision = CASE_REVISION if case.get("targets") is not None else self._revision
        problem = document_problem(decision, revision) if from_policy else None
        if problem is not None:
            return False, f"a running gateway refuses this decision: {problem}"
        wrong = [
            f"{key}: expected {_short(value)}, got {_short(decision.get(key))}"
            for key, value in expect.items()
            if not _same(decision.get(key), value)
        ]
        return (False, "; ".join(wrong)) if wrong else (True, "")

    def _ldap(self, case: Mapping[str, Any]) -> tuple[Any, bool]:
        """The decision on a case's LDAP operation, with its input built as the proxy builds it
        (:func:`gateway.ldap.decide.policy_document`), and whether the policy made it (the core
        refuses some operations first); raises ValueError for a bad case."""
        targets = case.get("targets")
        config = _config(targets) if targets is not None else self._config
        if config is None:
            raise ValueError("an 'ldap' case needs 'targets' here")
        engine = self._engine(targets, case.get("extensions"))
        try:
            document = policy_document(
                config, LdapQuestion.from_mapping(case["ldap"]).facts(config)
            )
        except QuestionError as exc:
            raise ValueError(f"ldap: {exc}") from None
        except LdapRefusedError as refused:
            # The core refuses it before the policy is asked, as a live gateway does.
            refusal = {"allow": False, "operation": None, "reasons": [refusal_reason(refused)]}
            return refusal, False
        return engine.evaluate(document), True

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


def _same(got: Any, expected: Any) -> bool:
    """Whether two JSON values are equal as JSON (Python's ``1 == True`` is not Rego's)."""
    return json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."
