"""Signed configuration: Ed25519 detached signatures over gateway.yaml and its policy files.

Format (the shape of OPA's bundle ``.signatures.json``, see docs/gitops.md for why)::

    {"signatures": ["<JWS compact serialization>"]}

The JWS (RFC 7515) has the protected header ``{"alg": "EdDSA", "kid": KID, "typ": "JWT"}``
(RFC 8037 section 3.1: EdDSA with an Ed25519 key) and the payload::

    {"files": [{"name": "gateway.yaml", "hash": "<hex SHA-256>", "algorithm": "SHA-256"}, ...],
     "keyid": KID, "scope": "gateway-config", "epoch": 42, "iat": 1718000000}

``files`` lists the configuration file and every Rego file the policy loader reads from
``policy.directories``, by their path relative to the configuration file's directory, hashed byte
for byte. The built-in policy is part of the installed package (its version is the gateway's), not
of the release, and is not listed. ``KID`` is the RFC 7638 JWK
thumbprint of the public key. ``epoch`` is a positive integer the release pipeline raises with
every release.

The agent's check (:func:`verify_signed_config`) fails closed: no signature, an unknown key, a bad
signature, a file added, removed or changed since signing, an epoch older than the highest one
accepted, or the same epoch over different content - each is a :class:`ConfigSignatureError`.
The highest accepted epoch, the digest of the files signed with it and the trusted key ids are
kept in ``<state_dir>/config-signature.json`` (written atomically). That state also makes the
requirement sticky: once a signed configuration has been accepted, an unsigned one is refused even
if it says ``required: false``, and only a key the last accepted configuration trusted can sign the
next one (keys rotate by signing, with an old key, a configuration that lists the new one).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.config import LoadedConfig, yamlsafe
from gateway.config.model import GatewayConfig
from gateway.errors import ConfigError, Problem
from gateway.policy.loader import MAX_MODULE_BYTES, PolicySet, rego_files
from gateway.statefile import replace_atomically

__all__ = [
    "ALGORITHM",
    "MAX_EPOCH",
    "SCOPE",
    "SIGNATURE_SUFFIX",
    "STATE_FILE",
    "ConfigSignatureError",
    "SignatureInfo",
    "SignedFile",
    "Verified",
    "generate_key",
    "key_id",
    "load_private_key",
    "load_public_key",
    "manifest",
    "sign_config",
    "signature_path",
    "verify_signature",
    "verify_signed_config",
]

ALGORITHM = "EdDSA"
SCOPE = "gateway-config"
SIGNATURE_SUFFIX = ".signatures.json"
STATE_FILE = "config-signature.json"
HASH_ALGORITHM = "SHA-256"
# JSON numbers above 2**53 - 1 lose precision in many JSON parsers (RFC 8259 section 6).
MAX_EPOCH = 2**53 - 1
MAX_SIGNATURE_BYTES = 256 * 1024
MAX_KEY_BYTES = 16 * 1024
MAX_STATE_BYTES = 64 * 1024
MAX_FILES = 1024


class ConfigSignatureError(ConfigError):
    """The configuration's signature is missing, wrong, or older than the last one accepted.

    A :class:`ConfigError`, so a reload that fails it keeps the last good configuration like any
    other invalid configuration. ``code`` is the stable reason (``signature_missing``,
    ``untrusted_key``, ``bad_signature``, ``file_changed``, ``rollback``, ...).
    """

    def __init__(self, message: str, *, code: str, file: str = "", hint: str = "") -> None:
        self.code = code
        super().__init__(
            [Problem(message, code=code, path="config_signature", file=file, hint=hint)]
        )


@dataclass(frozen=True, slots=True)
class SignedFile:
    """One file covered by a signature: its name relative to the config's directory and hash."""

    name: str
    sha256: str


