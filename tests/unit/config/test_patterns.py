"""Segment-aware path patterns: the documented table, and properties of overlap and cover."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config.patterns import PathPattern


def split(path: str) -> tuple[tuple[str, ...], bool]:
    if path == "/":
        return (), False
    body = path[1:]
    trailing = body.endswith("/")
    return tuple(body.rstrip("/").split("/")) if body.rstrip("/") else (), trailing


# The table in gateway.config.patterns and docs/configuration.md, pinned (catalogue B 37-39).
TABLE = [
    ("/api/orders", "/api/orders", True),
    ("/api/orders", "/api/orders/", False),
    ("/api/orders", "/API/orders", False),
    ("/api/*", "/api/x", True),
    ("/api/*", "/api", False),
    ("/api/*", "/api/", False),
    ("/api/*", "/api/x/y", False),
    ("/api/*", "/apiadmin", False),
    ("/api/*", "/api-internal/x", False),
    ("/api/*", "/api/x/", False),
    ("/api/**", "/api/x", True),
    ("/api/**", "/api/x/y", True),
    ("/api/**", "/api/x/", True),
    ("/api/**", "/api", False),
    ("/api/**", "/api/", False),
    ("/api/**", "/apix", False),
    ("/api/orders/", "/api/orders/", True),
    ("/api/orders/", "/api/orders", False),
    ("/", "/", True),
    ("/", "/x", False),
    ("/*/orders", "/v1/orders", True),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), TABLE)
def test_documented_matching_table(pattern: str, path: str, expected: bool) -> None:
    segments, trailing = split(path)
    assert PathPattern.parse(pattern).matches(segments, trailing) is expected


SEGMENT = st.sampled_from(["a", "b", "api", "*"])
PATTERNS = st.builds(
    lambda segs, many, trailing: (
        "/"
        + "/".join(segs + (["**"] if many else []))
        + ("/" if trailing and segs and not many else "")
    ),
    st.lists(SEGMENT, min_size=0, max_size=3),
    st.booleans(),
    st.booleans(),
).filter(lambda p: p != "//")
PATHS = st.tuples(st.lists(st.sampled_from(["a", "b", "api", "zz"]), max_size=4), st.booleans())


@given(PATTERNS, PATTERNS, PATHS)
def test_overlap_and_cover_agree_with_matching(
    first: str, second: str, path: tuple[list[str], bool]
) -> None:
    a, b = PathPattern.parse(first), PathPattern.parse(second)
    segments, trailing = tuple(path[0]), path[1] and bool(path[0])
    in_a, in_b = a.matches(segments, trailing), b.matches(segments, trailing)
    if in_a and in_b:
        assert a.overlaps(b)
        assert b.overlaps(a)
    if in_b and a.covers(b):
        assert in_a
