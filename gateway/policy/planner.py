"""Compiling a policy's plan in a short-lived child process, so its memory leaves with the child.

The call check of :mod:`gateway.policy.check` reads the plan rego-cpp compiles for the decision
rule. rego-cpp offers that plan only by saving a bundle to disk, and saving one takes far more
memory than the plan itself: about 21 MiB for the shipped policy (a 250 KB ``plan.json``), plus
4 MiB for the build. rego-cpp's allocator (snmalloc, see :mod:`gateway.policy.native`) keeps what
it took for the life of the process, so a running gateway that compiled the plan in-process
carried those 25-29 MiB idle (issue 13, measured in ``benchmarks/pipeline-report.md``). Here the
plan is compiled by ``python -m gateway.policy.planner``, which reads the modules on standard
input and writes back only what the check reads: the built-in and policy function names, the
module names, and each call's function and position. The child loads rego-cpp before anything
else, so the check also runs in a process whose native load order is wrong.

The same child compiles the embedded engine's bundle (:func:`compiled_bundle`): modules and data
built for the decision rule and written in rego-cpp's binary bundle format, which the engine
loads. Compiling the shipped policy in the gateway's own process kept 6.5 MiB in rego-cpp's
allocator for the life of the process; loading the compiled bundle takes about 0.5 MiB (issue
13). One child answers both at start and reload, so a revision costs one child start.

Fails closed: a child that cannot be started, exceeds :data:`PLAN_TIMEOUT` or answers nonsense
raises :class:`gateway.errors.PolicyError`, and the revision is refused. Results are kept per
module set (names and sources, hashed; the bundle also per data), so a reload that changes no
policy module and no data, and the many engines a test session builds, start no child.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from gateway.errors import PolicyError, Problem

__all__ = [
    "DECISION_ENTRYPOINT",
    "PLAN_TIMEOUT",
    "PlanCompileError",
    "compiled_bundle",
    "plan_calls",
    "reduced_plan",
]

DECISION_ENTRYPOINT = "gateway/authz/decision"
"""The one rule a bundle is planned for (``data.gateway.authz.decision``)."""

PLAN_TIMEOUT = 120.0
"""Seconds the child may take (about 0.6 s for the shipped policy on the build machine)."""
_MAX_PLAN_BYTES = 64 << 20
_MAX_BUNDLE_BYTES = 64 << 20
# At most 1,000 modules of at most 1 MiB each (policy/loader.py), twice (plan and bundle), and
# the data.
_MAX_INPUT_BYTES = 512 << 20
_MAX_ANSWER_BYTES = (16 << 20) + _MAX_BUNDLE_BYTES * 4 // 3
_MAX_STDERR_BYTES = 4096
_CACHED = 8
# Bundles larger than this are not kept: a process holds at most _CACHED of them.
_MAX_CACHED_BUNDLE = 1 << 20

_cache: OrderedDict[bytes, dict[str, Any]] = OrderedDict()
_bundles: OrderedDict[bytes, bytes] = OrderedDict()


class PlanCompileError(Exception):
    """rego-cpp refused the modules; the message is its error text, for ``compile_error``."""


def reduced_plan(modules: Mapping[str, str]) -> dict[str, Any]:
    """The parts of the plan compiled for ``modules`` (name -> Rego source) that the call check
    reads, in the plan's own shape: ``static.builtin_funcs``, ``static.files``, ``funcs.funcs``
    and ``calls`` (every distinct ``CallStmt``).

    Raises PlanCompileError when rego-cpp refuses the modules, PolicyError when the plan cannot
    be had (the child failed, timed out, or the plan exceeds 64 MiB).
    """
    key = _modules_key(modules)
    cached = _cache.get(key)
    if cached is not None:
        _cache.move_to_end(key)
        return cached
    answer = _ask_child(json.dumps({"modules": dict(modules)}).encode("utf-8"))
    return _keep_plan(key, answer)


def compiled_bundle(
    modules: Mapping[str, str], data: str, *, plan_modules: Mapping[str, str] | None = None
) -> bytes:
    """The bundle ``modules`` (name -> Rego source) and ``data`` (a JSON document) compile to,
    planned for :data:`DECISION_ENTRYPOINT`, in rego-cpp's binary bundle format.

    With ``plan_modules``, the same child also compiles their plan for :func:`reduced_plan`,
    which then answers from what it kept (one child per revision instead of two). Raises
    PlanCompileError with rego-cpp's message when the modules or data are refused, PolicyError
    when the bundle cannot be had.
    """
    key = _modules_key({**modules, "\0data": data})
    cached = _bundles.get(key)
    if cached is not None:
        _bundles.move_to_end(key)
        return cached
    request: dict[str, Any] = {"bundle": {"modules": dict(modules), "data": data}}
    plan_key = _modules_key(plan_modules) if plan_modules is not None else None
    if plan_modules is not None and plan_key not in _cache:
        request["modules"] = dict(plan_modules)
    answer = _ask_child(json.dumps(request).encode("utf-8"), _COMPILE)
    if "bundle_error" in answer:
        raise PlanCompileError(str(answer["bundle_error"]))
    if answer.get("bundle_not_ok"):
        raise PolicyError([Problem("the policy does not compile", code="policy_compile_error")])
    if answer.get("bundle_too_large"):
        raise PolicyError(
            [Problem("the compiled policy bundle is larger than 64 MiB", code="policy_too_large")]
        )
    encoded = answer.get("bundle")
    try:
        raw = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else b""
    except binascii.Error:
        raw = b""
    if not raw:
        raise _unavailable("the planner gave no bundle", _COMPILE)
    if plan_key is not None and "modules" in request:
        # A plan that failed is asked for again, and reported, by the call check.
        with contextlib.suppress(PlanCompileError, PolicyError):
            _keep_plan(plan_key, answer)
    if len(raw) <= _MAX_CACHED_BUNDLE:
        _bundles[key] = raw
        while len(_bundles) > _CACHED:
            _bundles.popitem(last=False)
    return raw


def _modules_key(modules: Mapping[str, str]) -> bytes:
    digest = hashlib.sha256()
    for name, source in modules.items():
        for part in (name, source):
            encoded = part.encode("utf-8")
            digest.update(len(encoded).to_bytes(8, "big"))
            digest.update(encoded)
    return digest.digest()


def _keep_plan(key: bytes, answer: Mapping[str, Any]) -> dict[str, Any]:
    if "error" in answer:
        raise PlanCompileError(str(answer["error"]))
    if answer.get("too_large"):
        raise _too_large()
    plan = answer.get("plan")
    if not (
        isinstance(plan, dict)
        and isinstance(plan.get("static"), dict)
        and isinstance(plan.get("funcs"), dict)
        and isinstance(plan.get("calls"), list)
    ):
        raise _unavailable("the planner gave no plan")
    _cache[key] = plan
    while len(_cache) > _CACHED:
        _cache.popitem(last=False)
    return plan


def _too_large() -> PolicyError:
    return PolicyError(
        [Problem("the compiled policy plan is larger than 64 MiB", code="policy_too_large")]
    )


def plan_calls(node: Any) -> Iterator[dict[str, Any]]:
    """Every ``CallStmt``'s statement in a plan (an iterative walk: plans nest blocks deeply)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("type") == "CallStmt" and isinstance(item.get("stmt"), dict):
                yield item["stmt"]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


