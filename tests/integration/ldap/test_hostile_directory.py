"""The LDAP proxy against a scripted directory on a loopback socket.

slapd answers correctly and its timing cannot be chosen, so the answers a confused or hostile
directory sends (or the late answers of an abandoned search that a real one may still have in
flight, RFC 4511 4.11) are played here by a small server that answers each request with the PDUs
a test scripts for it. The SaaS side is a raw loopback socket; the proxy is the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from gateway.ldap.codec import (
    NOTICE_OF_DISCONNECTION,
    Operation,
    Request,
    Response,
    decode_request,
    decode_response,
    encode_result,
    pdu_length,
)
from gateway.ldap.directory import DirectoryConnection
from gateway.ldap.proxy import LdapProxy, OperationOutcome
from tests.unit.ldap import pdus

from .test_proxy import Policy, SocketClient

IO_TIMEOUT = 30
SUFFIX = "dc=corp,dc=example"
HIDDEN = f"ou=tier0,{SUFFIX}"
SECRET = b"laps-password-value"

Script = Callable[[Request], list[bytes]]


@dataclass
class Scripted:
    """What the scripted directory received, and the proxy's records and ending."""

    port: int = 0
    received: list[Request] = field(default_factory=list)
    outcomes: list[OperationOutcome] = field(default_factory=list)
    endings: list[str] = field(default_factory=list)


def _frames(buffer: bytearray) -> list[bytes]:
    out = []
    while (length := pdu_length(buffer, 1 << 20)) is not None and len(buffer) >= length:
        out.append(bytes(buffer[:length]))
        del buffer[:length]
    return out


