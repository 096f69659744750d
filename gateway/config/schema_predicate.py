"""Whether a document satisfies gateway.yaml's JSON Schema, decided without a JSON Schema library.

The schema check (:mod:`gateway.config.schema_check`) explains violations through jsonschema,
whose import (with referencing, rpds and attrs) cost a running gateway about 2.8 MiB for the life
of the process (issue 13), although a configuration that loads has nothing to explain. This
module only answers *whether* a document is valid, for exactly the keywords the generated schema
uses (Draft 2020-12), with the semantics of the validator the check builds: jsonschema's for each
keyword, an integer that is never a float or a boolean, and the formats the caller asserts (the
others are annotations). The check imports jsonschema only when this answers no.

A schema holding anything else (another keyword, a remote ``$ref``, another draft) is refused
by :func:`compile_schema` with :class:`UnsupportedSchemaError`; the check then asks jsonschema
for every document. ``tests/unit/config/test_schema_predicate.py`` compares the two answers over
random schemas of these keywords and over generated and mutated configurations.
"""

from __future__ import annotations

import itertools
import numbers
import operator
import re
from collections.abc import Callable, Mapping, Sequence, Sized
from typing import Any

__all__ = ["DIALECT", "Predicate", "UnsupportedSchemaError", "compile_schema"]

Predicate = Callable[[Any], bool]

DIALECT = "https://json-schema.org/draft/2020-12/schema"

# Keywords that never make a document invalid (Draft 2020-12 core and meta-data vocabularies).
_ANNOTATIONS = frozenset(
    {
        "$schema",
        "$id",
        "$comment",
        "$defs",
        "title",
        "description",
        "default",
        "examples",
        "deprecated",
        "readOnly",
        "writeOnly",
    }
)
_DEFS_PREFIX = "#/$defs/"
# Each numeric limit and when a number lies beyond it.
_BOUNDS: dict[str, Callable[[Any, Any], bool]] = {
    "minimum": operator.lt,
    "maximum": operator.gt,
    "exclusiveMinimum": operator.le,
    "exclusiveMaximum": operator.ge,
}
# Each size limit: the instance type it counts and whether it is a lower bound.
_SIZES: dict[str, tuple[type[Sized], bool]] = {
    "minLength": (str, True),
    "maxLength": (str, False),
    "minItems": (list, True),
    "maxItems": (list, False),
    "minProperties": (dict, True),
    "maxProperties": (dict, False),
}


class UnsupportedSchemaError(ValueError):
    """The schema uses something this module does not decide."""


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Number)


# The validation vocabulary's seven types (Draft 2020-12 validation section 6.1.1), as the check's
# validator reads them: booleans are not numbers, and 8443.0 is not an integer (the check's one
# deviation from the specification, see gateway/config/schema_check.py).
_TYPES: dict[str, Predicate] = {
    "array": lambda value: isinstance(value, list),
    "boolean": lambda value: isinstance(value, bool),
    "integer": lambda value: isinstance(value, int) and not isinstance(value, bool),
    "null": lambda value: value is None,
    "number": _is_number,
    "object": lambda value: isinstance(value, dict),
    "string": lambda value: isinstance(value, str),
}

# Stand-ins for True and False when values are compared: JSON's booleans are not the numbers 1
# and 0, although Python's are (validation section 4.2.2, instance equality).
_TRUE = object()
_FALSE = object()


def _unbool(value: Any) -> Any:
    if value is True:
        return _TRUE
    if value is False:
        return _FALSE
    return value


def _equal(one: Any, two: Any) -> bool:
    """JSON instance equality: 1 equals 1.0, never True; containers element by element."""
    if one is two:
        return True
    if isinstance(one, str) or isinstance(two, str):
        return bool(one == two)
    if isinstance(one, Sequence) and isinstance(two, Sequence):
        return len(one) == len(two) and all(_equal(a, b) for a, b in zip(one, two, strict=True))
    if isinstance(one, Mapping) and isinstance(two, Mapping):
        return len(one) == len(two) and all(
            key in two and _equal(value, two[key]) for key, value in one.items()
        )
    return bool(_unbool(one) == _unbool(two))


def _unique(items: list[Any]) -> bool:
    """``uniqueItems``, decided the way the check's validator decides it.

    Sorted neighbours are compared when the items can be sorted; otherwise every pair. The two
    can differ only for lists whose order ``sorted`` leaves undefined (NaN among numbers), where
    agreeing with the validator is what matters here.
    """
    try:
        ordered = sorted(_unbool(item) for item in items)
        return not any(_equal(a, b) for a, b in itertools.pairwise(ordered))
    except (NotImplementedError, TypeError):
        seen: list[Any] = []
        for item in items:
            plain = _unbool(item)
            if any(_equal(earlier, plain) for earlier in seen):
                return False
            seen.append(plain)
        return True


