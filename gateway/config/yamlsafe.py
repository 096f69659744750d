"""A strict YAML reader for gateway.yaml.

``yaml.safe_load`` is close to what we want but too forgiving for a security configuration:

* duplicate keys silently keep the last value;
* YAML 1.1 scalars turn ``off``/``no``/``on`` into booleans, ``0443`` into the octal number 291
  and ``1:30`` into 90 (the "Norway problem");
* aliases can expand a small file into gigabytes (the "billion laughs" attack);
* keys may be numbers, booleans, null or even sequences.

This module composes the node graph with PyYAML (no implicit typing at all) and builds the Python
value itself: plain scalars are typed by the YAML 1.2 core schema (YAML 1.2.2 section 10.3.2),
restricted further so that only canonical decimal integers are numbers; duplicate and non-string
keys, merge keys, explicit tags, recursive aliases and documents that expand past a fixed number of
values are errors. It also records where every value came from, so later stages can report
``FILE:LINE:COL``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from gateway.errors import Problem

# A real gateway.yaml is a few kB; 1 MiB leaves room for thousands of targets.
MAX_FILE_BYTES = 1024 * 1024
# Upper bound on values produced, counting every alias expansion; stops alias bombs early.
MAX_VALUES = 100_000
MAX_DEPTH = 64

JsonPath = tuple[str | int, ...]

_STR_TAG = "tag:yaml.org,2002:str"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MAP_TAG = "tag:yaml.org,2002:map"

# YAML 1.2 core schema, narrowed: integers are canonical decimals only, so `0443`, `0x1bb`,
# `1_000` and `+5` stay strings and fail type checks instead of becoming surprising numbers.
_NULL = re.compile(r"null|Null|NULL|~|")
_TRUE = re.compile(r"true|True|TRUE")
_FALSE = re.compile(r"false|False|FALSE")
_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")


def format_path(path: JsonPath) -> str:
    """``('targets', 'erp', 'operations', 0, 'paths')`` -> ``targets.erp.operations[0].paths``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", part):
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text


@dataclass
class Located:
    """A parsed document plus the position of every key and value in its source."""

    data: Any
    file: str
    # path -> (line, column), both 1-based: where the value starts, and for mapping entries
    # where its key starts (reported for problems with the key itself, such as unknown keys).
    marks: dict[JsonPath, tuple[int, int]] = field(default_factory=dict)
    key_marks: dict[JsonPath, tuple[int, int]] = field(default_factory=dict)
    # path -> where the value came from when not from the file (e.g. an environment variable).
    sources: dict[JsonPath, str] = field(default_factory=dict)

    def position(self, path: JsonPath, *, key: bool = False) -> tuple[int, int]:
        """The closest known position for ``path``: the value (or its key) or an ancestor."""
        if key and path in self.key_marks:
            return self.key_marks[path]
        for length in range(len(path), -1, -1):
            mark = self.marks.get(path[:length]) or self.key_marks.get(path[:length])
            if mark:
                return mark
        return (1, 1)

    def problem(
        self, path: JsonPath, message: str, *, code: str, hint: str = "", key: bool = False
    ) -> Problem:
        """A :class:`Problem` located at ``path`` (or at the environment variable that set it)."""
        for length in range(len(path), 0, -1):
            source = self.sources.get(path[:length])
            if source:
                return Problem(message, code=code, path=format_path(path), file=source, hint=hint)
        line, column = self.position(path, key=key)
        return Problem(
            message,
            code=code,
            path=format_path(path),
            file=self.file,
            line=line,
            column=column,
            hint=hint,
        )


class _Composer(Reader, Scanner, Parser, Composer, BaseResolver):
    """PyYAML's reader, scanner, parser and composer with no implicit typing (BaseResolver)."""

    def __init__(self, text: str) -> None:
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        BaseResolver.__init__(self)


