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
from typing import TYPE_CHECKING, Any

from gateway.config.model import (
    LDAP_SCHEMES,
    PAGED_RESULTS_OID,
    GatewayConfig,
    LdapOperation,
    LdapTarget,
    Operation,
    Target,
)
from gateway.config.patterns import MANY, ONE, PathPattern

if TYPE_CHECKING:
    from gateway.ldap.dn import MatchingRules

__all__ = ["bucket", "policy_data"]


def policy_data(config: GatewayConfig, revision: str) -> dict[str, Any]:
    """``data.gateway`` for ``config``; ``revision`` is echoed in every decision."""
    index: dict[str, dict[str, Any]] = {}
    for name, target in config.targets.items():
        index.setdefault(bucket(name), {})[name] = _indexed(target)
    return {
        "targets": {name: _target(target) for name, target in config.targets.items()},
        "index": index,
        "ldap": {
            name: ldap_data(target.ldap)
            for name, target in config.targets.items()
            if target.ldap is not None and target.scheme in LDAP_SCHEMES
        },
        "revision": revision,
    }


def bucket(name: str) -> str:
    """The index bucket of target ``name``: ``substring(crypto.md5(name), 0, 1)`` in Rego."""
    return hashlib.md5(name.encode("utf-8"), usedforsecurity=False).hexdigest()[0]


def _target(target: Target) -> dict[str, Any]:
    written: dict[str, Any] = {
        "scheme": target.scheme,
        "host": target.host,
        "port": target.effective_port,
        "operations": [_operation(op) for op in target.operations],
    }
    if target.ldap is not None:
        written["ldap"] = target.ldap.model_dump(mode="json", exclude={"bind_identities"})
        written["ldap"]["bind_identities"] = sorted(target.ldap.bind_identities)
    return written


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


def ldap_data(ldap: LdapTarget) -> dict[str, Any]:
    """``data.gateway.ldap[name]``: one LDAP target's rules in the form ``gateway.authz`` compares.

    Every DN becomes its root-first path of canonical RDNs (:func:`subtree_path`, the same
    preparation the request's DNs go through), so "within a subtree" is a prefix test in Rego;
    every attribute type is normalised as requests' are (lower case, OIDs named where known).
    """
    # Imported here: the DN parser (and pyasn1) only for a configuration with an LDAP target.
    from gateway.ldap.dn import MatchingRules
    from gateway.ldap.policy_input import subtree_path

    rules = MatchingRules(case_insensitive=ldap.case_insensitive_values)
    return {
        "allow_anonymous": ldap.allow_anonymous,
        "allow_extended_dn": ldap.allow_extended_dn,
        "sasl_mechanisms": sorted(ldap.sasl_mechanisms),
        "controls": sorted({PAGED_RESULTS_OID, *ldap.controls}),
        "extended_operations": sorted(ldap.extended_operations),
        "identities": sorted(ldap.bind_identities),
        "never_reachable": [subtree_path(text, rules) for text in ldap.never_reachable],
        "never_returned": _attributes(ldap.never_returned),
        "rules": [_ldap_rule(rule, ldap, rules) for rule in ldap.operations],
    }


def _attributes(names: Iterable[str]) -> list[str]:
    from gateway.ldap.dn import normalise_attribute

    # "*" and "+" are kept as they are: they are not attribute types but what a rule allows.
    return sorted({name if name in ("*", "+") else normalise_attribute(name) for name in names})


def _ldap_rule(rule: LdapOperation, ldap: LdapTarget, rules: MatchingRules) -> dict[str, Any]:
    from gateway.ldap.policy_input import subtree_path

    subtrees = [subtree_path(text, rules) for text in rule.subtrees]
    identities = [entry for entry in rule.bind_as if entry in ldap.bind_identities]
    dns = [entry for entry in rule.bind_as if entry not in identities and "=" in entry]
    names = [entry for entry in rule.bind_as if entry not in identities and "=" not in entry]
    return {
        "name": rule.name,
        "kinds": sorted(rule.kinds),
        "subtrees": subtrees,
        "scopes": sorted(rule.scopes),
        "attributes": _attributes(rule.attributes),
        "filter_attributes": (
            None if rule.filter_attributes is None else _attributes(rule.filter_attributes)
        ),
        "change_types": sorted(rule.change_types),
        # The destination of a modify DN: the rule's own subtrees unless it names others.
        "new_superiors": (
            [subtree_path(text, rules) for text in rule.new_superiors]
            if rule.new_superiors
            else subtrees
        ),
        "bind_as": {
            "any": not rule.bind_as,
            "identities": sorted(identities),
            "dn_paths": [subtree_path(text, rules) for text in dns],
            # User principal names and DOMAIN\user names compare as Active Directory does,
            # case-insensitively.
            "names": sorted({entry.strip().casefold() for entry in names}),
        },
        "max_size_limit": rule.max_size_limit,
        "max_time_limit": rule.max_time_limit,
    }
