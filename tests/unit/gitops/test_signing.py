"""Signed configuration on real files: sign, verify, tamper, wrong keys, rollback, restarts."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.cli import main
from gateway.config import LoadedConfig, load
from gateway.gitops.signing import (
    STATE_FILE,
    ConfigSignatureError,
    generate_key,
    key_id,
    load_private_key,
    sign_config,
    verify_signed_config,
)
from gateway.policy.loader import load_policies
from tests.unit.gitops.conftest import BASE, WriteConfig

SIGNED = BASE + "config_signature:\n  required: true\n  public_keys: [keys/release.pem.pub]\n"


@pytest.fixture
def keys(config_dir: Path) -> dict[str, Path]:
    """Two key pairs: ``release`` (trusted by SIGNED) and ``other``."""
    (config_dir / "keys").mkdir()
    out = {}
    for name in ("release", "other"):
        path = config_dir / "keys" / f"{name}.pem"
        generate_key(path)
        out[name] = path
    return out


def cfg(path: Path, env: dict[str, str] | None = None) -> LoadedConfig:
    return load(path, env=env or {}, check_host=False)


def sign(path: Path, key: Path, epoch: int) -> None:
    loaded = cfg(path)
    document = sign_config(loaded, load_private_key(key), epoch)
    path.with_name(path.name + ".signatures.json").write_bytes(document)


def refused(path: Path, state: Path) -> str:
    with pytest.raises(ConfigSignatureError) as info:
        verify_signed_config(cfg(path), state)
    return info.value.code


@pytest.fixture
def signed(write_config: WriteConfig, keys: dict[str, Path]) -> Path:
    path = write_config(SIGNED)
    sign(path, keys["release"], 5)
    return path


def state_of(state: Path) -> dict[str, object]:
    result: dict[str, object] = json.loads((state / STATE_FILE).read_text())
    return result


def test_signed_config_is_accepted_and_epoch_recorded(signed: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    verified = verify_signed_config(cfg(signed), state)
    assert verified.signed
    assert verified.epoch == 5
    assert verified.info is not None
    names = [f.name for f in verified.info.files]
    # The config and every policy module and test, never the examples directory.
    assert names == [
        "gateway.yaml",
        "policies/gateway/authz.rego",
        "policies/gateway/authz_test.rego",
    ]
    recorded = state_of(state)
    assert recorded["epoch"] == 5
    assert recorded["required"] is True
    assert stat.S_IMODE((state / STATE_FILE).stat().st_mode) == 0o600
    # The policy set the loader reads is the signed one.
    verified.check_policies(load_policies(cfg(signed)))


def test_config_byte_changed_is_refused(signed: Path, tmp_path: Path) -> None:
    text = signed.read_text()
    signed.write_text(text.replace("[GET, HEAD]", "[GET, HEAD, DELETE]"))
    assert refused(signed, tmp_path / "state") == "file_changed"
    signed.write_text(text + "# a comment is a change too\n")
    assert refused(signed, tmp_path / "state") == "file_changed"
    assert not (tmp_path / "state" / STATE_FILE).exists()


def test_policy_file_changed_added_or_removed_is_refused(
    signed: Path, config_dir: Path, tmp_path: Path
) -> None:
    authz = config_dir / "policies" / "gateway" / "authz.rego"
    original = authz.read_bytes()
    authz.write_bytes(original.replace(b"default operation", b"default  operation"))
    assert refused(signed, tmp_path / "s") == "file_changed"
    authz.write_bytes(original)
    extra = config_dir / "policies" / "extra.rego"
    extra.write_text("package gateway_extensions.extra\n")
    assert refused(signed, tmp_path / "s") == "file_unsigned"
    extra.unlink()
    (config_dir / "policies" / "gateway" / "authz_test.rego").unlink()
    assert refused(signed, tmp_path / "s") == "file_missing"


def test_the_built_in_policy_is_not_part_of_the_signed_files(
    signed: Path, config_dir: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    # An operator directory with extensions only: the packaged policy belongs to the installed
    # gateway, not to the release, so only the operator's files are listed.
    shutil.rmtree(config_dir / "policies" / "gateway")
    (config_dir / "policies" / "freeze.rego").write_text(
        'package gateway_extensions.freeze\ndeny contains "frozen" if false\n'
    )
    sign(signed, keys["release"], 6)
    verified = verify_signed_config(cfg(signed), tmp_path / "s")
    assert verified.info is not None
    assert [f.name for f in verified.info.files] == ["gateway.yaml", "policies/freeze.rego"]
    policies = load_policies(cfg(signed))
    assert any(m.builtin for m in policies.modules)
    verified.check_policies(policies)


def test_files_the_loader_never_reads_are_not_signed(
    signed: Path, config_dir: Path, tmp_path: Path
) -> None:
    (config_dir / "policies" / "examples" / "new_example.rego").write_text("package x\n")
    assert verify_signed_config(cfg(signed), tmp_path / "s").signed


def test_signature_swapped_or_mangled_is_refused(
    write_config: WriteConfig, signed: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    sig = signed.with_name("gateway.yaml.signatures.json")
    good = sig.read_bytes()
    # A genuine signature of another release of the same file.
    sign(write_config(SIGNED.replace("[GET, HEAD]", "[GET]")), keys["release"], 9)
    token = json.loads(sig.read_bytes())
    write_config(SIGNED)
    sig.write_text(json.dumps(token))
    assert refused(signed, tmp_path / "s") == "file_changed"
    # Payload of one token with the signature of another.
    head, payload, signature = json.loads(good)["signatures"][0].split(".")
    other_payload = token["signatures"][0].split(".")[1]
    sig.write_text(json.dumps({"signatures": [f"{head}.{other_payload}.{signature}"]}))
    assert refused(signed, tmp_path / "s") == "bad_signature"
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    sig.write_text(json.dumps({"signatures": [f"{head}.{payload}.{flipped}"]}))
    assert refused(signed, tmp_path / "s") == "bad_signature"
    sig.write_text("not json")
    assert refused(signed, tmp_path / "s") == "malformed"
    sig.unlink()
    assert refused(signed, tmp_path / "s") == "signature_missing"


def test_wrong_key_is_refused(
    write_config: WriteConfig, keys: dict[str, Path], tmp_path: Path
) -> None:
    path = write_config(SIGNED)
    sign(path, keys["other"], 5)
    assert refused(path, tmp_path / "s") == "untrusted_key"


def _forge(header: dict[str, object], payload: bytes, key: Ed25519PrivateKey) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{b64(json.dumps(header).encode())}.{b64(payload)}"
    return f"{signing_input}.{b64(key.sign(signing_input.encode()))}"


def test_header_algorithm_and_payload_rules(
    signed: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    key = load_private_key(keys["release"])
    kid = key_id(key.public_key())
    sig = signed.with_name("gateway.yaml.signatures.json")
    payload = base64.urlsafe_b64decode(
        json.loads(sig.read_bytes())["signatures"][0].split(".")[1] + "=="
    )
    cases: list[tuple[dict[str, object], bytes, str]] = [
        ({"alg": "none", "kid": kid}, payload, "bad_algorithm"),
        ({"alg": "HS256", "kid": kid}, payload, "bad_algorithm"),
        ({"alg": "EdDSA", "kid": kid, "crit": ["exp"]}, payload, "malformed"),
        ({"alg": "EdDSA", "kid": kid}, payload.replace(b'"gateway-config"', b'"x"'), "wrong_scope"),
        # Duplicate members: two readers could see different epochs.
        ({"alg": "EdDSA", "kid": kid}, payload[:-1] + b',"epoch":1}', "malformed"),
        ({"alg": "EdDSA", "kid": kid}, payload.replace(b'"epoch":5', b'"epoch":true'), "malformed"),
    ]
    for header, body, code in cases:
        sig.write_text(json.dumps({"signatures": [_forge(header, body, key)]}))
        assert refused(signed, tmp_path / "s") == code, header
    sig.write_text(json.dumps({"signatures": [_forge({"alg": "EdDSA", "kid": kid}, payload, key)]}))
    assert verify_signed_config(cfg(signed), tmp_path / "s").epoch == 5


def test_rollback_is_refused_across_restarts(
    write_config: WriteConfig, keys: dict[str, Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    path = write_config(SIGNED.replace("[GET, HEAD]", "[GET]"))
    sign(path, keys["release"], 7)
    assert verify_signed_config(cfg(path), state).epoch == 7
    # Restart: same file, same epoch, state read back from disk.
    assert verify_signed_config(cfg(path), state).epoch == 7
    # The older, wider release, properly signed, is replayed.
    path = write_config(SIGNED)
    sign(path, keys["release"], 6)
    assert refused(path, state) == "rollback"
    # The same epoch over different content.
    sign(path, keys["release"], 7)
    assert refused(path, state) == "epoch_reused"
    assert state_of(state)["epoch"] == 7
    sign(path, keys["release"], 8)
    assert verify_signed_config(cfg(path), state).epoch == 8
    assert state_of(state)["epoch"] == 8


def test_unsigned_is_refused_once_signed_was_accepted(
    write_config: WriteConfig, signed: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    verify_signed_config(cfg(signed), state)
    # An attacker drops the requirement and the signature.
    unsigned = write_config(BASE)
    signed.with_name("gateway.yaml.signatures.json").unlink()
    assert refused(unsigned, state) == "signature_required"
    # Only a signed release can turn signing off.
    off = write_config(SIGNED.replace("required: true", "required: false"))
    sign(off, keys["release"], 6)
    assert verify_signed_config(cfg(off), state).signed
    write_config(BASE)
    assert verify_signed_config(cfg(unsigned), state).signed is False


def test_not_required_and_never_signed_is_accepted_without_state(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    verified = verify_signed_config(cfg(write_config(BASE)), tmp_path / "state")
    assert verified.signed is False
    assert not (tmp_path / "state").exists()


def test_keys_are_pinned_and_rotate_by_signing(
    write_config: WriteConfig, signed: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    verify_signed_config(cfg(signed), state)
    # A file that trusts only a new key, signed by it: refused, the running release never
    # trusted that key.
    swapped = write_config(SIGNED.replace("release.pem.pub", "other.pem.pub"))
    sign(swapped, keys["other"], 6)
    assert refused(swapped, state) == "untrusted_key"
    # Rotation: the old key signs a release that trusts both, then the new key takes over.
    both = write_config(
        SIGNED.replace("[keys/release.pem.pub]", "[keys/release.pem.pub, keys/other.pem.pub]")
    )
    sign(both, keys["release"], 7)
    assert verify_signed_config(cfg(both), state).epoch == 7
    swapped = write_config(SIGNED.replace("release.pem.pub", "other.pem.pub"))
    sign(swapped, keys["other"], 8)
    assert verify_signed_config(cfg(swapped), state).epoch == 8


def test_damaged_state_fails_closed(signed: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / STATE_FILE).write_text('{"version": 1, "epoch": "9"}')
    assert refused(signed, state) == "state_damaged"


def test_file_swapped_between_load_and_verify_is_refused(
    write_config: WriteConfig, keys: dict[str, Path], tmp_path: Path
) -> None:
    path = write_config(SIGNED.replace("[GET, HEAD]", "[GET, HEAD, DELETE]"))
    wider = cfg(path)
    write_config(SIGNED)
    sign(path, keys["release"], 5)
    with pytest.raises(ConfigSignatureError) as info:
        verify_signed_config(wider, tmp_path / "s")
    # The bytes checked are the ones the configuration was built from, not the file now.
    assert info.value.code == "file_changed"
    assert "changed since it was signed" in str(info.value)


def test_the_loaded_bytes_are_verified_not_the_file_rewritten_since(
    signed: Path, tmp_path: Path
) -> None:
    # A supervisor hands a restarted worker the signed bytes it runs; an unsigned file saved
    # since (without a reload) does not make them unverifiable, and is not what is verified.
    loaded = cfg(signed)
    signed.write_text(signed.read_text().replace("[GET, HEAD]", "[GET, HEAD, DELETE]"))
    assert verify_signed_config(loaded, tmp_path / "s").epoch == 5
    again = load(signed, env={}, check_host=False, source=loaded.source)
    assert again.revision == loaded.revision
    assert verify_signed_config(again, tmp_path / "s").epoch == 5
    assert refused(signed, tmp_path / "s") == "file_changed"


def test_environment_overrides_do_not_break_verification(signed: Path, tmp_path: Path) -> None:
    loaded = cfg(signed, env={"GATEWAY_LOGGING__LEVEL": "debug"})
    assert loaded.overrides
    assert verify_signed_config(loaded, tmp_path / "s").epoch == 5


def test_policy_changed_after_verification_is_caught(
    signed: Path, config_dir: Path, tmp_path: Path
) -> None:
    verified = verify_signed_config(cfg(signed), tmp_path / "s")
    authz = config_dir / "policies" / "gateway" / "authz.rego"
    authz.write_text(authz.read_text() + "\n# edited\n")
    with pytest.raises(ConfigSignatureError) as info:
        verified.check_policies(load_policies(cfg(signed)))
    assert info.value.code == "file_changed"


# --- the verbs -----------------------------------------------------------------------------------


def test_sign_and_verify_config_verbs(
    write_config: WriteConfig, keys: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(SIGNED)
    assert main(["sign", "-c", str(path), "--key", str(keys["release"]), "--epoch", "12"]) == 0
    assert "at epoch 12" in capsys.readouterr().out
    assert main(["verify-config", "-c", str(path), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is True
    assert report["epoch"] == 12
    assert report["key_id"] == key_id(load_private_key(keys["release"]).public_key())
    path.write_text(path.read_text().replace("8443", "8444"))
    assert main(["verify-config", "-c", str(path)]) == 1
    assert "gateway.yaml changed since it was signed" in capsys.readouterr().err


def test_sign_refuses_a_key_the_gateways_do_not_trust(
    write_config: WriteConfig, keys: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(SIGNED)
    assert main(["sign", "-c", str(path), "--key", str(keys["other"]), "--epoch", "3"]) == 1
    assert "gateways would refuse" in capsys.readouterr().err
    assert not path.with_name("gateway.yaml.signatures.json").exists()


def test_sign_refuses_invalid_configuration_and_epochs(
    write_config: WriteConfig, keys: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(SIGNED.replace("port: 8443", "port: 0"))
    assert main(["sign", "-c", str(path), "--key", str(keys["release"]), "--epoch", "3"]) == 1
    assert "targets.erp.port" in capsys.readouterr().err
    assert main(["sign", "-c", str(path), "--key", str(keys["release"]), "--epoch", "0"]) == 2


def test_generate_key_with_passphrase(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIGNING_PASSPHRASE", "correct horse")
    key = tmp_path / "k.pem"
    assert main(["sign", "--generate-key", str(key), "--passphrase-env", "SIGNING_PASSPHRASE"]) == 0
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"ENCRYPTED" in key.read_bytes()
    assert load_private_key(key, b"correct horse")
    with pytest.raises(ConfigSignatureError) as info:
        load_private_key(key, b"wrong")
    assert "correct horse" not in str(info.value)
    # Never overwrites a key.
    before = key.read_bytes()
    assert main(["sign", "--generate-key", str(key)]) == 1
    assert key.read_bytes() == before
    assert os.path.exists(str(key) + ".pub")
