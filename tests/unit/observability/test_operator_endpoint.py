"""The operator endpoint's published address in the state directory (health.ENDPOINT_FILE)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.observability.health import (
    ENDPOINT_FILE,
    publish_endpoint,
    published_endpoint,
    withdraw_endpoint,
)


def test_published_withdrawn_and_read_back(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert published_endpoint(state) is None
    assert publish_endpoint(state, "[::1]", 40123) == "[::1]:40123"
    assert (state / ENDPOINT_FILE).read_text() == "[::1]:40123\n"
    assert published_endpoint(state) == "[::1]:40123"
    withdraw_endpoint(state, "[::1]:40123")
    assert not (state / ENDPOINT_FILE).exists()


def test_a_later_gateways_address_is_not_withdrawn(tmp_path: Path) -> None:
    publish_endpoint(tmp_path, "127.0.0.1", 40124)
    withdraw_endpoint(tmp_path, "127.0.0.1:40125")
    assert published_endpoint(tmp_path) == "127.0.0.1:40124"


@pytest.mark.parametrize(
    "content", ["", "\n", "127.0.0.1\n", "127.0.0.1:0\n", "127.0.0.1:70000\n", ":9464\n", "x:-1"]
)
def test_anything_but_host_and_port_is_no_address(tmp_path: Path, content: str) -> None:
    (tmp_path / ENDPOINT_FILE).write_text(content)
    assert published_endpoint(tmp_path) is None
