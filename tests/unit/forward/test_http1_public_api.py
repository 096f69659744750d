"""The forward's HTTP/1.1 client reads answers through documented public API only.

``aiohttp``'s response parser, payload stream and protocol base class (``aiohttp.http``,
``aiohttp.streams``, ``aiohttp.base_protocol``) are internals whose constructors change between
minor versions; gateway.forward.http1 uses httptools' documented parser instead and must not
import aiohttp at all, nor hand aiohttp's internal types to its caller.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

FORWARD = Path(__file__).resolve().parents[3] / "gateway" / "forward"


def _imported(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            modules.add(node.module)
    return modules


def test_the_http1_client_does_not_import_aiohttp() -> None:
    reached = {name for name in _imported(FORWARD / "http1.py") if name.split(".")[0] == "aiohttp"}
    assert reached == set()


@pytest.mark.parametrize("module", ["aiohttp.http", "aiohttp.streams", "aiohttp.base_protocol"])
def test_no_forward_module_imports_aiohttp_internals(module: str) -> None:
    # The answer's head and body types come from http1 (Response, Body), not from aiohttp.
    users = [
        path.name
        for path in sorted(FORWARD.glob("*.py"))
        if any(name == module or name.startswith(module + ".") for name in _imported(path))
    ]
    assert users == []
