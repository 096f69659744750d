"""Fixtures for the ``gateway check`` tests: a registered gateway beside a running DevStack."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.devkit.stack import DevStack, demo_config

from ..squid import Squid, squid_for_fixture


@dataclass
class Registered:
    """A DevStack and a gateway directory registered against it (no agent running)."""

    stack: DevStack
    directory: Path
    config: Path

    def rewrite(self, **sections: Any) -> Path:
        """Write gateway.yaml again with top-level ``sections`` replaced (None removes one)."""
        document = demo_config(self.stack)
        for key, value in sections.items():
            if value is None:
                document.pop(key, None)
            else:
                document[key] = value
        self.config.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        return self.config


@pytest.fixture
async def registered(tmp_path: Path) -> AsyncIterator[Registered]:
    """The devkit stack with this gateway registered at the control-plane simulator."""
    async with DevStack() as stack:
        directory = tmp_path / "gw"
        config = stack.write_gateway_dir(directory)
        await stack.register_gateway(directory)
        yield Registered(stack, directory, config)


@pytest.fixture(scope="session")
def squid_auth_proxy() -> Iterator[Squid]:
    """A squid on loopback that demands Basic credentials, shared by the session."""
    yield from squid_for_fixture(with_auth=True)
