"""Decision cache: equal requests get the decision already made, in microseconds.

A decision depends on the policy, the data (both fixed for one revision) and the input fields the
policy reads. The key is exactly those fields, found by reading the policy modules
(:func:`plan_cache`): ``input.method`` makes ``method`` part of the key; a reference to the whole
input (``input[x]``, ``x := input``) makes the whole input the key. The analysis may only err
towards a larger key, which costs hit rate, never correctness.

A policy that calls a non-deterministic built-in (``time.now_ns`` for a change window,
``http.send``, ``rand.intn``, ...) decides differently for equal inputs, so it gets no cache at all.

One cache belongs to one engine, and one engine to one revision: a reload builds a new engine
with an empty cache, which is how decisions of an old allow-list can never be served. The cache is
a bounded LRU; memory is at most ``max_entries`` times the largest key (the path is bounded by
``limits.max_path_bytes``).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import orjson

if TYPE_CHECKING:
    # Named as a string in DecisionCache's base (the engine module imports this one).
    from gateway.policy.engine import Decision  # noqa: F401

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "BoundedLru",
    "CachePlan",
    "DecisionCache",
    "FieldPath",
    "plan_cache",
    "project",
    "strip_comments",
]

DEFAULT_MAX_ENTRIES = 4096

FieldPath = tuple[str, ...]
V = TypeVar("V")

_INPUT_REF = re.compile(r"\binput\b((?:\s*\.\s*[A-Za-z_][A-Za-z0-9_]*)*)")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Built-ins whose result is not a function of input and data alone (OPA built-in reference,
# "Time", "HTTP", "Randomness", "OPA runtime", "Net", and JWT verification, which reads the clock).
_NON_DETERMINISTIC = re.compile(
    r"\b(time\.now_ns|http\.send|rand\.intn|uuid\.rfc4122|opa\.runtime|net\.lookup_ip_addr"
    r"|io\.jwt\.decode_verify)\s*\("
)
_OBJECT = object()  # marks a frozen JSON object; no JSON value can equal it
# What a key holds for a field the input does not have. In the JSON key, a NUL octet, which no
# JSON text holds outside a string (orjson escapes it inside one), so it differs from every JSON
# value; in the exact key, this object itself, which no JSON value equals.
_ABSENT = orjson.Fragment(b"\x00")
# The frozen forms of true, false and null, made once.
_TRUE, _FALSE, _NULL = ("bool", True), ("bool", False), ("NoneType", None)


@dataclass(frozen=True, slots=True)
class CachePlan:
    """What the policy modules read, and whether their decisions may be cached."""

    fields: tuple[FieldPath, ...] | None
    """Input paths the policy reads (the cache key); None means the whole input document."""
    cacheable: bool = True
    reason: str = ""
    """Why the decisions cannot be cached, when they cannot."""


def plan_cache(sources: Iterable[str]) -> CachePlan:
    """Find the input fields read and any non-deterministic built-in in the Rego ``sources``."""
    paths: set[FieldPath] = set()
    whole = False
    reason = ""
    for source in sources:
        code = strip_comments(source)
        builtin = _NON_DETERMINISTIC.search(code)
        if builtin and not reason:
            reason = f"the policy calls {builtin.group(1)}"
        for match in _INPUT_REF.finditer(code):
            names = tuple(_NAME.findall(match.group(1)))
            if not names:
                whole = True
            else:
                paths.add(names)
    fields = None if whole else _minimal(paths)
    return CachePlan(fields, cacheable=not reason, reason=reason)


def strip_comments(source: str) -> str:
    """Rego source without ``#`` comments; string literals are kept intact."""
    out: list[str] = []
    i = 0
    n = len(source)
    while i < n:
        char = source[i]
        if char == "#":
            end = source.find("\n", i)
            i = n if end < 0 else end
            continue
        if char in '"`':
            end = _string_end(source, i)
            out.append(source[i:end])
            i = end
            continue
        out.append(char)
        i += 1
    return "".join(out)


def _string_end(source: str, start: int) -> int:
    quote = source[start]
    i = start + 1
    while i < len(source):
        char = source[i]
        if quote == '"' and char == "\\":
            i += 2
            continue
        if char == quote or (quote == '"' and char == "\n"):
            return i + 1
        i += 1
    return len(source)


def _minimal(paths: set[FieldPath]) -> tuple[FieldPath, ...]:
    """Drop paths another path already covers (``signature`` covers ``signature.verified``)."""
    kept = [p for p in paths if not any(q != p and p[: len(q)] == q for q in paths)]
    return tuple(sorted(kept))


class BoundedLru(Generic[V]):
    """A bounded least-recently-used map with hit and miss counts (the decision caches' store).

    A key of None is never stored and never found, so a caller can say "not cacheable" with it.
    """

    def __init__(self, *, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max = max_entries
        self._entries: OrderedDict[Any, V] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Any) -> V | None:
        """The cached value for ``key``, refreshed as most recently used, or None."""
        value = self._entries.get(key) if key is not None else None
        if value is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: Any, value: V) -> None:
        """Remember ``value``, evicting the least recently used entry when full."""
        if key is None:
            return
        self._entries[key] = value
        self._entries.move_to_end(key)
        if len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()


