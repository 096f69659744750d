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
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the scripted demo."""
    demo = importlib.import_module("gateway.devkit.demo")
    code: int = asyncio.run(demo.run_demo(keep=args.keep))
    return code
