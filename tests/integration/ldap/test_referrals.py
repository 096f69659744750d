"""Referrals, continuation references and matchedDN through the proxy, against a real slapd.

A rule grants searches and modifies under ``ou=Managed Groups``; ``cn=Secret`` below it is never
reachable. slapd's referral objects (RFC 4511 4.5.3, 4.1.10) answer with LDAP URLs naming
another server, the target itself outside the grant, the never-reachable subtree, and the target
within the grant: only the last may reach the SaaS. An alias to ``ou=People`` makes slapd name
``ou=People`` as a noSuchObject's matchedDN (4.1.9); the SaaS must not learn it. Its own slapd
(the referral objects change what other modules' searches see).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from ldap3 import BASE, DEREF_BASE, DEREF_NEVER, MODIFY_REPLACE, NONE, Connection, Server

from gateway.ldap.proxy import BindIdentity

from ..slapd import SERVICE_DN, SERVICE_PASSWORD, SUFFIX
from .conftest import TlsDirectory
from .real_policy import RealPolicy, inventory, real_policy
from .test_proxy import IO_TIMEOUT, serving

MANAGED = f"ou=Managed Groups,ou=Groups,{SUFFIX}"
MANAGED_URL = MANAGED.replace(" ", "%20")  # the ref attribute is "URI SP label" (RFC 2079)
HELPDESK = f"cn=Helpdesk,{MANAGED}"
SECRET = f"cn=Secret,{MANAGED}"
ELSEWHERE = f"ou=elsewhere,{MANAGED}"
AWAY = f"ou=away,{MANAGED}"
ALIAS = f"cn=ppl,{MANAGED}"

LDAP = f'      never_reachable: ["{SECRET}"]\n'
RULES = f"""\
        - name: managed-groups
          kinds: [search, modify]
          subtrees: ["{MANAGED}"]
          scopes: [base, one, sub]
          attributes: ["*", description]
          bind_as: [inventory]
