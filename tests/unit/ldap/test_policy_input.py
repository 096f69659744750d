"""The input.ldap document: normalised places and attributes, nothing secret."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ldap import codec
from gateway.ldap.dn import Dn, MatchingRules
from gateway.ldap.errors import DnError, LdapRefusedError
from gateway.ldap.policy_input import dn_path, ldap_input, subtree_path
from tests.unit.ldap import pdus
from tests.unit.ldap.dn_strategies import dns, render

RULES = MatchingRules()


def _input(pdu: bytes, rules: MatchingRules = RULES) -> dict[str, object]:
    return ldap_input(codec.decode_request(pdu), rules)


def _is_prefix(prefix: list[str], path: object) -> bool:
    assert isinstance(path, list)
    return path[: len(prefix)] == prefix


def test_search_document() -> None:
    document = _input(
        pdus.search(
            3,
            "OU=Staff, DC=Corp,DC=Example",
            "(&(objectClass=user)(ms-Mcs-AdmPwd=secret*))",
            scope="one",
            attributes=["cn", "Member;range=0-1499", "+", "2.5.4.3"],
            size_limit=500,
            controls=[("1.2.840.113556.1.4.319", False, b"\x30\x05\x02\x01\x0a\x04\x00")],
        )
    )
    assert document["operation"] == "search"
    assert document["dn_path"] == subtree_path("ou=staff,dc=corp,dc=example", RULES)
    assert document["scope"] == "one"
    assert document["size_limit"] == 500
    assert document["selection"] == {
        "all_user": False,
        "all_operational": True,
        "attributes": ["cn", "member"],
    }
    assert document["filter"] == {
        "attributes": ["ms-mcs-admpwd", "objectclass"],
        "terms": 3,
        "depth": 2,
        "extensible_rules": [],
    }
    assert document["controls"] == [{"oid": "1.2.840.113556.1.4.319", "critical": False}]
    # The filter's value is not in the document: it may be a guess at a secret.
    assert "secret" not in json.dumps(document)


@pytest.mark.parametrize(("selectors", "all_user"), [([], True), (["*"], True), (["1.1"], False)])
def test_special_selectors(selectors: list[str], all_user: bool) -> None:
    document = _input(pdus.search(1, attributes=selectors))
    assert document["selection"] == {
        "all_user": all_user,
        "all_operational": False,
        "attributes": [],
    }


def test_subtree_is_a_path_prefix_not_a_string_suffix() -> None:
    tier0 = subtree_path("OU=Tier0,DC=corp,DC=example", RULES)
    inside = _input(pdus.delete(1, "CN=x,ou=TIER0,dc=corp,dc=example"))
    assert _is_prefix(tier0, inside["dn_path"])
    fullwidth = _input(pdus.delete(1, "CN=x,OU=\uff34ier0,DC=corp,DC=example"))
    assert _is_prefix(tier0, fullwidth["dn_path"])
    escaped = _input(pdus.delete(1, "CN=x\\,OU=Tier0,DC=corp,DC=example"))
    assert not _is_prefix(tier0, escaped["dn_path"])


def test_modify_document_lists_each_change() -> None:
    document = _input(
        pdus.modify(
            2,
            "CN=Helpdesk,OU=Managed Groups,DC=corp,DC=example",
            {
                "member": [("MODIFY_ADD", ["cn=a"]), ("MODIFY_DELETE", ["cn=b"])],
                "unicodePwd;binary": [("MODIFY_REPLACE", ["x"])],
            },
        )
    )
    assert document["changes"] == [
        {"type": "add", "attribute": "member"},
        {"type": "delete", "attribute": "member"},
        {"type": "replace", "attribute": "unicodepwd"},
    ]
    assert document["attributes"] == ["member", "unicodepwd"]


def test_modify_dn_document_has_both_places() -> None:
    moved = _input(pdus.modify_dn(4, "CN=u1,OU=Staff,DC=corp", "CN=u1", "OU=Tier0,DC=corp"))
    assert moved["dn_path"] == subtree_path("cn=u1,ou=staff,dc=corp", RULES)
    assert moved["new_superior_path"] == subtree_path("ou=tier0,dc=corp", RULES)
    assert moved["new_dn_path"] == subtree_path("cn=u1,ou=tier0,dc=corp", RULES)
    renamed = _input(pdus.modify_dn(5, "CN=u1,OU=Staff,DC=corp", "CN=u2"))
    assert renamed["new_superior_path"] == subtree_path("ou=staff,dc=corp", RULES)
    assert renamed["new_dn_path"] == subtree_path("cn=u2,ou=staff,dc=corp", RULES)


def test_bind_document_has_no_password() -> None:
    document = _input(pdus.simple_bind(1, "CN=svc-empowerid,OU=Service,DC=corp", "Pa55word!"))
    assert "Pa55word" not in json.dumps(document)
    bind = document["bind"]
    assert isinstance(bind, dict)
    assert bind["method"] == "simple"
    assert bind["anonymous"] is False
    assert bind["dn_path"] == subtree_path("cn=svc-empowerid,ou=service,dc=corp", RULES)
    upn = _input(pdus.simple_bind(2, "svc@Corp.Example", "x"))["bind"]
    assert isinstance(upn, dict)
    assert (upn["name"], upn["dn_path"]) == ("svc@corp.example", None)
    anonymous = _input(pdus.anonymous_bind(3))["bind"]
    assert isinstance(anonymous, dict)
    assert anonymous["anonymous"] is True
    sasl = _input(pdus.sasl_bind(4, "gssapi", b"token"))["bind"]
    assert isinstance(sasl, dict)
    assert (sasl["method"], sasl["mechanism"]) == ("sasl", "GSSAPI")


def test_compare_document_has_no_value() -> None:
    document = _input(pdus.compare(1, "CN=u,DC=corp", "userPassword", "guess-1"))
    assert document["attributes"] == ["userpassword"]
    assert "guess-1" not in json.dumps(document)


def test_an_uncomparable_dn_is_refused_with_its_operation() -> None:
    with pytest.raises(LdapRefusedError) as refused:
        _input(pdus.delete(7, "<GUID=f0e1d2c3-0000-0000-0000-000000000000>"))
    assert refused.value.reason == "ldap-dn-extended-refused"
    assert (refused.value.message_id, refused.value.operation) == (7, codec.Operation.DELETE)


def test_an_allowed_extended_dn_has_no_place() -> None:
    rules = MatchingRules(allow_extended=True)
    document = _input(pdus.delete(7, "<SID=S-1-5-21-1-2-3-512>"), rules)
    assert document["dn_path"] is None
    moved = _input(pdus.modify_dn(8, "<SID=S-1-5-21-1-2-3-512>", "CN=x"), rules)
    assert (moved["new_superior_path"], moved["new_dn_path"]) == (None, None)


def test_extended_operation_document() -> None:
    document = _input(pdus.extended(1, "1.3.6.1.4.1.1466.20037"))
    assert document["extended_oid"] == "1.3.6.1.4.1.1466.20037"


@settings(max_examples=200, deadline=None)
@given(dns, st.booleans(), st.booleans(), st.booleans(), st.integers(0, 8))
def test_a_limited_path_is_the_root_most_part_of_the_whole_path(
    rdns: list[list[tuple[str, str]]], spaced: bool, upper: bool, hexed: bool, limit: int
) -> None:
    text = render(rdns, spaced, upper, hexed)
    # Twice: the second parse is answered from the AVA memo and must be the same.
    for _ in range(2):
        try:
            parsed = Dn.parse(text)
        except DnError:
            return
        whole = dn_path(parsed)
        assert whole is not None
        assert dn_path(parsed, limit) == whole[:limit]
        assert parsed == Dn.parse(text, MatchingRules(case_insensitive=True))
