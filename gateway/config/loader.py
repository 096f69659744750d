"""Loading gateway.yaml: bytes -> strict YAML -> environment overrides -> JSON Schema -> typed
model -> semantic checks -> secrets and files on this host.

Every stage collects all of its problems before the next runs, and the first stage with problems
ends the load: a schema error would only produce confusing follow-on errors in later stages.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import os
import re
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from gateway.config import schema_check, semantics, yamlsafe
from gateway.config.model import GatewayConfig
from gateway.config.secrets import SecretError, SecretRef, read_secret
from gateway.config.yamlsafe import JsonPath, Located, format_path
from gateway.errors import ConfigError, Problem

ENV_PREFIX = "GATEWAY_"
# Variables with the prefix that are not configuration overrides.
RESERVED_ENV = frozenset(
    {"GATEWAY_CONFIG", "GATEWAY_REGISTER_PASSWORD", "GATEWAY_KEY_PASSPHRASE", "GATEWAY_DEV"}
)
# Settings that differ per host and may come from the environment. Everything else - targets,
# operations, policy engine and mode, limits, signature rules - is a permission or a safety bound
# and must be reviewed in the file (catalogue F 107): an override of it is refused, not ignored.
OVERRIDABLE: tuple[JsonPath, ...] = (
    ("gateway",),
    ("empowerid",),
    ("relay",),
    ("proxy",),
    ("logging",),
    ("observability",),
    ("policy", "opa_url"),
    ("policy", "decision_timeout_seconds"),
)


@functools.cache
def _env_source() -> type[Any]:
    """The settings class pydantic-settings maps ``GATEWAY_A__B`` variables onto, made on first use.

    Only a host that sets overrides needs it: importing pydantic-settings and building a second
    model of the whole configuration costs about 5 MiB that a running gateway would otherwise
    carry for its life (issue 13).
    """
    from pydantic_settings import BaseSettings, SettingsConfigDict

    class _EnvView(BaseSettings, GatewayConfig):
        """Only used to let pydantic-settings map ``GATEWAY_A__B`` variables onto the model's
        shape."""

        model_config = SettingsConfigDict(
            env_prefix=ENV_PREFIX,
            env_nested_delimiter="__",
            case_sensitive=False,
            extra="forbid",
            # Keep values as text: pydantic-settings would turn "0443" into 443 for a strict
            # model. They are typed by the same YAML rules as the file, then checked by the schema.
            strict=False,
        )

    return _EnvView


@dataclass(frozen=True)
class Override:
    """A setting taken from the environment instead of the file."""

    path: str
    variable: str


@dataclass(frozen=True)
class LoadedConfig:
    """A validated configuration and everything learnt while loading it."""

    config: GatewayConfig
    file: Path
    revision: str
    overrides: tuple[Override, ...] = ()
    warnings: tuple[Problem, ...] = ()
    secrets: Mapping[str, SecretStr] = field(default_factory=dict)
    # The exact bytes the configuration was parsed from: a release signature is checked against
    # them (not a second read of the file, which may have changed), and a supervisor hands them
    # to a worker it restarts (gateway.supervisor).
    source: bytes = field(default=b"", repr=False, compare=False)
    # The release's other files (policy modules, signature, trusted keys) by path, read instead
    # of the disk when set: the release a supervisor captured and hands every worker it starts
    # (gateway.release). None: read the disk.
    files: Mapping[str, bytes] | None = field(default=None, repr=False, compare=False)

    def resolve_path(self, value: str) -> Path:
        """A path from the file, relative to the file's directory unless absolute."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.file.parent / path)


def default_config_path(env: Mapping[str, str] | None = None) -> str:
    """``$GATEWAY_CONFIG`` or ``./gateway.yaml``."""
    env = os.environ if env is None else env
    return env.get("GATEWAY_CONFIG") or "gateway.yaml"


