"""Fixtures for the sender-authentication unit tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.unit.auth.harness import Harness


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path / "state")


@pytest.fixture
def make_harness(tmp_path: Path) -> Callable[..., Harness]:
    def make(**options: int) -> Harness:
        return Harness(tmp_path / "state", **options)

    return make
