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

from gateway.ldap.codec import Request
from gateway.ldap.decide import LdapChain, LdapFacts, LdapVerdict
from gateway.ldap.proxy import BindIdentity
from tests.unit.ldap.directory_config import embedded_chain, load_directory

from ..slapd import SERVICE_DN, SERVICE_PASSWORD, SUFFIX
from .conftest import TlsDirectory
from .test_proxy import IO_TIMEOUT, Policy, serving

MANAGED = f"ou=Managed Groups,ou=Groups,{SUFFIX}"
ALIAS = f"cn=people,{MANAGED}"
PEOPLE = f"ou=People,{SUFFIX}"

CONFIG = """\
version: 1
gateway:
  id: agent-1
empowerid:
  url: https://tenant.empowerid.example
policy:
  directories: ["{{policies}}"]
targets:
  directory:
    scheme: ldaps
    host: 127.0.0.1
    port: {port}
    allow_special_addresses: true
    ldap:
      bind_identities:
        inventory:
          dn: "{service}"
          password: {{{{env: DIRECTORY_PASSWORD}}}}
      operations:
        - {{{{name: bind, kinds: [bind], bind_as: [inventory]}}}}
        - name: managed-groups
          kinds: [search]
          subtrees: ["{managed}"]
          scopes: [base, one, sub]
          attributes: ["*"]
          bind_as: [inventory]
"""


class RealPolicy(Policy):
    """The proxy's ``decide`` seam over a real ``LdapChain`` (embedded engine, shipped Rego)."""

    chain: LdapChain

    async def __call__(  # type: ignore[override]
        self, request: Request, bound_as: str | None, injected: bool
    ) -> LdapVerdict:
        self.calls.append((request, bound_as, injected))
        return await self.chain.decide(
            LdapFacts("directory", request, bound_as, injected, None, True)
        )


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


def _policy(directory: TlsDirectory, tmp_path: Path) -> RealPolicy:
    text = CONFIG.format(port=directory.slapd.ldaps_port, service=SERVICE_DN, managed=MANAGED)
    policy = RealPolicy()
    policy.chain = embedded_chain(load_directory(tmp_path, text))
    return policy


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
    monkeypatch.setenv("DIRECTORY_PASSWORD", SERVICE_PASSWORD)
    identity = BindIdentity("inventory", SERVICE_DN, SERVICE_PASSWORD.encode)
    async with serving(with_alias, _policy(with_alias, tmp_path), {"inventory": identity}) as proxy:

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
