"""``gateway dev ...``: local development tools (relay emulator, control-plane simulator, sender).

The tools live in ``gateway.devkit``; they are imported here only when a ``dev`` verb is chosen, so
the production command path never loads them. Each tool module in ``DEV_TOOLS`` exposes
``register(subparsers)`` exactly like the top-level verbs.
"""

from __future__ import annotations

import argparse
import importlib

# Modules under gateway.devkit that provide a `gateway dev NAME` verb.
DEV_TOOLS: tuple[str, ...] = ("controlplane", "relay_emulator")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``dev`` group and its tools."""
    parser = subparsers.add_parser("dev", help="local development tools (never for production)")
    tools = parser.add_subparsers(dest="dev_tool", metavar="TOOL", required=True)
    for name in DEV_TOOLS:
        importlib.import_module(f"gateway.devkit.{name}").register(tools)
