"""LDAP PDU framing, decoding into typed requests and responses, and encoding of answers.

Every byte is read by pyasn1's BER codec (held to RFC 4511 section 5.1 by ``gateway.ldap.ber``)
against the RFC 4511 module in ``gateway.ldap.asn1``;
this module only turns pyasn1 values into small frozen dataclasses and enforces the gateway's
bounds. Framing, too, is pyasn1's: ``pdu_length`` asks the decoder for the outer header only
(``substrateFun`` stops it before the content), so a size bound applies before any content is
buffered or parsed.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pyasn1 import error as asn1_error
from pyasn1.codec.ber import encoder
from pyasn1.type import univ

from gateway.ldap import ber
from gateway.ldap.asn1 import LDAP_MESSAGE, MAX_INT, SORT_KEY_LIST
from gateway.ldap.errors import LdapProtocolError, LdapRefusedError

# RFC 4511 section 4.4.1: the Notice of Disconnection's responseName.
NOTICE_OF_DISCONNECTION = "1.3.6.1.4.1.1466.20036"
# RFC 2891: the server-side sort request control (its value names the sort keys; VLV, which
# needs it, seeks by the first of them).
SORT_CONTROL = "1.2.840.113556.1.4.473"


class ResultCode(enum.IntEnum):
    """The RFC 4511 section 4.1.9 result codes the gateway itself sends."""

    SUCCESS = 0
    PROTOCOL_ERROR = 2
    REFERRAL = 10
    UNAVAILABLE_CRITICAL_EXTENSION = 12
    CONFIDENTIALITY_REQUIRED = 13
    INVALID_DN_SYNTAX = 34
    INAPPROPRIATE_AUTHENTICATION = 48
    INVALID_CREDENTIALS = 49
    INSUFFICIENT_ACCESS_RIGHTS = 50
    BUSY = 51
    UNAVAILABLE = 52
    UNWILLING_TO_PERFORM = 53
    OTHER = 80


class Operation(enum.StrEnum):
    """Request operations (RFC 4511 section 4.2-4.12), named as policy rules name them."""

    BIND = "bind"
    UNBIND = "unbind"
    SEARCH = "search"
    MODIFY = "modify"
    ADD = "add"
    DELETE = "delete"
    MODIFY_DN = "modify_dn"
    COMPARE = "compare"
    ABANDON = "abandon"
    EXTENDED = "extended"


_REQUEST_CHOICES = {
    "bindRequest": Operation.BIND,
    "unbindRequest": Operation.UNBIND,
    "searchRequest": Operation.SEARCH,
    "modifyRequest": Operation.MODIFY,
    "addRequest": Operation.ADD,
    "delRequest": Operation.DELETE,
    "modDNRequest": Operation.MODIFY_DN,
    "compareRequest": Operation.COMPARE,
    "abandonRequest": Operation.ABANDON,
    "extendedReq": Operation.EXTENDED,
}

# The response CHOICE alternative that answers each operation (section 4.2-4.12). Unbind and
# abandon have none (4.3, 4.11).
_RESPONSE_FOR = {
    Operation.BIND: "bindResponse",
    Operation.SEARCH: "searchResDone",
    Operation.MODIFY: "modifyResponse",
    Operation.ADD: "addResponse",
    Operation.DELETE: "delResponse",
    Operation.MODIFY_DN: "modDNResponse",
    Operation.COMPARE: "compareResponse",
    Operation.EXTENDED: "extendedResp",
}

# Responses that end an operation; entries, references and intermediate responses do not.
_FINAL_RESPONSES = frozenset(_RESPONSE_FOR.values())
_RESPONSE_CHOICES = _FINAL_RESPONSES | {"searchResEntry", "searchResRef", "intermediateResponse"}


def answers(operation: Operation, kind: str) -> bool:
    """Whether a response of ``kind`` (a protocolOp alternative) may answer ``operation``.

    Each request has its own final response (sections 4.2-4.12); entries and continuation
    references answer only a search (4.5.2, 4.5.3); an IntermediateResponse may come for any
    request that is answered (4.13).
    """
    final = _RESPONSE_FOR.get(operation)
    if final is None:
        return False
    if kind in (final, "intermediateResponse"):
        return True
    return operation is Operation.SEARCH and kind in ("searchResEntry", "searchResRef")


SCOPES = ("base", "one", "sub")  # section 4.5.1.2: baseObject(0), singleLevel(1), wholeSubtree(2)
# Section 4.5.1.3, by value: neverDerefAliases(0), derefInSearching(1), derefFindingBaseObj(2),
# derefAlways(3).
DEREF_ALIASES = ("never", "searching", "finding", "always")
CHANGE_TYPES = ("add", "delete", "replace", "increment")  # 4.6, and RFC 4525 increment(3)


@dataclass(frozen=True)
class Limits:
    """Bounds applied to every PDU; over a bound is a protocol error or a refusal (see errors)."""

    max_request_bytes: int = 1 << 20
    max_response_bytes: int = 16 << 20
    max_outstanding: int = 64
    max_filter_nodes: int = 256
    max_attributes: int = 256
    max_values: int = 4096
    max_controls: int = 16


DEFAULT_LIMITS = Limits()

# A directory's answer carries a handful of controls (a paging cookie, a sort result); its PDU cap
# alone would let one answer hold hundreds of thousands, each an object the reader builds.
MAX_RESPONSE_CONTROLS = 1 << 16


@dataclass(frozen=True)
class Control:
    """A request or response control (section 4.1.11)."""

    oid: str
    critical: bool
    value: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class FilterNode:
    """One node of a search filter (section 4.5.1.7): ``kind`` is the CHOICE alternative.

    ``attribute`` is the attribute description (empty for and/or/not and for an extensible match
    without a type); ``value`` the assertion value(s) joined for display; ``rule`` the matching
    rule OID of an extensible match.
    """

    kind: str
    attribute: str = ""
    value: bytes = field(default=b"", repr=False)
    children: tuple[FilterNode, ...] = ()
    rule: str = ""
    dn_attributes: bool = False
    substrings: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)

    def walk(self) -> Iterator[FilterNode]:
        """This node and every node below it, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()

    def attributes(self) -> frozenset[str]:
        """Every attribute description the filter tests (what filter restrictions look at)."""
        return frozenset(node.attribute for node in self.walk() if node.attribute)

    def depth(self) -> int:
        """Nesting depth; a leaf is 1."""
        return 1 + max((child.depth() for child in self.children), default=0)


