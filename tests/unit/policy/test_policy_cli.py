"""``gateway explain`` and ``gateway policy-test`` as an operator and CI use them."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import load
from gateway.policy.engine import POLICY_UNDEFINED
from gateway.policy.loader import build_engine
from tests.unit.policy.conftest import SHIPPED_POLICIES, config_text, request_input

# Tens of seconds: started first in a parallel run (tests/conftest.py).
pytestmark = pytest.mark.slow


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(config_text([SHIPPED_POLICIES]), encoding="utf-8")
    return path


def explain(config: Path, *args: str) -> tuple[int, dict[str, object]]:
    return main(["explain", "-c", str(config), *args, "--format", "json"]), {}


def test_explain_allowed_prints_canonical_request_operation_and_revision(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["explain", "-c", str(config_file), "GET", "erp", "/api/orders?x=/../a"]) == 0
    out = capsys.readouterr().out
    assert "canonical: GET /api/orders?x=/../a -> target erp" in out
    assert "ALLOW by operation 'read-orders' of target 'erp'" in out
    assert "revision:  sha256:" in out


def test_explain_accepts_host_port_and_headers(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "explain",
            "-c",
            str(config_file),
            "GET",
            "erp.corp.local:8443",
            "/api/x",
            "-H",
            "Accept: application/json",
            "--format",
            "json",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["canonical"]["target"] == "erp"
    assert report["canonical"]["header_names"] == ["accept"]
    assert report["decision"]["operation"] == "read-orders"


# Catalogue section B cases that apply to a single request, with the reason a user sees.
@pytest.mark.parametrize(
    ("method", "path", "reason", "status"),
    [
        ("GET", "/api/%2e%2e/admin", "encoded_dot_segment", 400),
        ("GET", "/api/../admin", "dot_segment", 400),
        ("GET", "/api/./orders", "dot_segment", 400),
        ("GET", "/api%2Fadmin", "encoded_slash", 400),
        ("GET", "/api/..%2fadmin", "encoded_slash", 400),
        ("GET", "/api/..%5cadmin", "backslash", 400),
        ("GET", "/api/%C0%AE%C0%AE/admin", "invalid_utf8", 400),
        ("GET", "/api/%FF", "invalid_utf8", 400),
        ("GET", "/api/orders%00.json", "nul_byte", 400),
        ("GET", "//api/orders", "empty_segment", 400),
        ("GET", "/api//orders", "empty_segment", 400),
        ("GET", "/api/orders#/../../admin", "fragment", 400),
        ("GET", "/api/orders%0a", "control_character", 400),
        ("GET", "http://evil.example/api/x", "absolute_form", 400),
        ("get", "/api/orders", "invalid_method", 400),
        ("GET", "/API/orders", "path_not_allowed", 403),
        ("GET", "/apiadmin", "path_not_allowed", 403),
        ("GET", "/api-internal/x", "path_not_allowed", 403),
        ("GET", "/api", "path_not_allowed", 403),
        ("GET", "/api/", "path_not_allowed", 403),
        ("DELETE", "/api/orders", "method_not_allowed", 403),
    ],
)
def test_explain_denials_exit_3_with_the_specific_reason(
    config_file: Path,
    capsys: pytest.CaptureFixture[str],
    method: str,
    path: str,
    reason: str,
    status: int,
) -> None:
    code = main(["explain", "-c", str(config_file), method, "erp", path, "--format", "json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 3
    assert report["allowed"] is False
    if report["rejected"] is not None:
        assert (report["rejected"]["code"], report["rejected"]["status"]) == (reason, status)
        assert report["decision"] is None
    else:
        assert report["decision"]["reasons"] == [reason]
        assert status == 403


def test_explain_text_for_a_deny_names_the_reason(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["explain", "-c", str(config_file), "DELETE", "erp", "/api/orders"]) == 3
    out = capsys.readouterr().out
    assert "DENY (HTTP 403)" in out
    assert "reason:    method_not_allowed" in out


def test_explain_config_error_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "gateway.yaml"
    bad.write_text("version: 2\n", encoding="utf-8")
    assert main(["explain", "-c", str(bad), "GET", "erp", "/api/x"]) == 1
    assert "version" in capsys.readouterr().err


def test_policy_test_passes_on_the_shipped_policies(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["policy-test", "-c", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert " 0 failed" in out


def test_policy_test_names_the_failing_test(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "policies"
    shutil.copytree(SHIPPED_POLICIES, broken)
    authz = broken / "gateway" / "authz.rego"
    # A plausible mistake: literal segments compared case-insensitively.
    source = authz.read_text(encoding="utf-8").replace(
        "input.path_segments[literal[0]] == literal[1]",
        "lower(input.path_segments[literal[0]]) == literal[1]",
    )
    authz.write_text(source, encoding="utf-8")
    config = tmp_path / "gateway.yaml"
    config.write_text(config_text([broken]), encoding="utf-8")
    assert main(["policy-test", "-c", str(config), "--format", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    failed = [t["name"] for t in report["tests"] if not t["passed"]]
    assert failed == ["gateway.authz_test.test_literals_are_case_sensitive"]


def test_policy_test_fact_rules_use_the_configured_data(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    own = tmp_path / "own"
    own.mkdir()
    (own / "erp_test.rego").write_text(
        "package corp.erp_test\n\n"
        'test_erp_is_https if data.gateway.targets.erp.scheme == "https"\n\n'
        "test_erp_never_deletes if {\n"
        "\tsome op in data.gateway.targets.erp.operations\n"
        '\tnot "DELETE" in op.methods\n'
        "}\n\n"
        'test_erp_is_plain_http if data.gateway.targets.erp.scheme == "http"\n',
        encoding="utf-8",
    )
    config_file.write_text(config_text([SHIPPED_POLICIES, own]), encoding="utf-8")
    assert main(["policy-test", "-c", str(config_file)]) == 1
    out = capsys.readouterr().out
    assert "FAIL corp.erp_test.test_erp_is_plain_http" in out
    assert "erp_test.rego:10)" in out
    assert "test_erp_is_https" not in out


# A first branch of the decision that only a TRACE request reaches (the load-time smoke
# evaluation asks other methods): the document it answers is not one the gateway acts on.
_TRACE_BRANCH = (
    'decision := {{"allow": {allow}, "target": input.target, "operation": "trace",\n'
    '\t"reasons": [], "revision": data.gateway.revision{extra}}} if {{\n'
    '\tinput.method == "TRACE"\n'
    "}} else := ldap_decision if {{"
)
_TRACE_CASE = """package corp.trace_test

