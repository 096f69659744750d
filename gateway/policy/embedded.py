"""The embedded engine: Rego evaluated in-process by regopy (Microsoft's rego-cpp bindings).

Why regopy: it is the only maintained Rego implementation usable from CPython without a
separate process (OPA itself is Go; embedding it means a sidecar, which is what the OPA engine
is for). rego-cpp implements Rego v1 and publishes a bundle API: the modules and data are
compiled once into a bundle with a plan for our one rule, and each decision only sets the input
and runs that plan (about ten times cheaper than evaluating from source, architecture section 6).

A bundle is compiled once per revision, in the constructor, so compile errors surface at load or
reload as :class:`gateway.errors.ConfigError`. It is compiled by the planner's child process and
loaded here from rego-cpp's binary bundle format (:func:`gateway.policy.planner.compiled_bundle`):
compiling in this process kept 6.5 MiB in rego-cpp's allocator for its life, loading keeps about
0.5 MiB (issue 13). Decisions run inline on the event loop: one costs
a few hundred microseconds, less than handing it to a thread and back (measured in
``benchmarks/policy-report.md``), and the interpreter is not safe to share between threads.

Three regopy facts shape the code (each measured in ``benchmarks/policy-report.md``):

* a query costs more than running a rule planned as the bundle's entrypoint (about 30 us of a
  decision), so the bundle is planned for ``data.gateway.authz.decision`` alone and anything
  but a well-formed decision document is a deny (a ``false`` or missing rule reads as
  *undefined*);
* the input is built one value at a time through ctypes, so only the input fields the policy
  reads (the same fields the cache keys on) are passed in, and :func:`_input_node` makes those
  calls directly instead of through ``regopy.Input``, whose per-value wrappers copy every string
  into a fresh buffer (about 33 us of a decision on the build machine; this takes 20-28);
* ``regopy.Output`` renders the result to JSON twice and wraps it in objects; the engine renders
  it once and parses it with orjson. A failed output is never rendered (rego-cpp 1.5 can crash
  doing so).

The direct calls use ``regopy.rego_shared``, the C API regopy itself is written on; they are
pinned to its 1.5 signatures, which the tests exercise on every decision. Each call's output is
freed, and the input node once the interpreter has taken it.

Memory per decision depends on the order the process loaded its native libraries, not on these
calls: rego-cpp must be loaded before the C++ runtime, or every evaluation leaks about 6.7 KiB
(:mod:`gateway.policy.native` explains why). The ``gateway`` package loads it first; an engine
built in a process where something else came first logs an error saying so.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import regopy
from regopy import rego_shared

from gateway.errors import PolicyError, Problem
from gateway.policy.cache import DecisionCache, project
from gateway.policy.engine import POLICY_UNAVAILABLE, UNDEFINED, EngineError, Mode, PolicyEngine
from gateway.policy.loader import PolicyModule, PolicySet
from gateway.policy.native import load_order_problem
from gateway.policy.planner import (
    DECISION_ENTRYPOINT,
    PlanCompileError,
    compiled_bundle,
    reduced_plan,
)

__all__ = [
    "DECISION_ENTRYPOINT",
    "EmbeddedEngine",
    "compile_error",
    "compiled_plan",
    "evaluation_error",
    "new_interpreter",
]

_ENTRYPOINT = DECISION_ENTRYPOINT.encode("ascii")

log = logging.getLogger("gateway.policy")

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
        listed = list(policies.modules)
        try:
            self._native = _NativePolicy(listed, {**policies.extra_data, "gateway": policies.data})
        except regopy.RegoError as exc:
            raise compile_error(exc, listed) from None
        if not rego_shared.rego_bundle_ok(self._native.bundle):
            raise PolicyError([Problem("the policy does not compile", code="policy_compile_error")])
        problem = load_order_problem()
        if problem is not None:
            # Decisions stay correct, but memory grows with every cache miss until a restart.
            log.error(
                "embedded policy engine: %s",
                problem,
                extra={"event": "policy_engine_leaks", "revision": self.revision},
            )

    async def _evaluate(self, input: Mapping[str, Any]) -> Any:
        return self.evaluate(input)

    def evaluate(self, input: Mapping[str, Any]) -> Any:
        """Run the compiled query for ``input`` synchronously; the raw decision or UNDEFINED."""
        document = input if self._fields is None else project(input, self._fields)
        rego = self._native.interpreter
        node = _LIB.regoNewInput()
        try:
            _input_node(node, document, _MAX_INPUT_DEPTH)
            if _LIB.regoSetInput(rego, node) != _OK:
                raise EngineError(POLICY_UNAVAILABLE, "the engine refused the input")
        except (ValueError, TypeError, ctypes.ArgumentError) as exc:
            # A value Rego cannot represent (the input is built by the gateway, so this means a
            # bug, and a bug must deny).
            raise EngineError(POLICY_UNAVAILABLE, f"evaluation failed: {exc}") from None
        finally:
            _LIB.regoFreeInput(node)
        output = _LIB.regoBundleQueryEntrypoint(rego, self._native.bundle, _ENTRYPOINT)
        if not output:
            raise EngineError(POLICY_UNAVAILABLE, "evaluation failed (no output)")
        try:
            if not _LIB.regoOutputOk(output):
                raise EngineError(POLICY_UNAVAILABLE, "evaluation failed (rule conflict or error)")
            size = _LIB.regoOutputJSONSize(output)
            buffer = ctypes.create_string_buffer(size)
            if _LIB.regoOutputJSON(output, buffer, size) != _OK:
                raise EngineError(POLICY_UNAVAILABLE, "evaluation failed (unreadable output)")
            text = buffer.value
        finally:
            _LIB.regoFreeOutput(output)
        return _decision(text)


_LIB = rego_shared.rego
_OK = rego_shared.Code.OK
_MAX_INPUT_DEPTH = 8


def _input_node(node: int, value: Any, depth: int) -> None:
    """Append ``value`` to the input under construction (rego-cpp's stack-style input API)."""
    if value is True or value is False:
        status = _LIB.regoInputBoolean(node, value)
    elif isinstance(value, str):
        # The C API takes NUL-terminated strings: a NUL would silently cut the value short.
        if "\x00" in value:
            raise ValueError("the input holds a NUL character")
        status = _LIB.regoInputString(node, value.encode("utf-8"))
    elif value is None:
        status = _LIB.regoInputNull(node)
    elif isinstance(value, int):
        status = _LIB.regoInputInt(node, value)
    elif isinstance(value, float):
        status = _LIB.regoInputFloat(node, value)
    elif depth <= 0:
        raise ValueError("the input is nested too deeply")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str) or "\x00" in key:
                raise TypeError("input object keys must be strings without NUL")
            _check(_LIB.regoInputString(node, key.encode("utf-8")))
            _input_node(node, item, depth - 1)
            _check(_LIB.regoInputObjectItem(node))
        status = _LIB.regoInputObject(node, len(value))
    elif isinstance(value, list | tuple):
        for item in value:
            _input_node(node, item, depth - 1)
        status = _LIB.regoInputArray(node, len(value))
    else:
        raise TypeError(f"cannot pass a {type(value).__name__} to the policy")
    _check(status)


