"""docs/reference.md is generated from the JSON Schema and must not drift from it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gateway.commands import docs
from gateway.config import json_schema

ROOT = Path(__file__).resolve().parents[3]
REFERENCE = ROOT / "docs" / "reference.md"


def _keys(schema: dict[str, Any], node: dict[str, Any], prefix: str = "") -> set[str]:
    """Every documented key path of the schema (``targets.<name>.operations[].paths``)."""
    found: set[str] = set()
    for key, raw in node.get("properties", {}).items():
        path = f"{prefix}.{key}" if prefix else key
        found.add(path)
        target = raw
        suffix = ""
        if raw.get("type") == "array" and "$ref" in raw.get("items", {}):
            target, suffix = raw["items"], "[]"
        elif "patternProperties" in raw:
            [target] = raw["patternProperties"].values()
            suffix = ".<name>"
        if "$ref" in target and not target["$ref"].endswith("/SecretRef"):
            resolved = schema["$defs"][target["$ref"].rsplit("/", 1)[-1]]
            found |= _keys(schema, resolved, path + suffix)
    return found


def test_committed_reference_matches_the_schema() -> None:
    assert REFERENCE.read_text(encoding="utf-8") == docs.render(), (
        "docs/reference.md is stale: regenerate with `gateway docs > docs/reference.md`"
    )


def test_every_key_of_the_schema_is_documented_once() -> None:
    schema = json_schema()
    text = docs.render(schema)
    documented: set[str] = set()
    section = ""
    for line in text.splitlines():
        heading = re.fullmatch(r"## `(.+)`", line)
        if heading:
            section = heading.group(1)
            continue
        if line == "## Top level":
            section = ""
            continue
        row = re.match(r"\| `([a-z0-9_]+)` \|", line)
        if row:
            key = f"{section}.{row.group(1)}" if section else row.group(1)
            assert key not in documented, key
            documented.add(key)
    assert documented == _keys(schema, schema)


def test_defaults_required_and_bounds_are_rendered() -> None:
    text = docs.render()
    assert "| `connections` | integer | `2` | >= 1, <= 25 |" in text
    assert "| `url` | string | **required** |" in text
    assert "| `request_timeout_seconds` | number | `50` | > 0, <= 55 |" in text
    # A pipe inside a pattern must not split the table row.
    [endpoint] = [line for line in text.splitlines() if line.startswith("| `endpoint` |")]
    assert endpoint.count(" | ") == 4


def test_a_changed_schema_changes_the_reference() -> None:
    schema = json_schema()
    schema["$defs"]["RelaySection"]["properties"]["connections"]["default"] = 3
    assert "| `connections` | integer | `3` |" in docs.render(schema)
