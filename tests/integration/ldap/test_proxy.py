"""The LDAP proxy between a real ldap3 client and a real slapd (over ldaps).

The client reaches the proxy over a loopback socket (the inner TLS and the relay are the
end-to-end suite's business); the proxy's directory side is the gateway's own TLS connection.
The policy here is a small rule table standing in for ``LdapChain`` at the proxy's seam, so each
test can say exactly what is allowed; the real policy is exercised end to end. slapd's stats log
shows what reached the directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ldap3 import MODIFY_ADD, NONE, Connection, Server
from ldap3.operation.search import search_operation
from ldap3.protocol.rfc4511 import LDAPMessage, MessageID, ProtocolOp
from pyasn1.codec.ber import encoder

from gateway.config.model import Target
from gateway.config.secrets import SecretRef, SecretSource
from gateway.forward.dial import system_resolver
from gateway.forward.streams import open_tcp
from gateway.ldap.codec import (
    NOTICE_OF_DISCONNECTION,
    Operation,
    Request,
    Response,
    decode_response,
    encode_extended_request,
    encode_simple_bind,
    pdu_length,
)
from gateway.ldap.directory import DirectoryTls, secure
from gateway.ldap.disclosure import Reach
from gateway.ldap.dn import normalise_attribute
from gateway.ldap.proxy import BindIdentity, LdapProxy, OperationOutcome

from ..slapd import SERVICE_DN, SERVICE_PASSWORD, SUFFIX
from . import wire
from .conftest import TlsDirectory

IO_TIMEOUT = 30  # an int: ldap3 packs receive_timeout into SO_RCVTIMEO
PAGED_RESULTS = "1.2.840.113556.1.4.319"
PROTECTED = f"cn=Domain Admins,ou=Groups,{SUFFIX}"
MANAGED = f"cn=Helpdesk,ou=Managed Groups,ou=Groups,{SUFFIX}"
COMPUTER = f"cn=ws01,ou=Computers,{SUFFIX}"


EVERY_PLACE = Reach(host="127.0.0.1", port=0, granted=None)


@dataclass(frozen=True)
class RuleVerdict:
    """The verdict shape of ``LdapChain.decide`` (``gateway.ldap.decide.LdapVerdict``)."""

    allowed: bool
    reasons: tuple[str, ...] = ()
    operation: str | None = None
    revision: str = "test"
    unavailable: bool = False
    strip_attributes: frozenset[str] = frozenset()
    hidden: tuple[str, ...] = ()
    # Every place but no other server: matchedDNs pass, referral URLs do not (port 0).
    reach: Reach | None = EVERY_PLACE

    def strips(self, description: str) -> bool:
        return normalise_attribute(description) in self.strip_attributes

    def hides(self, entry_dn: str) -> bool:
        return any(entry_dn.lower().endswith(suffix) for suffix in self.hidden)


@dataclass
class Policy:
    """Deny modify under ``cn=Domain Admins``; strip the LAPS password; record every call."""

    calls: list[tuple[Request, str | None, bool]] = field(default_factory=list)
    fail: bool = False
    refuse_binds_as: frozenset[str] = frozenset()
    hidden: tuple[str, ...] = ()

    async def __call__(self, request: Request, bound_as: str | None, injected: bool) -> RuleVerdict:
        self.calls.append((request, bound_as, injected))
        if self.fail:
            return RuleVerdict(False, ("policy_unavailable",), unavailable=True)
        if request.operation is Operation.BIND and (bound_as or request.dn) in self.refuse_binds_as:
            return RuleVerdict(False, ("ldap_bind_not_granted",))
        if request.operation is Operation.MODIFY and request.dn.lower() == PROTECTED.lower():
            return RuleVerdict(False, ("ldap_never_reachable",))
        return RuleVerdict(
            True,
            operation="test-rule",
            strip_attributes=frozenset({"ms-mcs-admpwd"}),
            hidden=self.hidden,
        )


@dataclass
class ProxyUnderTest:
    port: int
    policy: Policy
    outcomes: list[OperationOutcome] = field(default_factory=list)
    endings: list[str] = field(default_factory=list)


class SocketClient:
    """A loopback connection as the proxy's ``ClientChannel``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def receive(self) -> bytes | None:
        return await self._reader.read(65536) or None

    async def send(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()


@contextlib.asynccontextmanager
async def serving(
    directory: TlsDirectory,
    policy: Policy,
    identities: dict[str, BindIdentity] | None = None,
) -> AsyncIterator[ProxyUnderTest]:
    under_test = ProxyUnderTest(0, policy)
    context = ssl.create_default_context(cadata=directory.ca_pem.decode("ascii"))
    target = Target.model_validate(
        {
            "scheme": "tcp",
            "host": "127.0.0.1",
            "port": directory.slapd.ldaps_port,
            "allow_special_addresses": True,
        }
    )

    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        up_reader, up_writer = await open_tcp(
            target, resolver=system_resolver, connect_timeout=IO_TIMEOUT
        )
        connection = await secure(
            up_reader, up_writer, DirectoryTls(context, "localhost", False), within=IO_TIMEOUT
        )
        proxy = LdapProxy(
            SocketClient(reader, writer),
            connection,
            decide=policy,
            record=under_test.outcomes.append,
            identities=identities,
        )
        try:
            under_test.endings.append(await proxy.run())
        finally:
            await connection.close()
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    under_test.port = server.sockets[0].getsockname()[1]
    try:
        yield under_test
        # Every connection's proxy finishes (and records) before the test looks.
        if handlers:
            await asyncio.wait(handlers, timeout=IO_TIMEOUT)
    finally:
        server.close()
        await server.wait_closed()


def _connect(port: int, user: str | None = None, password: str | None = None) -> Connection:
    server = Server("127.0.0.1", port=port, get_info=NONE, connect_timeout=IO_TIMEOUT)
    return Connection(
        server,
        user=user or SERVICE_DN,
        password=SERVICE_PASSWORD if password is None else password,
        auto_bind=True,
        receive_timeout=IO_TIMEOUT,
        raise_exceptions=False,
    )


def _operations(directory: TlsDirectory, verb: str) -> list[str]:
    return [line for line in directory.slapd.operations() if line.startswith(f"{verb} ")]


async def test_paged_search_with_the_laps_attribute_stripped(
    tls_directory: TlsDirectory,
) -> None:
    async with serving(tls_directory, Policy()) as proxy:

        def work() -> tuple[list[dict[str, Any]], list[dict[str, object]]]:
            connection = _connect(proxy.port)
            entries = list(
                connection.extend.standard.paged_search(
                    f"ou=People,{SUFFIX}",
                    "(objectClass=inetOrgPerson)",
                    attributes=["uid", "mail"],
                    paged_size=2,
                    generator=True,
                )
            )
            assert connection.search(COMPUTER, "(objectClass=*)", attributes=["*"])
            computers = [dict(entry["attributes"]) for entry in connection.response]
            connection.unbind()
            return entries, computers

        entries, computers = await asyncio.to_thread(work)
    assert sorted(str(e["attributes"]["uid"][0]) for e in entries) == ["user0", "user1", "user2"]
    # Three entries, two per page: the paged results control went through twice.
    searches = [o for o in proxy.outcomes if o.request.operation is Operation.SEARCH]
    assert [o.request.controls[0].oid for o in searches[:2]] == [PAGED_RESULTS] * 2
    assert computers == [{"cn": ["ws01"], "objectClass": ["device", "lapsComputer"]}]
    laps = searches[-1]
    assert laps.stripped == {"ms-mcs-admpwd"}
    assert (laps.result_code, laps.entries) == (0, 1)
    assert proxy.endings == ["unbind"]


async def test_denied_modify_mid_connection_then_allowed(tls_directory: TlsDirectory) -> None:
    before = len(_operations(tls_directory, "MOD"))
    async with serving(tls_directory, Policy()) as proxy:

        def work() -> tuple[dict[str, object], dict[str, object]]:
            connection = _connect(proxy.port)
            change = {"member": [(MODIFY_ADD, [f"uid=user1,ou=People,{SUFFIX}"])]}
            connection.modify(PROTECTED, change)
            denied = dict(connection.result)
            connection.modify(MANAGED, change)
            allowed = dict(connection.result)
            connection.unbind()
            return denied, allowed

        denied, allowed = await asyncio.to_thread(work)
    assert denied["result"] == 50
    assert denied["message"] == "ldap_never_reachable"
    assert allowed["result"] == 0
    modifies = _operations(tls_directory, "MOD")[before:]
    assert len(modifies) == 1
    assert "Helpdesk" in modifies[0]
    records = [o for o in proxy.outcomes if o.request.operation is Operation.MODIFY]
    assert [(o.result, o.result_code, o.reasons) for o in records] == [
        ("denied", 50, ["ldap_never_reachable"]),
        ("allowed", 0, []),
    ]


async def test_credential_injection(tls_directory: TlsDirectory, tmp_path: Path) -> None:
    secret = tmp_path / "directory-password"
    secret.write_text(SERVICE_PASSWORD + "\n")
    secret.chmod(0o600)
    source = SecretSource(SecretRef(file=str(secret)), base_dir=tmp_path)
    identity = BindIdentity(
        "inventory", SERVICE_DN, lambda: source.get().get_secret_value().encode()
    )
    async with serving(tls_directory, Policy(), {"inventory": identity}) as proxy:

        def work() -> tuple[str, dict[str, object]]:
            # ldap3 insists on a password with a name: the gateway ignores it (never forwarded).
            connection = _connect(proxy.port, user="inventory", password="ignored-placeholder")
            whoami = connection.extend.standard.who_am_i()
            connection.modify(MANAGED, {"description": [(MODIFY_ADD, ["injected"])]})
            result = dict(connection.result)
            connection.unbind()
            return str(whoami), result

        whoami, result = await asyncio.to_thread(work)
    assert whoami.lower() == f"dn:{SERVICE_DN}".lower()
    assert result["result"] == 0
    binds = [o for o in proxy.outcomes if o.request.operation is Operation.BIND]
    assert [(o.result, o.result_code) for o in binds] == [("allowed", 0)]
    calls = proxy.policy.calls
    assert (calls[0][1], calls[0][2]) == ("inventory", True)  # the bind, decided as the identity
    assert all(call[1:] == ("inventory", True) for call in calls[1:])  # then bound as it
    assert SERVICE_PASSWORD not in repr(proxy.outcomes) + repr(identity)


@pytest.mark.parametrize("spelling", ["Inventory", " INVENTORY "])
async def test_an_identity_is_injected_whatever_the_case_and_spaces(
    tls_directory: TlsDirectory, spelling: str
) -> None:
    # The policy reads a bind name as a bind identity case-insensitively and without the spaces
    # around it (policy_input: an identity bind needs no password). The proxy must inject on
    # the same reading: otherwise a bind the policy allowed as the identity went to the
    # directory as sent, with the SaaS's own password (or none: an unauthenticated bind).
    identity = BindIdentity("inventory", SERVICE_DN, SERVICE_PASSWORD.encode)
    async with serving(tls_directory, Policy(), {"inventory": identity}) as proxy:

        def work() -> tuple[bool, str]:
            connection = _connect(proxy.port, user=spelling, password="ignored-placeholder")
            bound, whoami = connection.bound, str(connection.extend.standard.who_am_i())
            connection.unbind()
            return bound, whoami

        bound, whoami = await asyncio.to_thread(work)
    assert bound
    assert whoami.lower() == f"dn:{SERVICE_DN}".lower()
    assert proxy.policy.calls[0][1:] == ("inventory", True)


async def test_a_bind_the_policy_refuses_never_reaches_the_directory(
    tls_directory: TlsDirectory,
) -> None:
    before = len(_operations(tls_directory, "BIND"))
    policy = Policy(refuse_binds_as=frozenset({SERVICE_DN}))
    async with serving(tls_directory, policy) as proxy:

        def work() -> dict[str, object]:
            server = Server("127.0.0.1", port=proxy.port, get_info=NONE)
            connection = Connection(
                server, SERVICE_DN, SERVICE_PASSWORD, receive_timeout=IO_TIMEOUT
            )
            connection.open()
            connection.bind()
            result = dict(connection.result)
            connection.unbind()
            return result

        result = await asyncio.to_thread(work)
    assert (result["result"], result["message"]) == (50, "ldap_bind_not_granted")
    assert len(_operations(tls_directory, "BIND")) == before


async def test_engine_failure_answers_busy(tls_directory: TlsDirectory) -> None:
    async with serving(tls_directory, Policy(fail=True)) as proxy:

        def work() -> dict[str, object]:
            connection = Connection(
                Server("127.0.0.1", port=proxy.port, get_info=NONE),
                receive_timeout=IO_TIMEOUT,
            )
            connection.open()
            connection.search(SUFFIX, "(objectClass=*)")
            result = dict(connection.result)
            connection.unbind()
            return result

        result = await asyncio.to_thread(work)
    assert (result["result"], result["message"]) == (51, "policy_unavailable")


async def test_entries_in_hidden_subtrees_are_not_returned(tls_directory: TlsDirectory) -> None:
    policy = Policy(hidden=(f"ou=groups,{SUFFIX}",))
    async with serving(tls_directory, policy) as proxy:

        def work() -> list[str]:
            connection = _connect(proxy.port)
            connection.search(SUFFIX, "(objectClass=*)", attributes=["cn"])
            names = [str(entry["dn"]) for entry in connection.response]
            connection.unbind()
            return names

        names = await asyncio.to_thread(work)
    assert f"uid=user0,ou=People,{SUFFIX}" in names
    assert not [name for name in names if "ou=Groups" in name]
    search = next(o for o in proxy.outcomes if o.request.operation is Operation.SEARCH)
    assert search.hidden == 4  # ou=Groups, ou=Managed Groups, and their two groups


@dataclass
class SubtreeHiding(Policy):
    """Hide the ``hidden`` subtrees only from subtree searches, as the real policy does."""

    async def __call__(self, request: Request, bound_as: str | None, injected: bool) -> RuleVerdict:
        verdict = await super().__call__(request, bound_as, injected)
        if request.scope == "sub":
            return verdict
        return RuleVerdict(True, operation="test-rule", strip_attributes=verdict.strip_attributes)


async def test_two_requests_with_one_id_in_one_read_end_the_stream(
    tls_directory: TlsDirectory,
) -> None:
    # RFC 4511 4.1.1.1: ids are unique among outstanding requests. Sent together, the second
    # request was decoded before the first was forwarded; had it gone to the directory, the
    # subtree search's entries would have been judged by the base search's verdict (nothing
    # hidden), and ou=Groups would have leaked.
    policy = SubtreeHiding(hidden=(f"ou=groups,{SUFFIX}",))
    base_search = search_operation(
        SUFFIX, "(objectClass=*)", "BASE", "NEVER", ["cn"], 0, 0, False, True, True
    )
    message = LDAPMessage()
    message["messageID"] = MessageID(2)
    message["protocolOp"] = ProtocolOp().setComponentByName("searchRequest", base_search)
    async with serving(tls_directory, policy) as proxy:
        pdus = await wire.exchange(proxy.port, _search_pdu(2) + bytes(encoder.encode(message)))
    entries = [r.dn for r in map(decode_response, pdus) if r.kind == "searchResEntry"]
    assert not [dn for dn in entries if "ou=groups" in dn.lower()]
    assert _notice(pdus) == (2, "ldap-bad-message-id")


def _search_pdu(message_id: int) -> bytes:
    """A search request built by ldap3's own encoder, as a client would send it."""
    request = search_operation(
        SUFFIX, "(objectClass=*)", "SUBTREE", "NEVER", ["cn"], 0, 0, False, True, True
    )
    message = LDAPMessage()
    message["messageID"] = MessageID(message_id)
    message["protocolOp"] = ProtocolOp().setComponentByName("searchRequest", request)
    return bytes(encoder.encode(message))


def _notice(pdus: list[bytes]) -> tuple[int | None, str]:
    """The result code and reason of the Notice of Disconnection among ``pdus``."""
    notices = [r for r in map(decode_response, pdus) if r.response_name == NOTICE_OF_DISCONNECTION]
    assert [notice.message_id for notice in notices] == [0]
    return notices[0].result_code, notices[0].diagnostic


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b"\x30\x03\x02\x02\x01", "ldap-malformed-pdu", id="truncated-integer"),
        pytest.param(b"\x04\x00", "ldap-malformed-pdu", id="not-a-sequence"),
        pytest.param(
            b"\x30\x80\x02\x01\x01\x42\x00\x00\x00", "ldap-malformed-pdu", id="indefinite"
        ),
        pytest.param(b"\x30\x84\x7f\xff\xff\xff", "ldap-pdu-too-large", id="oversized"),
        pytest.param(b"\x30\x05\x02\x01\x00\x42\x00", "ldap-bad-message-id", id="message-id-0"),
        # RFC 4511 4.5.1: sizeLimit INTEGER (0 .. maxInt); -1 would pass a max_size_limit cap.
        pytest.param(
            _search_pdu(1).replace(
                b"\x0a\x01\x02\x0a\x01\x00\x02\x01\x00", b"\x0a\x01\x02\x0a\x01\x00\x02\x01\xff"
            ),
            "ldap-malformed-pdu",
            id="size-limit-negative",
        ),
        pytest.param(
            b"\x30\x0c\x02\x01\x01\x61\x07\x0a\x01\x00\x04\x00\x04\x00",
            "ldap-malformed-pdu",
            id="a-response-from-the-client",
        ),
    ],
)
async def test_malformed_pdus_disconnect_and_nothing_reaches_the_directory(
    tls_directory: TlsDirectory, data: bytes, reason: str
) -> None:
    before = len(tls_directory.slapd.operations())
    async with serving(tls_directory, Policy()) as proxy:
        pdus = await wire.exchange(proxy.port, data)
    assert _notice(pdus) == (2, reason)
    assert proxy.endings == ["ldap_protocol_error"]
    assert len(tls_directory.slapd.operations()) == before


