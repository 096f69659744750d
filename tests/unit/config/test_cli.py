"""The validate, schema and version verbs as an operator and a CI pipeline use them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.commands.schema import render
from tests.unit.config.conftest import BASE, WriteConfig

ROOT = Path(__file__).parents[3]


def test_committed_schema_matches_the_model() -> None:
    regenerate = "run: gateway schema > schemas/gateway.schema.json && make data"
    committed = (ROOT / "schemas" / "gateway.schema.json").read_text(encoding="utf-8")
    assert committed == render(), regenerate
    # The copy the installed gateway ships (gateway/data) follows the repository's.
    packaged = ROOT / "gateway" / "data" / "schemas" / "gateway.schema.json"
    assert packaged.read_text(encoding="utf-8") == render(), regenerate


def test_schema_verb_prints_the_committed_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    printed = capsys.readouterr().out
    assert printed == (ROOT / "schemas" / "gateway.schema.json").read_text(encoding="utf-8")
    schema = json.loads(printed)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False


def test_validate_ok(write_config: WriteConfig, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(BASE)
    assert main(["validate", "-c", str(path)]) == 0
    assert "valid (1 targets, 1 operations" in capsys.readouterr().out


def test_validate_reports_file_line_column(
    write_config: WriteConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(BASE.replace("port: 8443", "port: 0").replace("[GET, POST]", "[get]"))
    assert main(["validate", "-c", str(path)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"{path}:13:11: targets.erp.port: must be at least 1, got 0"
    assert lines[1].startswith(f"{path}:17:19: targets.erp.operations[0].methods[0]: ")
    assert "write 'GET'" in lines[1]
    assert lines[2] == f"{path}: 2 problems"


def test_validate_refuses_what_run_refuses_for_its_signature(
    write_config: WriteConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    # run (and the supervisor's reload check) refuse an unsigned release when one is required;
    # validate asks the same function, so it cannot call this file valid.
    path = write_config(BASE + "config_signature:\n  required: true\n")
    assert main(["validate", "-c", str(path)]) == 1
    err = capsys.readouterr().err
    assert "signed configuration is required" in err
    assert not (path.parent / "state").exists() or not any((path.parent / "state").iterdir())


def test_validate_json_for_ci_bots(
    write_config: WriteConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(BASE.replace("allowed_cidrs", "alowed_cidrs"))
    assert main(["validate", "-c", str(path), "--format", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is False
    [problem] = report["problems"]
    assert problem == {
        "file": str(path),
        "line": 14,
        "column": 5,
        "path": "targets.erp.alowed_cidrs",
        "code": "unknown_key",
        "message": "unknown key 'alowed_cidrs'",
        "hint": "did you mean 'allowed_cidrs'?",
    }


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--bogus"]) == 2
    assert main(["no-such-verb"]) == 2
    assert main([]) == 2


def test_config_from_environment_variable(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(BASE)
    monkeypatch.setenv("GATEWAY_CONFIG", str(path))
    assert main(["validate"]) == 0


def test_default_is_gateway_yaml_in_the_current_directory(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(BASE)
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    monkeypatch.chdir(path.parent)
    assert main(["validate"]) == 0
    monkeypatch.chdir(path.parent / "policies")
    assert main(["validate"]) == 1
    assert "gateway.yaml: <root>: file not found" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["gateway"]
    assert "aiohttp" in report["components"]
    # The event loop's transports carry every socket on uvloop: its version is reported too.
    assert "uvloop" in report["components"]


def test_python_dash_m_runs_the_same_cli() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "validate",
            "-c",
            str(ROOT / "gateway.yaml.example"),
            "--skip-host-checks",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "valid (2 targets" in result.stdout


@pytest.mark.parametrize(
    "argv",
    [["version"], ["validate", "-c", str(ROOT / "gateway.yaml.example"), "--skip-host-checks"]],
)
def test_production_verbs_never_import_the_devkit(argv: list[str]) -> None:
    probe = (
        "import sys; from gateway.cli import main; import gateway.service; "
        f"code = main({argv!r}); "
        "loaded = sorted(m for m in sys.modules if m.startswith('gateway.devkit')); "
        "print(loaded); sys.exit(code or (1 if loaded else 0))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dev_tools_are_there_when_asked_for(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dev", "--help"]) == 0
    assert "relay" in capsys.readouterr().out


def test_check_names_a_port_out_of_range_instead_of_a_traceback(
    write_config: WriteConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    # check parsed empowerid.url itself before the configuration check had refused it.
    path = write_config(BASE.replace("empowerid.example", "empowerid.example:99999"))
    assert main(["check", "-c", str(path), "--timeout", "2"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  config" in out
    assert f"{path}:6:8: empowerid.url: port 99999" in out
