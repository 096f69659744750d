"""The demo's LDAP steps run only where slapd and ldap3 are, and say so when they cannot."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.devkit import demo
from gateway.devkit import slapd as devkit_slapd


def test_without_slapd_the_demo_names_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(devkit_slapd, "SLAPD", str(tmp_path / "no-slapd"))
    reason = demo._ldap_unavailable()
    assert reason is not None
    assert "no-slapd is not installed" in reason
    assert "apt-get install slapd ldap-utils" in reason


def test_with_slapd_and_ldap3_the_steps_run() -> None:
    if devkit_slapd.unavailable_reason() is not None:
        pytest.skip(str(devkit_slapd.unavailable_reason()))
    assert demo._ldap_unavailable() is None