async def test_an_untyped_extensible_match_is_answered_and_never_searched(
    tls_directory: TlsDirectory,
) -> None:
    # RFC 4511 4.5.1.7.7: without a type the match tests every attribute of each entry (the LAPS
    # password too), and it names none for the policy: refused, and the connection goes on.
    before = len(_operations(tls_directory, "SRCH"))
    async with serving(tls_directory, Policy()) as proxy:

        def work() -> tuple[dict[str, object], bool]:
            connection = _connect(proxy.port)
            connection.search(COMPUTER, "(:2.5.13.5:=hunter2)", attributes=["cn"])
            refused = dict(connection.result)
            typed = connection.search(COMPUTER, "(cn:2.5.13.2:=WS01)", attributes=["cn"])
            connection.unbind()
            return refused, typed

        refused, typed = await asyncio.to_thread(work)
    assert (refused["result"], refused["message"]) == (50, "ldap-filter-without-type")
    assert typed
    searches = _operations(tls_directory, "SRCH")[before:]
    assert len(searches) == 1
    assert "(cn:2.5.13.2:=ws01)" in searches[0].lower()
    records = [o for o in proxy.outcomes if o.request.operation is Operation.SEARCH]
    assert (records[0].result, records[0].reasons) == ("rejected", ["ldap-filter-without-type"])


