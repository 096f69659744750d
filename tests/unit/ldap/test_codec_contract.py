"""What the codec hands to policy, what it refuses, and what it writes, field by field.

Every PDU here is either built by ldap3 (an encoder independent of the gateway) or written byte
by byte from RFC 4511 appendix B, and every PDU the gateway writes is read back by ldap3: a
decoded field the policy would not see, or an answer a real client would read differently, fails
a test. Each refusal is pinned with its reason (what the SaaS's client is answered with) and its
detail (what the log says). These tests are also the mutation tool's selection for
``gateway/ldap/codec.py`` (benchmarks/mutation-report.md), so each one is fast.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ldap3 import SIMPLE
from ldap3.operation.bind import bind_operation
from ldap3.protocol.rfc4511 import LDAPMessage
from pyasn1.codec.ber import decoder

from gateway.ldap import codec
from gateway.ldap.asn1 import MAX_INT
from gateway.ldap.codec import Change, Control, FilterNode, Operation, Request, Response
from gateway.ldap.errors import LdapError, LdapProtocolError, LdapRefusedError

from . import pdus


def _ldap3(pdu: bytes) -> Any:
    message, rest = decoder.decode(pdu, asn1Spec=LDAPMessage())
    assert rest == b""
    return message


# --- BER by hand (X.690 8.1), for what no client library will write -----------------------------


def _length(size: int) -> bytes:
    if size < 0x80:
        return bytes([size])
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _length(len(content)) + content


def integer(value: int, tag: int = 0x02) -> bytes:
    return tlv(tag, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True))


def octets(text: str | bytes, tag: int = 0x04) -> bytes:
    return tlv(tag, text.encode("utf-8") if isinstance(text, str) else text)


def message(message_id: int, op: bytes, controls: bytes | None = None) -> bytes:
    tail = b"" if controls is None else tlv(0xA0, controls)
    return tlv(0x30, integer(message_id) + op + tail)


def control(oid: str, critical: bool | None = None, value: bytes | None = None) -> bytes:
    body = octets(oid)
    if critical is not None:
        body += tlv(0x01, b"\xff" if critical else b"\x00")
    if value is not None:
        body += octets(value)
    return tlv(0x30, body)


def search_op(
    search_filter: bytes,
    *,
    base: str = "dc=x",
    scope: int = 2,
    deref: int = 0,
    size: int = 0,
    time: int = 0,
    attributes: tuple[str, ...] = (),
) -> bytes:
    body = octets(base) + integer(scope, 0x0A) + integer(deref, 0x0A)
    body += integer(size) + integer(time) + tlv(0x01, b"\x00") + search_filter
    body += tlv(0x30, b"".join(octets(name) for name in attributes))
    return tlv(0x63, body)


EQ_CN = tlv(0xA3, octets("cn") + octets("a"))  # (cn=a)


def _refusal(call: Any, *args: Any) -> tuple[type[LdapError], str, str, int | None, str | None]:
    with pytest.raises(LdapError) as raised:
        call(*args)
    error = raised.value
    if isinstance(error, LdapRefusedError):
        return type(error), error.reason, error.detail, error.message_id, error.operation
    return type(error), error.reason, error.detail, None, None


# --- framing (section 5.1: definite lengths; the size bound before any content) -----------------


def test_framing_reads_the_declared_length_in_every_form() -> None:
    assert codec.pdu_length(b"", 100) is None
    assert codec.pdu_length(b"\x30", 100) is None
    assert codec.pdu_length(b"\x30\x84\x00\x00", 100) is None  # long form, octets missing
    assert codec.pdu_length(b"\x30\x00", 100) == 2  # an empty SEQUENCE is framed, then refused
    assert codec.pdu_length(b"\x30\x05", 100) == 7
    assert codec.pdu_length(bytearray(b"\x30\x81\x80"), 1000) == 131
    assert codec.pdu_length(b"\x30\x84\x00\x00\x00\x05", 100) == 11
    assert codec.pdu_length(b"\x30\x88" + b"\x00" * 7 + b"\x05", 100) == 15


def test_the_size_bound_is_inclusive() -> None:
    assert codec.pdu_length(b"\x30\x62", 100) == 100
    assert _refusal(codec.pdu_length, b"\x30\x63", 100) == (
        LdapProtocolError,
        "ldap-pdu-too-large",
        "a PDU of 101 bytes is over the 100-byte bound",
        None,
        None,
    )
    # The bound holds over the header too: four length octets and a 94-byte body are 100 bytes.
    assert codec.pdu_length(b"\x30\x84\x00\x00\x00\x5e", 100) == 100
    assert _refusal(codec.pdu_length, b"\x30\x84\x00\x00\x00\x5f", 100)[1] == "ldap-pdu-too-large"


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"\x31\x03\x02\x01\x01", "a PDU must start with a SEQUENCE tag"),  # SET, one bit off
        (b"\x04\x01a", "a PDU must start with a SEQUENCE tag"),
        (b"\x10\x00", "a PDU must start with a SEQUENCE tag"),  # SEQUENCE, primitive form
        (b"\x30\x80\x02\x01\x01", "unreadable header: "),  # indefinite (section 5.1)
        (b"\x30\x89" + b"\x00" * 9, "unreadable header: "),  # more length octets than pyasn1 reads
    ],
)
def test_framing_refuses_what_is_not_an_ldap_message(data: bytes, detail: str) -> None:
    kind, reason, said, _, _ = _refusal(codec.pdu_length, data, 1000)
    assert (kind, reason) == (LdapProtocolError, "ldap-malformed-pdu")
    if detail.endswith(": "):  # pyasn1's own words follow
        assert said.startswith(detail)
        assert len(said) > len(detail)
    else:
        assert said == detail


# --- refusals: reason (answered to the client), detail (logged), message id, operation -----------


def _search(search_filter: bytes, message_id: int = 9, **fields: Any) -> bytes:
    return message(message_id, search_op(search_filter, **fields))


_DELETE = message(5, octets("cn=x", 0x4A))


def _modify_with_change(operation: int) -> bytes:
    change = tlv(0x30, integer(operation, 0x0A) + tlv(0x30, octets("sn") + tlv(0x31, b"")))
    return message(6, tlv(0x66, octets("cn=g") + tlv(0x30, change)))


@pytest.mark.parametrize(
    ("pdu", "expected"),
    [
        (
            _DELETE + b"\x00",
            (LdapProtocolError, "ldap-malformed-pdu", "bytes after the LDAPMessage", None, None),
        ),
        (
            message(0, octets("cn=x", 0x4A)),
            (LdapProtocolError, "ldap-bad-message-id", "message id 0 (section 4.1.1)", None, None),
        ),
        (
            message(MAX_INT + 1, octets("cn=x", 0x4A)),
            (
                LdapProtocolError,
                "ldap-bad-message-id",
                f"message id {MAX_INT + 1} (section 4.1.1)",
                None,
                None,
            ),
        ),
        (
            codec.encode_result(3, Operation.DELETE, 0, ""),
            (LdapProtocolError, "ldap-malformed-pdu", "a client sent a delResponse", None, None),
        ),
        (
            message(4, octets("cn=placeholde\xff".encode("latin-1"), 0x4A)),
            (LdapProtocolError, "ldap-malformed-pdu", "an LDAPString is not UTF-8", None, None),
        ),
        (
            _search(tlv(0xA0, b"")),
            (LdapProtocolError, "ldap-malformed-pdu", "an empty and filter", None, None),
        ),
        (
            _search(tlv(0xA1, b"")),
            (LdapProtocolError, "ldap-malformed-pdu", "an empty or filter", None, None),
        ),
        (
            _search(tlv(0xA4, octets("cn") + tlv(0x30, b""))),
            (
                LdapProtocolError,
                "ldap-malformed-pdu",
                "a substrings filter without parts",
                None,
                None,
            ),
        ),
        (
            _search(tlv(0xA9, octets("x", 0x83))),
            (
                LdapProtocolError,
                "ldap-malformed-pdu",
                "an extensible match without rule/type",
                None,
                None,
            ),
        ),
        (
            _search(EQ_CN, scope=3),
            (LdapRefusedError, "ldap-unknown-scope", "search scope 3", 9, Operation.SEARCH),
        ),
        (
            _search(EQ_CN, scope=-1),
            (LdapRefusedError, "ldap-unknown-scope", "search scope -1", 9, Operation.SEARCH),
        ),
        (
            _modify_with_change(4),
            (LdapRefusedError, "ldap-unknown-change", "change operation 4", 6, Operation.MODIFY),
        ),
        (
            _modify_with_change(-1),
            (LdapRefusedError, "ldap-unknown-change", "change operation -1", 6, Operation.MODIFY),
        ),
    ],
    ids=[
        "trailing-bytes",
        "message-id-0",
        "message-id-over",
        "response-from-client",
        "not-utf8",
        "empty-and",
        "empty-or",
        "substrings-without-parts",
        "extensible-without-rule-or-type",
        "scope-3",
        "scope-negative",
        "change-4",
        "change-negative",
    ],
)
def test_each_refusal_is_told_apart(pdu: bytes, expected: tuple[Any, ...]) -> None:
    assert _refusal(codec.decode_request, pdu) == expected


def test_a_pdu_over_the_request_bound_is_refused_before_decoding() -> None:
    pdu = pdus.delete(1, "cn=x")
    limits = codec.Limits(max_request_bytes=len(pdu))
    assert codec.decode_request(pdu, limits).dn == "cn=x"
    assert _refusal(codec.decode_request, pdu, codec.Limits(max_request_bytes=len(pdu) - 1)) == (
        LdapProtocolError,
        "ldap-pdu-too-large",
        f"a PDU of {len(pdu)} bytes",
        None,
        None,
    )
    # Not a size the default bound refuses: the bound given is the one applied.
    assert codec.decode_request(pdu, None).dn == "cn=x"


def test_the_highest_message_id_is_a_request_and_the_lowest_is_one() -> None:
    assert codec.decode_request(message(MAX_INT, octets("cn=x", 0x4A))).message_id == MAX_INT
    assert codec.decode_request(message(1, octets("cn=x", 0x4A))).message_id == 1


def test_count_bounds_are_inclusive_and_told_apart() -> None:
    limits = codec.Limits(max_attributes=2, max_values=2, max_controls=2, max_filter_nodes=3)
    two = [("1.2.3", False, None), ("1.2.4", True, b"v")]
    assert len(codec.decode_request(pdus.search(1, controls=two), limits).controls) == 2
    assert _refusal(
        codec.decode_request, pdus.search(8, controls=[*two, ("1.2.5", False, None)]), limits
    ) == (
        LdapRefusedError,
        "ldap-too-many-controls",
        "3 controls, more than 2",
        8,
        Operation.SEARCH,
    )
    assert codec.decode_request(pdus.search(1, attributes=["a", "b"]), limits).attributes == (
        "a",
        "b",
    )
    assert _refusal(codec.decode_request, pdus.search(7, attributes=["a", "b", "c"]), limits) == (
        LdapRefusedError,
        "ldap-too-many-attributes",
        "3 requested attributes, more than 2",
        7,
        Operation.SEARCH,
    )
    two_changes = {k: [("MODIFY_REPLACE", ["1", "2"])] for k in "ab"}
    assert len(codec.decode_request(pdus.modify(1, "cn=x", two_changes), limits).changes) == 2
    assert _refusal(
        codec.decode_request,
        pdus.modify(6, "cn=x", {k: [("MODIFY_REPLACE", ["v"])] for k in "abc"}),
        limits,
    ) == (
        LdapRefusedError,
        "ldap-too-many-attributes",
        "3 changes, more than 2",
        6,
        Operation.MODIFY,
    )
    assert _refusal(
        codec.decode_request,
        pdus.modify(6, "cn=x", {"a": [("MODIFY_ADD", ["1", "2", "3"])]}),
        limits,
    ) == (LdapRefusedError, "ldap-too-many-values", "3 values, more than 2", 6, Operation.MODIFY)
    assert codec.decode_request(pdus.add(1, "cn=x", {"a": ["1", "2"], "b": ["3"]}), limits)
    assert _refusal(
        codec.decode_request, pdus.add(4, "cn=x", {"a": ["1"], "b": ["2"], "c": ["3"]}), limits
    ) == (LdapRefusedError, "ldap-too-many-attributes", "3 attributes, more than 2", 4, "add")
    assert _refusal(codec.decode_request, pdus.add(4, "cn=x", {"a": ["1", "2", "3"]}), limits) == (
        LdapRefusedError,
        "ldap-too-many-values",
        "3 values, more than 2",
        4,
        Operation.ADD,
    )
    # Three filter terms are within a budget of three; a fourth is over it.
    three = pdus.search(1, search_filter="(&(a=1)(b=2))")
    assert codec.decode_request(three, limits).filter is not None
    assert _refusal(
        codec.decode_request, pdus.search(5, search_filter="(&(a=1)(!(b=2)))"), limits
    ) == (
        LdapRefusedError,
        "ldap-filter-too-complex",
        "too many filter terms",
        5,
        Operation.SEARCH,
    )
    assert _refusal(
        codec.decode_request, pdus.search(5, search_filter="(|(a=1)(b=2)(c=3))"), limits
    )[1] == ("ldap-filter-too-complex")


def test_default_bounds_apply_when_none_are_given() -> None:
    many = [(f"1.2.{index}", False, None) for index in range(17)]
    assert _refusal(codec.decode_request, pdus.search(2, controls=many))[1] == (
        "ldap-too-many-controls"
    )
    assert len(codec.decode_request(pdus.search(2, controls=many[:16])).controls) == 16


# --- what policy sees of each operation ----------------------------------------------------------


def test_a_simple_bind_decodes_to_every_field() -> None:
    controls = [("1.2.840.113556.1.4.1413", True, None)]
    pdu = pdus.message(
        3, "bindRequest", bind_operation(3, SIMPLE, "CN=Svc,DC=corp", "pw"), controls
    )
    assert codec.decode_request(pdu) == Request(
        message_id=3,
        operation=Operation.BIND,
        dn="CN=Svc,DC=corp",
        controls=(Control("1.2.840.113556.1.4.1413", True, None),),
        version=3,
        auth_method="simple",
        credentials=b"pw",
    )


def test_a_sasl_bind_decodes_to_every_field() -> None:
    assert codec.decode_request(pdus.sasl_bind(4, "GSSAPI", b"token")) == Request(
        message_id=4,
        operation=Operation.BIND,
        version=3,
        auth_method="sasl",
        sasl_mechanism="GSSAPI",
        credentials=b"token",
    )
    # Section 4.2: credentials are OPTIONAL; absent, there are none to hand on.
    absent = codec.decode_request(pdus.sasl_bind(4, "EXTERNAL"))
    assert (absent.auth_method, absent.sasl_mechanism, absent.credentials) == (
        "sasl",
        "EXTERNAL",
        b"",
    )
    # A bind by hand: version 2 and a name are read as sent (policy vetoes version 2).
    sasl = tlv(0xA3, octets("PLAIN") + octets(b"\x00u\x00p"))
    by_hand = message(5, tlv(0x60, integer(2) + octets("cn=u") + sasl))
    assert codec.decode_request(by_hand) == Request(
        message_id=5,
        operation=Operation.BIND,
        dn="cn=u",
        version=2,
        auth_method="sasl",
        sasl_mechanism="PLAIN",
        credentials=b"\x00u\x00p",
    )


def test_a_search_decodes_to_every_field() -> None:
    pdu = message(
        11,
        search_op(
            EQ_CN,
            base="ou=People,dc=x",
            scope=0,
            deref=3,
            size=10,
            time=20,
            attributes=("cn", "member;range=0-1499"),
        ),
        control("1.2.840.113556.1.4.319", True, b"\x30\x00") + control("1.2.3.4"),
    )
    assert codec.decode_request(pdu) == Request(
        message_id=11,
        operation=Operation.SEARCH,
        dn="ou=People,dc=x",
        controls=(
            Control("1.2.840.113556.1.4.319", True, b"\x30\x00"),
            Control("1.2.3.4", False, None),
        ),
        scope="base",
        deref_aliases=3,
        size_limit=10,
        time_limit=20,
        types_only=False,
        filter=FilterNode("equalityMatch", attribute="cn", value=b"a"),
        attributes=("cn", "member;range=0-1499"),
    )
    scopes = [codec.decode_request(_search(EQ_CN, scope=n)).scope for n in (0, 1, 2)]
    assert scopes == ["base", "one", "sub"]


def test_every_filter_kind_decodes_with_its_attribute_value_and_rule() -> None:
    text = (
        "(&(cn=a*b*c)(sn~=x)(sn<=y)(sn>=z)(objectClass=*)(!(uid=u))"
        "(|(cn:dn:2.5.13.2:=foo)(uid:=bar)(mail=*@x)(givenName=j*)))"
    )
    request = codec.decode_request(pdus.search(1, search_filter=text))
    assert request.filter == FilterNode(
        "and",
        children=(
            FilterNode(
                "substrings",
                attribute="cn",
                value=b"a*b*c",
                substrings=(("initial", b"a"), ("any", b"b"), ("final", b"c")),
            ),
            FilterNode("approxMatch", attribute="sn", value=b"x"),
            FilterNode("lessOrEqual", attribute="sn", value=b"y"),
            FilterNode("greaterOrEqual", attribute="sn", value=b"z"),
            FilterNode("present", attribute="objectClass"),
            FilterNode("not", children=(FilterNode("equalityMatch", attribute="uid", value=b"u"),)),
            FilterNode(
                "or",
                children=(
                    FilterNode(
                        "extensibleMatch",
                        attribute="cn",
                        value=b"foo",
                        rule="2.5.13.2",
                        dn_attributes=True,
                    ),
                    FilterNode("extensibleMatch", attribute="uid", value=b"bar"),
                    FilterNode(
                        "substrings",
                        attribute="mail",
                        value=b"@x",
                        substrings=(("final", b"@x"),),
                    ),
                    FilterNode(
                        "substrings",
                        attribute="givenName",
                        value=b"j",
                        substrings=(("initial", b"j"),),
                    ),
                ),
            ),
        ),
    )
    assert request.filter.attributes() == {"cn", "sn", "objectClass", "uid", "mail", "givenName"}
    assert request.filter.depth() == 3
    assert FilterNode("present", attribute="cn").depth() == 1


def test_modify_add_delete_decode_to_every_field() -> None:
    modify = pdus.modify(
        3,
        "CN=G,OU=Groups",
        {
            "member": [("MODIFY_ADD", ["cn=x", "cn=y"]), ("MODIFY_DELETE", [])],
            "unicodePwd": [("MODIFY_REPLACE", ["p"])],
            "uidNumber": [("MODIFY_INCREMENT", ["1"])],
        },
    )
    assert codec.decode_request(modify) == Request(
        message_id=3,
        operation=Operation.MODIFY,
        dn="CN=G,OU=Groups",
        changes=(
            Change("add", "member", 2),
            Change("delete", "member", 0),
            Change("replace", "unicodePwd", 1),
            Change("increment", "uidNumber", 1),
        ),
    )
    add = pdus.add(4, "cn=n,ou=x", {"objectClass": ["person", "top"], "sn": ["s"]})
    assert codec.decode_request(add) == Request(
        message_id=4, operation=Operation.ADD, dn="cn=n,ou=x", attributes=("objectClass", "sn")
    )
    delete = pdus.delete(5, "cn=d,ou=x", controls=[("1.2.840.113556.1.4.805", True, None)])
    assert codec.decode_request(delete) == Request(
        message_id=5,
        operation=Operation.DELETE,
        dn="cn=d,ou=x",
        controls=(Control("1.2.840.113556.1.4.805", True, None),),
    )


def test_modify_dn_compare_extended_abandon_unbind_decode_to_every_field() -> None:
    moved = codec.decode_request(pdus.modify_dn(6, "cn=a,ou=x", "cn=b", "ou=y"))
    assert moved == Request(
        message_id=6,
        operation=Operation.MODIFY_DN,
        dn="cn=a,ou=x",
        new_rdn="cn=b",
        delete_old_rdn=True,
        new_superior="ou=y",
    )
    kept = message(7, tlv(0x6C, octets("cn=a") + octets("cn=c") + tlv(0x01, b"\x00")))
    assert codec.decode_request(kept) == Request(
        message_id=7, operation=Operation.MODIFY_DN, dn="cn=a", new_rdn="cn=c", new_superior=None
    )
    compare = codec.decode_request(pdus.compare(8, "cn=a", "userPassword", "guess"))
    assert compare == Request(
        message_id=8,
        operation=Operation.COMPARE,
        dn="cn=a",
        attributes=("userPassword",),
        assertion=b"guess",
    )
    whoami = codec.decode_request(pdus.extended(9, "1.3.6.1.4.1.4203.1.11.3"))
    assert whoami == Request(
        message_id=9, operation=Operation.EXTENDED, request_name="1.3.6.1.4.1.4203.1.11.3"
    )
    valued = codec.decode_request(pdus.extended(9, "1.3.6.1.4.1.4203.1.11.1", b"\x30\x00"))
    assert valued.request_value == b"\x30\x00"
    abandon = codec.decode_request(pdus.abandon(10, 3))
    assert abandon == Request(message_id=10, operation=Operation.ABANDON, abandon_id=3)
    assert codec.decode_request(pdus.unbind(11)) == Request(
        message_id=11, operation=Operation.UNBIND
    )


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, MAX_INT),
    st.text(max_size=30),
    st.lists(st.text(min_size=1, max_size=12), max_size=4),
    st.integers(0, MAX_INT),
    st.integers(0, MAX_INT),
    st.booleans(),
)
def test_any_search_decodes_to_what_was_sent(
    message_id: int,
    base: str,
    attributes: list[str],
    size: int,
    time: int,
    types_only: bool,
) -> None:
    body = octets(base) + integer(1, 0x0A) + integer(0, 0x0A) + integer(size) + integer(time)
    body += tlv(0x01, b"\x01" if types_only else b"\x00") + tlv(0x87, b"cn")
    body += tlv(0x30, b"".join(octets(name) for name in attributes))
    request = codec.decode_request(message(message_id, tlv(0x63, body)))
    assert (request.message_id, request.dn, request.attributes) == (
        message_id,
        base,
        tuple(attributes),
    )
    assert (request.size_limit, request.time_limit, request.types_only) == (size, time, types_only)
    assert request.filter == FilterNode("present", attribute="cn")


# --- the directory's answers ---------------------------------------------------------------------


def test_each_kind_of_answer_decodes_to_every_field() -> None:
    entry = pdus.search_entry(3, "cn=a,dc=x", {"cn": [b"a"], "mail": [b"m", b"n"]})
    assert codec.decode_response(entry) == Response(
        3, "searchResEntry", dn="cn=a,dc=x", attributes=("cn", "mail")
    )
    reference = message(3, tlv(0x73, octets("ldap://other/dc=x")))
    assert codec.decode_response(reference) == Response(
        3, "searchResRef", referrals=("ldap://other/dc=x",)
    )
    intermediate = message(3, tlv(0x79, octets("1.2.3", 0x80)))
    assert codec.decode_response(intermediate) == Response(3, "intermediateResponse")
    done = codec.encode_result(3, Operation.SEARCH, 32, "no such object", matched_dn="dc=x")
    assert codec.decode_response(done) == Response(
        3, "searchResDone", result_code=32, diagnostic="no such object", dn="dc=x"
    )
    assert codec.decode_response(done).final
    notice = codec.encode_notice_of_disconnection(52, "going away")
    assert codec.decode_response(notice) == Response(
        0,
        "extendedResp",
        result_code=52,
        diagnostic="going away",
        response_name=codec.NOTICE_OF_DISCONNECTION,
    )
    unnamed = codec.encode_result(4, Operation.EXTENDED, 0, "")
    assert codec.decode_response(unnamed) == Response(4, "extendedResp", result_code=0)


def test_answers_carry_their_controls() -> None:
    paged = control("1.2.840.113556.1.4.319", False, b"\x30\x05\x02\x01\x00\x04\x00")
    result = tlv(0x65, integer(0, 0x0A) + octets("") + octets(""))
    assert codec.decode_response(message(2, result, paged + control("1.2.3", True))) == Response(
        2,
        "searchResDone",
        result_code=0,
        controls=(
            Control("1.2.840.113556.1.4.319", False, b"\x30\x05\x02\x01\x00\x04\x00"),
            Control("1.2.3", True, None),
        ),
    )
    # More controls than a request may carry: the directory's answer is not held to that bound.
    many = b"".join(control(f"1.2.{index}") for index in range(40))
    entry = tlv(0x64, octets("cn=a") + tlv(0x30, b""))
    assert len(codec.decode_response(message(2, entry, many)).controls) == 40
    reference = tlv(0x73, octets("ldap://x"))
    assert codec.decode_response(message(2, reference, paged)).controls[0].critical is False


def test_answers_are_refused_by_their_own_rules() -> None:
    assert _refusal(codec.decode_response, pdus.delete(3, "cn=x")) == (
        LdapProtocolError,
        "ldap-malformed-pdu",
        "a directory sent a delRequest",
        None,
        None,
    )
    done = codec.encode_result(3, Operation.SEARCH, 0, "")
    assert codec.decode_response(done, codec.Limits(max_response_bytes=len(done))).final
    assert _refusal(
        codec.decode_response, done, codec.Limits(max_response_bytes=len(done) - 1)
    ) == (LdapProtocolError, "ldap-pdu-too-large", f"a PDU of {len(done)} bytes", None, None)
    assert _refusal(codec.decode_response, message(-1, tlv(0x73, octets("x"))))[1] == (
        "ldap-bad-message-id"
    )


# --- what the gateway writes, as a real client reads it ------------------------------------------


@pytest.mark.parametrize(
    "operation", [op for op in Operation if op.value not in ("unbind", "abandon")]
)
def test_each_result_reads_back_with_every_field(operation: Operation) -> None:
    pdu = codec.encode_result(42, operation, 50, "denied: ldap-rule-none", matched_dn="dc=é")
    decoded = _ldap3(pdu)
    result = decoded["protocolOp"].getComponent()
    assert int(decoded["messageID"]) == 42
    assert int(result["resultCode"]) == 50
    assert bytes(result["matchedDN"]) == "dc=é".encode()
    assert bytes(result["diagnosticMessage"]) == b"denied: ldap-rule-none"
    assert not decoded["controls"].isValue


def test_a_notice_of_disconnection_reads_back_with_every_field() -> None:
    decoded = _ldap3(codec.encode_notice_of_disconnection(2, "ldap-malformed-pdu"))
    response = decoded["protocolOp"].getComponent()
    assert (int(decoded["messageID"]), decoded["protocolOp"].getName()) == (0, "extendedResp")
    assert int(response["resultCode"]) == 2
    assert bytes(response["matchedDN"]) == b""
    assert bytes(response["diagnosticMessage"]) == b"ldap-malformed-pdu"
    assert bytes(response["responseName"]) == b"1.3.6.1.4.1.1466.20036"
    assert not response["responseValue"].isValue


def test_the_gateway_bind_reads_back_with_every_field() -> None:
    decoded = _ldap3(codec.encode_simple_bind(5, "CN=Sérvice,DC=corp", b"stored"))
    bind = decoded["protocolOp"].getComponent()
    assert (int(decoded["messageID"]), decoded["protocolOp"].getName()) == (5, "bindRequest")
    assert int(bind["version"]) == 3
    assert bytes(bind["name"]) == "CN=Sérvice,DC=corp".encode()
    assert bind["authentication"].getName() == "simple"
    assert bytes(bind["authentication"].getComponent()) == b"stored"
    assert not decoded["controls"].isValue


def test_the_gateway_bind_passes_the_clients_controls_on() -> None:
    controls = (
        Control("1.2.840.113556.1.4.1413", True, None),
        Control("1.2.3.4", False, b"\x04\x00"),
        Control("1.2.3.5", True, b""),
    )
    pdu = codec.encode_simple_bind(6, "cn=svc", b"pw", controls)
    decoded = _ldap3(pdu)
    read = [
        (
            str(item["controlType"]),
            bool(item["criticality"]),
            bytes(item["controlValue"]) if item["controlValue"].isValue else None,
        )
        for item in decoded["controls"]
    ]
    assert read == [
        ("1.2.840.113556.1.4.1413", True, None),
        ("1.2.3.4", False, b"\x04\x00"),
        ("1.2.3.5", True, b""),
    ]
    # And the gateway reads its own bind as it reads the client's.
    again = codec.decode_request(pdu)
    assert (again.dn, again.credentials, again.controls) == ("cn=svc", b"pw", controls)


def test_start_tls_request_is_what_a_directory_reads() -> None:
    # RFC 4511 section 4.14.1: requestName 1.3.6.1.4.1.1466.20037 and no requestValue.
    decoded = _ldap3(codec.encode_extended_request(1, "1.3.6.1.4.1.1466.20037"))
    assert int(decoded["messageID"]) == 1
    assert decoded["protocolOp"].getName() == "extendedReq"
    request = decoded["protocolOp"].getComponent()
    assert str(request["requestName"]) == "1.3.6.1.4.1.1466.20037"
    assert not request["requestValue"].isValue
    assert not decoded["controls"].isValue


def test_extended_request_carries_its_value() -> None:
    decoded = _ldap3(codec.encode_extended_request(77, "1.3.6.1.4.1.4203.1.11.1", b"\x30\x00"))
    assert int(decoded["messageID"]) == 77
    request = decoded["protocolOp"].getComponent()
    assert str(request["requestName"]) == "1.3.6.1.4.1.4203.1.11.1"
    assert bytes(request["requestValue"]) == b"\x30\x00"
    # An empty value is a value (section 4.12: present, zero octets), not an absent one.
    empty = _ldap3(codec.encode_extended_request(2, "1.2.3", b"")).getComponentByName("protocolOp")
    assert empty.getComponent()["requestValue"].isValue
    assert bytes(empty.getComponent()["requestValue"]) == b""


# --- stripping attributes from entries -----------------------------------------------------------


def _entry_attributes(pdu: bytes) -> list[tuple[str, list[bytes]]]:
    entry = _ldap3(pdu)["protocolOp"].getComponent()
    return [
        (str(item["type"]), [bytes(value) for value in item["vals"]])
        for item in entry["attributes"]
    ]


def test_stripping_keeps_every_other_attribute_value_and_the_order() -> None:
    pdu = pdus.search_entry(
        3,
        "CN=PC1,OU=Computers",
        {
            "cn": [b"PC1"],
            "ms-Mcs-AdmPwd": [b"hunter2"],
            "description": [b"d1", b"d2"],
            "msLAPS-Password": [b"p"],
            "os": [b"w"],
        },
    )
    stripped, removed = codec.strip_entry_attributes(
        pdu, lambda name: name.lower() in ("ms-mcs-admpwd", "mslaps-password")
    )
    assert removed == ("ms-Mcs-AdmPwd", "msLAPS-Password")
    assert _entry_attributes(stripped) == [
        ("cn", [b"PC1"]),
        ("description", [b"d1", b"d2"]),
        ("os", [b"w"]),
    ]
    assert codec.decode_response(stripped) == Response(
        3, "searchResEntry", dn="CN=PC1,OU=Computers", attributes=("cn", "description", "os")
    )
    everything, all_removed = codec.strip_entry_attributes(pdu, lambda name: True)
    assert _entry_attributes(everything) == []
    assert all_removed == ("cn", "ms-Mcs-AdmPwd", "description", "msLAPS-Password", "os")
    assert isinstance(everything, bytes)


def test_stripping_leaves_other_answers_as_they_are() -> None:
    done = codec.encode_result(3, Operation.SEARCH, 0, "")
    assert codec.strip_entry_attributes(done, lambda name: True) == (done, ())
    pdu = pdus.search_entry(3, "cn=a", {"cn": [b"a"]})
    seen: list[str] = []

    def keep(name: str) -> bool:
        seen.append(name)
        return False

    assert codec.strip_entry_attributes(pdu, keep) == (pdu, ())
    assert seen == ["cn"]


def test_stripping_refuses_what_it_cannot_read() -> None:
    pdu = pdus.search_entry(3, "cn=a", {"cn": [b"a"]})
    assert _refusal(codec.strip_entry_attributes, pdu + b"\x00", lambda name: True)[:3] == (
        LdapProtocolError,
        "ldap-malformed-pdu",
        "bytes after the LDAPMessage",
    )
    broken = pdu.replace(b"\x04\x02cn", b"\x04\x02c\xff")
    assert _refusal(codec.strip_entry_attributes, broken, lambda name: True)[:3] == (
        LdapProtocolError,
        "ldap-malformed-pdu",
        "an LDAPString is not UTF-8",
    )
    kind, reason, detail, _, _ = _refusal(codec.strip_entry_attributes, b"\x30\x00", bool)
    assert (kind, reason) == (LdapProtocolError, "ldap-malformed-pdu")
    assert detail.startswith("not an RFC 4511 LDAPMessage: ")


# --- defects the mutation run led to -------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "(:2.5.13.5:=hunter2)",  # caseExactMatch against every attribute of the entry
        "(:dn:2.5.13.2:=x)",
        "(&(objectClass=computer)(!(:caseIgnoreMatch:=hunter2)))",
    ],
)
def test_an_extensible_match_without_a_type_is_refused(text: str) -> None:
    # RFC 4511 4.5.1.7.7: without a type the directory compares matchValue against every attribute
    # of the entry that supports the rule (ms-Mcs-AdmPwd too), while the filter names no attribute
    # for the policy's never_returned veto or filter_attributes to catch: an oracle for any value.
    assert _refusal(codec.decode_request, pdus.search(12, search_filter=text)) == (
        LdapRefusedError,
        "ldap-filter-without-type",
        "an extensible match without an attribute type tests every attribute",
        12,
        Operation.SEARCH,
    )


def test_an_extensible_match_with_a_type_and_no_rule_is_read() -> None:
    node = codec.decode_request(_search(tlv(0xA9, octets("cn", 0x82) + octets("a", 0x83)))).filter
    assert node == FilterNode("extensibleMatch", attribute="cn", value=b"a")


def _bind(version: int, sasl: bool = False) -> bytes:
    authentication = tlv(0xA3, octets("EXTERNAL")) if sasl else octets("", 0x80)
    return message(2, tlv(0x60, integer(version) + octets("") + authentication))


@pytest.mark.parametrize(
    ("pdu", "detail"),
    [
        (_search(EQ_CN, size=-1), f"sizeLimit -1 is outside 0..{MAX_INT}"),
        (_search(EQ_CN, size=MAX_INT + 1), f"sizeLimit {MAX_INT + 1} is outside 0..{MAX_INT}"),
        (_search(EQ_CN, time=-1), f"timeLimit -1 is outside 0..{MAX_INT}"),
        (_search(EQ_CN, time=MAX_INT + 1), f"timeLimit {MAX_INT + 1} is outside 0..{MAX_INT}"),
        (_search(EQ_CN, deref=4), "derefAliases 4 is outside 0..3"),
        (_search(EQ_CN, deref=-1), "derefAliases -1 is outside 0..3"),
        (message(3, integer(-1, 0x50)), f"abandon message id -1 is outside 0..{MAX_INT}"),
        (
            message(3, integer(MAX_INT + 1, 0x50)),
            f"abandon message id {MAX_INT + 1} is outside 0..{MAX_INT}",
        ),
        (_bind(0), "version 0 is outside 1..127"),
        (_bind(128), "version 128 is outside 1..127"),
        (_bind(0, sasl=True), "version 0 is outside 1..127"),
        (_bind(128, sasl=True), "version 128 is outside 1..127"),
    ],
    ids=[
        "size-negative",
        "size-over",
        "time-negative",
        "time-over",
        "deref-4",
        "deref-negative",
        "abandon-negative",
        "abandon-over",
        "version-0",
        "version-128",
        "sasl-version-0",
        "sasl-version-128",
    ],
)
def test_integers_outside_their_rfc_4511_range_are_malformed(pdu: bytes, detail: str) -> None:
    # RFC 4511 appendix B bounds each INTEGER: a search with sizeLimit -1 passed a rule's
    # max_size_limit (it is neither 0 nor over the cap) while a directory reading the octets as
    # unsigned would return everything. What the grammar excludes is not an LDAP PDU.
    assert _refusal(codec.decode_request, pdu) == (
        LdapProtocolError,
        "ldap-malformed-pdu",
        detail,
        None,
        None,
    )


def test_integers_at_the_ends_of_their_range_are_read() -> None:
    widest = codec.decode_request(_search(EQ_CN, size=MAX_INT, time=MAX_INT, deref=3))
    assert (widest.size_limit, widest.time_limit, widest.deref_aliases) == (MAX_INT, MAX_INT, 3)
    assert codec.decode_request(message(3, integer(MAX_INT, 0x50))).abandon_id == MAX_INT
    assert codec.decode_request(message(3, integer(0, 0x50))).abandon_id == 0
    assert codec.decode_request(_bind(1)).version == 1
    assert codec.decode_request(_bind(127)).version == 127
    assert codec.decode_request(_bind(1, sasl=True)).version == 1
    assert codec.decode_request(_bind(127, sasl=True)).version == 127


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 8), st.integers(1, MAX_INT), st.text(max_size=40), st.binary(max_size=3))
def test_every_definite_length_form_frames_and_reads_the_same(
    octet_count: int, message_id: int, dn: str, tail: bytes
) -> None:
    # X.690 8.1.3.5: the long form may use more length octets than needed (OpenLDAP writes four);
    # LDAP allows any definite form (section 5.1). Framing and decoding must agree on each.
    body = integer(message_id) + octets(dn, 0x4A)
    long_form = bytes([0x30, 0x80 | octet_count]) + len(body).to_bytes(octet_count, "big") + body
    assert codec.pdu_length(long_form + tail, len(long_form)) == len(long_form)
    assert codec.pdu_length(long_form[: 2 + octet_count - 1], 1 << 20) is None
    assert codec.decode_request(long_form) == codec.decode_request(tlv(0x30, body))
    assert codec.decode_request(long_form) == Request(message_id, Operation.DELETE, dn=dn)


# --- server-side sort keys (RFC 2891) ------------------------------------------------------------

SORT = "1.2.840.113556.1.4.473"


def _sort_value(*keys: bytes) -> bytes:
    return tlv(0x30, b"".join(tlv(0x30, key) for key in keys))


def test_a_sort_controls_keys_are_read() -> None:
    # SortKeyList: attributeType, orderingRule [0] OPTIONAL, reverseOrder [1] DEFAULT FALSE.
    value = _sort_value(
        octets("ms-Mcs-AdmPwd"), octets("cn") + octets("2.5.13.3", 0x80) + tlv(0x81, b"\xff")
    )
    pdu = message(9, search_op(EQ_CN), control(SORT, True, value))
    request = codec.decode_request(pdu)
    assert request.sort_keys == ("ms-Mcs-AdmPwd", "cn")
    assert codec.decode_request(_search(EQ_CN)).sort_keys == ()


@pytest.mark.parametrize(
    "value",
    [
        None,  # RFC 2891 1.1: the value is required
        b"",
        b"\x04\x02cn",  # not a SEQUENCE OF
        _sort_value(octets("cn")) + b"\x00",  # bytes after it
        _sort_value(tlv(0x02, b"\x01")),  # attributeType is not an OCTET STRING
        tlv(0x30, tlv(0x30, octets("cn"))[:-1]),  # truncated
    ],
)
def test_a_sort_control_that_cannot_be_read_is_refused(value: bytes | None) -> None:
    pdu = message(9, search_op(EQ_CN), control(SORT, False, value))
    with pytest.raises(LdapRefusedError) as refused:
        codec.decode_request(pdu)
    assert refused.value.reason == "ldap-sort-control-malformed"
    assert refused.value.operation == "search"
