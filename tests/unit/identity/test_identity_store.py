"""The state directory: permissions, symlinks, ownership, corruption, passphrases, crash safety."""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.devkit.controlplane import DevCA
from gateway.identity.errors import IdentityError
from gateway.identity.keys import PrivateKey
from gateway.identity.models import RelayEndpoint, SigningKey
from gateway.identity.store import (
    CA_FILE,
    IDENTITY_FILE,
    IdentityRecord,
    IdentityStore,
    cert_file_name,
    key_file_name,
    read_passphrase,
)
from tests.unit.identity.helpers import issue_for, new_key

CA = DevCA("Store CA")
REPO = Path(__file__).resolve().parents[3]
SIGNING_KEY = SigningKey(
    keyid="k1",
    alg="ed25519",
    public_key_pem="-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n",
    not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
    not_after=dt.datetime(2040, 1, 1, tzinfo=dt.UTC),
)
RELAY = RelayEndpoint(namespace="relay.example", hybrid_connection="hc-gw-1")


def _commit_generation(store: IdentityStore, key: PrivateKey, generation: int) -> int:
    cert = issue_for(CA, key)
    store.write_key_pair(generation, key, [cert])
    store.commit(IdentityRecord("gw-1", "https://cp.example/", generation, dt.datetime.now(dt.UTC)))
    return cert.serial_number


def _registered(state: Path, passphrase: bytes | None = None) -> tuple[IdentityStore, int]:
    store = IdentityStore(state, passphrase=passphrase)
    store.create_directory()
    store.write_pins(ca_pem=CA.pem, signing_keys=[SIGNING_KEY], relay=RELAY)
    return store, _commit_generation(store, new_key(), 1)


def _code(store: IdentityStore) -> str:
    with pytest.raises(IdentityError) as info:
        store.load()
    return info.value.code


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def test_round_trip_with_safe_modes(state: Path) -> None:
    store, serial = _registered(state)
    identity = store.load()
    assert identity.certificate.serial_number == serial
    assert identity.gateway_id == "gw-1"
    assert identity.signing_keys == (SIGNING_KEY,)
    assert identity.relay == RELAY
    assert os.stat(state).st_mode & 0o777 == 0o700
    for name in os.listdir(state):
        assert os.stat(state / name).st_mode & 0o777 == 0o600, name
    assert "private_key" not in repr(identity)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602])
def test_key_readable_or_writable_by_others_is_refused(state: Path, mode: int) -> None:
    store, _ = _registered(state)
    os.chmod(state / key_file_name(1), mode)
    assert _code(store) == "unsafe_permissions"


def test_certificate_may_be_world_readable_but_not_writable(state: Path) -> None:
    store, _ = _registered(state)
    os.chmod(state / cert_file_name(1), 0o644)
    store.load()
    for name in (cert_file_name(1), CA_FILE, IDENTITY_FILE):
        os.chmod(state / name, 0o664)
        assert _code(store) == "unsafe_permissions", name
        os.chmod(state / name, 0o600)


@pytest.mark.parametrize(
    ("mode", "fragment"), [(0o777, "world-writable"), (0o755, "chmod 700"), (0o710, "chmod 700")]
)
def test_directory_accessible_to_others_is_refused(state: Path, mode: int, fragment: str) -> None:
    store, _ = _registered(state)
    os.chmod(state, mode)
    with pytest.raises(IdentityError) as info:
        store.load()
    assert info.value.code == "unsafe_permissions"
    assert fragment in str(info.value)


def test_symlinked_key_file_is_refused(state: Path, tmp_path: Path) -> None:
    store, _ = _registered(state)
    real = tmp_path / "elsewhere.key"
    os.replace(state / key_file_name(1), real)
    os.symlink(real, state / key_file_name(1))
    assert _code(store) == "symlink_refused"


def test_symlinked_state_directory_is_refused(state: Path, tmp_path: Path) -> None:
    _registered(state)
    link = tmp_path / "link"
    os.symlink(state, link)
    assert _code(IdentityStore(link)) == "symlink_refused"


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
@pytest.mark.parametrize("target", ["dir", "key", "cert"])
def test_files_owned_by_another_user_are_refused(state: Path, target: str) -> None:
    # As root the check is not bypassed: the gateway's uid (0) must own everything.
    store, _ = _registered(state)
    path = {"dir": state, "key": state / key_file_name(1), "cert": state / cert_file_name(1)}
    os.chown(path[target], 65534, 65534)
    with pytest.raises(IdentityError) as info:
        store.load()
    assert info.value.code == "unsafe_permissions"
    assert "owned by uid 65534" in str(info.value)


def test_a_fifo_in_place_of_a_file_does_not_hang(state: Path) -> None:
    store, _ = _registered(state)
    os.unlink(state / cert_file_name(1))
    os.mkfifo(state / cert_file_name(1), 0o600)
    assert _code(store) == "corrupt_file"


