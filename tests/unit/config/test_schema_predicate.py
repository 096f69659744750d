"""The schema check's predicate agrees with jsonschema on every document (issue 13).

A configuration that loads is checked by :mod:`gateway.config.schema_predicate` alone, so the
predicate must accept exactly what jsonschema (configured as the check configures it: strict
integers, path patterns as a format) accepts. Two differentials prove it: random schemas made of
the keywords the predicate decides, against random JSON values; and the generated gateway.yaml
schema against configurations generated from it, with a share of every level replaced by values
of the wrong kind. The shipped schema must compile, or a running gateway would import jsonschema
again.
"""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.config import schema_check, schema_predicate
from gateway.config.model import PATH_PATTERN_FORMAT, json_schema
from gateway.config.schema_predicate import DIALECT, UnsupportedSchemaError, compile_schema
from gateway.config.yamlsafe import parse
from tests.unit.config.conftest import BASE

# Tens of seconds: started first in a parallel run (tests/conftest.py).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- random schemas against random values -------------------------------------------------------

NAMES = ("a", "b", "c", "d")
PATTERNS = ("^a", "b$", "^[cd]$", "x", "^$", "^[a-z]+$")
SCALARS: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.0, 1.0, -1.0, 2.5, 1e300, 2**53, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from(["", "a", "b", "ab", "x", "cd", "/api/*", "/a/**", "/a/*/", "api", "/%2F"]),
    st.text(alphabet="abcdx/*%", max_size=4),
)
VALUES: st.SearchStrategy[Any] = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from((*NAMES, "x", "ax", "")), inner, max_size=4),
    ),
    max_leaves=12,
)
TYPE_NAMES = st.sampled_from(["array", "boolean", "integer", "null", "number", "object", "string"])
NUMBER = st.one_of(st.integers(-3, 3), st.sampled_from([0.5, -1.5, 2.0, 1e300]))
COUNT = st.integers(0, 3)
DEFS = ("D0", "D1", "D2")


# The strategies below are built once and reused by every example: building and validating a
# hypothesis strategy costs far more than drawing from it, and a fresh one per example made these
# differentials the slowest tests of the suite without drawing anything different.
@functools.cache
def _leaf_keywords(*, refs: bool = True) -> st.SearchStrategy[dict[str, Any]]:
    # Definitions refer to nothing: a definition that refers to itself never ends, for both.
    reference = st.sampled_from([f"#/$defs/{name}" for name in DEFS])
    keyword = st.one_of(
        st.tuples(
            st.just("type"), st.one_of(TYPE_NAMES, st.lists(TYPE_NAMES, min_size=1, max_size=3))
        ),
        st.tuples(st.just("enum"), st.lists(VALUES, min_size=1, max_size=4)),
        st.tuples(st.just("const"), VALUES),
        st.tuples(
            st.sampled_from(["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"]),
            NUMBER,
        ),
        st.tuples(
            st.sampled_from(
                [
                    "minLength",
                    "maxLength",
                    "minItems",
                    "maxItems",
                    "minProperties",
                    "maxProperties",
                ]
            ),
            COUNT,
        ),
        st.tuples(st.just("pattern"), st.sampled_from(PATTERNS)),
        st.tuples(st.just("format"), st.sampled_from([PATH_PATTERN_FORMAT, "email", "date"])),
        st.tuples(st.just("uniqueItems"), st.booleans()),
        st.tuples(st.just("required"), st.lists(st.sampled_from(NAMES), unique=True, max_size=3)),
        st.tuples(st.sampled_from(["title", "description"]), st.text(max_size=3)),
        st.tuples(st.just("default"), VALUES),
    )
    if refs:
        keyword = st.one_of(keyword, st.tuples(st.just("$ref"), reference))
    return st.lists(keyword, max_size=4).map(dict)


