"""``gateway version``: the gateway's version and those of its security-relevant libraries."""

from __future__ import annotations

import argparse
import json
import platform
from importlib.metadata import PackageNotFoundError, version

from gateway import __version__
from gateway.commands._common import add_format_argument

# Libraries whose version matters to a security reviewer (parsers, TLS, policy engine, and the
# event loop, whose own transports carry every socket and TLS session on uvloop).
_COMPONENTS = ("aiohttp", "cryptography", "pydantic", "jsonschema", "pyyaml", "regopy", "uvloop")


def _component_versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for name in _COMPONENTS:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``version`` verb."""
    parser = subparsers.add_parser("version", help="print version information")
    add_format_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the version report."""
    components = _component_versions()
    python = platform.python_version()
    if args.format == "json":
        report = {"gateway": __version__, "python": python, "components": components}
        print(json.dumps(report, indent=2))
    else:
        print(f"gateway {__version__} (Python {python})")
        for name, ver in components.items():
            print(f"  {name} {ver}")
    return 0
