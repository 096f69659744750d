"""``gateway register``: enrol this gateway with EmpowerID using a Person's credentials, once.

The password is read from a prompt (or ``GATEWAY_REGISTER_PASSWORD`` for automation), never from
the command line where other users could see it in the process list; it is sent once over TLS
pinned to ``empowerid.ca_file`` (or, when that optional setting is absent, verified by the system
trust store) and never stored. Afterwards the gateway authenticates with its own key and
certificate (mTLS), pinned to the CA registration returned. Exit 0 registered, 1 failed.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys

from gateway import identity
from gateway.auth import ReplayCache
from gateway.commands._common import (
    add_config_argument,
    add_format_argument,
    forbid_core_dumps,
    load_or_report,
    passphrase,
    print_json,
    state_dir,
)
from gateway.errors import GatewayError
from gateway.service import proxy_settings
from gateway.statefile import StateDirInUseError, hold_run_lock

PASSWORD_ENV = "GATEWAY_REGISTER_PASSWORD"  # noqa: S105 - the variable name, not a password


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``register`` verb."""
    parser = subparsers.add_parser(
        "register", help="register this gateway with EmpowerID (once, with a Person's credentials)"
    )
    add_config_argument(parser)
    add_format_argument(parser)
    parser.add_argument("--person", required=True, help="EmpowerID Person (login name)")
    parser.add_argument(
        "--force", action="store_true", help="replace an existing registration (re-registration)"
    )
    parser.set_defaults(handler=run)


def _password() -> str | None:
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env:
        return from_env
    if not sys.stdin.isatty():
        print(f"no terminal to ask for the password; set {PASSWORD_ENV}", file=sys.stderr)
        return None
    return getpass.getpass("EmpowerID password: ")


def run(args: argparse.Namespace) -> int:
    """Register and print what was stored."""
    forbid_core_dumps()  # before the password exists in this process
    loaded = load_or_report(args)
    if loaded is None:
        return 1
    config = loaded.config
    try:
        # A running gateway holds its state directory; a registration, above all a forced
        # one, would replace the key and certificate under it. Held until this process ends.
        hold_run_lock(state_dir(loaded))
    except StateDirInUseError as exc:
        print(f"registration refused: {exc}; stop it first", file=sys.stderr)
        return 1
    password = _password()
    if not password:
        return 1
    settings = identity.RegistrationSettings(
        base_url=config.empowerid.url,
        state_dir=state_dir(loaded),
        gateway_id=config.gateway.id,
        # Optional (docs/register.md): without it the system trust store authenticates this one
        # call, and the CA the control plane returns is pinned for every later one.
        ca_file=(
            loaded.resolve_path(config.empowerid.ca_file) if config.empowerid.ca_file else None
        ),
        force=args.force,
        proxy=proxy_settings(loaded),
    )
    try:
        outcome = asyncio.run(
            identity.register(
                settings, username=args.person, password=password, passphrase=passphrase(loaded)
            )
        )
    except GatewayError as exc:
        code = getattr(exc, "code", "registration_failed")
        print(f"registration failed ({code}): {exc}", file=sys.stderr)
        return 1
    finally:
        password = ""
    # A fresh replay cache: the first start then accepts requests at once instead of refusing
    # everything signed before start + skew, as it must after an unclean stop.
    ReplayCache.initialise(settings.state_dir)
    if args.format == "json":
        print_json(outcome.as_dict())
    else:
        print(
            f"registered {outcome.gateway_id}: certificate valid until "
            f"{outcome.not_after.isoformat()}, renewal from {outcome.renew_at.isoformat()}; "
            f"state in {outcome.state_dir}"
        )
    return 0
