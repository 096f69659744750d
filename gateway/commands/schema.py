"""``gateway schema``: print the JSON Schema of gateway.yaml.

The output is byte for byte the committed ``schemas/gateway.schema.json``; a test keeps it so.
"""

from __future__ import annotations

import argparse
import json

from gateway.config import json_schema


def render() -> str:
    """The schema as it is committed: two-space indented JSON with a final newline."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``schema`` verb."""
    parser = subparsers.add_parser("schema", help="print the JSON Schema of gateway.yaml")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the schema."""
    print(render(), end="")
    return 0