@dataclass(frozen=True)
class Change:
    """One modification of a ModifyRequest (section 4.6)."""

    operation: str
    attribute: str
    value_count: int


@dataclass(frozen=True)
class Request:
    """A decoded client request. Fields that do not apply to ``operation`` keep their defaults.

    ``dn`` is the entry the operation names (bind name, search base, target entry), exactly as
    sent; DN parsing and comparison belong to ``gateway.ldap.dn``. ``credentials`` holds a simple
    bind password or SASL credentials and never appears in ``repr``.
    """

    message_id: int
    operation: Operation
    dn: str = ""
    controls: tuple[Control, ...] = ()
    # bind (4.2)
    version: int = 0
    auth_method: str = ""  # "simple" or "sasl"
    sasl_mechanism: str = ""
    credentials: bytes = field(default=b"", repr=False)
    # search (4.5.1)
    scope: str = ""
    deref_aliases: int = 0
    size_limit: int = 0
    time_limit: int = 0
    types_only: bool = False
    filter: FilterNode | None = None
    sort_keys: tuple[str, ...] = ()  # search: the attribute types a sort control orders by
    attributes: tuple[str, ...] = ()  # search selectors, add's attribute types, compare's type
    # compare (4.10): the asserted value may be a guessed secret, so it is never shown
    assertion: bytes = field(default=b"", repr=False)
    # modify (4.6)
    changes: tuple[Change, ...] = ()
    # modify DN (4.9)
    new_rdn: str = ""
    delete_old_rdn: bool = False
    new_superior: str | None = None
    # abandon (4.11)
    abandon_id: int = 0
    # extended (4.12)
    request_name: str = ""
    request_value: bytes | None = field(default=None, repr=False)

    @property
    def expects_response(self) -> bool:
        """Unbind and abandon are never answered (section 4.3, 4.11)."""
        return self.operation in _RESPONSE_FOR


