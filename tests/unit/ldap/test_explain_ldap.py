"""``gateway explain --ldap TARGET OPERATION DN ...``: the form scripts depend on (issue 17 item
9), answered by LdapChain.decide with the real policy: exit 0 allowed, 3 denied, 2 usage."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.ldap.codec import decode_request
from tests.unit.ldap import pdus
from tests.unit.ldap.directory_config import embedded_chain, facts, load_directory


@pytest.fixture
def config(tmp_path: Path) -> str:
    load_directory(tmp_path)  # writes gateway.yaml and proves it loads
    return str(tmp_path / "gateway.yaml")


def _explain(capsys: pytest.CaptureFixture[str], config: str, *args: str) -> tuple[int, str]:
    code = main(["explain", "-c", config, "--ldap", *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_the_issue_example_is_denied_with_its_reason(
    config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _explain(
        capsys,
        config,
        "directory",
        "modify",
        "CN=Domain Admins,CN=Users,DC=corp,DC=example",
        "--attribute",
        "member",
    )
    assert code == 3
    assert "DENY (resultCode 50)" in out
    assert "reason:    ldap_never_reachable" in out


def test_an_allowed_change_names_its_rule(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _explain(
        capsys,
        config,
        "directory",
        "modify",
        "CN=Sales,OU=Managed Groups,DC=corp,DC=example",
        "--attribute",
        "member",
        "--change-type",
        "add",
    )
    assert code == 0, out
    assert "ALLOW by rule 'group-membership' of target 'directory'" in out
    assert "bind identity 'empowerid'" in out


def test_search_options_and_what_is_hidden(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _explain(
        capsys,
        config,
        "directory",
        "search",
        "DC=corp,DC=example",
        "--attribute",
        "cn",
        "--attribute",
        "member",
        "--scope",
        "one",
        "--filter",
        "(&(objectClass=group)(cn=S*))",
        "--size-limit",
        "100",
    )
    assert code == 0, out
    assert "hides:     entries under OU=Tier0,DC=corp,DC=example" in out
    assert "ms-mcs-admpwd" in out
    code, out = _explain(
        capsys,
        config,
        "directory",
        "search",
        "DC=corp,DC=example",
        "--filter",
        "(ms-Mcs-AdmPwd=*)",
        "--size-limit",
        "1",
    )
    assert code == 3
    assert "ldap_filter_never_returned" in out


def test_bind_dn_selects_the_identity(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    employee = "CN=Ann Lee,OU=Employees,DC=corp,DC=example"
    args = ("directory", "modify", employee, "--attribute", "unicodePwd")
    code, out = _explain(capsys, config, *args)
    assert code == 3
    assert "ldap_identity_not_granted" in out
    code, out = _explain(capsys, config, *args, "--bind-dn", "helpdesk")
    assert code == 0, out
    code, out = _explain(capsys, config, *args, "--bind-dn", "")
    assert code == 3
    assert "ldap_anonymous_refused" in out


def test_json_for_scripts(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _explain(capsys, config, "directory", "bind", "empowerid", "--format", "json")
    assert code == 0
    document = json.loads(out)
    assert document["allowed"] is True
    assert document["rule"] == "bind-service"
    assert document["result_code"] is None
    assert document["input"]["ldap"]["bind"]["empty_credentials"] is True
    code, out = _explain(
        capsys, config, "directory", "bind", "empowerid", "--no-inner-tls", "--format", "json"
    )
    assert code == 3
    assert json.loads(out)["reasons"] == ["ldap_bind_needs_tls"]
    assert json.loads(out)["result_code"] == 50


@pytest.mark.parametrize(
    "args",
    [
        ("directory", "search"),
        ("directory", "frobnicate", "DC=corp,DC=example"),
        ("directory", "search", "DC=corp,DC=example", "--filter", "(cn=a"),
        ("directory", "compare", "DC=corp,DC=example"),
        ("directory", "modify", "DC=corp,DC=example"),
    ],
)
def test_usage_errors_exit_2(
    config: str, capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    code, out = _explain(capsys, config, *args)
    assert code == 2
    assert "gateway explain" in out


def test_the_stream_to_an_ldap_target_is_explained_like_a_tcp_stream(
    config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["explain", "-c", config, "--stream", "directory"]) == 0
    out = capsys.readouterr().out
    assert "request:   stream to directory (ldaps target: no method, no path)" in out
    assert "ALLOW: ldaps target 'directory' allows streams as a whole" in out
    assert "gateway explain --ldap directory" in out


# A shell hands Python an argument that is not UTF-8 as lone surrogates (PEP 383); every word of
# an LDAP question is a UTF-8 LDAPString on the wire, so such a word is a usage error, never a
# traceback or a "policy unavailable" answer from an engine that cannot encode it.
NOT_UTF8 = b"\xff".decode("utf-8", "surrogateescape")


@pytest.mark.parametrize(
    ("args", "word"),
    [
        (("directory", "search", f"CN={NOT_UTF8},DC=corp,DC=example"), "DN"),
        (("directory", "bind", f"CN=a{NOT_UTF8}"), "DN"),
        (("directory", "search", "DC=corp,DC=example", "--filter", f"(cn={NOT_UTF8})"), "filter"),
        (("directory", "search", "DC=corp,DC=example", "--attribute", f"a{NOT_UTF8}"), "attribute"),
        (("directory", "search", "DC=corp,DC=example", "--bind-dn", f"CN={NOT_UTF8}"), "bind name"),
        ((f"directory{NOT_UTF8}", "search", "DC=corp,DC=example"), "target"),
    ],
)
def test_an_argument_that_is_not_utf8_is_a_usage_error(
    config: str, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], word: str
) -> None:
    code, out = _explain(capsys, config, *args)
    assert code == 2, out
    assert f"the {word} " in out
    assert "is not valid UTF-8 text" in out
    assert "Traceback" not in out


@pytest.mark.parametrize(
    ("option", "ldap3_deref"),
    [
        ("never", "NEVER"),
        ("searching", "SEARCH"),
        ("finding", "FINDING_BASE"),
        ("always", "ALWAYS"),
    ],
)
def test_explain_keeps_a_dereferencing_search_where_the_proxy_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, ldap3_deref: str
) -> None:
    # RFC 4511 4.5.1.3: the proxy judges the entries of a search that dereferences aliases
    # against the granting rule's subtrees and hides every protected one; explain must print
    # the verdict the proxy acts on for the PDU a client sends with that derefAliases.
    loaded = load_directory(tmp_path)
    base = "OU=Managed Groups,DC=corp,DC=example"
    pdu = pdus.search(1, base, "(cn=S*)", attributes=["cn"], size_limit=100, deref=ldap3_deref)
    proxy = asyncio.run(embedded_chain(loaded).decide(facts(decode_request(pdu))))
    assert proxy.allowed
    code, out = _explain(
        capsys,
        str(tmp_path / "gateway.yaml"),
        "directory",
        "search",
        base,
        "--attribute",
        "cn",
        "--filter",
        "(cn=S*)",
        "--size-limit",
        "100",
        "--deref-aliases",
        option,
        "--keyid",
        "key-1",
        "--format",
        "json",
    )
    assert code == 0, out
    explained = json.loads(out)
    assert explained["input"] == dict(proxy.document)
    assert explained["hidden_subtrees"] == [list(path) for path in proxy.hidden_subtrees]
    granted = proxy.granted_subtrees
    assert explained["granted_subtrees"] == (
        None if granted is None else [list(path) for path in granted]
    )
    assert (granted is None) is (option == "never")


def test_explain_says_where_a_dereferencing_search_is_kept(
    config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("directory", "search", "OU=Managed Groups,DC=corp,DC=example", "--size-limit", "9")
    code, out = _explain(capsys, config, *args)
    assert code == 0, out
    assert "aliases not dereferenced" in out
    assert "returns:" not in out
    assert "CN=Domain Admins,CN=Users" not in out  # not below the base: nothing to hide
    code, out = _explain(capsys, config, *args, "--deref-aliases", "always")
    assert code == 0, out
    assert "aliases dereferenced (always)" in out
    # An alias under the base can lead anywhere: every protected subtree is hidden, and the
    # entries are kept to the inventory rule's subtree.
    assert "hides:     entries under CN=Domain Admins,CN=Users,DC=corp,DC=example" in out
    assert "returns:   only entries under DC=corp,DC=example" in out


def test_a_sort_key_is_asked_and_judged_as_the_proxy_judges_it(
    config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # RFC 2891: the question carries the sort control, and its keys are judged as attributes
    # the filter tests (the example lists no sort control: that is refused too).
    args = ("directory", "search", "DC=corp,DC=example", "--size-limit", "9", "--format", "json")
    code, out = _explain(capsys, config, *args, "--sort-key", "ms-Mcs-AdmPwd")
    assert code == 3
    document = json.loads(out)
    assert set(document["reasons"]) == {"ldap_filter_never_returned", "ldap_control_refused"}
    assert "ms-mcs-admpwd" in document["input"]["ldap"]["filter"]["attributes"]
    assert document["request"]["sort_keys"] == ["ms-Mcs-AdmPwd"]
