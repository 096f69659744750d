"""The file watch reloads settled changes of every file a reload reads, on real files."""

from __future__ import annotations

import os
from pathlib import Path

from gateway.config import load
from gateway.filewatch import FileWatch
from tests.unit.config.conftest import BASE


def _touch(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    # A distinct modification time whatever the file system's clock resolution.
    stamp = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(stamp, stamp))


def _watching(tmp_path: Path) -> tuple[FileWatch, Path]:
    (tmp_path / "policies").mkdir()
    config = tmp_path / "gateway.yaml"
    config.write_text(BASE, encoding="utf-8")
    watch = FileWatch(str(config))
    seen = watch.state()
    watch.follow(load(config, env={}), seen)
    return watch, config


def test_a_change_is_reloaded_once_it_has_settled(tmp_path: Path) -> None:
    watch, config = _watching(tmp_path)
    assert watch.poll() is False
    _touch(config, BASE + "# first half of a rollout\n")
    assert watch.poll() is False  # maybe still being written
    _touch(config, BASE + "# the whole rollout\n")
    assert watch.poll() is False  # it was: still moving
    assert watch.poll() is True  # unchanged for one poll: reload
    assert watch.poll() is False  # and once only


def test_a_policy_only_rollout_is_seen(tmp_path: Path) -> None:
    watch, _ = _watching(tmp_path)
    module = tmp_path / "policies" / "hours.rego"
    _touch(module, "package gateway_extensions.hours\n")
    assert [watch.poll(), watch.poll()] == [False, True]
    _touch(module, "package gateway_extensions.hours\n\nx := 1\n")
    assert [watch.poll(), watch.poll()] == [False, True]
    module.unlink()
    assert [watch.poll(), watch.poll()] == [False, True]
    # Files the loader skips are not part of a revision.
    examples = tmp_path / "policies" / "examples"
    examples.mkdir()
    _touch(examples / "sample.rego", "package gateway_extensions.sample\n")
    assert [watch.poll(), watch.poll()] == [False, False]


def test_the_release_signature_is_watched(tmp_path: Path) -> None:
    watch, _ = _watching(tmp_path)
    _touch(tmp_path / "gateway.yaml.signatures.json", "{}")
    assert [watch.poll(), watch.poll()] == [False, True]


def test_a_change_made_while_a_reload_read_the_files_is_not_lost(tmp_path: Path) -> None:
    watch, config = _watching(tmp_path)
    seen = watch.state()  # the reload starts reading ...
    _touch(config, BASE + "# saved again meanwhile\n")
    watch.follow(load(config, env={}), seen)  # ... and is done
    assert [watch.poll(), watch.poll()] == [False, True]
