"""Per-connection LDAP state: framing, message ids, outstanding operations, abandon, unbind."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ldap import codec
from gateway.ldap.errors import LdapProtocolError, LdapRefusedError
from gateway.ldap.session import LdapSession
from tests.unit.ldap import pdus

_STREAM = [
    pdus.simple_bind(1, "cn=svc,dc=x", "pw"),
    pdus.search(2, "dc=x", "(&(cn=a*)(!(sn=b)))", attributes=["cn"]),
    pdus.modify(3, "cn=g,dc=x", {"member": [("MODIFY_ADD", ["cn=a"])]}),
    pdus.delete(4, "cn=d,dc=x"),
]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=30))
def test_any_chunking_yields_the_same_requests(cuts: list[int]) -> None:
    data = b"".join(_STREAM)
    session = LdapSession()
    seen = []
    position = 0
    for cut in [*cuts, len(data)]:
        chunk = data[position : position + cut]
        position += len(chunk)
        seen += session.receive_from_client(chunk)
        if position >= len(data):
            break
    assert [pdu.raw for pdu in seen] == _STREAM
    assert [pdu.request.message_id for pdu in seen if pdu.request] == [1, 2, 3, 4]


def test_an_outstanding_message_id_cannot_be_reused() -> None:
    session = LdapSession()
    (first,) = session.receive_from_client(pdus.search(5))
    assert first.request is not None
    session.forwarding(first.request)
    with pytest.raises(LdapProtocolError, match="still outstanding"):
        session.receive_from_client(pdus.delete(5, "cn=x"))


def test_the_id_is_free_again_after_the_final_response() -> None:
    session = LdapSession()
    (pdu,) = session.receive_from_client(pdus.delete(5, "cn=x"))
    assert pdu.request is not None
    session.forwarding(pdu.request)
    assert session.outstanding == 1
    (answer,) = session.receive_from_server(codec.encode_result(5, codec.Operation.DELETE, 0, ""))
    assert answer.response.final
    assert session.outstanding == 0
    assert session.receive_from_client(pdus.delete(5, "cn=y"))[0].request is not None


def test_outstanding_operations_are_bounded() -> None:
    session = LdapSession(codec.Limits(max_outstanding=2))
    for message_id in (1, 2):
        (pdu,) = session.receive_from_client(pdus.search(message_id))
        assert pdu.request is not None
        session.forwarding(pdu.request)
    (third,) = session.receive_from_client(pdus.search(3))
    assert third.request is not None
    with pytest.raises(LdapRefusedError) as refused:
        session.forwarding(third.request)
    assert (refused.value.reason, refused.value.operation) == (
        "ldap-too-many-outstanding",
        codec.Operation.SEARCH,
    )


def test_a_refused_request_is_returned_not_raised() -> None:
    session = LdapSession(codec.Limits(max_attributes=1))
    (pdu,) = session.receive_from_client(pdus.search(8, attributes=["a", "b"]))
    assert pdu.request is None
    assert pdu.refused is not None
    assert (pdu.refused.message_id, pdu.refused.operation) == (8, codec.Operation.SEARCH)


def test_the_directory_may_answer_only_outstanding_operations() -> None:
    session = LdapSession()
    notice = codec.encode_notice_of_disconnection(52, "shutting down")
    assert session.receive_from_server(notice)[0].response.message_id == 0
    with pytest.raises(LdapProtocolError, match="not outstanding"):
        session.receive_from_server(codec.encode_result(9, codec.Operation.DELETE, 0, ""))


def test_late_answers_to_an_abandoned_operation_are_dropped() -> None:
    session = LdapSession()
    (search,) = session.receive_from_client(pdus.search(4))
    assert search.request is not None
    session.forwarding(search.request)
    (abandon,) = session.receive_from_client(pdus.abandon(5, 4))
    assert abandon.request is not None
    session.forwarding(abandon.request)
    assert session.outstanding == 0
    late = codec.encode_result(4, codec.Operation.SEARCH, 0, "")
    assert session.receive_from_server(late) == []


def test_nothing_may_follow_an_unbind() -> None:
    session = LdapSession()
    with pytest.raises(LdapProtocolError, match="after an UnbindRequest"):
        session.receive_from_client(pdus.unbind(1) + pdus.search(2))
    other = LdapSession()
    assert other.receive_from_client(pdus.unbind(1))[0].request is not None
    with pytest.raises(LdapProtocolError):
        other.receive_from_client(pdus.search(2))


def test_an_oversized_pdu_is_refused_from_its_header() -> None:
    session = LdapSession(codec.Limits(max_request_bytes=64))
    with pytest.raises(LdapProtocolError, match="ldap-pdu-too-large"):
        session.receive_from_client(b"\x30\x82\x10\x00")
