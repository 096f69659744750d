"""gateway.release: a captured release is read back whole, and what it holds is what the policy
loader and the signature check read, whatever the disk says afterwards."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from gateway.config import load
from gateway.errors import ConfigError
from gateway.gitops.signing import (
    SIGNATURE_SUFFIX,
    generate_key,
    load_private_key,
    sign_config,
    verify_signature,
)
from gateway.policy.loader import load_policies
from gateway.release import capture, read_snapshot, write_snapshot
from tests.unit.config.conftest import BASE


@pytest.fixture
def signed(tmp_path: Path) -> Path:
    """A gateway.yaml with a policy module of its own, signed; returns the config path."""
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "house.rego").write_text('package house\n\nlabel := "first"\n')
    public, _ = generate_key(tmp_path / "release.pem")
    config = tmp_path / "gateway.yaml"
    config.write_text(BASE + f"config_signature:\n  required: true\n  public_keys: [{public}]\n")
    loaded = load(config, check_host=False)
    key = load_private_key(tmp_path / "release.pem")
    config.with_name(config.name + SIGNATURE_SUFFIX).write_bytes(sign_config(loaded, key, 3))
    return config


def test_a_snapshot_serves_the_captured_release_after_the_disk_changed(
    signed: Path, tmp_path: Path
) -> None:
    captured = capture(load(signed, check_host=False))
    path = write_snapshot(tmp_path / "state", "release.json", captured)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = load_policies(captured).revision
    # The module changes and the signature goes, without a reload.
    (tmp_path / "policies" / "house.rego").write_text('package house\n\nlabel := "second"\n')
    signed.with_name(signed.name + SIGNATURE_SUFFIX).unlink()
    release = read_snapshot(path)
    again = release.apply(load(signed, check_host=False, source=release.source))
    assert load_policies(again).revision == before
    assert verify_signature(again).epoch == 3
    # The disk itself is refused now, as a gateway started from it would be.
    with pytest.raises(ConfigError):
        verify_signature(load(signed, check_host=False))
    assert load_policies(load(signed, check_host=False)).revision != before


@pytest.mark.parametrize(
    "content",
    [b"", b"[]", b'{"format": 2}', b'{"format": 1, "config": "!", "files": {}}', b"\xff" * 10],
)
def test_a_damaged_snapshot_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "release.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError):
        read_snapshot(path)
