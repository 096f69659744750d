"""``gateway diff`` reports widened and narrowed LDAP grants (issue 17 item 9)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import load
from gateway.gitops.diff import Effect, PermissionDiff, diff_configs
from tests.unit.ldap.directory_config import CONFIG, ROOT


def _diff(tmp_path: Path, old: str, new: str) -> PermissionDiff:
    paths = []
    for name, text in (("old.yaml", old), ("new.yaml", new)):
        path = tmp_path / name
        path.write_text(text.format(policies=ROOT / "policies"), encoding="utf-8")
        paths.append(path)
    a, b = (load(p, env={}, check_host=False) for p in paths)
    return diff_configs(a.config, b.config)


def _effects(diff: PermissionDiff) -> dict[str, Effect]:
    return {c.message: c.effect for c in diff.changes}


def test_same_rules_spelled_differently_are_no_change(tmp_path: Path) -> None:
    spelled = CONFIG.replace(
        '"OU=Tier0,DC=corp,DC=example"', '"ou = tier0, dc=CORP, dc=Example"'
    ).replace("attributes: [member]", "attributes: [Member]")
    assert _diff(tmp_path, CONFIG, spelled).changes == ()


@pytest.mark.parametrize(
    ("edit", "effect", "message"),
    [
        (
            (
                'subtrees: ["OU=Managed Groups,DC=corp,DC=example"]',
                'subtrees: ["DC=corp,DC=example"]',
            ),
            Effect.WIDENED,
            "directory: LDAP rule group-membership: subtrees now also include DC=corp,DC=example",
        ),
        (
            (
                'subtrees: ["OU=Managed Groups,DC=corp,DC=example"]',
                'subtrees: ["OU=Finance,OU=Managed Groups,DC=corp,DC=example"]',
            ),
            Effect.NARROWED,
            "directory: LDAP rule group-membership: subtrees no longer include "
            "OU=Managed Groups,DC=corp,DC=example",
        ),
        (
            ("change_types: [add, delete]", "change_types: [add, delete, replace]"),
            Effect.WIDENED,
            "directory: LDAP rule group-membership: change types now also allowed: replace",
        ),
        (
            ("attributes: [member]", "attributes: [member, nTSecurityDescriptor]"),
            Effect.WIDENED,
            "directory: LDAP rule group-membership: attributes now also allowed: "
            "nTSecurityDescriptor",
        ),
        (
            ('        - "CN=Domain Admins,CN=Users,DC=corp,DC=example"\n', ""),
            Effect.WIDENED,
            "directory: subtrees no longer protected (never reachable): "
            "CN=Domain Admins,CN=Users,DC=corp,DC=example",
        ),
        (
            ("never_reachable:\n", "never_returned: [ms-Mcs-AdmPwd]\n      never_reachable:\n"),
            Effect.WIDENED,
            "directory: attributes no longer withheld from searches: mslaps-password, "
            "mslaps-encryptedpassword, mslaps-encryptedpasswordhistory, "
            "mslaps-encrypteddsrmpassword, mslaps-encrypteddsrmpasswordhistory, unicodepwd, "
            "userpassword, supplementalcredentials, dbcspwd, lmpwdhistory, ntpwdhistory",
        ),
        (
            (
                'controls: ["1.2.840.113556.1.4.801"]',
                'controls: ["1.2.840.113556.1.4.801", "1.2.840.113556.1.4.417"]',
            ),
            Effect.WIDENED,
            "directory: controls now also allowed: 1.2.840.113556.1.4.417",
        ),
        (
            ("max_size_limit: 1000", "max_size_limit: 5000"),
            Effect.WIDENED,
            "directory: LDAP rule inventory: size limit cap now 5000 (was 1000)",
        ),
        (
            ("          max_size_limit: 1000\n", ""),
            Effect.WIDENED,
            "directory: LDAP rule inventory: size limit cap now unset (was 1000)",
        ),
        (
            ("          bind_as: [helpdesk]\n", ""),
            Effect.WIDENED,
            "directory: LDAP rule password-reset: identities now any bound identity (was helpdesk)",
        ),
        (
            ("kinds: [modify_dn, delete]", "kinds: [modify_dn]"),
            Effect.NARROWED,
            "directory: LDAP rule move-leavers: operations no longer allowed: delete",
        ),
        (
            (
                "      operations:\n        - name: bind-service",
                "      allow_anonymous: true\n      operations:\n        - name: bind-service",
            ),
            Effect.WIDENED,
            "directory: LDAP target now allows anonymous binds and use",
        ),
    ],
)
def test_each_kind_of_ldap_change(
    tmp_path: Path, edit: tuple[str, str], effect: Effect, message: str
) -> None:
    assert edit[0] in CONFIG
    diff = _diff(tmp_path, CONFIG, CONFIG.replace(*edit))
    assert _effects(diff) == {message: effect}


def test_rules_added_and_removed(tmp_path: Path) -> None:
    without = CONFIG.replace(
        "        - name: whoami\n          kinds: [extended]\n          bind_as: [empowerid]\n", ""
    )
    diff = _diff(tmp_path, without, CONFIG)
    assert _effects(diff) == {
        "directory: new LDAP rule whoami allows extended as empowerid": Effect.WIDENED
    }
    assert diff.exit_code == 10
    back = _diff(tmp_path, CONFIG, without)
    assert back.exit_code == 11
    assert [c.kind for c in back.changes] == ["ldap_rule_removed"]


def test_a_new_ldap_target_lists_its_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head = CONFIG[: CONFIG.index("  directory:\n")]
    for name, text in (("old.yaml", head), ("new.yaml", CONFIG)):
        (tmp_path / name).write_text(text.format(policies=ROOT / "policies"), encoding="utf-8")
    code = main(["diff", str(tmp_path / "old.yaml"), str(tmp_path / "new.yaml")])
    out = capsys.readouterr().out
    assert code == 10
    assert "new LDAP rule group-membership allows modify on OU=Managed Groups" in out
    assert "new LDAP rule inventory allows search" in out