@dataclass(frozen=True)
class Response:
    """A decoded directory response (or server-initiated unsolicited notification)."""

    message_id: int
    kind: str  # the protocolOp CHOICE alternative, e.g. "searchResEntry"
    result_code: int | None = None
    diagnostic: str = ""
    dn: str = ""  # objectName of an entry, matchedDN of a result
    attributes: tuple[str, ...] = ()  # attribute descriptions of an entry
    response_name: str = ""
    controls: tuple[Control, ...] = ()
    referrals: tuple[str, ...] = ()
    """The URLs of a continuation reference (section 4.5.3) or of a result's referral (4.1.10)."""

    @property
    def final(self) -> bool:
        """True when this response ends its operation (section 4.5.2: SearchResultDone)."""
        return self.kind in _FINAL_RESPONSES


def pdu_length(buffer: bytes | bytearray, max_bytes: int) -> int | None:
    """Length of the first PDU in ``buffer``, or None if its header is not complete yet.

    Raises ``LdapProtocolError`` when the header is not an LDAPMessage SEQUENCE with a definite
    length (section 5.1 allows definite lengths only) or declares more than ``max_bytes``.
    """
    if not buffer:
        return None
    if buffer[0] != 0x30:  # universal, constructed, SEQUENCE: the only start of an LDAPMessage
        raise LdapProtocolError("ldap-malformed-pdu", "a PDU must start with a SEQUENCE tag")
    found: dict[str, int] = {}

    def header_only(asn1_object: Any, substrate: Any, length: int, options: Any) -> Iterator[Any]:
        found["length"] = length
        found["header"] = substrate.tell()
        yield asn1_object

    try:
        ber.decode(bytes(buffer[:16]), asn1Spec=univ.Sequence(), substrateFun=header_only)
    except asn1_error.SubstrateUnderrunError:
        if len(buffer) >= 16:
            raise LdapProtocolError("ldap-malformed-pdu", "unreadable length") from None
        return None
    except asn1_error.PyAsn1Error as exc:
        raise LdapProtocolError("ldap-malformed-pdu", f"unreadable header: {exc}") from None
    if "length" not in found or found["length"] < 0:
        raise LdapProtocolError("ldap-malformed-pdu", "indefinite length (section 5.1)")
    total = found["header"] + found["length"]
    if total > max_bytes:
        raise LdapProtocolError(
            "ldap-pdu-too-large", f"a PDU of {total} bytes is over the {max_bytes}-byte bound"
        )
    return total


def _decode_message(pdu: bytes) -> Any:
    try:
        message, rest = ber.decode(pdu, asn1Spec=LDAP_MESSAGE)
    except (asn1_error.PyAsn1Error, RecursionError, ValueError, TypeError) as exc:
        # pyasn1 reports grammar, constraint and nesting violations as PyAsn1Error; the others
        # are belt and braces so that no decoder failure escapes as an unexpected crash.
        raise LdapProtocolError(
            "ldap-malformed-pdu", f"not an RFC 4511 LDAPMessage: {exc}"
        ) from None
    if rest:
        raise LdapProtocolError("ldap-malformed-pdu", "bytes after the LDAPMessage")
    return message