@functools.cache
def _schemas() -> st.SearchStrategy[Any]:
    leaf = st.one_of(st.booleans(), _leaf_keywords())

    def nest(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        container = st.one_of(
            st.tuples(
                st.just("properties"), st.dictionaries(st.sampled_from(NAMES), inner, max_size=3)
            ),
            st.tuples(
                st.just("patternProperties"),
                st.dictionaries(st.sampled_from(PATTERNS), inner, max_size=2),
            ),
            st.tuples(st.just("additionalProperties"), inner),
            st.tuples(st.just("items"), inner),
            st.tuples(st.just("anyOf"), st.lists(inner, min_size=1, max_size=3)),
        )
        return st.tuples(_leaf_keywords(), st.lists(container, max_size=3)).map(
            lambda parts: {**parts[0], **dict(parts[1])}
        )

    return st.recursive(leaf, nest, max_leaves=8)


@st.composite
def schema_documents(draw: st.DrawFn) -> dict[str, Any]:
    body = draw(_schemas())
    root: dict[str, Any] = body if isinstance(body, dict) else {"anyOf": [body]}
    defs = {name: draw(st.one_of(st.booleans(), _leaf_keywords(refs=False))) for name in DEFS}
    return {"$schema": DIALECT, "$defs": defs, **root}


@SETTINGS
@given(schema_documents(), st.lists(VALUES, min_size=1, max_size=6))
def test_random_schemas_decide_as_jsonschema_does(
    schema: dict[str, Any], instances: list[Any]
) -> None:
    reference = schema_check.reference_validator(schema)
    decide = schema_check.compile_predicate(schema)
    for instance in instances:
        expected = reference.is_valid(instance)
        event(f"valid={expected}")
        assert decide(instance) == expected, (schema, instance)


@pytest.mark.parametrize(
    "schema",
    [
        {"not": {}},
        {"oneOf": [{}]},
        {"allOf": [{}]},
        {"$ref": "other.json"},
        {"$ref": "#/properties/a"},
        {"$dynamicRef": "#x"},
        {"prefixItems": [{}], "items": {}},
        {"properties": {"a": {"$id": "https://example.invalid/a"}}},
        {"type": "decimal"},
        {"if": {}, "then": {}},
        {"propertyNames": {}},
    ],
)
def test_anything_else_is_left_to_jsonschema(schema: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedSchemaError):
        compile_schema({"$schema": DIALECT, **schema})


def test_another_draft_is_left_to_jsonschema() -> None:
    with pytest.raises(UnsupportedSchemaError):
        compile_schema({"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"})


def test_the_shipped_schema_is_decided_without_jsonschema() -> None:
    assert schema_check.predicate() is not None


# --- the generated schema against configurations made from it ----------------------------------

SCHEMA = json_schema()
DEFINITIONS: dict[str, Any] = SCHEMA["$defs"]
PATH_PATTERNS = ("/api/*", "/a/**", "/", "/api/orders/", "/*")
BAD_PATH_PATTERNS = ("/a//b", "/%2F", "api", "/a/**/b", "")
# Values of the wrong kind, or at an edge, for any place in the document.
# sampled_from hands out the very objects in its list: the containers among them are copied at
# each draw, or an edit of one document would change the next draws (and once a container held
# itself, walking the document never ended).
ODD: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(
        [None, True, False, 0, -1, 1.0, 8443.0, 65536, 2**63, "", "x" * 300, [], {}, [1, 1]]
    ).map(copy.deepcopy),
    VALUES,
)