def _check(status: int) -> None:
    if status != _OK:
        raise ValueError(f"the engine refused an input value (code {status})")


def _decision(text: bytes) -> Any:
    """The value of the entrypoint in a rendered output, or UNDEFINED."""
    if text == b"undefined":
        return UNDEFINED
    try:
        rendered = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise EngineError(POLICY_UNAVAILABLE, evaluation_error(text)) from None
    # An entrypoint's value comes back as {"expressions": [value]}; anything else is not ours.
    expressions = rendered.get("expressions") if isinstance(rendered, dict) else None
    if not isinstance(expressions, list) or len(expressions) != 1:
        raise EngineError(POLICY_UNAVAILABLE, "evaluation failed (unexpected output)")
    return expressions[0]


def compiled_plan(modules: Iterable[PolicyModule]) -> dict[str, Any]:
    """What :mod:`gateway.policy.check` reads of the plan rego-cpp compiles ``modules`` into for
    the decision rule, compiled in a child process (:mod:`gateway.policy.planner`: saving a
    bundle, the only way rego-cpp gives its plan, takes tens of MiB its allocator never returns).

    Compiled without the allow-list data: which functions the rules call does not depend on it,
    and writing the data out with the plan cost 1.5 s at 1,000 targets.
    """
    listed = list(modules)
    names = _plan_names(listed)
    try:
        plan = reduced_plan({name: module.source for name, module in names.items()})
    except PlanCompileError as exc:
        raise compile_error(regopy.RegoError(str(exc)), listed, names) from None
    # A copy with the real paths: the planner keeps its answer for the next identical modules.
    static = plan["static"]
    files = []
    for entry in static.get("files") or ():
        module = names.get(str(entry.get("value"))) if isinstance(entry, dict) else None
        files.append({"value": str(module.path)} if module is not None else entry)
    return {**plan, "static": {**static, "files": files}}


def _plan_names(modules: list[PolicyModule]) -> dict[str, PolicyModule]:
    """The names modules are planned under.

    Saving a bundle writes every module below the directory under the name it was added with;
    under its own absolute path that rewrites the policy file in place (truncated first), so a
    process reading it meanwhile - another worker starting - found it empty. Names of our own
    keep every write inside the private directory; the plan gets the real paths back.
    """
    return {f"module{index}-{module.path.name}": module for index, module in enumerate(modules)}


