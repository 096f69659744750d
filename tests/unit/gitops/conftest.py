"""Fixtures for GitOps tests: real configuration directories with the shipped policies."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[3]

BASE = """\
version: 1
gateway:
  id: agent-1
  state_dir: state
empowerid:
  url: https://tenant.empowerid.example
targets:
  erp:
    scheme: https
    host: erp.corp.local
    port: 8443
    allowed_cidrs: [10.1.2.0/24]
    limits:
      max_concurrent_requests: 32
    operations:
      - name: list-accounts
        methods: [GET, HEAD]
        paths: [/api/accounts, /api/accounts/*]
      - name: update-account
        methods: [PATCH]
        paths: [/api/accounts/*]
        headers: [Authorization]
      - name: account-events
        methods: [GET]
        paths: [/api/events/**]
  directory:
    scheme: tcp
    host: dc01.corp.local
    port: 636
    allowed_cidrs: [10.1.3.10/32]
"""

WriteConfig = Callable[..., Path]


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A directory with a copy of the shipped ``policies/`` (examples included, as shipped)."""
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    return tmp_path


@pytest.fixture
def write_config(config_dir: Path) -> WriteConfig:
    """Write dedented config text as ``name`` in the config directory; return its path."""

    def write(text: str, name: str = "gateway.yaml") -> Path:
        path = config_dir / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write
