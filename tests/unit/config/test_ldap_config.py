"""LDAP targets in gateway.yaml: the model, the semantic checks and what they tell the author."""

from __future__ import annotations

import textwrap

import pytest

from gateway import config as gwconfig
from gateway.config.model import GatewayConfig, Target
from gateway.errors import ConfigError, Problem
from gateway.policy.data import policy_data
from tests.unit.config.conftest import BASE, WriteConfig

DIRECTORY = """\
  directory:
    scheme: ldaps
    host: dc01.corp.example
    allowed_cidrs: [10.1.3.0/24]
    ldap:
      bind_identities:
        empowerid:
          dn: "CN=svc-empowerid,OU=Service Accounts,DC=corp,DC=example"
          password: {env: DIRECTORY_PASSWORD}
      never_reachable: ["OU=Tier0,DC=corp,DC=example"]
      operations:
        - {name: bind, kinds: [bind], bind_as: [empowerid]}
        - name: inventory
          kinds: [search]
          subtrees: ["DC=corp,DC=example"]
          attributes: [cn, member]
"""


def _problems(write_config: WriteConfig, text: str) -> list[Problem]:
    path = write_config(text)
    with pytest.raises(ConfigError) as caught:
        gwconfig.load(path, check_host=False)
    return caught.value.problems


def _codes(problems: list[Problem]) -> list[tuple[str, str]]:
    return [(p.code, p.path) for p in problems]


def _with(directory: str) -> str:
    return BASE + textwrap.indent(textwrap.dedent(directory), "  ")


def test_a_well_formed_ldap_target_loads(write_config: WriteConfig) -> None:
    loaded = gwconfig.load(write_config(BASE + DIRECTORY), check_host=False)
    target = loaded.config.targets["directory"]
    assert target.effective_port == 636
    assert target.stream_only
    assert target.ldap is not None
    assert "ms-mcs-admpwd" in target.ldap.never_returned


def test_default_ports() -> None:
    def port(scheme: str) -> int:
        return Target.model_validate({"scheme": scheme, "host": "h"}).effective_port

    assert (port("ldaps"), port("ldap"), port("https"), port("http")) == (636, 389, 443, 80)


def test_ldap_section_required_and_http_operations_refused(write_config: WriteConfig) -> None:
    problems = _problems(
        write_config,
        _with("""\
            directory:
              scheme: ldap
              host: 10.1.3.10
              operations: [{name: x, methods: [GET], paths: [/]}]
              credential: nope
            """),
    )
    assert ("missing_key", "targets.directory") in _codes(problems)
    assert ("unused_setting", "targets.directory.operations") in _codes(problems)
    assert ("unused_setting", "targets.directory.credential") in _codes(problems)
    missing = next(p for p in problems if p.code == "missing_key")
    assert "needs an 'ldap' section" in missing.message


def test_ldap_section_refused_on_other_schemes(write_config: WriteConfig) -> None:
    problems = _problems(
        write_config,
        _with("""\
            files:
              scheme: tcp
              host: 10.1.3.10
              port: 445
              ldap: {operations: []}
            """),
    )
    assert ("unused_setting", "targets.files.ldap") in _codes(problems)


