"""Semantic diff of the effective permissions of two configurations.

A text diff of gateway.yaml tells a reviewer which lines moved; this tells them what EmpowerID may
now do that it could not before. Both sides are compared after defaults (a port left out is 443 for
https, a target limit left out is the global one), so re-formatting, re-ordering or spelling out a
default is no change at all.

Every change has an effect:

* ``widened`` - something new is reachable or allowed, or a safety setting was weakened
  (a new target or operation, a method or path added, a CIDR widened, TLS verification off,
  policy mode ``monitor``, a limit raised, a longer signature window, ...);
* ``narrowed`` - the opposite;
* ``neutral`` - a change that grants nothing (logging, relay tuning, an operation renamed whose
  requests are still allowed by another one).

Where the direction of a security-relevant change cannot be known from the file alone (a different
CA bundle, host or policy engine), it is reported as widened: such a change must be reviewed.
Path patterns are compared with :meth:`gateway.config.patterns.PathPattern.covers`; a pattern
covered only by several old patterns together (never by one) is reported as widened, which errs
on the side of review.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gateway.config.ldap_semantics import parse_config_dn
from gateway.config.model import (
    GatewayConfig,
    LdapOperation,
    LdapTarget,
    Operation,
    Target,
    TargetTls,
)
from gateway.config.patterns import PathPattern
from gateway.errors import one_line
from gateway.ldap.dn import Dn, normalise_attribute
from gateway.ldap.errors import DnError

__all__ = [
    "EXIT_NARROWED",
    "EXIT_UNCHANGED",
    "EXIT_WIDENED",
    "Change",
    "Code",
    "Effect",
    "PermissionDiff",
    "diff_configs",
    "render_json",
    "render_markdown",
    "render_text",
]

EXIT_UNCHANGED = 0
EXIT_WIDENED = 10
EXIT_NARROWED = 11


class Effect(StrEnum):
    """What a change does to the permissions and safety of the gateway."""

    WIDENED = "widened"
    NARROWED = "narrowed"
    NEUTRAL = "neutral"


@dataclass(frozen=True, slots=True)
class Code:
    """A literal from the configuration inside a message (a path, a method, a host)."""

    text: str


Words = tuple[str | Code, ...]


@dataclass(frozen=True, slots=True)
class Change:
    """One difference, with a stable ``kind`` for tools and ``words`` for people."""

    effect: Effect
    kind: str
    path: str
    words: Words
    target: str | None = None
    operation: str | None = None
    old: Any = None
    new: Any = None

    @property
    def message(self) -> str:
        """The plain-text sentence."""
        return "".join(w.text if isinstance(w, Code) else w for w in self.words)


@dataclass(frozen=True, slots=True)
class PermissionDiff:
    """All changes between two configurations, widened first."""

    changes: tuple[Change, ...] = field(default=())

    def count(self, effect: Effect) -> int:
        """How many changes have ``effect``."""
        return sum(1 for c in self.changes if c.effect is effect)

    @property
    def widened(self) -> bool:
        """Whether any permission was widened or any safety setting weakened."""
        return self.count(Effect.WIDENED) > 0

    @property
    def exit_code(self) -> int:
        """0 unchanged, 10 widened, 11 only narrowed or neutral changes."""
        if self.widened:
            return EXIT_WIDENED
        return EXIT_NARROWED if self.changes else EXIT_UNCHANGED

    @property
    def result(self) -> str:
        """``widened``, ``narrowed`` (narrowed or neutral only) or ``unchanged``."""
        return {EXIT_WIDENED: "widened", EXIT_NARROWED: "narrowed"}.get(self.exit_code, "unchanged")


def diff_configs(old: GatewayConfig, new: GatewayConfig) -> PermissionDiff:
    """Compare the effective permissions and settings of ``old`` and ``new``."""
    changes: list[Change] = []
    for name in sorted(old.targets.keys() - new.targets.keys()):
        changes.append(_target_removed(name, old.targets[name]))
    for name in sorted(new.targets.keys() - old.targets.keys()):
        changes.extend(_target_added(name, new.targets[name]))
    for name in sorted(old.targets.keys() & new.targets.keys()):
        changes.extend(_TargetDiff(name, old, new).changes())
    changes.extend(_settings(old, new))
    order = {Effect.WIDENED: 0, Effect.NARROWED: 1, Effect.NEUTRAL: 2}
    return PermissionDiff(tuple(sorted(changes, key=lambda c: order[c.effect])))


# --- targets -------------------------------------------------------------------------------------


def _endpoint(target: Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    return f"{target.scheme}://{host}:{target.effective_port}"


def _join(items: Iterable[str]) -> Words:
    words: list[str | Code] = []
    for index, item in enumerate(items):
        if index:
            words.append(", ")
        words.append(Code(item))
    return tuple(words)


def _op_path(target: str, operation: str) -> str:
    return f"targets.{target}.operations[{operation}]"


def _grants_words(op: Operation) -> Words:
    words: Words = (*_join(op.methods), " on ", *_join(op.paths))
    if op.headers:
        words += (" with headers ", *_join(op.headers))
    if op.websocket:
        words += (" and WebSocket streams",)
    return words


def _target_removed(name: str, target: Target) -> Change:
    return Change(
        Effect.NARROWED,
        "target_removed",
        f"targets.{name}",
        (f"{name}: target removed; ", Code(_endpoint(target)), " is no longer reachable"),
        target=name,
        old=_endpoint(target),
    )


def _target_added(name: str, target: Target) -> list[Change]:
    where: Words = (" (addresses in ", *_join(target.allowed_cidrs), ")")
    if not target.allowed_cidrs:
        where = ()
    if target.allow_special_addresses:
        where += (" including special addresses",)
    changes = [
        Change(
            Effect.WIDENED,
            "target_added",
            f"targets.{name}",
            (f"{name}: new target reaches ", Code(_endpoint(target)), *where),
            target=name,
            new=_endpoint(target),
        )
    ]
    if target.tls is not None and target.tls.insecure_skip_verify:
        changes.append(
            Change(
                Effect.WIDENED,
                "tls_verification_off",
                f"targets.{name}.tls.insecure_skip_verify",
                (f"{name}: the target's TLS certificate is not verified",),
                target=name,
                new=True,
            )
        )
    if target.ldap is not None:
        changes.extend(_ldap_target_added(name, target.ldap))
    for op in target.operations:
        changes.append(
            Change(
                Effect.WIDENED,
                "operation_added",
                _op_path(name, op.name),
                (f"{name}: new operation ", Code(op.name), " allows ", *_grants_words(op)),
                target=name,
                operation=op.name,
                new=_op_summary(op),
            )
        )
    return changes


def _op_summary(op: Operation) -> dict[str, Any]:
    return {
        "methods": list(op.methods),
        "paths": list(op.paths),
        "headers": list(op.headers),
        "websocket": op.websocket,
    }


def _networks(cidrs: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def _uncovered(
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
    by: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> list[str]:
    """The networks of ``nets`` not inside any network of ``by``."""
    out = []
    for net in nets:
        inside = any(
            net.version == other.version and net.subnet_of(other)  # type: ignore[arg-type]
            for other in by
        )
        if not inside:
            out.append(str(net))
    return out


class _TargetDiff:
    """Changes of one target present on both sides."""

    def __init__(self, name: str, old: GatewayConfig, new: GatewayConfig) -> None:
        self.name = name
        self.old_cfg, self.new_cfg = old, new
        self.old, self.new = old.targets[name], new.targets[name]
        self.out: list[Change] = []

    def add(self, effect: Effect, kind: str, path: str, words: Words, **kw: Any) -> None:
        self.out.append(
            Change(effect, kind, path, (f"{self.name}: ", *words), target=self.name, **kw)
        )

    def changes(self) -> list[Change]:
        self._endpoint()
        self._cidrs()
        self._tls()
        self._limits()
        self._operations()
        self._credential(
            f"targets.{self.name}.credential", (), self.old.credential, self.new.credential
        )
        self.out.extend(_ldap_changes(self.name, self.old.ldap, self.new.ldap))
        return self.out

    def _credential(
        self, path: str, lead: Words, old: str | None, new: str | None, **kw: Any
    ) -> None:
        """Which injected credential requests get, by name (never a value)."""
        if old == new:
            return
        if new is None:
            effect, kind = Effect.NARROWED, "credential_removed"
            words: Words = (*lead, "the gateway no longer injects credential ", Code(str(old)))
        else:
            effect = Effect.WIDENED
            kind = "credential_added" if old is None else "credential_changed"
            words = (*lead, "requests now get credential ", Code(new), " from the gateway")
            if old is not None:
                words += (" (was ", Code(old), ")")
        self.add(effect, kind, path, words, old=old, new=new, **kw)

    def _endpoint(self) -> None:
        old, new, base = self.old, self.new, f"targets.{self.name}"
        if old.scheme != new.scheme:
            effect = (
                Effect.NARROWED
                if (old.scheme, new.scheme) == ("http", "https")
                else (Effect.WIDENED)
            )
            self.add(
                effect,
                "target_scheme",
                f"{base}.scheme",
                ("scheme changed from ", Code(old.scheme), " to ", Code(new.scheme)),
                old=old.scheme,
                new=new.scheme,
            )
        if old.host != new.host:
            self.add(
                Effect.WIDENED,
                "target_host",
                f"{base}.host",
                ("now points at host ", Code(new.host), " (was ", Code(old.host), ")"),
                old=old.host,
                new=new.host,
            )
        if old.effective_port != new.effective_port:
            self.add(
                Effect.WIDENED,
                "target_port",
                f"{base}.port",
                (
                    "now connects to port ",
                    Code(str(new.effective_port)),
                    " (was ",
                    Code(str(old.effective_port)),
                    ")",
                ),
                old=old.effective_port,
                new=new.effective_port,
            )
        if old.allow_special_addresses != new.allow_special_addresses:
            allowed = new.allow_special_addresses
            self.add(
                Effect.WIDENED if allowed else Effect.NARROWED,
                "target_special_addresses",
                f"{base}.allow_special_addresses",
                (
                    "may now reach loopback, link-local and metadata addresses"
                    if allowed
                    else "may no longer reach loopback, link-local and metadata addresses",
                ),
                old=old.allow_special_addresses,
                new=allowed,
            )

    def _cidrs(self) -> None:
        old, new = _networks(self.old.allowed_cidrs), _networks(self.new.allowed_cidrs)
        path = f"targets.{self.name}.allowed_cidrs"
        added, removed = _uncovered(new, old), _uncovered(old, new)
        if added:
            self.add(
                Effect.WIDENED,
                "cidrs_widened",
                path,
                ("may now resolve to addresses in ", *_join(added)),
                old=list(self.old.allowed_cidrs),
                new=list(self.new.allowed_cidrs),
            )
        if removed:
            self.add(
                Effect.NARROWED,
                "cidrs_narrowed",
                path,
                ("may no longer resolve to addresses in ", *_join(removed)),
                old=list(self.old.allowed_cidrs),
                new=list(self.new.allowed_cidrs),
            )

    def _tls(self) -> None:
        old, new = self.old.tls or TargetTls(), self.new.tls or TargetTls()
        base = f"targets.{self.name}.tls"
        if old.insecure_skip_verify != new.insecure_skip_verify:
            off = new.insecure_skip_verify
            self.add(
                Effect.WIDENED if off else Effect.NARROWED,
                "tls_verification_off" if off else "tls_verification_on",
                f"{base}.insecure_skip_verify",
                (
                    "the target's TLS certificate is no longer verified"
                    if off
                    else "the target's TLS certificate is now verified",
                ),
                old=old.insecure_skip_verify,
                new=off,
            )
        for key, what in (("ca_file", "CA bundle"), ("server_name", "certificate name")):
            before, after = getattr(old, key), getattr(new, key)
            if before != after:
                self.add(
                    Effect.WIDENED,
                    f"tls_{key}",
                    f"{base}.{key}",
                    (
                        f"TLS {what} changed from ",
                        Code(before or "default"),
                        " to ",
                        Code(after or "default"),
                    ),
                    old=before,
                    new=after,
                )

    def _limits(self) -> None:
        for key in type(self.new.limits).model_fields:
            before = getattr(self.old.limits, key)
            after = getattr(self.new.limits, key)
            if before is None and after is None:
                continue  # inherited on both sides: a change of the global limit is reported once
            before = getattr(self.old_cfg.limits, key) if before is None else before
            after = getattr(self.new_cfg.limits, key) if after is None else after
            if before != after:
                self.out.append(
                    _limit_change(
                        f"targets.{self.name}.limits.{key}", before, after, target=self.name
                    )
                )

    def _operations(self) -> None:
        old_ops = {op.name: op for op in self.old.operations}
        new_ops = {op.name: op for op in self.new.operations}
        for name in sorted(old_ops.keys() - new_ops.keys()):
            op = old_ops[name]
            still = _covering_ops(op, self.new.operations)
            if still is not None:
                self.add(
                    Effect.NEUTRAL,
                    "operation_removed_covered",
                    _op_path(self.name, name),
                    ("operation ", Code(name), " removed; still allowed by ", *_join(still)),
                    operation=name,
                    old=_op_summary(op),
                )
            else:
                self.add(
                    Effect.NARROWED,
                    "operation_removed",
                    _op_path(self.name, name),
                    ("operation ", Code(name), " removed: no longer allows ", *_grants_words(op)),
                    operation=name,
                    old=_op_summary(op),
                )
        for name in sorted(new_ops.keys() - old_ops.keys()):
            op = new_ops[name]
            before = _covering_ops(op, self.old.operations)
            if before is not None:
                self.add(
                    Effect.NEUTRAL,
                    "operation_added_covered",
                    _op_path(self.name, name),
                    ("new operation ", Code(name), " was already allowed by ", *_join(before)),
                    operation=name,
                    new=_op_summary(op),
                )
            else:
                self.add(
                    Effect.WIDENED,
                    "operation_added",
                    _op_path(self.name, name),
                    ("new operation ", Code(name), " allows ", *_grants_words(op)),
                    operation=name,
                    new=_op_summary(op),
                )
        for name in sorted(old_ops.keys() & new_ops.keys()):
            self._operation(old_ops[name], new_ops[name])

    def _operation(self, old: Operation, new: Operation) -> None:
        path = _op_path(self.name, old.name)
        lead: Words = ("operation ", Code(old.name))
        added = [m for m in new.methods if m not in old.methods]
        removed = [m for m in old.methods if m not in new.methods]
        common = [m for m in new.methods if m in old.methods]
        if added:
            self.add(
                Effect.WIDENED,
                "methods_added",
                f"{path}.methods",
                (*lead, " now also allows ", *_join(added), " on ", *_join(new.paths)),
                operation=old.name,
                old=list(old.methods),
                new=list(new.methods),
            )
        if removed:
            self.add(
                Effect.NARROWED,
                "methods_removed",
                f"{path}.methods",
                (*lead, " no longer allows ", *_join(removed)),
                operation=old.name,
                old=list(old.methods),
                new=list(new.methods),
            )
        if common:
            self._paths(old, new, common, path, lead)
        self._headers(old, new, path, lead)
        self._credential(
            f"{path}.credential", (*lead, ": "), old.credential, new.credential, operation=old.name
        )
        if old.websocket != new.websocket:
            on = new.websocket
            self.add(
                Effect.WIDENED if on else Effect.NARROWED,
                "websocket_on" if on else "websocket_off",
                f"{path}.websocket",
                (
                    (*lead, " now also allows WebSocket streams on ", *_join(new.paths))
                    if on
                    else (*lead, " no longer allows WebSocket streams")
                ),
                operation=old.name,
                old=old.websocket,
                new=on,
            )

    def _paths(
        self, old: Operation, new: Operation, methods: Sequence[str], path: str, lead: Words
    ) -> None:
        old_patterns = [PathPattern.parse(p) for p in old.paths]
        new_patterns = [PathPattern.parse(p) for p in new.paths]
        for pattern in new_patterns:
            if any(o.covers(pattern) for o in old_patterns):
                continue
            narrower = [o.text for o in old_patterns if pattern.covers(o)]
            words: Words = (*lead, " now also allows ", *_join(methods), " on ", Code(pattern.text))
            if narrower:
                words += (" (widened from ", *_join(narrower), ")")
            self.add(
                Effect.WIDENED,
                "path_widened" if narrower else "path_added",
                f"{path}.paths",
                words,
                operation=old.name,
                old=list(old.paths),
                new=list(new.paths),
            )
        for pattern in old_patterns:
            if any(n.covers(pattern) for n in new_patterns):
                continue
            wider = [n.text for n in new_patterns if pattern.covers(n)]
            words = (*lead, " no longer allows ", *_join(methods), " on ", Code(pattern.text))
            if wider:
                words += (" (narrowed to ", *_join(wider), ")")
            self.add(
                Effect.NARROWED,
                "path_narrowed" if wider else "path_removed",
                f"{path}.paths",
                words,
                operation=old.name,
                old=list(old.paths),
                new=list(new.paths),
            )

    def _headers(self, old: Operation, new: Operation, path: str, lead: Words) -> None:
        # Header names are case-insensitive (RFC 9110 section 5.1).
        before = {h.lower(): h for h in old.headers}
        after = {h.lower(): h for h in new.headers}
        added = [after[k] for k in after if k not in before]
        removed = [before[k] for k in before if k not in after]
        if added:
            self.add(
                Effect.WIDENED,
                "headers_added",
                f"{path}.headers",
                (*lead, " now also passes headers ", *_join(added)),
                operation=old.name,
                old=list(old.headers),
                new=list(new.headers),
            )
        if removed:
            self.add(
                Effect.NARROWED,
                "headers_removed",
                f"{path}.headers",
                (*lead, " no longer passes headers ", *_join(removed)),
                operation=old.name,
                old=list(old.headers),
                new=list(new.headers),
            )


def _covering_ops(op: Operation, others: Sequence[Operation]) -> list[str] | None:
    """Names of operations in ``others`` that together allow everything ``op`` allows, or None.

    Each (method, path pattern) of ``op`` must be covered by one operation that also passes at
    least ``op``'s headers and, when ``op`` allows WebSocket streams, allows them too.
    """
    headers = {h.lower() for h in op.headers}
    names: list[str] = []
    for method in op.methods:
        for text in op.paths:
            pattern = PathPattern.parse(text)
            cover = next(
                (
                    other.name
                    for other in others
                    if method in other.methods
                    and headers <= {h.lower() for h in other.headers}
                    and (other.websocket or not op.websocket)
                    and any(PathPattern.parse(p).covers(pattern) for p in other.paths)
                ),
                None,
            )
            if cover is None:
                return None
            if cover not in names:
                names.append(cover)
    return names


# --- LDAP rules ----------------------------------------------------------------------------------
# An LDAP target's grants are its rules (kinds on DN subtrees, with attributes, scopes, change
# types, identities, caps) and its target-wide settings (vetoes, allow-lists, flags). Subtrees
# are compared as DNs, by RDN sequence (a new subtree inside an old one widens nothing);
# attribute types as the policy compares them (normalised; "*" covers every named one).


def _ldap_rule_words(rule: LdapOperation) -> Words:
    words: Words = (*_join(rule.kinds),)
    if rule.subtrees:
        words += (" on ", *_join(rule.subtrees))
    if rule.attributes:
        words += (" with attributes ", *_join(rule.attributes))
    if rule.bind_as:
        words += (" as ", *_join(rule.bind_as))
    return words


def _ldap_rule_path(target: str, rule: str) -> str:
    return f"targets.{target}.ldap.operations[{rule}]"


def _ldap_target_added(name: str, ldap: LdapTarget) -> list[Change]:
    changes = [
        Change(
            Effect.WIDENED,
            "ldap_rule_added",
            _ldap_rule_path(name, rule.name),
            (f"{name}: new LDAP rule ", Code(rule.name), " allows ", *_ldap_rule_words(rule)),
            target=name,
            operation=rule.name,
            new=rule.model_dump(mode="json"),
        )
        for rule in ldap.operations
    ]
    changes.extend(_LdapDiff(name, LdapTarget(never_returned=[]), ldap).flags())
    return changes


def _ldap_changes(name: str, old: LdapTarget | None, new: LdapTarget | None) -> list[Change]:
    """The changes of one target's LDAP section (a change of scheme to or from LDAP brings or
    takes its rules as a whole)."""
    if old is not None and new is not None:
        return _LdapDiff(name, old, new).changes()
    if new is not None:
        return _ldap_target_added(name, new)
    if old is None:
        return []
    return [
        Change(
            Effect.NARROWED,
            "ldap_rule_removed",
            _ldap_rule_path(name, rule.name),
            (
                f"{name}: LDAP rule ",
                Code(rule.name),
                " removed: no longer allows ",
                *_ldap_rule_words(rule),
            ),
            target=name,
            operation=rule.name,
            old=rule.model_dump(mode="json"),
        )
        for rule in old.operations
    ]


def _dns(texts: Sequence[str], ldap: LdapTarget) -> list[tuple[str, Dn | None]]:
    parsed: list[tuple[str, Dn | None]] = []
    for text in texts:
        try:
            parsed.append((text, parse_config_dn(text, ldap)))
        except DnError:
            parsed.append((text, None))  # validate refuses it; compare it as text
    return parsed


def _outside(
    texts: Sequence[str], ldap: LdapTarget, others: Sequence[str], other_ldap: LdapTarget
) -> list[str]:
    """The DNs of ``texts`` not within any DN of ``others`` (the whole subtree is covered)."""
    covering = _dns(others, other_ldap)
    out = []
    for text, dn in _dns(texts, ldap):
        inside = any(
            (dn is not None and other is not None and dn.within(other)) or text == other_text
            for other_text, other in covering
        )
        if not inside:
            out.append(text)
    return out


def _types(names: Sequence[str]) -> dict[str, str]:
    return {name if name in ("*", "+") else normalise_attribute(name): name for name in names}


class _LdapDiff:
    """Changes of the LDAP section of one target present on both sides."""

    def __init__(self, name: str, old: LdapTarget, new: LdapTarget) -> None:
        self.name = name
        self.old, self.new = old, new
        self.out: list[Change] = []

    def add(self, effect: Effect, kind: str, path: str, words: Words, **kw: Any) -> None:
        self.out.append(
            Change(effect, kind, path, (f"{self.name}: ", *words), target=self.name, **kw)
        )

    def changes(self) -> list[Change]:
        self.flags()
        self._rules()
        return self.out

    def flags(self) -> list[Change]:
        """Target-wide settings: switches, allow-lists, identities and vetoes."""
        old, new = self.old, self.new
        base = f"targets.{self.name}.ldap"
        switches = (
            ("cleartext", "talks to the directory without TLS", "uses TLS to the directory again"),
            ("allow_anonymous", "allows anonymous binds and use", "no longer allows anonymous use"),
            ("allow_extended_dn", "accepts <GUID=>/<SID=> DNs", "refuses <GUID=>/<SID=> DNs"),
        )
        for key, on, off in switches:
            before, after = getattr(old, key), getattr(new, key)
            if before != after:
                self.add(
                    Effect.WIDENED if after else Effect.NARROWED,
                    f"ldap_{key}",
                    f"{base}.{key}",
                    ("LDAP target now " + (on if after else off),),
                    old=before,
                    new=after,
                )
        if old.case_insensitive_values != new.case_insensitive_values:
            # Which entries a subtree names changes with it: review either way.
            self.add(
                Effect.WIDENED,
                "ldap_matching",
                f"{base}.case_insensitive_values",
                (
                    "DN values now compare case-",
                    "in" if new.case_insensitive_values else "",
                    "sensitively",
                ),
                old=old.case_insensitive_values,
                new=new.case_insensitive_values,
            )
        for key, what in (
            ("sasl_mechanisms", "SASL mechanisms"),
            ("controls", "controls"),
            ("extended_operations", "extended operations"),
        ):
            self._members(
                f"{base}.{key}", what, getattr(old, key), getattr(new, key), widen_on_add=True
            )
        for identity in sorted(new.bind_identities.keys() - old.bind_identities.keys()):
            self.add(
                Effect.WIDENED,
                "ldap_identity_added",
                f"{base}.bind_identities.{identity}",
                (
                    "new bind identity ",
                    Code(identity),
                    " binds as ",
                    Code(new.bind_identities[identity].dn),
                ),
                new=new.bind_identities[identity].dn,
            )
        for identity in sorted(old.bind_identities.keys() - new.bind_identities.keys()):
            self.add(
                Effect.NARROWED,
                "ldap_identity_removed",
                f"{base}.bind_identities.{identity}",
                ("bind identity ", Code(identity), " removed"),
                old=old.bind_identities[identity].dn,
            )
        for identity in sorted(old.bind_identities.keys() & new.bind_identities.keys()):
            before, after = old.bind_identities[identity], new.bind_identities[identity]
            if before.dn != after.dn:
                self.add(
                    Effect.WIDENED,
                    "ldap_identity_changed",
                    f"{base}.bind_identities.{identity}.dn",
                    (
                        "bind identity ",
                        Code(identity),
                        " now binds as ",
                        Code(after.dn),
                        " (was ",
                        Code(before.dn),
                        ")",
                    ),
                    old=before.dn,
                    new=after.dn,
                )
        unprotected = _outside(old.never_reachable, old, new.never_reachable, new)
        if unprotected:
            self.add(
                Effect.WIDENED,
                "ldap_never_reachable_removed",
                f"{base}.never_reachable",
                ("subtrees no longer protected (never reachable): ", *_join(unprotected)),
                old=list(old.never_reachable),
                new=list(new.never_reachable),
            )
        protected = _outside(new.never_reachable, new, old.never_reachable, old)
        if protected:
            self.add(
                Effect.NARROWED,
                "ldap_never_reachable_added",
                f"{base}.never_reachable",
                ("subtrees now never reachable: ", *_join(protected)),
                old=list(old.never_reachable),
                new=list(new.never_reachable),
            )
        before, after = _types(old.never_returned), _types(new.never_returned)
        returned = [before[k] for k in before if k not in after]
        hidden = [after[k] for k in after if k not in before]
        if returned:
            self.add(
                Effect.WIDENED,
                "ldap_never_returned_removed",
                f"{base}.never_returned",
                ("attributes no longer withheld from searches: ", *_join(returned)),
                old=list(old.never_returned),
                new=list(new.never_returned),
            )
        if hidden:
            self.add(
                Effect.NARROWED,
                "ldap_never_returned_added",
                f"{base}.never_returned",
                ("attributes now withheld from searches: ", *_join(hidden)),
                old=list(old.never_returned),
                new=list(new.never_returned),
            )
        return self.out

    def _members(
        self,
        path: str,
        what: str,
        before: Sequence[str],
        after: Sequence[str],
        *,
        widen_on_add: bool,
        lead: Words = (),
        **kw: Any,
    ) -> None:
        added = [item for item in after if item not in before]
        removed = [item for item in before if item not in after]
        key = path.rsplit(".", 1)[-1]
        if added:
            self.add(
                Effect.WIDENED if widen_on_add else Effect.NARROWED,
                f"ldap_{key}_added",
                path,
                (*lead, f"{what} now also allowed: ", *_join(added)),
                old=list(before),
                new=list(after),
                **kw,
            )
        if removed:
            self.add(
                Effect.NARROWED if widen_on_add else Effect.WIDENED,
                f"ldap_{key}_removed",
                path,
                (*lead, f"{what} no longer allowed: ", *_join(removed)),
                old=list(before),
                new=list(after),
                **kw,
            )

    def _rules(self) -> None:
        old, new = self.old, self.new
        old_rules = {rule.name: rule for rule in old.operations}
        new_rules = {rule.name: rule for rule in new.operations}
        for name in sorted(old_rules.keys() - new_rules.keys()):
            rule = old_rules[name]
            self.add(
                Effect.NARROWED,
                "ldap_rule_removed",
                _ldap_rule_path(self.name, name),
                ("LDAP rule ", Code(name), " removed: no longer allows ", *_ldap_rule_words(rule)),
                operation=name,
                old=rule.model_dump(mode="json"),
            )
        for name in sorted(new_rules.keys() - old_rules.keys()):
            rule = new_rules[name]
            self.add(
                Effect.WIDENED,
                "ldap_rule_added",
                _ldap_rule_path(self.name, name),
                ("new LDAP rule ", Code(name), " allows ", *_ldap_rule_words(rule)),
                operation=name,
                new=rule.model_dump(mode="json"),
            )
        for name in sorted(old_rules.keys() & new_rules.keys()):
            self._rule(old_rules[name], new_rules[name])

    def _rule(self, old: LdapOperation, new: LdapOperation) -> None:
        path = _ldap_rule_path(self.name, old.name)
        lead: Words = ("LDAP rule ", Code(old.name), ": ")
        kw: dict[str, Any] = {"operation": old.name, "lead": lead}
        for key, what in (
            ("kinds", "operations"),
            ("scopes", "scopes"),
            ("change_types", "change types"),
        ):
            self._members(
                f"{path}.{key}", what, getattr(old, key), getattr(new, key), widen_on_add=True, **kw
            )
        places = [("subtrees", "subtrees")]
        if "modify_dn" in old.kinds and "modify_dn" in new.kinds:
            # Where a modify DN may move entries (default: the rule's subtrees).
            places.append(("new_superiors", "destinations"))
        for key, what in places:
            before = getattr(old, key) or (old.subtrees if key == "new_superiors" else [])
            after = getattr(new, key) or (new.subtrees if key == "new_superiors" else [])
            wider = _outside(after, self.new, before, self.old)
            narrower = _outside(before, self.old, after, self.new)
            if wider:
                self.add(
                    Effect.WIDENED,
                    f"ldap_{key}_widened",
                    f"{path}.{key}",
                    (*lead, f"{what} now also include ", *_join(wider)),
                    operation=old.name,
                    old=list(before),
                    new=list(after),
                )
            if narrower:
                self.add(
                    Effect.NARROWED,
                    f"ldap_{key}_narrowed",
                    f"{path}.{key}",
                    (*lead, f"{what} no longer include ", *_join(narrower)),
                    operation=old.name,
                    old=list(before),
                    new=list(after),
                )
        self._attributes(path, lead, old, new)
        if old.bind_as != new.bind_as:
            if not new.bind_as or (old.bind_as and set(new.bind_as) > set(old.bind_as)):
                effect = Effect.WIDENED
            elif not old.bind_as or set(new.bind_as) < set(old.bind_as):
                effect = Effect.NARROWED
            else:
                effect = Effect.WIDENED  # some identities in, some out: review
            self.add(
                effect,
                "ldap_bind_as",
                f"{path}.bind_as",
                (
                    *lead,
                    "identities now ",
                    *(_join(new.bind_as) or ("any bound identity",)),
                    " (was ",
                    *(_join(old.bind_as) or ("any bound identity",)),
                    ")",
                ),
                operation=old.name,
                old=list(old.bind_as),
                new=list(new.bind_as),
            )
        for key, what in (
            ("max_size_limit", "size limit cap"),
            ("max_time_limit", "time limit cap"),
        ):
            cap_before, cap_after = getattr(old, key), getattr(new, key)
            if cap_before == cap_after:
                continue
            raised = cap_after is None or (cap_before is not None and cap_after > cap_before)
            self.add(
                Effect.WIDENED if raised else Effect.NARROWED,
                f"ldap_{key}",
                f"{path}.{key}",
                (
                    *lead,
                    f"{what} now ",
                    Code(_show(cap_after)),
                    " (was ",
                    Code(_show(cap_before)),
                    ")",
                ),
                operation=old.name,
                old=cap_before,
                new=cap_after,
            )

    def _attributes(self, path: str, lead: Words, old: LdapOperation, new: LdapOperation) -> None:
        before, after = _types(old.attributes), _types(new.attributes)
        # "*" covers every attribute the gateway can name; "+" the operational selector.
        added = [after[k] for k in after if k not in before and (k in "*+" or "*" not in before)]
        removed = [before[k] for k in before if k not in after and (k in "*+" or "*" not in after)]
        if added:
            self.add(
                Effect.WIDENED,
                "ldap_attributes_added",
                f"{path}.attributes",
                (*lead, "attributes now also allowed: ", *_join(added)),
                operation=old.name,
                old=list(old.attributes),
                new=list(new.attributes),
            )
        if removed:
            self.add(
                Effect.NARROWED,
                "ldap_attributes_removed",
                f"{path}.attributes",
                (*lead, "attributes no longer allowed: ", *_join(removed)),
                operation=old.name,
                old=list(old.attributes),
                new=list(new.attributes),
            )
        if old.filter_attributes != new.filter_attributes:
            words: Words
            if new.filter_attributes is None:
                effect, words = Effect.WIDENED, ("filters may now test any attribute",)
            elif old.filter_attributes is None:
                effect = Effect.NARROWED
                words = ("filters now restricted to ", *_join(new.filter_attributes))
            else:
                grown = set(_types(new.filter_attributes)) - set(_types(old.filter_attributes))
                effect = Effect.WIDENED if grown else Effect.NARROWED
                words = ("filters may now test ", *_join(new.filter_attributes))
            self.add(
                effect,
                "ldap_filter_attributes",
                f"{path}.filter_attributes",
                (*lead, *words),
                operation=old.name,
                old=old.filter_attributes,
                new=new.filter_attributes,
            )


# --- settings outside the targets ----------------------------------------------------------------

_ABSENT = object()
# Secret references are compared as a whole: set, unset or moved.
_ATOMIC = frozenset({"gateway.key_passphrase", "proxy.password"})


# The keys of a secret reference (gateway.config.secrets.SecretRef): shown as the reference.
_REFERENCE_KEYS = frozenset({"env", "file", "credential"})


def _is_reference(value: Any) -> bool:
    present = {k for k, v in value.items() if v is not None} if isinstance(value, dict) else set()
    return bool(present) and present <= _REFERENCE_KEYS


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict) and path not in _ATOMIC and not _is_reference(value):
        for key, child in value.items():
            yield from _leaves(child, f"{path}.{key}" if path else key)
    else:
        yield path, value


def _show(value: Any) -> str:
    if value is _ABSENT or value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(_show(v) for v in value) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_show(v)}" for k, v in value.items() if v is not None)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 60.0 is written 60 in the file
    return str(value)


def _json_value(value: Any) -> Any:
    return None if value is _ABSENT else value


def _limit_change(path: str, before: Any, after: Any, *, target: str | None = None) -> Change:
    raised = after > before
    words: Words = (
        (f"{target}: " if target else ""),
        Code(path.split(".", 2)[-1] if target else path),
        " raised from " if raised else " lowered from ",
        Code(_show(before)),
        " to ",
        Code(_show(after)),
    )
    return Change(
        Effect.WIDENED if raised else Effect.NARROWED,
        "limit_raised" if raised else "limit_lowered",
        path,
        words,
        target=target,
        old=before,
        new=after,
    )


Rule = Callable[[str, Any, Any], Change]


def _changed(effect: Effect, kind: str, note: str = "") -> Rule:
    def rule(path: str, before: Any, after: Any) -> Change:
        words: Words = (
            Code(path),
            " changed from ",
            Code(_show(before)),
            " to ",
            Code(_show(after)),
        )
        return Change(
            effect,
            kind,
            path,
            words + ((f": {note}",) if note else ()),
            old=_json_value(before),
            new=_json_value(after),
        )

    return rule


def _directional(weaker: Callable[[Any, Any], bool], note_weaker: str, note_stronger: str) -> Rule:
    def rule(path: str, before: Any, after: Any) -> Change:
        weakened = weaker(before, after)
        effect = Effect.WIDENED if weakened else Effect.NARROWED
        note = note_weaker if weakened else note_stronger
        return _changed(effect, "setting_weakened" if weakened else "setting_strengthened", note)(
            path, before, after
        )

    return rule


def _set_members(
    path: str, before: Any, after: Any, *, what_added: str, what_removed: str
) -> list[Change]:
    old = [] if before is _ABSENT or before is None else list(before)
    new = [] if after is _ABSENT or after is None else list(after)
    changes = []
    added = [v for v in new if v not in old]
    removed = [v for v in old if v not in new]
    if added:
        changes.append(
            Change(
                Effect.WIDENED,
                "setting_weakened",
                path,
                (Code(path), f": {what_added} ", *_join(added)),
                old=old,
                new=new,
            )
        )
    if removed:
        changes.append(
            Change(
                Effect.NARROWED,
                "setting_strengthened",
                path,
                (Code(path), f": {what_removed} ", *_join(removed)),
                old=old,
                new=new,
            )
        )
    return changes


def _higher(before: Any, after: Any) -> bool:
    return bool(after > before)


_REVIEW = "review: this can change who or what the gateway trusts"
_CREDENTIAL = (
    "review: this changes what the gateway authenticates with, or where it sends a secret "
    "(references only: no secret value is compared or shown)"
)
_RULES: dict[str, Rule] = {
    "policy.mode": _directional(
        lambda _b, a: a == "monitor",
        "denied requests are forwarded anyway",
        "denied requests are refused again",
    ),
    "policy.engine": _changed(Effect.WIDENED, "setting_changed", "decisions come from elsewhere"),
    "policy.opa_url": _changed(Effect.WIDENED, "setting_changed", "decisions come from elsewhere"),
    "policy.directories": _changed(
        Effect.WIDENED, "setting_changed", "different Rego modules decide"
    ),
    "signatures.max_age_seconds": _directional(
        _higher, "older request signatures are accepted", "older request signatures are refused"
    ),
    "signatures.clock_skew_seconds": _directional(
        _higher, "more clock difference is tolerated", "less clock difference is tolerated"
    ),
    "empowerid.url": _changed(Effect.WIDENED, "setting_changed", "a different tenant"),
    "empowerid.ca_file": _changed(Effect.WIDENED, "setting_changed", _REVIEW),
    "proxy.ca_file": _changed(Effect.WIDENED, "setting_changed", _REVIEW),
    "gateway.state_dir": _changed(
        Effect.WIDENED,
        "setting_changed",
        "pinned keys and the anti-rollback epoch are read from a different directory",
    ),
    "gateway.key_passphrase": _directional(
        lambda _b, a: a is _ABSENT or a is None,
        "the private key is no longer encrypted at rest",
        "the private key is encrypted at rest",
    ),
    "config_signature.required": _directional(
        lambda _b, a: a is False,
        "unsigned configuration is accepted",
        "only signed configuration is accepted",
    ),
}


def _settings(old: GatewayConfig, new: GatewayConfig) -> list[Change]:
    before = dict(_leaves(old.model_dump(mode="json", exclude={"targets"})))
    after = dict(_leaves(new.model_dump(mode="json", exclude={"targets"})))
    changes: list[Change] = []
    for path in sorted(before.keys() | after.keys()):
        was, now = before.get(path, _ABSENT), after.get(path, _ABSENT)
        if was == now or (was in (_ABSENT, None) and now in (_ABSENT, None)):
            continue
        if path == "config_signature.public_keys":
            changes.extend(
                _set_members(
                    path, was, now, what_added="now also trusts", what_removed="no longer trusts"
                )
            )
        elif path in _RULES:
            changes.append(_RULES[path](path, was, now))
        elif path.startswith("credentials."):
            # What the gateway authenticates with, or where it sends a client secret: review.
            changes.append(
                _changed(Effect.WIDENED, "credential_setting_changed", _CREDENTIAL)(path, was, now)
            )
        elif path.startswith("limits.") and isinstance(was, int | float):
            changes.append(_limit_change(path, was, now))
        else:
            changes.append(_changed(Effect.NEUTRAL, "setting_changed")(path, was, now))
    return changes


# --- rendering -----------------------------------------------------------------------------------

_HEADINGS = {
    Effect.WIDENED: "Widened (needs security review)",
    Effect.NARROWED: "Narrowed",
    Effect.NEUTRAL: "Other changes",
}
_MARKS = {Effect.WIDENED: "widened ", Effect.NARROWED: "narrowed", Effect.NEUTRAL: "changed "}


def _summary(diff: PermissionDiff) -> str:
    counts = ", ".join(f"{diff.count(e)} {e.value}" for e in Effect)
    verdict = {
        EXIT_WIDENED: "permissions widened",
        EXIT_NARROWED: "no permission widened",
        EXIT_UNCHANGED: "no change in permissions",
    }[diff.exit_code]
    return f"{verdict} ({counts}; exit {diff.exit_code})"


def render_text(diff: PermissionDiff, old_label: str, new_label: str) -> str:
    """One line per change, marked widened/narrowed/changed, then a verdict line."""
    lines = [f"{_MARKS[c.effect]}  {c.message}" for c in diff.changes]
    lines.append(f"{old_label} -> {new_label}: {_summary(diff)}")
    return "\n".join(lines) + "\n"


def render_json(diff: PermissionDiff, old_label: str, new_label: str) -> str:
    """The machine-readable report (stable keys; ``changes`` in the order of the text form)."""
    document = {
        "old": old_label,
        "new": new_label,
        "result": diff.result,
        "exit_code": diff.exit_code,
        "counts": {e.value: diff.count(e) for e in Effect},
        "changes": [
            {
                "effect": c.effect.value,
                "kind": c.kind,
                "path": c.path,
                "target": c.target,
                "operation": c.operation,
                "message": c.message,
                "old": c.old,
                "new": c.new,
            }
            for c in diff.changes
        ],
    }
    return json.dumps(document, indent=2) + "\n"


def _md_code(text: str) -> str:
    """A Markdown code span that no value can break out of (CommonMark section 6.1)."""
    text = one_line(text)
    longest = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _md_text(text: str) -> str:
    """Plain words with every Markdown punctuation character escaped (CommonMark section 2.4)."""
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return "".join(f"\\{ch}" if ch in "\\`*_{}[]()<>#+-.!|~&" else ch for ch in text)


def render_markdown(diff: PermissionDiff, old_label: str, new_label: str) -> str:
    """A merge-request comment: verdict first, then widened, narrowed and other changes."""
    lines = [f"### gateway diff: {_md_code(old_label)} → {_md_code(new_label)}", ""]
    if diff.widened:
        lines.append("**Permissions widened: this change needs a security review.**")
    elif diff.changes:
        lines.append("No permission is widened.")
    else:
        lines.append("No change in effective permissions or settings.")
    lines.append("")
    for effect in Effect:
        selected = [c for c in diff.changes if c.effect is effect]
        if not selected:
            continue
        lines += [f"#### {_HEADINGS[effect]} ({len(selected)})", ""]
        for change in selected:
            words = "".join(
                _md_code(w.text) if isinstance(w, Code) else _md_text(w) for w in change.words
            )
            lines.append(f"- {words}")
        lines.append("")
    lines.append(f"<sub>{_md_text(_summary(diff))}</sub>")
    return "\n".join(lines) + "\n"