def _open(pdu: bytes, max_bytes: int, *, lowest_id: int) -> tuple[Any, int, str]:
    """Decode a PDU and check its message id; returns (message, id, protocolOp alternative)."""
    if len(pdu) > max_bytes:
        raise LdapProtocolError("ldap-pdu-too-large", f"a PDU of {len(pdu)} bytes")
    message = _decode_message(pdu)
    message_id = int(message["messageID"])
    if not lowest_id <= message_id <= MAX_INT:
        raise LdapProtocolError("ldap-bad-message-id", f"message id {message_id} (section 4.1.1)")
    return message, message_id, message["protocolOp"].getName()


def _text(value: Any) -> str:
    # LDAPString is UTF-8 (section 4.1.2); anything else is a malformed PDU.
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise LdapProtocolError("ldap-malformed-pdu", "an LDAPString is not UTF-8") from None


def _ranged(value: Any, low: int, high: int, what: str) -> int:
    # RFC 4511 appendix B bounds each INTEGER and closed ENUMERATED; a value outside the range is
    # not an LDAP PDU, and a directory may read it otherwise (a negative sizeLimit as unsigned).
    number = int(value)
    if not low <= number <= high:
        raise LdapProtocolError("ldap-malformed-pdu", f"{what} {number} is outside {low}..{high}")
    return number


def _optional_bytes(value: Any) -> bytes | None:
    return bytes(value) if value.isValue else None


def check_response_controls(count: int) -> None:
    """Raise ``LdapProtocolError`` when a directory answer carries more than
    :data:`MAX_RESPONSE_CONTROLS` controls (shared with :mod:`gateway.ldap.fastread`)."""
    # Not a refusal to answer (that is for the SaaS's requests): a directory that sends this many
    # controls on one answer is confused or hostile, and the connection ends, whichever reader
    # read the answer.
    if count > MAX_RESPONSE_CONTROLS:
        raise LdapProtocolError(
            "ldap-too-many-controls",
            f"a directory answer with {count} controls, more than {MAX_RESPONSE_CONTROLS}",
        )


def _controls(message: Any, limits: Limits, message_id: int) -> tuple[Control, ...]:
    controls = message["controls"]
    if not controls.isValue:
        return ()
    if len(controls) > limits.max_controls:
        raise LdapRefusedError(
            "ldap-too-many-controls",
            f"{len(controls)} controls, more than {limits.max_controls}",
            message_id=message_id,
        )
    return _control_list(controls)


def _control_list(controls: Any) -> tuple[Control, ...]:
    return tuple(
        Control(
            oid=_text(item["controlType"]),
            critical=bool(item["criticality"]),
            value=_optional_bytes(item["controlValue"]),
        )
        for item in controls
    )


def _filter(node: Any, budget: list[int], message_id: int) -> FilterNode:
    budget[0] -= 1
    if budget[0] < 0:
        raise LdapRefusedError(
            "ldap-filter-too-complex", "too many filter terms", message_id=message_id
        )
    kind = node.getName()
    inner = node.getComponent()
    if kind in ("and", "or"):
        if len(inner) == 0:  # SET SIZE (1..MAX), section 4.5.1.7
            raise LdapProtocolError("ldap-malformed-pdu", f"an empty {kind} filter")
        return FilterNode(kind, children=tuple(_filter(item, budget, message_id) for item in inner))
    if kind == "not":
        return FilterNode(kind, children=(_filter(inner, budget, message_id),))
    if kind == "present":
        return FilterNode(kind, attribute=_text(inner))
    if kind == "substrings":
        parts = tuple((part.getName(), bytes(part.getComponent())) for part in inner["substrings"])
        if not parts:
            raise LdapProtocolError("ldap-malformed-pdu", "a substrings filter without parts")
        return FilterNode(
            kind,
            attribute=_text(inner["type"]),
            value=b"*".join(value for _, value in parts),
            substrings=parts,
        )
    if kind == "extensibleMatch":
        rule = _text(inner["matchingRule"]) if inner["matchingRule"].isValue else ""
        attribute = _text(inner["type"]) if inner["type"].isValue else ""
        if not rule and not attribute:  # 4.5.1.7.7: one of them must be present
            raise LdapProtocolError("ldap-malformed-pdu", "an extensible match without rule/type")
        if not attribute:
            # 4.5.1.7.7: without a type the directory compares matchValue against every attribute
            # of the entry that supports the rule, never-returned ones included, while the filter
            # names no attribute for a policy to judge: an oracle for any value. Refused.
            raise LdapRefusedError(
                "ldap-filter-without-type",
                "an extensible match without an attribute type tests every attribute",
                message_id=message_id,
            )
        return FilterNode(
            kind,
            attribute=attribute,
            value=bytes(inner["matchValue"]),
            rule=rule,
            dn_attributes=bool(inner["dnAttributes"]),
        )
    # equalityMatch, greaterOrEqual, lessOrEqual, approxMatch: an AttributeValueAssertion
    return FilterNode(
        kind, attribute=_text(inner["attributeDesc"]), value=bytes(inner["assertionValue"])
    )


