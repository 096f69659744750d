"""The LDAP PDU codec: decoding real client PDUs, answers a real client decodes, bounds."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ldap3.protocol.rfc4511 import LDAPMessage
from pyasn1.codec.ber import decoder, encoder

from gateway.ldap import codec
from gateway.ldap.asn1 import FILTER_DEPTH, LDAP_MESSAGE
from gateway.ldap.errors import LdapError, LdapProtocolError, LdapRefusedError
from tests.unit.ldap import pdus


def _ldap3_decode(pdu: bytes) -> Any:
    message, rest = decoder.decode(pdu, asn1Spec=LDAPMessage())
    assert rest == b""
    return message


def test_search_fields() -> None:
    request = codec.decode_request(
        pdus.search(
            7,
            "OU=People,DC=example,DC=com",
            "(&(objectClass=user)(|(cn=a*b*c)(!(uid=x)))(sn>=m)(cn:dn:2.5.13.2:=foo))",
            scope="one",
            attributes=["cn", "member;range=0-1499"],
            size_limit=10,
            time_limit=5,
            controls=[("1.2.840.113556.1.4.319", True, b"\x30\x05\x02\x01\x0a\x04\x00")],
        )
    )
    assert request.message_id == 7
    assert request.operation is codec.Operation.SEARCH
    assert request.dn == "OU=People,DC=example,DC=com"
    assert (request.scope, request.size_limit, request.time_limit) == ("one", 10, 5)
    assert request.attributes == ("cn", "member;range=0-1499")
    assert request.filter is not None
    assert request.filter.attributes() == {"objectClass", "cn", "uid", "sn"}
    assert request.filter.depth() == 4
    kinds = [node.kind for node in request.filter.walk()]
    assert kinds == [
        "and",
        "equalityMatch",
        "or",
        "substrings",
        "not",
        "equalityMatch",
        "greaterOrEqual",
        "extensibleMatch",
    ]
    assert request.controls == (
        codec.Control("1.2.840.113556.1.4.319", True, b"\x30\x05\x02\x01\x0a\x04\x00"),
    )


def test_bind_keeps_the_password_out_of_repr() -> None:
    request = codec.decode_request(pdus.simple_bind(1, "CN=svc,DC=corp", "S3cret-pw"))
    assert (request.auth_method, request.dn, request.version) == ("simple", "CN=svc,DC=corp", 3)
    assert request.credentials == b"S3cret-pw"
    assert "S3cret" not in repr(request)
    sasl = codec.decode_request(pdus.sasl_bind(2, "GSSAPI", b"token"))
    assert (sasl.auth_method, sasl.sasl_mechanism, sasl.credentials) == ("sasl", "GSSAPI", b"token")


def test_modify_add_delete_moddn_compare_extended_abandon_unbind() -> None:
    modify = codec.decode_request(
        pdus.modify(
            3,
            "CN=G,OU=Groups",
            {
                "member": [("MODIFY_ADD", ["cn=x", "cn=y"])],
                "unicodePwd": [("MODIFY_REPLACE", ["p"])],
            },
        )
    )
    assert modify.changes == (
        codec.Change("add", "member", 2),
        codec.Change("replace", "unicodePwd", 1),
    )
    add = codec.decode_request(pdus.add(4, "cn=n,ou=x", {"objectClass": ["person"], "sn": ["s"]}))
    assert (add.dn, add.attributes) == ("cn=n,ou=x", ("objectClass", "sn"))
    assert codec.decode_request(pdus.delete(5, "cn=d")).dn == "cn=d"
    moddn = codec.decode_request(pdus.modify_dn(6, "cn=a,ou=x", "cn=b", "ou=y"))
    assert (moddn.dn, moddn.new_rdn, moddn.new_superior) == ("cn=a,ou=x", "cn=b", "ou=y")
    assert codec.decode_request(pdus.modify_dn(6, "cn=a,ou=x", "cn=b")).new_superior is None
    compare = codec.decode_request(pdus.compare(7, "cn=a", "userPassword", "guess"))
    assert (compare.dn, compare.attributes, compare.assertion) == (
        "cn=a",
        ("userPassword",),
        b"guess",
    )
    assert "guess" not in repr(compare)
    extended = codec.decode_request(pdus.extended(8, "1.3.6.1.4.1.4203.1.11.3"))
    assert extended.request_name == "1.3.6.1.4.1.4203.1.11.3"
    abandon = codec.decode_request(pdus.abandon(9, 3))
    assert (abandon.abandon_id, abandon.expects_response) == (3, False)
    assert codec.decode_request(pdus.unbind(10)).operation is codec.Operation.UNBIND


@pytest.mark.parametrize(
    ("operation", "choice"),
    [
        (codec.Operation.BIND, "bindResponse"),
        (codec.Operation.SEARCH, "searchResDone"),
        (codec.Operation.MODIFY, "modifyResponse"),
        (codec.Operation.ADD, "addResponse"),
        (codec.Operation.DELETE, "delResponse"),
        (codec.Operation.MODIFY_DN, "modDNResponse"),
        (codec.Operation.COMPARE, "compareResponse"),
        (codec.Operation.EXTENDED, "extendedResp"),
    ],
)
def test_each_operation_is_answered_with_its_own_response(
    operation: codec.Operation, choice: str
) -> None:
    pdu = codec.encode_result(42, operation, 50, "denied: ldap-rule-none")
    decoded = _ldap3_decode(pdu)
    assert int(decoded["messageID"]) == 42
    assert decoded["protocolOp"].getName() == choice
    result = decoded["protocolOp"].getComponent()
    assert int(result["resultCode"]) == 50
    assert str(result["diagnosticMessage"]) == "denied: ldap-rule-none"


@pytest.mark.parametrize("operation", [codec.Operation.UNBIND, codec.Operation.ABANDON])
def test_unbind_and_abandon_have_no_response(operation: codec.Operation) -> None:
    with pytest.raises(ValueError, match="no response"):
        codec.encode_result(1, operation, 50, "x")


def test_notice_of_disconnection() -> None:
    decoded = _ldap3_decode(codec.encode_notice_of_disconnection(2, "ldap-malformed-pdu"))
    assert int(decoded["messageID"]) == 0
    response = decoded["protocolOp"].getComponent()
    assert decoded["protocolOp"].getName() == "extendedResp"
    assert int(response["resultCode"]) == 2
    assert str(response["responseName"]) == codec.NOTICE_OF_DISCONNECTION


def test_gateway_bind_is_a_real_bind_request() -> None:
    pdu = codec.encode_simple_bind(5, "CN=svc,DC=corp", b"stored")
    decoded = _ldap3_decode(pdu)
    bind = decoded["protocolOp"].getComponent()
    assert str(bind["name"]) == "CN=svc,DC=corp"
    assert bytes(bind["authentication"].getComponent()) == b"stored"


def test_strip_entry_attributes() -> None:
    pdu = pdus.search_entry(
        3,
        "CN=PC1,OU=Computers",
        {"cn": [b"PC1"], "ms-Mcs-AdmPwd": [b"hunter2"], "description": [b"d"]},
    )
    response = codec.decode_response(pdu)
    assert response.attributes == ("cn", "ms-Mcs-AdmPwd", "description")
    stripped, removed = codec.strip_entry_attributes(
        pdu, lambda name: name.lower() == "ms-mcs-admpwd"
    )
    assert removed == ("ms-Mcs-AdmPwd",)
    assert b"hunter2" not in stripped
    decoded = _ldap3_decode(stripped)
    entry = decoded["protocolOp"].getComponent()
    assert [str(item["type"]) for item in entry["attributes"]] == ["cn", "description"]
    unchanged, none = codec.strip_entry_attributes(pdu, lambda name: False)
    assert (unchanged, none) == (pdu, ())


def test_pdu_length_frames_and_bounds() -> None:
    pdu = pdus.search(1)
    assert codec.pdu_length(b"", 1000) is None
    assert codec.pdu_length(pdu[:1], 1000) is None
    assert codec.pdu_length(pdu, 1000) == len(pdu)
    assert codec.pdu_length(pdu + b"\x30", 1000) == len(pdu)
    # The bound applies to the declared length, before any content has arrived.
    with pytest.raises(LdapProtocolError, match="ldap-pdu-too-large"):
        codec.pdu_length(b"\x30\x84\x00\x20\x00\x00", 1 << 20)
    with pytest.raises(LdapProtocolError, match=r"(?i)indefinite"):
        codec.pdu_length(b"\x30\x80\x02\x01\x01", 1000)
    with pytest.raises(LdapProtocolError, match="SEQUENCE"):
        codec.pdu_length(b"\x04\x01a", 1000)
    with pytest.raises(LdapProtocolError):
        codec.pdu_length(b"\x30\x89" + b"\x01" * 20, 1000)  # 9 length octets


@pytest.mark.parametrize("message_id", [0, -1, 2**31])
def test_reserved_and_out_of_range_message_ids(message_id: int) -> None:
    decoded, _ = decoder.decode(pdus.search(1), asn1Spec=LDAP_MESSAGE)
    decoded["messageID"] = message_id
    with pytest.raises(LdapProtocolError, match="ldap-bad-message-id"):
        codec.decode_request(bytes(encoder.encode(decoded)))


def test_a_response_from_the_client_is_malformed() -> None:
    with pytest.raises(LdapProtocolError, match="a client sent a searchResDone"):
        codec.decode_request(codec.encode_result(1, codec.Operation.SEARCH, 0, ""))


def test_filter_nesting_is_bounded_by_the_grammar() -> None:
    deepest = "(objectClass=*)"
    for _ in range(FILTER_DEPTH):
        deepest = f"(!{deepest})"
    request = codec.decode_request(pdus.search(1, search_filter=deepest))
    assert request.filter is not None
    assert request.filter.depth() == FILTER_DEPTH + 1
    with pytest.raises(LdapProtocolError, match="ldap-malformed-pdu"):
        codec.decode_request(pdus.search(1, search_filter=f"(!{deepest})"))


def test_filter_terms_are_counted() -> None:
    many = "(|" + "".join(f"(cn=u{index})" for index in range(300)) + ")"
    with pytest.raises(LdapRefusedError) as refused:
        codec.decode_request(pdus.search(9, search_filter=many))
    assert refused.value.reason == "ldap-filter-too-complex"
    assert (refused.value.message_id, refused.value.operation) == (9, codec.Operation.SEARCH)


def test_attribute_change_and_control_counts_are_bounded() -> None:
    limits = codec.Limits(max_attributes=2, max_controls=1, max_values=2)
    with pytest.raises(LdapRefusedError, match="ldap-too-many-attributes"):
        codec.decode_request(pdus.search(1, attributes=["a", "b", "c"]), limits)
    with pytest.raises(LdapRefusedError, match="ldap-too-many-attributes"):
        codec.decode_request(
            pdus.modify(1, "cn=x", {k: [("MODIFY_REPLACE", ["v"])] for k in "abc"}), limits
        )
    with pytest.raises(LdapRefusedError, match="ldap-too-many-values"):
        codec.decode_request(
            pdus.modify(1, "cn=x", {"a": [("MODIFY_ADD", ["1", "2", "3"])]}), limits
        )
    with pytest.raises(LdapRefusedError, match="ldap-too-many-controls"):
        codec.decode_request(
            pdus.search(1, controls=[("1.2.3", False, None), ("1.2.4", False, None)]), limits
        )


def test_non_utf8_strings_are_malformed() -> None:
    pdu = pdus.delete(1, "cn=placeholder")
    broken = pdu.replace(b"placeholder", b"placeholde\xff")
    with pytest.raises(LdapProtocolError, match="UTF-8"):
        codec.decode_request(broken)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_ldap_errors(data: bytes) -> None:
    try:
        length = codec.pdu_length(data, 4096)
        if length is not None and length <= len(data):
            codec.decode_request(data[:length])
    except LdapError:
        pass


_SAMPLES = [
    pdus.search(3, "ou=x,dc=y", "(&(a=b)(|(c=d*)(!(e>=f))))", attributes=["cn"]),
    pdus.modify(4, "cn=g", {"member": [("MODIFY_ADD", ["cn=x"])]}),
    pdus.add(5, "cn=n", {"objectClass": ["top"]}),
    pdus.modify_dn(6, "cn=a,ou=x", "cn=b", "ou=y"),
    pdus.simple_bind(7, "cn=admin", "pw"),
]


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(_SAMPLES),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=6),
    st.integers(0, 400),
)
def test_mutated_pdus_raise_only_ldap_errors(
    pdu: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(pdu)
    for position, value in flips:
        data[position % len(data)] = value
    data = data[: max(1, len(data) - cut % 8)]
    try:
        codec.decode_request(bytes(data))
        codec.decode_response(bytes(data))
    except LdapError:
        pass


def test_the_unrolled_filter_has_a_short_repr() -> None:
    # pyasn1 formats the repr of a SEQUENCE's specification while building it; a full repr of the
    # unrolled filter grows as 3^depth and made importing the module take minutes.
    from gateway.ldap import asn1

    assert len(repr(asn1._filter(FILTER_DEPTH))) < 100


# RFC 4511 section 5.1 restricts BER; the gateway must refuse what the directory would refuse
# rather than read it its own way. DelRequest for "cn=x", message id 5:
_DELETE = bytes.fromhex("30090201054a04") + b"cn=x"


def test_the_reference_delete_decodes() -> None:
    assert codec.decode_request(_DELETE).dn == "cn=x"


def test_long_form_lengths_are_accepted() -> None:
    # OpenLDAP's liblber writes 0x84 and four length octets; LDAP allows any definite length.
    long_form = bytes.fromhex("30840000000d") + bytes.fromhex("02840000000105") + _DELETE[5:]
    assert codec.pdu_length(long_form, 1000) == len(long_form)
    assert codec.decode_request(long_form).dn == "cn=x"


@pytest.mark.parametrize(
    ("name", "pdu"),
    [
        # rule 1: an indefinite length inside the PDU (the outer one is refused by pdu_length)
        ("indefinite inner length", bytes.fromhex("300f0201056a80") + b"\x04\x04cn=x\x00\x00"),
        # rule 2: OCTET STRING in the constructed form (the DN in two chunks)
        ("constructed octet string", bytes.fromhex("300d0201056a08") + b"\x04\x02cn\x04\x02=x"),
    ],
)
def test_rfc4511_encoding_rules_are_enforced(name: str, pdu: bytes) -> None:
    with pytest.raises(LdapProtocolError, match="ldap-malformed-pdu"):
        codec.decode_request(pdu)


def test_any_non_zero_boolean_is_true() -> None:
    # Rule 3 binds senders only: ldap3 itself sends TRUE as 0x01, and every reader takes any
    # non-zero octet as TRUE.
    search = pdus.search(1, "dc=x", "(cn=a)")
    false_at = search.index(bytes.fromhex("010100"))
    for octet in (b"\x01", b"\xff"):
        flipped = search[:false_at] + b"\x01\x01" + octet + search[false_at + 3 :]
        assert codec.decode_request(flipped).types_only is True
