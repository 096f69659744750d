"""Proving a compiled policy can decide, before any engine built from it is used.

rego-cpp 1.5 compiles a module that calls a function nobody defined (``not_a_function(x)``,
``data.corp.lib.f(x)`` without that package) without complaint; the call fails only when an
evaluation reaches it, and then every request it touches is a 503. A policy can also compile and
still fail every evaluation (two complete definitions of ``decision`` that conflict), or answer
something that is not a decision document. None of that may pass for a working policy, so every
engine the gateway builds (``gateway run`` at start and reload, ``validate``, ``explain``,
``policy-test``, ``check``) goes through :func:`check_policy` first:

1. **calls**: every function the compiled plan calls must be a built-in the engine provides or a
   function some module defines; an undefined one is reported at the ``FILE:LINE:COL`` of the
   call, read from the plan (rego-cpp records the position of every statement it planned). A
   built-in rego-cpp knows by name but does not implement (``http.send``, ``net.cidr_contains``,
   ...: it evaluates them as undefined, so a veto calling one never fires where OPA's would) is
   reported the same way;
2. **smoke evaluation**: the decision is evaluated for one request per declared operation (its
   first method on its first path, a stream where it allows them), one method it does not allow,
   one unsigned request, and one stream per tcp target, each built by the canonicaliser and the
   input builder that live requests go through; and for every LDAP target, one operation per rule
   (each of its kinds, inside its first subtree), an anonymous search and a search with a
   refused control, built by :class:`gateway.ldap.decide.LdapChain` as live operations are. Each
   must produce a well-formed decision document of this revision (for LDAP, one with the
   ``ldap`` part). An evaluation error or a missing document refuses the policy.

The smoke evaluation cannot reach every branch a request could take, which is why the call check
exists; together they turn the failures this module was written for into configuration errors
at load and reload, where the last good revision stays in place.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import regopy

from gateway.config.model import LDAP_SCHEMES, GatewayConfig, Target
from gateway.errors import PolicyError, Problem
from gateway.forward.canonical import canonicalise
from gateway.forward.rejections import RequestRejected
from gateway.ldap.errors import LdapRefusedError
from gateway.policy.engine import UNDEFINED, EngineError, document_problem
from gateway.policy.input import build_input
from gateway.policy.loader import PolicyModule, PolicySet
from gateway.policy.planner import plan_calls

__all__ = [
    "MAX_SMOKE_INPUTS",
    "Evaluator",
    "check_policy",
    "smoke_inputs",
    "undefined_calls",
]

log = logging.getLogger("gateway.policy")

MAX_SMOKE_INPUTS = 512
"""At most this many evaluations per check (about 0.15 s at 1,000 targets on the build machine)."""
_MAX_PROBLEMS = 20
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


class Evaluator(Protocol):
    """What the check needs of an engine (:class:`gateway.policy.embedded.EmbeddedEngine`)."""

    def evaluate(self, input: Mapping[str, Any]) -> Any:
        """The raw decision document for ``input``, or UNDEFINED; raises EngineError."""
        ...


def check_policy(engine: Evaluator, policies: PolicySet, config: GatewayConfig) -> None:
    """Raise ConfigError unless ``engine`` (an EmbeddedEngine for ``policies``) can decide.

    ``config`` supplies the requests of the smoke evaluation: the same configuration whose
    allow-list is ``data.gateway``.
    """
    from gateway.policy.embedded import compiled_plan  # the embedded module imports this one

    problems = undefined_calls(compiled_plan(policies.modules), policies.modules)
    if problems:
        raise PolicyError(problems)
    for document in smoke_inputs(config):
        problem = _evaluation_problem(engine, document, policies)
        if problem is not None:
            raise PolicyError([problem])
    for document in ldap_smoke_inputs(config):
        problem = _evaluation_problem(engine, document, policies)
        if problem is not None:
            raise PolicyError([problem])


def undefined_calls(plan: Mapping[str, Any], modules: tuple[PolicyModule, ...]) -> list[Problem]:
    """A located problem for every call in ``plan`` to a function that does not exist."""
    static = plan.get("static") or {}
    builtins = {entry.get("name") for entry in static.get("builtin_funcs") or ()}
    functions = {entry.get("name") for entry in (plan.get("funcs") or {}).get("funcs") or ()}
    files = [entry.get("value", "") for entry in static.get("files") or ()]
    problems: list[Problem] = []
    seen: set[tuple[str, int, int]] = set()
    for call in plan_calls(plan):
        name = call.get("func")
        if not isinstance(name, str) or name in functions:
            continue
        lacking = name in builtins and not _implemented(name)
        if name in builtins and not lacking:
            continue
        file = _module_for(files, call.get("file"), name, call.get("row"), modules)
        line = call.get("row", -1) + 1 if isinstance(call.get("row"), int) else 0
        column = call.get("col", -1) + 1 if isinstance(call.get("col"), int) else 0
        if (file, line, column) in seen:
            continue
        seen.add((file, line, column))
        message, code, hint = _UNAVAILABLE if lacking else _UNDEFINED
        problems.append(
            Problem(
                message.format(name=repr(name)),
                code=code,
                file=file,
                line=line,
                column=column,
                hint=hint,
            )
        )
        if len(problems) >= _MAX_PROBLEMS:
            break
    return problems


_UNDEFINED = (
    "call to {name}, which is neither a built-in of the embedded engine nor a function of any "
    "policy module; every request reaching it would be refused with 503",
    "policy_undefined_function",
    "define the function, fix its name, or add the module that defines it",
)
_UNAVAILABLE = (
    "call to the built-in {name}, which the embedded engine does not implement: it evaluates "
    "the call as undefined, so the rule would not hold where OPA's does",
    "policy_unavailable_builtin",
    "decide without it (the allow-list data or another built-in)",
)


@functools.cache
def _implemented(name: str) -> bool:
    """Whether rego-cpp implements the built-in ``name`` (it also knows some by name only, as
    placeholders that evaluate to undefined)."""
    rego = regopy.Interpreter()
    rego.log_level = regopy.LogLevel.NONE
    return bool(rego.is_builtin(name))


def smoke_inputs(config: GatewayConfig) -> Iterator[dict[str, Any]]:
    """Policy input documents for the smoke evaluation, built like a live request's."""
    count = 0
    for name in sorted(config.targets):
        target = config.targets[name]
        for facts in _requests(target):
            method, path, websocket, signed = facts
            try:
                canonical = canonicalise(
                    config,
                    method=method,
                    target=name,
                    request_target=path,
                    headers=[("accept", "*/*")],
                    websocket=websocket,
                )
            except RequestRejected:
                continue  # refused before the policy: nothing for the engine to decide
            yield build_input(canonical, signed=signed, keyid="policy-check" if signed else None)
            count += 1
            if count >= MAX_SMOKE_INPUTS:
                return


