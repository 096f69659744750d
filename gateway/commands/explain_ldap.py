"""``gateway explain --ldap TARGET OPERATION DN``: would this LDAP operation pass, and why?

The operation is described with options (``--attribute NAME`` repeatable, ``--scope``,
``--filter``, ``--bind-dn``, ...), turned into the request a client would send
(:class:`gateway.ldap.questions.LdapQuestion`) and decided by
:meth:`gateway.ldap.decide.LdapChain.decide`, the call the LDAP proxy makes for every PDU, with
the engine ``gateway.yaml`` selects. Printed: the operation, the decision, the rule that grants it
or the reasons it is refused, and for an allowed search the attributes stripped from its results,
the protected subtrees hidden from it and, for one that dereferences aliases
(``--deref-aliases``) or carries a control other than paged results, the subtrees its entries
are kept to: all of it from the verdict the proxy acts on, never worked out here.

Without ``--bind-dn`` the connection is taken as bound as the target's first bind identity (the
usual case: EmpowerID binds with an injected credential), or unbound when it has none. Exit codes
as for every explain: 0 allowed, 3 denied, 1 configuration or policy error, 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from gateway import config as gwconfig
from gateway.ldap.codec import CHANGE_TYPES, DEREF_ALIASES, SCOPES
from gateway.ldap.decide import LdapChain, LdapVerdict
from gateway.ldap.policy_input import subtree_path
from gateway.ldap.questions import QUESTION_OPERATIONS, LdapQuestion, QuestionError
from gateway.policy.engine import PolicyEngine

__all__ = ["LDAP_REASON_TEXT", "add_arguments", "explain_ldap"]

EXIT_ALLOWED = 0
EXIT_DENIED = 3
EXIT_USAGE = 2

# What each LDAP reason means, for people (docs/ldap.md, "Reasons"). Codes are stable.
LDAP_REASON_TEXT: dict[str, str] = {
    "ldap_not_granted": "no rule of the target grants this kind of operation",
    "ldap_subtree_not_granted": "rules of this kind exist, but none covers this DN",
    "ldap_identity_not_granted": "a rule covers this DN, but not for the identity bound",
    "ldap_scope_not_granted": "the rule does not allow this search scope",
    "ldap_attribute_not_granted": "an attribute requested or changed is not in the rule",
    "ldap_filter_not_granted": "the filter tests an attribute the rule does not allow",
    "ldap_change_not_granted": "the rule does not allow this change type",
    "ldap_size_limit_not_granted": "the size limit is over the rule's cap (0 is no limit)",
    "ldap_time_limit_not_granted": "the time limit is over the rule's cap (0 is no limit)",
    "ldap_new_superior_not_granted": "the entry's new place is not in the rule's new_superiors",
    "ldap_never_reachable": "the entry is in (or above) a subtree that is never reachable",
    "ldap_attribute_never_returned": "a never-returned attribute is requested or compared",
    "ldap_filter_never_returned": "the filter tests (or a sort orders by) a never-returned type",
    "ldap_control_refused": "a control that is neither paged results nor listed in ldap.controls",
    "ldap_starttls_refused": "StartTLS from the SaaS: the gateway owns TLS",
    "ldap_extended_refused": "the extended operation is not listed in ldap.extended_operations",
    "ldap_anonymous_refused": "anonymous binds and unbound operations are not allowed",
    "ldap_bind_needs_tls": "a password bind needs the inner TLS from the SaaS to the gateway",
    "ldap_sasl_mechanism_refused": "the SASL mechanism is not listed in ldap.sasl_mechanisms",
    "ldap_unauthenticated_bind": "a name without a password (RFC 4513 5.1.2)",
    "ldap_version_refused": "only LDAP version 3",
    "ldap_dn_extended_refused": "an AD <GUID=>/<SID=> DN names no place to check",
    "ldap_dn_syntax": "the DN is not RFC 4514 syntax",
    "ldap_dn_unsupported": "the DN cannot be compared the way the directory would",
    "ldap_dn_too_long": "the DN is over the gateway's bounds",
    "ldap_sasl_credentials": "the SASL credentials name no identity the gateway can read",
    "unknown_target": "no LDAP target of that name is declared",
    "policy_unavailable": "the policy engine could not decide (the SaaS gets resultCode 51)",
    "policy_undefined": "the policy returned no decision document",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``explain --ldap``."""
    group = parser.add_argument_group("LDAP operations (--ldap TARGET OPERATION DN)")
    group.add_argument(
        "--ldap",
        action="store_true",
        help="an LDAP operation on an ldap/ldaps target: TARGET OPERATION DN, where OPERATION "
        f"is one of {', '.join(QUESTION_OPERATIONS)} (for extended, DN is the request OID)",
    )
    group.add_argument(
        "--attribute",
        action="append",
        default=[],
        metavar="NAME",
        help="an attribute requested (search), compared, set (add) or changed (modify); "
        "repeatable. A search without one requests no attributes",
    )
    group.add_argument("--scope", choices=SCOPES, default="sub", help="search scope (sub)")
    group.add_argument(
        "--deref-aliases",
        choices=DEREF_ALIASES,
        default="never",
        help="search derefAliases, RFC 4511 4.5.1.3 (never; ldap3 sends always by default)",
    )
    group.add_argument("--filter", default=None, metavar="FILTER", help="RFC 4515 search filter")
    group.add_argument(
        "--bind-dn",
        default=None,
        metavar="DN",
        help="what the connection is bound as: a bind identity's name, a DN or user@domain; "
        "'' for unbound (default: the target's first bind identity)",
    )
    group.add_argument(
        "--change-type",
        choices=CHANGE_TYPES,
        default="replace",
        help="modify: the change made to each --attribute (replace)",
    )
    group.add_argument("--new-superior", default=None, metavar="DN", help="modify_dn: where to")
    group.add_argument("--new-rdn", default=None, metavar="RDN", help="modify_dn: the new RDN")
    group.add_argument(
        "--control", action="append", default=[], metavar="OID", help="a request control"
    )
    group.add_argument(
        "--sort-key",
        action="append",
        default=[],
        metavar="NAME",
        help="search: an attribute a server-side sort control (RFC 2891) orders by; repeatable",
    )
    group.add_argument("--size-limit", type=int, default=0, metavar="N", help="search sizeLimit")
    group.add_argument("--time-limit", type=int, default=0, metavar="S", help="search timeLimit")
    group.add_argument(
        "--no-inner-tls",
        action="store_true",
        help="as if the SaaS had not opened the inner TLS to the gateway",
    )


