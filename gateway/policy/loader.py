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

from gateway.errors import ConfigError, Problem
from gateway.packaged import POLICY_ROOT
from gateway.policy.cache import CachePlan, DecisionCache, plan_cache, strip_comments
from gateway.policy.data import policy_data

if TYPE_CHECKING:
    from gateway.config.loader import LoadedConfig
    from gateway.policy.engine import PolicyEngine

__all__ = [
    "DECISION_PACKAGE",
    "EXTENSIONS_PACKAGE",
    "PolicyModule",
    "PolicySet",
    "build_engine",
    "load_policies",
    "rego_files",
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


def rego_files(root: Path) -> list[tuple[str, Path]]:
    """``(module id, path)`` of every Rego file under ``root`` the loader reads, sorted.

    Skips directories named ``examples`` or starting with ``.``; a missing root has none.
    """
    if not root.is_dir():
        return []
    found: list[tuple[str, Path]] = []
    for path in sorted(root.rglob("*.rego")):
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
        for module_id, path in rego_files(root):
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
            module = _read_module(module_id, path, problems)
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
        raise ConfigError(problems)
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


def build_engine(loaded: LoadedConfig, policies: PolicySet | None = None) -> PolicyEngine:
    """The engine ``policy.engine`` selects, for ``policies`` (loaded from ``loaded`` if None).

    The embedded engine compiles here, so a policy that does not compile raises ConfigError
    now, at load or reload, rather than at the first request.
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
    from gateway.policy.embedded import EmbeddedEngine

    return EmbeddedEngine(policies, mode=settings.mode, cache=cache)


def _read_module(
    module_id: str, path: Path, problems: list[Problem], *, builtin: bool = False
) -> PolicyModule | None:
    try:
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
    crashing = _CRASHING_BUILTINS.search(code)
    if crashing:
        line = code.count("\n", 0, crashing.start()) + 1
        problems.append(
            Problem(
                f"{crashing.group(1)} is not supported by the embedded Rego engine",
                code="unsupported_builtin",
                file=str(path),
                line=line,
                column=1,
                hint="compute the day from time.date or time.clock instead",
            )
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
