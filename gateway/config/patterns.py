"""Segment-aware path patterns: the path language of ``operations[].paths`` in gateway.yaml.

A pattern is an absolute path whose segments are literals or wildcards. Matching works on whole
segments, never on characters, so ``/api/*`` can never match ``/apiadmin``.

=====================  =====================================  ==============================
pattern                matches                                does not match
=====================  =====================================  ==============================
``/api/orders``        ``/api/orders``                        ``/api/orders/``, ``/API/orders``
``/api/*``             ``/api/x``                             ``/api``, ``/api/``, ``/api/x/y``,
                                                              ``/apiadmin``, ``/api/x/``
``/api/**``            ``/api/x``, ``/api/x/y``, ``/api/x/``  ``/api``, ``/api/``, ``/apix``
``/api/orders/``       ``/api/orders/``                       ``/api/orders``
``/``                  ``/``                                  everything else
=====================  =====================================  ==============================

Rules: ``*`` is exactly one non-empty segment; ``**`` is one or more segments and may only be the
last segment; a trailing ``/`` is significant (``/a`` and ``/a/`` are different resources to most
servers) except under ``**``. Literals are case-sensitive and compared byte for byte after the
request path has been canonicalised (percent-encoding of unreserved characters decoded, hex digits
upper-cased; RFC 3986 section 6.2.2). A pattern is written in that canonical form, so a literal may
contain ``%XX`` only for characters that must stay encoded, and never for ``/``, ``\\``, ``.``,
``%``, ``;``, ``?``, ``#``, NUL or control characters (requests holding those are refused before
any pattern is tried).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ONE = "*"
MANY = "**"
MAX_PATTERN_LENGTH = 1024

# RFC 3986 section 3.3 pchar, minus ';' (matrix parameters are rejected, catalogue B)
# and minus '%' which is handled as a pct-encoded triplet below.
LITERAL_CHARS = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,=:@]|%[0-9A-F]{2})+")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
# RFC 3986 section 2.3: percent-encoding these is never needed, so the canonical form decodes them.
UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Encoded forms that would smuggle structure into a segment (catalogue B 27-34, 44).
_FORBIDDEN_ENCODED = {0x2F: "/", 0x5C: "\\", 0x2E: "."} | {
    b: "a control character" for b in range(0x20)
}
_FORBIDDEN_ENCODED[0x7F] = "a control character"
# Encodings the canonicaliser refuses in every request (docs/request-canonicalisation.md), so a
# literal holding one could never match: '%', and the delimiters servers act on once decoded.
_FORBIDDEN_ENCODED |= {0x25: "'%'", 0x3B: "';'", 0x3F: "'?'", 0x23: "'#'"}


class PatternError(ValueError):
    """A path pattern is malformed; ``code`` is a stable machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class PathPattern:
    """A parsed pattern: ``segments`` are literals, ``*`` or a final ``**``."""

    text: str
    segments: tuple[str, ...]
    trailing_slash: bool

    @classmethod
    def parse(cls, text: str) -> PathPattern:
        """Parse and check ``text``; raises :class:`PatternError` saying what to fix."""
        if len(text) > MAX_PATTERN_LENGTH:
            raise PatternError("pattern_too_long", f"longer than {MAX_PATTERN_LENGTH} characters")
        if not text.startswith("/"):
            raise PatternError("not_absolute", "a path pattern must start with '/'")
        for char, code, what in (
            ("?", "query_in_pattern", "a query ('?')"),
            ("#", "fragment_in_pattern", "a fragment ('#')"),
            ("\\", "backslash", "a backslash"),
            (";", "matrix_parameter", "';' (matrix parameters are not allowed)"),
        ):
            if char in text:
                raise PatternError(code, f"a path pattern cannot contain {what}")
        if text == "/":
            return cls(text, (), False)
        body = text[1:]
        trailing = body.endswith("/")
        if trailing:
            body = body[:-1]
        parts = tuple(body.split("/"))
        for index, part in enumerate(parts):
            _check_segment(part, last=index == len(parts) - 1)
        if trailing and parts[-1] == MANY:
            raise PatternError("trailing_slash_after_many", "'**' already matches a trailing '/'")
        return cls(text, parts, trailing)

    def matches(self, segments: tuple[str, ...], trailing_slash: bool) -> bool:
        """Whether a canonical request path (split into segments) matches this pattern."""
        pattern = self.segments
        if pattern and pattern[-1] == MANY:
            head = pattern[:-1]
            if len(segments) <= len(head):
                return False
            return all(p in (ONE, s) for p, s in zip(head, segments, strict=False))
        if len(segments) != len(pattern) or trailing_slash != self.trailing_slash:
            return False
        return all(p in (ONE, s) for p, s in zip(pattern, segments, strict=True))

    def overlaps(self, other: PathPattern) -> bool:
        """Whether some request path matches both patterns."""
        a, b = self.segments, other.segments
        for x, y in zip(a, b, strict=False):
            if MANY in (x, y):
                return True  # the other side has at least this segment left, which '**' takes
            if ONE not in (x, y) and x != y:
                return False
        return len(a) == len(b) and self.trailing_slash == other.trailing_slash

    def covers(self, other: PathPattern) -> bool:
        """Whether every request path matched by ``other`` is also matched by this pattern."""
        a, b = self.segments, other.segments
        for x, y in zip(a, b, strict=False):
            if x == MANY:
                return True
            if y == MANY or (x != ONE and x != y):
                return False
        return len(a) == len(b) and self.trailing_slash == other.trailing_slash

    def __str__(self) -> str:
        return self.text


def _check_segment(part: str, *, last: bool) -> None:
    if part == "":
        raise PatternError("empty_segment", "empty segment ('//'): every segment needs a name")
    if part in (".", ".."):
        raise PatternError("dot_segment", f"'{part}' segments are not allowed")
    if part == MANY:
        if not last:
            raise PatternError("many_not_last", "'**' may only be the last segment")
        return
    if part == ONE:
        return
    if "*" in part:
        raise PatternError(
            "partial_wildcard", f"'{part}': '*' must be a whole segment ('/a/*', not '/a*')"
        )
    if any(m.group(1) != m.group(1).upper() for m in _PCT.finditer(part)):
        raise PatternError(
            "lowercase_percent_encoding", f"'{part}': write percent-encoding in upper case"
        )
    if not LITERAL_CHARS.fullmatch(part):
        raise PatternError(
            "invalid_character",
            f"'{part}' contains characters that must be percent-encoded or are not allowed",
        )
    for match in _PCT.finditer(part):
        octet = int(match.group(1), 16)
        if octet in _FORBIDDEN_ENCODED:
            raise PatternError(
                "forbidden_encoding", f"'{match.group(0)}' encodes {_FORBIDDEN_ENCODED[octet]}"
            )
        if octet in UNRESERVED:
            raise PatternError(
                "non_canonical_encoding",
                f"'{match.group(0)}' encodes '{chr(octet)}', which is written as itself",
            )
