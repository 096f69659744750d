"""No module under gateway/ reaches into a private attribute of another package's object.

The rule, decided on the syntax tree of every module (``ast``), so it holds without running the
code:

* An attribute access ``x._name`` (one leading underscore, not a ``__dunder__``) is a reach into
  ``x``'s private state.
* It is allowed when ``x`` is ``self`` or ``cls`` (the object's own state), or when ``_name`` is
  a private member that the *same module* defines on one of its own classes (``def _name``, a
  class-level ``_name = ...`` / ``_name: T``, an assignment ``self._name = ...`` or
  ``cls._name = ...``, or a ``__slots__`` entry): then ``x`` is one of the module's own objects
  (``cache._insert(...)`` inside the class's own factory function). Everything else - a private
  name of a library object (``ws._writer.transport``), of an imported module
  (``argparse._SubParsersAction``), or of an object reached through an attribute
  (``self.ws._writer``: the base is ``self.ws``, not ``self``) - is a violation.
* Type annotations are exempt: under ``from __future__ import annotations`` they are never
  evaluated and touch no object (``argparse._SubParsersAction`` is the only name for the type
  ``add_subparsers()`` returns).
* ``_DOCUMENTED`` lists the few underscore names that are documented public API (``os._exit``,
  the namedtuple methods).
* ``_KNOWN`` lists the reaches that remain, each with its reason; an entry that no longer occurs
  fails the test too, so the list only shrinks.

Sound in the direction that matters: a private name is only let through when this module itself
defines it; a module that defines a private attribute of the same name as a library's would hide
a reach into that library under that one name (the test reports the names it let through for
that reason, so a reviewer can see them).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "gateway"

_DOCUMENTED = frozenset({"_exit", "_replace", "_asdict", "_fields", "_make", "_field_defaults"})

# module path (relative to gateway/) -> {(source of the access, reason)}
_KNOWN: dict[str, set[str]] = {}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _annotation_nodes(tree: ast.AST) -> set[int]:
    """ids of every node inside a type annotation."""
    inside: set[int] = set()

    def mark(node: ast.AST | None) -> None:
        if node is not None:
            inside.update(id(child) for child in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, (ast.AnnAssign, ast.arg)):
            mark(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            mark(node.returns)
    return inside


def _own_members(tree: ast.AST) -> set[str]:
    """Private member names the module defines on its own classes."""
    owned: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    owned.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    owned.add(item.target.id)
                elif isinstance(item, ast.Assign):
                    for target in item.targets:
                        if isinstance(target, ast.Name):
                            owned.add(target.id)
                            if target.id == "__slots__" and isinstance(
                                item.value, (ast.Tuple, ast.List)
                            ):
                                owned.update(
                                    element.value
                                    for element in item.value.elts
                                    if isinstance(element, ast.Constant)
                                    and isinstance(element.value, str)
                                )
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id in ("self", "cls")
                ):
                    owned.add(target.attr)
    return {name for name in owned if _private(name)}


def reaches(source: str) -> list[tuple[int, str]]:
    """The private reaches in ``source`` by the rule above: ``(line, source of the access)``."""
    tree = ast.parse(source)
    annotations = _annotation_nodes(tree)
    owned = _own_members(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not _private(node.attr):
            continue
        if id(node) in annotations or node.attr in _DOCUMENTED:
            continue
        base = node.value
        if isinstance(base, ast.Name) and base.id in ("self", "cls"):
            continue
        if node.attr in owned:
            continue
        found.append((node.lineno, ast.unparse(node)))
    return sorted(found)


def test_no_module_reaches_into_another_packages_private_state() -> None:
    problems: list[str] = []
    seen_known: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        for line, access in reaches(path.read_text(encoding="utf-8")):
            if access in _KNOWN.get(relative, set()):
                seen_known.setdefault(relative, set()).add(access)
                continue
            problems.append(f"gateway/{relative}:{line}: {access}")
    assert not problems, "private attributes of other packages' objects:\n" + "\n".join(problems)
    assert seen_known == _KNOWN, "a known reach is gone: remove it from _KNOWN"


# The lines the relay listener used to send a response in one write, stream a fragmented body
# and close lingering: the rule must catch every one of them.
OLD_LISTENER = """
class _RelaySocket:
    def __init__(self, ws):
        self.ws = ws

    async def send_frames(self, frames):
        transport = self.ws._writer.transport
        transport.write(b"".join(frames))

    async def close_lingering(self, code, linger):
        connection = self.ws._response.connection
        return connection
"""


def test_the_rule_catches_the_old_listener() -> None:
    assert [access for _, access in reaches(OLD_LISTENER)] == [
        "self.ws._writer",
        "self.ws._response",
    ]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import argparse\nargparse._SubParsersAction\n", ["argparse._SubParsersAction"]),
        ("import argparse\ndef f(s: argparse._SubParsersAction) -> None: ...\n", []),
        ("import os\nos._exit(3)\n", []),
        ("def f(ws):\n    return ws._reader\n", ["ws._reader"]),
        (
            "class C:\n    def _insert(self): ...\n\ndef make():\n    c = C()\n    c._insert()\n",
            [],
        ),
        ("class C:\n    __slots__ = ('_x',)\n\ndef f(c):\n    return c._x\n", []),
        ("class C:\n    def __init__(self):\n        self._x = 1\n\nC()._x\n", []),
        ("x.__class__\nx.__dict__\n", []),
        ("self._a._b\n", ["self._a._b"]),
    ],
)
def test_rule_cases(source: str, expected: list[str]) -> None:
    assert [access for _, access in reaches(source)] == expected
