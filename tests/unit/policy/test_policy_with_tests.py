"""``gateway policy-test`` running OPA-style tests written with ``with input as X``.

The embedded engine cannot evaluate ``with``; the runner cuts each ``with input as X`` out and
evaluates the test with X as the real input. These tests write such modules next to the shipped
policy and check what a CI user sees: passes, failures named with their line, refusals that say
why, and a broken policy caught by a ``with``-style test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gateway.cli import main
from tests.unit.policy.conftest import SHIPPED_POLICIES, config_text

# Tens of seconds: started first in a parallel run (tests/conftest.py).
pytestmark = pytest.mark.slow

REQUEST = (
    'req := {"target": "erp", "method": "GET", "path_segments": ["api", "orders"],\n'
    '\t"trailing_slash": false, "websocket": false, "signature": {"verified": true}}\n'
)


def run_tests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, policies: Path = SHIPPED_POLICIES
) -> tuple[int, dict[str, dict[str, object]]]:
    """Write ``body`` as corp/opa_style_test.rego, run policy-test, return exit code and tests."""
    own = tmp_path / "own"
    own.mkdir(exist_ok=True)
    (own / "opa_style_test.rego").write_text(
        "package corp.opa_style_test\n\n" + REQUEST + "\n" + body, encoding="utf-8"
    )
    config = tmp_path / "gateway.yaml"
    config.write_text(config_text([policies, own]), encoding="utf-8")
    code = main(["policy-test", "-c", str(config), "--format", "json"])
    report = json.loads(capsys.readouterr().out)
    tests = {
        str(t["name"]).removeprefix("corp.opa_style_test."): t
        for t in report["tests"]
        if str(t["name"]).startswith("corp.")
    }
    return code, tests


def test_with_input_tests_pass_with_x_as_the_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, tests = run_tests(
        tmp_path,
        capsys,
        "test_allowed if {\n"
        "\tdata.gateway.authz.decision.allow with input as req\n"
        "}\n\n"
        "test_delete_refused if {\n"
        '\td := data.gateway.authz.decision with input as object.union(req, {"method": "DELETE"})\n'
        '\td.reasons == {"method_not_allowed"}\n'
        "}\n\n"
        "# An input written over several lines; `with` in this comment is ignored.\n"
        "test_events_stream if {\n"
        '\tdata.gateway.authz.decision.operation == "events" with input as {\n'
        '\t\t"target": "erp", "method": "GET", "path_segments": ["events", "a"],\n'
        '\t\t"trailing_slash": false, "websocket": true, "signature": {"verified": true},\n'
        "\t}\n"
        "}\n\n"
        'test_with_in_a_string if "with input as" != ""\n\n'
        "# Tests without `with` in the same module see no input at all.\n"
        "test_no_input_here if not input.method\n",
    )
    assert code == 0, tests
    assert all(t["passed"] for t in tests.values())
    assert set(tests) == {
        "test_allowed",
        "test_delete_refused",
        "test_events_stream",
        "test_with_in_a_string",
        "test_no_input_here",
    }


def test_a_false_with_test_fails_naming_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, tests = run_tests(
        tmp_path,
        capsys,
        "test_crm_allowed if {\n"
        '\tdata.gateway.authz.decision.allow with input as object.union(req, {"target": "crm"})\n'
        "}\n",
    )
    assert code == 1
    failed = tests["test_crm_allowed"]
    assert failed["passed"] is False
    assert failed["line"] == 6
    assert "undefined" in str(failed["detail"])


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (
            "test_x if {\n\tdata.gateway.authz.decision.allow with data.gateway.targets as {}\n}\n",
            "only 'with input as X' is supported",
        ),
        (
            "test_x if {\n"
            "\tdata.gateway.authz.decision.allow with input as req\n"
            "\tnot data.gateway.authz.decision.allow with input as {}\n"
            "}\n",
            "only one X",
        ),
        (
            'test_x if {\n\tm := "GET"\n'
            '\tdata.gateway.authz.decision.allow with input as object.union(req, {"method": m})\n'
            "}\n",
            "use a variable of the test",
        ),
    ],
)
def test_with_forms_that_cannot_be_run_faithfully_fail_saying_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, detail: str
) -> None:
    code, tests = run_tests(tmp_path, capsys, body + "\ntest_other if true\n")
    assert code == 1
    assert detail in str(tests["test_x"]["detail"])
    # The refused test does not take the rest of its module down with it.
    assert tests["test_other"]["passed"] is True


def test_with_outside_a_test_rule_fails_every_test_of_the_module(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, tests = run_tests(
        tmp_path,
        capsys,
        "allowed := data.gateway.authz.decision.allow with input as req\n\ntest_x if allowed\n",
    )
    assert code == 1
    assert "only supported in test_* rules (allowed)" in str(tests["test_x"]["detail"])


def test_a_broken_policy_fails_the_with_test_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "policies"
    shutil.copytree(SHIPPED_POLICIES, broken)
    authz = broken / "gateway" / "authz.rego"
    # A plausible mistake: a WebSocket stream granted by any operation of the right method.
    authz.write_text(
        authz.read_text(encoding="utf-8").replace(
            "stream_allowed(route) if route.websocket", "stream_allowed(_) if true"
        ),
        encoding="utf-8",
    )
    code, tests = run_tests(
        tmp_path,
        capsys,
        "test_api_is_not_a_stream if {\n"
        "\tnot data.gateway.authz.decision.allow with input as "
        'object.union(req, {"websocket": true})\n'
        "}\n",
        policies=broken,
    )
    assert code == 1
    assert tests["test_api_is_not_a_stream"]["passed"] is False
