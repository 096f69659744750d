"""The LDAP core reads every PDU a real client (ldap3) and a real server (OpenLDAP slapd) exchange.

A loopback tap sits between ldap3 and slapd and passes each direction through ``LdapSession``:
every request must decode and be recorded as outstanding, every response must decode and answer
an outstanding operation, and the conversation must end with nothing outstanding. The
conversation covers each operation the gateway will decide: simple bind, add, paged search
(the Simple Paged Results control, RFC 2696), modify, compare, modify DN, delete, the Who am I
extended operation (RFC 4532) and unbind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
from ldap3 import MODIFY_ADD, NONE, Connection, Server

from gateway.ldap.codec import Operation, Request, Response
from gateway.ldap.session import LdapSession
from tests.integration.slapd import (
    ROOT_DN,
    ROOT_PASSWORD,
    SUFFIX,
    Slapd,
    running_slapd,
    slapd_unavailable_reason,
)

pytestmark = pytest.mark.skipif(
    slapd_unavailable_reason() is not None, reason=str(slapd_unavailable_reason())
)

PAGED_RESULTS = "1.2.840.113556.1.4.319"
PEOPLE = f"ou=People,{SUFFIX}"
IO_TIMEOUT = 60  # an int: ldap3 packs receive_timeout into SO_RCVTIMEO


@dataclass
class Tap:
    """What the tap saw: decoded requests and responses, and any error it hit."""

    port: int = 0
    requests: list[Request] = field(default_factory=list)
    responses: list[Response] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    sessions: list[LdapSession] = field(default_factory=list)


async def _pump_client(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, session: LdapSession, tap: Tap
) -> None:
    while data := await asyncio.wait_for(reader.read(65536), IO_TIMEOUT):
        for pdu in session.receive_from_client(data):
            assert pdu.request is not None, pdu.refused
            session.forwarding(pdu.request)
            tap.requests.append(pdu.request)
            writer.write(pdu.raw)
        await writer.drain()
    writer.write_eof()


async def _pump_server(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, session: LdapSession, tap: Tap
) -> None:
    while data := await asyncio.wait_for(reader.read(65536), IO_TIMEOUT):
        for pdu in session.receive_from_server(data):
            tap.responses.append(pdu.response)
            writer.write(pdu.raw)
        await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def _tap(slapd: Slapd) -> AsyncIterator[Tap]:
    tap = Tap()

    async def handle(
        client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        session = LdapSession()
        tap.sessions.append(session)
        try:
            server_reader, server_writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(slapd.socket_path)), IO_TIMEOUT
            )
        except BaseException as exc:
            tap.errors.append(exc)
            client_writer.close()
            return
        try:
            await asyncio.gather(
                _pump_client(client_reader, server_writer, session, tap),
                _pump_server(server_reader, client_writer, session, tap),
            )
        except BaseException as exc:  # recorded for the test to report, then the tap closes
            tap.errors.append(exc)
        finally:
            server_writer.close()
            client_writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    tap.port = server.sockets[0].getsockname()[1]
    try:
        yield tap
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture(scope="module")
def slapd() -> Iterator[Slapd]:
    with running_slapd() as instance:
        yield instance


def _conversation(port: int) -> dict[str, object]:
    server = Server("127.0.0.1", port=port, get_info=NONE, connect_timeout=IO_TIMEOUT)
    connection = Connection(
        server, user=ROOT_DN, password=ROOT_PASSWORD, auto_bind=True, receive_timeout=IO_TIMEOUT
    )
    results: dict[str, object] = {}
    assert connection.add(SUFFIX, ["dcObject", "organization"], {"o": "Example", "dc": "example"})
    assert connection.add(PEOPLE, "organizationalUnit")
    for index in range(25):
        assert connection.add(
            f"uid=u{index:02},{PEOPLE}",
            "inetOrgPerson",
            {"cn": f"User {index}", "sn": "Tester", "userPassword": f"pw-{index}"},
        )
    assert connection.add(
        f"cn=Helpdesk,{PEOPLE}", "groupOfNames", {"cn": "Helpdesk", "member": f"uid=u00,{PEOPLE}"}
    )
    entries = connection.extend.standard.paged_search(
        PEOPLE,
        "(&(objectClass=inetOrgPerson)(|(uid=u0*)(uid=u1*)(uid=u2*)))",
        attributes=["cn", "uid"],
        paged_size=10,
        generator=False,
    )
    results["paged"] = len(entries)
    assert connection.modify(
        f"cn=Helpdesk,{PEOPLE}", {"member": [(MODIFY_ADD, [f"uid=u01,{PEOPLE}"])]}
    )
    results["compare"] = connection.compare(f"uid=u00,{PEOPLE}", "sn", "Tester")
    assert connection.modify_dn(f"uid=u24,{PEOPLE}", "uid=u99")
    assert connection.delete(f"uid=u99,{PEOPLE}")
    results["whoami"] = connection.extend.standard.who_am_i()
    connection.unbind()
    return results


async def test_every_pdu_of_a_real_conversation_decodes(slapd: Slapd) -> None:
    async with _tap(slapd) as tap:
        results = await asyncio.wait_for(asyncio.to_thread(_conversation, tap.port), 120)
        for _ in range(200):  # let the tap see the close after the unbind
            if tap.errors or all(not s.outstanding and s.unbound for s in tap.sessions):
                break
            await asyncio.sleep(0.05)
    assert tap.errors == []
    assert results == {"paged": 25, "compare": True, "whoami": f"dn:{ROOT_DN}"}
    operations = [request.operation for request in tap.requests]
    assert operations[0] is Operation.BIND
    assert operations[-1] is Operation.UNBIND
    for operation in (
        Operation.ADD,
        Operation.SEARCH,
        Operation.MODIFY,
        Operation.COMPARE,
        Operation.MODIFY_DN,
        Operation.DELETE,
        Operation.EXTENDED,
    ):
        assert operation in operations
    searches = [request for request in tap.requests if request.operation is Operation.SEARCH]
    assert len(searches) == 3  # 25 entries in pages of 10
    assert all(PAGED_RESULTS in {c.oid for c in request.controls} for request in searches)
    assert searches[0].filter is not None
    assert searches[0].filter.attributes() == {"objectClass", "uid"}
    entries = [response for response in tap.responses if response.kind == "searchResEntry"]
    assert len(entries) == 25
    assert all(set(entry.attributes) == {"cn", "uid"} for entry in entries)
    done = [response for response in tap.responses if response.kind == "searchResDone"]
    assert all(PAGED_RESULTS in {c.oid for c in response.controls} for response in done)
    finals = [response for response in tap.responses if response.final]
    assert {response.result_code for response in finals} == {0, 6}  # 6: compareTrue
    assert [session.outstanding for session in tap.sessions] == [0]
