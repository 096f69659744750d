"""CPU cost of the LDAP core per PDU: framing, decoding, policy input, entry stripping, answers.

The LDAP-aware target's goal is at most 150 us of gateway CPU per operation for the inspection.
This measures the sans-IO part of that budget (no sockets, no policy engine) so the codec's share
is known before the proxy exists: each figure is the median over ``--rounds`` batches of
``--batch`` calls, CPU time (``time.process_time``) per call.

    .venv/bin/python benchmarks/bench_ldap_codec.py [--rounds 15] [--batch 400]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.ldap import codec
from gateway.ldap.dn import MatchingRules
from gateway.ldap.policy_input import ldap_input
from tests.unit.ldap import pdus

PAGED = ("1.2.840.113556.1.4.319", False, b"\x30\x06\x02\x02\x03\xe8\x04\x00")


def _asn1crypto_cases(entry: bytes) -> list[tuple[str, Callable[[], object]]]:
    """The same entry read by asn1crypto, which parses lazily, if it is installed.

    Not a dependency: a candidate measured side by side, because reading only the attribute names
    of an entry is what deciding whether to strip it needs (see the report).
    """
    try:
        from asn1crypto import core
    except ImportError:
        return []

    class Vals(core.SetOf):  # type: ignore[misc]
        _child_spec = core.OctetString

    class PartialAttribute(core.Sequence):  # type: ignore[misc]
        _fields = [("type", core.OctetString), ("vals", Vals)]  # noqa: RUF012 - asn1crypto API

    class Attributes(core.SequenceOf):  # type: ignore[misc]
        _child_spec = PartialAttribute

    class Entry(core.Sequence):  # type: ignore[misc]
        _fields = [("objectName", core.OctetString), ("attributes", Attributes)]  # noqa: RUF012

    class ProtocolOp(core.Choice):  # type: ignore[misc]
        _alternatives = [("searchResEntry", Entry, {"implicit": ("application", 4)})]  # noqa: RUF012

    class Message(core.Sequence):  # type: ignore[misc]
        _fields = [("messageID", core.Integer), ("protocolOp", ProtocolOp)]  # noqa: RUF012

    def names() -> list[bytes]:
        message = Message.load(entry, strict=True)
        return [item["type"].native for item in message["protocolOp"].chosen["attributes"]]

    return [
        ("asn1crypto (candidate): entry attribute names only", names),
        ("asn1crypto (candidate): whole entry", lambda: Message.load(entry, strict=True).native),
    ]


def _cpu_per_call(function: Callable[[], object], rounds: int, batch: int) -> float:
    samples = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(batch):
            function()
        samples.append((time.process_time() - started) / batch)
    return statistics.median(samples) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=400)
    args = parser.parse_args()
    rules = MatchingRules()
    search = pdus.search(
        7,
        "OU=Staff,DC=corp,DC=example",
        "(&(objectCategory=person)(objectClass=user)(|(sAMAccountName=j*)(mail=j*)))",
        attributes=["cn", "sAMAccountName", "mail", "memberOf", "userAccountControl"],
        size_limit=1000,
        controls=[PAGED],
    )
    modify = pdus.modify(
        8,
        "CN=Helpdesk,OU=Managed Groups,DC=corp,DC=example",
        {"member": [("MODIFY_ADD", ["CN=Jane Doe,OU=Staff,DC=corp,DC=example"])]},
    )
    entry = pdus.search_entry(
        7,
        "CN=Jane Doe,OU=Staff,DC=corp,DC=example",
        {
            "cn": [b"Jane Doe"],
            "sAMAccountName": [b"jdoe"],
            "mail": [b"jane.doe@corp.example"],
            "memberOf": [f"CN=Group {n},OU=Groups,DC=corp,DC=example".encode() for n in range(8)],
            "userAccountControl": [b"512"],
            "description": [b"x" * 200],
        },
    )
    secret_entry = pdus.search_entry(
        7, "CN=PC1,OU=Computers,DC=corp,DC=example", {"cn": [b"PC1"], "ms-Mcs-AdmPwd": [b"pw"]}
    )
    search_request = codec.decode_request(search)
    never = frozenset({"ms-mcs-admpwd", "unicodepwd", "userpassword"})
    cases: list[tuple[str, Callable[[], object]]] = [
        (
            "frame + decode paged search request",
            lambda: codec.decode_request(search[: codec.pdu_length(search, 1 << 20)]),
        ),
        (
            "frame + decode modify request",
            lambda: codec.decode_request(modify[: codec.pdu_length(modify, 1 << 20)]),
        ),
        ("policy input of the search (DN prepared)", lambda: ldap_input(search_request, rules)),
        ("decode a 6-attribute search entry", lambda: codec.decode_response(entry)),
        (
            "strip check, nothing stripped (names only)",
            lambda: [
                name for name in codec.decode_response(entry).attributes if name.lower() in never
            ],
        ),
        (
            "strip ms-Mcs-AdmPwd from an entry (re-encode)",
            lambda: codec.strip_entry_attributes(secret_entry, lambda name: name.lower() in never),
        ),
        *_asn1crypto_cases(entry),
        (
            "encode a resultCode 50 answer",
            lambda: codec.encode_result(7, codec.Operation.MODIFY, 50, "denied: ldap-rule-none"),
        ),
    ]
    print(f"rounds={args.rounds} batch={args.batch} python={sys.version.split()[0]}")
    print("| step | CPU per call (median) |")
    print("| --- | --- |")
    for name, function in cases:
        print(f"| {name} | {_cpu_per_call(function, args.rounds, args.batch):.1f} us |")


if __name__ == "__main__":
    main()