def question(args: argparse.Namespace, config: gwconfig.GatewayConfig) -> LdapQuestion | None:
    """The question the command line asks; None after a usage error (printed)."""
    if len(args.words) != 3:
        print("gateway explain: expected --ldap TARGET OPERATION DN", file=sys.stderr)
        return None
    target, operation, dn = args.words
    bound = args.bind_dn
    if bound is None:
        found = config.targets.get(target)
        identities = sorted(found.ldap.bind_identities) if found and found.ldap else []
        bound = identities[0] if identities else None
    return LdapQuestion(
        target=target,
        operation=operation,
        dn=dn,
        attributes=tuple(args.attribute),
        scope=args.scope,
        deref_aliases=args.deref_aliases,
        filter=args.filter,
        change_type=args.change_type,
        new_rdn=args.new_rdn,
        new_superior=args.new_superior,
        controls=tuple(args.control),
        sort_keys=tuple(args.sort_key),
        size_limit=args.size_limit,
        time_limit=args.time_limit,
        bound_as=bound or None,
        inner_tls=not args.no_inner_tls,
        keyid=args.keyid,
    )


def explain_ldap(
    args: argparse.Namespace, loaded: gwconfig.LoadedConfig, engine: PolicyEngine
) -> int:
    """Decide the operation on the command line and print why; the exit code."""
    asked = question(args, loaded.config)
    if asked is None:
        return EXIT_USAGE
    try:
        facts = asked.facts(loaded.config)
    except QuestionError as exc:
        print(f"gateway explain: {exc}", file=sys.stderr)
        return EXIT_USAGE
    verdict = asyncio.run(_decide(LdapChain(loaded.config, engine), engine, facts))
    _report(args.format, asked, verdict, loaded.config)
    return EXIT_ALLOWED if verdict.allowed else EXIT_DENIED


async def _decide(chain: LdapChain, engine: PolicyEngine, facts: Any) -> LdapVerdict:
    await engine.start()
    try:
        return await chain.decide(facts)
    finally:
        await engine.close()


def _identity(asked: LdapQuestion, config: gwconfig.GatewayConfig) -> str:
    if asked.operation == "bind":
        return "unbound (a bind is decided before it binds)"
    if asked.bound_as is None:
        return "unbound (anonymous)"
    target = config.targets.get(asked.target)
    if (
        target is not None
        and target.ldap is not None
        and asked.bound_as in target.ldap.bind_identities
    ):
        return f"bind identity {asked.bound_as!r} (credential injected by the gateway)"
    return repr(asked.bound_as)