def _resolve(schema: Any) -> Any:
    while isinstance(schema, dict) and "$ref" in schema:
        schema = DEFINITIONS[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _rarely(draw: st.DrawFn) -> bool:
    """One draw in twelve: one wrong value in a document hides every other difference."""
    return draw(st.integers(0, 11)) == 6  # not an end: hypothesis favours those


def _integer(draw: st.DrawFn, schema: dict[str, Any]) -> Any:
    low = schema.get("minimum", schema.get("exclusiveMinimum", -10))
    high = schema.get("maximum", schema.get("exclusiveMaximum", 10**6))
    low, high = math.floor(low), math.ceil(high)
    if _rarely(draw):
        edge = draw(st.sampled_from([low - 1, low, low + 1, high - 1, high, high + 1]))
        return float(edge) if draw(st.booleans()) else edge
    return draw(st.integers(low, high))


def _string(draw: st.DrawFn, schema: dict[str, Any]) -> Any:
    if "enum" in schema:
        return draw(st.sampled_from(schema["enum"]))
    if schema.get("format") == PATH_PATTERN_FORMAT:
        return draw(st.sampled_from(BAD_PATH_PATTERNS if _rarely(draw) else PATH_PATTERNS))
    if "pattern" in schema and not _rarely(draw):
        return draw(_matching(schema["pattern"], shorter_than=300))
    return draw(_text(schema.get("minLength", 0), schema.get("maxLength", 20) + 1))


@functools.cache
def _matching(pattern: str, *, shorter_than: int | None = None) -> st.SearchStrategy[str]:
    strings = st.from_regex(pattern, fullmatch=True)
    return strings if shorter_than is None else strings.filter(lambda s: len(s) < shorter_than)


@functools.cache
def _text(least: int, most: int) -> st.SearchStrategy[str]:
    return st.text(min_size=least, max_size=most)


# A document strategy per place in the schema and depth, built once (see _leaf_keywords). Each
# entry keeps its schema alive, so no other object can take over its id.
_DOCUMENTS: dict[tuple[int, int], tuple[Any, st.SearchStrategy[Any]]] = {}
_ANY_SCHEMA: dict[str, Any] = {}


def _documents(schema: Any, depth: int) -> st.SearchStrategy[Any]:
    key = (id(schema), depth)
    if key not in _DOCUMENTS:
        _DOCUMENTS[key] = (schema, documents(schema, depth))
    return _DOCUMENTS[key][1]


@st.composite
def documents(draw: st.DrawFn, schema: Any, depth: int = 0) -> Any:
    """A value for ``schema``: mostly what it describes, sometimes a value at or over an edge."""
    schema = _resolve(schema)
    if not isinstance(schema, dict):
        return draw(VALUES)
    if "anyOf" in schema:
        return draw(_documents(draw(st.sampled_from(schema["anyOf"])), depth))
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if kind == "object":
        result: dict[str, Any] = {}
        properties = schema.get("properties", {})
        chosen = [n for n in properties if n in schema.get("required", []) or draw(st.booleans())]
        if "maxProperties" in schema and not _rarely(draw):
            # A secret reference: exactly one of its keys.
            chosen = [draw(st.sampled_from(sorted(properties)))] if properties else []
        for name in chosen:
            if depth < 20:
                result[name] = draw(_documents(properties[name], depth + 1))
        for pattern, sub in schema.get("patternProperties", {}).items():
            for _ in range(draw(st.integers(0 if depth else 1, 2))):
                bad = _rarely(draw)
                key = "Bad Name" if bad else draw(_matching(pattern))
                result[key] = draw(_documents(sub, depth + 1))
        if _rarely(draw):
            result[draw(st.sampled_from(["unknown", "hosts", "Version"]))] = draw(VALUES)
        return result
    if kind == "array":
        least = 0 if _rarely(draw) else schema.get("minItems", 0)
        unique = schema.get("uniqueItems", False) and not _rarely(draw)
        items = draw(
            st.lists(
                _documents(schema.get("items", _ANY_SCHEMA), depth + 1),
                min_size=least,
                max_size=3,
                unique_by=repr if unique else None,
            )
        )
        if items and _rarely(draw):
            items.append(copy.deepcopy(items[0]))
        return items
    if kind == "string":
        return _string(draw, schema)
    if kind == "integer":
        return _integer(draw, schema)
    if kind == "number":
        if draw(st.booleans()):
            return _integer(draw, schema)
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        high = schema.get("maximum", schema.get("exclusiveMaximum", 4000))
        return draw(st.floats(low, high, exclude_min=not _rarely(draw)))
    if kind == "boolean":
        return draw(st.booleans())
    return draw(VALUES)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(documents(SCHEMA), st.data())
def test_generated_configurations_decide_as_jsonschema_does(
    document: Any, data: st.DataObject
) -> None:
    _mutate(document, data, data.draw(st.integers(0, 1)))
    expected = schema_check.validator().is_valid(document)
    event(f"valid={expected}")
    assert schema_check.predicate()(document) == expected  # type: ignore[misc]


def _valid_examples() -> list[Any]:
    texts = [BASE, (ROOT / "gateway.yaml.example").read_text(encoding="utf-8")]
    return [yaml.safe_load(text) for text in texts]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


@SETTINGS
@given(st.sampled_from(_valid_examples()), st.data())
def test_mutated_examples_decide_as_jsonschema_does(example: Any, data: st.DataObject) -> None:
    document = copy.deepcopy(example)
    _mutate(document, data, data.draw(st.integers(1, 3)))
    expected = schema_check.validator().is_valid(document)
    event(f"valid={expected}")
    assert schema_check.predicate()(document) == expected  # type: ignore[misc]


def _mutate(document: Any, data: st.DataObject, count: int) -> None:
    """``count`` edits at random places: a value of another kind, a deleted or added key, an
    integer written as a float, a list item repeated."""
    for _ in range(count):
        path = data.draw(st.sampled_from(_paths(document)))
        if not path:
            continue
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        edit = data.draw(st.sampled_from(["replace", "delete", "float", "duplicate", "add"]))
        last = path[-1]
        if edit == "replace":
            parent[last] = data.draw(ODD)
        elif edit == "delete":
            del parent[last]
        elif edit == "float" and isinstance(parent[last], int):
            parent[last] = float(parent[last])
        elif edit == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[last]))
        elif edit == "add" and isinstance(parent[last], dict):
            parent[last][data.draw(st.sampled_from(["extra", "Bad Name", "id"]))] = data.draw(ODD)


def test_the_examples_are_valid_for_both() -> None:
    for example in _valid_examples():
        assert schema_check.validator().is_valid(example)
        assert schema_check.predicate()(example)  # type: ignore[misc]


def test_an_invalid_document_is_still_explained_by_jsonschema() -> None:
    doc, problems = parse(BASE.replace("port: 8443", "port: 8443.0"), "gateway.yaml")
    assert doc is not None
    assert not problems
    found = schema_check.check(doc)
    assert [(p.code, p.path) for p in found] == [("wrong_type", "targets.erp.port")]
    assert schema_predicate  # the module the check decides with
