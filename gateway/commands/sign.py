"""``gateway sign``: sign gateway.yaml and its policy files for release; make a signing key.

``gateway sign -c FILE --key KEY --epoch N`` validates the configuration and its policies, then
writes the detached signature (default ``FILE.signatures.json``). ``gateway sign --generate-key
KEY`` writes a new Ed25519 private key (mode 0600) and ``KEY.pub`` for
``config_signature.public_keys``. ``--format json`` prints what was written as one object. Exit 0
on success, 1 on any problem, 2 on usage errors.

A passphrase for the private key is read from the environment variable named by
``--passphrase-env``, never from the command line (process lists are world-readable).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gateway import config as gwconfig
from gateway.commands._common import add_config_argument, add_format_argument, print_json
from gateway.errors import ConfigError
from gateway.gitops.signing import (
    MAX_EPOCH,
    generate_key,
    key_id,
    load_private_key,
    load_public_key,
    sign_config,
    signature_path,
)
from gateway.policy.loader import verify_policy


def _epoch(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= MAX_EPOCH:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_EPOCH}")
    return value


USAGE = """\
gateway sign [-c FILE] --key KEY --epoch N [-o FILE] [--passphrase-env NAME] [--format json]
       gateway sign --generate-key KEY [--passphrase-env NAME] [--format json]"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``sign`` verb."""
    parser = subparsers.add_parser(
        "sign",
        help="sign the configuration and its policy files (Ed25519), or generate a signing key",
        usage=USAGE,
        description="Sign gateway.yaml and its policy files for release (--key and --epoch are "
        "both required), or write a new signing key pair (--generate-key).",
    )
    add_config_argument(parser)
    add_format_argument(parser)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument(
        "--key", metavar="KEY", help="PEM Ed25519 private key to sign with (needs --epoch)"
    )
    action.add_argument(
        "--generate-key", metavar="KEY", help="write a new private key to KEY and KEY.pub"
    )
    parser.add_argument(
        "--epoch",
        type=_epoch,
        metavar="N",
        help="required with --key: release number, higher than the one the gateways run (e.g. "
        "the commit time: git log -1 --format=%%ct)",
    )
    parser.add_argument(
        "-o", "--output", metavar="FILE", help="signature file (default: the configured one)"
    )
    parser.add_argument(
        "--passphrase-env", metavar="NAME", help="environment variable holding the key passphrase"
    )
    parser.set_defaults(handler=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    """Generate a key, or sign."""
    passphrase = None
    if args.passphrase_env:
        value = os.environ.get(args.passphrase_env)
        if not value:
            print(f"environment variable {args.passphrase_env} is not set", file=sys.stderr)
            return 1
        passphrase = value.encode("utf-8")
    try:
        if args.generate_key:
            public, kid = generate_key(Path(args.generate_key), passphrase)
            if args.format == "json":
                print_json(
                    {"private_key": args.generate_key, "public_key": str(public), "key_id": kid}
                )
            else:
                print(f"wrote {args.generate_key} (keep it secret) and {public} (key id {kid})")
            return 0
        if args.epoch is None:
            args.parser.print_usage(sys.stderr)
            print("gateway sign: error: --epoch N is required with --key", file=sys.stderr)
            return 2
        path = args.config or gwconfig.default_config_path()
        # The file is signed as written: environment overrides play no part.
        loaded = gwconfig.load(path, env={}, check_host=False)
        # The same modules the gateway will load, proven to decide as `gateway run` proves it.
        verify_policy(loaded)
        key = load_private_key(Path(args.key), passphrase)
        kid = key_id(key.public_key())
        trusted = {
            key_id(load_public_key(loaded.resolve_path(p)))
            for p in loaded.config.config_signature.public_keys
        }
        document = sign_config(loaded, key, args.epoch)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem.render(), file=sys.stderr)
        return 1
    if not trusted:
        print(
            "warning: config_signature.public_keys is empty; gateways cannot verify this",
            file=sys.stderr,
        )
    elif kid not in trusted:
        print(
            f"{path}: key {kid} is not in config_signature.public_keys; gateways would refuse "
            "this signature",
            file=sys.stderr,
        )
        return 1
    output = Path(args.output) if args.output else signature_path(loaded)
    output.write_bytes(document)
    if args.format == "json":
        print_json(
            {"config": str(path), "epoch": args.epoch, "key_id": kid, "signature": str(output)}
        )
    else:
        print(
            f"signed {path} and its policy files at epoch {args.epoch} with key {kid} -> {output}"
        )
    return 0
