"""The shipped Rego policies: their own tests pass through ``gateway policy-test`` (as CI runs
it), a broken copy fails naming the test, and the policy never parses the raw path (catalogue
B 51)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from gateway.policy.cache import strip_comments

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
        timeout=60,
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
