"""The Active Directory target of gateway.yaml.example grants the identity-management work it
is written for and nothing more, and the review commands of docs/ldap.md answer as printed."""

from __future__ import annotations

import re
import shlex

import pytest

from gateway.cli import main
from gateway.config import load
from gateway.ldap.codec import Change, Control, Operation, Request
from gateway.ldap.decide import LdapChain
from gateway.policy.loader import build_engine
from tests.unit.ldap.directory_config import ROOT, facts, search

EXAMPLE = ROOT / "gateway.yaml.example"
DOC = ROOT / "docs" / "ldap.md"
PAGED = "1.2.840.113556.1.4.319"
EMPLOYEE = "CN=Ann Lee,OU=Employees,DC=corp,DC=example"
GROUP = "CN=Sales,OU=Managed Groups,DC=corp,DC=example"


@pytest.fixture(scope="module")
def chain() -> LdapChain:
    loaded = load(EXAMPLE, check_host=False)
    return LdapChain(loaded.config, build_engine(loaded))


def _modify(dn: str, *changes: tuple[str, str]) -> Request:
    return Request(2, Operation.MODIFY, dn=dn, changes=tuple(Change(k, a, 1) for k, a in changes))


CASES = [
    # inventory: the whole domain, page by page (sizeLimit 0 with paged results), named attributes
    (search(size_limit=0, controls=(Control(PAGED, True),), attributes=("cn", "memberOf")), True),
    (search(attributes=("*",)), False),
    (search(attributes=("cn", "ms-Mcs-AdmPwd")), False),
    (search(attributes=("cn",), filter="(msLAPS-Password=*)"), False),
    (search("OU=Servers,OU=Tier0,DC=corp,DC=example", attributes=("cn",)), False),
    (search("OU=Domain Controllers,DC=corp,DC=example", attributes=("cn",)), False),
    (search(attributes=("cn",), controls=(Control("1.2.840.113556.1.4.417", True),)), False),
    # group membership under Managed Groups: add and delete of member, nothing else
    (_modify(GROUP, ("add", "member"), ("delete", "member")), True),
    (_modify(GROUP, ("replace", "member")), False),
    (_modify(GROUP, ("add", "managedBy")), False),
    (_modify("CN=Domain Admins,CN=Users,DC=corp,DC=example", ("add", "member")), False),
    (_modify("CN=Helpdesk,OU=Groups,DC=corp,DC=example", ("add", "member")), False),
    # password reset and unlock under Employees: replace only (a user's own change is not a reset)
    (_modify(EMPLOYEE, ("replace", "unicodePwd"), ("replace", "pwdLastSet")), True),
    (_modify(EMPLOYEE, ("replace", "lockoutTime")), True),
    (_modify(EMPLOYEE, ("delete", "unicodePwd"), ("add", "unicodePwd")), False),
    (_modify(EMPLOYEE, ("replace", "userAccountControl")), False),
    (_modify("CN=admin,OU=Tier0,DC=corp,DC=example", ("replace", "unicodePwd")), False),
    # account creation in New Hires only
    (
        Request(
            3,
            Operation.ADD,
            dn="CN=New,OU=New Hires,OU=Employees,DC=corp,DC=example",
            attributes=("objectClass", "cn", "sAMAccountName", "unicodePwd"),
        ),
        True,
    ),
    (
        Request(
            3,
            Operation.ADD,
            dn="CN=New,OU=Employees,DC=corp,DC=example",
            attributes=("objectClass", "cn"),
        ),
        False,
    ),
    (
        Request(
            3,
            Operation.ADD,
            dn="CN=New,OU=New Hires,OU=Employees,DC=corp,DC=example",
            attributes=("cn", "nTSecurityDescriptor"),
        ),
        False,
    ),
    # nothing is deleted, moved or compared; no extended operation
    (Request(4, Operation.DELETE, dn=EMPLOYEE), False),
    (
        Request(
            4,
            Operation.MODIFY_DN,
            dn=EMPLOYEE,
            new_rdn="CN=Ann Lee",
            new_superior="OU=Managed Groups,DC=corp,DC=example",
        ),
        False,
    ),
    (Request(4, Operation.COMPARE, dn=EMPLOYEE, attributes=("cn",)), False),
    (Request(4, Operation.EXTENDED, request_name="1.3.6.1.4.1.4203.1.11.1"), False),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("request_", "allowed"), CASES)
async def test_least_privilege(chain: LdapChain, request_: Request, allowed: bool) -> None:
    verdict = await chain.decide(facts(request_, target="directory"))
    assert verdict.allowed is allowed, verdict.reasons


@pytest.mark.asyncio
async def test_inventory_hides_tier0_and_strips_laps(chain: LdapChain) -> None:
    verdict = await chain.decide(facts(search(attributes=("cn",)), target="directory"))
    assert verdict.allowed
    assert verdict.hides("CN=Domain Admins,CN=Users,DC=corp,DC=example")
    assert verdict.hides("CN=dc01,OU=Domain Controllers,DC=corp,DC=example")
    assert not verdict.hides("CN=Domain Users,CN=Users,DC=corp,DC=example")
    for laps in ("ms-Mcs-AdmPwd", "msLAPS-Password", "msLAPS-EncryptedPassword", "unicodePwd"):
        assert verdict.strips(laps)


def _documented() -> list[tuple[list[str], list[str]]]:
    """Each ``$ gateway explain`` of docs/ldap.md with the lines printed under it."""
    text = DOC.read_text(encoding="utf-8")
    commands: list[tuple[list[str], list[str]]] = []
    for block in re.finditer(r"```console\n(.*?)```", text, re.DOTALL):
        for line in block.group(1).splitlines():
            line = line.strip()
            if line.startswith("$ "):
                commands.append((shlex.split(line[2:]), []))
            elif line:
                commands[-1][1].append(line)
    return commands


def test_the_documented_review_commands_answer_as_printed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    documented = _documented()
    assert len(documented) >= 5
    for argv, printed in documented:
        assert argv[:4] == ["gateway", "explain", "-c", "gateway.yaml"]
        code = main(["explain", "-c", str(EXAMPLE), *argv[4:]])
        out = capsys.readouterr().out
        for expected in printed:
            assert expected in out, (argv, out)
        assert code == (0 if "decision:  ALLOW" in out else 3)
