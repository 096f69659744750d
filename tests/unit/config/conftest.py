"""Fixtures for configuration tests: a minimal valid gateway.yaml written to a temp dir."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

SHIPPED_POLICIES = Path(__file__).parents[3] / "policies"

BASE = """\
version: 1
gateway:
  id: agent-1
  state_dir: state
empowerid:
  url: https://tenant.empowerid.example
policy:
  directories: [policies]
targets:
  erp:
    scheme: https
    host: erp.corp.local
    port: 8443
    allowed_cidrs: [10.1.2.0/24]
    operations:
      - name: read-orders
        methods: [GET, POST]
        paths: [/api/*]
"""

WriteConfig = Callable[[str], Path]


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    """Write a config text (dedented) next to a policies/ directory holding the shipped policy
    (``validate`` proves the policy decides, as ``run`` does); return its path."""
    shutil.copytree(SHIPPED_POLICIES / "gateway", tmp_path / "policies" / "gateway")

    def write(text: str) -> Path:
        path = tmp_path / "gateway.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write