def evaluation_error(text: bytes | str) -> str:
    """What went wrong, from an output rego-cpp rendered as an error instead of a value.

    An evaluation that fails part-way (an undefined function, most often) is still "ok" to
    rego-cpp, and renders as ``(error (errormsg N:message) ...)``; the message is the engine's
    own words, which is what an operator needs, not "unreadable output".
    """
    raw = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
    match = _ERRORMSG.search(raw)
    if match is None:
        return "evaluation failed (unreadable output)"
    message = " ".join(_prefixed(raw, match)[0].split())
    return f"evaluation failed: {message[:200]}"


class _NativePolicy:
    """An interpreter and the bundle planned for the decision rule, as rego-cpp handles.

    Each decision calls rego-cpp's C API with both handles (see the module docstring), and
    regopy's ``Interpreter`` and ``Bundle`` keep theirs private; so they are made and freed here
    through ``regopy.rego_shared``, the public functions regopy's classes are built on. The
    bundle is compiled by the planner's child from the modules (under their paths, so runtime
    errors name them) and the data, and loaded here. Raises ``regopy.RegoError`` when a module
    or the data is refused, the build fails or the bundle does not load.
    """

    def __init__(self, modules: list[PolicyModule], data: Mapping[str, Any]) -> None:
        # Set before anything can fail, so __del__ frees exactly what was made.
        self.bundle: int = 0
        self.interpreter: int = rego_shared.rego_new()
        # The library prints errors to standard output at its default level; we report them.
        rego_shared.rego_set_log_level(self.interpreter, regopy.LogLevel.NONE)
        try:
            raw = compiled_bundle(
                {str(module.path): module.source for module in modules},
                json.dumps(dict(data)),
                plan_modules={name: m.source for name, m in _plan_names(modules).items()},
            )
        except PlanCompileError as exc:
            raise regopy.RegoError(str(exc)) from None
        # rego-cpp loads a binary bundle only from a file: a private one, gone once loaded.
        try:
            handle, path = tempfile.mkstemp(prefix="gateway-bundle-", suffix=".rbb")
            try:
                with os.fdopen(handle, "wb") as out:
                    out.write(raw)
                self.bundle = rego_shared.rego_bundle_load_binary(self.interpreter, path)
            finally:
                os.unlink(path)
        except OSError as exc:
            # Fail closed, as for a planner that cannot run: the revision is refused.
            raise PolicyError(
                [
                    Problem(
                        f"the policy could not be compiled: the bundle could not be handed "
                        f"over: {exc.strerror or exc}",
                        code="policy_check_failed",
                        hint="the revision is refused until it can; see the gateway's log",
                    )
                ]
            ) from None

    def __del__(self) -> None:
        if self.bundle:
            rego_shared.rego_free_bundle(self.bundle)
            self.bundle = 0
        if self.interpreter:
            rego_shared.rego_free(self.interpreter)
            self.interpreter = 0


def new_interpreter(
    modules: Iterable[PolicyModule],
    data: Mapping[str, Any],
    *,
    names: Mapping[str, PolicyModule] | None = None,
) -> regopy.Interpreter:
    """A quiet interpreter holding ``modules`` and ``data``; ConfigError if a module is invalid.

    Each module is added under its path, or under its key in ``names`` when given."""
    rego = regopy.Interpreter()
    # The library prints errors to standard output at its default level; we report them ourselves.
    rego.log_level = regopy.LogLevel.NONE
    listed = list(modules)
    named = names if names is not None else {str(module.path): module for module in listed}
    for name, module in named.items():
        try:
            rego.add_module(name, module.source)
        except regopy.RegoError as exc:
            raise compile_error(exc, listed, names) from None
    rego.add_data(dict(data))
    return rego


def compile_error(
    exc: Exception,
    modules: Iterable[PolicyModule],
    names: Mapping[str, PolicyModule] | None = None,
) -> PolicyError:
    """A located ConfigError from a rego-cpp error (``FILE:LINE:COL: message``); ``names``: the
    names modules were added under when not their paths (reported by path all the same)."""
    text = str(exc)
    by_name = {str(m.path): m for m in modules} | dict(names or {})
    sources = {name: m.source for name, m in by_name.items()}
    problems: list[Problem] = []
    for match in _ERROR.finditer(text):
        file, rest = _prefixed(text, match)
        location = re.match(r"\|(\d+)\|", rest)
        message_match = _ERRORMSG.search(rest)
        message = _prefixed(rest, message_match)[0] if message_match else "invalid Rego"
        line = column = 0
        if location and file in sources:
            line, column = _position(sources[file], int(location.group(1)))
        shown = str(by_name[file].path) if file in by_name else file
        problems.append(
            Problem(message, code="policy_compile_error", file=shown, line=line, column=column)
        )
        if len(problems) >= 20:
            break
    if not problems:
        problems.append(Problem(_first_line(exc), code="policy_compile_error"))
    return PolicyError(problems)


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
