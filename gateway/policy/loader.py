"""Finding the Rego modules of a configuration and building its engine.

The built-in decision policy and its tests ship inside the package (:mod:`gateway.packaged`) and
are always loaded first. Every ``*.rego`` file under ``policy.directories`` (the operator's
extensions) is loaded after them, except ``*_test.rego`` files (policy tests, run by ``gateway
policy-test``) and anything inside a directory named ``examples`` or starting with ``.``
(examples are copied out to be enabled, never loaded where they lie). A missing or empty
directory adds nothing. An operator file with the path of a built-in one (``gateway/authz.rego``)
replaces it, which is logged: that is for developing a change to the built-in policy.
Problems are reported as :class:`gateway.errors.ConfigError`, like configuration problems, so a
reload with a broken policy keeps the last good configuration.

Packages are checked because composition must stay safe: ``data.gateway`` is the allow-list and
``gateway.authz`` the decision, so exactly one module declares ``package gateway.authz`` and no
other module may declare anything under ``gateway``. Organisation modules that veto requests live
in ``gateway_extensions.<name>``; helpers may use any other package.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import ConfigError, PolicyError, Problem
from gateway.packaged import POLICY_ROOT
from gateway.policy.cache import CachePlan, DecisionCache, plan_cache, strip_comments
from gateway.policy.data import policy_data

if TYPE_CHECKING:
    from collections.abc import Mapping

    from gateway.config.loader import LoadedConfig
    from gateway.policy.embedded import EmbeddedEngine
    from gateway.policy.engine import Mode, PolicyEngine

__all__ = [
    "DECISION_PACKAGE",
    "EXTENSIONS_PACKAGE",
    "PolicyModule",
    "PolicySet",
    "build_engine",
    "checked_engine",
    "load_policies",
    "rego_files",
    "verify_policy",
]

log = logging.getLogger("gateway.policy")

DECISION_PACKAGE = "gateway.authz"
EXTENSIONS_PACKAGE = "gateway_extensions"
MAX_MODULES = 256
MAX_MODULE_BYTES = 1 << 20
SKIPPED_DIRECTORIES = frozenset({"examples"})

# Built-ins the embedded engine (rego-cpp 1.5.2) crashes the process on inside a compiled
# bundle; refusing the module at load beats losing the gateway at the first request.
_CRASHING_BUILTINS = re.compile(r"\b(time\.weekday)\s*\(")
# Built-ins rego-cpp 1.5.2 answers differently from OPA (its built-in reference) for some
# arguments: a policy using one would decide otherwise under the OPA engine, and otherwise than
# its author read it. Refused in policy modules; test modules only build inputs for policy-test,
# which evaluates the decision for them as a relayed request is.
_DIVERGENT_BUILTINS: dict[str, tuple[str, str]] = {
    "object.union": (
        "merges only the top level where OPA merges nested objects too",
        "merge nested objects explicitly, key by key",
    ),
    "object.union_n": (
        "merges only the top level where OPA merges nested objects too",
        "merge nested objects explicitly, key by key",
    ),
    "semver.compare": (
        "orders pre-releases otherwise than semantic versioning (1.0.0-rc1 after 1.0.0)",
        "compare the version parts as numbers",
    ),
    "semver.is_valid": (
        "accepts versions OPA refuses (leading zeros)",
        "match the version with regex.match",
    ),
    "time.parse_rfc3339_ns": (
        "finds no time in a timestamp ending in 'Z' (UTC), so a rule comparing with it never holds",
        "write the time as nanoseconds, or compare time.date or time.clock of time.now_ns",
    ),
    "time.parse_ns": (
        "finds no time in a timestamp ending in 'Z' (UTC), so a rule comparing with it never holds",
        "write the time as nanoseconds, or compare time.date or time.clock of time.now_ns",
    ),
    "to_number": (
        "reads a number from the start of any string ('1_000000' is 1) where OPA fails",
        "check the string with regex.match before converting it",
    ),
}
_DIVERGENT = re.compile(
    r"(?<![A-Za-z0-9_.])("
    + "|".join(re.escape(name) for name in sorted(_DIVERGENT_BUILTINS, key=len, reverse=True))
    + r")\s*\("
)
_EVERY = re.compile(r"\bevery\b")
_NOT = re.compile(r"\bnot\b")
_PACKAGE = re.compile(
    r"^[ \t]*package[ \t]+([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)", re.MULTILINE
)


@dataclass(frozen=True, slots=True)
class PolicyModule:
    """One Rego file: ``id`` is its path inside its policy directory (also its OPA policy id)."""

    id: str
    path: Path
    source: str
    package: str
    builtin: bool = False
    """Shipped inside the package (not one of the operator's files, so never signed by them)."""

    @property
    def is_test(self) -> bool:
        """Whether this is a policy test module (``*_test.rego``)."""
        return self.path.name.endswith("_test.rego")


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Everything an engine needs for one revision: modules, data and the cache plan."""

    modules: tuple[PolicyModule, ...]
    tests: tuple[PolicyModule, ...]
    data: dict[str, Any] = field(repr=False)
    """``data.gateway`` (from :func:`gateway.policy.data.policy_data`)."""
    revision: str
    """``<config revision>/<policy revision>``: what every decision of this set carries."""
    cache_plan: CachePlan
    extra_data: dict[str, Any] = field(default_factory=dict, repr=False)
    """Base documents beside ``data.gateway`` (stand-ins that policy-test cases bring)."""


def rego_files(root: Path, files: Mapping[str, bytes] | None = None) -> list[tuple[str, Path]]:
    """``(module id, path)`` of every Rego file under ``root`` the loader reads, sorted.

    Skips directories named ``examples`` or starting with ``.``; a missing root has none. With
    ``files`` (a captured release, :attr:`gateway.config.LoadedConfig.files`), the files are
    those of the release, not of the disk.
    """
    if files is not None:
        candidates = sorted(
            path
            for path in map(Path, files)
            if path.suffix == ".rego" and path.is_relative_to(root) and path != root
        )
    elif root.is_dir():
        candidates = sorted(root.rglob("*.rego"))
    else:
        return []
    found: list[tuple[str, Path]] = []
    for path in candidates:
        relative = path.relative_to(root)
        if any(p in SKIPPED_DIRECTORIES or p.startswith(".") for p in relative.parts[:-1]):
            continue
        found.append((relative.as_posix(), path))
    return found


def load_policies(loaded: LoadedConfig) -> PolicySet:
    """Read and check the Rego modules of ``loaded``; raises ConfigError listing every problem."""
    problems: list[Problem] = []
    by_id: dict[str, PolicyModule] = {}
    for module_id, path in rego_files(POLICY_ROOT):
        module = _read_module(module_id, path, problems, builtin=True)
        if module is not None:
            by_id[module_id] = module
    seen: dict[str, Path] = {}
    for index, directory in enumerate(loaded.config.policy.directories):
        root = loaded.resolve_path(directory)
        where = f"policy.directories[{index}]"
        for module_id, path in rego_files(root, loaded.files):
            if module_id in seen:
                problems.append(
                    Problem(
                        f"{module_id!r} is also in {str(seen[module_id])!r}",
                        code="duplicate_policy",
                        path=where,
                        file=str(path),
                    )
                )
                continue
            seen[module_id] = path
            module = _read_module(module_id, path, problems, files=loaded.files)
            if module is None:
                continue
            replaced = by_id.get(module_id)
            if replaced is not None and replaced.builtin and replaced.source != module.source:
                log.warning(
                    "%s replaces the built-in %s",
                    path,
                    module_id,
                    extra={"event": "policy_builtin_replaced", "policy_module": module_id},
                )
            by_id[module_id] = module
    found = list(by_id.values())
    if len(found) > MAX_MODULES:
        problems.append(
            Problem(
                f"{len(found)} Rego files; at most {MAX_MODULES} are loaded",
                code="too_many_policies",
                path="policy.directories",
                file=str(loaded.file),
            )
        )
    modules = tuple(m for m in found if not m.is_test)
    tests = tuple(m for m in found if m.is_test)
    problems.extend(_check_packages(modules, loaded))
    if problems:
        raise PolicyError(problems)
    revision = f"{loaded.revision}/{policy_revision(modules)}"
    return PolicySet(
        modules=modules,
        tests=tests,
        data=policy_data(loaded.config, revision),
        revision=revision,
        cache_plan=plan_cache(m.source for m in modules),
    )


def policy_revision(modules: tuple[PolicyModule, ...]) -> str:
    """A short, stable hash of the policy modules (ids and sources)."""
    digest = hashlib.sha256()
    for module in sorted(modules, key=lambda m: m.id):
        for part in (module.id, module.source):
            encoded = part.encode("utf-8")
            digest.update(len(encoded).to_bytes(8, "big"))
            digest.update(encoded)
    return "sha256:" + digest.hexdigest()[:16]


def checked_engine(
    loaded: LoadedConfig, policies: PolicySet, *, mode: Mode, cache: DecisionCache | None
) -> EmbeddedEngine:
    """An embedded engine for ``policies`` that is proven to decide (gateway.policy.check).

    Raises ConfigError, located where possible, for a policy that does not compile, calls a
    function nobody defines, or fails or answers no decision for the smoke requests.
    """
    from gateway.policy.check import check_policy
    from gateway.policy.embedded import EmbeddedEngine

    engine = EmbeddedEngine(policies, mode=mode, cache=cache)
    check_policy(engine, policies, loaded.config)
    return engine


def verify_policy(loaded: LoadedConfig) -> PolicySet:
    """Load the policy of ``loaded`` and prove it decides, exactly as :func:`build_engine` does
    before any engine is used (what ``validate``, ``policy-test`` and ``check`` call)."""
    policies = load_policies(loaded)
    checked_engine(loaded, policies, mode="enforce", cache=None)
    return policies


def build_engine(loaded: LoadedConfig, policies: PolicySet | None = None) -> PolicyEngine:
    """The engine ``policy.engine`` selects, for ``policies`` (loaded from ``loaded`` if None).

    The policy is compiled and proven to decide here (:func:`checked_engine`, for the OPA engine
    too, with the embedded evaluator), so a policy that cannot decide raises ConfigError now, at
    start or reload, rather than refusing every request later.
    """
    if policies is None:
        policies = load_policies(loaded)
    settings = loaded.config.policy
    plan = policies.cache_plan
    cache = DecisionCache(plan.fields) if plan.cacheable else None
    if not plan.cacheable:
        log.info(
            "decision cache off: %s",
            plan.reason,
            extra={"event": "policy_cache_off", "revision": policies.revision},
        )
    if settings.engine == "opa":
        from gateway.policy.opa import OpaEngine

        checked_engine(loaded, policies, mode="enforce", cache=None)
        if settings.opa_url is None:  # the configuration semantics check makes this unreachable
            raise ConfigError(
                [Problem("engine opa needs opa_url", code="missing_opa_url", path="policy")]
            )
        return OpaEngine(
            policies,
            url=settings.opa_url,
            timeout=settings.decision_timeout_seconds,
            mode=settings.mode,
            cache=cache,
        )
    return checked_engine(loaded, policies, mode=settings.mode, cache=cache)


def _read_module(
    module_id: str,
    path: Path,
    problems: list[Problem],
    *,
    builtin: bool = False,
    files: Mapping[str, bytes] | None = None,
) -> PolicyModule | None:
    try:
        if files is not None:
            raw = files[str(path)]
        else:
            with path.open("rb") as handle:
                raw = handle.read(MAX_MODULE_BYTES + 1)
    except OSError as exc:
        problems.append(Problem(f"cannot read: {exc.strerror}", code="unreadable", file=str(path)))
        return None
    if len(raw) > MAX_MODULE_BYTES:
        problems.append(Problem("larger than 1 MiB", code="policy_too_large", file=str(path)))
        return None
    try:
        source = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(
            Problem(f"not UTF-8 text (byte {exc.start})", code="invalid_encoding", file=str(path))
        )
        return None
    code = strip_comments(source)
    refusal = _unsupported(code, module_id)
    if refusal is not None:
        offset, message, problem_code, hint = refusal
        line = code.count("\n", 0, offset) + 1
        column = offset - (code.rfind("\n", 0, offset) + 1) + 1
        problems.append(
            Problem(message, code=problem_code, file=str(path), line=line, column=column, hint=hint)
        )
        return None
    first = _PACKAGE.search(code)
    if first is None:
        problems.append(
            Problem("no package declaration found", code="invalid_policy", file=str(path))
        )
        return None
    return PolicyModule(
        id=module_id, path=path, source=source, package=first.group(1), builtin=builtin
    )


def _unsupported(code: str, module_id: str) -> tuple[int, str, str, str] | None:
    """Where ``code`` (comments stripped) uses Rego the embedded engine cannot evaluate as OPA
    does, with the problem's message, code and hint; None when it does not."""
    crashing = _CRASHING_BUILTINS.search(code)
    if crashing:
        return (
            crashing.start(),
            f"{crashing.group(1)} is not supported by the embedded Rego engine",
            "unsupported_builtin",
            "compute the day from time.date or time.clock instead",
        )
    divergent = None if module_id.endswith("_test.rego") else _DIVERGENT.search(code)
    if divergent:
        name = divergent.group(1)
        what, hint = _DIVERGENT_BUILTINS[name]
        return (
            divergent.start(),
            f"{name}: the embedded Rego engine {what}, so it would decide otherwise than OPA",
            "unsupported_builtin",
            hint,
        )
    negated = _not_inside_every(code)
    if negated is not None:
        return (
            negated,
            "'not' inside an 'every' body: the embedded Rego engine evaluates it as true "
            "whatever its operand, so the 'every' would hold when it should not",
            "unsupported_construct",
            "move the negation into a helper: every x in xs { allowed(x) } with "
            "allowed(x) if not ..., or write 'not any_bad' with a rule any_bad",
        )
    return None


def _not_inside_every(code: str) -> int | None:
    """Offset of the first ``every`` whose body uses ``not`` (comments already stripped).

    rego-cpp 1.5.2 evaluates ``every x in [1, 2] { not x == 2 }`` as true: a ``not`` directly in
    an ``every`` body is always satisfied (a ``not`` inside a function the body calls is not
    affected). Such a module could allow, veto or pass a policy test wrongly, so it is refused.
    """
    plain = _blank_strings(code)
    for match in _EVERY.finditer(plain):
        start = plain.find("{", match.end())
        if start < 0:
            return None
        depth, end = 0, len(plain)
        for index in range(start, len(plain)):
            if plain[index] == "{":
                depth += 1
            elif plain[index] == "}":
                depth -= 1
                if depth == 0:
                    end = index
                    break
        if _NOT.search(plain, start, end):
            return match.start()
    return None


def _blank_strings(code: str) -> str:
    """``code`` with the contents of string literals replaced by spaces (offsets unchanged)."""
    chars = list(code)
    index = 0
    while index < len(chars):
        quote = chars[index]
        if quote not in '"`':
            index += 1
            continue
        index += 1
        while index < len(chars) and chars[index] != quote and chars[index] != "\n":
            if quote == '"' and chars[index] == "\\":
                chars[index] = " "
                index += 1
                if index < len(chars) and chars[index] != "\n":
                    chars[index] = " "
                index += 1
                continue
            chars[index] = " "
            index += 1
        index += 1
    return "".join(chars)


def _check_packages(modules: tuple[PolicyModule, ...], loaded: LoadedConfig) -> list[Problem]:
    problems: list[Problem] = []
    deciders = [m for m in modules if m.package == DECISION_PACKAGE]
    if not deciders:
        problems.append(
            Problem(
                f"no module declares 'package {DECISION_PACKAGE}', so nothing can be allowed",
                code="missing_decision",
                path="policy.directories",
                file=str(loaded.file),
                hint="a gateway/authz.rego in policy.directories replaces the built-in "
                "decision policy; delete it to use the built-in one",
            )
        )
    for extra in deciders[1:]:
        problems.append(
            Problem(
                f"'package {DECISION_PACKAGE}' is already declared in {deciders[0].path}",
                code="reserved_package",
                file=str(extra.path),
                hint=f"add vetoes in a module under 'package {EXTENSIONS_PACKAGE}.<name>'",
            )
        )
    for module in modules:
        package = module.package
        if package == DECISION_PACKAGE:
            continue
        if package == "gateway" or package.startswith("gateway."):
            problems.append(
                Problem(
                    f"'package {package}': the gateway package is reserved for the allow-list "
                    "and its decision",
                    code="reserved_package",
                    file=str(module.path),
                    hint=f"use 'package {EXTENSIONS_PACKAGE}.<name>' or a package of your own",
                )
            )
        elif package == EXTENSIONS_PACKAGE or (
            package.startswith(EXTENSIONS_PACKAGE + ".") and package.count(".") != 1
        ):
            problems.append(
                Problem(
                    f"'package {package}': extensions are one level deep",
                    code="invalid_extension_package",
                    file=str(module.path),
                    hint=f"write 'package {EXTENSIONS_PACKAGE}.<name>'",
                )
            )
    return problems