def _sort_keys(controls: tuple[Control, ...], limits: Limits, message_id: int) -> tuple[str, ...]:
    """The attribute types the server-side sort controls of a search order by (RFC 2891 1.1).

    Sorting by an attribute is an oracle for its values just as a filter on it is (the order of
    the returned entries, and VLV's seek by value, follow the values), so the policy judges sort
    keys with the attributes a filter tests. A sort control whose value cannot be read is
    refused: the gateway would not know what the directory orders by.
    """
    keys: list[str] = []
    for control in controls:
        if control.oid != SORT_CONTROL:
            continue
        if control.value is None:
            raise LdapRefusedError(
                "ldap-sort-control-malformed",
                "a sort control without a value",
                message_id=message_id,
            )
        try:
            decoded, rest = ber.decode(control.value, asn1Spec=SORT_KEY_LIST)
        except (asn1_error.PyAsn1Error, RecursionError, ValueError, TypeError):
            decoded, rest = None, b"?"
        if decoded is None or rest:
            raise LdapRefusedError(
                "ldap-sort-control-malformed",
                "a sort control value that is not a SortKeyList",
                message_id=message_id,
            )
        _bounded(len(keys) + len(decoded), limits, "sort keys", message_id)
        keys.extend(_text(item["attributeType"]) for item in decoded)
    return tuple(keys)


def _bounded(count: int, limits: Limits, what: str, message_id: int) -> None:
    if count > limits.max_attributes:
        raise LdapRefusedError(
            "ldap-too-many-attributes",
            f"{count} {what}, more than {limits.max_attributes}",
            message_id=message_id,
        )


def _value_count(values: Any, limits: Limits, message_id: int) -> int:
    count = len(values)
    if count > limits.max_values:
        raise LdapRefusedError(
            "ldap-too-many-values",
            f"{count} values, more than {limits.max_values}",
            message_id=message_id,
        )
    return count


def decode_request(pdu: bytes, limits: Limits | None = None) -> Request:
    """Decode one client PDU (as framed by ``pdu_length``) into a ``Request``.

    Raises ``LdapProtocolError`` for anything that is not a well-formed request (including a
    response sent by a client and message id 0, reserved for the server: section 4.1.1.1) and
    ``LdapRefusedError`` for a well-formed request over a count bound.
    """
    limits = limits or DEFAULT_LIMITS
    # Section 4.1.1.1: message id 0 is reserved for the server's unsolicited notifications.
    message, message_id, choice = _open(pdu, limits.max_request_bytes, lowest_id=1)
    operation = _REQUEST_CHOICES.get(choice)
    if operation is None:
        raise LdapProtocolError("ldap-malformed-pdu", f"a client sent a {choice}")
    try:
        return _request(message, message_id, operation, limits)
    except LdapRefusedError as refused:
        refused.operation = operation
        raise