def test_rule_problems_say_what_to_fix(write_config: WriteConfig) -> None:
    problems = _problems(
        write_config,
        _with("""\
            directory:
              scheme: ldaps
              host: 10.1.3.10
              ldap:
                bind_identities:
                  empowerid: {dn: "CN=svc,DC=corp,DC=example", password: {env: PW}}
                  tier0: {dn: "CN=admin,OU=Tier0,DC=corp,DC=example", password: {env: PW}}
                sasl_mechanisms: [EXTERNAL, GSSAPI]
                controls: ["1.2.840.113556.1.4.319", "2.16.840.1.113730.3.4.18"]
                extended_operations: ["1.3.6.1.4.1.1466.20037"]
                never_reachable: ["OU=Tier0,DC=corp,DC=example", ""]
                operations:
                  - {name: bind, kinds: [bind], bind_as: [empowrid]}
                  - {name: read, kinds: [search]}
                  - {name: read, kinds: [modify], subtrees: ["OU=Tier0,DC=corp,DC=example"],
                     attributes: [member], scopes: [sub]}
                  - {name: odd, kinds: [delete], subtrees: ["<GUID=0011>", "OU=a;b", "1.2.3.4=x"]}
                  - {name: ext, kinds: [extended], subtrees: ["DC=corp,DC=example"]}
            """),
    )
    by_path = {p.path: p for p in problems}
    at = "targets.directory.ldap"
    assert by_path[f"{at}.sasl_mechanisms[1]"].code == "insecure_setting"
    assert by_path[f"{at}.extended_operations[0]"].code == "forbidden_setting"
    assert by_path[f"{at}.controls[1]"].code == "forbidden_setting"
    assert by_path[f"{at}.bind_identities.tier0.dn"].code == "unreachable_identity"
    assert f"{at}.bind_identities.empowerid.dn" not in by_path
    assert f"{at}.controls[0]" not in by_path
    assert by_path[f"{at}.never_reachable[1]"].code == "conflicting_settings"
    unknown = by_path[f"{at}.operations[0].bind_as[0]"]
    assert (unknown.code, unknown.hint) == ("unknown_bind_identity", "did you mean 'empowerid'?")
    read = [p for p in problems if p.path == f"{at}.operations[1]"]
    assert sorted(p.message for p in read) == [
        "a rule for search must list the attributes it may read or change",
        "a rule for search must say where: list its subtrees",
    ]
    assert by_path[f"{at}.operations[2].name"].code == "duplicate_operation"
    assert by_path[f"{at}.operations[2].scopes"].code == "unused_setting"
    assert by_path[f"{at}.operations[2].subtrees[0]"].code == "unreachable_rule"
    for index in range(3):
        assert by_path[f"{at}.operations[3].subtrees[{index}]"].code == "invalid_dn"
    assert "names no place" in by_path[f"{at}.operations[3].subtrees[0]"].message
    assert by_path[f"{at}.operations[4].subtrees"].code == "unused_setting"


def test_cleartext_is_explicit_and_never_with_passwords_off_host(
    write_config: WriteConfig,
) -> None:
    problems = _problems(
        write_config,
        _with("""\
            directory:
              scheme: ldap
              host: 10.1.3.10
              tls: {server_name: dc01.corp.example}
              ldap:
                cleartext: true
                bind_identities:
                  svc: {dn: "CN=svc,DC=corp,DC=example", password: {env: PW}}
                operations: [{name: bind, kinds: [bind], bind_as: [svc]}]
            secure:
              scheme: ldaps
              host: 10.1.3.11
              ldap:
                cleartext: true
                operations: [{name: bind, kinds: [bind], bind_as: ["CN=a,DC=b"]}]
            """),
    )
    codes = _codes(problems)
    assert ("insecure_setting", "targets.directory.ldap.cleartext") in codes
    assert ("unused_setting", "targets.directory.tls") in codes
    assert ("conflicting_settings", "targets.secure.ldap.cleartext") in codes


def test_identity_passwords_are_resolved_with_the_host_checks(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(BASE + DIRECTORY)
    with pytest.raises(ConfigError) as caught:
        gwconfig.load(path, env={})
    assert [p.path for p in caught.value.problems] == [
        "targets.directory.ldap.bind_identities.empowerid.password"
    ]
    loaded = gwconfig.load(path, env={"DIRECTORY_PASSWORD": "s3cret"})
    secret = loaded.secrets["targets.directory.ldap.bind_identities.empowerid.password"]
    assert secret.get_secret_value() == "s3cret"


def test_policy_data_holds_paths_and_no_password(write_config: WriteConfig) -> None:
    config: GatewayConfig = gwconfig.load(write_config(BASE + DIRECTORY), check_host=False).config
    data = policy_data(config, "r")
    ldap = data["ldap"]["directory"]
    assert ldap["never_reachable"] == [
        [
            "0.9.2342.19200300.100.1.25=example",
            "0.9.2342.19200300.100.1.25=corp",
            "2.5.4.11=tier0",
        ]
    ]
    assert ldap["controls"] == ["1.2.840.113556.1.4.319"]
    assert ldap["identities"] == ["empowerid"]
    assert ldap["rules"][1]["attributes"] == ["cn", "member"]
    assert "DIRECTORY_PASSWORD" not in repr(data)
    assert data["targets"]["directory"]["ldap"]["bind_identities"] == ["empowerid"]
    assert "erp" not in data["ldap"]
