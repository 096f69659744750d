"""The fast reader of directory answers against pyasn1's full decoding (a differential test).

Valid answers, built by ldap3's encoder (independent of both readers) and by the gateway's own
encoder, must read the same field by field. Arbitrary and mutated bytes must raise only the LDAP
protocol error, and whenever pyasn1 accepts a PDU the fast reader reads it the same way. The one
direction the readers may differ, by design (gateway/ldap/fastread.py): the fast reader does not
parse the values inside an entry's attribute sets, so a PDU malformed only there passes it.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ldap import codec
from gateway.ldap.asn1 import MAX_INT
from gateway.ldap.errors import LdapError, LdapProtocolError
from gateway.ldap.fastread import read_response

from . import pdus

# Tens of seconds: started first in a parallel run (tests/conftest.py).
pytestmark = pytest.mark.slow

_TEXT = st.text(max_size=40)
_TYPES = st.text(
    st.sampled_from("abcdefghijklmnopqrstuvwxyz-;0123456789."), min_size=1, max_size=20
)


def _same(pdu: bytes) -> None:
    expected = codec.decode_response(pdu)
    assert read_response(pdu) == expected


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, MAX_INT),
    _TEXT,
    st.dictionaries(_TYPES, st.lists(st.binary(max_size=30), max_size=4), max_size=6),
)
def test_entries_read_the_same(
    message_id: int, dn: str, attributes: dict[str, list[bytes]]
) -> None:
    _same(pdus.search_entry(message_id, dn, attributes))


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, MAX_INT),
    st.sampled_from(list(codec.Operation)),
    st.integers(0, 200),
    _TEXT,
    _TEXT,
)
def test_results_read_the_same(
    message_id: int, operation: codec.Operation, code: int, diagnostic: str, matched: str
) -> None:
    if operation in (codec.Operation.UNBIND, codec.Operation.ABANDON):
        return
    _same(codec.encode_result(message_id, operation, code, diagnostic, matched_dn=matched))


def test_a_notice_of_disconnection_reads_the_same() -> None:
    _same(codec.encode_notice_of_disconnection(2, "ldap-malformed-pdu"))


_SAMPLES = [
    pdus.search_entry(
        3, "cn=ws01,ou=Computers,dc=example,dc=com", {"cn": [b"ws01"], "ms-Mcs-AdmPwd": [b"s"]}
    ),
    codec.encode_result(4, codec.Operation.SEARCH, 0, ""),
    codec.encode_result(5, codec.Operation.EXTENDED, 50, "no"),
    codec.encode_notice_of_disconnection(2, "x"),
]


@settings(max_examples=1000, deadline=None)
@given(
    st.sampled_from(_SAMPLES),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=6),
    st.integers(0, 400),
)
def test_mutated_answers(pdu: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    mutable = bytearray(pdu)
    for position, value in flips:
        mutable[position % len(mutable)] = value
    data = bytes(mutable[: max(1, len(mutable) - cut % 8)])
    try:
        expected = codec.decode_response(data)
    except LdapError:
        expected = None
    try:
        got = read_response(data)
    except LdapProtocolError:
        got = None
    if expected is not None:
        assert got == expected


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_the_protocol_error(data: bytes) -> None:
    with contextlib.suppress(LdapProtocolError):
        read_response(data)


def test_what_the_fast_reader_does_not_judge() -> None:
    # An INTEGER where an attribute value (OCTET STRING) belongs: pyasn1 refuses the PDU; the
    # fast reader reads the entry's DN and attribute types, which are exactly what the gateway
    # decides on, and leaves the value to the SaaS's client, as the directory sent it.
    pdu = pdus.search_entry(3, "cn=a", {"cn": [b"a"]})
    position = pdu.rindex(b"\x04\x01a")
    bad = pdu[:position] + b"\x02\x01\x01" + pdu[position + 3 :]
    try:
        codec.decode_response(bad)
    except LdapError:
        pass
    else:
        raise AssertionError("pyasn1 accepted an INTEGER attribute value")
    response = read_response(bad)
    assert (response.dn, response.attributes) == ("cn=a", ("cn",))


def _tlv(tag: int, content: bytes) -> bytes:
    # Definite BER length (X.690 section 8.1.3), long form when needed.
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + content


def _done_with_controls(count: int) -> bytes:
    # searchResDone (success) followed by ``count`` minimal controls (RFC 4511 section 4.1.11).
    done = _tlv(0x65, b"\x0a\x01\x00\x04\x00\x04\x00")
    controls = _tlv(0xA0, _tlv(0x30, b"\x04\x011") * count)
    return _tlv(0x30, b"\x02\x01\x05" + done + controls)


def test_both_readers_end_at_the_same_control_count() -> None:
    # The PDU cap alone would let one answer carry hundreds of thousands of controls, each an
    # object the reader builds: both readers stop at the same count, as a protocol error (the
    # directory is confused or hostile), never as a refusal of the SaaS's request.
    # Each reading of the 65,536 controls takes seconds: both readers read the answer at the cap
    # once, and both results are checked.
    at_cap = _done_with_controls(codec.MAX_RESPONSE_CONTROLS)
    fast = read_response(at_cap)
    assert fast == codec.decode_response(at_cap)
    assert len(fast.controls) == codec.MAX_RESPONSE_CONTROLS
    over = _done_with_controls(codec.MAX_RESPONSE_CONTROLS + 1)
    for reader in (codec.decode_response, read_response):
        with pytest.raises(LdapProtocolError) as error:
            reader(over)
        assert error.value.reason == "ldap-too-many-controls"