def _request(message: Any, message_id: int, operation: Operation, limits: Limits) -> Request:
    op = message["protocolOp"].getComponent()
    controls = _controls(message, limits, message_id)
    base: dict[str, Any] = {"message_id": message_id, "operation": operation, "controls": controls}
    if operation is Operation.BIND:
        auth = op["authentication"]
        method = auth.getName()
        if method == "simple":
            return Request(
                **base,
                dn=_text(op["name"]),
                version=_ranged(op["version"], 1, 127, "version"),
                auth_method="simple",
                credentials=bytes(auth.getComponent()),
            )
        sasl = auth.getComponent()
        return Request(
            **base,
            dn=_text(op["name"]),
            version=_ranged(op["version"], 1, 127, "version"),
            auth_method="sasl",
            sasl_mechanism=_text(sasl["mechanism"]),
            credentials=_optional_bytes(sasl["credentials"]) or b"",
        )
    if operation is Operation.SEARCH:
        scope = int(op["scope"])
        if not 0 <= scope < len(SCOPES):
            raise LdapRefusedError(
                "ldap-unknown-scope", f"search scope {scope}", message_id=message_id
            )
        attributes = op["attributes"]
        _bounded(len(attributes), limits, "requested attributes", message_id)
        return Request(
            **base,
            dn=_text(op["baseObject"]),
            scope=SCOPES[scope],
            deref_aliases=_ranged(op["derefAliases"], 0, 3, "derefAliases"),
            size_limit=_ranged(op["sizeLimit"], 0, MAX_INT, "sizeLimit"),
            time_limit=_ranged(op["timeLimit"], 0, MAX_INT, "timeLimit"),
            types_only=bool(op["typesOnly"]),
            filter=_filter(op["filter"], [limits.max_filter_nodes], message_id),
            sort_keys=_sort_keys(controls, limits, message_id),
            attributes=tuple(_text(item) for item in attributes),
        )
    if operation is Operation.MODIFY:
        changes = op["changes"]
        _bounded(len(changes), limits, "changes", message_id)
        decoded: list[Change] = []
        for change in changes:
            kind = int(change["operation"])
            if not 0 <= kind < len(CHANGE_TYPES):
                raise LdapRefusedError(
                    "ldap-unknown-change", f"change operation {kind}", message_id=message_id
                )
            modification = change["modification"]
            decoded.append(
                Change(
                    operation=CHANGE_TYPES[kind],
                    attribute=_text(modification["type"]),
                    value_count=_value_count(modification["vals"], limits, message_id),
                )
            )
        return Request(**base, dn=_text(op["object"]), changes=tuple(decoded))
    if operation is Operation.ADD:
        attributes = op["attributes"]
        _bounded(len(attributes), limits, "attributes", message_id)
        for item in attributes:
            _value_count(item["vals"], limits, message_id)
        return Request(
            **base,
            dn=_text(op["entry"]),
            attributes=tuple(_text(item["type"]) for item in attributes),
        )
    if operation is Operation.DELETE:
        return Request(**base, dn=_text(op))
    if operation is Operation.MODIFY_DN:
        superior = op["newSuperior"]
        return Request(
            **base,
            dn=_text(op["entry"]),
            new_rdn=_text(op["newrdn"]),
            delete_old_rdn=bool(op["deleteoldrdn"]),
            new_superior=_text(superior) if superior.isValue else None,
        )
    if operation is Operation.COMPARE:
        ava = op["ava"]
        return Request(
            **base,
            dn=_text(op["entry"]),
            attributes=(_text(ava["attributeDesc"]),),
            assertion=bytes(ava["assertionValue"]),
        )
    if operation is Operation.ABANDON:
        return Request(**base, abandon_id=_ranged(op, 0, MAX_INT, "abandon message id"))
    if operation is Operation.EXTENDED:
        return Request(
            **base,
            request_name=_text(op["requestName"]),
            request_value=_optional_bytes(op["requestValue"]),
        )
    return Request(**base)  # unbind: no fields


