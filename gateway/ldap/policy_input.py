"""The ``ldap`` part of the policy input document: one LDAP request, in the form Rego compares.

Rego cannot prepare strings the way RFC 4518 does, so every comparison that depends on it is
settled here, once, by the same code that reads the PDU:

* a DN becomes ``dn_path``: its RDNs from the root down, each RDN the canonical string of its
  sorted (type, prepared value) pairs. A rule's subtree goes through ``subtree_path`` the same way,
  so "entry within subtree" is "the subtree's path is a prefix of the entry's path" (RDN sequence,
  never string suffix). An allowed AD ``<GUID=...>`` form has no path (``null``): it is within no
  subtree a rule can name but the root;
* attribute descriptions become their types (``member;range=0-1499`` is ``member``, ``2.5.4.3``
  is ``cn``), lower-cased, because rules name types;
* the search selectors ``*``, ``+`` and ``1.1`` (RFC 4511 4.5.1.8, RFC 3673) become flags, and
  an empty selection means all user attributes;
* a modify DN's destination is worked out (new superior, or the old parent, plus the new RDN).

Nothing secret enters the document: no bind password, no compare value, no filter value (a filter
on a secret attribute is an oracle for it, so the policy sees which attributes a filter tests, not
what it tests them against).
"""

from __future__ import annotations

import contextlib
from typing import Any

from gateway.ldap.codec import Operation, Request
from gateway.ldap.dn import Dn, MatchingRules, escape_value, normalise_attribute
from gateway.ldap.errors import DnError, LdapRefusedError


def _rdn_text(rdn: tuple[tuple[str, str], ...]) -> str:
    return "+".join(f"{attribute}={escape_value(value)}" for attribute, value in rdn)


def dn_path(dn: Dn, limit: int | None = None) -> list[str] | None:
    """Root-first canonical RDN strings, or None for an AD extended form (no place).

    ``limit``: only the first (root-most) ``limit`` of them, all a prefix test against paths
    of at most that length needs.
    """
    if dn.extended:
        return None
    rdns = dn.rdns if limit is None else dn.rdns[max(len(dn.rdns) - limit, 0) :]
    return [_rdn_text(rdn) for rdn in reversed(rdns)]


def subtree_path(text: str, rules: MatchingRules) -> list[str]:
    """The path of a subtree a rule names (raises ``DnError``; extended forms are refused)."""
    parsed = Dn.parse(text, MatchingRules(case_insensitive=rules.case_insensitive))
    path = dn_path(parsed)
    if path is None:  # unreachable: allow_extended is off above
        raise DnError("ldap-dn-extended-refused", "a rule cannot name an extended DN")
    return path


def bind_name(name: str) -> str:
    """A bind name as rules and bind identities compare it: without the spaces around it and
    case-folded (identity names are lower case; Active Directory compares user principal names
    and ``DOMAIN\\user`` case-insensitively). The proxy injects an identity's credential on this
    reading, so the policy decides the bind the proxy makes."""
    return name.strip().casefold()


def bind_subject(request: Request) -> str | None:
    """Who a bind asks to be: the name of a simple bind; for a SASL bind the identity its
    credentials carry, because that, not the BindRequest's name, is what the directory
    authenticates and acts as (RFC 4513 5.2). None for SASL credentials that cannot be read.

    PLAIN (RFC 4616 section 2: ``[authzid] NUL authcid NUL passwd``) acts as its authorization
    identity, or as its authentication identity when that is empty; EXTERNAL (RFC 4422
    appendix A) as the authorization identity it may carry (none: the identity of the gateway's
    own TLS connection, which the gateway cannot name, so '' and the stream counts as unbound).
    The ``dn:`` and ``u:`` forms of an authorization identity (RFC 4513 5.2.1.8) lose their
    prefix, so a DN is compared as a DN. Other mechanisms carry no identity the gateway reads.
    """
    if request.auth_method != "sasl":
        return request.dn
    mechanism = request.sasl_mechanism.upper()
    if mechanism not in ("PLAIN", "EXTERNAL"):
        return ""
    try:
        text = request.credentials.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if mechanism == "PLAIN":
        parts = text.split("\0")
        if len(parts) != 3 or not parts[1]:
            return None
        identity = parts[0] or parts[1]
    else:
        identity = text
    for prefix in ("dn:", "u:"):
        if identity.startswith(prefix):
            return identity[len(prefix) :]
    return identity


def _attribute_set(descriptions: tuple[str, ...]) -> list[str]:
    return sorted({normalise_attribute(description) for description in descriptions})


