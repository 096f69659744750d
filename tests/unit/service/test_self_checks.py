"""Start-up self-checks (catalogue C 67, F 109): the runtime and the files that decide access."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import load
from gateway.devkit.stack import DevStack
from gateway.outbound.sessions import (
    MIN_AIOHTTP,
    aiohttp_version_problem,
    http_parser_problem,
)
from gateway.service import (
    EXIT_CONFIG,
    EXIT_IDENTITY,
    Agent,
    AgentOptions,
    StartError,
    aiohttp_features,
    permission_problems,
    self_check,
)

POLICIES = Path(__file__).resolve().parents[3] / "policies"


@pytest.mark.parametrize(
    ("version", "refused"),
    [
        ("3.13.4", False),
        ("3.13.5", False),
        ("3.14.5", False),
        ("4.0.0a1", False),
        ("3.13.4.post1", False),
        ("3.13.3", True),
        ("3.9.5", True),
        ("3.13.4rc1", True),  # a pre-release comes before its release (PEP 440)
        ("3.13.4.dev0", True),
        ("3.13", True),
        ("", True),
        ("three", True),
    ],
)
def test_aiohttp_versions(version: str, refused: bool) -> None:
    assert (aiohttp_version_problem(version) is not None) is refused


@given(st.tuples(*(st.integers(0, 40),) * 3))
def test_any_release_is_refused_exactly_when_older_than_the_minimum(
    release: tuple[int, int, int],
) -> None:
    version = ".".join(map(str, release))
    assert (aiohttp_version_problem(version) is not None) is (release < MIN_AIOHTTP)


def test_this_environment_passes(tmp_path: Path) -> None:
    assert http_parser_problem() is None
    loaded = load(minimal_config(tmp_path / "gw", aiohttp_feature=True))
    assert aiohttp_features(loaded.config) != []
    assert self_check(loaded.config) == []


def minimal_config(directory: Path, *, aiohttp_feature: bool = False) -> Path:
    """A valid gateway.yaml with its own copy of the policies and no identity yet; with
    ``aiohttp_feature``, decided by an OPA server (which the gateway reaches through aiohttp)."""
    directory.mkdir(mode=0o755, exist_ok=True)
    shutil.copytree(POLICIES, directory / "policies")
    path = directory / "gateway.yaml"
    document = {
        "version": 1,
        "gateway": {"id": "agent-1", "state_dir": "state"},
        "empowerid": {"url": "https://tenant.example"},
        "policy": {"directories": ["policies"]},
        "observability": {"enabled": False},
        "targets": {
            "ldap": {
                "scheme": "tcp",
                "host": "127.0.0.1",
                "port": 389,
                "allow_special_addresses": True,
            }
        },
    }
    if aiohttp_feature:
        document["policy"] = {
            "directories": ["policies"],
            "engine": "opa",
            "opa_url": "http://127.0.0.1:8181",
        }
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    path.chmod(0o600)
    return path


def run_without_aiohttp_extensions(config: Path) -> subprocess.CompletedProcess[str]:
    """``gateway run`` in a fresh interpreter whose aiohttp would use its pure-Python parser."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--allow-root", "-c", str(config)],
        env={**os.environ, "AIOHTTP_NO_EXTENSIONS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_pure_python_parser_refuses_to_start(tmp_path: Path) -> None:
    done = run_without_aiohttp_extensions(minimal_config(tmp_path / "gw", aiohttp_feature=True))
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert "pure-Python parser" in done.stderr
    assert "AIOHTTP_NO_EXTENSIONS" in done.stderr


def test_a_gateway_that_does_not_use_aiohttp_is_not_refused_for_its_parser(
    tmp_path: Path,
) -> None:
    # Nothing configured speaks through aiohttp, so it is never imported: start-up goes on to the
    # identity (none registered here).
    done = run_without_aiohttp_extensions(minimal_config(tmp_path / "gw"))
    assert done.returncode == EXIT_IDENTITY, done.stderr
    assert "pure-Python parser" not in done.stderr


def test_no_aiohttp_session_is_made_when_aiohttp_fails_its_check() -> None:
    # A fresh interpreter: aiohttp picks its parser when it is imported.
    probe = (
        "from gateway.outbound.sessions import client_session, UntrustedRuntimeError\n"
        "try:\n    client_session()\nexcept UntrustedRuntimeError as exc:\n    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "AIOHTTP_NO_EXTENSIONS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "pure-Python parser" in done.stdout, done.stderr


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (
            {"policy": {"directories": ["policies"], "engine": "opa", "opa_url": "http://o:1"}},
            "policy.engine",
        ),
        (
            {
                "credentials": {
                    "tok": {
                        "oauth2_client_credentials": {
                            "token_url": "https://127.0.0.1/token",
                            "client_id": "c",
                            "client_secret": {"env": "X_SECRET"},
                            "allow_special_addresses": True,
                        }
                    }
                }
            },
            "credentials.tok",
        ),
        (
            {
                "targets": {
                    "app": {
                        "scheme": "http",
                        "host": "127.0.0.1",
                        "allow_special_addresses": True,
                        "operations": [
                            {"name": "ws", "methods": ["GET"], "paths": ["/ws"], "websocket": True}
                        ],
                    }
                }
            },
            "targets.app",
        ),
    ],
    ids=["opa", "oauth", "websocket"],
)
def test_each_feature_that_speaks_through_aiohttp_is_named(
    tmp_path: Path, change: dict[str, object], path: str
) -> None:
    config = minimal_config(tmp_path / "gw")
    document = yaml.safe_load(config.read_text(encoding="utf-8"))
    document.update(change)
    config.write_text(yaml.safe_dump(document), encoding="utf-8")
    assert [found for found, _ in aiohttp_features(load(config, check_host=False).config)] == [path]
    assert aiohttp_features(load(minimal_config(tmp_path / "plain")).config) == []


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o400])
def test_owner_writable_files_pass(tmp_path: Path, mode: int) -> None:
    file = tmp_path / "gateway.yaml"
    file.write_text("x", encoding="utf-8")
    file.chmod(mode)
    assert permission_problems([file]) == []


