"""LDAP decision cost: what ``LdapChain.decide`` spends per operation, in its two parts.

For the operations of the example Active Directory target (gateway.yaml.example): building the
policy input (``policy_document``: DN parsing and RFC 4518 preparation, attribute
normalisation), the embedded engine's evaluation without a cache (every operation different:
the message id does not count, so distinct DNs are used), and the whole ``decide`` on a warm
cache (the same operation again, as a paged search's next page is). Figures are the thread's CPU
time per operation, p50 over the run, on one core: a shared machine disturbs CPU time less than
wall time. Last, what the LDAP rules cost the HTTP decision: a cold HTTP decision with the policy
as shipped, and with the same policy cut before its LDAP section.

Run: ``.venv/bin/python benchmarks/bench_ldap_policy.py [--operations N]``
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import functools
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from gateway.config import LoadedConfig, load
from gateway.forward.canonical import canonicalise
from gateway.ldap.codec import Change, Control, Operation, Request
from gateway.ldap.decide import LdapChain, LdapFacts, policy_document
from gateway.ldap.filters import parse_filter
from gateway.policy.embedded import EmbeddedEngine
from gateway.policy.input import build_input
from gateway.policy.loader import build_engine, load_policies

ROOT = Path(__file__).parents[1]
PAGED = Control("1.2.840.113556.1.4.319", True)


def _search(index: int) -> Request:
    return Request(
        index + 1,
        Operation.SEARCH,
        dn=f"OU=Site {index},OU=Employees,DC=corp,DC=example",
        scope="sub",
        filter=parse_filter("(&(objectClass=user)(|(sAMAccountName=a*)(mail=a*)))"),
        attributes=("cn", "sAMAccountName", "memberOf", "userAccountControl", "lockoutTime"),
        controls=(PAGED,),
    )


def _modify(index: int) -> Request:
    return Request(
        index + 1,
        Operation.MODIFY,
        dn=f"CN=Group {index},OU=Managed Groups,DC=corp,DC=example",
        changes=(Change("add", "member", 1),),
    )


def _bind(index: int) -> Request:
    return Request(index + 1, Operation.BIND, dn="empowerid", version=3, auth_method="simple")


OPERATIONS: dict[str, Callable[[int], Request]] = {
    "search (5 attributes, 4-term filter, paged)": _search,
    "modify (add member)": _modify,
    "bind (injected identity)": _bind,
}


def _cpu_us(function: Callable[[], object]) -> float:
    started = time.thread_time_ns()
    function()
    return (time.thread_time_ns() - started) / 1000


_LDAP_SECTION = "# LDAP operations (docs/ldap.md)."


def _http_costs(loaded: LoadedConfig, count: int) -> tuple[float, float]:
    """Cold HTTP decisions with the shipped policy and with it cut before the LDAP section."""
    policies = load_policies(loaded)
    shipped = policies.modules[0]
    cut = shipped.source[: shipped.source.index(_LDAP_SECTION)]
    # The decision's LDAP branch must still compile: it names a rule that is never defined.
    cut = cut.replace("decision := ldap_decision if {", "decision := data.none.decision if {")
    documents = [
        build_input(
            canonicalise(
                loaded.config,
                method="GET",
                target="erp",
                request_target=f"/api/accounts/{index}",
                headers=[("accept", "*/*")],
            ),
            signed=True,
            keyid="k",
        )
        for index in range(count)
    ]
    costs = []
    for module in (shipped, dataclasses.replace(shipped, source=cut)):
        engine = EmbeddedEngine(
            dataclasses.replace(policies, modules=(module,)), mode="enforce", cache=None
        )
        costs.append(
            statistics.median(_cpu_us(functools.partial(engine.evaluate, d)) for d in documents)
        )
    return costs[0], costs[1]


async def _cached(chain: LdapChain, facts: LdapFacts, count: int) -> list[float]:
    """CPU per ``decide`` of the same operation again (a cache hit after the first)."""
    await chain.decide(facts)
    out = []
    for _ in range(count):
        started = time.thread_time_ns()
        await chain.decide(facts)
        out.append((time.thread_time_ns() - started) / 1000)
    return out


def main() -> None:
    """Measure and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operations", type=int, default=2000)
    args = parser.parse_args()
    # The decision needs no secret: the example's bind identity password is not resolved.
    loaded = load(ROOT / "gateway.yaml.example", check_host=False)
    config = loaded.config
    cold = EmbeddedEngine(load_policies(loaded), mode="enforce", cache=None)
    warm = LdapChain(config, build_engine(loaded))
    rows = []
    for name, make in OPERATIONS.items():
        build: list[float] = []
        evaluate: list[float] = []
        for index in range(args.operations):
            facts = LdapFacts("directory", make(index), "empowerid", True, "k", True)
            if facts.request.operation is Operation.BIND:
                facts = LdapFacts("directory", facts.request, None, False, "k", True)
            document: dict[str, object] = {}

            def build_document(facts: LdapFacts = facts, out: dict[str, object] = document) -> None:
                out.update(policy_document(config, facts))

            build.append(_cpu_us(build_document))
            evaluate.append(_cpu_us(functools.partial(cold.evaluate, document)))
        same = LdapFacts("directory", make(0), "empowerid", True, "k", True)
        if same.request.operation is Operation.BIND:
            same = LdapFacts("directory", same.request, None, False, "k", True)
        cached = asyncio.run(_cached(warm, same, args.operations))
        rows.append(
            f"| {name} | {statistics.median(build):,.0f} | {statistics.median(evaluate):,.0f} "
            f"| {statistics.median(build) + statistics.median(evaluate):,.0f} "
            f"| {statistics.median(cached):,.0f} |"
        )
    http = _http_costs(loaded, args.operations)
    print(
        f"# LDAP decision cost ({datetime.date.today()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})"
    )
    print()
    print(f"{args.operations:,} operations of each kind; CPU us per operation, p50.")
    print()
    print("| operation | input (policy_document) | engine, cold | decide, cold | decide, cached |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print(row)
    print()
    print("| HTTP GET on erp, cold | policy as shipped | without its LDAP section |")
    print("| --- | --- | --- |")
    print(f"| CPU us per decision, p50 | {http[0]:,.0f} | {http[1]:,.0f} |")


if __name__ == "__main__":
    main()
