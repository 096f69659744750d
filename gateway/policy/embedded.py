"""The embedded engine: Rego evaluated in-process by regopy (Microsoft's rego-cpp bindings).

Why regopy: it is the only maintained Rego implementation usable from CPython without a
separate process (OPA itself is Go; embedding it means a sidecar, which is what the OPA engine
is for). rego-cpp implements Rego v1 and publishes a bundle API: the modules and data are
compiled once into a bundle with a plan for our one query, and each decision only sets the input
and runs that plan (about ten times cheaper than evaluating from source, architecture section 6).

A bundle is compiled once per revision, in the constructor, so compile errors surface at load or
reload as :class:`gateway.errors.ConfigError`. Decisions run inline on the event loop: one costs
a few hundred microseconds, less than handing it to a thread and back (measured in
``benchmarks/policy-report.md``), and the interpreter is not safe to share between threads.

Two regopy facts shape the code: a bare rule query whose value is ``false`` comes back
*undefined*, so the query binds the decision to a variable and anything but a well-formed
document is a deny; and building the input costs per value, so only the input fields the policy
reads (the same fields the cache keys on) are passed in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import regopy

from gateway.errors import ConfigError, Problem
from gateway.policy.cache import DecisionCache, project
from gateway.policy.engine import POLICY_UNAVAILABLE, UNDEFINED, EngineError, Mode, PolicyEngine
from gateway.policy.loader import PolicyModule, PolicySet

__all__ = ["DECISION_QUERY", "EmbeddedEngine", "compile_error", "new_interpreter"]

DECISION_QUERY = "decision := data.gateway.authz.decision"

# rego-cpp errors are s-expressions with length-prefixed strings:
#   (error 8:bad.rego|32|2 (errormsg 24:Invalid boolean operator) ...)
_ERROR = re.compile(r"\(error (\d+):")
_ERRORMSG = re.compile(r"\(errormsg (\d+):")


class EmbeddedEngine(PolicyEngine):
    """Decides with a regopy bundle compiled once for one revision."""

    name = "embedded"

    def __init__(self, policies: PolicySet, *, mode: Mode, cache: DecisionCache | None) -> None:
        super().__init__(revision=policies.revision, mode=mode, cache=cache)
        self._fields = policies.cache_plan.fields
        self._rego = new_interpreter(
            policies.modules, {**policies.extra_data, "gateway": policies.data}
        )
        try:
            bundle = self._rego.build(DECISION_QUERY)
        except regopy.RegoError as exc:
            raise compile_error(exc, policies.modules) from None
        if not bundle.ok():
            raise ConfigError([Problem("the policy does not compile", code="policy_compile_error")])
        self._bundle = bundle

    async def _evaluate(self, input: Mapping[str, Any]) -> Any:
        return self.evaluate(input)

    def evaluate(self, input: Mapping[str, Any]) -> Any:
        """Run the compiled query for ``input`` synchronously; the raw decision or UNDEFINED."""
        document = input if self._fields is None else project(input, self._fields)
        try:
            self._rego.set_input(regopy.Input(document))
            output = self._rego.query_bundle(self._bundle)
        except (regopy.RegoError, ValueError, TypeError) as exc:
            # ValueError/TypeError: a value regopy cannot represent (the input is built by the
            # gateway, so this means a bug, and a bug must deny).
            raise EngineError(
                POLICY_UNAVAILABLE, f"evaluation failed: {_first_line(exc)}"
            ) from None
        if not output.ok():
            raise EngineError(POLICY_UNAVAILABLE, "evaluation failed (rule conflict or error)")
        if not output.results:
            return UNDEFINED
        return output.results[0].bindings.get("decision", UNDEFINED)


def new_interpreter(modules: Iterable[PolicyModule], data: Mapping[str, Any]) -> regopy.Interpreter:
    """A quiet interpreter holding ``modules`` and ``data``; ConfigError if a module is invalid."""
    rego = regopy.Interpreter()
    # The library prints errors to standard output at its default level; we report them ourselves.
    rego.log_level = regopy.LogLevel.NONE
    listed = list(modules)
    for module in listed:
        try:
            rego.add_module(str(module.path), module.source)
        except regopy.RegoError as exc:
            raise compile_error(exc, listed) from None
    rego.add_data(dict(data))
    return rego


def compile_error(exc: Exception, modules: Iterable[PolicyModule]) -> ConfigError:
    """A located ConfigError from a rego-cpp error (``FILE:LINE:COL: message``)."""
    text = str(exc)
    sources = {str(m.path): m.source for m in modules}
    problems: list[Problem] = []
    for match in _ERROR.finditer(text):
        file, rest = _prefixed(text, match)
        location = re.match(r"\|(\d+)\|", rest)
        message_match = _ERRORMSG.search(rest)
        message = _prefixed(rest, message_match)[0] if message_match else "invalid Rego"
        line = column = 0
        if location and file in sources:
            line, column = _position(sources[file], int(location.group(1)))
        problems.append(
            Problem(message, code="policy_compile_error", file=file, line=line, column=column)
        )
        if len(problems) >= 20:
            break
    if not problems:
        problems.append(Problem(_first_line(exc), code="policy_compile_error"))
    return ConfigError(problems)


def _prefixed(text: str, match: re.Match[str]) -> tuple[str, str]:
    """The length-prefixed string starting at ``match`` and the text after it."""
    start = match.end()
    length = int(match.group(1))
    return text[start : start + length], text[start + length :]


def _position(source: str, offset: int) -> tuple[int, int]:
    """1-based line and column of byte ``offset`` in ``source``."""
    head = source.encode("utf-8")[:offset].decode("utf-8", errors="ignore")
    line = head.count("\n") + 1
    column = len(head) - (head.rfind("\n") + 1) + 1
    return line, column


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