async def test_a_malformed_pdu_after_a_good_one(tls_directory: TlsDirectory) -> None:
    async with serving(tls_directory, Policy()) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(_search_pdu(1))
            await writer.drain()
            answers = await _read_until(reader, "searchResDone")
            writer.write(b"\x04\x00")
            await writer.drain()
            pdus = await wire.read_all(reader)
        finally:
            writer.close()
    assert answers[-1].result_code == 0
    assert _notice(pdus) == (2, "ldap-malformed-pdu")
    assert [(o.request.operation, o.result) for o in proxy.outcomes] == [
        (Operation.SEARCH, "allowed")
    ]


async def _read_until(reader: asyncio.StreamReader, kind: str) -> list[Response]:
    """Responses until one of ``kind``."""
    data = b""
    responses: list[Response] = []
    async with asyncio.timeout(IO_TIMEOUT):
        while not responses or responses[-1].kind != kind:
            length = pdu_length(data, 1 << 20)
            if length is not None and len(data) >= length:
                responses.append(decode_response(data[:length]))
                data = data[length:]
                continue
            chunk = await reader.read(65536)
            assert chunk, "the proxy closed"
            data += chunk
    return responses


async def test_starttls_from_the_saas_is_refused(tls_directory: TlsDirectory) -> None:
    before = len(_operations(tls_directory, "EXT"))
    async with serving(tls_directory, Policy()) as proxy:
        answer = await wire.start_tls(proxy.port)
    assert (answer.kind, answer.result_code, answer.diagnostic) == (
        "extendedResp",
        50,
        "ldap_starttls_refused",
    )
    assert len(_operations(tls_directory, "EXT")) == before


