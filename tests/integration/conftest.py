"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.devkit.stack import SampleTargets


@pytest.fixture
async def targets() -> AsyncIterator[SampleTargets]:
    """The devkit's sample HTTP targets on loopback, stopped after the test."""
    sample = SampleTargets()
    await sample.start()
    yield sample
    await sample.stop()
