"""Helpers shared by verbs that act on a configured gateway (load config, print errors)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from gateway import config as gwconfig
from gateway.errors import ConfigError, redact


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """The shared ``-c/--config`` option (default ``$GATEWAY_CONFIG`` or ``./gateway.yaml``)."""
    parser.add_argument(
        "-c",
        "--config",
        default=None,
        metavar="FILE",
        help="configuration file (default: $GATEWAY_CONFIG or ./gateway.yaml)",
    )


def add_format_argument(parser: argparse.ArgumentParser) -> None:
    """The shared ``--format text|json`` option."""
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text for people (default) or json for scripts",
    )


def config_path(args: argparse.Namespace) -> str:
    """The configuration file the user meant."""
    return str(args.config or gwconfig.default_config_path())


def load_or_report(args: argparse.Namespace) -> gwconfig.LoadedConfig | None:
    """Load the configuration; on failure print every problem to stderr and return None."""
    try:
        return gwconfig.load(config_path(args))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem.render(), file=sys.stderr)
        print(
            f"{config_path(args)}: configuration is not valid; run `gateway validate`",
            file=sys.stderr,
        )
        return None


def state_dir(loaded: gwconfig.LoadedConfig) -> Path:
    """The configured state directory, relative paths taken from the config file's folder."""
    return loaded.resolve_path(loaded.config.gateway.state_dir)


def passphrase(loaded: gwconfig.LoadedConfig) -> bytes | None:
    """The key passphrase, if the configuration references one."""
    secret = loaded.secrets.get("gateway.key_passphrase")
    return secret.get_secret_value().encode() if secret is not None else None


def print_json(value: Any) -> None:
    """Indented JSON on stdout (non-JSON values as strings), credentials masked."""
    print(json.dumps(redacted(value), indent=2, default=str))


def redacted(value: Any) -> Any:
    """``value`` with every string masked by :func:`gateway.errors.redact`.

    Reports built from other components' answers (a live ``/readyz``, an exception's text, an
    identity check) are printed through this, so a credential one of them carries never reaches
    the terminal or a CI log.
    """
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(item) for item in value]
    return value


def forbid_core_dumps() -> None:
    """Set this process's soft core file size limit to 0 (children inherit it).

    ``register`` holds the Person's password, ``run`` the decrypted private key, the hmac-sha256
    keys and the other secrets of the configuration. A crash in a C extension would otherwise
    write them to a core file, which a core pattern or systemd-coredump keeps on disk beyond
    the process. Where there is no ``resource`` module (not POSIX) nothing is changed.
    """
    try:
        import resource
    except ImportError:
        return
    # The kernel (and systemd-coredump, which reads it as %c) honours the soft limit. The hard
    # one is left alone: only this process could raise the soft one again, and a process that
    # embeds the CLI keeps the right to. ValueError/OSError would mean an exotic platform.
    with contextlib.suppress(ValueError, OSError):
        hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
        resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
