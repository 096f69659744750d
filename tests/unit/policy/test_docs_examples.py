"""Every policy test shown in docs/policy.md passes when its property holds and fails when not.

A documented test that cannot fail teaches users to write tests that cannot fail (the first
version of "never deletes" passed while an operation granted DELETE). Each example is copied
from the page as written, run by ``gateway policy-test`` against the fixture allow-list (must
pass), then against a configuration broken in exactly the way the example is meant to catch
(must fail). An example without a breaking configuration below fails this test.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from tests.unit.policy.conftest import ROOT, SHIPPED_POLICIES, TARGETS, config_text

# Tens of seconds: started first in a parallel run (tests/conftest.py).
pytestmark = pytest.mark.slow

DOC = ROOT / "docs" / "policy.md"
_BLOCK = re.compile(r"^( *)```rego\n(.*?)^\1```", re.MULTILINE | re.DOTALL)
_TEST_RULE = re.compile(r"^(test_[A-Za-z0-9_]*)\b", re.MULTILINE)


def _grant_delete_elsewhere(targets: str) -> str:
    """An operation that grants DELETE, on a path no other operation uses."""
    return targets.replace(
        "      - name: events\n",
        "      - name: remove\n        methods: [DELETE]\n        paths: [/admin/*]\n"
        "      - name: events\n",
    )


def _grant_delete_on_orders(targets: str) -> str:
    """DELETE granted on the very path the examples send it to."""
    return targets.replace("methods: [GET, POST]", "methods: [GET, POST, DELETE]")


# Test rule -> the configuration change that breaks the property it states.
BREAKS: dict[str, Callable[[str], str]] = {
    "test_erp_never_deletes": _grant_delete_elsewhere,
    "test_delete_refused": _grant_delete_on_orders,
    "test_delete_refused_case": _grant_delete_on_orders,
}


def doc_examples() -> list[tuple[str, str]]:
    """(rule, block) for every ```rego block of the page that defines a test rule."""
    found: list[tuple[str, str]] = []
    for match in _BLOCK.finditer(DOC.read_text(encoding="utf-8")):
        block = textwrap.dedent(match.group(2))
        found.extend((rule, block) for rule in _TEST_RULE.findall(block))
    return found


EXAMPLES = doc_examples()


def _verdict(report: dict[str, Any], rule: str) -> dict[str, Any]:
    [test] = [t for t in report["tests"] if t["name"] == f"docs.example_test.{rule}"]
    return dict(test)


def test_the_page_has_the_three_styles_of_test() -> None:
    assert sorted(rule for rule, _ in EXAMPLES) == sorted(BREAKS)


@pytest.mark.parametrize(("rule", "block"), EXAMPLES, ids=[rule for rule, _ in EXAMPLES])
def test_each_doc_example_passes_and_fails_when_its_property_is_broken(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rule: str, block: str
) -> None:
    def report(targets: str) -> dict[str, Any]:
        capsys.readouterr()
        directory = tmp_path / "examples_under_test"
        directory.mkdir(exist_ok=True)
        (directory / "doc_test.rego").write_text(
            "package docs.example_test\n\n" + block, encoding="utf-8"
        )
        config = tmp_path / "gateway.yaml"
        text = config_text([SHIPPED_POLICIES, directory]).replace(TARGETS, targets)
        config.write_text(text, encoding="utf-8")
        assert main(["policy-test", "-c", str(config), "--format", "json"]) in (0, 1)
        return dict(json.loads(capsys.readouterr().out))

    holds = _verdict(report(TARGETS), rule)
    assert holds["passed"], holds["detail"]
    broken_targets = BREAKS[rule](TARGETS)
    assert broken_targets != TARGETS
    broken = _verdict(report(broken_targets), rule)
    assert not broken["passed"], f"{rule} still passes when its property is broken"
