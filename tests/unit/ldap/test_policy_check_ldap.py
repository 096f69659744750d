"""The policy check proves the policy decides LDAP operations too (gateway/policy/check.py):
validate, check, policy-test, explain and run all refuse a policy that fails only for them."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import PolicyError
from gateway.policy.check import ldap_smoke_inputs
from gateway.policy.loader import build_engine
from tests.unit.ldap.directory_config import CONFIG, load_directory

# Compiles, decides every HTTP request; two complete definitions disagree for LDAP searches.
LDAP_ONLY_CONFLICT = (
    "package gateway_extensions.conflict\n\n"
    'mode := "a" if input.ldap.operation == "search"\n\n'
    'mode := "b" if input.target == "directory"\n\n'
    'deny contains "x" if mode == "c"\n'
)


def test_the_smoke_operations_cover_every_rule_kind(tmp_path: Path) -> None:
    loaded = load_directory(tmp_path)
    documents = list(ldap_smoke_inputs(loaded.config))
    seen = {(d["target"], d["ldap"]["operation"]) for d in documents}
    for kind in ("bind", "search", "compare", "add", "delete", "modify", "modify_dn", "extended"):
        assert ("directory", kind) in seen
    assert any(not d["connection"]["bound"] for d in documents)
    assert any(d["ldap"]["controls"] for d in documents)
    assert all("message_id" not in d["ldap"] for d in documents)


def test_a_policy_that_fails_only_for_ldap_is_refused(tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "conflict.rego").write_text(LDAP_ONLY_CONFLICT, encoding="utf-8")
    text = CONFIG.replace(
        'directories: ["{policies}"]', f'directories: ["{{policies}}", "{extra}"]'
    )
    with pytest.raises(PolicyError, match=r"cannot decide LDAP search on directory"):
        build_engine(load_directory(tmp_path, text))


def test_an_ldap_answer_without_its_ldap_part_is_refused(tmp_path: Path) -> None:
    # A replaced built-in policy that answers LDAP operations with an HTTP-shaped decision would
    # leave the proxy without the attributes to strip.
    policies = tmp_path / "policies"
    shipped = Path(__file__).parents[3] / "policies" / "gateway" / "authz.rego"
    (policies / "gateway").mkdir(parents=True)
    source = shipped.read_text(encoding="utf-8")
    source = source.replace(
        '\t"ldap": {"strip_attributes": ldap_strip, "hidden_subtrees": ldap_hidden},\n', ""
    )
    (policies / "gateway" / "authz.rego").write_text(source, encoding="utf-8")
    text = CONFIG.replace('directories: ["{policies}"]', f'directories: ["{policies}"]')
    with pytest.raises(PolicyError, match=r"without the ldap part"):
        build_engine(load_directory(tmp_path, text))
