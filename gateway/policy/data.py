"""The policy's data document: the allow-list of gateway.yaml as ``data.gateway``.

The Rego policy holds no permissions of its own; everything it grants comes from here, built
from the validated configuration. Two views of the same allow-list:

* ``targets``, keyed by name: each target as written (scheme, host, port, operations), for
  reviewers, organisation modules and ``test_*`` facts (``data.gateway.targets.erp.operations``);
* ``index``, what ``gateway.authz`` decides with: the same targets reduced to what matching needs,
  grouped so that one decision touches only the requested target and method.

The index exists for the embedded engine's cost model (measured in benchmarks/policy-report.md):
rego-cpp 1.5 finds an object key by comparing it with every key in turn, and each step a rule
takes over a route costs microseconds. So targets sit in 16 buckets chosen by the first hex digit
of the MD5 of their name (a lookup scans one bucket, not every target; MD5 only spreads names, it
protects nothing), and inside a target the routes are split by method and by segment count, so
the policy visits only routes that can match. ``index`` is derived data, never edited.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from gateway.config.model import GatewayConfig, Operation, Target
from gateway.config.patterns import MANY, ONE, PathPattern

__all__ = ["bucket", "policy_data"]


def policy_data(config: GatewayConfig, revision: str) -> dict[str, Any]:
    """``data.gateway`` for ``config``; ``revision`` is echoed in every decision."""
    index: dict[str, dict[str, Any]] = {}
    for name, target in config.targets.items():
        index.setdefault(bucket(name), {})[name] = _indexed(target)
    return {
        "targets": {name: _target(target) for name, target in config.targets.items()},
        "index": index,
        "revision": revision,
    }


def bucket(name: str) -> str:
    """The index bucket of target ``name``: ``substring(crypto.md5(name), 0, 1)`` in Rego."""
    return hashlib.md5(name.encode("utf-8"), usedforsecurity=False).hexdigest()[0]


def _target(target: Target) -> dict[str, Any]:
    return {
        "scheme": target.scheme,
        "host": target.host,
        "port": target.effective_port,
        "operations": [_operation(op) for op in target.operations],
    }


def _operation(op: Operation) -> dict[str, Any]:
    return {
        "name": op.name,
        "methods": list(op.methods),
        # Header names are case-insensitive (RFC 9110 section 5.1); the input lists them lower-case.
        "headers": sorted({name.lower() for name in op.headers}),
        "websocket": op.websocket,
        "paths": [_pattern(PathPattern.parse(text)) for text in op.paths],
    }


def _pattern(pattern: PathPattern) -> dict[str, Any]:
    return {"segments": list(pattern.segments), "trailing_slash": pattern.trailing_slash}


def _indexed(target: Target) -> dict[str, Any]:
    """The target as the policy matches it: all routes, and the routes of each method."""
    routes = [(op, PathPattern.parse(text)) for op in target.operations for text in op.paths]
    methods = sorted({method for op in target.operations for method in op.methods})
    return {
        "scheme": target.scheme,
        "paths": _routes(routes),
        "methods": {
            method: _routes((op, p) for op, p in routes if method in op.methods)
            for method in methods
        },
    }


def _routes(routes: Iterable[tuple[Operation, PathPattern]]) -> dict[str, Any]:
    """``exact[n]``: routes of patterns with exactly n segments; ``many``: patterns with "**"."""
    exact: dict[int, list[dict[str, Any]]] = {}
    many: list[dict[str, Any]] = []
    for op, pattern in routes:
        route = _route(op, pattern)
        if pattern.segments and pattern.segments[-1] == MANY:
            many.append(route)
        else:
            exact.setdefault(route["length"], []).append(route)
    return {"exact": [exact.get(n, []) for n in range(max(exact, default=-1) + 1)], "many": many}


def _route(op: Operation, pattern: PathPattern) -> dict[str, Any]:
    many = bool(pattern.segments) and pattern.segments[-1] == MANY
    segments = pattern.segments[:-1] if many else pattern.segments
    return {
        "operation": op.name,
        "websocket": op.websocket,
        # Segments before a final "**"; the path needs at least one more.
        "length": len(segments),
        # Literal segments with their position; "*" matches any one segment, so it is left out.
        "literals": [[i, s] for i, s in enumerate(segments) if s != ONE],
        "trailing_slash": pattern.trailing_slash,
    }
