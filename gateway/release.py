"""A release as one value: gateway.yaml's bytes and every other file a revision is built from.

A release is the configuration file, the Rego modules the policy loader reads from
``policy.directories``, the release signature file (when there is one) and the public keys
``config_signature.public_keys`` trusts: exactly the files that decide what a gateway serves
(the policy data, ``data.gateway``, is built from the configuration itself). :func:`capture`
reads them once into :attr:`gateway.config.LoadedConfig.files`; the policy loader and the
signature check then read the captured bytes, never the disk again.

``gateway run``'s supervisor captures the release it checked and commits, writes it (0600) to its
state directory with :func:`write_snapshot`, and starts every worker on it (:func:`read_snapshot`),
so a worker restarted after any of these files changed on disk without a reload serves the
revision the other workers serve, policies and signature included.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.config import LoadedConfig
from gateway.config.yamlsafe import MAX_FILE_BYTES
from gateway.errors import ConfigError, Problem
from gateway.gitops.signing import MAX_KEY_BYTES, MAX_SIGNATURE_BYTES, signature_path
from gateway.policy.loader import MAX_MODULE_BYTES, MAX_MODULES, rego_files
from gateway.statefile import replace_atomically

__all__ = ["FORMAT", "Release", "capture", "read_snapshot", "write_snapshot"]

FORMAT = 1
# config_signature.public_keys holds at most this many files (gateway.config.model).
_MAX_KEYS = 16
_MAX_RELEASE_BYTES = (
    MAX_FILE_BYTES
    + MAX_MODULES * MAX_MODULE_BYTES
    + MAX_SIGNATURE_BYTES
    + _MAX_KEYS * MAX_KEY_BYTES
)
# Base64 makes 4 bytes of 3; the largest release the limits allow, plus room for the JSON.
MAX_SNAPSHOT_BYTES = _MAX_RELEASE_BYTES * 4 // 3 + 1024 * 1024


@dataclass(frozen=True)
class Release:
    """A snapshot as read back: the configuration bytes and the other files by path."""

    source: bytes
    files: Mapping[str, bytes]

    def apply(self, loaded: LoadedConfig) -> LoadedConfig:
        """``loaded`` (parsed from :attr:`source`) reading its release files from here."""
        return dataclasses.replace(loaded, files=dict(self.files))


def _read(path: Path, limit: int) -> bytes | None:
    """The file's bytes; None if it does not exist. Raises ConfigError if it cannot be read or
    is over ``limit`` (what the reader that would use it refuses too)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(
            [Problem(f"cannot read: {exc.strerror}", code="unreadable", file=str(path))]
        ) from None
    if len(data) > limit:
        raise ConfigError([Problem("too large", code="too_large", file=str(path))])
    return data


def capture(loaded: LoadedConfig) -> LoadedConfig:
    """``loaded`` with its release files read now (:attr:`LoadedConfig.files`); ConfigError if
    one cannot be read. A file absent now is absent from the release (a signature file that
    does not exist, a key file that is missing: the checks then refuse as they would on disk)."""
    files: dict[str, bytes] = {}
    for directory in loaded.config.policy.directories:
        for _, path in rego_files(loaded.resolve_path(directory)):
            data = _read(path, MAX_MODULE_BYTES)
            if data is not None:
                files[str(path)] = data
    wanted = [(signature_path(loaded), MAX_SIGNATURE_BYTES)]
    wanted += [
        (loaded.resolve_path(key), MAX_KEY_BYTES)
        for key in loaded.config.config_signature.public_keys
    ]
    for path, limit in wanted:
        data = _read(path, limit)
        if data is not None:
            files[str(path)] = data
    return dataclasses.replace(loaded, files=files)


def write_snapshot(directory: Path, name: str, loaded: LoadedConfig) -> Path:
    """Write ``loaded``'s release (from :func:`capture`) as ``directory/name``, 0600, atomically;
    returns its path. Raises OSError."""
    files = loaded.files or {}
    document = {
        "format": FORMAT,
        "revision": loaded.revision,
        "config": base64.b64encode(loaded.source).decode("ascii"),
        "files": {path: base64.b64encode(data).decode("ascii") for path, data in files.items()},
    }
    replace_atomically(directory, name, json.dumps(document, sort_keys=True).encode("ascii"))
    return directory / name


def read_snapshot(path: Path) -> Release:
    """A release written by :func:`write_snapshot`; ConfigError if it cannot be read or is not
    one (bounded by what the largest release can take)."""

    def refused(message: str, code: str) -> ConfigError:
        return ConfigError([Problem(message, code=code, file=str(path))])

    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_SNAPSHOT_BYTES + 1)
    except OSError as exc:
        raise refused(f"cannot read: {exc.strerror}", "unreadable") from None
    if len(raw) > MAX_SNAPSHOT_BYTES:
        raise refused("too large", "too_large")
    try:
        document = json.loads(raw)
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ValueError("not a release snapshot")
        listed = document["files"]
        if not isinstance(listed, dict) or len(listed) > MAX_MODULES + 1 + _MAX_KEYS:
            raise ValueError("bad file list")
        source = base64.b64decode(document["config"], validate=True)
        files = {str(name): base64.b64decode(data, validate=True) for name, data in listed.items()}
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise refused(f"not a release snapshot: {exc}", "malformed") from None
    return Release(source, files)