@pytest.mark.parametrize(("mode", "who"), [(0o664, "group"), (0o646, "others"), (0o666, "and")])
def test_group_or_world_writable_files_are_refused(tmp_path: Path, mode: int, who: str) -> None:
    file = tmp_path / "gateway.yaml"
    file.write_text("x", encoding="utf-8")
    file.chmod(mode)
    [problem] = permission_problems([file])
    assert str(file) in problem
    assert who in problem


def test_a_symlink_is_judged_by_the_file_it_leads_to(tmp_path: Path) -> None:
    unsafe, safe = tmp_path / "unsafe.yaml", tmp_path / "safe.yaml"
    for file, mode in ((unsafe, 0o666), (safe, 0o600)):
        file.write_text("x", encoding="utf-8")
        file.chmod(mode)
    to_unsafe, to_safe = tmp_path / "a.yaml", tmp_path / "b.yaml"
    to_unsafe.symlink_to(unsafe)
    to_safe.symlink_to(safe)
    [problem] = permission_problems([to_unsafe])
    assert f"-> {unsafe}" in problem
    assert permission_problems([to_safe]) == []


@pytest.mark.parametrize(("mode", "refused"), [(0o777, True), (0o775, True), (0o1777, False)])
def test_a_directory_others_could_swap_the_file_in_is_refused(
    tmp_path: Path, mode: int, refused: bool
) -> None:
    directory = tmp_path / "etc"
    directory.mkdir()
    file = directory / "gateway.yaml"
    file.write_text("x", encoding="utf-8")
    file.chmod(0o600)
    directory.chmod(mode)
    assert bool(permission_problems([file])) is refused


async def start_error(config: Path) -> StartError:
    agent = Agent(AgentOptions(config_path=str(config)))
    with pytest.raises(StartError) as caught:
        await agent.start()
    await agent.stop()
    return caught.value


async def test_agent_refuses_a_group_writable_configuration(tmp_path: Path) -> None:
    config = minimal_config(tmp_path / "gw")
    config.chmod(0o660)
    error = await start_error(config)
    assert error.exit_code == EXIT_CONFIG
    assert "gateway.yaml is writable by group" in str(error)


async def test_agent_refuses_a_symlink_to_a_world_writable_configuration(tmp_path: Path) -> None:
    config = minimal_config(tmp_path / "gw")
    config.chmod(0o666)
    link = tmp_path / "link.yaml"
    link.symlink_to(config)
    error = await start_error(link)
    assert error.exit_code == EXIT_CONFIG


async def test_agent_refuses_a_writable_policy_file(tmp_path: Path) -> None:
    config = minimal_config(tmp_path / "gw")
    (tmp_path / "gw" / "policies" / "gateway" / "authz.rego").chmod(0o664)
    error = await start_error(config)
    assert error.exit_code == EXIT_CONFIG
    assert "authz.rego" in str(error)


async def test_protected_files_pass_on_to_the_identity_check(tmp_path: Path) -> None:
    error = await start_error(minimal_config(tmp_path / "gw"))
    assert error.exit_code == EXIT_IDENTITY


async def test_reload_keeps_the_running_revision_when_the_file_became_writable(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "gw"
    async with DevStack() as stack:
        config = stack.write_gateway_dir(directory)
        await stack.register_gateway(directory)
        agent = Agent(AgentOptions(config_path=str(config), shutdown_grace=1))
        await agent.start()
        try:
            good = agent.runtime().revision
            stack.write_gateway_dir(
                directory,
                extra_operations=[{"name": "more", "methods": ["GET"], "paths": ["/more"]}],
            )
            config.chmod(0o666)
            refused = await agent.reload()
            config.chmod(0o644)
            accepted = await agent.reload()
        finally:
            await agent.stop()
    assert refused is False
    assert accepted is True
    assert agent.runtime().revision != good


def test_several_workers_speak_through_aiohttp(tmp_path: Path) -> None:
    # The supervisor asks its workers over HTTP with an aiohttp session.
    config = load(minimal_config(tmp_path / "gw")).config
    assert [path for path, _ in aiohttp_features(config.model_copy(update={"workers": 2}))] == [
        "workers"
    ]
    assert [
        path for path, _ in aiohttp_features(config.model_copy(update={"workers": "auto"}))
    ] == ["workers"]