@dataclass(frozen=True, slots=True)
class SignatureInfo:
    """What a valid signature says."""

    epoch: int
    key_id: str
    issued_at: int | None
    files: tuple[SignedFile, ...]
    digest: str
    """``sha256:...`` over the file list: equal for the same files whoever signed them, when."""


@dataclass(frozen=True, slots=True)
class Verified:
    """The outcome of :func:`verify_signed_config`: ``signed`` is False when none was required."""

    signed: bool
    base: Path
    info: SignatureInfo | None = None

    @property
    def epoch(self) -> int | None:
        """The accepted epoch, when signed."""
        return self.info.epoch if self.info else None

    def check_policies(self, policies: PolicySet) -> None:
        """Check that the policy modules the loader read are the signed ones, byte for byte.

        Closes the window between verifying the files and the policy loader reading them again.
        """
        if self.info is None:
            return
        signed = {f.name: f.sha256 for f in self.info.files if f.name.endswith(".rego")}
        seen: set[str] = set()
        for module in (*policies.modules, *policies.tests):
            if module.builtin:  # part of the installed package, not of the signed release
                continue
            name = _relative(module.path, self.base)
            seen.add(name)
            digest = hashlib.sha256(module.source.encode("utf-8")).hexdigest()
            if signed.get(name) != digest:
                raise ConfigSignatureError(
                    f"{name} changed after its signature was verified",
                    code="file_changed",
                    file=str(module.path),
                )
        if seen != signed.keys():
            missing = sorted(signed.keys() - seen)
            raise ConfigSignatureError(
                f"signed policy files were not loaded: {', '.join(missing)}",
                code="file_missing",
            )