def decode_response(pdu: bytes, limits: Limits | None = None) -> Response:
    """Decode one directory PDU into a ``Response`` (entries with their attribute names)."""
    limits = limits or DEFAULT_LIMITS
    message, message_id, kind = _open(pdu, limits.max_response_bytes, lowest_id=0)
    if kind not in _RESPONSE_CHOICES:
        raise LdapProtocolError("ldap-malformed-pdu", f"a directory sent a {kind}")
    op = message["protocolOp"].getComponent()
    controls: tuple[Control, ...] = ()
    if message["controls"].isValue:
        check_response_controls(len(message["controls"]))
        controls = _control_list(message["controls"])
    if kind == "searchResEntry":
        return Response(
            message_id,
            kind,
            dn=_text(op["objectName"]),
            attributes=tuple(_text(item["type"]) for item in op["attributes"]),
            controls=controls,
        )
    if kind == "searchResRef":
        return Response(
            message_id, kind, controls=controls, referrals=tuple(_text(uri) for uri in op)
        )
    if kind == "intermediateResponse":
        return Response(message_id, kind, controls=controls)
    name = ""
    if kind == "extendedResp" and op["responseName"].isValue:
        name = _text(op["responseName"])
    referral = op["referral"]
    return Response(
        message_id,
        kind,
        result_code=int(op["resultCode"]),
        diagnostic=_text(op["diagnosticMessage"]),
        dn=_text(op["matchedDN"]),
        response_name=name,
        controls=controls,
        referrals=tuple(_text(uri) for uri in referral) if referral.isValue else (),
    )


def strip_entry_attributes(
    pdu: bytes, strip: Callable[[str], bool]
) -> tuple[bytes, tuple[str, ...]]:
    """Remove from a SearchResultEntry PDU every attribute for which ``strip(description)``.

    Returns the PDU to forward (the original bytes when nothing was removed) and the removed
    attribute descriptions. Section 4.5.2 lets an entry carry any subset of the requested
    attributes, so a client cannot tell a stripped attribute from one it may not read.
    """
    message = _decode_message(pdu)
    if message["protocolOp"].getName() != "searchResEntry":
        return pdu, ()
    entry = message["protocolOp"].getComponent()
    attributes = entry["attributes"]
    kept: list[tuple[str, Any]] = []
    removed: list[tuple[str, Any]] = []
    for item in attributes:
        description = _text(item["type"])
        (removed if strip(description) else kept).append((description, item))
    if not removed:
        return pdu, ()
    replacement = attributes.clone()
    for index, (_, item) in enumerate(kept):
        replacement.setComponentByPosition(index, item)
    entry.setComponentByName("attributes", replacement)
    return encoder.encode(message), tuple(description for description, _ in removed)


def rewrite_reference(pdu: bytes, urls: tuple[str, ...]) -> bytes:
    """A SearchResultReference PDU (section 4.5.3) carrying only ``urls`` (at least one: the
    SEQUENCE is SIZE (1..MAX)); message id and controls as they came."""
    if not urls:
        raise ValueError("a continuation reference carries at least one URI (section 4.5.3)")
    message = _decode_message(pdu)
    if message["protocolOp"].getName() != "searchResRef":
        raise ValueError("not a SearchResultReference")
    references = message["protocolOp"].getComponent()
    replacement = references.clone()
    for index, url in enumerate(urls):
        replacement.setComponentByPosition(index, url.encode("utf-8"))
    message["protocolOp"].setComponentByName("searchResRef", replacement)
    return bytes(encoder.encode(message))


