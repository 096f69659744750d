"""The sample GitOps pipeline and pre-commit hook, run for real on a temporary repository.

The workflow's own ``run:`` scripts are executed with bash (as GitHub Actions does, ``bash -e``)
with the gateway of this checkout on PATH; only steps that need GitHub itself (installing from the
package index, commenting, uploading) are left out.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import main
from gateway.config import load
from gateway.gitops.signing import generate_key, verify_signed_config
from gateway.observability.audit import AuditLog
from gateway.pipeline import AuditRecord, Chain, RequestFacts, new_decision_id
from gateway.policy.loader import build_engine
from tests.unit.gitops.conftest import BASE

ROOT = Path(__file__).parents[3]
WORKFLOW = ROOT / "examples" / "gitops" / "github-actions.yml"
BASH = shutil.which("bash")
GIT = shutil.which("git")
# Tens of seconds: started first in a parallel run (tests/conftest.py).
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(BASH is None or GIT is None, reason="needs bash and git"),
]

SIGNED = BASE + "config_signature:\n  required: true\n  public_keys: [release.pem.pub]\n"


def steps(job: str) -> dict[str, dict[str, Any]]:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    return {step["name"]: step for step in workflow["jobs"][job]["steps"] if "name" in step}


def run_step(
    step: dict[str, Any], repo: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    assert BASH is not None
    bin_dir = str(Path(sys.executable).parent)
    full = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        **yaml.safe_load(WORKFLOW.read_text())["env"],  # the workflow's own settings
        **env,
    }
    return subprocess.run(
        [BASH, "-e", "-o", "pipefail", "-c", step["run"]],
        cwd=repo,
        env=full,
        capture_output=True,
        text=True,
        # A hang guard, not a speed check: a step runs several gateway commands, each proving
        # its policy in a child process, and CI's loaded run shares the CPU with a hog.
        timeout=300,
        check=False,
    )


def git(repo: Path, *args: str) -> None:
    assert GIT is not None
    subprocess.run(
        [GIT, "-c", "user.name=ci", "-c", "user.email=ci@example.invalid", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        timeout=30,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A config repository: main has BASE, the checked-out branch widens it."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copytree(ROOT / "policies", root / "policies")
    (root / "gateway.yaml").write_text(SIGNED)
    asyncio.run(record_sample(root / "gateway.yaml", root / "decisions" / "decisions.jsonl"))
    generate_key(tmp_path / "release.pem")
    shutil.copy(tmp_path / "release.pem.pub", root / "release.pem.pub")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "base")
    git(root, "update-ref", "refs/remotes/origin/main", "main")
    git(root, "checkout", "-q", "-b", "change")
    (root / "gateway.yaml").write_text(SIGNED.replace("[PATCH]", "[PATCH, DELETE]"))
    git(root, "commit", "-q", "-am", "allow deleting accounts")
    return root


# Requests EmpowerID sent under the base configuration: (method, relayed target).
SAMPLE = [
    ("GET", "/erp/api/accounts"),
    ("GET", "/erp/api/accounts/7?expand=groups"),
    ("PATCH", "/erp/api/accounts/7"),
    ("DELETE", "/erp/api/accounts/7"),
    ("DELETE", "/erp/api/accounts/8"),
    ("POST", "/erp/api/accounts"),
]


async def record_sample(config: Path, log: Path) -> None:
    """A decision log for ``SAMPLE`` as a gateway running ``config`` writes it: each request
    decided by the chain of steps, recorded through the pipeline's audit record."""
    loaded = load(config, env={}, check_host=False)
    engine = build_engine(loaded)
    chain = Chain(loaded.config, engine)
    log.parent.mkdir()
    audit = AuditLog(log)
    await engine.start()
    try:
        for method, relayed in SAMPLE:
            headers = [("accept", "application/json")]
            facts = RequestFacts.relayed(method, relayed, headers, keyid="empowerid-1")
            record = AuditRecord(
                decision_id=new_decision_id(),
                kind="http",
                revision=loaded.revision,
                started=time.time(),
                method=method,
                relayed=relayed,
                headers=headers,
                keyid="empowerid-1",
            )
            (await chain.decide(facts)).record(record)
            audit.write(record.as_dict())
    finally:
        await engine.close()
        audit.close()


