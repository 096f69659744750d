"""Checks of LDAP targets the JSON Schema cannot express (docs/ldap.md).

Each one closes a way for an LDAP rule to grant something other than what its reviewer read:
a DN the gateway would compare differently from the directory, a rule that names an identity
nobody declared, a SASL mechanism whose security layer would hide the rest of the stream, StartTLS
from the SaaS (the gateway owns TLS), a rule that can never apply because a never-reachable
subtree swallows it. Messages say what to change.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator

from gateway.config.model import (
    LDAP_SCHEMES,
    NAME_PATTERN,
    SASL_WITHOUT_LAYER,
    STARTTLS_OID,
    LdapOperation,
    LdapTarget,
    Target,
)
from gateway.config.yamlsafe import JsonPath, Located
from gateway.errors import Problem
from gateway.ldap.dn import Dn, MatchingRules
from gateway.ldap.errors import DnError
from gateway.suggest import closest

__all__ = ["LDAP_SCHEMES", "check_ldap_target", "is_identity_name", "parse_config_dn"]

# Which fields of a rule apply to which kinds (a field set for no kind of its rule is a mistake
# a reviewer would misread as a restriction).
_FIELD_KINDS: dict[str, frozenset[str]] = {
    "scopes": frozenset({"search"}),
    "filter_attributes": frozenset({"search"}),
    "max_size_limit": frozenset({"search"}),
    "max_time_limit": frozenset({"search"}),
    "change_types": frozenset({"modify"}),
    "new_superiors": frozenset({"modify_dn"}),
}
# Controls that change whose authority an operation runs under: RFC 4370 proxied authorization
# (and its draft predecessor, still implemented by some directories).
IDENTITY_CONTROLS: dict[str, str] = {
    "2.16.840.1.113730.3.4.18": "proxied authorization, RFC 4370",
    "2.16.840.1.113730.3.4.12": "proxied authorization v1",
}
_NEEDS_SUBTREES = frozenset({"search", "compare", "add", "delete", "modify", "modify_dn"})
_NEEDS_ATTRIBUTES = frozenset({"search", "compare", "add", "modify"})


def is_identity_name(entry: str) -> bool:
    """Whether a ``bind_as`` entry names a bind identity (rather than a DN or a UPN)."""
    return re.fullmatch(NAME_PATTERN, entry) is not None


def parse_config_dn(text: str, ldap: LdapTarget) -> Dn:
    """A DN written in gateway.yaml, parsed as the target's directory compares it.

    Raises ``DnError``. Extended forms (``<GUID=...>``) are refused even where the directory
    allows them: a rule must name a place.
    """
    return Dn.parse(text, MatchingRules(case_insensitive=ldap.case_insensitive_values))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_ldap_target(base: JsonPath, target: Target, doc: Located) -> Iterator[Problem]:
    """Every problem of an ldap/ldaps target, or of an ``ldap`` section on another scheme."""
    if target.scheme not in LDAP_SCHEMES:
        if target.ldap is not None:
            yield doc.problem(
                (*base, "ldap"),
                "'ldap' applies to targets with scheme ldap or ldaps",
                code="unused_setting",
                hint="set scheme: ldaps (or ldap), or remove the 'ldap' section",
            )
        return
    if target.operations:
        yield doc.problem(
            (*base, "operations"),
            "an LDAP target is granted by ldap.operations, not by HTTP operations",
            code="unused_setting",
            hint="move the rules under ldap.operations (kinds, subtrees, attributes)",
        )
    if target.credential is not None:
        yield doc.problem(
            (*base, "credential"),
            "an LDAP target injects directory credentials through ldap.bind_identities",
            code="unused_setting",
            hint="declare the account under ldap.bind_identities and name it in a bind rule",
        )
    ldap = target.ldap
    if ldap is None:
        yield doc.problem(
            base,
            f"a {target.scheme} target needs an 'ldap' section; without rules it grants nothing",
            code="missing_key",
            hint="add ldap: {operations: [{name: ..., kinds: [search], subtrees: [...], "
            "attributes: [...]}]}",
        )
        return
    at = (*base, "ldap")
    yield from _check_transport(at, target, ldap, doc)
    never, problems = _never_reachable(at, ldap, doc)
    yield from problems
    yield from _check_identities(at, ldap, never, doc)
    for index, mechanism in enumerate(ldap.sasl_mechanisms):
        if mechanism not in SASL_WITHOUT_LAYER:
            yield doc.problem(
                (*at, "sasl_mechanisms", index),
                f"SASL {mechanism} can negotiate a security layer, after which the gateway "
                "could no longer read (and decide) the stream",
                code="insecure_setting",
                hint="allow only " + ", ".join(SASL_WITHOUT_LAYER) + ", or use simple binds",
            )
    for index, oid in enumerate(ldap.controls):
        if oid in IDENTITY_CONTROLS:
            yield doc.problem(
                (*at, "controls", index),
                f"control {oid} ({IDENTITY_CONTROLS[oid]}) makes the directory act as another "
                "identity than the one bound, which every rule's bind_as is checked against",
                code="forbidden_setting",
                hint="remove it; bind as the identity instead (ldap.bind_identities)",
            )
    for index, oid in enumerate(ldap.extended_operations):
        if oid == STARTTLS_OID:
            yield doc.problem(
                (*at, "extended_operations", index),
                "StartTLS from the SaaS is always refused: the gateway makes the TLS to the "
                "directory itself and the SaaS reaches the gateway over TLS already",
                code="forbidden_setting",
                hint="remove it",
            )
    if not ldap.operations:
        yield doc.problem(
            (*at, "operations"),
            "no LDAP rule: every operation on this target would be refused",
            code="missing_key",
            hint="add rules, e.g. {name: inventory, kinds: [search], subtrees: ['DC=corp,"
            "DC=example'], attributes: [cn, member]}",
        )
    names: dict[str, int] = {}
    for index, operation in enumerate(ldap.operations):
        op_at = (*at, "operations", index)
        if operation.name in names:
            yield doc.problem(
                (*op_at, "name"),
                f"rule name {operation.name!r} is already used by operations"
                f"[{names[operation.name]}]",
                code="duplicate_operation",
            )
        names.setdefault(operation.name, index)
        yield from _check_rule(op_at, operation, ldap, never, doc)


def _check_transport(
    at: JsonPath, target: Target, ldap: LdapTarget, doc: Located
) -> Iterator[Problem]:
    if ldap.cleartext and target.scheme == "ldaps":
        yield doc.problem(
            (*at, "cleartext"),
            "'cleartext' contradicts scheme ldaps (TLS from the first byte)",
            code="conflicting_settings",
            hint="remove cleartext, or use scheme: ldap",
        )
    if ldap.cleartext and target.tls is not None:
        yield doc.problem(
            (*at[:-1], "tls"),
            "'tls' is unused: cleartext turns TLS to the directory off",
            code="unused_setting",
        )
    if ldap.cleartext and ldap.bind_identities and not _is_loopback(target.host):
        yield doc.problem(
            (*at, "cleartext"),
            "the gateway would send the bind identities' passwords to the directory in clear",
            code="insecure_setting",
            hint="use scheme ldaps, or scheme ldap with StartTLS (remove cleartext)",
        )


def _protecting(dn: Dn | None, never: list[tuple[str, Dn]]) -> str | None:
    """The never_reachable subtree (as written) that holds ``dn``, if any."""
    return next((raw for raw, protected in never if dn and dn.within(protected)), None)


def _check_identities(
    at: JsonPath, ldap: LdapTarget, never: list[tuple[str, Dn]], doc: Located
) -> Iterator[Problem]:
    for name, identity in ldap.bind_identities.items():
        if "=" not in identity.dn:
            continue  # a user principal name (user@corp.example) or DOMAIN\user
        path = (*at, "bind_identities", name, "dn")
        dn, problem = _parsed(path, identity.dn, ldap, doc)
        if problem is not None:
            yield problem
            continue
        inside = _protecting(dn, never)
        if inside is not None:
            # The policy sees the identity's name, not its DN: a bind as it would act inside
            # the protected subtree whatever the rules say.
            yield doc.problem(
                path,
                f"the account lies inside never_reachable {inside!r}: binding as it would act "
                "with that subtree's rights",
                code="unreachable_identity",
                hint="use an account outside the protected subtrees",
            )


def _parsed(
    path: JsonPath, text: str, ldap: LdapTarget, doc: Located
) -> tuple[Dn | None, Problem | None]:
    try:
        return parse_config_dn(text, ldap), None
    except DnError as exc:
        hint = "write it as in RFC 4514, e.g. 'OU=Managed Groups,DC=corp,DC=example'"
        if exc.reason == "ldap-dn-extended-refused":
            hint = "name the entry by its DN: a rule must say where the entry is"
        elif exc.reason == "ldap-dn-unsupported":
            hint = "use the attribute's name (cn, ou, dc, ...) and plain characters"
        return None, doc.problem(
            path,
            f"{text!r} is not a DN the gateway can compare: {exc.detail}",
            code="invalid_dn",
            hint=hint,
        )


def _never_reachable(
    at: JsonPath, ldap: LdapTarget, doc: Located
) -> tuple[list[tuple[str, Dn]], list[Problem]]:
    found: list[tuple[str, Dn]] = []
    problems: list[Problem] = []
    for index, text in enumerate(ldap.never_reachable):
        dn, problem = _parsed((*at, "never_reachable", index), text, ldap, doc)
        if problem is not None:
            problems.append(problem)
        elif dn is not None and dn.is_root:
            problems.append(
                doc.problem(
                    (*at, "never_reachable", index),
                    "the whole directory ('') cannot be never reachable: nothing could be granted",
                    code="conflicting_settings",
                    hint="name the subtrees to protect, e.g. 'OU=Tier0,DC=corp,DC=example'",
                )
            )
        elif dn is not None:
            found.append((text, dn))
    return found, problems


def _check_rule(
    at: JsonPath,
    rule: LdapOperation,
    ldap: LdapTarget,
    never: list[tuple[str, Dn]],
    doc: Located,
) -> Iterator[Problem]:
    kinds = set(rule.kinds)
    for field, applies in _FIELD_KINDS.items():
        if field in rule.model_fields_set and not kinds & applies:
            yield doc.problem(
                (*at, field),
                f"{field!r} applies to {' and '.join(sorted(applies))} rules only; this rule "
                f"grants {', '.join(rule.kinds)}",
                code="unused_setting",
                hint=f"remove it, or add {sorted(applies)[0]} to kinds",
            )
    if kinds & _NEEDS_SUBTREES and not rule.subtrees:
        yield doc.problem(
            at,
            "a rule for "
            + ", ".join(k for k in rule.kinds if k in _NEEDS_SUBTREES)
            + " must say where: list its subtrees",
            code="missing_key",
            hint="subtrees: ['OU=Employees,DC=corp,DC=example'] ('' is the whole directory)",
        )
    if rule.subtrees and not kinds & _NEEDS_SUBTREES:
        yield doc.problem(
            (*at, "subtrees"),
            "subtrees apply to search, compare, add, delete, modify and modify_dn; bind and "
            "extended rules name no entry",
            code="unused_setting",
        )
    if kinds & _NEEDS_ATTRIBUTES and not rule.attributes:
        yield doc.problem(
            at,
            "a rule for "
            + ", ".join(k for k in rule.kinds if k in _NEEDS_ATTRIBUTES)
            + " must list the attributes it may read or change",
            code="missing_key",
            hint="attributes: [cn, member] ('*' for any attribute)",
        )
    if "bind" in kinds and not rule.bind_as:
        yield doc.problem(
            at,
            "a bind rule must list who may bind (bind_as)",
            code="missing_key",
            hint="bind_as: [a name from ldap.bind_identities, a DN, or user@domain]",
        )
    if "extended" in kinds and not ldap.extended_operations:
        yield doc.problem(
            (*at, "kinds"),
            "an extended rule allows the OIDs of ldap.extended_operations, and none is listed",
            code="missing_key",
            hint="list the extended operation OIDs under ldap.extended_operations",
        )
    for index, entry in enumerate(rule.bind_as):
        if is_identity_name(entry):
            if entry not in ldap.bind_identities:
                close = closest(entry, ldap.bind_identities)
                yield doc.problem(
                    (*at, "bind_as", index),
                    f"no bind identity named {entry!r}",
                    code="unknown_bind_identity",
                    hint=f"did you mean {close!r}?"
                    if close is not None
                    else "declare it under ldap.bind_identities, or write a DN or user@domain",
                )
        elif "=" in entry:
            _, problem = _parsed((*at, "bind_as", index), entry, ldap, doc)
            if problem is not None:
                yield problem
    for key in ("subtrees", "new_superiors"):
        for index, text in enumerate(getattr(rule, key)):
            dn, problem = _parsed((*at, key, index), text, ldap, doc)
            if problem is not None:
                yield problem
                continue
            inside = _protecting(dn, never)
            if inside is not None:
                yield doc.problem(
                    (*at, key, index),
                    f"{text!r} lies inside never_reachable {inside!r}: this grants nothing",
                    code="unreachable_rule",
                    hint="remove it, or narrow never_reachable",
                )