def _report(
    fmt: str, asked: LdapQuestion, verdict: LdapVerdict, config: gwconfig.GatewayConfig
) -> None:
    hidden = [list(path) for path in verdict.hidden_subtrees]
    if fmt == "json":
        print(
            json.dumps(
                {
                    "request": asked.as_dict(),
                    "input": dict(verdict.document),
                    "allowed": verdict.allowed,
                    "rule": verdict.operation,
                    "reasons": list(verdict.reasons),
                    "strip_attributes": sorted(verdict.strip_attributes),
                    "hidden_subtrees": hidden,
                    "granted_subtrees": None
                    if verdict.granted_subtrees is None
                    else [list(path) for path in verdict.granted_subtrees],
                    "result_code": None if verdict.allowed else (51 if verdict.unavailable else 50),
                    "revision": verdict.revision,
                    "engine": config.policy.engine,
                },
                indent=2,
            )
        )
        return
    print(f"request:   LDAP {asked.operation} on {asked.target} {asked.dn!r}")
    details = _details(asked)
    if details:
        print(f"           {details}")
    print(f"bound as:  {_identity(asked, config)}")
    if verdict.allowed:
        if verdict.operation:
            print(f"decision:  ALLOW by rule {verdict.operation!r} of target {asked.target!r}")
        else:
            print(f"decision:  ALLOW: target {asked.target!r} allows it without a rule")
        if verdict.strip_attributes:
            print(f"strips:    {', '.join(sorted(verdict.strip_attributes))} from every entry")
        for name in _protected(asked, verdict, config):
            print(f"hides:     entries under {name} (never reachable)")
        if verdict.granted_subtrees is not None:
            # RFC 4511 4.5.1.3: an alias (or a listed control) can lead the search anywhere; the
            # proxy returns only the entries within the granting rule's subtrees.
            kept = _granted(asked, verdict, config)
            print(f"returns:   only entries under {' or '.join(kept) if kept else '(nothing)'}")
    else:
        code = 51 if verdict.unavailable else 50
        print(f"decision:  DENY (resultCode {code})")
        for reason in verdict.reasons:
            text = LDAP_REASON_TEXT.get(reason, "denied by an extension module")
            print(f"reason:    {reason} - {text}")
    print(f"revision:  {verdict.revision}")
    print(f"engine:    {config.policy.engine}, {verdict.latency * 1e6:.0f} us")


def _protected(
    asked: LdapQuestion, verdict: LdapVerdict, config: gwconfig.GatewayConfig
) -> list[str]:
    """The never-reachable subtrees a search hides, as gateway.yaml names them."""
    target = config.targets.get(asked.target)
    if target is None or target.ldap is None:
        return []
    named = {
        tuple(subtree_path(text, verdict.matching)): text for text in target.ldap.never_reachable
    }
    return [named.get(path, ",".join(reversed(path))) for path in verdict.hidden_subtrees]


def _granted(
    asked: LdapQuestion, verdict: LdapVerdict, config: gwconfig.GatewayConfig
) -> list[str]:
    """The subtrees a search's entries are kept to, as the granting rule names them."""
    target = config.targets.get(asked.target)
    named: dict[tuple[str, ...], str] = {}
    if target is not None and target.ldap is not None:
        for rule in target.ldap.operations:
            if rule.name == verdict.operation:
                named = {tuple(subtree_path(t, verdict.matching)): t for t in rule.subtrees}
    return [named.get(path, ",".join(reversed(path))) for path in verdict.granted_subtrees or ()]


def _details(asked: LdapQuestion) -> str:
    parts: list[str] = []
    if asked.operation == "search":
        parts.append(f"scope {asked.scope}")
        if asked.deref_aliases == "never":
            parts.append("aliases not dereferenced")
        else:
            parts.append(f"aliases dereferenced ({asked.deref_aliases})")
        parts.append(f"attributes {', '.join(asked.attributes) or '(none: 1.1)'}")
        parts.append(f"filter {asked.filter or '(objectClass=*)'}")
    elif asked.operation == "modify":
        parts.append(f"{asked.change_type} of {', '.join(asked.attributes)}")
    elif asked.attributes:
        parts.append(f"attributes {', '.join(asked.attributes)}")
    if asked.new_superior or asked.new_rdn:
        parts.append(f"to {asked.new_rdn or '(same RDN)'} under {asked.new_superior or '(same)'}")
    if asked.controls:
        parts.append(f"controls {', '.join(asked.controls)}")
    if asked.sort_keys:
        parts.append(f"sorted by {', '.join(asked.sort_keys)}")
    if not asked.inner_tls:
        parts.append("without the inner TLS")
    return "; ".join(parts)