def test_merge_request_steps(repo: Path, tmp_path: Path) -> None:
    review = steps("review")
    summary, output = tmp_path / "summary.md", tmp_path / "output"
    env = {"BASE_REF": "main", "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_OUTPUT": str(output)}
    for name in (
        "Validate",
        "Policy tests",
        "Permission diff",
        "Replay recorded decisions",
        "One comment with both reports",
    ):
        done = run_step(review[name], repo, env)
        assert done.returncode == 0, (name, done.stdout, done.stderr)
    assert "widened=true" in output.read_text()
    assert "newly_allowed=true" in output.read_text()
    comment = (repo / "comment.md").read_text()
    # One comment: the change on paper, then what it does to the recorded requests.
    assert comment.index("### gateway diff") < comment.index("### gateway replay")
    assert "now also allows `DELETE` on `/api/accounts/*`" in comment
    assert "#### Newly allowed (2)" in comment
    assert "| 2 | `erp/update-account` |" in comment
    assert "`DELETE /erp/api/accounts/7`" in comment
    assert "Newly denied" not in comment
    assert summary.read_text().count("### gateway ") == 2
    assert "replay" in review["Widened permissions need a security reviewer's label"]["if"]


def test_an_edited_decision_sample_fails_the_merge_request(repo: Path, tmp_path: Path) -> None:
    log = repo / "decisions" / "decisions.jsonl"
    log.write_text(log.read_text().replace('"result":"denied"', '"result":"allowed"', 1))
    env = {"GITHUB_STEP_SUMMARY": str(tmp_path / "s"), "GITHUB_OUTPUT": str(tmp_path / "o")}
    done = run_step(steps("review")["Replay recorded decisions"], repo, env)
    assert done.returncode == 1
    assert "broken" in done.stdout


def test_merge_request_with_an_invalid_file_fails(repo: Path, tmp_path: Path) -> None:
    (repo / "gateway.yaml").write_text(SIGNED.replace("port: 8443", "port: 0"))
    env = {
        "BASE_REF": "main",
        "GITHUB_STEP_SUMMARY": str(tmp_path / "s"),
        "GITHUB_OUTPUT": str(tmp_path / "o"),
    }
    done = run_step(steps("review")["Permission diff"], repo, env)
    assert done.returncode == 1
    assert "targets.erp.port" in done.stderr


def test_release_steps_sign_what_the_gateway_accepts(repo: Path, tmp_path: Path) -> None:
    sign = steps("sign")
    env = {
        "SIGNING_KEY": (tmp_path / "release.pem").read_text(),
        "RUNNER_TEMP": str(tmp_path / "runner"),
    }
    (tmp_path / "runner").mkdir()
    for name in ("Validate and test before signing", "Sign"):
        done = run_step(sign[name], repo, env)
        assert done.returncode == 0, (name, done.stdout, done.stderr)
    assert not (tmp_path / "runner" / "release.pem").exists(), "the key must not stay on disk"
    verified = verify_signed_config(
        load(repo / "gateway.yaml", env={}, check_host=False), tmp_path / "state"
    )
    assert verified.epoch is not None
    assert verified.epoch > 1_600_000_000  # the commit time


def test_pre_commit_hook_entry_runs(capsys: pytest.CaptureFixture[str]) -> None:
    [hook] = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "gateway-validate"
    assert hook["pass_filenames"] is False
    program, *args = hook["entry"].split()
    assert program == "gateway"
    consumer = yaml.safe_load((ROOT / "examples" / "gitops" / "pre-commit-config.yaml").read_text())
    [configured] = consumer["repos"][0]["hooks"]
    assert configured["id"] == hook["id"]
    assert main([*args, "-c", str(ROOT / "gateway.yaml.example")]) == 0
    assert "valid" in capsys.readouterr().out