class _Builder:
    def __init__(self, file: str) -> None:
        self.file = file
        self.count = 0
        self.marks: dict[JsonPath, tuple[int, int]] = {}
        self.key_marks: dict[JsonPath, tuple[int, int]] = {}
        self.problems: list[Problem] = []
        self.active: set[int] = set()

    def fail(self, node: Node, path: JsonPath, code: str, message: str, hint: str = "") -> None:
        mark = node.start_mark
        self.problems.append(
            Problem(
                message,
                code=code,
                path=format_path(path),
                file=self.file,
                line=mark.line + 1,
                column=mark.column + 1,
                hint=hint,
            )
        )

    def build(self, node: Node, path: JsonPath, depth: int = 0) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise _TooBigError(node)
        if depth > MAX_DEPTH:
            self.fail(node, path, "too_deep", f"nesting deeper than {MAX_DEPTH} levels")
            return None
        if id(node) in self.active:
            self.fail(node, path, "recursive_alias", "an alias refers to the node containing it")
            return None
        self.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                self.check_tag(node, path, _SEQ_TAG)
                return [
                    self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)
                ]
            assert isinstance(node, MappingNode)
            self.check_tag(node, path, _MAP_TAG)
            return self.mapping(node, path, depth)
        finally:
            self.active.discard(id(node))

    def check_tag(self, node: Node, path: JsonPath, expected: str) -> None:
        if node.tag != expected:
            self.fail(
                node,
                path,
                "explicit_tag",
                f"YAML tag {node.tag!r} is not supported",
                "remove the tag; gateway.yaml holds plain strings, numbers, booleans, lists, maps",
            )

    def scalar(self, node: ScalarNode, path: JsonPath) -> Any:
        self.check_tag(node, path, _STR_TAG)
        text: str = node.value
        if node.style is not None:  # quoted or block scalars are always strings
            return text
        if _NULL.fullmatch(text):
            return None
        if _TRUE.fullmatch(text):
            return True
        if _FALSE.fullmatch(text):
            return False
        if _INT.fullmatch(text):
            return int(text)
        if _FLOAT.fullmatch(text):
            return float(text)
        return text

    def mapping(self, node: MappingNode, path: JsonPath, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.fail(key_node, path, "non_string_key", "a key must be a plain string")
                continue
            key = self.scalar(key_node, path)
            if key_node.style is None and key == "<<":
                self.fail(
                    key_node,
                    path,
                    "merge_key",
                    "YAML merge keys ('<<') are not supported",
                    "write the keys out; reviewers should see every permission where it applies",
                )
                continue
            if not isinstance(key, str):
                self.fail(
                    key_node,
                    path,
                    "non_string_key",
                    f"key {key_node.value!r} is not a string",
                    f'quote it: "{key_node.value}"',
                )
                continue
            child = (*path, key)
            if key in first_seen:
                self.fail(
                    key_node,
                    child,
                    "duplicate_key",
                    f"duplicate key {key!r} (first defined on line {first_seen[key]})",
                    "YAML keeps only one of them; remove or rename the other",
                )
                continue
            first_seen[key] = key_node.start_mark.line + 1
            self.key_marks[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            result[key] = self.build(value_node, child, depth + 1)
        return result


class _TooBigError(Exception):
    def __init__(self, node: Node) -> None:
        self.node = node


def _problem_at_offset(file: str, raw: bytes, offset: int, code: str, message: str) -> Problem:
    line = raw.count(b"\n", 0, offset) + 1
    column = offset - (raw.rfind(b"\n", 0, offset) + 1) + 1
    return Problem(message, code=code, file=file, line=line, column=column)


def too_large(size: int, file: str) -> Problem:
    """The problem reported for a file over :data:`MAX_FILE_BYTES`."""
    shown = f"{size / 1_000_000:.1f} MB" if size >= 1_000_000 else f"{size} bytes"
    return Problem(
        f"file is {shown}; the limit is {MAX_FILE_BYTES // 1024} KiB",
        code="file_too_large",
        file=file,
        line=1,
        column=1,
        hint="a gateway.yaml is normally a few kilobytes; is this the right file?",
    )


def decode(raw: bytes, file: str) -> tuple[str | None, list[Problem]]:
    """Check size and encoding of a configuration file's bytes; return its text or the problems."""
    if len(raw) > MAX_FILE_BYTES:
        return None, [too_large(len(raw), file)]
    if raw.startswith(b"\xef\xbb\xbf"):
        return None, [
            Problem(
                "file starts with a UTF-8 byte order mark",
                code="byte_order_mark",
                file=file,
                line=1,
                column=1,
                hint="save the file as UTF-8 without BOM",
            )
        ]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [
            _problem_at_offset(
                file, raw, exc.start, "invalid_utf8", "file is not valid UTF-8 at this position"
            )
        ]
    if not text.strip():
        return None, [
            Problem(
                "file is empty",
                code="empty_document",
                file=file,
                line=1,
                column=1,
                hint="run `gateway init` for a commented starter file",
            )
        ]
    return text, []


def _compose(text: str) -> Node | None:
    composer = _Composer(text)
    try:
        return composer.get_single_node()
    finally:
        composer.dispose()


def parse(text: str, file: str) -> tuple[Located | None, list[Problem]]:
    """Parse one YAML document strictly. Returns the located document, or the problems."""
    try:
        root = _compose(text)
    except yaml.reader.ReaderError as exc:  # raised for control characters, even before parsing
        before = text[: exc.position]
        return None, [
            Problem(
                f"character {exc.character!r} is not allowed in YAML",
                code="invalid_character",
                file=file,
                line=before.count("\n") + 1,
                column=exc.position - (before.rfind("\n") + 1) + 1,
                hint="remove control characters; use escapes inside double quotes if needed",
            )
        ]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or "YAML syntax error"
        if exc.context and "single document" in exc.context:
            message = "the file holds more than one YAML document ('---')"
        elif exc.context:
            message = f"{exc.context}: {message}"
        return None, [
            Problem(
                f"YAML syntax error: {message}",
                code="yaml_syntax",
                file=file,
                line=mark.line + 1 if mark else 1,
                column=mark.column + 1 if mark else 1,
            )
        ]
    if root is None:
        return None, [
            Problem("file holds no document", code="empty_document", file=file, line=1, column=1)
        ]
    builder = _Builder(file)
    try:
        data = builder.build(root, ())
    except _TooBigError as big:
        mark = big.node.start_mark
        return None, [
            Problem(
                f"document expands to more than {MAX_VALUES} values",
                code="alias_expansion",
                file=file,
                line=mark.line + 1,
                column=mark.column + 1,
                hint="aliases ('*name') that repeat large anchors multiply; write values out",
            )
        ]
    except RecursionError:
        return None, [Problem("document nests too deeply", code="too_deep", file=file, line=1)]
    if builder.problems:
        return None, builder.problems
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a single value ({type(data).__name__})"
        return None, [
            Problem(
                f"the top level must be a mapping of settings, not {kind}",
                code="not_a_mapping",
                file=file,
                line=root.start_mark.line + 1,
                column=root.start_mark.column + 1,
                hint="run `gateway init` for a commented starter file",
            )
        ]
    return Located(data=data, file=file, marks=builder.marks, key_marks=builder.key_marks), []


def iter_paths(value: Any, path: JsonPath = ()) -> Iterator[JsonPath]:
    """Every path inside a parsed document (used to locate environment overrides)."""
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from iter_paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from iter_paths(child, (*path, index))