class DecisionCache(BoundedLru["Decision"]):
    """A bounded LRU of decisions keyed on the input fields the policy reads."""

    def __init__(
        self, fields: tuple[FieldPath, ...] | None, *, max_entries: int = DEFAULT_MAX_ENTRIES
    ) -> None:
        super().__init__(max_entries=max_entries)
        self._fields = fields
        self._key = _key_function(fields)

    @property
    def fields(self) -> tuple[FieldPath, ...] | None:
        """The input paths the key is made of (None: the whole input)."""
        return self._fields

    def key(self, input: Mapping[str, Any]) -> Any:
        """The cache key of ``input``: the frozen values of the fields the policy reads.

        None when a field read holds something that is not a JSON value (a set, bytes, an object
        with non-string keys): such a request is decided without the cache, never refused or
        failed because of it. ``get(None)`` finds nothing and ``put(None, ...)`` stores nothing.
        """
        try:
            return self._key(input)
        except _Uncacheable:
            return None


def project(input: Mapping[str, Any], fields: tuple[FieldPath, ...]) -> dict[str, Any]:
    """The part of ``input`` at ``fields``; missing fields stay missing."""
    out: dict[str, Any] = {}
    for path in fields:
        value: Any = input
        for name in path:
            if not isinstance(value, Mapping) or name not in value:
                break
            value = value[name]
        else:
            node = out
            for name in path[:-1]:
                node = node.setdefault(name, {})
            node[path[-1]] = value
    return out


class _Uncacheable(Exception):  # noqa: N818 - an outcome of freezing, not a fault
    """A value that is not JSON, so no key can stand for it."""


def _key_function(fields: tuple[FieldPath, ...] | None) -> Callable[[Mapping[str, Any]], Any]:
    """The key function for one cache plan, prepared once (the cache is consulted on every
    request): the values of the fields read, top-level names first, made into a key by
    :func:`_json_key`, or by :func:`_freeze` when that cannot be exact."""
    if fields is None:

        def whole(input: Mapping[str, Any]) -> Any:
            return _json_key(input) or _freeze(input)

        return whole
    names = tuple(path[0] for path in fields if len(path) == 1)
    paths = tuple(path for path in fields if len(path) > 1)
    # A field the input does not have is _ABSENT, which orjson writes itself (no call back into
    # Python for it, as a stand-in object would need).
    missing = (_ABSENT,) * len(names)

    def key(input: Mapping[str, Any]) -> Any:
        values = list(map(input.get, names, missing))
        for path in paths:
            values.append(_lookup(input, path))
        return _json_key(values) or tuple([_freeze(value) for value in values])

    return key


# Sorted object keys (equal objects, equal text). A subclass of str, int, dict or list, a
# dataclass or a datetime is not turned into JSON (with no ``default``, orjson refuses it): the
# exact key below decides about those, as it did before.
_JSON_OPTIONS = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
)


def _json_key(value: Any) -> bytes | None:
    """``value`` as compact JSON with sorted keys, in one call into orjson: a few times cheaper
    than :func:`_freeze` and as exact, since two JSON values are equal exactly when their texts
    are (``true`` is not ``1``, ``1`` is not ``1.0``). None when the text could not tell values
    apart or orjson refuses the value: orjson writes NaN and infinities as ``null``, so a text
    holding ``null`` anywhere is not used; nor are integers beyond 64 bits, nesting deeper than
    orjson's limit, strings that are not Unicode text, and anything that is not JSON. The caller
    then falls back to :func:`_freeze`, whose keys (tuples) never equal these (bytes)."""
    try:
        text = orjson.dumps(value, option=_JSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return None
    return None if b"null" in text else text


def _lookup(input: Mapping[str, Any], path: FieldPath) -> Any:
    value: Any = input
    for name in path:
        # A missing name gives _ABSENT, which is no Mapping: the next name gives it again.
        if type(value) is not dict and not isinstance(value, Mapping):
            return _ABSENT
        value = value.get(name, _ABSENT)
    return value


def _freeze(value: Any) -> Any:
    """A hashable form of a JSON value that keeps JSON types apart (``true`` is not ``1``).

    Raises :class:`_Uncacheable` for anything that is not JSON. Exact types only: the inputs are
    built from plain values, and a subclass could compare or hash unlike its base.
    """
    kind = type(value)
    if kind is str or value is _ABSENT:
        return value
    if kind is bool:
        return _TRUE if value else _FALSE
    if value is None:
        return _NULL
    if kind is int or kind is float:
        # Tagged with the type, because True == 1 == 1.0 in Python.
        return (kind.__name__, value)
    if kind is list or kind is tuple:
        return tuple([_freeze(v) for v in value])
    if isinstance(value, Mapping):
        items = []
        for name, item in value.items():
            if type(name) is not str:
                raise _Uncacheable
            items.append((name, _freeze(item)))
        items.sort()
        return (_OBJECT, tuple(items))
    raise _Uncacheable