def load(
    path: str | Path,
    *,
    env: Mapping[str, str] | None = None,
    check_host: bool = True,
    source: bytes | None = None,
) -> LoadedConfig:
    """Load and check a configuration file, raising :class:`ConfigError` with every problem.

    ``check_host`` also resolves secret references and checks that referenced files exist; turn it
    off to validate a file away from the machine that will run it (for example in CI). With
    ``source``, those bytes are parsed as the file at ``path`` (relative paths in them resolve
    from its directory) instead of what the file holds now.
    """
    env = os.environ if env is None else env
    file = Path(path)
    name = str(path)
    if source is not None and len(source) > yamlsafe.MAX_FILE_BYTES:
        raise ConfigError([yamlsafe.too_large(len(source), name)])
    raw = _read(file, name) if source is None else source
    text, problems = yamlsafe.decode(raw, name)
    if text is None:
        raise ConfigError(problems)
    doc, problems = yamlsafe.parse(text, name)
    if doc is None:
        raise ConfigError(problems)
    overrides, problems, warnings = _apply_env(doc, env)
    problems += schema_check.check(doc)
    if problems:
        raise ConfigError(problems)
    try:
        config = GatewayConfig.model_validate(doc.data)
    except ValidationError as exc:  # the schema should have caught these; report them the same way
        raise ConfigError(
            [
                doc.problem(tuple(err["loc"]), err["msg"], code="invalid_value")
                for err in exc.errors()
            ]
        ) from None
    problems = semantics.check(config, doc)
    if problems:
        raise ConfigError(problems)
    loaded = LoadedConfig(
        config=config,
        file=file.resolve(),
        revision=revision_of(config),
        overrides=tuple(overrides),
        warnings=tuple(warnings),
        source=raw,
    )
    if check_host:
        secrets, problems = _host_checks(loaded, doc, env)
        if problems:
            raise ConfigError(problems)
        loaded = dataclasses.replace(loaded, secrets=secrets)
    return loaded


