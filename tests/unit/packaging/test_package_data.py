"""The files the installed agent reads ship inside the package and equal the repository's
human-facing copies (``policies/``, ``schemas/``, ``gateway.yaml.example``) byte for byte.

After changing the repository's copy, run ``make data`` to copy it into the package.
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

from gateway import packaged
from gateway.commands.schema import SCHEMA_FILE
from gateway.config.model import SCHEMA_ID

ROOT = Path(__file__).resolve().parents[3]


def _tree(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


@pytest.mark.parametrize(
    ("repository", "package"),
    [
        (ROOT / "policies", packaged.POLICY_ROOT),
        (ROOT / "schemas", packaged.SCHEMAS),
    ],
    ids=["policies", "schemas"],
)
def test_packaged_directories_equal_the_repository_copies(repository: Path, package: Path) -> None:
    ours, shipped = _tree(repository), _tree(package)
    assert sorted(ours) == sorted(shipped), "run `make data`"
    stale = [name for name in ours if ours[name] != shipped[name]]
    assert not stale, f"differ between {repository} and {package}: {stale}; run `make data`"


def test_starter_config_equals_the_example() -> None:
    example = (ROOT / "gateway.yaml.example").read_text("utf-8")
    assert packaged.starter_config() == example, "run `make data`"


def test_every_packaged_file_is_declared_as_package_data() -> None:
    """A file under gateway/data that no package-data pattern names would be missing from the
    wheel (the wheel test would notice too, but only for the files it uses)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["gateway"]
    for name in _tree(packaged.DATA):
        assert any(fnmatch(f"data/{name}", p) for p in patterns), name


def test_schema_has_a_stable_id_and_the_modeline_names_the_written_file() -> None:
    schema = json.loads(packaged.schema_text("gateway.schema.json"))
    assert schema["$id"] == SCHEMA_ID
    modeline = re.search(
        r"^# yaml-language-server: \$schema=(\S+)$", packaged.starter_config(), re.M
    )
    assert modeline is not None
    assert modeline.group(1) == SCHEMA_FILE


def test_schema_text_refuses_paths() -> None:
    with pytest.raises(ValueError, match="not a schema file name"):
        packaged.schema_text("../gateway.yaml.example")


def test_make_demo_says_what_it_does_and_where_the_command_is(tmp_path: Path) -> None:
    """A first `make demo` creates the virtual environment: it says so, lets pip show progress,
    and names the installed command (make -n prints the recipe without running it)."""
    venv = tmp_path / "venv"
    result = subprocess.run(
        ["make", "-n", "-B", "demo", f"VENV={venv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "creating the virtual environment" in result.stdout
    assert "pip install --quiet -e" not in result.stdout
    assert f"the gateway command is {venv}/bin/gateway" in result.stdout
