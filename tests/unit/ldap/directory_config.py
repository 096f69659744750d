"""A gateway.yaml with an Active Directory-style LDAP target, for the decision tests."""

from __future__ import annotations

from pathlib import Path

from gateway.config import LoadedConfig, load
from gateway.ldap.codec import Change, Control, Operation, Request
from gateway.ldap.decide import LdapChain, LdapFacts
from gateway.ldap.filters import parse_filter
from gateway.policy.loader import build_engine, load_policies
from gateway.policy.opa import OpaEngine

ROOT = Path(__file__).parents[3]

CONFIG = """\
version: 1
gateway:
  id: agent-1
empowerid:
  url: https://tenant.empowerid.example
policy:
  directories: ["{policies}"]
targets:
  erp:
    scheme: https
    host: erp.corp.local
    allowed_cidrs: [10.1.2.0/24]
    operations:
      - {{name: read, methods: [GET], paths: [/api/*]}}
  directory:
    scheme: ldaps
    host: dc01.corp.example
    allowed_cidrs: [10.1.3.0/24]
    ldap:
      bind_identities:
        empowerid:
          dn: "CN=svc-empowerid,OU=Service Accounts,DC=corp,DC=example"
          password: {{env: DIRECTORY_PASSWORD}}
        helpdesk:
          dn: "CN=svc-helpdesk,OU=Service Accounts,DC=corp,DC=example"
          password: {{env: HELPDESK_PASSWORD}}
      controls: ["1.2.840.113556.1.4.801"]
      extended_operations: ["1.3.6.1.4.1.4203.1.11.3"]
      never_reachable:
        - "OU=Tier0,DC=corp,DC=example"
        - "CN=Domain Admins,CN=Users,DC=corp,DC=example"
      operations:
        - name: bind-service
          kinds: [bind]
          bind_as: [empowerid, helpdesk, "CN=reader,OU=Service Accounts,DC=corp,DC=example",
                    "reader@corp.example"]
        - name: inventory
          kinds: [search]
          subtrees: ["DC=corp,DC=example"]
          scopes: [base, one, sub]
          attributes: [cn, sAMAccountName, member, memberOf, objectClass, lockoutTime]
          max_size_limit: 1000
          bind_as: [empowerid, "reader@corp.example",
                    "CN=reader,OU=Service Accounts,DC=corp,DC=example"]
        - name: group-membership
          kinds: [modify]
          subtrees: ["OU=Managed Groups,DC=corp,DC=example"]
          attributes: [member]
          change_types: [add, delete]
          bind_as: [empowerid]
        - name: password-reset
          kinds: [modify]
          subtrees: ["OU=Employees,DC=corp,DC=example"]
          attributes: [unicodePwd, lockoutTime, pwdLastSet]
          change_types: [replace]
          bind_as: [helpdesk]
        - name: create-accounts
          kinds: [add]
          subtrees: ["OU=New Hires,OU=Employees,DC=corp,DC=example"]
          attributes: [objectClass, cn, sAMAccountName, userPrincipalName, unicodePwd]
          bind_as: [empowerid]
        - name: move-leavers
          kinds: [modify_dn, delete]
          subtrees: ["OU=Employees,DC=corp,DC=example"]
          new_superiors: ["OU=Leavers,DC=corp,DC=example"]
          bind_as: [empowerid]
        - name: check-password
          kinds: [compare]
          subtrees: ["OU=Employees,DC=corp,DC=example"]
          attributes: [cn]
          bind_as: [empowerid]
        - name: whoami
          kinds: [extended]
          bind_as: [empowerid]
"""

BASE = "DC=corp,DC=example"
GROUP = "CN=Sales,OU=Managed Groups,DC=corp,DC=example"
EMPLOYEE = "CN=Ann Lee,OU=Employees,DC=corp,DC=example"
PAGED = "1.2.840.113556.1.4.319"


def load_directory(tmp_path: Path, text: str = CONFIG) -> LoadedConfig:
    """Write and load the configuration, with the shipped policies."""
    path = tmp_path / "gateway.yaml"
    path.write_text(text.format(policies=ROOT / "policies"), encoding="utf-8")
    return load(path, check_host=False)


def embedded_chain(loaded: LoadedConfig) -> LdapChain:
    """An ``LdapChain`` over the embedded engine, as ``gateway run`` builds it."""
    return LdapChain(loaded.config, build_engine(loaded))


def unreachable_opa(loaded: LoadedConfig, port: int) -> OpaEngine:
    """A real OPA engine whose server is not there (``port`` refuses connections, e.g. the
    ``refused_port`` fixture): it cannot decide (close it after use)."""
    return OpaEngine(
        load_policies(loaded),
        url=f"http://127.0.0.1:{port}",
        timeout=0.25,
        mode="enforce",
        cache=None,
        sync_timeout=0.25,
        retry_base=0.01,
        retry_cap=0.02,
    )


def facts(
    request: Request,
    *,
    bound: str | None = "empowerid",
    injected: bool = True,
    inner_tls: bool = True,
    target: str = "directory",
) -> LdapFacts:
    """The facts of ``request`` on a stream bound as ``bound``."""
    return LdapFacts(target, request, bound, injected, "key-1", inner_tls)


def search(
    base: str = BASE,
    *,
    scope: str = "sub",
    attributes: tuple[str, ...] = ("cn", "member"),
    filter: str = "(objectClass=user)",
    size_limit: int = 500,
    time_limit: int = 0,
    controls: tuple[Control, ...] = (),
) -> Request:
    """A search request as the codec decodes it."""
    return Request(
        1,
        Operation.SEARCH,
        dn=base,
        scope=scope,
        attributes=attributes,
        filter=parse_filter(filter),
        size_limit=size_limit,
        time_limit=time_limit,
        controls=controls,
    )


def modify(dn: str, *changes: tuple[str, str]) -> Request:
    """A modify request of (change type, attribute) pairs."""
    return Request(
        2,
        Operation.MODIFY,
        dn=dn,
        changes=tuple(Change(kind, attribute, 1) for kind, attribute in changes),
    )


def bind(name: str, password: bytes = b"", *, mechanism: str = "") -> Request:
    """A simple bind, or a SASL bind when ``mechanism`` is given."""
    if mechanism:
        return Request(
            3, Operation.BIND, dn=name, version=3, auth_method="sasl", sasl_mechanism=mechanism
        )
    return Request(
        3, Operation.BIND, dn=name, version=3, auth_method="simple", credentials=password
    )