test_trace_allowed := {
	"input": {"target": "erp", "method": "TRACE", "path_segments": ["api", "orders"],
		"trailing_slash": false, "websocket": false, "signature": {"verified": true}},
	"expect": {"allow": true, "operation": "trace", "reasons": []},
}
"""


@pytest.mark.parametrize(
    ("allow", "extra", "why"),
    [
        # Rego's 1 is not true, but Python's 1 == True: the case compared them as equal.
        ("1", "", "allow is not a boolean"),
        # A key the decision schema does not have, which `expect` never names.
        ("true", ', "debug": true', "not an object with exactly"),
    ],
)
def test_policy_test_cases_fail_on_a_decision_the_gateway_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], allow: str, extra: str, why: str
) -> None:
    """A case passes only when a running gateway would act on the decision as expected: a
    document the engine refuses as ``policy_undefined`` fails it, whatever ``expect`` names."""
    broken = tmp_path / "policies"
    shutil.copytree(SHIPPED_POLICIES, broken)
    authz = broken / "gateway" / "authz.rego"
    source = authz.read_text(encoding="utf-8")
    first = "decision := ldap_decision if {"
    assert first in source
    authz.write_text(
        source.replace(first, _TRACE_BRANCH.format(allow=allow, extra=extra)), encoding="utf-8"
    )
    (broken / "trace_test.rego").write_text(_TRACE_CASE, encoding="utf-8")
    config = tmp_path / "gateway.yaml"
    config.write_text(config_text([broken]), encoding="utf-8")
    # What run does with a TRACE: refused, as no decision document.
    engine = build_engine(load(config, check_host=False))
    decision = asyncio.run(engine.decide(request_input("TRACE")))
    assert (decision.allow, decision.reasons) == (False, (POLICY_UNDEFINED,))
    assert main(["policy-test", "-c", str(config), "--format", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    failed = {t["name"]: t["detail"] for t in report["tests"] if not t["passed"]}
    assert list(failed) == ["corp.trace_test.test_trace_allowed"]
    assert why in failed["corp.trace_test.test_trace_allowed"]