@pytest.mark.parametrize("name", [key_file_name(1), cert_file_name(1), IDENTITY_FILE, CA_FILE])
def test_truncated_files_give_a_clear_error(state: Path, name: str) -> None:
    store, _ = _registered(state)
    data = (state / name).read_bytes()
    for cut in (0, 1, len(data) // 2, len(data) - 30):
        (state / name).write_bytes(data[:cut])
        with pytest.raises(IdentityError) as info:
            store.load()
        assert info.value.code in ("corrupt_file", "not_registered"), cut
        assert name in str(info.value) or info.value.code == "not_registered"


def test_oversized_file_is_refused(state: Path) -> None:
    store, _ = _registered(state)
    (state / CA_FILE).write_bytes(b"A" * (64 * 1024 + 1))
    with pytest.raises(IdentityError) as info:
        store.load()
    assert info.value.code == "corrupt_file"
    assert "larger than" in str(info.value)


def test_key_that_does_not_match_the_certificate_is_refused(state: Path) -> None:
    store, _ = _registered(state)
    other = issue_for(CA, new_key()).public_bytes(serialization.Encoding.PEM)
    (state / cert_file_name(1)).write_bytes(other)
    assert _code(store) == "key_certificate_mismatch"


def test_missing_identity_is_not_registered(state: Path) -> None:
    assert _code(IdentityStore(state)) == "not_registered"
    store = IdentityStore(state)
    store.create_directory()
    assert not store.has_identity()
    assert _code(store) == "not_registered"


def test_encrypted_key_with_wrong_passphrase(state: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _registered(state, passphrase=b"right-passphrase-123")
    assert b"ENCRYPTED" in (state / key_file_name(1)).read_bytes()
    assert IdentityStore(state, passphrase=b"right-passphrase-123").load().gateway_id == "gw-1"
    with pytest.raises(IdentityError) as info:
        IdentityStore(state, passphrase=b"wrong-passphrase-456").load()
    assert info.value.code == "wrong_passphrase"
    assert "passphrase is wrong" in str(info.value)
    for text in (str(info.value), repr(info.value), caplog.text):
        assert "wrong-passphrase-456" not in text
        assert "right-passphrase-123" not in text
    assert _code(IdentityStore(state)) == "passphrase_required"


def test_passphrase_sources(tmp_path: Path) -> None:
    secret = tmp_path / "passphrase"
    secret.write_bytes(b"from-file\n")
    secret.chmod(0o600)
    assert read_passphrase(file=secret) == b"from-file"
    assert read_passphrase(env_var="GW_PASS", environ={"GW_PASS": "from-env"}) == b"from-env"
    assert read_passphrase() is None
    secret.chmod(0o644)
    cases: list[dict[str, object]] = [
        {"file": secret},
        {"env_var": "GW_PASS", "environ": {}},
        {"env_var": "GW_PASS", "environ": {"GW_PASS": ""}},
        {"env_var": "GW_PASS", "file": secret, "environ": {"GW_PASS": "x"}},
    ]
    for kwargs in cases:
        with pytest.raises(IdentityError):
            read_passphrase(**kwargs)  # type: ignore[arg-type]


def test_failed_write_leaves_the_old_file_and_no_temp(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, serial = _registered(state)
    before = sorted(os.listdir(state))

    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(IdentityError) as info:
        _commit_generation(store, new_key(), 2)
    assert info.value.code == "unwritable"
    monkeypatch.undo()
    assert sorted(os.listdir(state)) == before
    assert store.load().certificate.serial_number == serial


_CRASH_CHILD = textwrap.dedent(
    """
    import datetime as dt, os, signal, sys
    from pathlib import Path
    from gateway.devkit.controlplane import DevCA
    from gateway.identity.store import IdentityRecord, IdentityStore
    from tests.unit.identity.helpers import issue_for, new_key

    kill_at = int(sys.argv[2])
    calls = 0
    real_replace = os.replace

    def replace(*args, **kwargs):
        global calls
        calls += 1
        if calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(*args, **kwargs)

    key = new_key()
    cert = issue_for(DevCA("Crash CA"), key)
    os.replace = replace
    store = IdentityStore(Path(sys.argv[1]))
    store.write_key_pair(2, key, [cert])
    store.commit(IdentityRecord("gw-1", "https://cp.example/", 2, dt.datetime.now(dt.UTC)))
    """
)


@pytest.mark.parametrize("kill_at", [1, 2, 3, 4])
def test_killed_between_write_and_rename_keeps_the_old_identity(state: Path, kill_at: int) -> None:
    """SIGKILL at the k-th os.replace (key, cert, commit record) or not at all (k=4)."""
    store, serial = _registered(state)
    child = subprocess.run(
        [sys.executable, "-c", _CRASH_CHILD, str(state), str(kill_at)],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=False,
    )
    if kill_at <= 3:
        assert child.returncode == -signal.SIGKILL, child.stderr.decode()
        identity = store.load()
        assert identity.record.generation == 1
        assert identity.certificate.serial_number == serial
        # The interrupted write left at most a complete, unreferenced temp file behind.
        assert any(".tmp-" in name for name in os.listdir(state))
        _commit_generation(store, new_key(), 2)
        assert not any(".tmp-" in name for name in os.listdir(state))
    else:
        assert child.returncode == 0, child.stderr.decode()
        assert store.load().record.generation == 2
        assert not (state / key_file_name(1)).exists()


def test_commit_removes_old_generations_and_discard_spares_the_current(state: Path) -> None:
    store, _ = _registered(state)
    _commit_generation(store, new_key(), 2)
    assert not (state / key_file_name(1)).exists()
    store.write_key_pair(3, new_key(), [issue_for(CA, new_key())])
    assert store.load().record.generation == 2
    store.discard_key_pair(3)
    assert not (state / key_file_name(3)).exists()
    with pytest.raises(IdentityError) as info:
        store.discard_key_pair(2)
    assert info.value.code == "in_use"
