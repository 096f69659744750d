"""``gateway diff`` on Git revisions of one file, in a real temporary repository."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.gitops.sources import read_git_blob
from tests.unit.gitops.conftest import BASE

GIT = shutil.which("git")
pytestmark = pytest.mark.skipif(GIT is None, reason="git is not installed")


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
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository with two commits of deploy/gateway.yaml: the second adds DELETE."""
    root = tmp_path / "repo"
    (root / "deploy").mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    config = root / "deploy" / "gateway.yaml"
    config.write_text(BASE)
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "first")
    config.write_text(BASE.replace("[PATCH]", "[PATCH, DELETE]"))
    git(root, "commit", "-q", "-am", "widen")
    monkeypatch.chdir(root)
    return root


def test_two_revisions(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", "HEAD~1:deploy/gateway.yaml", "HEAD:deploy/gateway.yaml"]) == 10
    out = capsys.readouterr().out
    assert "erp: operation update-account now also allows DELETE on /api/accounts/*" in out
    assert "HEAD~1:deploy/gateway.yaml -> HEAD:deploy/gateway.yaml" in out
    assert main(["diff", "HEAD:deploy/gateway.yaml", "HEAD~1:deploy/gateway.yaml"]) == 11


def test_revision_against_working_tree_file(
    repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["diff", "main:deploy/gateway.yaml", "deploy/gateway.yaml"]) == 0
    capsys.readouterr()
    # From a subdirectory, REV:./PATH is relative to it (git's own rule).
    monkeypatch.chdir(repo / "deploy")
    assert main(["diff", "HEAD~1:./gateway.yaml", "gateway.yaml", "--format", "markdown"]) == 10
    assert "#### Widened (needs security review) (1)" in capsys.readouterr().out


def test_invalid_revision_content_is_reported_against_the_revision(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "deploy" / "gateway.yaml").write_text(BASE.replace("port: 8443", "port: 0"))
    git(repo, "commit", "-q", "-am", "break")
    assert main(["diff", "HEAD~1:deploy/gateway.yaml", "HEAD:deploy/gateway.yaml"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("HEAD:deploy/gateway.yaml:11:11: targets.erp.port: ")
    assert "/tmp" not in err.splitlines()[0]


def test_unknown_revision_path_and_tree(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", "nosuch:deploy/gateway.yaml", "deploy/gateway.yaml"]) == 1
    assert "nosuch:deploy/gateway.yaml: <root>: git cannot read it" in capsys.readouterr().err
    assert main(["diff", "HEAD:absent.yaml", "deploy/gateway.yaml"]) == 1
    assert "git cannot read it" in capsys.readouterr().err
    assert main(["diff", "HEAD:deploy", "deploy/gateway.yaml"]) == 1
    assert "is a tree, not a file" in capsys.readouterr().err


def test_option_lookalike_revision_is_refused(repo: Path) -> None:
    with pytest.raises(Exception, match="cannot start with '-'"):
        read_git_blob("--output=x:deploy/gateway.yaml", cwd=repo)


def test_outside_a_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    outside = tmp_path / "plain"
    outside.mkdir()
    (outside / "gateway.yaml").write_text(BASE)
    monkeypatch.chdir(outside)
    # Stop git from finding a repository above the temporary directory.
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert main(["diff", "HEAD:gateway.yaml", "gateway.yaml"]) == 1
    err = capsys.readouterr().err
    assert "HEAD:gateway.yaml: <root>: not inside a Git repository" in err
    assert "compare two files" in err
