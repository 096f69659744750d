"""The policy's data document: the allow-list of gateway.yaml as ``data.gateway``.

The Rego policy holds no permissions of its own; everything it grants comes from here, built
from the validated configuration. Targets are keyed by name so the policy finds the requested one
with a single lookup (``data.gateway.targets[input.target]``) instead of scanning a list.

Each target carries its operations as written (for reviewers and organisation modules) and
``routes``, the same operations flattened to one entry per (operation, path pattern), with
methods as an object for constant-time membership. ``routes`` is derived data, never edited.
"""

from __future__ import annotations

from typing import Any

from gateway.config.model import GatewayConfig, Operation, Target
from gateway.config.patterns import MANY, ONE, PathPattern

__all__ = ["policy_data"]


def policy_data(config: GatewayConfig, revision: str) -> dict[str, Any]:
    """``data.gateway`` for ``config``; ``revision`` is echoed in every decision."""
    return {
        "targets": {name: _target(target) for name, target in config.targets.items()},
        "revision": revision,
    }


def _target(target: Target) -> dict[str, Any]:
    operations = [_operation(op) for op in target.operations]
    routes = [_route(op, PathPattern.parse(text)) for op in target.operations for text in op.paths]
    return {
        "scheme": target.scheme,
        "host": target.host,
        "port": target.effective_port,
        "operations": operations,
        "routes": routes,
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


def _route(op: Operation, pattern: PathPattern) -> dict[str, Any]:
    many = bool(pattern.segments) and pattern.segments[-1] == MANY
    segments = pattern.segments[:-1] if many else pattern.segments
    return {
        "operation": op.name,
        "methods": dict.fromkeys(op.methods, True),
        "websocket": op.websocket,
        "segments": list(segments),
        "length": len(segments),
        "last": len(segments) - 1,
        # Literal segments with their position; "*" matches any one segment, so it is left out.
        "literals": [[i, s] for i, s in enumerate(segments) if s != ONE],
        "many": many,
        "trailing_slash": pattern.trailing_slash,
    }
