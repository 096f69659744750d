"""Per-connection LDAP state: framing, message ids, outstanding operations, abandon, unbind."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ldap3.protocol.rfc4511 import IntermediateResponse

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


def _requests(session: LdapSession, data: bytes) -> list[codec.Request]:
    requests = [pdu.request for pdu in session.receive_from_client(data)]
    assert None not in requests
    return [request for request in requests if request is not None]


def _forwarded(session: LdapSession, pdu: bytes) -> codec.Request:
    (request,) = _requests(session, pdu)
    session.forwarding(request)
    return request


def test_the_id_of_an_abandoned_operation_cannot_be_reused() -> None:
    # RFC 4511 4.1.1.1: an id may be reused only once the directory no longer serves the earlier
    # request, and an abandoned one is never answered. Late entries of the abandoned search would
    # otherwise be read as answers to the new request, under its verdict (or none: a modify).
    session = LdapSession()
    _forwarded(session, pdus.search(4))
    _forwarded(session, pdus.abandon(5, 4))
    with pytest.raises(LdapProtocolError, match="abandoned"):
        session.receive_from_client(
            pdus.modify(4, "cn=g,dc=x", {"member": [("MODIFY_ADD", ["a"])]})
        )


def test_a_completed_bind_frees_the_ids_of_abandoned_operations() -> None:
    # RFC 4511 4.2.1: the directory finishes or abandons every operation before a bind.
    session = LdapSession()
    _forwarded(session, pdus.search(4))
    _forwarded(session, pdus.abandon(5, 4))
    _forwarded(session, pdus.simple_bind(6, "cn=svc,dc=x", "pw"))
    late = pdus.search_entry(4, "cn=late,dc=x", {"cn": [b"late"]})
    assert session.receive_from_server(late) == []
    session.receive_from_server(codec.encode_result(6, codec.Operation.BIND, 49, ""))
    assert _forwarded(session, pdus.delete(4, "cn=x")).message_id == 4
    # From now on a search entry for id 4 answers nothing the directory was asked.
    with pytest.raises(LdapProtocolError):
        session.receive_from_server(late)


def test_abandons_beyond_the_bound_are_not_forwarded() -> None:
    # The abandoned ids are remembered (bounded); once full, an abandon is not passed on, so the
    # operation keeps its id and its answers stay attributed to it (section 4.11: a directory may
    # ignore an abandon too).
    session = LdapSession(codec.Limits(max_outstanding=2))
    _forwarded(session, pdus.search(1))
    _forwarded(session, pdus.search(2))
    (first,) = _requests(session, pdus.abandon(3, 1))
    assert session.forwarding(first)
    (second,) = _requests(session, pdus.abandon(4, 2))
    assert session.forwarding(second)
    _forwarded(session, pdus.search(5))
    (third,) = _requests(session, pdus.abandon(6, 5))
    assert not session.forwarding(third)
    assert session.operation_of(5) is codec.Operation.SEARCH
    entry = pdus.search_entry(5, "cn=a,dc=x", {"cn": [b"a"]})
    assert [pdu.response.kind for pdu in session.receive_from_server(entry)] == ["searchResEntry"]


@pytest.mark.parametrize(
    ("request_pdu", "answer"),
    [
        # Entries and references answer a search only (section 4.5.2).
        (pdus.delete(7, "cn=x"), pdus.search_entry(7, "cn=secret,dc=x", {"cn": [b"x"]})),
        (pdus.modify(7, "cn=x", {"cn": [("MODIFY_ADD", ["y"])]}), pdus.search_entry(7, "cn=y", {})),
        # A final response of another operation's type (sections 4.2-4.12).
        (pdus.delete(7, "cn=x"), codec.encode_result(7, codec.Operation.MODIFY, 0, "")),
        (pdus.search(7), codec.encode_result(7, codec.Operation.BIND, 0, "")),
        (pdus.simple_bind(7, "cn=a", "b"), codec.encode_result(7, codec.Operation.SEARCH, 0, "")),
    ],
    ids=[
        "entry-for-delete",
        "entry-for-modify",
        "modify-for-delete",
        "bind-for-search",
        "done-for-bind",
    ],
)
def test_the_directory_answers_an_operation_with_its_own_response_types(
    request_pdu: bytes, answer: bytes
) -> None:
    session = LdapSession()
    _forwarded(session, request_pdu)
    with pytest.raises(LdapProtocolError, match="ldap-unexpected-response"):
        session.receive_from_server(answer)


def test_an_intermediate_response_may_answer_any_operation() -> None:
    # RFC 4511 4.13: an IntermediateResponse may come for any request, before its final answer.
    session = LdapSession()
    _forwarded(session, pdus.delete(7, "cn=x"))
    intermediate = pdus.message(7, "intermediateResponse", IntermediateResponse())
    done = codec.encode_result(7, codec.Operation.DELETE, 0, "")
    answers = session.receive_from_server(intermediate + done)
    assert [pdu.response.kind for pdu in answers] == ["intermediateResponse", "delResponse"]


def test_ids_are_checked_against_requests_of_the_same_read() -> None:
    # Two requests with one id in one read: each was decoded before the first was forwarded,
    # so the id is checked again when the second goes to the directory.
    session = LdapSession()
    first, second = _requests(session, pdus.search(2) + pdus.search(2, scope="base"))
    session.forwarding(first)
    with pytest.raises(LdapProtocolError, match="still outstanding"):
        session.forwarding(second)
    other = LdapSession()
    search, abandon, delete = _requests(
        other, pdus.search(2) + pdus.abandon(3, 2) + pdus.delete(2, "cn=x")
    )
    other.forwarding(search)
    assert other.forwarding(abandon)
    with pytest.raises(LdapProtocolError, match="abandoned"):
        other.forwarding(delete)
