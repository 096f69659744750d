"""Secret references: how gateway.yaml names a secret without containing it.

A secret is never written in the configuration file (it would travel through reviews, git history
and diffs). The file holds a *reference*, exactly one of:

``{env: NAME}``
    an environment variable of the gateway's process (fixed for the life of the process);
``{file: PATH}``
    a file, relative to gateway.yaml unless absolute. It must be a regular file (a symbolic link
    is refused, ``O_NOFOLLOW``), owned by the gateway's user and inaccessible to group and others
    (mode 0600 or 0400), so a secret nobody but the service can read stays that way;
``{credential: NAME}``
    a systemd service credential (``LoadCredential=`` / ``SetCredential=``): the file ``NAME`` in
    ``$CREDENTIALS_DIRECTORY``. systemd owns that directory (a private, non-swappable mount only the
    service can read), and writes each file read-only, owned by root or by the service user, and
    grants the service read access with an ACL, whose mask shows as the group bits of the mode
    (systemd.exec(5), "Credentials"). So a credential file may be owned by root and show group
    read, but must not be world-accessible or writable by anyone but its owner.

A file's single trailing newline (``\\n`` or ``\\r\\n``) is not part of the secret; an empty secret
is an error rather than "no secret". :class:`SecretSource` re-reads a file reference when the file
changes (checked with one ``fstat`` per use), so a rotated secret is used from the next request on.

Nothing here ever puts a secret's value in a message: errors name the reference (``env:NAME``,
``file:PATH``, ``credential:NAME``) and what is wrong with it.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from gateway.errors import GatewayError

__all__ = [
    "CREDENTIALS_DIRECTORY_ENV",
    "MAX_SECRET_BYTES",
    "SecretError",
    "SecretRef",
    "SecretSource",
    "read_secret",
]

# Enough for any password, API key, client secret or PEM key; a larger "secret" is a mistake.
MAX_SECRET_BYTES = 64 * 1024
# systemd.exec(5): the directory of the service's credentials, set only when it has some.
CREDENTIALS_DIRECTORY_ENV = "CREDENTIALS_DIRECTORY"
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
# systemd credential names are file names: no '/', not '.' or '..' (checked below as well).
_CREDENTIAL_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.@:-]{0,254}$"


class SecretError(GatewayError):
    """A secret reference cannot be used: ``code`` says why, the message names the reference."""

    def __init__(self, code: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.hint = hint


class SecretRef(BaseModel):
    """A secret held outside the file: exactly one of ``env``, ``file`` or ``credential``."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        # Exactly one key: every property is optional and no other key is allowed.
        json_schema_extra={"minProperties": 1, "maxProperties": 1},
    )

    env: str | None = Field(
        default=None,
        pattern=_ENV_NAME,
        description="Name of the environment variable holding the secret.",
    )
    file: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description=(
            "Path of a file holding the secret (trailing newline ignored): a regular file owned "
            "by the gateway's user, mode 0600 or 0400."
        ),
    )
    credential: str | None = Field(
        default=None,
        pattern=_CREDENTIAL_NAME,
        description="Name of a systemd credential (LoadCredential=) in $CREDENTIALS_DIRECTORY.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        given = [v for v in (self.env, self.file, self.credential) if v is not None]
        if len(given) != 1:
            raise ValueError("a secret reference needs exactly one of env, file or credential")
        if self.credential in (".", ".."):
            raise ValueError("a credential name is a file name")
        return self

    def describe(self) -> str:
        """The reference itself (``env:NAME``, ``file:PATH``, ``credential:NAME``), never the
        secret: what logs, ``explain`` and ``diff`` may show."""
        if self.env is not None:
            return f"env:{self.env}"
        if self.file is not None:
            return f"file:{self.file}"
        return f"credential:{self.credential}"


def _file_of(ref: SecretRef, base_dir: Path, env: Mapping[str, str]) -> tuple[Path, bool] | None:
    """The file a file or credential reference points at, and whether it is a systemd one."""
    if ref.file is not None:
        path = Path(ref.file).expanduser()
        return (path if path.is_absolute() else base_dir / path), False
    if ref.credential is not None:
        directory = env.get(CREDENTIALS_DIRECTORY_ENV)
        if not directory:
            raise SecretError(
                "missing_secret",
                f"{ref.describe()}: ${CREDENTIALS_DIRECTORY_ENV} is not set",
                "run the gateway as a systemd service with LoadCredential= for this name",
            )
        return Path(directory) / ref.credential, True
    return None


def _check_mode(st: os.stat_result, ref: SecretRef, systemd: bool) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise SecretError("invalid_secret", f"{ref.describe()} is not a regular file")
    owners = (os.geteuid(), 0) if systemd else (os.geteuid(),)
    if st.st_uid not in owners:
        raise SecretError(
            "unsafe_secret_file",
            f"{ref.describe()} is owned by uid {st.st_uid}, not by the gateway's uid "
            f"{os.geteuid()}",
            "chown it to the gateway's service user",
        )
    mode = stat.S_IMODE(st.st_mode)
    # Group bits of a systemd credential show its ACL mask (see the module docstring).
    forbidden = 0o007 | 0o020 if systemd else 0o077
    if mode & forbidden:
        raise SecretError(
            "unsafe_secret_file",
            f"{ref.describe()} has mode {mode:04o}; a secret file must not be accessible to "
            "group or others",
            "chmod 600 it",
        )


def _decode(data: bytes, ref: SecretRef) -> SecretStr:
    if len(data) > MAX_SECRET_BYTES:
        raise SecretError("invalid_secret", f"{ref.describe()} is larger than 64 KiB")
    if data.endswith(b"\n"):
        data = data[:-2] if data.endswith(b"\r\n") else data[:-1]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError("invalid_secret", f"{ref.describe()} is not UTF-8 text") from None
    if not text:
        raise SecretError("invalid_secret", f"{ref.describe()} is empty")
    return SecretStr(text)


def _open(path: Path, ref: SecretRef) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SecretError(
                "unsafe_secret_file", f"{ref.describe()} is a symbolic link; it is not followed"
            ) from None
        raise SecretError(
            "missing_secret", f"cannot read {ref.describe()}: {exc.strerror}"
        ) from None


def _read_fd(fd: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_SECRET_BYTES:
        chunk = os.read(fd, MAX_SECRET_BYTES + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _read_file(path: Path, ref: SecretRef, systemd: bool) -> tuple[SecretStr, tuple[int, ...]]:
    fd = _open(path, ref)
    try:
        st = os.fstat(fd)
        _check_mode(st, ref, systemd)
        try:
            data = _read_fd(fd)
        except OSError as exc:
            raise SecretError(
                "missing_secret", f"cannot read {ref.describe()}: {exc.strerror}"
            ) from None
    finally:
        os.close(fd)
    return _decode(data, ref), _identity(st)


def _identity(st: os.stat_result) -> tuple[int, ...]:
    # A rotation writes a new file and renames it (new inode) or rewrites it (new mtime or size);
    # ctime also moves on chmod/chown, which must be re-checked too.
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def read_secret(
    ref: SecretRef, *, base_dir: Path, env: Mapping[str, str] | None = None
) -> SecretStr:
    """Resolve ``ref`` now. ``base_dir`` anchors a relative ``file``; ``env`` defaults to the
    process environment. Raises :class:`SecretError` (codes ``missing_secret``,
    ``unsafe_secret_file``, ``invalid_secret``)."""
    return SecretSource(ref, base_dir=base_dir, env=env).get()


@dataclass(frozen=True, slots=True)
class _Cached:
    value: SecretStr
    identity: tuple[int, ...]


class SecretSource:
    """One secret reference, resolved on demand and re-read when its file changes.

    ``get`` returns the current value. For a file or credential reference it costs one ``stat``
    when the file is unchanged; a changed file (new inode, size, times) is read again with every
    check, so a secret rotated in place is used from the next call on, and a rotation that leaves
    the file unreadable or unsafe fails closed instead of falling back to the old value.
    Environment references are read once: a process's environment does not change.
    """

    def __init__(
        self,
        ref: SecretRef,
        *,
        base_dir: Path,
        env: Mapping[str, str] | None = None,
        initial: SecretStr | None = None,
    ) -> None:
        """``initial``: a value already resolved for ``ref`` (used for ``env`` references)."""
        self.ref = ref
        environ = os.environ if env is None else env
        self._file = _file_of(ref, base_dir, environ)
        self._env_value = initial
        if ref.env is not None and initial is None:
            value = environ.get(ref.env)
            if value is None:
                raise SecretError(
                    "missing_secret",
                    f"{ref.describe()}: environment variable {ref.env} is not set",
                    "set it in the service's environment",
                )
            self._env_value = _decode(value.encode(), ref)
        self._cached: _Cached | None = None
        self._lock = threading.Lock()

    def get(self) -> SecretStr:
        """The secret's current value; raises :class:`SecretError` when it cannot be read."""
        if self._file is None:
            assert self._env_value is not None
            return self._env_value
        path, systemd = self._file
        cached = self._cached
        if cached is not None:
            try:
                st = os.stat(path, follow_symlinks=False)
            except OSError as exc:
                raise SecretError(
                    "missing_secret", f"cannot read {self.ref.describe()}: {exc.strerror}"
                ) from None
            if _identity(st) == cached.identity:
                return cached.value
        with self._lock:
            value, identity = _read_file(path, self.ref, systemd)
            self._cached = _Cached(value, identity)
        return value
