"""``gateway schema``: print (or write) the JSON Schema of gateway.yaml.

The output is byte for byte the committed ``schemas/gateway.schema.json`` and the copy inside the
package; a test keeps them so. ``--output FILE`` writes it to a file, by default the
``gateway.schema.json`` that the starter configuration's ``yaml-language-server`` modeline names,
so editors check and complete keys offline.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gateway.config import json_schema

# The file name the starter gateway.yaml's modeline points at (next to the configuration).
SCHEMA_FILE = "gateway.schema.json"


def render() -> str:
    """The schema as it is committed: two-space indented JSON with a final newline."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``schema`` verb."""
    parser = subparsers.add_parser(
        "schema",
        help="print the JSON Schema of gateway.yaml (or write it for editors)",
        description="Print the JSON Schema of gateway.yaml, or write it to a file.",
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        nargs="?",
        const=SCHEMA_FILE,
        help=f"write the schema to FILE (default {SCHEMA_FILE}, the file the starter "
        "gateway.yaml's modeline names) instead of printing it",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print or write the schema."""
    if args.output is None:
        print(render(), end="")
        return 0
    try:
        Path(args.output).write_text(render(), encoding="utf-8")
    except OSError as exc:
        print(f"gateway schema: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}")
    return 0