def _selection(selectors: tuple[str, ...]) -> dict[str, Any]:
    names = [item for item in selectors if item not in ("*", "+", "1.1")]
    return {
        # RFC 4511 4.5.1.8: an empty list, or "*", asks for all user attributes.
        "all_user": not selectors or "*" in selectors,
        # RFC 3673: "+" asks for all operational attributes.
        "all_operational": "+" in selectors,
        "attributes": _attribute_set(tuple(names)),
    }


def ldap_input(request: Request, rules: MatchingRules) -> dict[str, Any]:
    """The ``input.ldap`` document for ``request``.

    Raises ``LdapRefusedError`` (with the message id and operation, so it is answered with
    resultCode 50) for a DN the gateway cannot compare the way the directory does.
    """
    try:
        return _document(request, rules)
    except DnError as exc:
        raise LdapRefusedError(
            exc.reason, exc.detail, message_id=request.message_id, operation=request.operation
        ) from None


def _parsed(text: str, rules: MatchingRules) -> tuple[Dn, list[str] | None]:
    dn = Dn.parse(text, rules)
    return dn, dn_path(dn)


def _document(request: Request, rules: MatchingRules) -> dict[str, Any]:
    operation = request.operation
    document: dict[str, Any] = {
        "operation": str(operation),
        "message_id": request.message_id,
        "controls": [
            {"oid": control.oid, "critical": control.critical} for control in request.controls
        ],
    }
    if operation in (Operation.UNBIND, Operation.ABANDON):
        return document
    if operation is Operation.EXTENDED:
        document["extended_oid"] = request.request_name
        return document
    if operation is Operation.BIND:
        anonymous = request.auth_method == "simple" and not request.dn and not request.credentials
        subject = bind_subject(request)
        if subject is None:
            raise LdapRefusedError(
                "ldap-sasl-credentials",
                f"{request.sasl_mechanism} credentials that name no identity",
                message_id=request.message_id,
                operation=request.operation,
            )
        bind: dict[str, Any] = {
            "method": request.auth_method,
            "mechanism": request.sasl_mechanism.upper(),
            "anonymous": anonymous,
            "version": request.version,
            "name": bind_name(subject),
            "dn_path": None,
        }
        # A UPN (user@corp.example) or DOMAIN\\user is no DN: Active Directory accepts both as
        # bind names; they are matched by name, not by place.
        with contextlib.suppress(DnError):
            bind["dn_path"] = dn_path(Dn.parse(subject, rules))
        document["bind"] = bind
        return document
    dn, path = _parsed(request.dn, rules)
    document["dn"] = str(dn)
    document["dn_path"] = path
    if operation is Operation.SEARCH:
        document["scope"] = request.scope
        document["size_limit"] = request.size_limit
        document["time_limit"] = request.time_limit
        document["types_only"] = request.types_only
        document["selection"] = _selection(request.attributes)
        node = request.filter
        tested = tuple(node.attributes()) if node else ()
        document["filter"] = {
            # RFC 2891: a sort key orders the answer by its values, an oracle like a filter
            # test, so it is judged as one (filter_attributes, never_returned).
            "attributes": _attribute_set(tested + request.sort_keys),
            "terms": sum(1 for _ in node.walk()) if node else 0,
            "depth": node.depth() if node else 0,
            "extensible_rules": sorted(
                {item.rule for item in node.walk() if item.rule} if node else set()
            ),
        }
    elif operation is Operation.COMPARE or operation is Operation.ADD:
        document["attributes"] = _attribute_set(request.attributes)
    elif operation is Operation.MODIFY:
        document["changes"] = sorted(
            (
                {"type": change.operation, "attribute": normalise_attribute(change.attribute)}
                for change in request.changes
            ),
            key=lambda change: (change["attribute"], change["type"]),
        )
        document["attributes"] = sorted({change["attribute"] for change in document["changes"]})
    elif operation is Operation.MODIFY_DN:
        new_rdn = Dn.parse(request.new_rdn, rules)
        if request.new_superior is not None:
            superior, superior_path = _parsed(request.new_superior, rules)
        elif path is not None:
            superior, superior_path = dn.parent(), dn_path(dn.parent())
        else:
            superior, superior_path = dn, None  # an extended DN's parent is unknown
        document["new_superior_path"] = superior_path
        # Section 4.9: the entry ends up as the new RDN under the new (or old) superior.
        document["new_dn_path"] = (
            dn_path(superior.child(new_rdn)) if superior_path is not None else None
        )
        document["delete_old_rdn"] = request.delete_old_rdn
    return document
