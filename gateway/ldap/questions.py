"""An LDAP operation described in words, decided as if a client had sent it.

``gateway explain --ldap``, ``policy-test`` cases with an ``ldap`` key and the replay of LDAP
decision records all start from an :class:`LdapQuestion` (target, operation, DN, attributes,
scope, filter, changes, identity) and turn it into the :class:`gateway.ldap.decide.LdapFacts` the
proxy would have built for the same PDU, so each of them is answered by
:meth:`gateway.ldap.decide.LdapChain.decide`, exactly as a running gateway answers.

A question never holds a secret: no password (an injected bind carries none, another simple
bind is given a stand-in), no compare value and no filter value. A filter may be given as RFC 4515
text (explain, tests) or as the attribute types it tests (what a decision record keeps, because
the values could be guesses at a secret); the policy sees only the attribute types either way.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.config.model import GatewayConfig
from gateway.ldap.codec import (
    CHANGE_TYPES,
    DEREF_ALIASES,
    SCOPES,
    SORT_CONTROL,
    Change,
    Control,
    FilterNode,
    Operation,
    Request,
)
from gateway.ldap.decide import LdapFacts
from gateway.ldap.dn import Dn, is_utf8_text
from gateway.ldap.errors import DnError, LdapError
from gateway.ldap.filters import parse_filter
from gateway.ldap.policy_input import bind_name, bind_subject

__all__ = [
    "QUESTION_OPERATIONS",
    "LdapQuestion",
    "QuestionError",
    "question_from_record",
    "question_of",
]

QUESTION_OPERATIONS: tuple[str, ...] = tuple(
    op.value for op in Operation if op not in (Operation.UNBIND, Operation.ABANDON)
)
# What a simple bind that is not injected is given: the policy only sees that it is not empty.
_STAND_IN_PASSWORD = b"question"
_MAX_ITEMS = 256
_QUESTION_ID = 1


class QuestionError(ValueError):
    """A question that does not describe an LDAP operation (the message says what is wrong)."""


@dataclass(frozen=True)
class LdapQuestion:
    """One LDAP operation in words.

    ``dn`` is the entry (search base, entry to change, bind name) or, for ``extended``, the
    request OID. ``attributes`` are the requested attributes of a search (none: no attributes,
    the ``1.1`` selector), the attributes of an add, the compared attribute, or the changed
    attributes of a modify (each with ``change_type`` unless ``changes`` lists pairs).
    ``bound_as`` is what the connection is bound as: a bind identity's name (injected), a DN or
    user principal name, or None for an unbound connection.
    """

    target: str
    operation: str
    dn: str = ""
    attributes: tuple[str, ...] = ()
    scope: str = "sub"
    filter: str | None = None
    filter_attributes: tuple[str, ...] | None = None
    change_type: str = "replace"
    changes: tuple[tuple[str, str], ...] = ()
    new_rdn: str | None = None
    new_superior: str | None = None
    controls: tuple[str, ...] = ()
    size_limit: int = 0
    time_limit: int = 0
    bound_as: str | None = None
    inner_tls: bool = True
    keyid: str | None = None
    empty_password: bool = False
    """bind: the SaaS sent a name without a password (only whether it is empty is kept)."""
    mechanism: str | None = None
    """bind: a SASL bind with this mechanism instead of a simple bind."""
    version: int = 3
    """bind: the LDAP version the bind asks for."""
    sort_keys: tuple[str, ...] = ()
    """search: attribute types a server-side sort control (RFC 2891) orders by; the question
    then carries that control (the policy judges the keys as attributes the filter tests)."""
    deref_aliases: str = "never"
    """search: when the directory dereferences aliases (RFC 4511 4.5.1.3: never, searching,
    finding, always). Anything but never lets the search reach entries outside its base and
    scope, so the verdict then keeps it to the granting rule's subtrees."""

    def request(self, identities: Collection[str] = ()) -> Request:
        """The request a client would send; raises :class:`QuestionError`. A bind whose name is
        one of ``identities`` (the target's bind identities) carries no password: the gateway
        adds the stored one."""
        if self.operation not in QUESTION_OPERATIONS:
            raise QuestionError(
                f"operation {self.operation!r} is not one of {', '.join(QUESTION_OPERATIONS)}"
            )
        operation = Operation(self.operation)
        controls = tuple(Control(oid, True) for oid in self.controls)
        base: dict[str, Any] = {"controls": controls}
        if operation is Operation.BIND and self.mechanism:
            # A SASL bind's identity is in its credentials (policy_input.bind_subject): the
            # question's name goes there, as the client would put it.
            return Request(
                _QUESTION_ID,
                operation,
                version=self.version,
                auth_method="sasl",
                sasl_mechanism=self.mechanism,
                credentials=_sasl_credentials(self.mechanism, self.dn),
                **base,
            )
        if operation is Operation.BIND:
            injected = bind_name(self.dn) in identities
            return Request(
                _QUESTION_ID,
                operation,
                dn=self.dn,
                version=self.version,
                auth_method="simple",
                credentials=(
                    b"" if injected or not self.dn or self.empty_password else _STAND_IN_PASSWORD
                ),
                **base,
            )
        if operation is Operation.EXTENDED:
            return Request(_QUESTION_ID, operation, request_name=self.dn, **base)
        if operation is Operation.SEARCH:
            if self.scope not in SCOPES:
                raise QuestionError(f"scope {self.scope!r} is not one of {', '.join(SCOPES)}")
            if self.deref_aliases not in DEREF_ALIASES:
                raise QuestionError(
                    f"deref_aliases {self.deref_aliases!r} is not one of {', '.join(DEREF_ALIASES)}"
                )
            return Request(
                _QUESTION_ID,
                operation,
                dn=self.dn,
                scope=self.scope,
                deref_aliases=DEREF_ALIASES.index(self.deref_aliases),
                size_limit=self.size_limit,
                time_limit=self.time_limit,
                filter=self._filter(),
                sort_keys=self.sort_keys,
                attributes=self.attributes or ("1.1",),
                **self._sorted(base),
            )
        if operation is Operation.MODIFY:
            pairs = self.changes or tuple((self.change_type, a) for a in self.attributes)
            if not pairs:
                raise QuestionError("a modify needs the attributes it changes (--attribute)")
            for kind, _ in pairs:
                if kind not in CHANGE_TYPES:
                    raise QuestionError(
                        f"change type {kind!r} is not one of {', '.join(CHANGE_TYPES)}"
                    )
            changes = tuple(Change(kind, attribute, 1) for kind, attribute in pairs)
            return Request(_QUESTION_ID, operation, dn=self.dn, changes=changes, **base)
        if operation is Operation.COMPARE:
            if len(self.attributes) != 1:
                raise QuestionError("a compare names exactly one attribute (--attribute)")
            return Request(_QUESTION_ID, operation, dn=self.dn, attributes=self.attributes, **base)
        if operation is Operation.MODIFY_DN:
            new_rdn = self.new_rdn or _first_rdn(self.dn)
            return Request(
                _QUESTION_ID,
                operation,
                dn=self.dn,
                new_rdn=new_rdn,
                new_superior=self.new_superior,
                **base,
            )
        # add and delete
        return Request(_QUESTION_ID, operation, dn=self.dn, attributes=self.attributes, **base)

    def _require_text(self) -> None:
        """Refuse words that are not UTF-8 text: the proxy only ever sees UTF-8 LDAPStrings
        (RFC 4511 section 4.1.2, the codec refuses the rest), so a command-line argument that
        was not UTF-8 (decoded with surrogateescape) describes no operation it could decide."""
        words: list[tuple[str, str | None]] = [
            ("target", self.target),
            ("operation", self.operation),
            ("DN", self.dn),
            ("filter", self.filter),
            ("new RDN", self.new_rdn),
            ("new superior", self.new_superior),
            ("bind name", self.bound_as),
            ("keyid", self.keyid),
            ("mechanism", self.mechanism),
        ]
        words += [("attribute", name) for name in self.attributes]
        words += [("attribute", name) for name in self.filter_attributes or ()]
        words += [("attribute", name) for _, name in self.changes]
        words += [("control", oid) for oid in self.controls]
        words += [("sort key", name) for name in self.sort_keys]
        for what, word in words:
            if word is not None and not is_utf8_text(word):
                raise QuestionError(f"the {what} {word!r} is not valid UTF-8 text")

    def facts(self, config: GatewayConfig) -> LdapFacts:
        """The facts the proxy would have decided; raises :class:`QuestionError`."""
        self._require_text()
        target = config.targets.get(self.target)
        identities = target.ldap.bind_identities if target and target.ldap else {}
        injected = self.bound_as is not None and bind_name(self.bound_as) in identities
        # A bind is decided before the connection is bound by it; one bound as an identity is
        # bound as its name (the proxy's reading, LdapProxy._injection).
        bound = None if self.operation == Operation.BIND else self.bound_as
        if injected and bound is not None:
            bound = bind_name(bound)
        return LdapFacts(
            target=self.target,
            request=self.request(identities),
            bound_as=bound,
            injected=injected and bound is not None,
            keyid=self.keyid,
            inner_tls=self.inner_tls,
        )

    def _sorted(self, base: dict[str, Any]) -> dict[str, Any]:
        """``base`` with a sort control (RFC 2891) when the question has sort keys."""
        controls: tuple[Control, ...] = base["controls"]
        if self.sort_keys and all(control.oid != SORT_CONTROL for control in controls):
            base = {**base, "controls": (*controls, Control(SORT_CONTROL, True))}
        return base

    def _filter(self) -> FilterNode:
        if self.filter is not None:
            try:
                return parse_filter(self.filter)
            except LdapError as exc:
                raise QuestionError(f"filter {self.filter!r}: {exc.detail}") from None
        tested = self.filter_attributes or ("objectClass",)
        # Only which attributes a filter tests reaches the policy (never the values).
        nodes = tuple(FilterNode("present", attribute=name) for name in tested)
        return nodes[0] if len(nodes) == 1 else FilterNode("and", children=nodes)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> LdapQuestion:
        """A question from JSON (a policy-test case's ``ldap``, a decision record's input);
        raises :class:`QuestionError` naming the first thing wrong."""
        if not isinstance(data, Mapping):
            raise QuestionError("an LDAP question must be an object")
        unknown = set(data) - _FIELDS
        if unknown:
            raise QuestionError(f"unknown keys: {', '.join(sorted(unknown))}")
        for key in ("target", "operation"):
            if not isinstance(data.get(key), str):
                raise QuestionError(f"{key!r} must be a string")
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key in _STRINGS or key in _OPTIONAL_STRINGS:
                if not (isinstance(value, str) or (value is None and key in _OPTIONAL_STRINGS)):
                    raise QuestionError(f"{key!r} must be a string")
                values[key] = value
            elif key in _STRING_LISTS:
                values[key] = _strings(key, value)
            elif key in _INTEGERS:
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise QuestionError(f"{key!r} must be a non-negative integer")
                values[key] = value
            elif key in ("inner_tls", "empty_password"):
                if not isinstance(value, bool):
                    raise QuestionError(f"{key!r} must be true or false")
                values[key] = value
            elif key == "changes":
                values[key] = _changes(value)
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """The question as JSON (what :meth:`from_mapping` reads back)."""
        out: dict[str, Any] = {"target": self.target, "operation": self.operation, "dn": self.dn}
        defaults = LdapQuestion(self.target, self.operation)
        for key in _FIELDS - {"target", "operation", "dn"}:
            value = getattr(self, key)
            if value != getattr(defaults, key):
                if key == "changes":
                    value = [{"type": kind, "attribute": name} for kind, name in value]
                elif isinstance(value, tuple):
                    value = list(value)
                out[key] = value
        return out