async def test_a_pdu_during_a_bind_is_a_protocol_error(tls_directory: TlsDirectory) -> None:
    async with serving(tls_directory, Policy()) as proxy:
        pdus = await wire.exchange(
            proxy.port,
            encode_simple_bind(1, SERVICE_DN, SERVICE_PASSWORD.encode()) + _search_pdu(2),
        )
    assert _notice(pdus) == (2, "ldap-pdu-during-bind")


@dataclass
class DenyAll(Policy):
    """Every request denied: then nothing at all may reach the directory."""

    async def __call__(self, request: Request, bound_as: str | None, injected: bool) -> RuleVerdict:
        self.calls.append((request, bound_as, injected))
        return RuleVerdict(False, ("ldap_not_granted",))


async def _send_and_close(port: int, data: bytes) -> None:
    """Send ``data``, end the sending side, read what comes back until the proxy closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        writer.write_eof()
        async with asyncio.timeout(IO_TIMEOUT):
            while await reader.read(65536):
                pass
    finally:
        writer.close()


def _requests(directory: TlsDirectory) -> int:
    """Operations slapd received that ask for something (unbind and abandon are passed on
    undecided, by design)."""
    return sum(
        1 for line in directory.slapd.operations() if not line.startswith(("UNBIND", "ABANDON"))
    )


_VALID = [
    _search_pdu(1),
    encode_simple_bind(2, SERVICE_DN, SERVICE_PASSWORD.encode()),
    encode_extended_request(3, "1.3.6.1.4.1.4203.1.11.3"),
]


def _mutated(pdu: bytes, flips: list[tuple[int, int]]) -> bytes:
    changed = dict(flips)
    return bytes(changed.get(index, octet) for index, octet in enumerate(pdu))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=200),
        st.builds(
            _mutated,
            st.sampled_from(_VALID),
            st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=4),
        ),
        st.lists(st.sampled_from(_VALID), min_size=1, max_size=4).map(b"".join),
    )
)
def test_with_everything_denied_nothing_reaches_the_directory(
    tls_directory: TlsDirectory, data: bytes
) -> None:
    before = _requests(tls_directory)

    async def example() -> None:
        async with serving(tls_directory, DenyAll()) as proxy:
            await _send_and_close(proxy.port, data)
        assert all(
            outcome.result != "allowed"
            or outcome.request.operation in (Operation.UNBIND, Operation.ABANDON)
            for outcome in proxy.outcomes
        )

    asyncio.run(example())
    assert _requests(tls_directory) == before


class StalledClient:
    """A SaaS that sends one malformed PDU and then stops reading."""

    def __init__(self) -> None:
        self._sent = False

    async def receive(self) -> bytes | None:
        if not self._sent:
            self._sent = True
            return b"\x04\x00"
        await asyncio.Event().wait()
        return None

    async def send(self, data: bytes) -> None:
        await asyncio.Event().wait()


async def test_a_saas_that_stopped_reading_does_not_hold_the_stream(
    tls_directory: TlsDirectory,
) -> None:
    context = ssl.create_default_context(cadata=tls_directory.ca_pem.decode("ascii"))
    target = Target.model_validate(
        {
            "scheme": "tcp",
            "host": "127.0.0.1",
            "port": tls_directory.slapd.ldaps_port,
            "allow_special_addresses": True,
        }
    )
    reader, writer = await open_tcp(target, resolver=system_resolver, connect_timeout=IO_TIMEOUT)
    connection = await secure(
        reader, writer, DirectoryTls(context, "localhost", False), within=IO_TIMEOUT
    )
    proxy = LdapProxy(
        StalledClient(), connection, decide=Policy(), record=lambda _: None, idle_timeout=3600
    )
    try:
        # The Notice of Disconnection cannot leave; the stream still ends (no duration asserted,
        # the outer bound only turns a hang into a failure).
        async with asyncio.timeout(60):
            assert await proxy.run() == "ldap_protocol_error"
    finally:
        await connection.close()