@contextlib.asynccontextmanager
async def scripted(script: Script, policy: Policy) -> AsyncIterator[Scripted]:
    """A proxy whose directory is a loopback server answering each request with ``script``."""
    state = Scripted()

    async def directory(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = bytearray()
        try:
            while data := await reader.read(65536):
                buffer += data
                for raw in _frames(buffer):
                    request = decode_request(raw)
                    state.received.append(request)
                    for answer in script(request):
                        writer.write(answer)
                    await writer.drain()
        finally:
            writer.close()

    directory_server = await asyncio.start_server(directory, "127.0.0.1", 0)
    directory_port = directory_server.sockets[0].getsockname()[1]
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", directory_port)
        connection = DirectoryConnection(up_reader, up_writer, io_timeout=IO_TIMEOUT)
        proxy = LdapProxy(
            SocketClient(reader, writer), connection, decide=policy, record=state.outcomes.append
        )
        try:
            state.endings.append(await proxy.run())
        finally:
            await connection.close()
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
        if handlers:
            await asyncio.wait(handlers, timeout=IO_TIMEOUT)
    finally:
        server.close()
        directory_server.close()
        await server.wait_closed()
        await directory_server.wait_closed()


class Saas:
    """The SaaS side: a raw loopback connection to the proxy."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.received = bytearray()  # every byte the proxy sent, for "the secret never left"
        self._buffer = bytearray()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def until(self, kind: str | None) -> list[Response]:
        """Answers until one of ``kind`` (None: until the proxy closes the stream)."""
        answers: list[Response] = []
        async with asyncio.timeout(IO_TIMEOUT):
            while True:
                for raw in _frames(self._buffer):
                    answers.append(decode_response(raw))
                    if kind is not None and answers[-1].kind == kind:
                        return answers
                chunk = await self.reader.read(65536)
                if not chunk:
                    assert kind is None, f"the proxy closed before a {kind}"
                    return answers
                self.received += chunk
                self._buffer += chunk


@contextlib.asynccontextmanager
async def saas(port: int) -> AsyncIterator[Saas]:
    """A connection to the proxy at ``port``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield Saas(reader, writer)
    finally:
        writer.close()


def _hidden_entry(message_id: int) -> bytes:
    """An entry inside the never-reachable subtree, carrying a stripped attribute."""
    return pdus.search_entry(
        message_id, f"cn=dc01,{HIDDEN}", {"cn": [b"dc01"], "ms-Mcs-AdmPwd": [SECRET]}
    )


async def test_late_entries_of_an_abandoned_search_never_pass_under_another_request() -> None:
    # The SaaS abandons a search and reuses its message id for a modify. The directory still
    # has entries of the search in flight (section 4.11 allows it): here they arrive after the
    # modify. Read as answers to the modify, they would pass with no search verdict to hide the
    # entry or strip the LAPS password. Section 4.1.1.1 forbids the reuse; the gateway ends the
    # stream instead of forwarding the modify.
    def script(request: Request) -> list[bytes]:
        if request.operation is Operation.MODIFY:
            return [_hidden_entry(2), encode_result(2, Operation.MODIFY, 0, "")]
        return []

    policy = Policy(hidden=(HIDDEN,))
    change = {"description": [("MODIFY_REPLACE", ["x"])]}
    async with scripted(script, policy) as state, saas(state.port) as client:
        await client.send(pdus.search(2, SUFFIX) + pdus.abandon(3, 2))
        await client.send(pdus.modify(2, f"cn=g,{SUFFIX}", change) + pdus.unbind(4))
        answers = await client.until(None)
    assert SECRET not in client.received
    assert [(a.kind, a.response_name, a.result_code, a.diagnostic) for a in answers] == [
        ("extendedResp", NOTICE_OF_DISCONNECTION, 2, "ldap-bad-message-id")
    ]
    assert Operation.MODIFY not in [r.operation for r in state.received]
    assert state.endings == ["ldap_protocol_error"]


async def test_an_entry_answering_a_delete_ends_the_stream() -> None:
    # A directory that sends search entries for an operation that is no search: the entry has
    # no verdict to judge it, and the stream's answers can no longer be attributed.
    def script(request: Request) -> list[bytes]:
        if request.operation is Operation.DELETE:
            return [_hidden_entry(request.message_id), encode_result(2, Operation.DELETE, 0, "")]
        return []

    async with scripted(script, Policy(hidden=(HIDDEN,))) as state, saas(state.port) as client:
        await client.send(pdus.delete(2, f"cn=x,{SUFFIX}"))
        answers = await client.until(None)
    assert SECRET not in client.received
    assert [(a.kind, a.result_code, a.diagnostic) for a in answers] == [
        ("extendedResp", 52, "directory_protocol_error")
    ]
    assert state.endings == ["directory_protocol_error"]
    (delete,) = [o for o in state.outcomes if o.request.operation is Operation.DELETE]
    assert (delete.result, delete.reasons) == ("failed", ["stream_ended"])


async def test_an_abandoned_search_keeps_its_filter_while_the_id_stays_in_use() -> None:
    # Entries of a search abandoned too late still arrive; the session drops them (the SaaS
    # asked not to see them), and nothing of the hidden entry or the secret gets out.
    def script(request: Request) -> list[bytes]:
        if request.operation is Operation.ABANDON:
            return [_hidden_entry(2), encode_result(2, Operation.SEARCH, 0, "")]
        if request.operation is Operation.DELETE:
            return [encode_result(request.message_id, Operation.DELETE, 0, "")]
        return []

    async with scripted(script, Policy(hidden=(HIDDEN,))) as state, saas(state.port) as client:
        await client.send(pdus.search(2, SUFFIX) + pdus.abandon(3, 2))
        await client.send(pdus.delete(4, f"cn=x,{SUFFIX}"))
        answers = await client.until("delResponse")
        await client.send(pdus.unbind(5))
        answers += await client.until(None)
    assert SECRET not in client.received
    assert [(a.kind, a.message_id) for a in answers] == [("delResponse", 4)]
    assert state.endings == ["unbind"]


async def test_a_sasl_bind_binds_the_stream_as_the_identity_in_its_credentials() -> None:
    # RFC 4513 5.2: a SASL bind authenticates (and the directory then acts as) the identity in
    # its credentials, not its BindRequest name; every later operation is decided as it.
    def script(request: Request) -> list[bytes]:
        if request.operation is Operation.BIND:
            return [encode_result(request.message_id, Operation.BIND, 0, "")]
        return [encode_result(request.message_id, Operation.DELETE, 0, "")]

    policy = Policy()
    async with scripted(script, policy) as state, saas(state.port) as client:
        await client.send(pdus.sasl_bind(1, "PLAIN", b"\0reader@corp.example\0secret"))
        await client.until("bindResponse")
        await client.send(pdus.delete(2, f"cn=x,{SUFFIX}"))
        await client.until("delResponse")
        await client.send(pdus.unbind(3))
        await client.until(None)
    assert [(call[0].operation, call[1]) for call in policy.calls] == [
        (Operation.BIND, None),
        (Operation.DELETE, "reader@corp.example"),
    ]
    assert state.endings == ["unbind"]