# --- keys ----------------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    # RFC 7515 section 2: base64url without padding; anything else is malformed.
    if not text or any(c not in _B64URL for c in text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def key_id(public_key: Ed25519PublicKey) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url) of an Ed25519 key (RFC 8037 section 2)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    # RFC 7638 section 3.2: required members only, lexicographic order, no whitespace.
    canonical = json.dumps(
        {"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}, separators=(",", ":"), sort_keys=True
    )
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def _read_small(
    path: Path, limit: int, what: str, files: Mapping[str, bytes] | None = None
) -> bytes:
    """At most ``limit`` bytes of ``path``: from ``files`` (a captured release,
    :attr:`gateway.config.LoadedConfig.files`) when given, else from the disk."""
    try:
        if files is not None:
            data = files.get(str(path))
            if data is None:
                raise FileNotFoundError(2, "not in the release", str(path))
        else:
            with path.open("rb") as handle:
                data = handle.read(limit + 1)
    except OSError as exc:
        raise ConfigSignatureError(
            f"cannot read {what}: {exc.strerror or type(exc).__name__}",
            code="unreadable",
            file=str(path),
        ) from None
    if len(data) > limit:
        raise ConfigSignatureError(
            f"{what} is larger than {limit // 1024} KiB", code="too_large", file=str(path)
        )
    return data


def load_public_key(path: Path, files: Mapping[str, bytes] | None = None) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM (SubjectPublicKeyInfo) file (in ``files``, if given)."""
    data = _read_small(path, MAX_KEY_BYTES, "public key", files)
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigSignatureError(
            "not a PEM Ed25519 public key", code="invalid_key", file=str(path)
        )
    return key


def load_private_key(path: Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM (PKCS#8) file, optionally encrypted."""
    data = _read_small(path, MAX_KEY_BYTES, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except (ValueError, TypeError):
        # Never echo the library's message: it may describe the passphrase situation only, but
        # the rule is that nothing about key material reaches an error message.
        raise ConfigSignatureError(
            "cannot load the private key (wrong passphrase, or not a PEM private key)",
            code="invalid_key",
            file=str(path),
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigSignatureError("not an Ed25519 private key", code="invalid_key", file=str(path))
    return key


def generate_key(path: Path, passphrase: bytes | None = None) -> tuple[Path, str]:
    """Create an Ed25519 key: private PEM at ``path`` (mode 0600, never overwritten) and the
    public PEM at ``path`` + ``.pub``. Returns the public key's path and key id."""
    key = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_path = path.with_name(path.name + ".pub")
    for target, data, mode in ((path, private_pem, 0o600), (public_path, public_pem, 0o644)):
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            raise ConfigSignatureError(
                "already exists; refusing to overwrite a key", code="exists", file=str(target)
            ) from None
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    return public_path, key_id(key.public_key())


# --- what is signed ------------------------------------------------------------------------------


def _relative(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def _bundle_paths(loaded: LoadedConfig) -> list[Path]:
    """The configuration file and every Rego file the policy loader would read (same rules)."""
    paths = [loaded.file]
    seen = {loaded.file}
    for directory in loaded.config.policy.directories:
        for _, path in rego_files(loaded.resolve_path(directory), loaded.files):
            resolved = path.resolve()
            if resolved not in seen:
                seen.add(resolved)
                paths.append(path)
    if len(paths) > MAX_FILES:
        raise ConfigSignatureError(
            f"{len(paths)} files to sign; at most {MAX_FILES}",
            code="too_many_files",
            file=str(loaded.file),
        )
    return paths


def _file_bytes(loaded: LoadedConfig, path: Path) -> bytes:
    if path == loaded.file and loaded.source:
        # The bytes the configuration was built from: what runs is what is verified, even if
        # the file has been rewritten since it was read.
        return loaded.source
    limit = yamlsafe.MAX_FILE_BYTES if path == loaded.file else MAX_MODULE_BYTES
    return _read_small(path, limit, "file", loaded.files)


def manifest(loaded: LoadedConfig) -> tuple[SignedFile, ...]:
    """The files a signature of ``loaded`` covers, with their SHA-256, sorted by name."""
    base = loaded.file.parent
    files = [
        SignedFile(_relative(p, base), hashlib.sha256(_file_bytes(loaded, p)).hexdigest())
        for p in _bundle_paths(loaded)
    ]
    return tuple(sorted(files, key=lambda f: f.name))


def _digest(files: Iterable[SignedFile]) -> str:
    canonical = json.dumps(
        sorted([f.name, f.sha256] for f in files), separators=(",", ":"), ensure_ascii=False
    )
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def signature_path(loaded: LoadedConfig) -> Path:
    """``config_signature.signature_file``, or the config's name + ``.signatures.json``."""
    configured = loaded.config.config_signature.signature_file
    if configured is not None:
        return loaded.resolve_path(configured)
    return loaded.file.with_name(loaded.file.name + SIGNATURE_SUFFIX)


# --- signing -------------------------------------------------------------------------------------


def sign_config(
    loaded: LoadedConfig,
    private_key: Ed25519PrivateKey,
    epoch: int,
    *,
    issued_at: int | None = None,
) -> bytes:
    """The signature document (``{"signatures": [JWS]}``) for ``loaded`` at ``epoch``."""
    if isinstance(epoch, bool) or not 1 <= epoch <= MAX_EPOCH:
        raise ConfigSignatureError(
            f"epoch must be an integer from 1 to {MAX_EPOCH}", code="invalid_epoch"
        )
    kid = key_id(private_key.public_key())
    header = {"alg": ALGORITHM, "kid": kid, "typ": "JWT"}
    payload = {
        "files": [
            {"name": f.name, "hash": f.sha256, "algorithm": HASH_ALGORITHM}
            for f in manifest(loaded)
        ],
        "keyid": kid,
        "scope": SCOPE,
        "epoch": epoch,
        "iat": int(time.time()) if issued_at is None else issued_at,
    }
    signing_input = ".".join(
        _b64url(json.dumps(part, separators=(",", ":"), sort_keys=True).encode("utf-8"))
        for part in (header, payload)
    )
    signature = private_key.sign(signing_input.encode("ascii"))
    token = f"{signing_input}.{_b64url(signature)}"
    return (json.dumps({"signatures": [token]}, indent=2) + "\n").encode("ascii")


# --- verification --------------------------------------------------------------------------------


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Duplicate members would let two readers of the same token see different claims.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate member {key!r}")
        result[key] = value
    return result


def _json_object(data: bytes, what: str, file: str) -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_strict_object)
    except (UnicodeDecodeError, ValueError):
        value = None
    if not isinstance(value, dict):
        raise ConfigSignatureError(f"{what} is not a JSON object", code="malformed", file=file)
    return value


def _read_token(path: Path, files: Mapping[str, bytes] | None = None) -> str:
    if (str(path) not in files) if files is not None else not path.exists():
        raise ConfigSignatureError(
            "no signature file",
            code="signature_missing",
            file=str(path),
            hint="sign the release with `gateway sign -c FILE --key KEY --epoch N`",
        )
    document = _json_object(
        _read_small(path, MAX_SIGNATURE_BYTES, "signature", files), "file", str(path)
    )
    signatures = document.get("signatures")
    if set(document) != {"signatures"} or not isinstance(signatures, list):
        raise ConfigSignatureError(
            'expected {"signatures": [JWS]}', code="malformed", file=str(path)
        )
    if len(signatures) != 1 or not isinstance(signatures[0], str):
        raise ConfigSignatureError(
            "expected exactly one signature", code="malformed", file=str(path)
        )
    return signatures[0]


def _trusted_keys(loaded: LoadedConfig, extra: Sequence[Path]) -> dict[str, Ed25519PublicKey]:
    keys: dict[str, Ed25519PublicKey] = {}
    paths = [loaded.resolve_path(p) for p in loaded.config.config_signature.public_keys]
    for path in paths:
        key = load_public_key(path, loaded.files)
        keys[key_id(key)] = key
    for path in extra:
        key = load_public_key(path)
        keys[key_id(key)] = key
    return keys


def _check_token(
    token: str, keys: Mapping[str, Ed25519PublicKey], file: str
) -> tuple[str, dict[str, Any]]:
    """Verify the JWS and return its key id and claims (RFC 7515 section 5.2, compact form)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ConfigSignatureError("the signature is not a JWS", code="malformed", file=file)
    try:
        header_raw, payload_raw, signature = (_b64url_decode(p) for p in parts)
    except (ValueError, binascii.Error):
        raise ConfigSignatureError(
            "the signature is not base64url", code="malformed", file=file
        ) from None
    header = _json_object(header_raw, "the JWS header", file)
    if header.get("alg") != ALGORITHM:
        # Never let the token choose the algorithm (RFC 8725 section 3.1).
        raise ConfigSignatureError(
            f"signature algorithm must be {ALGORITHM}", code="bad_algorithm", file=file
        )
    if "crit" in header:
        # RFC 7515 section 4.1.11: critical extensions we do not implement mean "reject".
        raise ConfigSignatureError("unsupported critical header", code="malformed", file=file)
    kid = header.get("kid")
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None or not isinstance(kid, str):
        raise ConfigSignatureError(
            f"signed by a key this configuration does not trust (key id {kid!s:.64})",
            code="untrusted_key",
            file=file,
            hint="list the release key's public PEM in config_signature.public_keys; once a "
            "signed configuration was accepted, the next must be signed by a key it trusted",
        )
    try:
        key.verify(signature, f"{parts[0]}.{parts[1]}".encode("ascii"))
    except InvalidSignature:
        raise ConfigSignatureError(
            "the signature does not verify", code="bad_signature", file=file
        ) from None
    claims = _json_object(payload_raw, "the JWS payload", file)
    if claims.get("keyid", kid) != kid:
        raise ConfigSignatureError("keyid claim and header differ", code="malformed", file=file)
    if claims.get("scope") != SCOPE:
        raise ConfigSignatureError(
            f"the signature's scope is not {SCOPE!r}", code="wrong_scope", file=file
        )
    return kid, claims


def _claimed_files(claims: Mapping[str, Any], file: str) -> tuple[SignedFile, ...]:
    files = claims.get("files")
    if not isinstance(files, list) or len(files) > MAX_FILES:
        raise ConfigSignatureError("files claim is not a list", code="malformed", file=file)
    out: dict[str, SignedFile] = {}
    for entry in files:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("name"), str)
            or not isinstance(entry.get("hash"), str)
            or entry.get("algorithm", HASH_ALGORITHM) != HASH_ALGORITHM
            or entry["name"] in out
        ):
            raise ConfigSignatureError("malformed files claim", code="malformed", file=file)
        out[entry["name"]] = SignedFile(entry["name"], entry["hash"].lower())
    return tuple(sorted(out.values(), key=lambda f: f.name))


def _compare(signed: tuple[SignedFile, ...], current: tuple[SignedFile, ...], base: Path) -> None:
    want = {f.name: f.sha256 for f in signed}
    have = {f.name: f.sha256 for f in current}
    for name in sorted(have.keys() | want.keys()):
        where = str(base / name)
        if name not in want:
            raise ConfigSignatureError(
                f"{name} is not covered by the signature", code="file_unsigned", file=where
            )
        if name not in have:
            raise ConfigSignatureError(
                f"{name} is signed but missing", code="file_missing", file=where
            )
        if want[name] != have[name]:
            raise ConfigSignatureError(
                f"{name} changed since it was signed", code="file_changed", file=where
            )


def verify_signature(
    loaded: LoadedConfig, *, extra_keys: Sequence[Path] = (), allowed: Iterable[str] | None = None
) -> SignatureInfo:
    """Check the signature of ``loaded`` and its policy files (no anti-rollback state).

    Trusted keys are those in ``config_signature.public_keys`` plus ``extra_keys``; when
    ``allowed`` is given, only key ids in it are trusted. Raises :class:`ConfigSignatureError`.
    """
    path = signature_path(loaded)
    keys = _trusted_keys(loaded, extra_keys)
    if allowed is not None:
        pinned = set(allowed)
        keys = {kid: key for kid, key in keys.items() if kid in pinned}
    token = _read_token(path, loaded.files)
    kid, claims = _check_token(token, keys, str(path))
    epoch = claims.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 1 <= epoch <= MAX_EPOCH:
        raise ConfigSignatureError("epoch claim is invalid", code="malformed", file=str(path))
    issued = claims.get("iat")
    signed = _claimed_files(claims, str(path))
    _compare(signed, manifest(loaded), loaded.file.parent)
    return SignatureInfo(
        epoch=epoch,
        key_id=kid,
        issued_at=issued if isinstance(issued, int) and not isinstance(issued, bool) else None,
        files=signed,
        digest=_digest(signed),
    )


@dataclass(frozen=True, slots=True)
class _State:
    epoch: int
    digest: str
    key_ids: tuple[str, ...]
    required: bool


def _read_state(state_dir: Path) -> _State | None:
    path = state_dir / STATE_FILE
    if not path.exists():
        return None
    doc = _json_object(_read_small(path, MAX_STATE_BYTES, "state"), "state", str(path))
    epoch, digest, key_ids, required = (
        doc.get("epoch"),
        doc.get("digest"),
        doc.get("key_ids"),
        doc.get("required"),
    )
    if (
        doc.get("version") != 1
        or isinstance(epoch, bool)
        or not isinstance(epoch, int)
        or not isinstance(digest, str)
        or not isinstance(key_ids, list)
        or not all(isinstance(k, str) for k in key_ids)
        or not isinstance(required, bool)
    ):
        # Fail closed: a damaged anti-rollback record must not reset the epoch to zero.
        raise ConfigSignatureError(
            "anti-rollback state is damaged",
            code="state_damaged",
            file=str(path),
            hint="restore it from backup, or remove it to trust the next signed configuration",
        )
    return _State(epoch, digest, tuple(key_ids), required)


def _write_state(state_dir: Path, state: _State) -> None:
    """Temp file (mode 0600), fsync, ``os.replace``, fsync the directory: old or new, never half."""
    payload = json.dumps(
        {
            "version": 1,
            "epoch": state.epoch,
            "digest": state.digest,
            "key_ids": list(state.key_ids),
            "required": state.required,
        },
        indent=2,
    ).encode("ascii")
    try:
        replace_atomically(state_dir, STATE_FILE, payload)
    except OSError as exc:
        raise ConfigSignatureError(
            f"cannot write anti-rollback state: {exc.strerror or type(exc).__name__}",
            code="state_unwritable",
            file=str(state_dir / STATE_FILE),
        ) from None


def _check_same_as_loaded(loaded: LoadedConfig) -> None:
    """The verified bytes must be what ``loaded`` was built from (the file may have been swapped
    between loading and verifying). Settings overridden from the environment are left out."""
    raw = _file_bytes(loaded, loaded.file)
    text, _ = yamlsafe.decode(raw, str(loaded.file))
    doc, _ = yamlsafe.parse(text, str(loaded.file)) if text is not None else (None, [])
    try:
        parsed = GatewayConfig.model_validate(doc.data if doc is not None else None)
    except ValueError:
        parsed = None
    same = parsed is not None and _without(parsed, loaded) == _without(loaded.config, loaded)
    if not same:
        raise ConfigSignatureError(
            "the configuration file changed while it was being verified",
            code="file_changed",
            file=str(loaded.file),
        )


def _without(config: GatewayConfig, loaded: LoadedConfig) -> dict[str, Any]:
    data = config.model_dump(mode="json")
    for override in loaded.overrides:
        node: Any = data
        *parents, last = override.path.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return data


def verify_signed_config(loaded: LoadedConfig, state_dir: Path, *, record: bool = True) -> Verified:
    """The agent's gate at start and on reload: accept ``loaded`` or raise ConfigSignatureError.

    A signature is required when ``config_signature.required`` is true, or when the state in
    ``state_dir`` records that the last accepted configuration required one. A verified epoch is
    recorded (atomically) before returning, so a later start refuses anything older; with
    ``record`` False nothing is written (a check before the gateway moves to ``loaded``: the
    supervisor's reload check, ``gateway validate``).
    """
    settings = loaded.config.config_signature
    state = _read_state(state_dir)
    sticky = state is not None and state.required
    if not settings.required and not sticky:
        return Verified(signed=False, base=loaded.file.parent)
    if not settings.public_keys:
        raise ConfigSignatureError(
            "signed configuration is required but config_signature.public_keys is empty"
            if settings.required
            else f"this gateway accepted signed configuration (epoch {state.epoch if state else 0})"
            "; an unsigned one is refused",
            code="signature_required",
            file=str(loaded.file),
            hint="deploy a signed configuration; a signed one may set "
            "config_signature.required: false",
        )
    info = verify_signature(loaded, allowed=state.key_ids if sticky and state else None)
    _check_same_as_loaded(loaded)
    if state is not None:
        if info.epoch < state.epoch:
            raise ConfigSignatureError(
                f"epoch {info.epoch} is older than the accepted epoch {state.epoch}",
                code="rollback",
                file=str(signature_path(loaded)),
                hint="sign the release with a higher epoch",
            )
        if info.epoch == state.epoch and info.digest != state.digest:
            raise ConfigSignatureError(
                f"epoch {info.epoch} was already accepted for different files",
                code="epoch_reused",
                file=str(signature_path(loaded)),
                hint="every release needs a new, higher epoch",
            )
    trusted = tuple(sorted(_trusted_keys(loaded, ())))
    new_state = _State(info.epoch, info.digest, trusted, settings.required)
    if record and new_state != state:
        _write_state(state_dir, new_state)
    return Verified(signed=True, base=loaded.file.parent, info=info)
