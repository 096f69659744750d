"""RFC 4515 search filter strings, parsed into the same ``FilterNode`` tree the codec produces.

Used where a person writes a filter (``gateway explain --ldap ... --filter``, policy tests), so
that a filter typed by hand is judged exactly as the same filter sent by a client in a PDU. The
bounds match the PDU grammar's: a filter nested deeper than ``asn1.FILTER_DEPTH`` levels of
and/or/not below the top, or with more terms than allowed, is refused here as it is on the wire.
"""

from __future__ import annotations

from gateway.ldap.asn1 import FILTER_DEPTH
from gateway.ldap.codec import DEFAULT_LIMITS, FilterNode
from gateway.ldap.dn import is_utf8_text
from gateway.ldap.errors import LdapError

MAX_FILTER_TEXT = 16384

_KINDS = {"=": "equalityMatch", ">=": "greaterOrEqual", "<=": "lessOrEqual", "~=": "approxMatch"}


class FilterSyntaxError(LdapError):
    """A filter string that is not RFC 4515 syntax or is over a bound."""

    def __init__(self, detail: str) -> None:
        super().__init__("ldap-filter-syntax", detail)


def _unescape(text: str) -> bytes:
    # RFC 4515 section 3: a value escapes '*', '(', ')', '\' and NUL as '\' followed by two hex
    # digits; any byte may be written that way.
    out = bytearray()
    index = 0
    while index < len(text):
        ch = text[index]
        if ch == "\\":
            pair = text[index + 1 : index + 3]
            try:
                out.append(int(pair, 16))
            except ValueError:
                raise FilterSyntaxError(f"bad escape at {index}") from None
            if len(pair) != 2:
                raise FilterSyntaxError(f"bad escape at {index}")
            index += 3
            continue
        if ch in "()*\x00":
            raise FilterSyntaxError(f"unescaped {ch!r} in a value")
        out += ch.encode("utf-8")
        index += 1
    return bytes(out)


class _Parser:
    def __init__(self, text: str, max_terms: int) -> None:
        self.text = text
        self.position = 0
        self.budget = max_terms

    def parse(self) -> FilterNode:
        node = self.filter(FILTER_DEPTH)
        if self.position != len(self.text):
            raise FilterSyntaxError(f"text after the filter at {self.position}")
        return node

    def expect(self, ch: str) -> None:
        if self.text[self.position : self.position + 1] != ch:
            raise FilterSyntaxError(f"expected {ch!r} at {self.position}")
        self.position += 1

    def filter(self, depth: int) -> FilterNode:
        self.budget -= 1
        if self.budget < 0:
            raise FilterSyntaxError("too many filter terms")
        self.expect("(")
        head = self.text[self.position : self.position + 1]
        if head in ("&", "|", "!"):
            if depth == 0:
                raise FilterSyntaxError(f"filter nested deeper than {FILTER_DEPTH} levels")
            self.position += 1
            children = []
            while self.text[self.position : self.position + 1] == "(":
                children.append(self.filter(depth - 1))
            if not children or (head == "!" and len(children) != 1):
                raise FilterSyntaxError(f"wrong number of terms after {head!r}")
            node = FilterNode({"&": "and", "|": "or", "!": "not"}[head], children=tuple(children))
        else:
            node = self.item()
        self.expect(")")
        return node

    def item(self) -> FilterNode:
        end = self.text.find(")", self.position)
        if end < 0:
            raise FilterSyntaxError("unterminated filter")
        body = self.text[self.position : end]
        self.position = end
        equals = body.find("=")
        if equals <= 0:
            raise FilterSyntaxError(f"no attribute and operator in {body!r}")
        operator = "="
        left = body[:equals]
        if left[-1] in "<>~":
            operator = left[-1] + "="
            left = left[:-1]
        value = body[equals + 1 :]
        if not left:
            raise FilterSyntaxError(f"no attribute in {body!r}")
        if ":" in left and operator == "=":
            return self.extensible(left, value)
        if operator == "=" and value == "*":
            return FilterNode("present", attribute=left)
        if operator == "=" and "*" in value:
            pieces = value.split("*")
            parts: list[tuple[str, bytes]] = []
            if pieces[0]:
                parts.append(("initial", _unescape(pieces[0])))
            parts += [("any", _unescape(piece)) for piece in pieces[1:-1] if piece]
            if pieces[-1]:
                parts.append(("final", _unescape(pieces[-1])))
            if not parts:
                raise FilterSyntaxError(f"a substring filter without parts: {body!r}")
            return FilterNode(
                "substrings",
                attribute=left,
                value=b"*".join(part for _, part in parts),
                substrings=tuple(parts),
            )
        return FilterNode(_KINDS[operator], attribute=left, value=_unescape(value))

    def extensible(self, left: str, value: str) -> FilterNode:
        # attr [":dn"] [":" matchingrule] ":=" value, or [":dn"] ":" matchingrule ":=" value
        if not left.endswith(":"):
            raise FilterSyntaxError(f"an extensible match must end with ':=': {left!r}")
        fields = left[:-1].split(":")
        attribute = fields[0]
        dn_attributes = False
        rule = ""
        for extra in fields[1:]:
            if extra.lower() == "dn" and not dn_attributes and not rule:
                dn_attributes = True
            elif extra and not rule:
                rule = extra
            else:
                raise FilterSyntaxError(f"bad extensible match {left!r}")
        if not attribute and not rule:
            raise FilterSyntaxError("an extensible match needs an attribute or a rule")
        if not attribute:
            # The decoder refuses it on the wire (gateway.ldap.codec, RFC 4511 4.5.1.7.7: it
            # tests every attribute of the entry), so a question about it is refused too.
            raise FilterSyntaxError("an extensible match without an attribute type is refused")
        return FilterNode(
            "extensibleMatch",
            attribute=attribute,
            value=_unescape(value),
            rule=rule,
            dn_attributes=dn_attributes,
        )


def parse_filter(text: str, max_terms: int = DEFAULT_LIMITS.max_filter_nodes) -> FilterNode:
    """Parse an RFC 4515 filter string; raises ``FilterSyntaxError``."""
    if len(text) > MAX_FILTER_TEXT:
        raise FilterSyntaxError(f"a filter of {len(text)} characters")
    if not is_utf8_text(text):
        # RFC 4515 section 3: a filter string is UTF-8; a lone surrogate (an argument that was
        # not UTF-8, decoded with surrogateescape) cannot be encoded into the filter's values.
        raise FilterSyntaxError("a filter that is not valid UTF-8 text")
    stripped = text.strip()
    if not stripped.startswith("("):
        stripped = f"({stripped})"  # RFC 4515 requires the parentheses; tools often omit them
    return _Parser(stripped, max_terms).parse()
