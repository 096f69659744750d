"""LdapQuestion: an LDAP operation in words, decided exactly as the live operation it stands for.

The property that matters for replay: the question a decision record keeps for an operation
(question_of) is decided like the operation itself, for every case of the decision table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.ldap.codec import Operation
from gateway.ldap.decide import LdapChain
from gateway.ldap.questions import LdapQuestion, QuestionError, question_of
from gateway.policy.loader import verify_policy
from gateway.policy.testing import run_policy_tests
from tests.unit.ldap.directory_config import (
    CONFIG,
    GROUP,
    embedded_chain,
    facts,
    load_directory,
    search,
)
from tests.unit.ldap.test_decide import CASES

pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> LdapChain:
    return embedded_chain(load_directory(tmp_path_factory.mktemp("directory")))


async def test_a_recorded_question_is_decided_like_the_operation(chain: LdapChain) -> None:
    for case, live, _, _ in CASES:
        if live.request.operation in (Operation.UNBIND, Operation.ABANDON):
            continue
        recorded = question_of(live).as_dict()
        again = LdapQuestion.from_mapping(recorded).facts(chain.config)
        first, second = await chain.decide(live), await chain.decide(again)
        assert (second.allowed, second.reasons, second.operation) == (
            first.allowed,
            first.reasons,
            first.operation,
        ), case


async def test_a_question_keeps_no_filter_value_and_no_password(chain: LdapChain) -> None:
    live = facts(search(filter="(&(objectClass=user)(ms-Mcs-AdmPwd=guess*))"))
    recorded = question_of(live).as_dict()
    assert "guess" not in repr(recorded)
    assert recorded["filter_attributes"] == ["ms-Mcs-AdmPwd", "objectClass"]
    assert recorded["bound_as"] == "empowerid"


async def test_round_trip_and_refusals() -> None:
    question = LdapQuestion(
        "directory",
        "modify",
        "CN=x,DC=corp",
        changes=(("add", "member"),),
        controls=("1.2.3",),
        bound_as="svc",
    )
    assert LdapQuestion.from_mapping(question.as_dict()) == question
    bad: list[tuple[dict[str, Any], str]] = [
        ({"target": "d"}, "'operation' must be a string"),
        ({"target": "d", "operation": "search", "colour": 1}, "unknown keys: colour"),
        ({"target": "d", "operation": "search", "attributes": "cn"}, "list of strings"),
        ({"target": "d", "operation": "search", "size_limit": -1}, "non-negative"),
        ({"target": "d", "operation": "modify", "changes": [{"type": "add"}]}, "changes"),
    ]
    for data, message in bad:
        with pytest.raises(QuestionError, match=message):
            LdapQuestion.from_mapping(data)
    with pytest.raises(QuestionError, match="change type 'swap'"):
        LdapQuestion("d", "modify", "cn=x", attributes=("cn",), change_type="swap").request()
    with pytest.raises(QuestionError, match="scope 'deep'"):
        LdapQuestion("d", "search", "cn=x", scope="deep").request()


async def test_policy_test_cases_in_words(tmp_path: Path) -> None:
    tests = tmp_path / "corp"
    tests.mkdir()
    (tests / "directory_test.rego").write_text(
        "package corp.directory_test\n\n"
        'test_reset := {"ldap": {"target": "directory", "operation": "modify", '
        '"dn": "CN=Ann,OU=Employees,DC=corp,DC=example", "attributes": ["unicodePwd"], '
        '"bound_as": "helpdesk"}, "expect": {"allow": true, "operation": "password-reset"}}\n\n'
        'test_wrong_expectation := {"ldap": {"target": "directory", "operation": "delete", '
        '"dn": "OU=Tier0,DC=corp,DC=example", "bound_as": "empowerid"}, '
        '"expect": {"allow": true}}\n\n'
        'test_both := {"input": {}, "ldap": {}, "expect": {"allow": true}}\n\n'
        'test_bad_question := {"ldap": {"target": "directory"}, "expect": {"allow": true}}\n',
        encoding="utf-8",
    )
    text = CONFIG.replace(
        'directories: ["{policies}"]', f'directories: ["{{policies}}", "{tests}"]'
    )
    loaded = load_directory(tmp_path, text)
    results = {
        r.name.rsplit(".", 1)[1]: r
        for r in run_policy_tests(verify_policy(loaded), loaded.config)
        if r.name.startswith("corp.")
    }
    assert results["test_reset"].passed, results["test_reset"].detail
    assert not results["test_wrong_expectation"].passed
    assert results["test_wrong_expectation"].detail == "allow: expected true, got false"
    assert "either 'input' or 'ldap'" in results["test_both"].detail
    assert "'operation' must be a string" in results["test_bad_question"].detail


async def test_an_identity_is_read_as_the_proxy_reads_it(chain: LdapChain) -> None:
    # The proxy injects a bind identity whatever the case and the spaces around its name
    # (LdapProxy._injection); a question must be bound, and decided, the same way.
    for spelling in ("EmpowerID", " empowerid "):
        question = LdapQuestion(
            "directory",
            "modify",
            GROUP,
            attributes=("member",),
            change_type="add",
            bound_as=spelling,
        )
        asked = question.facts(chain.config)
        assert (asked.bound_as, asked.injected) == ("empowerid", True)
        verdict = await chain.decide(asked)
        assert verdict.allowed, verdict.reasons
