"""Secret references: strict file checks, systemd credentials, rotation, and no value in errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.config import load
from gateway.config.secrets import SecretError, SecretRef, SecretSource, read_secret
from gateway.errors import ConfigError
from tests.unit.config.conftest import BASE, WriteConfig

SECRET = "s3cr3t-value-never-shown"


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def test_file_reference_reads_the_value_without_its_newline(tmp_path: Path) -> None:
    _write(tmp_path / "s", SECRET + "\r\n")
    ref = SecretRef(file="s")
    assert read_secret(ref, base_dir=tmp_path, env={}).get_secret_value() == SECRET
    _write(tmp_path / "s", SECRET + "\n\n")
    # Only one newline is framing; a second one belongs to the value.
    assert read_secret(ref, base_dir=tmp_path, env={}).get_secret_value() == SECRET + "\n"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o602, 0o620])
def test_group_or_world_accessible_file_is_refused(tmp_path: Path, mode: int) -> None:
    _write(tmp_path / "s", SECRET, mode)
    with pytest.raises(SecretError) as caught:
        read_secret(SecretRef(file=str(tmp_path / "s")), base_dir=tmp_path, env={})
    assert caught.value.code == "unsafe_secret_file"
    assert f"{mode:04o}" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_foreign_owned_file_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")
    path = _write(tmp_path / "s", SECRET)
    os.chown(path, 65534, 65534)
    with pytest.raises(SecretError) as caught:
        read_secret(SecretRef(file=str(path)), base_dir=tmp_path, env={})
    assert caught.value.code == "unsafe_secret_file"
    assert "65534" in str(caught.value)


def test_symbolic_link_is_not_followed(tmp_path: Path) -> None:
    _write(tmp_path / "real", SECRET)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(SecretError) as caught:
        read_secret(SecretRef(file="link"), base_dir=tmp_path, env={})
    assert caught.value.code == "unsafe_secret_file"


@pytest.mark.parametrize(("content", "code"), [("", "invalid_secret"), ("\n", "invalid_secret")])
def test_empty_secret_is_an_error(tmp_path: Path, content: str, code: str) -> None:
    _write(tmp_path / "s", content)
    with pytest.raises(SecretError) as caught:
        read_secret(SecretRef(file="s"), base_dir=tmp_path, env={})
    assert caught.value.code == code


def test_oversized_and_binary_files_are_refused(tmp_path: Path) -> None:
    _write(tmp_path / "big", "x" * (64 * 1024 + 1))
    (tmp_path / "bin").write_bytes(b"\xff\xfe")
    (tmp_path / "bin").chmod(0o600)
    for name in ("big", "bin"):
        with pytest.raises(SecretError) as caught:
            read_secret(SecretRef(file=name), base_dir=tmp_path, env={})
        assert caught.value.code == "invalid_secret"
    with pytest.raises(SecretError) as caught:
        read_secret(SecretRef(file="absent"), base_dir=tmp_path, env={})
    assert caught.value.code == "missing_secret"


def test_environment_reference(tmp_path: Path) -> None:
    ref = SecretRef(env="API_KEY")
    assert read_secret(ref, base_dir=tmp_path, env={"API_KEY": SECRET}).get_secret_value() == SECRET
    with pytest.raises(SecretError) as caught:
        read_secret(ref, base_dir=tmp_path, env={})
    assert (caught.value.code, ref.describe()) == ("missing_secret", "env:API_KEY")


def test_systemd_credential_reference(tmp_path: Path) -> None:
    directory = tmp_path / "creds"
    directory.mkdir(mode=0o500)
    # systemd grants read with an ACL whose mask shows as group read: accepted there.
    _write(directory / "erp-key", SECRET, 0o440)
    ref = SecretRef(credential="erp-key")
    env = {"CREDENTIALS_DIRECTORY": str(directory)}
    assert read_secret(ref, base_dir=tmp_path, env=env).get_secret_value() == SECRET
    (directory / "erp-key").chmod(0o444)
    with pytest.raises(SecretError) as caught:
        read_secret(ref, base_dir=tmp_path, env=env)
    assert caught.value.code == "unsafe_secret_file"
    with pytest.raises(SecretError) as caught:
        read_secret(ref, base_dir=tmp_path, env={})
    assert caught.value.code == "missing_secret"
    assert "CREDENTIALS_DIRECTORY" in str(caught.value)


@pytest.mark.parametrize(
    "fields",
    [{}, {"env": "A", "file": "b"}, {"file": "b", "credential": "c"}, {"credential": ".."}],
)
def test_reference_needs_exactly_one_source(fields: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        SecretRef.model_validate(fields)


@given(st.sampled_from(["a/b", "../x", "/etc/shadow", "", "x" * 300]))
def test_credential_names_cannot_leave_the_directory(name: str) -> None:
    with pytest.raises(ValidationError):
        SecretRef(credential=name)


def test_source_picks_up_a_rotated_file_and_fails_closed_when_it_turns_unsafe(
    tmp_path: Path,
) -> None:
    path = _write(tmp_path / "s", "first")
    source = SecretSource(SecretRef(file="s"), base_dir=tmp_path, env={})
    assert source.get().get_secret_value() == "first"
    # Rotation by rename (the usual atomic write): a new inode.
    _write(tmp_path / "s.new", "second")
    os.replace(tmp_path / "s.new", path)
    assert source.get().get_secret_value() == "second"
    # Rotation in place, same size: the modification time or change time moves.
    stat = path.stat()
    path.write_text("third!", encoding="utf-8")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert source.get().get_secret_value() == "third!"
    path.chmod(0o644)
    with pytest.raises(SecretError) as caught:
        source.get()
    assert caught.value.code == "unsafe_secret_file"
    path.unlink()
    with pytest.raises(SecretError):
        source.get()


PROXY = """\
proxy:
  url: http://127.0.0.1:3128
  username: svc
  password: {password}
"""


@pytest.mark.parametrize("inline", ['"hunter2"', "[hunter2]", "12345", "true"])
def test_any_inline_value_for_a_reference_is_reported_as_inline(
    write_config: WriteConfig, inline: str
) -> None:
    path = write_config(BASE + PROXY.format(password=inline))
    with pytest.raises(ConfigError) as caught:
        load(path, env={})
    [problem] = caught.value.problems
    assert (problem.code, problem.path, problem.line) == ("inline_secret", "proxy.password", 22)
    assert "hunter2" not in problem.render()
    assert "12345" not in problem.render()


def test_unsafe_secret_file_is_a_located_load_error(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    _write(tmp_path / "pw", SECRET, 0o644)
    path = write_config(BASE + PROXY.format(password="{file: pw}"))
    with pytest.raises(ConfigError) as caught:
        load(path, env={})
    [problem] = caught.value.problems
    assert (problem.code, problem.path, problem.line) == (
        "unsafe_secret_file",
        "proxy.password",
        22,
    )
    assert SECRET not in problem.render()
    assert "chmod 600" in problem.render()
