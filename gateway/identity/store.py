"""The identity state directory: private key, client certificate, pins and relay endpoint.

Layout (every file written 0600 in a 0700 directory)::

    identity.json        commit record: gateway id, control-plane URL, current generation
    client-N.key         private key of generation N (PKCS#8 PEM, optionally encrypted)
    client-N.crt         client certificate chain of generation N (PEM, leaf first)
    ca.pem               the pinned control-plane CA
    signing-keys.json    the pinned request-signing public keys
    request-secrets.json this gateway's hmac-sha256 request-signing keys (only with
                         signatures.hmac_sha256; read as a secret, like the private key)
    relay.json           relay namespace and hybrid connection path (no token: tokens are fetched)

Crash safety: each file is written to a temporary name in the same directory, fsynced, renamed
over the target with ``os.replace`` (atomic on POSIX) and the directory is fsynced, so a reader
sees the old or the new file, never a partial one. A key pair becomes current only when
``identity.json`` is replaced to point at its generation; until then the previous pair stays in
use. That is how renewal keeps the old pair until the new one has completed a handshake.

Loading refuses, with a clear ``IdentityError``: a symlinked directory or file (``O_NOFOLLOW``), a
directory or key with any group/other permission bits, any state file writable by group/others,
anything owned by another user, files that are not regular, oversized or truncated files, and a
key that does not match its certificate. POSIX only: ownership and modes are the access control.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import re
import secrets
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from pydantic import TypeAdapter, ValidationError

from gateway.config.secrets import SecretError, SecretRef, read_secret
from gateway.identity.certs import (
    common_name,
    parse_ca_certificate,
    parse_certificate_chain,
)
from gateway.identity.errors import IdentityError
from gateway.identity.keys import (
    PrivateKey,
    load_private_key,
    public_key_der,
    serialize_private_key,
    validate_gateway_id,
)
from gateway.identity.models import RelayEndpoint, RequestSecret, SigningKey

IDENTITY_FILE = "identity.json"
CA_FILE = "ca.pem"
SIGNING_KEYS_FILE = "signing-keys.json"
REQUEST_SECRETS_FILE = "request-secrets.json"
RELAY_FILE = "relay.json"

MAX_FILE_BYTES = 64 * 1024
MAX_PASSPHRASE_BYTES = 1024
STORE_FORMAT = 1

_TEMP_MARKER = ".tmp-"
_GENERATION_FILE = re.compile(r"client-([0-9]{1,9})\.(key|crt)")
_SIGNING_KEYS = TypeAdapter(list[SigningKey])
_REQUEST_SECRETS = TypeAdapter(list[RequestSecret])
_T = TypeVar("_T")


def key_file_name(generation: int) -> str:
    """File name of the private key of ``generation``."""
    return f"client-{generation}.key"


def cert_file_name(generation: int) -> str:
    """File name of the certificate chain of ``generation``."""
    return f"client-{generation}.crt"


@dataclass(frozen=True)
class IdentityRecord:
    """The commit record (``identity.json``)."""

    gateway_id: str
    control_plane_url: str
    generation: int
    registered_at: dt.datetime

    def to_json(self) -> bytes:
        """Serialised form written to disk."""
        return json.dumps(
            {
                "format": STORE_FORMAT,
                "gateway_id": self.gateway_id,
                "control_plane_url": self.control_plane_url,
                "generation": self.generation,
                "registered_at": self.registered_at.isoformat(),
            },
            indent=2,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes, *, source: str) -> IdentityRecord:
        """Parse and check ``identity.json``; any defect is ``corrupt_file``."""
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict) or raw.get("format") != STORE_FORMAT:
                raise ValueError("unknown format")
            gateway_id = raw["gateway_id"]
            url = raw["control_plane_url"]
            generation = raw["generation"]
            registered_at = dt.datetime.fromisoformat(raw["registered_at"])
            if not (isinstance(gateway_id, str) and isinstance(url, str)):
                raise ValueError("bad types")
            if type(generation) is not int or not 1 <= generation < 10**9:
                raise ValueError("bad generation")
            if registered_at.tzinfo is None:
                raise ValueError("naive timestamp")
        except (ValueError, KeyError, TypeError):
            raise IdentityError(
                "corrupt_file", f"{source} is damaged or not a gateway identity"
            ) from None
        return cls(validate_gateway_id(gateway_id), url, generation, registered_at)


@dataclass(frozen=True)
class StoredIdentity:
    """A loaded identity: the current key pair plus the pins stored at registration."""

    record: IdentityRecord
    private_key: PrivateKey = field(repr=False)
    certificate_chain: tuple[x509.Certificate, ...]
    ca_certificate: x509.Certificate
    ca_pem: bytes
    signing_keys: tuple[SigningKey, ...]
    relay: RelayEndpoint
    key_path: Path
    cert_path: Path

    @property
    def gateway_id(self) -> str:
        """The gateway id the certificate names."""
        return self.record.gateway_id

    @property
    def certificate(self) -> x509.Certificate:
        """The leaf client certificate."""
        return self.certificate_chain[0]


def read_passphrase(
    *,
    env_var: str | None = None,
    file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> bytes | None:
    """The key passphrase from an environment variable or a file (0600, owned by us), if any.

    A single trailing newline is stripped from the file. An empty passphrase is an error rather
    than "no encryption", so a misconfigured secret never silently weakens the key at rest.
    """
    if env_var and file:
        raise IdentityError(
            "passphrase_source",
            "give the key passphrase in an environment variable or a file, not both",
        )
    if env_var:
        value = (os.environ if environ is None else environ).get(env_var)
        if value is None:
            raise IdentityError("passphrase_source", f"environment variable {env_var} is not set")
        data = value.encode()
    elif file:
        # The one reader of secret files (strict owner and mode, no symbolic links).
        try:
            stored = read_secret(SecretRef(file=str(file)), base_dir=Path.cwd(), env={})
        except SecretError as exc:
            raise IdentityError("passphrase_source", str(exc)) from None
        data = stored.get_secret_value().encode()
    else:
        return None
    if not data:
        raise IdentityError("passphrase_source", "the key passphrase is empty")
    if len(data) > MAX_PASSPHRASE_BYTES:
        raise IdentityError("passphrase_source", "the key passphrase is too long")
    return data


def _open_error(exc: OSError, source: str) -> IdentityError:
    if exc.errno == errno.ELOOP:
        return IdentityError(
            "symlink_refused", f"{source} is a symbolic link; refusing to follow it"
        )
    if exc.errno == errno.ENOENT:
        return IdentityError("corrupt_file", f"{source} is missing")
    return IdentityError("unreadable", f"{source} cannot be opened: {exc.strerror}")


def _check_owner(st: os.stat_result, source: str) -> None:
    if st.st_uid != os.geteuid():
        raise IdentityError(
            "unsafe_permissions",
            f"{source} is owned by uid {st.st_uid}, not by the gateway's uid {os.geteuid()}",
        )


def _check_file(st: os.stat_result, source: str, *, secret: bool) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise IdentityError("corrupt_file", f"{source} is not a regular file")
    _check_owner(st, source)
    mode = stat.S_IMODE(st.st_mode)
    if secret and mode & 0o077:
        raise IdentityError(
            "unsafe_permissions",
            f"{source} has mode {mode:04o}; a secret must not be accessible to group or others "
            "(chmod 600)",
        )
    if mode & 0o022:
        raise IdentityError(
            "unsafe_permissions",
            f"{source} has mode {mode:04o}; it must not be writable by group or others (chmod 600)",
        )


def _read_bounded(fd: int, source: str, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = os.read(fd, 16384)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            raise IdentityError("corrupt_file", f"{source} is larger than {limit} bytes")
        chunks.append(chunk)


class IdentityStore:
    """Reads and writes the state directory; see the module docstring for the guarantees."""

    def __init__(self, state_dir: Path, *, passphrase: bytes | None = None) -> None:
        if os.name != "posix":
            raise IdentityError(
                "unsupported_platform", "the identity store needs POSIX file ownership and modes"
            )
        self._dir = state_dir
        self._passphrase = passphrase

    def __repr__(self) -> str:
        return f"IdentityStore({str(self._dir)!r})"

    @property
    def state_dir(self) -> Path:
        """The directory this store manages."""
        return self._dir

    def path(self, name: str) -> Path:
        """Full path of a file in the state directory."""
        return self._dir / name

    # -- directory handling ------------------------------------------------------------------

    def create_directory(self) -> None:
        """Create the directory (mode 0700) if it is missing, then check that it is safe."""
        try:
            self._dir.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            pass
        except OSError as exc:
            raise IdentityError(
                "unwritable", f"cannot create {self._dir}: {exc.strerror}"
            ) from None
        with self._open_dir():
            pass

    @contextmanager
    def _open_dir(self) -> Iterator[int]:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            dfd = os.open(self._dir, flags)
        except FileNotFoundError:
            raise IdentityError(
                "not_registered", f"{self._dir} does not exist; run `gateway register` first"
            ) from None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and self._dir.is_symlink():
                raise IdentityError(
                    "symlink_refused", f"{self._dir} is a symbolic link; refusing to follow it"
                ) from None
            raise IdentityError(
                "unreadable", f"{self._dir} cannot be opened: {exc.strerror}"
            ) from None
        try:
            st = os.fstat(dfd)
            _check_owner(st, str(self._dir))
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o002:
                raise IdentityError(
                    "unsafe_permissions",
                    f"{self._dir} is world-writable (mode {mode:04o}); it must be 0700",
                )
            if mode & 0o077:
                raise IdentityError(
                    "unsafe_permissions",
                    f"{self._dir} has mode {mode:04o}; it must not be accessible to group or "
                    "others (chmod 700)",
                )
            yield dfd
        finally:
            os.close(dfd)

    # -- reading -------------------------------------------------------------------------------

    def _read(self, dfd: int, name: str, *, secret: bool = False) -> bytes:
        source = str(self._dir / name)
        # O_NONBLOCK: opening a FIFO planted under a state name must not hang start-up.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(name, flags, dir_fd=dfd)
        except OSError as exc:
            raise _open_error(exc, source) from None
        try:
            _check_file(os.fstat(fd), source, secret=secret)
            return _read_bounded(fd, source, MAX_FILE_BYTES)
        finally:
            os.close(fd)

    def has_identity(self) -> bool:
        """True if a committed identity exists (the directory itself must be safe)."""
        with self._open_dir() as dfd:
            try:
                os.stat(IDENTITY_FILE, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                return False
            return True

    def read_record(self) -> IdentityRecord:
        """The commit record alone (no private key is read)."""
        with self._open_dir() as dfd:
            return self._read_record(dfd)

    def _read_record(self, dfd: int) -> IdentityRecord:
        try:
            data = self._read(dfd, IDENTITY_FILE)
        except IdentityError as exc:
            if exc.code == "corrupt_file" and not (self._dir / IDENTITY_FILE).exists():
                raise IdentityError(
                    "not_registered", f"{self._dir} holds no identity; run `gateway register`"
                ) from None
            raise
        return IdentityRecord.from_json(data, source=str(self._dir / IDENTITY_FILE))

    def read_certificate_chain(self) -> tuple[IdentityRecord, list[x509.Certificate]]:
        """The commit record and the current certificate chain, without touching the key."""
        with self._open_dir() as dfd:
            record = self._read_record(dfd)
            name = cert_file_name(record.generation)
            chain = parse_certificate_chain(self._read(dfd, name), source=str(self._dir / name))
            return record, chain

    def load(self) -> StoredIdentity:
        """Load and cross-check the committed identity (key matches certificate, CN is the id).

        Time-dependent checks (validity, chain at ``now``) are the caller's: ``gateway status``
        must be able to show an expired certificate.
        """
        with self._open_dir() as dfd:
            record = self._read_record(dfd)
            key_name = key_file_name(record.generation)
            cert_name = cert_file_name(record.generation)
            key_source = str(self._dir / key_name)
            private_key = load_private_key(
                self._read(dfd, key_name, secret=True), self._passphrase, source=key_source
            )
            chain = parse_certificate_chain(
                self._read(dfd, cert_name), source=str(self._dir / cert_name)
            )
            ca_pem = self._read(dfd, CA_FILE)
            ca = parse_ca_certificate(ca_pem, source=str(self._dir / CA_FILE))
            signing_keys = self._parse_json(dfd, SIGNING_KEYS_FILE, _SIGNING_KEYS)
            relay = self._parse_json(dfd, RELAY_FILE, TypeAdapter(RelayEndpoint))
        if public_key_der(chain[0]) != public_key_der(private_key):
            raise IdentityError(
                "key_certificate_mismatch",
                f"{key_source} does not match the certificate in {cert_name}",
            )
        if common_name(chain[0]) != record.gateway_id:
            raise IdentityError(
                "certificate_invalid",
                f"the certificate in {cert_name} does not name gateway {record.gateway_id}",
            )
        return StoredIdentity(
            record=record,
            private_key=private_key,
            certificate_chain=tuple(chain),
            ca_certificate=ca,
            ca_pem=ca_pem,
            signing_keys=tuple(signing_keys),
            relay=relay,
            key_path=self._dir / key_name,
            cert_path=self._dir / cert_name,
        )

    def _parse_json(self, dfd: int, name: str, adapter: TypeAdapter[_T]) -> _T:
        try:
            return adapter.validate_json(self._read(dfd, name))
        except ValidationError:
            raise IdentityError("corrupt_file", f"{self._dir / name} is damaged") from None

    # -- writing -------------------------------------------------------------------------------

    def _write(self, dfd: int, name: str, data: bytes) -> None:
        temp = f".{name}{_TEMP_MARKER}{secrets.token_hex(6)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(temp, flags, 0o600, dir_fd=dfd)
            try:
                os.fchmod(fd, 0o600)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            # The rename is durable only once the directory entry itself is on disk.
            os.fsync(dfd)
        except OSError as exc:
            with suppress(OSError):
                os.unlink(temp, dir_fd=dfd)
            raise IdentityError(
                "unwritable", f"cannot write {self._dir / name}: {exc.strerror}"
            ) from None

    def next_generation(self) -> int:
        """The generation number a new key pair should use."""
        with self._open_dir() as dfd:
            try:
                return self._read_record(dfd).generation + 1
            except IdentityError as exc:
                if exc.code == "not_registered":
                    return 1
                raise

    def write_key_pair(
        self, generation: int, private_key: PrivateKey, chain: list[x509.Certificate]
    ) -> tuple[Path, Path]:
        """Write an uncommitted key pair; returns (key path, certificate path)."""
        key_pem = serialize_private_key(private_key, self._passphrase)
        chain_pem = b"".join(cert.public_bytes(Encoding.PEM) for cert in chain)
        with self._open_dir() as dfd:
            self._write(dfd, key_file_name(generation), key_pem)
            self._write(dfd, cert_file_name(generation), chain_pem)
        return self._dir / key_file_name(generation), self._dir / cert_file_name(generation)

    def write_pins(
        self, *, ca_pem: bytes, signing_keys: list[SigningKey], relay: RelayEndpoint
    ) -> None:
        """Write the pinned CA, signing keys and relay endpoint."""
        with self._open_dir() as dfd:
            self._write(dfd, CA_FILE, ca_pem)
            self._write(dfd, SIGNING_KEYS_FILE, _SIGNING_KEYS.dump_json(signing_keys, indent=2))
            self._write(dfd, RELAY_FILE, relay.model_dump_json(indent=2).encode())

    def write_signing_keys(self, signing_keys: list[SigningKey]) -> None:
        """Replace the pinned signing keys (after a refresh over mTLS)."""
        with self._open_dir() as dfd:
            self._write(dfd, SIGNING_KEYS_FILE, _SIGNING_KEYS.dump_json(signing_keys, indent=2))

    def write_request_secrets(self, secrets: list[RequestSecret]) -> None:
        """Replace this gateway's hmac-sha256 keys (0600, written like the private key)."""
        document = json.dumps([secret.stored() for secret in secrets], indent=2).encode()
        with self._open_dir() as dfd:
            self._write(dfd, REQUEST_SECRETS_FILE, document)

    def read_request_secrets(self) -> list[RequestSecret]:
        """The stored hmac-sha256 keys; empty when none are stored. The file is held to the
        private key's rules (mode, owner, no symlink)."""
        with self._open_dir() as dfd:
            try:
                os.stat(REQUEST_SECRETS_FILE, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                return []
            try:
                return _REQUEST_SECRETS.validate_json(
                    self._read(dfd, REQUEST_SECRETS_FILE, secret=True)
                )
            except ValidationError:
                # The message names the file only: pydantic's would quote the secret.
                raise IdentityError(
                    "corrupt_file", f"{self._dir / REQUEST_SECRETS_FILE} is damaged"
                ) from None

    def remove_request_secrets(self) -> bool:
        """Delete the stored hmac-sha256 keys (the option was turned off); whether one existed."""
        with self._open_dir() as dfd:
            try:
                os.unlink(REQUEST_SECRETS_FILE, dir_fd=dfd)
                os.fsync(dfd)
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise IdentityError(
                    "unwritable",
                    f"cannot delete {self._dir / REQUEST_SECRETS_FILE}: {exc.strerror}",
                ) from None
            return True

    def commit(self, record: IdentityRecord) -> None:
        """Make ``record.generation`` current, then delete other generations and stale temps."""
        with self._open_dir() as dfd:
            self._write(dfd, IDENTITY_FILE, record.to_json())
            for name in os.listdir(dfd):
                match = _GENERATION_FILE.fullmatch(name)
                stale_pair = match is not None and int(match.group(1)) != record.generation
                if stale_pair or (name.startswith(".") and _TEMP_MARKER in name):
                    os.unlink(name, dir_fd=dfd)
            os.fsync(dfd)

    def discard_key_pair(self, generation: int) -> None:
        """Delete an uncommitted key pair (a renewal that failed its handshake)."""
        with self._open_dir() as dfd:
            try:
                current = self._read_record(dfd).generation
            except IdentityError as exc:
                if exc.code != "not_registered":
                    raise
                current = 0
            if generation == current:
                raise IdentityError("in_use", f"generation {generation} is the current identity")
            for name in (key_file_name(generation), cert_file_name(generation)):
                with suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dfd)
            os.fsync(dfd)