def _requests(target: Target) -> Iterator[tuple[str, str, bool, bool]]:
    """(method, path, websocket, signed) for one target: granted, refused and unsigned ones."""
    if target.scheme == "tcp":
        yield "GET", "/", True, True
        yield "GET", "/", True, False
        return
    for index, operation in enumerate(target.operations):
        path = _example_path(operation.paths[0])
        yield operation.methods[0], path, False, True
        if operation.websocket:
            yield "GET", path, True, True
        other = next((m for m in _METHODS if m not in operation.methods), None)
        if other is not None:
            yield other, path, False, True
        if index == 0:
            yield operation.methods[0], path, False, False


def _example_path(pattern: str) -> str:
    """A request path the pattern matches (``*`` and ``**`` become one segment)."""
    segments = ["x" if part in ("*", "**") else part for part in pattern.split("/")]
    return "/".join(segments) or "/"


def ldap_smoke_inputs(config: GatewayConfig) -> Iterator[dict[str, Any]]:
    """Policy input documents for the smoke evaluation of LDAP targets, built like a live
    operation's (:func:`gateway.ldap.decide.policy_document`)."""
    if not any(target.scheme in LDAP_SCHEMES for target in config.targets.values()):
        # Nothing to build, and nothing to import: the LDAP decision and its DN parser stay out
        # of a gateway without LDAP targets (issue 13, memory).
        return
    from gateway.ldap.decide import policy_document, smoke_facts

    count = 0
    for facts in smoke_facts(config):
        try:
            yield policy_document(config, facts)
        except LdapRefusedError:
            continue  # refused before the policy: nothing for the engine to decide
        count += 1
        if count >= MAX_SMOKE_INPUTS:
            return


def _describe(document: Mapping[str, Any]) -> str:
    ldap = document.get("ldap")
    if isinstance(ldap, Mapping):
        return f"LDAP {ldap.get('operation')} on {document['target']} {ldap.get('dn', '')!r}"
    return (
        f"{document['method']} {document['target']} {document['path']}"
        f"{' (stream)' if document['websocket'] else ''}"
        f"{'' if document['signature']['verified'] else ' (unsigned)'}"
    )


def _evaluation_problem(
    engine: Any, document: dict[str, Any], policies: PolicySet
) -> Problem | None:
    request = _describe(document)
    try:
        result = engine.evaluate(document)
    except EngineError as exc:
        return Problem(
            f"the policy cannot decide {request}: {exc.detail}",
            code="policy_evaluation_error",
            file=_decision_file(policies),
            hint="the engine gives no location for this: look for a rule or function that can "
            "have two different values for one input, or a built-in given a value of the wrong "
            "type",
        )
    why = (
        "data.gateway.authz.decision is undefined"
        if result is UNDEFINED
        else document_problem(result, policies.revision)
    )
    if why is None and "ldap" in document and "ldap" not in result:
        why = "an LDAP operation was answered without the ldap part (strip_attributes, ...)"
    if why is None:
        return None
    return Problem(
        f"the policy gives no valid decision for {request}: {why}",
        code="policy_undefined",
        file=_decision_file(policies),
        hint="data.gateway.authz.decision must be a decision document for every input",
    )


def _decision_file(policies: PolicySet) -> str:
    deciders = [m for m in policies.modules if m.package == "gateway.authz"]
    return str(deciders[0].path) if deciders else ""


def _module_for(
    files: list[str], index: Any, name: str, row: Any, modules: tuple[PolicyModule, ...]
) -> str:
    """The path of the module a plan statement came from.

    The plan names files by the name they were added under, which may be shortened to the base
    name; when two modules share it, the one whose line ``row`` mentions ``name`` is meant.
    """
    if not isinstance(index, int) or not 0 <= index < len(files):
        return ""
    planned = files[index]
    candidates = [m for m in modules if str(m.path) == planned or Path(planned).name == m.path.name]
    short = name.rsplit(".", 1)[-1]
    for module in candidates:
        lines = module.source.splitlines()
        if isinstance(row, int) and 0 <= row < len(lines) and short in lines[row]:
            return str(module.path)
    return str(candidates[0].path) if candidates else planned
