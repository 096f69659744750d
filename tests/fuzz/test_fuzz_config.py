"""Configuration documents under structured mutation (catalogue F 104-111).

Starting from a valid gateway.yaml, each example applies a few tree edits - delete a key, add an
unknown one, replace a value with one of another type or an out-of-range one, duplicate a target,
widen an allow-list - and loads the result. Invariants:

* the loader raises nothing but ``ConfigError``, which lists at least one located problem;
* whatever loads is accepted by the published JSON Schema too (the schema never claims a file is
  invalid that the gateway runs, so editors and CI checks cannot disagree with the gateway);
* whatever loads has only path patterns that parse, hosts that are names or addresses, and
  ports in range: nothing half-checked reaches the policy or the dial step;
* every load finishes quickly.

tests/unit/config/test_fuzz.py covers bytes and YAML-shaped noise; this starts from the document's
structure, which is where a reviewer's typo or an attacker's edit lands.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from hypothesis import event, given, settings
from hypothesis import strategies as st

from gateway.config import load
from gateway.config.patterns import PathPattern
from gateway.errors import ConfigError, Problem

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "schemas" / "gateway.schema.json").read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

BASE: dict[str, Any] = {
    "version": 1,
    "gateway": {"id": "agent-1", "state_dir": "state"},
    "empowerid": {"url": "https://tenant.empowerid.example"},
    "relay": {"connections": 2},
    "policy": {"directories": ["policies"], "mode": "enforce"},
    "limits": {"max_concurrent_requests": 100, "request_timeout_seconds": 30},
    "logging": {"level": "info", "format": "json"},
    "targets": {
        "erp": {
            "scheme": "https",
            "host": "erp.corp.local",
            "port": 8443,
            "allowed_cidrs": ["10.1.2.0/24"],
            "operations": [
                {"name": "read-orders", "methods": ["GET", "POST"], "paths": ["/api/*"]},
                {"name": "events", "methods": ["GET"], "paths": ["/events/**"], "websocket": True},
            ],
        },
        "directory": {
            "scheme": "tcp",
            "host": "dc01.corp.local",
            "port": 636,
            "allowed_cidrs": ["10.1.3.10/32"],
        },
    },
}

ODD_VALUES: st.SearchStrategy[Any] = st.sampled_from(
    [
        None,
        True,
        0,
        -1,
        65536,
        2**63,
        1.5,
        "",
        "*",
        "*.corp",
        "/api/../admin",
        "/api/%2F",
        "get",
        "TRACE",
        "0.0.0.0/0",
        "169.254.169.254/32",
        "erp.corp.local.",
        "user@host",
        "x" * 300,
        [],
        {},
        ["GET", "GET"],
        {"alow": []},
        "${ENV}",
        "off",
    ]
)
# Plausible values of the right shapes, so that many edited files still load and the "what loads
# is fully checked" half of the property is exercised, not only the refusals.
PLAUSIBLE_VALUES = st.sampled_from(
    [
        *(443, 8443, 5, True, False, "GET", ["GET"], ["GET", "HEAD"], "/x/*", ["/api/**"]),
        *("http", "tcp", "10.0.0.0/8", ["10.1.2.0/24"], "erp2.corp.local", "json", "monitor"),
        *("opa", "debug"),
    ]
)
UNKNOWN_KEYS = st.sampled_from(["alow", "verfiy_tls", "extra", "Host", "paths ", "__proto__"])


def _containers(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of every dict and list in the document (the places an edit can land)."""
    found = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, dict | list):
                found.extend(_containers(value, (*path, key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            if isinstance(value, dict | list):
                found.extend(_containers(value, (*path, index)))
    return found


def _at(document: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        document = document[part]
    return document


@st.composite
def mutated_documents(draw: st.DrawFn) -> dict[str, Any]:
    """The base document with one or two tree edits."""
    document = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 2))):
        node = _at(document, draw(st.sampled_from(_containers(document))))
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        edit = draw(
            st.sampled_from(["delete", "add", "replace", "replace", "replace", "duplicate"])
        )
        if edit == "add" and isinstance(node, dict):
            node[draw(UNKNOWN_KEYS)] = copy.deepcopy(draw(ODD_VALUES))
        elif edit == "add":
            node.append(copy.deepcopy(draw(ODD_VALUES)))
        elif not keys:
            continue
        elif edit == "delete":
            del node[draw(st.sampled_from(keys))]
        elif edit == "replace":
            # Copied: the sampled lists and dicts are shared between examples and edited later.
            value = draw(st.one_of(ODD_VALUES, PLAUSIBLE_VALUES, PLAUSIBLE_VALUES))
            node[draw(st.sampled_from(keys))] = copy.deepcopy(value)
        else:
            key = draw(st.sampled_from(keys))
            if isinstance(node, dict):
                node[f"{key}-2" if isinstance(key, str) else key] = copy.deepcopy(node[key])
            else:
                node.append(copy.deepcopy(node[key]))
    return document


@settings(max_examples=200)
@given(mutated_documents())
def test_mutated_documents_load_fully_checked_or_not_at_all(document: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "gateway.yaml"
        (Path(directory) / "policies").mkdir()
        path.write_text(yaml.safe_dump(document), encoding="utf-8")
        problems: list[Problem] | None = None
        try:
            loaded = load(path, env={}, check_host=False)
        except ConfigError as error:
            problems = error.problems
    if problems is not None:
        event("refused")
        assert problems
        assert all(problem.code for problem in problems)
        return
    event("loaded")
    errors = sorted(VALIDATOR.iter_errors(document), key=str)
    assert not errors, f"the gateway runs a file its schema refuses: {errors[0].message}"
    for target in loaded.config.targets.values():
        assert 1 <= target.effective_port <= 65535
        assert target.host
        assert not target.host.endswith(".")
        assert "@" not in target.host
        for operation in target.operations:
            for text in operation.paths:
                PathPattern.parse(text)


def test_the_unedited_document_loads() -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "gateway.yaml"
        (Path(directory) / "policies").mkdir()
        path.write_text(yaml.safe_dump(BASE), encoding="utf-8")
        assert set(load(path, env={}, check_host=False).config.targets) == {"erp", "directory"}
