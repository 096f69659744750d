"""Fixtures for policy tests: a gateway.yaml that uses the shipped policies/ directory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config import LoadedConfig, load

ROOT = Path(__file__).parents[3]
SHIPPED_POLICIES = ROOT / "policies"

TARGETS = """\
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
      - name: events
        methods: [GET]
        paths: [/events/**]
        websocket: true
  directory:
    scheme: tcp
    host: dc01.corp.local
    port: 636
    allowed_cidrs: [10.1.3.10/32]
"""

MakeConfig = Callable[..., LoadedConfig]


def fresh_process_report(code: str, *args: str) -> Any:
    """Run ``code`` with ``args`` in a fresh interpreter started in the repository; the JSON
    value of the last line it prints. Native load order and allocator state are per process,
    so tests about them need one of their own."""
    completed = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def config_text(directories: list[Path], *, mode: str = "enforce", extra: str = "") -> str:
    """A complete gateway.yaml using ``directories`` for policies."""
    dirs = ", ".join(f'"{d}"' for d in directories)
    head = textwrap.dedent(
        f"""\
        version: 1
        gateway:
          id: agent-1
        empowerid:
          url: https://tenant.empowerid.example
        policy:
          directories: [{dirs}]
          mode: {mode}
        """
    )
    return head + extra + TARGETS


@pytest.fixture
def make_config(tmp_path: Path) -> MakeConfig:
    """Write a gateway.yaml (shipped policies plus ``extra_dirs``) and load it."""

    def make(
        *, extra_dirs: tuple[Path, ...] = (), mode: str = "enforce", shipped: bool = True
    ) -> LoadedConfig:
        directories = ([SHIPPED_POLICIES] if shipped else []) + list(extra_dirs)
        path = tmp_path / "gateway.yaml"
        path.write_text(config_text(directories, mode=mode), encoding="utf-8")
        return load(path, check_host=False)

    return make


def request_input(
    method: str = "GET",
    segments: tuple[str, ...] = ("api", "orders"),
    *,
    target: str = "erp",
    trailing_slash: bool = False,
    websocket: bool = False,
    verified: bool = True,
    query: str | None = None,
) -> dict[str, object]:
    """An input document shaped like gateway.policy.input.build_input's."""
    path = "/" + "/".join(segments) + ("/" if trailing_slash and segments else "")
    return {
        "target": target,
        "method": method,
        "path": path,
        "path_segments": list(segments),
        "trailing_slash": trailing_slash,
        "query": query,
        "header_names": ["accept"],
        "websocket": websocket,
        "signature": {"verified": verified, "keyid": "empowerid-2026" if verified else None},
    }