_CHECK = "the policy's function calls could not be checked"
_COMPILE = "the policy could not be compiled"


def _unavailable(why: str, failed: str = _CHECK) -> PolicyError:
    return PolicyError(
        [
            Problem(
                f"{failed}: {why}",
                code="policy_check_failed",
                hint="the revision is refused until the check can run; see the gateway's log",
            )
        ]
    )


def _ask_child(request: bytes, failed: str = _CHECK) -> dict[str, Any]:
    """Run the planner child on ``request``; its JSON answer (bounded) or PolicyError saying
    what ``failed``."""
    try:
        raw = _run_child(request, failed)
    except OSError as exc:
        # The files that take the child's output cannot be made (or read): fail closed.
        raise _unavailable(f"the planner's output cannot be kept: {exc.strerror}", failed) from None
    if len(raw) > _MAX_ANSWER_BYTES:
        raise _unavailable("the planner's answer is too large", failed)
    try:
        answer = json.loads(raw)
    except ValueError:
        raise _unavailable("the planner's answer is not JSON", failed) from None
    if not isinstance(answer, dict):
        raise _unavailable("the planner's answer is not an object", failed)
    return answer


def _run_child(request: bytes, failed: str) -> bytes:
    """The child's standard output for ``request`` (at most one byte over the bound)."""
    argv = [sys.executable, "-m", "gateway.policy.planner"]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            completed = subprocess.run(  # noqa: S603 - this interpreter, fixed arguments
                argv,
                input=request,
                stdout=out,
                stderr=err,
                timeout=PLAN_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise _unavailable(f"the planner took longer than {PLAN_TIMEOUT:g} s", failed) from None
        except OSError as exc:
            raise _unavailable(f"the planner could not start: {exc.strerror}", failed) from None
        out.seek(0)
        raw = out.read(_MAX_ANSWER_BYTES + 1)
        if completed.returncode != 0:
            err.seek(0, os.SEEK_END)
            err.seek(max(0, err.tell() - _MAX_STDERR_BYTES))
            tail = err.read(_MAX_STDERR_BYTES).decode("utf-8", errors="replace").strip()
            last = tail.splitlines()[-1] if tail else "no message"
            raise _unavailable(
                f"the planner exited with {completed.returncode}: {last[:200]}", failed
            )
    return raw


def _reduce(plan: Mapping[str, Any]) -> dict[str, Any]:
    """What the call check reads of ``plan``, in the plan's shape (see :func:`reduced_plan`)."""
    static = _mapping(plan.get("static"))
    funcs = _mapping(plan.get("funcs"))
    seen: set[tuple[Any, ...]] = set()
    calls: list[dict[str, Any]] = []
    for stmt in plan_calls(plan):
        fields = tuple(stmt.get(key) for key in _CALL_FIELDS)
        if fields not in seen and all(isinstance(f, str | int) for f in fields):
            seen.add(fields)
            calls.append({"type": "CallStmt", "stmt": dict(zip(_CALL_FIELDS, fields, strict=True))})
    return {
        "static": {
            "builtin_funcs": _named(static.get("builtin_funcs"), "name"),
            "files": _named(static.get("files"), "value"),
        },
        "funcs": {"funcs": _named(funcs.get("funcs"), "name")},
        "calls": calls,
    }


_CALL_FIELDS = ("func", "file", "row", "col")


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _named(entries: Any, key: str) -> list[dict[str, Any]]:
    """``[{key: entry[key]}, ...]`` for the object entries of a plan list."""
    listed = entries if isinstance(entries, list) else []
    return [{key: entry.get(key)} for entry in listed if isinstance(entry, dict)]


def _plan(modules: Mapping[str, str]) -> dict[str, Any]:
    """The child's work: compile ``modules``, save the bundle privately, reduce its plan."""
    import regopy  # loaded by the gateway package already (native load order)

    rego = regopy.Interpreter()
    # The library prints errors to standard output at its default level, where the answer goes.
    rego.log_level = regopy.LogLevel.NONE
    try:
        for name, source in modules.items():
            rego.add_module(name, source)
        rego.add_data({})
        bundle = rego.build(None, [DECISION_ENTRYPOINT])
    except regopy.RegoError as exc:
        return {"error": str(exc)}
    # Each module is written below the directory under the name it was added with: the caller's
    # names keep every write inside this private directory.
    with tempfile.TemporaryDirectory(prefix="gateway-plan-") as directory:
        rego.save_bundle(directory, bundle)
        with (Path(directory) / "plan.json").open("rb") as handle:
            raw = handle.read(_MAX_PLAN_BYTES + 1)
    if len(raw) > _MAX_PLAN_BYTES:
        return {"too_large": True}
    plan = json.loads(raw)
    return {"plan": _reduce(plan if isinstance(plan, dict) else {})}


def _bundle(modules: Mapping[str, str], data: str) -> dict[str, Any]:
    """The child's work for the engine: compile ``modules`` and ``data`` as the engine used to in
    its own process, and write the bundle in the binary format (one file, no module copies)."""
    import regopy
    from regopy import rego_shared

    interpreter = rego_shared.rego_new()
    bundle = 0
    try:
        rego_shared.rego_set_log_level(interpreter, regopy.LogLevel.NONE)
        try:
            for name, source in modules.items():
                rego_shared.rego_add_module(interpreter, name, source)
            rego_shared.rego_add_data_json(interpreter, data)
            rego_shared.rego_add_entrypoint(interpreter, DECISION_ENTRYPOINT)
            bundle = rego_shared.rego_build(interpreter)
        except regopy.RegoError as exc:
            return {"bundle_error": str(exc)}
        if not rego_shared.rego_bundle_ok(bundle):
            return {"bundle_not_ok": True}
        with tempfile.TemporaryDirectory(prefix="gateway-bundle-") as directory:
            path = Path(directory) / "bundle.rbb"
            rego_shared.rego_bundle_save_binary(interpreter, str(path), bundle)
            with path.open("rb") as handle:
                raw = handle.read(_MAX_BUNDLE_BYTES + 1)
    finally:
        if bundle:
            rego_shared.rego_free_bundle(bundle)
        rego_shared.rego_free(interpreter)
    if len(raw) > _MAX_BUNDLE_BYTES:
        return {"bundle_too_large": True}
    return {"bundle": base64.b64encode(raw).decode("ascii")}


def _is_module_map(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


def main() -> int:
    """``python -m gateway.policy.planner``: a JSON request on stdin, the answer on stdout.

    The request holds ``modules`` (a module map: the plan is wanted) and/or ``bundle`` (a
    module map and the data as JSON text: the engine's bundle is wanted)."""
    raw = sys.stdin.buffer.read(_MAX_INPUT_BYTES + 1)
    if len(raw) > _MAX_INPUT_BYTES:
        print("input too large", file=sys.stderr)
        return 2
    request = json.loads(raw)
    if not isinstance(request, dict):
        print("input is not an object", file=sys.stderr)
        return 2
    modules = request.get("modules")
    wanted = request.get("bundle")
    if (
        (modules is None and wanted is None)
        or (modules is not None and not _is_module_map(modules))
        or (
            wanted is not None
            and not (
                isinstance(wanted, dict)
                and _is_module_map(wanted.get("modules"))
                and isinstance(wanted.get("data"), str)
            )
        )
    ):
        print("input is not a module map", file=sys.stderr)
        return 2
    answer: dict[str, Any] = {}
    if wanted is not None:
        answer.update(_bundle(wanted["modules"], wanted["data"]))
    if modules is not None:
        answer.update(_plan(modules))
    sys.stdout.buffer.write(json.dumps(answer).encode("utf-8"))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
