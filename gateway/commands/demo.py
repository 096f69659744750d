"""``gateway demo``: watch the whole product work on this machine (no Azure, no EmpowerID).

The implementation lives in ``gateway.devkit.demo`` and is imported only when this verb runs.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` verb."""
    parser = subparsers.add_parser(
        "demo", help="run relay, control plane, targets and a gateway locally and exercise them"
    )
    parser.add_argument("--keep", action="store_true", help="keep the demo's working directory")
    parser.add_argument(
        "--signing-alg",
        choices=("ed25519", "ecdsa-p256-sha256", "rsa-pss-sha512"),
        default="ed25519",
        help="algorithm EmpowerID signs the requests with (RFC 9421; default ed25519; "
        "rsa-pss-sha512 is what a key held in Azure Key Vault or Managed HSM signs with)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the scripted demo."""
    demo = importlib.import_module("gateway.devkit.demo")
    code: int = asyncio.run(demo.run_demo(keep=args.keep, signing_alg=args.signing_alg))
    return code
