"""``gateway dev ...``: local development tools (relay emulator, control-plane simulator, sender).

The tools live in ``gateway.devkit``; they are imported only when the command line starts with
``dev`` (``gateway.cli`` passes ``with_tools``), so no other verb ever loads the devkit. Each
tool module in ``DEV_TOOLS`` exposes ``register(subparsers)`` exactly like the top-level verbs.
"""

from __future__ import annotations

import argparse
import importlib

# Modules under gateway.devkit that provide a `gateway dev NAME` verb.
DEV_TOOLS: tuple[str, ...] = ("controlplane", "relay_emulator", "send")


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], *, with_tools: bool = False
) -> dict[str, argparse.ArgumentParser]:
    """Add the ``dev`` group; its tools (and so ``gateway.devkit``) only when ``with_tools``.

    Returns the tools by name (empty without ``with_tools``).
    """
    parser = subparsers.add_parser(
        "dev",
        help="local development tools: relay emulator, control-plane simulator, sender",
        description="Local stand-ins for development and tests, never for production. "
        "docs/development.md drives them from a shell script.",
    )
    tools = parser.add_subparsers(dest="dev_tool", metavar="TOOL", required=True, title="tools")
    if with_tools:
        for name in DEV_TOOLS:
            importlib.import_module(f"gateway.devkit.{name}").register(tools)
    return dict(tools.choices)