def _always(value: Any) -> bool:
    return True


def _never(value: Any) -> bool:
    return False


class _Compiler:
    """Turns a schema into one predicate per subschema, ``$defs`` resolved by name."""

    def __init__(self, root: Mapping[str, Any], formats: Mapping[str, Predicate]) -> None:
        self._formats = formats
        defs = root.get("$defs", {})
        if not isinstance(defs, Mapping):
            raise UnsupportedSchemaError("$defs is not an object")
        self._defs = defs
        self._compiled: dict[str, Predicate] = {}

    def reference(self, ref: Any) -> Predicate:
        if not (isinstance(ref, str) and ref.startswith(_DEFS_PREFIX)):
            raise UnsupportedSchemaError(f"$ref {ref!r}")
        name = ref[len(_DEFS_PREFIX) :]
        if name not in self._defs or "/" in name or "~" in name or "%" in name:
            raise UnsupportedSchemaError(f"$ref {ref!r}")
        if name not in self._compiled:
            # Placeholder first: a definition may refer to itself.
            self._compiled[name] = _never
            compiled = self.compile(self._defs[name])
            self._compiled[name] = compiled
        compiled_defs = self._compiled
        return lambda value: compiled_defs[name](value)

    def compile(self, schema: Any, *, root: bool = False) -> Predicate:
        if schema is True:
            return _always
        if schema is False:
            return _never
        if not isinstance(schema, Mapping):
            raise UnsupportedSchemaError(f"schema {schema!r}")
        if not root and ("$id" in schema or "$schema" in schema or "$defs" in schema):
            # A nested resource would change what its references resolve against.
            raise UnsupportedSchemaError("an embedded schema resource")
        checks = [self._keyword(keyword, value, schema) for keyword, value in schema.items()]
        active = [check for check in checks if check is not None]
        if not active:
            return _always
        if len(active) == 1:
            return active[0]
        return lambda value: all(check(value) for check in active)

    def _keyword(self, keyword: str, value: Any, schema: Mapping[str, Any]) -> Predicate | None:
        if keyword in _ANNOTATIONS:
            if keyword == "$schema" and value != DIALECT:
                raise UnsupportedSchemaError(f"$schema {value!r}")
            return None
        if keyword in _BOUNDS:
            return self._bounded(keyword, value)
        if keyword in _SIZES:
            return self._sized(keyword, value)
        builder = getattr(self, "_k_" + keyword.lstrip("$"), None)
        if builder is None:
            raise UnsupportedSchemaError(f"keyword {keyword!r}")
        result: Predicate | None = builder(value, schema)
        return result

    # Each keyword: validation section 6 (and core section 10 for the applicators), applied only
    # to the instance types it speaks of, as the specification says.

    def _k_ref(self, ref: Any, schema: Mapping[str, Any]) -> Predicate:
        return self.reference(ref)

    def _k_type(self, names: Any, schema: Mapping[str, Any]) -> Predicate:
        listed = [names] if isinstance(names, str) else names
        if not (isinstance(listed, list) and listed and all(n in _TYPES for n in listed)):
            raise UnsupportedSchemaError(f"type {names!r}")
        checks = [_TYPES[name] for name in listed]
        return lambda value: any(check(value) for check in checks)

    def _k_enum(self, options: Any, schema: Mapping[str, Any]) -> Predicate:
        if not isinstance(options, list):
            raise UnsupportedSchemaError("enum is not a list")
        return lambda value: any(_equal(option, value) for option in options)

    def _k_const(self, expected: Any, schema: Mapping[str, Any]) -> Predicate:
        return lambda value: _equal(value, expected)

    def _k_format(self, name: Any, schema: Mapping[str, Any]) -> Predicate | None:
        # Only the formats the caller asserts; any other is an annotation (validation section
        # 7.2.1, the format-annotation vocabulary).
        return self._formats.get(name) if isinstance(name, str) else None

    def _bounded(self, keyword: str, limit: Any) -> Predicate:
        # A number is invalid when it lies beyond the limit (validation section 6.2).
        if not _is_number(limit):
            raise UnsupportedSchemaError(f"{keyword} {limit!r}")
        beyond = _BOUNDS[keyword]
        return lambda value: not _is_number(value) or not beyond(value, limit)

    def _sized(self, keyword: str, limit: Any) -> Predicate:
        # Characters are code points (validation section 6.3): Python's len of a str.
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise UnsupportedSchemaError(f"{keyword} {limit!r}")
        kind, at_least = _SIZES[keyword]
        if at_least:
            return lambda value: not isinstance(value, kind) or len(value) >= limit
        return lambda value: not isinstance(value, kind) or len(value) <= limit

    def _k_pattern(self, pattern: Any, schema: Mapping[str, Any]) -> Predicate:
        if not isinstance(pattern, str):
            raise UnsupportedSchemaError(f"pattern {pattern!r}")
        search = re.compile(pattern).search
        # Patterns are not anchored (validation section 6.3.3): a match anywhere counts.
        return lambda value: not isinstance(value, str) or search(value) is not None

    def _k_uniqueItems(self, wanted: Any, schema: Mapping[str, Any]) -> Predicate | None:  # noqa: N802
        if not isinstance(wanted, bool):
            raise UnsupportedSchemaError(f"uniqueItems {wanted!r}")
        if not wanted:
            return None
        return lambda value: not isinstance(value, list) or _unique(value)

    def _k_items(self, items: Any, schema: Mapping[str, Any]) -> Predicate:
        if "prefixItems" in schema:
            raise UnsupportedSchemaError("prefixItems")
        each = self.compile(items)
        return lambda value: not isinstance(value, list) or all(each(item) for item in value)

    def _k_required(self, names: Any, schema: Mapping[str, Any]) -> Predicate:
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise UnsupportedSchemaError(f"required {names!r}")
        wanted = tuple(names)
        return lambda value: not isinstance(value, dict) or all(n in value for n in wanted)

    def _k_properties(self, properties: Any, schema: Mapping[str, Any]) -> Predicate:
        if not isinstance(properties, Mapping):
            raise UnsupportedSchemaError("properties is not an object")
        checks = tuple((name, self.compile(sub)) for name, sub in properties.items())

        def check(value: Any) -> bool:
            if not isinstance(value, dict):
                return True
            return all(check(value[name]) for name, check in checks if name in value)

        return check

    def _k_patternProperties(self, patterns: Any, schema: Mapping[str, Any]) -> Predicate:  # noqa: N802
        if not isinstance(patterns, Mapping):
            raise UnsupportedSchemaError("patternProperties is not an object")
        checks = tuple((re.compile(p).search, self.compile(sub)) for p, sub in patterns.items())

        def check(value: Any) -> bool:
            if not isinstance(value, dict):
                return True
            return all(
                check(item)
                for search, check in checks
                for key, item in value.items()
                if search(key)
            )

        return check

    def _k_additionalProperties(self, rest: Any, schema: Mapping[str, Any]) -> Predicate:  # noqa: N802
        named = schema.get("properties", {})
        patterns = schema.get("patternProperties", {})
        if not isinstance(named, Mapping) or not isinstance(patterns, Mapping):
            raise UnsupportedSchemaError("properties or patternProperties is not an object")
        # A key is additional when no property names it and no property pattern matches it
        # (core section 10.3.2.3).
        known = frozenset(named)
        # One alternation of all the patterns, as the check's validator searches with.
        joined = "|".join(patterns)
        search = re.compile(joined).search if joined else None
        each = self.compile(rest)

        def check(value: Any) -> bool:
            if not isinstance(value, dict):
                return True
            return all(
                each(item)
                for key, item in value.items()
                if key not in known and not (search is not None and search(key))
            )

        return check

    def _k_anyOf(self, options: Any, schema: Mapping[str, Any]) -> Predicate:  # noqa: N802
        if not (isinstance(options, list) and options):
            raise UnsupportedSchemaError("anyOf is not a non-empty list")
        checks = tuple(self.compile(option) for option in options)
        return lambda value: any(check(value) for check in checks)


def compile_schema(
    schema: Mapping[str, Any], formats: Mapping[str, Predicate] | None = None
) -> Predicate:
    """A predicate saying whether an instance is valid against ``schema``.

    Raises UnsupportedSchemaError for a schema outside the keywords above.

    ``formats`` maps each asserted format to its check, which sees every instance (strings and
    others alike, as a jsonschema format checker does).
    """
    if schema.get("$schema") != DIALECT:
        raise UnsupportedSchemaError("not a Draft 2020-12 schema")
    return _Compiler(schema, formats or {}).compile(schema, root=True)
