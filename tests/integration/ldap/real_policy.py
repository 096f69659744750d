"""The proxy's ``decide`` seam over a real ``LdapChain`` (embedded engine, shipped Rego), for an
LDAP target on the test slapd bound through the ``inventory`` identity (credential injection)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.ldap.codec import Request
from gateway.ldap.decide import LdapChain, LdapFacts, LdapVerdict
from gateway.ldap.proxy import BindIdentity
from tests.unit.ldap.directory_config import embedded_chain, load_directory

from ..slapd import SERVICE_DN, SERVICE_PASSWORD
from .conftest import TlsDirectory
from .test_proxy import Policy

_CONFIG = """\
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
{ldap}      operations:
        - {{{{name: bind, kinds: [bind], bind_as: [inventory]}}}}
{rules}"""


class RealPolicy(Policy):
    """Every call decided by ``chain``, as the proxy's seam in ``gateway run`` decides it."""

    chain: LdapChain

    async def __call__(  # type: ignore[override]
        self, request: Request, bound_as: str | None, injected: bool
    ) -> LdapVerdict:
        self.calls.append((request, bound_as, injected))
        return await self.chain.decide(
            LdapFacts("directory", request, bound_as, injected, None, True)
        )


def real_policy(
    directory: TlsDirectory, tmp_path: Path, *, rules: str, ldap: str = ""
) -> RealPolicy:
    """The policy of target ``directory`` on ``directory``'s ldaps port: ``ldap`` holds more
    lines of its ``ldap:`` section (six spaces in), ``rules`` its operations after the bind rule
    (eight spaces in)."""
    text = _CONFIG.format(
        port=directory.slapd.ldaps_port,
        service=SERVICE_DN,
        # load_directory formats the text once more: braces in them are doubled for it.
        ldap=ldap.replace("{", "{{").replace("}", "}}"),
        rules=rules.replace("{", "{{").replace("}", "}}"),
    )
    policy = RealPolicy()
    policy.chain = embedded_chain(load_directory(tmp_path, text))
    return policy


def inventory(monkeypatch: pytest.MonkeyPatch) -> dict[str, BindIdentity]:
    """The ``inventory`` bind identity, its password where the configuration reads it."""
    monkeypatch.setenv("DIRECTORY_PASSWORD", SERVICE_PASSWORD)
    return {"inventory": BindIdentity("inventory", SERVICE_DN, SERVICE_PASSWORD.encode)}
