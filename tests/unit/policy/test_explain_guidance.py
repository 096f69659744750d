"""``gateway explain`` says why a header is dropped, and explains streams without a made-up
method or path: a WebSocket at its path, a raw stream to a tcp target as just the target."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from tests.unit.policy.conftest import config_text


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    # No policy directory: the built-in policy decides.
    path.write_text(config_text([tmp_path / "policies"]), encoding="utf-8")
    return path


def _json(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    document: dict[str, object] = json.loads(capsys.readouterr().out)
    return document


def test_a_header_the_operation_does_not_list_is_named_as_dropped(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["explain", "-c", str(config_file), "GET", "erp", "/api/orders"]
    headers = ["-H", "Authorization: Bearer x", "-H", "Accept: */*", "-H", "Connection: close"]
    assert main([*argv, *headers]) == 0
    out = capsys.readouterr().out
    assert "drops:     authorization - operation 'read-orders' does not list it in headers" in out
    assert "drops:     connection - never forwarded" in out
    assert "Bearer" not in out  # names only, never values
    assert main([*argv, *headers, "--format", "json"]) == 0
    because = _json(capsys)["headers"]
    assert isinstance(because, dict)
    assert set(because["dropped_because"]) == {"authorization", "connection"}


def test_a_raw_stream_to_a_tcp_target_has_no_method_or_path(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["explain", "-c", str(config_file), "--stream", "directory"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("request:   raw stream to directory (tcp target: no method, no path)")
    assert "GET" not in out
    assert " / " not in out
    assert "tcp target 'directory' allows streams as a whole" in out
    assert (
        main(["explain", "-c", str(config_file), "--stream", "directory", "--format", "json"]) == 0
    )
    request = _json(capsys)["request"]
    assert request == {
        "method": None,
        "target": "directory",
        "path": None,
        "websocket": False,
        "stream": True,
    }


def test_an_http_request_to_a_tcp_target_points_at_the_stream_form(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["explain", "-c", str(config_file), "GET", "directory", "/"]) == 3
    assert "gateway explain --stream directory" in capsys.readouterr().out


def test_a_websocket_stream_is_explained_at_its_path(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["explain", "-c", str(config_file), "--stream", "erp", "/events/live"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("request:   WebSocket stream to erp /events/live")
    assert "ALLOW by operation 'events'" in out
    # The form written before --stream existed still works.
    argv = ["explain", "-c", str(config_file), "GET", "erp", "/events/live", "--websocket"]
    assert main(argv) == 0


@pytest.mark.parametrize(
    "words",
    [["--stream", "erp"], ["GET", "erp"], ["--stream", "a", "b", "c", "d"]],
)
def test_incomplete_requests_are_usage_errors(
    config_file: Path, words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["explain", "-c", str(config_file), *words]) == 2
    assert "gateway explain:" in capsys.readouterr().err
