"""Fixtures for the sender-authentication unit tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.unit.auth.harness import Harness


# Each test runs twice: on a fresh verifier (every request read in general), and on one that has
# already learnt the signer's shapes (its requests read as shapes, everything else in general).
@pytest.fixture(params=["fresh", "primed"])
def harness(tmp_path: Path, request: pytest.FixtureRequest) -> Harness:
    made = Harness(tmp_path / "state")
    if request.param == "primed":
        made.prime()
    return made


@pytest.fixture(params=["fresh", "primed"])
def make_harness(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[..., Harness]:
    def make(**options: int) -> Harness:
        made = Harness(tmp_path / "state", **options)
        if request.param == "primed":
            made.prime()
        return made

    return make
