"""Alias dereferencing (RFC 4511 4.5.1.3) through the proxy, decided by the real policy.

A rule that grants searches under one OU grants the entries there. A search that dereferences
aliases (ldap3's default is derefAlways) reaches, through an alias inside that OU, entries the
rule does not cover; slapd follows it. The gateway must not return them: the policy judged the
base and scope, never the place the alias leads to. Its own slapd (the alias would change what the
other modules' searches see).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from ldap3 import DEREF_ALWAYS, DEREF_BASE, DEREF_NEVER, NONE, Connection, Server

from ..slapd import SERVICE_DN, SERVICE_PASSWORD, SUFFIX
from .conftest import TlsDirectory
from .real_policy import inventory, real_policy
from .test_proxy import IO_TIMEOUT, serving

MANAGED = f"ou=Managed Groups,ou=Groups,{SUFFIX}"
ALIAS = f"cn=people,{MANAGED}"
PEOPLE = f"ou=People,{SUFFIX}"

RULES = f"""\
        - name: managed-groups
          kinds: [search]
          subtrees: ["{MANAGED}"]
          scopes: [base, one, sub]
          attributes: ["*"]
          bind_as: [inventory]
"""


@pytest.fixture(scope="module")
def with_alias(tls_directory: TlsDirectory) -> TlsDirectory:
    """The sample directory plus an alias under ou=Managed Groups that leads to ou=People."""
    server = Server("127.0.0.1", port=tls_directory.slapd.ldap_port, get_info=NONE)
    with Connection(server, SERVICE_DN, SERVICE_PASSWORD, auto_bind=True) as connection:
        assert connection.add(
            ALIAS,
            ["alias", "extensibleObject"],
            {"cn": "people", "aliasedObjectName": PEOPLE},
        ), connection.result
    return tls_directory


@pytest.mark.parametrize(
    ("base", "deref"),
    [
        pytest.param(MANAGED, DEREF_ALWAYS, id="alias-below-the-base"),
        pytest.param(ALIAS, DEREF_BASE, id="alias-as-the-base"),
    ],
)
async def test_an_alias_does_not_lead_a_search_out_of_its_rule(
    with_alias: TlsDirectory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    base: str,
    deref: str,
) -> None:
    policy = real_policy(with_alias, tmp_path, rules=RULES)
    async with serving(with_alias, policy, inventory(monkeypatch)) as proxy:

        def work() -> tuple[list[str], list[str]]:
            server = Server("127.0.0.1", port=proxy.port, get_info=NONE)
            connection = Connection(
                server, "inventory", "-", auto_bind=True, receive_timeout=IO_TIMEOUT
            )
            names = []
            for dereference in (DEREF_NEVER, deref):
                connection.search(
                    base, "(objectClass=*)", attributes=["cn"], dereference_aliases=dereference
                )
                assert connection.result["result"] == 0, connection.result
                names.append(sorted(str(entry["dn"]).lower() for entry in connection.response))
            connection.unbind()
            return names[0], names[1]

        undereferenced, dereferenced = await asyncio.to_thread(work)
    # Without dereferencing the alias is an entry of the OU; with it, slapd returns the people
    # it leads to, which the rule does not grant: the gateway hides them.
    assert not [name for name in undereferenced + dereferenced if "ou=people" in name]
    searches = [o for o in proxy.outcomes if o.request.dn == base]
    assert searches[-1].hidden > 0
