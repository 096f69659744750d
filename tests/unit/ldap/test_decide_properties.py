"""Subtree matching in the policy, property-tested with adversarial DNs (hypothesis).

The oracle is ``Dn.within`` (itself tested against RDN suffixes in test_dn.py). Whatever the
spelling (case, spaces around separators, hex escapes, escaped commas, multi-valued RDNs, OID
attribute types, full-width letters), the Rego policy must place an entry exactly where
``Dn.within`` does: the configured subtree goes through gateway/policy/data.py, the request's
DN through gateway/ldap/policy_input.py, and the prefix test is the policy's own.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ldap.codec import Operation, Request
from gateway.ldap.decide import LdapChain
from gateway.ldap.dn import DEFAULT_RULES, Dn
from gateway.ldap.errors import DnError
from gateway.ldap.policy_input import dn_path, subtree_path
from gateway.policy.embedded import new_interpreter
from gateway.policy.loader import load_policies
from tests.unit.ldap.directory_config import embedded_chain, facts, load_directory, search
from tests.unit.ldap.dn_strategies import dns, render

# Tens of seconds: started first in a parallel run (tests/conftest.py).
pytestmark = pytest.mark.slow

TIER0 = Dn.parse("OU=Tier0,DC=corp,DC=example")

# Spellings of OU=Tier0 and of things that only look like it.
_TIER0_RDNS = st.sampled_from(
    [
        "OU=Tier0",
        "ou=tier0",
        " ou = TIER0 ",
        "2.5.4.11=Tier0",
        "organizationalUnitName=Tier0",
        "OU=\uff34\uff49\uff45\uff52\uff10",
        "OU=Tier\\30",
        "OU=\\54ier0",
        "OU=#13055469657230",
        "OU=Tier\u00ad0",
        "OU=\\ Tier0\\ ",
        # look-alikes: not OU=Tier0
        "OU=Tier0\\,x",
        "OU=Tier0+CN=x",
        "OU=Tier00",
        "CN=Tier0",
        "OU=Tier 0",
        "OU=xTier0",
    ]
)
_BASES = st.sampled_from(
    [
        "DC=corp,DC=example",
        "dc=CORP, dc=Example",
        "0.9.2342.19200300.100.1.25=corp,domainComponent=example",
        "DC=c\\6frp,DC=example",
        "DC=evilcorp,DC=example",
    ]
)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> LdapChain:
    return embedded_chain(load_directory(tmp_path_factory.mktemp("directory")))


def _placed(text: str) -> Dn | None:
    try:
        return Dn.parse(text)
    except DnError:
        return None


@settings(max_examples=300, deadline=None)
@given(
    dns | st.just([]),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    _TIER0_RDNS,
    _BASES,
)
def test_never_reachable_is_decided_by_rdn_sequence(
    chain: LdapChain,
    below: list[list[tuple[str, str]]],
    spaced: bool,
    upper: bool,
    hexed: bool,
    tier0: str,
    base: str,
) -> None:
    prefix = render(below, spaced, upper, hexed) if below else ""
    entry = ",".join(part for part in (prefix, tier0, base) if part)
    parsed = _placed(entry)
    verdict = asyncio.run(chain.decide(facts(search(entry, attributes=("cn",)))))
    if parsed is None:
        # The core refuses what it cannot compare; the policy is never asked.
        assert not verdict.allowed
        assert verdict.reasons[0].startswith("ldap_dn_")
        return
    inside = parsed.within(TIER0)
    in_domain = parsed.within(Dn.parse("DC=corp,DC=example"))
    if inside:
        assert verdict.reasons == ("ldap_never_reachable",), entry
    elif in_domain:
        assert verdict.allowed, (entry, verdict.reasons)
        # An allowed search above Tier0 hides it; one beside it hides nothing of it.
        assert verdict.hides("CN=x,OU=Tier0,DC=corp,DC=example") is TIER0.within(parsed)
    else:
        assert verdict.reasons == ("ldap_subtree_not_granted",), entry


@pytest.fixture(scope="module")
def interpreter(tmp_path_factory: pytest.TempPathFactory) -> object:
    loaded = load_directory(tmp_path_factory.mktemp("rego"))
    return new_interpreter(load_policies(loaded).modules, {})


def _rego_within(interpreter: object, path: list[str] | None, subtree: list[str]) -> bool:
    interpreter.set_input_term(json.dumps({"path": path, "subtree": subtree}))  # type: ignore[attr-defined]
    output = interpreter.query(  # type: ignore[attr-defined]
        "x := data.gateway.authz.ldap_within(input.path, input.subtree)"
    )
    return bool(output.results) and output.results[0].bindings.get("x") is True


@settings(max_examples=300, deadline=None)
@given(dns, dns, st.booleans(), st.booleans(), st.booleans(), st.booleans())
def test_policy_prefix_test_agrees_with_dn_within(
    interpreter: object,
    left: list[list[tuple[str, str]]],
    right: list[list[tuple[str, str]]],
    joined: bool,
    spaced: bool,
    upper: bool,
    hexed: bool,
) -> None:
    # The subtree as a reviewer writes it in gateway.yaml; the entry as a client spells it.
    subtree_text = render(right, False, False, False)
    entry_rdns = left + right if joined else left
    entry_text = render(entry_rdns, spaced, upper, hexed)
    subtree = _placed(subtree_text)
    entry = _placed(entry_text)
    if subtree is None or entry is None:
        return
    expected = entry.within(subtree)
    got = _rego_within(
        interpreter, dn_path(Dn.parse(entry_text)), subtree_path(subtree_text, DEFAULT_RULES)
    )
    assert got is expected, (entry_text, subtree_text)
    if joined:
        assert got


def test_extended_dns_are_placed_under_the_root_only(interpreter: object) -> None:
    assert _rego_within(interpreter, None, [])
    assert not _rego_within(interpreter, None, ["0.9.2342.19200300.100.1.25=example"])


@pytest.mark.asyncio
async def test_allowed_guid_dn_is_refused_while_subtrees_are_protected(tmp_path: Path) -> None:
    text = load_directory.__defaults__[0].replace(  # type: ignore[index]
        "    ldap:\n      bind_identities:",
        "    ldap:\n      allow_extended_dn: true\n      bind_identities:",
    )
    chain = embedded_chain(load_directory(tmp_path, text))
    guid = "<GUID=0123456789abcdef0123456789abcdef>"
    verdict = await chain.decide(facts(search(guid, attributes=("cn",))))
    assert verdict.reasons == ("ldap_dn_extended_refused",)
    delete = await chain.decide(facts(Request(2, Operation.DELETE, dn=guid)))
    assert delete.reasons == ("ldap_dn_extended_refused",)