def revision_of(config: GatewayConfig) -> str:
    """A stable hash of the effective configuration (after defaults and overrides)."""
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _read(file: Path, name: str) -> bytes:
    try:
        with file.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > yamlsafe.MAX_FILE_BYTES:
                raise ConfigError([yamlsafe.too_large(size, name)])
            return handle.read(yamlsafe.MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        message, hint = "file not found", "pass -c FILE or set GATEWAY_CONFIG"
    except IsADirectoryError:
        message, hint = "is a directory, not a file", ""
    except PermissionError:
        message, hint = "permission denied", "run as the gateway's service user"
    except OSError as exc:
        message, hint = f"cannot read: {exc.strerror}", ""
    raise ConfigError([Problem(message, code="unreadable", file=name, hint=hint)])


def _apply_env(
    doc: Located, env: Mapping[str, str]
) -> tuple[list[Override], list[Problem], list[Problem]]:
    """Merge ``GATEWAY_*`` overrides into ``doc`` (values typed like YAML scalars).

    Returns the overrides applied, the errors (refused overrides) and warnings: variables with the
    prefix that name no setting. Those are warnings, not errors, because platforms set variables
    of their own (Kubernetes adds ``GATEWAY_PORT`` for a service named "gateway").
    """
    ours = {k: v for k, v in env.items() if k.upper().startswith(ENV_PREFIX)}
    # Variables the file itself names as secret references are not overrides.
    referenced = {
        value.upper()
        for path in yamlsafe.iter_paths(doc.data)
        if path and path[-1] == "env" and isinstance(value := _get(doc.data, path), str)
    }
    ours = {k: v for k, v in ours.items() if k.upper() not in RESERVED_ENV | referenced}
    if not ours:
        return [], [], []
    from pydantic_settings import EnvSettingsSource

    source = EnvSettingsSource(
        _env_source(), env_prefix=ENV_PREFIX, env_nested_delimiter="__", case_sensitive=False
    )
    source.env_vars = {k.lower(): v for k, v in ours.items()}
    exploded: dict[str, Any] = source()
    overrides: list[Override] = []
    problems: list[Problem] = []
    warnings: list[Problem] = []
    used: set[str] = set()
    for path, value in _leaves(exploded):
        variable = ENV_PREFIX + "__".join(str(p) for p in path).upper()
        used.add(variable)
        if not any(path[: len(prefix)] == prefix for prefix in OVERRIDABLE):
            problems.append(
                Problem(
                    "cannot be set from the environment",
                    code="override_refused",
                    path=format_path(path),
                    file=f"environment {variable}",
                    hint="permissions and safety limits are set in gateway.yaml, where they are "
                    "reviewed",
                )
            )
            continue
        _set(doc.data, path, _scalar(value))
        doc.sources[path] = f"environment {variable}"
        overrides.append(Override(format_path(path), variable))
    known = sorted(ENV_PREFIX + "__".join(p).upper() for p in _all_setting_paths())
    for variable in sorted(ours):
        if variable.upper() not in used:
            warnings.append(
                Problem(
                    f"{variable} does not name a setting and is ignored",
                    code="unknown_override",
                    file=f"environment {variable}",
                    hint=_unknown_variable_hint(variable.upper(), known),
                )
            )
    return overrides, problems, warnings


# Variables Kubernetes sets in every pod for a Service named "gateway" (service links):
# GATEWAY_SERVICE_HOST, GATEWAY_SERVICE_PORT[_NAME], GATEWAY_PORT, GATEWAY_PORT_9464_TCP[_...].
_SERVICE_LINK = re.compile(
    r"^GATEWAY_(?:SERVICE_HOST|SERVICE_PORT(?:_[A-Z0-9_]+)?|PORT(?:_[0-9]+_(?:TCP|UDP|SCTP)"
    r"(?:_ADDR|_PORT|_PROTO)?)?)$"
)


def _unknown_variable_hint(variable: str, known: list[str]) -> str:
    """A hint for a ``GATEWAY_*`` variable that names no setting: a likely fix, or nothing.

    Only a variable without ``__`` gets here (one with it names a section and is applied,
    refused or reported as a misspelt key). A guess is offered only where it is surely right: a
    single ``_`` where nesting needs ``__`` (``GATEWAY_RELAY_CONNECTIONS``). Similar spelling
    alone would only ever point at a whole section, which no variable can set: ``GATEWAY_PORT``
    is not a misspelt ``GATEWAY_PROXY``.
    """
    if _SERVICE_LINK.match(variable):
        return (
            "Kubernetes sets this for a Service named 'gateway' and it is harmless; "
            "enableServiceLinks: false on the pod drops it"
        )
    rest = variable[len(ENV_PREFIX) :]
    for index, char in enumerate(rest):
        if char == "_":
            candidate = ENV_PREFIX + rest[:index] + "__" + rest[index + 1 :]
            if candidate in known:
                return f"did you mean {candidate}? nested keys are joined by '__'"
    return ""


def _get(data: Any, path: JsonPath) -> Any:
    for part in path:
        data = data[part]
    return data


def _scalar(value: Any) -> Any:
    """Type an environment value the way the same text would be typed in gateway.yaml."""
    if not isinstance(value, str) or not _is_plain(value):
        return value
    parsed, _ = yamlsafe.parse(f"v: {value}\n", "<env>")
    if parsed is not None and isinstance(parsed.data, dict):
        return parsed.data.get("v", value)
    return value


def _is_plain(value: str) -> bool:
    return bool(value) and "\n" not in value and not value.startswith(("{", "[", "&", "*", "!"))


def _leaves(tree: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    if isinstance(tree, dict) and (tree or not path):
        out: list[tuple[tuple[str, ...], Any]] = []
        for key, value in tree.items():
            out.extend(_leaves(value, (*path, key)))
        return out
    return [(path, tree)]


def _set(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = data
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = copy.deepcopy(value)


def _all_setting_paths() -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []

    def walk(model: type[Any], prefix: tuple[str, ...]) -> None:
        for name, info in model.model_fields.items():
            paths.append((*prefix, name))
            annotation = info.annotation
            for candidate in getattr(annotation, "__args__", (annotation,)):
                if isinstance(candidate, type) and hasattr(candidate, "model_fields"):
                    walk(candidate, (*prefix, name))

    walk(GatewayConfig, ())
    return paths


def _host_checks(
    loaded: LoadedConfig, doc: Located, env: Mapping[str, str]
) -> tuple[dict[str, SecretStr], list[Problem]]:
    """Resolve secret references and check that referenced files can be read."""
    config = loaded.config
    secrets: dict[str, SecretStr] = {}
    problems: list[Problem] = []
    references: list[tuple[JsonPath, SecretRef | None]] = [
        (("proxy", "password"), config.proxy.password if config.proxy else None),
        (("gateway", "key_passphrase"), config.gateway.key_passphrase),
        (("logging", "decision_log", "hmac_key"), config.logging.decision_log.hmac_key),
        *credential_references(config),
        *ldap_identity_references(config),
    ]
    for path, ref in references:
        if ref is None:
            continue
        secret, problem = _resolve_secret(ref, path, loaded, doc, env)
        if problem:
            problems.append(problem)
        elif secret is not None:
            secrets[format_path(path)] = secret
    files: list[tuple[JsonPath, str | None]] = [
        (("empowerid", "ca_file"), config.empowerid.ca_file),
        (("proxy", "ca_file"), config.proxy.ca_file if config.proxy else None),
    ]
    syslog = config.logging.export.syslog
    if syslog is not None:
        for key in ("ca_file", "client_certificate_file", "client_key_file"):
            files.append((("logging", "export", "syslog", key), getattr(syslog, key)))
    for name, target in config.targets.items():
        if target.tls is not None:
            files.append((("targets", name, "tls", "ca_file"), target.tls.ca_file))
    for name, credential in config.credentials.items():
        oauth = credential.oauth2_client_credentials
        if oauth is not None and oauth.tls is not None:
            path = ("credentials", name, "oauth2_client_credentials", "tls", "ca_file")
            files.append((path, oauth.tls.ca_file))
    for path, file_value in files:
        if file_value is None:
            continue
        resolved = loaded.resolve_path(file_value)
        if not resolved.is_file() or not os.access(resolved, os.R_OK):
            problems.append(
                doc.problem(
                    path,
                    f"file {str(resolved)!r} does not exist or cannot be read",
                    code="missing_file",
                )
            )
        elif path[-1] == "ca_file":
            unusable = _unusable_ca_file(resolved)
            if unusable is not None:
                problems.append(
                    doc.problem(
                        path,
                        unusable,
                        code="invalid_ca_file",
                        hint="a CA file holds one or more PEM certificates "
                        "(-----BEGIN CERTIFICATE----- blocks)",
                    )
                )
    audit_file = config.logging.audit_file
    if audit_file is not None:
        unwritable = _unwritable_log(loaded.resolve_path(audit_file))
        if unwritable is not None:
            message, hint = unwritable
            problems.append(
                doc.problem(("logging", "audit_file"), message, code="unwritable_file", hint=hint)
            )
    return secrets, problems


def _unusable_ca_file(file: Path) -> str | None:
    """Why ``file`` cannot be a CA bundle, or None.

    Loaded the way the gateway loads every CA file it verifies a server with (a target's,
    its token endpoint's and the syslog collector's context: ``ssl.create_default_context``
    with ``cafile``): a file that is not one used to pass every check and end ``gateway run``
    in a traceback when it built the target's TLS settings."""
    try:
        ssl.create_default_context(cafile=str(file))
    except ssl.SSLError as exc:
        return f"file {str(file)!r} holds no usable CA certificate ({exc.reason or exc})"
    except (OSError, ValueError) as exc:
        return f"file {str(file)!r} cannot be loaded as CA certificates: {exc}"
    return None


def _unwritable_log(file: Path) -> tuple[str, str] | None:
    """(message, hint) when the decision log ``file`` cannot be created, appended to and
    rotated by this user, else None.

    The agent writes no record it cannot append and carries on (docs/operations.md, "The
    decision log"), so a log in a missing or closed directory would lose every decision from
    the first one on while validate, check and the start said all was well. A device or pipe
    (``/dev/stdout``) is only written; a regular file is also created and renamed on rotation,
    which its directory must allow."""
    hint = "run as the gateway's service user, or give that user the directory"
    try:
        info = os.stat(file)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        return f"{str(file)!r} cannot be examined: {exc.strerror}", hint
    if info is not None and stat.S_ISDIR(info.st_mode):
        return f"{str(file)!r} is a directory", "name a file in it, such as decisions.jsonl"
    if info is not None and not stat.S_ISREG(info.st_mode):
        if not os.access(file, os.W_OK):
            return f"{str(file)!r} is not writable by this user", hint
        return None
    directory = file.parent
    if not directory.is_dir():
        return (
            f"directory {str(directory)!r} of the decision log does not exist",
            "create it, writable by the gateway's service user only; under systemd "
            "LogsDirectory=gateway creates /var/log/gateway",
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        return (
            f"directory {str(directory)!r} is not writable by this user: the decision log "
            "cannot be created or rotated there",
            hint,
        )
    if info is not None and not os.access(file, os.W_OK):
        return f"{str(file)!r} is not writable by this user", hint
    return None


def credential_references(config: GatewayConfig) -> list[tuple[JsonPath, SecretRef]]:
    """Every secret reference of the ``credentials`` section, with its JSON path (the key the
    resolved value is stored under in :attr:`LoadedConfig.secrets`)."""
    found: list[tuple[JsonPath, SecretRef]] = []
    for name, credential in config.credentials.items():
        base = ("credentials", name)
        if credential.header is not None:
            found.append(((*base, "header", "value"), credential.header.value))
        if credential.bearer is not None:
            found.append(((*base, "bearer", "token"), credential.bearer.token))
        if credential.basic is not None:
            found.append(((*base, "basic", "password"), credential.basic.password))
        oauth = credential.oauth2_client_credentials
        if oauth is not None:
            found.append(
                ((*base, "oauth2_client_credentials", "client_secret"), oauth.client_secret)
            )
    return found


def ldap_identity_references(config: GatewayConfig) -> list[tuple[JsonPath, SecretRef]]:
    """The password reference of every LDAP bind identity, with its JSON path: the password of
    identity ``svc`` of target ``dc`` is ``LoadedConfig.secrets["targets.dc.ldap.bind_identities
    .svc.password"]``."""
    return [
        (("targets", name, "ldap", "bind_identities", identity, "password"), entry.password)
        for name, target in config.targets.items()
        if target.ldap is not None
        for identity, entry in target.ldap.bind_identities.items()
    ]


def _resolve_secret(
    ref: SecretRef,
    path: JsonPath,
    loaded: LoadedConfig,
    doc: Located,
    env: Mapping[str, str],
) -> tuple[SecretStr | None, Problem | None]:
    try:
        return read_secret(ref, base_dir=loaded.file.parent, env=env), None
    except SecretError as exc:
        hint = exc.hint
        if exc.code == "missing_secret" and ref.env is not None:
            hint = "set it in the service's environment, or validate with --skip-host-checks"
        return None, doc.problem(path, str(exc), code=exc.code, hint=hint)
