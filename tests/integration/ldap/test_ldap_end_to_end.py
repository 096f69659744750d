"""LDAP through the whole product: ldap3 -> inner TLS -> relay emulator -> `gateway run` -> slapd.

A real `gateway run` process (registered with the control-plane simulator, real Rego), the
relay emulator with a tap on every stream message, and slapd with TLS on loopback under a test
CA, so the gateway's TLS to the directory is real too. The SaaS side is ldap3 speaking plain LDAP
to the devkit SaaS client's loopback port, which carries each connection inside the inner TLS
pinned to the gateway's identity.

Each case asserts what the client got, what slapd received (its stats log: one line per
operation), and for refusals that nothing reached slapd.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import pytest
import pytest_asyncio
from ldap3 import MODIFY_ADD, MODIFY_REPLACE, NONE, Connection, Server

from gateway.devkit.slapd import (
    BIND_IDENTITY,
    LAPS_COMPUTER,
    MANAGED_GROUP,
    PROTECTED_GROUP,
    SERVICE_DN,
    SERVICE_PASSWORD,
    SUFFIX,
    Slapd,
    directory_target,
    sample_directory,
)
from gateway.devkit.stack import DevStack
from gateway.ldap.codec import (
    NOTICE_OF_DISCONNECTION,
    decode_response,
)

from ..gatewayrun import ROOT, gateway_run
from ..slapd import slapd_unavailable_reason
from . import wire

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(
        slapd_unavailable_reason() is not None, reason=str(slapd_unavailable_reason())
    ),
]

SCHEMA = ROOT / "schemas" / "decision-log.schema.json"
IO_TIMEOUT = 30  # an int: ldap3 packs receive_timeout into SO_RCVTIMEO
T = TypeVar("T")
# "Domain" in full-width letters: RFC 4518 NFKC maps it to ASCII, and so does slapd.
FULL_WIDTH_DOMAIN = "".join(chr(ord(letter) + 0xFEE0) for letter in "Domain")


@dataclass
class Env:
    stack: DevStack
    slapd: Slapd
    directory: Path
    port: int
    relayed: list[bytes] = field(default_factory=list)

    def operations(self, verb: str) -> list[str]:
        return [line for line in self.slapd.operations() if line.startswith(f"{verb} ")]

    def requests(self) -> int:
        """Operations slapd received, less unbinds (an earlier case's unbind may be logged
        late; an unbind asks for nothing)."""
        return sum(1 for line in self.slapd.operations() if not line.startswith("UNBIND"))

    def records(self) -> list[dict[str, Any]]:
        # The gateway appends each record with one write(), but a read may land while that
        # write is still copying: a last line without its newline is not a record yet.
        text = (self.directory / "decisions.jsonl").read_text(encoding="utf-8")
        return [json.loads(line) for line in text.split("\n")[:-1]]

    def ldap_records(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("kind") == "ldap"]

    def connect(self, *, bind: bool = True) -> Connection:
        server = Server("127.0.0.1", port=self.port, get_info=NONE, connect_timeout=IO_TIMEOUT)
        # ldap3 insists on a password with a bind name; the gateway ignores what the SaaS sends
        # for a bind identity and binds with the stored one.
        connection = Connection(
            server,
            user=BIND_IDENTITY,
            password="ignored-placeholder",
            receive_timeout=IO_TIMEOUT,
            raise_exceptions=False,
            # Adversarial DNs go to the gateway as written, not as ldap3 would tidy them.
            check_names=False,
        )
        connection.open()
        if bind:
            assert connection.bind(), connection.result
        return connection


async def in_thread(work: Callable[[], T]) -> T:
    """ldap3 blocks: it runs in a thread while this loop serves the relay and the SaaS side."""
    return await asyncio.to_thread(work)


async def _wait_for_records(env: Env, count: int) -> list[dict[str, Any]]:
    """The gateway writes a record when an operation ends; it is another process."""
    async with asyncio.timeout(IO_TIMEOUT):
        while len(records := env.ldap_records()) < count:  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.05)
    return records


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    directory = tmp_path_factory.mktemp("gateway")
    password = directory / "directory-password"
    password.write_text(SERVICE_PASSWORD + "\n")
    password.chmod(0o600)
    slapd_dir = tmp_path_factory.mktemp("slapd")
    with sample_directory(slapd_dir) as slapd:
        async with DevStack("ldap-gateway") as stack:
            (directory / "directory-ca.pem").write_bytes((slapd_dir / "ca.pem").read_bytes())
            target = directory_target(
                slapd, ca_file="directory-ca.pem", password_file="directory-password"
            )
            document = stack.gateway_document({"directory": target})
            document["observability"] = {"enabled": False}
            config = stack.write_gateway_dir(directory, document=document)
            await stack.register_gateway(directory)
            relayed: list[bytes] = []
            stack.relay.stream_tap = relayed.append
            log = directory / "gateway.log"
            async with (
                gateway_run(stack, config, log=log),
                stack.saas() as saas,
                saas.ldap_endpoint("directory") as port,
            ):
                yield Env(stack, slapd, directory, port, relayed)


async def test_allowed_paged_search(env: Env) -> None:
    before = len(env.ldap_records())

    def work() -> list[str]:
        connection = env.connect()
        entries = connection.extend.standard.paged_search(
            f"ou=People,{SUFFIX}",
            "(objectClass=inetOrgPerson)",
            attributes=["uid", "mail"],
            paged_size=2,
            generator=False,
        )
        connection.unbind()
        return sorted(str(entry["attributes"]["uid"][0]) for entry in entries)

    assert await in_thread(work) == ["user0", "user1", "user2"]
    records = (await _wait_for_records(env, before + 4))[before:]
    searches = [r for r in records if r["input"]["operation"] == "search"]
    assert [(r["result"], r["operation"], r["ldap"]["result_code"]) for r in searches] == [
        ("allowed", "inventory-search", 0),
        ("allowed", "inventory-search", 0),
    ]
    assert [r["ldap"]["entries"] for r in searches] == [2, 1]
    assert searches[0]["input"]["controls"] == ["1.2.840.113556.1.4.319"]
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    for record in records:
        validator.validate(record)


async def test_denied_modify_then_allowed_on_the_same_connection(env: Env) -> None:
    before = len(env.operations("MOD"))

    def work() -> tuple[dict[str, Any], dict[str, Any]]:
        connection = env.connect()
        change = {"member": [(MODIFY_ADD, [f"uid=user2,ou=People,{SUFFIX}"])]}
        connection.modify(PROTECTED_GROUP, change)
        denied = dict(connection.result)
        connection.modify(MANAGED_GROUP, change)
        allowed = dict(connection.result)
        connection.unbind()
        return denied, allowed

    denied, allowed = await in_thread(work)
    assert (denied["result"], denied["message"]) == (50, "ldap_never_reachable")
    assert allowed["result"] == 0, allowed
    modifies = env.operations("MOD")[before:]
    assert len(modifies) == 1
    assert "cn=Helpdesk" in modifies[0]


async def test_the_laps_attribute_is_stripped(env: Env) -> None:
    def work() -> dict[str, Any]:
        connection = env.connect()
        connection.search(LAPS_COMPUTER, "(objectClass=*)", attributes=["*"])
        [entry] = connection.response
        connection.unbind()
        return dict(entry["attributes"])

    before = len(env.ldap_records())
    attributes = await in_thread(work)
    assert attributes["cn"] == ["ws01"]
    assert not {name.lower() for name in attributes} & {"ms-mcs-admpwd"}
    records = await _wait_for_records(env, before + 3)  # bind, search, unbind
    search = next(
        r for r in reversed(records) if r["input"]["dn"] == LAPS_COMPUTER and r["ldap"]["entries"]
    )
    assert search["ldap"]["stripped"] == ["ms-mcs-admpwd"]


@pytest.mark.parametrize(
    "dn",
    [
        "CN=Domain Admins , OU=groups,DC=EXAMPLE,dc=com",
        "cn=Domain\\20Admins,ou=Groups,dc=example,dc=com",
        "2.5.4.3=Domain Admins,ou=Groups,dc=example,dc=com",
        "cn="
        + "".join(chr(ord(c) + 0xFEE0) for c in "Domain")
        + " Admins,ou=Groups,dc=example,dc=com",
        "cn=Domain Admins,ou=Groups,dc=example,dc=com\x00",
        "<GUID=0f6b2d1c-2e7a-4b3a-9c1d-7e6f5a4b3c2d>",
        f"cn=Helpdesk\\,cn=Domain Admins,ou=Groups,{SUFFIX}",
    ],
)
async def test_adversarial_dns_never_reach_the_directory(env: Env, dn: str) -> None:
    before = len(env.operations("MOD"))

    def work() -> dict[str, Any]:
        connection = env.connect()
        connection.modify(dn, {"member": [(MODIFY_REPLACE, [SERVICE_DN])]})
        result = dict(connection.result)
        connection.unbind()
        return result

    result = await in_thread(work)
    assert result["result"] == 50, result
    assert result["message"].startswith("ldap_"), result
    assert len(env.operations("MOD")) == before


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b"\x30\x84\x00\x20\x00\x00" + b"\x00" * 1024, "ldap-pdu-too-large", id="2MiB"),
        pytest.param(b"\x30\x03\x02\x02\x01", "ldap-malformed-pdu", id="truncated"),
        pytest.param(b"\x04\x03abc", "ldap-malformed-pdu", id="not-ldap"),
    ],
)
async def test_oversized_and_malformed_pdus(env: Env, data: bytes, reason: str) -> None:
    before = env.requests()
    pdus = await wire.exchange(env.port, data)
    [notice] = [decode_response(pdu) for pdu in pdus]
    assert (notice.message_id, notice.response_name) == (0, NOTICE_OF_DISCONNECTION)
    assert (notice.result_code, notice.diagnostic) == (2, reason)
    assert env.requests() == before


async def test_starttls_from_the_saas_is_refused(env: Env) -> None:
    before = len(env.operations("EXT"))
    answer = await wire.start_tls(env.port)
    assert (answer.kind, answer.result_code) == ("extendedResp", 50)
    assert answer.diagnostic.startswith("ldap_")
    assert len(env.operations("EXT")) == before


async def test_credential_injection(env: Env) -> None:
    binds_before = len(env.operations("BIND"))
    before = len(env.ldap_records())

    def work() -> str:
        connection = env.connect()
        whoami = connection.extend.standard.who_am_i()
        connection.unbind()
        return str(whoami)

    whoami = await in_thread(work)
    assert whoami.lower() == f"dn:{SERVICE_DN}".lower()
    binds = env.operations("BIND")[binds_before:]
    assert len(binds) == 1
    assert SERVICE_DN in binds[0]  # the directory saw the stored identity, not "inventory"
    records = await _wait_for_records(env, before + 3)  # bind, who am I, unbind
    record = next(r for r in reversed(records) if r["input"]["operation"] == "bind")
    assert (record["input"]["bind_name"], record["result"]) == (BIND_IDENTITY, "allowed")
    gateway_side = (env.directory / "decisions.jsonl").read_text() + (
        env.directory / "gateway.log"
    ).read_text(errors="replace")
    assert SERVICE_PASSWORD not in gateway_side
    assert "ignored-placeholder" not in gateway_side


async def test_a_bind_as_a_dn_the_policy_does_not_allow_is_refused(env: Env) -> None:
    before = len(env.operations("BIND"))

    def work() -> dict[str, Any]:
        server = Server("127.0.0.1", port=env.port, get_info=NONE)
        connection = Connection(server, SERVICE_DN, SERVICE_PASSWORD, receive_timeout=IO_TIMEOUT)
        connection.open()
        connection.bind()
        result = dict(connection.result)
        connection.unbind()
        return result

    result = await in_thread(work)
    assert result["result"] == 50, result
    assert len(env.operations("BIND")) == before


async def test_the_relay_saw_no_ldap_in_the_clear(env: Env) -> None:
    def work() -> list[str]:
        connection = env.connect()
        connection.search(f"ou=People,{SUFFIX}", "(uid=user0)", attributes=["mail"])
        mails = [str(entry["attributes"]["mail"][0]) for entry in connection.response]
        connection.modify(MANAGED_GROUP, {"description": [(MODIFY_REPLACE, ["relay check"])]})
        connection.unbind()
        return mails

    assert await in_thread(work) == ["user0@example.com"]
    # Everything the relay carried in this module: binds (the identity's name, a placeholder
    # password), searches, modifies, and the directory's answers.
    assert env.relayed, "the tap saw no stream traffic"
    wire = b"".join(env.relayed)
    for plaintext in (
        SERVICE_PASSWORD,
        "ignored-placeholder",
        BIND_IDENTITY,
        SERVICE_DN,
        "cn=Helpdesk",
        "user0@example.com",
        "laps-secret-ws01",
        "objectClass",
        "relay check",
    ):
        assert plaintext.encode() not in wire, plaintext