def rewrite_result(
    pdu: bytes,
    *,
    result_code: int,
    matched_dn: str,
    diagnostic: str,
    referrals: tuple[str, ...],
) -> bytes:
    """A response PDU carrying an LDAPResult (section 4.1.9) with these four fields replaced;
    everything else (message id, the operation's own fields, controls) as it came. No
    ``referrals`` removes the optional referral field (4.1.10: SIZE (1..MAX))."""
    message = _decode_message(pdu)
    choice = message["protocolOp"].getName()
    if choice not in _FINAL_RESPONSES:
        raise ValueError(f"a {choice} carries no LDAPResult")
    result = message["protocolOp"].getComponent()
    result["resultCode"] = result_code
    result["matchedDN"] = matched_dn.encode("utf-8")
    result["diagnosticMessage"] = diagnostic.encode("utf-8")
    if referrals:
        replacement = result["referral"].clone()
        for index, url in enumerate(referrals):
            replacement.setComponentByPosition(index, url.encode("utf-8"))
        result["referral"] = replacement
    else:
        result["referral"] = univ.noValue
    return bytes(encoder.encode(message))


def _message(message_id: int, choice: str, component: Any) -> bytes:
    message = LDAP_MESSAGE.clone()
    message.setComponentByName("messageID", message_id)
    protocol_op = message.getComponentByName("protocolOp")
    protocol_op.setComponentByName(choice, component)
    return bytes(encoder.encode(message))


def _result_component(choice: str, result_code: int, diagnostic: str, matched_dn: str) -> Any:
    spec = LDAP_MESSAGE.getComponentByName("protocolOp").componentType[choice].asn1Object
    result = spec.clone()
    result.setComponentByName("resultCode", result_code)
    result.setComponentByName("matchedDN", matched_dn.encode("utf-8"))
    result.setComponentByName("diagnosticMessage", diagnostic.encode("utf-8"))
    return result


def encode_result(
    message_id: int,
    operation: Operation,
    result_code: int,
    diagnostic: str,
    *,
    matched_dn: str = "",
) -> bytes:
    """The response PDU that answers ``operation`` (section 4.2-4.12) with one LDAPResult."""
    choice = _RESPONSE_FOR.get(operation)
    if choice is None:
        raise ValueError(f"{operation} has no response (RFC 4511 section 4.3, 4.11)")
    result = _result_component(choice, result_code, diagnostic, matched_dn)
    return _message(message_id, choice, result)


def encode_notice_of_disconnection(result_code: int, diagnostic: str) -> bytes:
    """An unsolicited Notice of Disconnection (section 4.4.1): message id 0, then close."""
    result = _result_component("extendedResp", result_code, diagnostic, "")
    result.setComponentByName("responseName", NOTICE_OF_DISCONNECTION.encode("ascii"))
    return _message(0, "extendedResp", result)


def encode_simple_bind(
    message_id: int, name: str, password: bytes, controls: tuple[Control, ...] = ()
) -> bytes:
    """A simple BindRequest (section 4.2), used when the gateway binds with a stored credential."""
    spec = LDAP_MESSAGE.getComponentByName("protocolOp").componentType["bindRequest"].asn1Object
    request = spec.clone()
    request.setComponentByName("version", 3)
    request.setComponentByName("name", name.encode("utf-8"))
    auth = request.getComponentByName("authentication")
    auth.setComponentByName("simple", password)
    message = LDAP_MESSAGE.clone()
    message.setComponentByName("messageID", message_id)
    message.getComponentByName("protocolOp").setComponentByName("bindRequest", request)
    if controls:
        encoded = message.getComponentByName("controls")
        for index, control in enumerate(controls):
            item = encoded.componentType.clone()
            item.setComponentByName("controlType", control.oid.encode("ascii"))
            item.setComponentByName("criticality", control.critical)
            if control.value is not None:
                item.setComponentByName("controlValue", control.value)
            encoded.setComponentByPosition(index, item)
    return bytes(encoder.encode(message))


def encode_extended_request(message_id: int, name: str, value: bytes | None = None) -> bytes:
    """An ExtendedRequest (section 4.12), used when the gateway starts TLS to the directory."""
    spec = LDAP_MESSAGE.getComponentByName("protocolOp").componentType["extendedReq"].asn1Object
    request = spec.clone()
    request.setComponentByName("requestName", name.encode("ascii"))
    if value is not None:
        request.setComponentByName("requestValue", value)
    return _message(message_id, "extendedReq", request)
