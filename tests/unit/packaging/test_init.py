"""``gateway init``: the starter files from the package, modes the agent accepts whatever the
umask, and never an overwritten file."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import packaged
from gateway.cli import main
from gateway.config import load
from gateway.policy.loader import load_policies


@pytest.fixture
def loose_umask() -> Iterator[None]:
    # A shared-group umask: files would be group-writable, which the agent refuses to load.
    previous = os.umask(0o002)
    try:
        yield
    finally:
        os.umask(previous)


def test_init_writes_the_starter_set(
    tmp_path: Path, loose_umask: None, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "new" / "gw"
    assert main(["init", str(target)]) == 0
    written = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert written == [
        ".gitignore",
        "gateway.schema.json",
        "gateway.yaml",
        "policies/examples/change_window.rego",
        "policies/examples/change_window_test.rego",
    ]
    assert (target / "gateway.yaml").read_text(encoding="utf-8") == packaged.starter_config()
    for path in [target, *target.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), path
    # The starter file loads, and the built-in policy alone decides (examples are not loaded).
    policies = load_policies(load(target / "gateway.yaml", check_host=False))
    assert all(module.builtin for module in policies.modules)
    assert "next: edit gateway.yaml" in capsys.readouterr().out


def test_init_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "gateway.yaml").write_text("# mine\n", encoding="utf-8")
    (tmp_path / ".gitignore").write_text("mine/\n", encoding="utf-8")
    assert main(["init", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"kept  {tmp_path / 'gateway.yaml'}" in out
    assert f"wrote {tmp_path / 'gateway.schema.json'}" in out
    assert (tmp_path / "gateway.yaml").read_text(encoding="utf-8") == "# mine\n"
    assert (tmp_path / ".gitignore").read_text(encoding="utf-8") == "mine/\n"


def test_init_reports_what_it_cannot_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A file where the directory should be: nothing can be written below it, even as root.
    blocker = tmp_path / "gw"
    blocker.write_text("not a directory\n", encoding="utf-8")
    assert main(["init", str(blocker)]) == 1
    err = capsys.readouterr().err
    assert f"cannot write {blocker / 'gateway.yaml'}" in err
    assert blocker.read_text(encoding="utf-8") == "not a directory\n"


@pytest.mark.parametrize("text", ["", "- a list\n"])
def test_an_empty_or_shapeless_file_points_at_init(
    tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An installed gateway has no gateway.yaml.example on disk: the hint names the command that
    writes the starter file."""
    config = tmp_path / "gateway.yaml"
    config.write_text(text, encoding="utf-8")
    assert main(["validate", "-c", str(config)]) == 1
    assert "(hint: run `gateway init` for a commented starter file)" in capsys.readouterr().err