"""


@pytest.fixture(scope="module")
def with_referrals(tls_directory: TlsDirectory) -> TlsDirectory:
    """The sample directory plus two referral objects and an alias under ou=Managed Groups."""
    port = tls_directory.slapd.ldaps_port
    server = Server("127.0.0.1", port=tls_directory.slapd.ldap_port, get_info=NONE)
    here = f"ldap://127.0.0.1:{port}"
    with Connection(server, SERVICE_DN, SERVICE_PASSWORD, auto_bind=True) as connection:
        for dn, classes, attributes in (
            (SECRET, ["organizationalRole"], {"cn": "Secret"}),
            (
                ELSEWHERE,
                ["referral", "extensibleObject"],
                {
                    "ou": "elsewhere",
                    "ref": [
                        f"ldap://other.example.net/ou=x,{SUFFIX}",
                        f"{here}/cn=Helpdesk,{MANAGED_URL}",
                    ],
                },
            ),
            (
                AWAY,
                ["referral", "extensibleObject"],
                {
                    "ou": "away",
                    "ref": [f"{here}/ou=People,{SUFFIX}", f"{here}/cn=Secret,{MANAGED_URL}"],
                },
            ),
            (
                ALIAS,
                ["alias", "extensibleObject"],
                {"cn": "ppl", "aliasedObjectName": f"ou=People,{SUFFIX}"},
            ),
        ):
            assert connection.add(dn, classes, attributes), connection.result
    return tls_directory


def _policy(directory: TlsDirectory, tmp_path: Path) -> RealPolicy:
    return real_policy(directory, tmp_path, rules=RULES, ldap=LDAP)


def _client(port: int) -> Connection:
    server = Server("127.0.0.1", port=port, get_info=NONE)
    # auto_referrals off: the SaaS's client is shown what arrives, it does not chase it.
    return Connection(
        server,
        "inventory",
        "-",
        auto_bind=True,
        auto_referrals=False,
        receive_timeout=IO_TIMEOUT,
    )


@pytest.fixture
def identity(monkeypatch: pytest.MonkeyPatch) -> dict[str, BindIdentity]:
    return inventory(monkeypatch)


async def test_only_references_within_the_grant_to_the_target_itself_pass(
    with_referrals: TlsDirectory, tmp_path: Path, identity: dict[str, BindIdentity]
) -> None:
    policy = _policy(with_referrals, tmp_path)
    async with serving(with_referrals, policy, identity) as proxy:

        def work() -> list[Any]:
            connection = _client(proxy.port)
            connection.search(
                MANAGED, "(objectClass=*)", attributes=["cn"], dereference_aliases=DEREF_NEVER
            )
            assert connection.result["result"] == 0, connection.result
            references = [r["uri"] for r in connection.response if r["type"] == "searchResRef"]
            connection.unbind()
            return references

        references = await asyncio.to_thread(work)
    port = with_referrals.slapd.ldaps_port
    # ou=elsewhere's reference keeps the URL of the target within the grant; ou=away's two
    # (outside the grant, never reachable) and the other server's are withheld.
    assert references == [[f"ldap://127.0.0.1:{port}/cn=Helpdesk,{MANAGED_URL}??sub"]]
    search = next(o for o in proxy.outcomes if o.request.dn == MANAGED)
    assert search.referrals_withheld == 3
    assert search.result_code == 0


async def test_a_referral_result_keeps_only_what_the_grant_reaches(
    with_referrals: TlsDirectory, tmp_path: Path, identity: dict[str, BindIdentity]
) -> None:
    policy = _policy(with_referrals, tmp_path)
    async with serving(with_referrals, policy, identity) as proxy:

        def work() -> list[dict[str, Any]]:
            connection = _client(proxy.port)
            results = []
            for base in (f"cn=a,{ELSEWHERE}", f"cn=a,{AWAY}"):
                connection.search(base, "(objectClass=*)", dereference_aliases=DEREF_NEVER)
                results.append(dict(connection.result))
            connection.modify(f"cn=a,{AWAY}", {"description": [(MODIFY_REPLACE, ["x"])]})
            results.append(dict(connection.result))
            connection.unbind()
            return results

        elsewhere, away, modify = await asyncio.to_thread(work)
    port = with_referrals.slapd.ldaps_port
    # One URL of two is within the grant on the target itself: the referral stands without the
    # other server's name, in the URLs and in the diagnostic message.
    assert elsewhere["result"] == 10
    assert elsewhere["referrals"] == [
        f"ldap://127.0.0.1:{port}/cn=a,cn=Helpdesk,{MANAGED_URL}??sub"
    ]
    assert elsewhere["message"] == "ldap_referral_withheld"
    # None is: the operation was not performed, and the gateway will not say where it could be.
    for result in (away, modify):
        assert (result["result"], result["message"]) == (50, "ldap_referral_withheld")
        assert not result["referrals"]
        assert result["dn"] == ""
    records = {(str(o.request.operation), o.request.dn): o for o in proxy.outcomes}
    assert records[("search", f"cn=a,{AWAY}")].referrals_withheld == 2
    assert records[("search", f"cn=a,{AWAY}")].result_code == 50
    assert "ldap_referral_withheld" in records[("modify", f"cn=a,{AWAY}")].reasons


async def test_a_matched_dn_an_alias_led_to_is_withheld(
    with_referrals: TlsDirectory, tmp_path: Path, identity: dict[str, BindIdentity]
) -> None:
    policy = _policy(with_referrals, tmp_path)
    async with serving(with_referrals, policy, identity) as proxy:

        def work() -> list[dict[str, Any]]:
            connection = _client(proxy.port)
            results = []
            for base in (f"uid=nobody,{ALIAS}", f"cn=nobody,cn=nothing,{MANAGED}"):
                connection.search(
                    base, "(objectClass=*)", search_scope=BASE, dereference_aliases=DEREF_BASE
                )
                results.append(dict(connection.result))
            connection.unbind()
            return results

        through_alias, plain = await asyncio.to_thread(work)
    # slapd names ou=People, where the alias led: outside the grant, so the SaaS gets none.
    assert (through_alias["result"], through_alias["dn"]) == (32, "")
    assert through_alias["message"] == "ldap_matched_dn_withheld"
    # A superior of the base the SaaS named itself passes as the directory sent it.
    assert (plain["result"], plain["dn"]) == (32, MANAGED)
    alias_search = next(o for o in proxy.outcomes if o.request.dn == f"uid=nobody,{ALIAS}")
    assert alias_search.matched_dn_withheld
    assert "ldap_matched_dn_withheld" in alias_search.reasons