_STRINGS = frozenset({"target", "operation", "dn", "scope", "change_type", "deref_aliases"})
_OPTIONAL_STRINGS = frozenset(
    {"filter", "new_rdn", "new_superior", "bound_as", "keyid", "mechanism"}
)
_STRING_LISTS = frozenset({"attributes", "filter_attributes", "controls", "sort_keys"})
_INTEGERS = frozenset({"size_limit", "time_limit", "version"})
_FIELDS = (
    _STRINGS | _OPTIONAL_STRINGS | _STRING_LISTS | _INTEGERS | {"inner_tls", "empty_password"}
) | {"changes"}


def _sasl_credentials(mechanism: str, identity: str) -> bytes:
    """SASL credentials that name ``identity`` (RFC 4616 PLAIN with a stand-in password; RFC 4422
    EXTERNAL's authorization identity, a DN as ``dn:``); none for other mechanisms."""
    if mechanism.upper() == "PLAIN":
        return b"\0" + identity.encode("utf-8") + b"\0" + _STAND_IN_PASSWORD
    if mechanism.upper() == "EXTERNAL" and identity:
        return (f"dn:{identity}" if "=" in identity else f"u:{identity}").encode("utf-8")
    return b""


def _first_rdn(dn: str) -> str:
    """The leaf RDN of ``dn`` (a modify DN that only moves the entry keeps its RDN)."""
    try:
        parsed = Dn.parse(dn)
    except DnError as exc:
        raise QuestionError(f"DN {dn!r}: {exc.detail}") from None
    if not parsed.rdns:
        raise QuestionError("a modify DN needs the entry's DN")
    return str(Dn(parsed.rdns[:1]))


