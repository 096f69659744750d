"""``gateway docs``: print the gateway.yaml reference in Markdown, generated from the JSON Schema.

The output is byte for byte the committed ``docs/reference.md`` (regenerate with
``gateway docs > docs/reference.md``); a test fails when the two drift, so the reference always
describes exactly what ``gateway validate`` accepts. The schema itself is generated from the typed
model (:mod:`gateway.config.model`), which keeps one source of truth for keys, types, defaults,
bounds and descriptions.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Mapping
from typing import Any

from gateway.config import json_schema

# Patterns longer than this are left to the schema file; the table stays readable.
_MAX_PATTERN = 60

_HEADER = """\
# gateway.yaml reference

Generated from [`schemas/gateway.schema.json`](../schemas/gateway.schema.json) by
`gateway docs > docs/reference.md`; do not edit by hand. [configuration.md](configuration.md)
explains how the file is read, secrets, environment overrides and targets with examples.

Every section rejects unknown keys. Optional keys are left out rather than set to `null`.
Values are never coerced: `true`/`false` for booleans, numbers without quotes.
"""


def _resolve(schema: Mapping[str, Any], node: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = node.get("$ref")
    if not isinstance(ref, str):
        return node
    name = ref.rsplit("/", 1)[-1]
    target: Mapping[str, Any] = schema["$defs"][name]
    return target


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _span(text: str) -> str:
    """A Markdown code span; a text holding a backtick needs a double-backtick fence."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _code(value: Any) -> str:
    return _span(json.dumps(value, ensure_ascii=False))


def _type(schema: Mapping[str, Any], node: Mapping[str, Any]) -> str:
    if "$ref" in node:
        target = _resolve(schema, node)
        if node["$ref"].endswith("/SecretRef"):
            return "secret reference: `{env: NAME}` or `{file: PATH}`"
        return f"section ({target.get('title', 'object')})"
    if "anyOf" in node:
        # A choice of shapes (workers: "auto" or a number): each in its own words.
        return " or ".join(
            _code(member["const"]) if "const" in member else _type(schema, member)
            for member in node["anyOf"]
        )
    if "const" in node:
        return f"{node.get('type', 'value')}, always {_code(node['const'])}"
    if "enum" in node:
        return "one of " + ", ".join(_code(value) for value in node["enum"])
    kind = node.get("type", "value")
    if kind == "array":
        items = node.get("items", {})
        if "$ref" in items:
            return f"list of {_resolve(schema, items).get('title', 'object')}"
        return f"list of {_type(schema, items)}"
    if kind == "number":
        return "number"
    return str(kind)


def _bounds(node: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    for member in node.get("anyOf", ()):
        found.extend(_bounds(member))
    low = node.get("minimum")
    low_open = node.get("exclusiveMinimum")
    high = node.get("maximum")
    if low is not None or low_open is not None or high is not None:
        left = f"> {low_open}" if low_open is not None else f">= {low}" if low is not None else ""
        right = f"<= {high}" if high is not None else ""
        found.append(", ".join(part for part in (left, right) if part))
    if node.get("minLength") == 1:
        found.append("not empty")
    elif "minLength" in node:
        found.append(f"at least {node['minLength']} characters")
    if node.get("minItems") == 1:
        found.append("at least 1 entry")
    elif "minItems" in node:
        found.append(f"at least {node['minItems']} entries")
    for key, label in (
        ("maxLength", "at most {} characters"),
        ("maxItems", "at most {} entries"),
        ("maxProperties", "at most {} entries"),
    ):
        if key in node:
            found.append(label.format(node[key]))
    if node.get("uniqueItems"):
        found.append("no duplicates")
    return found


def _rules(node: Mapping[str, Any]) -> str:
    rules = _bounds(node)
    items = node.get("items", {})
    for source in (node, items):
        pattern = source.get("pattern")
        if isinstance(pattern, str):
            rules.append(
                f"pattern {_span(pattern)}"
                if len(pattern) <= _MAX_PATTERN
                else "pattern: see schema"
            )
        if source.get("format"):
            rules.append(f"format {_span(str(source['format']))}")
    if items and items is not node:
        rules.extend(f"each {rule}" for rule in _bounds(items))
    return "; ".join(rules)


def _table(
    schema: Mapping[str, Any], prefix: str, node: Mapping[str, Any]
) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Yield the table lines of one object, and the nested objects to describe after it."""
    required = set(node.get("required", ()))
    yield "| key | type | default | rules | description |", {}
    yield "| --- | --- | --- | --- | --- |", {}
    for key, raw in node.get("properties", {}).items():
        path = f"{prefix}.{key}" if prefix else key
        default = _code(raw["default"]) if "default" in raw else ""
        if key in required:
            default = "**required**"
        described = raw.get("description") or _resolve(schema, raw).get("description", "")
        row = (
            f"| `{key}` | {_cell(_type(schema, raw))} | {_cell(default)} | "
            f"{_cell(_rules(raw))} | {_cell(described)} |"
        )
        yield row, {}
        target = _resolve(schema, raw)
        if "$ref" in raw and not raw["$ref"].endswith("/SecretRef"):
            yield "", {"path": path, "node": target}
        elif raw.get("type") == "array" and "$ref" in raw.get("items", {}):
            yield "", {"path": f"{path}[]", "node": _resolve(schema, raw["items"])}
        elif "patternProperties" in raw:
            [value] = raw["patternProperties"].values()
            yield "", {"path": f"{path}.<name>", "node": _resolve(schema, value)}


def _section(schema: Mapping[str, Any], path: str, node: Mapping[str, Any]) -> list[str]:
    lines = [f"## `{path}`", ""]
    if node.get("description"):
        lines += [" ".join(str(node["description"]).split()), ""]
    nested: list[tuple[str, Mapping[str, Any]]] = []
    for line, child in _table(schema, path, node):
        if child:
            nested.append((child["path"], child["node"]))
        else:
            lines.append(line)
    lines.append("")
    for child_path, child in nested:
        lines += _section(schema, child_path, child)
    return lines


def render(schema: Mapping[str, Any] | None = None) -> str:
    """The reference as committed in ``docs/reference.md`` (ends with one newline)."""
    document = schema if schema is not None else json_schema()
    lines = [_HEADER, "## Top level", ""]
    nested: list[tuple[str, Mapping[str, Any]]] = []
    for line, child in _table(document, "", document):
        if child:
            nested.append((child["path"], child["node"]))
        else:
            lines.append(line)
    lines.append("")
    for path, child in nested:
        lines += _section(document, path, child)
    return "\n".join(lines).rstrip("\n") + "\n"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``docs`` verb."""
    parser = subparsers.add_parser(
        "docs", help="print the gateway.yaml reference (Markdown) generated from the schema"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the reference."""
    print(render(), end="")
    return 0
