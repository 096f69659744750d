"""``gateway verify-config``: check the detached signature of gateway.yaml and its policy files.

For CI and for operators before a rollout. The signature must verify with a key listed in
``config_signature.public_keys`` (or given with ``--public-key``) and cover exactly the
configuration file and every policy file, unchanged. No anti-rollback state is consulted: that is
the running gateway's job. Exit 0 when valid, 1 when not, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gateway import config as gwconfig
from gateway.commands._common import add_config_argument, add_format_argument
from gateway.errors import ConfigError
from gateway.gitops.signing import signature_path, verify_signature


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``verify-config`` verb."""
    parser = subparsers.add_parser(
        "verify-config", help="check the signature over the configuration and its policy files"
    )
    add_config_argument(parser)
    parser.add_argument(
        "--public-key",
        action="append",
        default=[],
        metavar="PEM",
        help="also trust this Ed25519 public key (repeatable)",
    )
    add_format_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Verify and report."""
    path = args.config or gwconfig.default_config_path()
    try:
        loaded = gwconfig.load(path, env={}, check_host=False)
        info = verify_signature(loaded, extra_keys=[Path(p) for p in args.public_key])
    except ConfigError as exc:
        if args.format == "json":
            print(json.dumps({"valid": False, "problems": [p.as_dict() for p in exc.problems]}))
        for problem in exc.problems:
            print(problem.render(), file=sys.stderr)
        return 1
    if args.format == "json":
        print(
            json.dumps(
                {
                    "valid": True,
                    "signature": str(signature_path(loaded)),
                    "epoch": info.epoch,
                    "key_id": info.key_id,
                    "issued_at": info.issued_at,
                    "digest": info.digest,
                    "files": [{"name": f.name, "sha256": f.sha256} for f in info.files],
                },
                indent=2,
            )
        )
    else:
        print(
            f"{path}: signature valid (epoch {info.epoch}, key {info.key_id}, "
            f"{len(info.files)} files)"
        )
    return 0
