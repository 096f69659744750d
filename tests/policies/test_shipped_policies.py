"""The shipped Rego policies: their own tests pass through ``gateway policy-test`` (as CI runs
it), a broken copy fails naming the test, and the policy never parses the raw path (catalogue
B 51)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.policy.cache import strip_comments

# Tens of seconds: started first in a parallel run (tests/conftest.py).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
POLICIES = ROOT / "policies"
CONFIG = """\
version: 1
gateway:
  id: agent-1
empowerid:
  url: https://tenant.empowerid.example
policy:
  directories: ["{policies}"]
targets:
  erp:
    scheme: https
    host: erp.corp.local
    port: 8443
    allowed_cidrs: [10.1.2.0/24]
    operations:
      - name: read-orders
        methods: [GET]
        paths: [/api/*]
"""


def _policy_test(tmp_path: Path, policies: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(policies=policies), encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "gateway", "policy-test", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_shipped_policy_tests_pass(tmp_path: Path) -> None:
    result = _policy_test(tmp_path, POLICIES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^(\d+) tests, \1 passed, 0 failed", result.stdout, re.MULTILINE)


def test_broken_policy_fails_naming_the_test(tmp_path: Path) -> None:
    broken = tmp_path / "policies"
    shutil.copytree(POLICIES, broken)
    authz = broken / "gateway" / "authz.rego"
    # A plausible mistake: forgetting that the signature must be verified.
    text = authz.read_text(encoding="utf-8")
    authz.write_text(
        text.replace('vetoes contains "unsigned" if not input.signature.verified == true\n', ""),
        encoding="utf-8",
    )
    result = _policy_test(tmp_path, broken)
    assert result.returncode == 1
    failures = re.findall(r"^FAIL (\S+)", result.stdout, re.MULTILINE)
    assert failures == [
        "gateway.authz_test.test_unsigned_denied_even_when_granted",
        "gateway.authz_test.test_missing_signature_denied",
        "gateway.authz_test.test_deny_reasons_are_sorted_and_complete",
    ]


def test_policy_never_parses_the_raw_path() -> None:
    for module in POLICIES.rglob("*.rego"):
        code = strip_comments(module.read_text(encoding="utf-8"))
        assert not re.search(r"\b(split|urlquery\.decode|regex\.\w+|glob\.\w+)\s*\(", code), module
        if not module.name.endswith("_test.rego"):
            assert not re.search(r"\binput\.path\b(?!_)", code), module


def test_built_in_policy_tests_run_with_no_policy_directory(tmp_path: Path) -> None:
    result = _policy_test(tmp_path, tmp_path / "no-such-directory")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^(\d+) tests, \1 passed, 0 failed", result.stdout, re.MULTILINE)


def test_an_extension_does_not_spoil_the_built_in_tests(tmp_path: Path) -> None:
    """The built-in tests describe the decision policy alone; the operator's own tests run with
    the extensions loaded, so a veto shows there and not as a failure of the built-in policy."""
    own = tmp_path / "policies"
    own.mkdir()
    (own / "freeze.rego").write_text(
        'package gateway_extensions.freeze\n\ndeny contains "frozen" if true\n', encoding="utf-8"
    )
    (own / "freeze_test.rego").write_text(
        "package freeze_test\n\n"
        "test_everything_is_frozen if data.gateway.authz.decision.allow == false with input as "
        '{"target": "erp", "method": "GET", "path_segments": ["api", "x"], '
        '"trailing_slash": false, "websocket": false, "header_names": [], "query": null, '
        '"signature": {"verified": true, "keyid": "k"}}\n',
        encoding="utf-8",
    )
    result = _policy_test(tmp_path, own)
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_extension_passes_its_test_once_enabled(tmp_path: Path) -> None:
    own = tmp_path / "policies"
    own.mkdir()
    for example in (POLICIES / "examples").glob("*.rego"):
        shutil.copy2(example, own / example.name)
    result = _policy_test(tmp_path, own)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failed" in result.stdout
