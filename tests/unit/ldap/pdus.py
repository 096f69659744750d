"""Client PDUs built by ldap3, an LDAP client independent of the gateway's codec.

Building the test input with another implementation keeps the tests honest: a PDU the gateway
decodes here is one a real client sends.
"""

from __future__ import annotations

from typing import Any

from ldap3 import ANONYMOUS, SIMPLE
from ldap3.operation.abandon import abandon_operation
from ldap3.operation.add import add_operation
from ldap3.operation.bind import bind_operation
from ldap3.operation.compare import compare_operation
from ldap3.operation.delete import delete_operation
from ldap3.operation.extended import extended_operation
from ldap3.operation.modify import modify_operation
from ldap3.operation.modifyDn import modify_dn_operation
from ldap3.operation.search import search_operation
from ldap3.operation.unbind import unbind_operation
from ldap3.protocol.convert import build_controls_list
from ldap3.protocol.rfc4511 import (
    LDAPMessage,
    MessageID,
    PartialAttribute,
    PartialAttributeList,
    ProtocolOp,
    SearchResultEntry,
    Vals,
)
from pyasn1.codec.ber import encoder

SCOPES = {"base": 0, "one": 1, "sub": 2}


def message(message_id: int, choice: str, operation: Any, controls: Any = None) -> bytes:
    """Wrap ``operation`` in an LDAPMessage and BER-encode it the way ldap3 sends it."""
    ldap_message = LDAPMessage()
    ldap_message["messageID"] = MessageID(message_id)
    protocol_op = ProtocolOp()
    protocol_op.setComponentByName(choice, operation)
    ldap_message["protocolOp"] = protocol_op
    if controls:
        built = build_controls_list(controls)
        ldap_message["controls"] = built
    return bytes(encoder.encode(ldap_message))


def search(
    message_id: int = 1,
    base: str = "dc=example,dc=com",
    search_filter: str = "(objectClass=*)",
    *,
    scope: str = "sub",
    attributes: list[str] | None = None,
    size_limit: int = 0,
    time_limit: int = 0,
    controls: Any = None,
    deref: str = "NEVER",
) -> bytes:
    """A SearchRequest as ldap3 sends it (``deref``: an ldap3 DEREF_* constant)."""
    request = search_operation(
        base,
        search_filter,
        SCOPES[scope],
        deref,
        attributes or [],
        size_limit,
        time_limit,
        False,
        True,
        True,
    )
    return message(message_id, "searchRequest", request, controls)


def simple_bind(message_id: int, name: str, password: str) -> bytes:
    return message(message_id, "bindRequest", bind_operation(3, SIMPLE, name, password))


def anonymous_bind(message_id: int) -> bytes:
    return message(message_id, "bindRequest", bind_operation(3, ANONYMOUS, "", None))


def sasl_bind(message_id: int, mechanism: str, credentials: bytes | None = None) -> bytes:
    request = bind_operation(3, "SASL", "", None, mechanism, credentials)
    return message(message_id, "bindRequest", request)


def modify(message_id: int, dn: str, changes: dict[str, list[tuple[str, list[str]]]]) -> bytes:
    return message(message_id, "modifyRequest", modify_operation(dn, changes, True))


def add(message_id: int, dn: str, attributes: dict[str, list[str]]) -> bytes:
    return message(message_id, "addRequest", add_operation(dn, attributes, True))


def delete(message_id: int, dn: str, controls: Any = None) -> bytes:
    return message(message_id, "delRequest", delete_operation(dn), controls)


def modify_dn(message_id: int, dn: str, new_rdn: str, new_superior: str | None = None) -> bytes:
    request = modify_dn_operation(dn, new_rdn, True, new_superior)
    return message(message_id, "modDNRequest", request)


def compare(message_id: int, dn: str, attribute: str, value: str) -> bytes:
    return message(message_id, "compareRequest", compare_operation(dn, attribute, value, True))


def extended(message_id: int, oid: str, value: bytes | None = None) -> bytes:
    return message(message_id, "extendedReq", extended_operation(oid, value))


def abandon(message_id: int, target: int) -> bytes:
    return message(message_id, "abandonRequest", abandon_operation(target))


def unbind(message_id: int) -> bytes:
    return message(message_id, "unbindRequest", unbind_operation())


def search_entry(message_id: int, dn: str, attributes: dict[str, list[bytes]]) -> bytes:
    """A SearchResultEntry as a directory would send it (built with ldap3's ASN.1 types)."""
    entry = SearchResultEntry()
    entry["object"] = dn
    attribute_list = PartialAttributeList()
    for index, (name, values) in enumerate(attributes.items()):
        attribute = PartialAttribute()
        attribute["type"] = name
        vals = Vals()
        for position, value in enumerate(values):
            vals.setComponentByPosition(position, value)
        attribute["vals"] = vals
        attribute_list.setComponentByPosition(index, attribute)
    entry["attributes"] = attribute_list
    return message(message_id, "searchResEntry", entry)