def _strings(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise QuestionError(f"{key!r} must be a list of strings")
    if len(value) > _MAX_ITEMS:
        raise QuestionError(f"{key!r} has more than {_MAX_ITEMS} items")
    return tuple(value)


def _changes(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list | tuple) or len(value) > _MAX_ITEMS:
        raise QuestionError("'changes' must be a list of {type, attribute}")
    pairs = []
    for item in value:
        if (
            not isinstance(item, Mapping)
            or set(item) != {"type", "attribute"}
            or not all(isinstance(v, str) for v in item.values())
        ):
            raise QuestionError("'changes' must be a list of {type, attribute}")
        pairs.append((item["type"], item["attribute"]))
    return tuple(pairs)


# The keys of an LDAP decision record's input (schemas/decision-log.schema.json, ldapInput): the
# operation as the proxy read it from the PDU.
_RECORD_KEYS = frozenset(
    {
        "operation",
        "message_id",
        "dn",
        "bind_name",
        "scope",
        "attributes",
        "changes",
        "filter_attributes",
        "new_rdn",
        "new_superior",
        "extended_oid",
        "controls",
        "bound_as",
        "injected",
        "keyid",
        "target",
        # Not in older records (LDAP contract amendments): read when present.
        "size_limit",
        "time_limit",
        "deref_aliases",
        "mechanism",
        "version",
        "empty_password",
        "inner_tls",
    }
)
_OPTIONAL_RECORD_KEYS = ("mechanism", "version", "empty_password", "inner_tls")


def question_from_record(input: Mapping[str, Any]) -> LdapQuestion:
    """The question an LDAP decision record's ``input`` stands for (what ``gateway replay``
    decides again); ``input`` must also name the record's ``target``. Raises
    :class:`QuestionError` for an input that is not of that form.

    The proxy's streams are always over the inner TLS (it refuses the stream otherwise), so a
    recorded operation was unless the record says otherwise. A search whose record does not keep
    its size and time limits cannot be decided faithfully and is refused. A bind is replayed as a
    version 3 simple bind with a password unless the record says otherwise (``mechanism``,
    ``version``, ``empty_password``).
    """
    if not isinstance(input, Mapping) or not set(input) <= _RECORD_KEYS:
        raise QuestionError("not an LDAP decision record's input")
    operation = input.get("operation")
    if not isinstance(operation, str):
        raise QuestionError("'operation' must be a string")
    changes = input.get("changes") or []
    if not isinstance(changes, list) or not all(
        isinstance(pair, list) and len(pair) == 2 for pair in changes
    ):
        raise QuestionError("'changes' must be a list of [type, attribute]")
    attributes = tuple(_strings("attributes", input.get("attributes") or []))
    if operation == Operation.SEARCH and not attributes:
        attributes = ("*",)  # RFC 4511 4.5.1.8: an empty selection is all user attributes
    if operation == Operation.BIND:
        dn = input.get("bind_name")
    elif operation == Operation.EXTENDED:
        dn = input.get("extended_oid")
    else:
        dn = input.get("dn")
    filter_attributes = tuple(_strings("filter_attributes", input.get("filter_attributes") or []))
    limits: dict[str, Any] = {}
    if operation == Operation.SEARCH:
        if "size_limit" not in input or "time_limit" not in input:
            # A rule may cap them; deciding without them could give either answer.
            raise QuestionError("the record does not keep the search's size and time limits")
        limits = {"size_limit": input["size_limit"], "time_limit": input["time_limit"]}
        deref = input.get("deref_aliases")
        if deref is not None:
            # Recorded as the PDU's number (section 4.5.1.3); older records did not keep it.
            if not isinstance(deref, int) or isinstance(deref, bool) or not 0 <= deref <= 3:
                raise QuestionError("'deref_aliases' must be 0, 1, 2 or 3")
            limits["deref_aliases"] = DEREF_ALIASES[deref]
    optional = {key: input[key] for key in _OPTIONAL_RECORD_KEYS if input.get(key) is not None}
    question: dict[str, Any] = {
        **limits,
        **optional,
        "target": input.get("target"),
        "operation": operation,
        "dn": dn or "",
        "attributes": list(attributes),
        "scope": input.get("scope") or "sub",
        "changes": [{"type": kind, "attribute": name} for kind, name in changes],
        "new_rdn": input.get("new_rdn"),
        "new_superior": input.get("new_superior"),
        "controls": list(input.get("controls") or []),
        "bound_as": input.get("bound_as"),
        "keyid": input.get("keyid"),
    }
    if filter_attributes:
        question["filter_attributes"] = list(filter_attributes)
    return LdapQuestion.from_mapping(question)


def question_of(facts: LdapFacts) -> LdapQuestion:
    """The question that stands for a live operation (what an LDAP decision record keeps as its
    input, for replay): the request's DN, attributes, scope, limits, changes and controls, the
    attribute types its filter tests (never the values), and the connection's identity."""
    request = facts.request
    filter_attributes = None
    if request.filter is not None or request.sort_keys:
        # Sort keys are judged as filter attributes (policy_input): the question keeps them so.
        tested = request.filter.attributes() if request.filter is not None else ()
        filter_attributes = tuple(sorted({*tested, *request.sort_keys})) or None
    attributes: tuple[str, ...] = ()
    if request.operation in (Operation.ADD, Operation.COMPARE):
        attributes = request.attributes
    elif request.operation is Operation.SEARCH:
        # An empty selection asks for all user attributes (RFC 4511 4.5.1.8), as "*" does; a
        # question's empty selection means none ("1.1").
        attributes = request.attributes or ("*",)
    if request.operation is Operation.EXTENDED:
        dn = request.request_name
    elif request.operation is Operation.BIND:
        dn = bind_subject(request) or ""
    else:
        dn = request.dn
    return LdapQuestion(
        target=facts.target,
        operation=request.operation.value,
        dn=dn,
        attributes=attributes,
        scope=request.scope or "sub",
        filter_attributes=filter_attributes,
        changes=tuple((c.operation, c.attribute) for c in request.changes),
        new_rdn=request.new_rdn or None,
        new_superior=request.new_superior,
        controls=tuple(control.oid for control in request.controls),
        size_limit=request.size_limit,
        time_limit=request.time_limit,
        bound_as=facts.bound_as,
        inner_tls=facts.inner_tls,
        keyid=facts.keyid,
        empty_password=request.operation is Operation.BIND and not request.credentials,
        mechanism=request.sasl_mechanism or None,
        version=request.version if request.operation is Operation.BIND else 3,
        deref_aliases=DEREF_ALIASES[request.deref_aliases],
    )
