"""Fixtures for configuration tests: a minimal valid gateway.yaml written to a temp dir."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

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
    """Write a config text (dedented) next to an existing policies/ directory; return its path."""
    (tmp_path / "policies").mkdir()

    def write(text: str) -> Path:
        path = tmp_path / "gateway.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write
