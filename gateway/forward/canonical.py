"""The one canonicaliser every relayed request passes through before policy or upstream sees it.

Reject first: a request is either turned into exactly one canonical form or refused with a stable
reason (:class:`RequestRejected`). Nothing is "cleaned up" into something acceptable: a dot
segment, an encoded slash or a backslash is an error, not a path to be resolved, because the
upstream server might resolve it differently from us (catalogue B). The canonical path is the
string the policy matches and the string the forwarder sends; there is no second rendering.

Canonical form is the one :mod:`gateway.config.patterns` writes patterns in (RFC 3986 section
6.2.2): percent-encoded unreserved characters are decoded (section 2.3), every other
percent-encoding keeps its octet with upper-case hex digits (section 6.2.2.1), and no raw character
is ever encoded or decoded. Canonicalising a canonical path returns it unchanged.

The rules, with their reason codes, are tabulated in ``docs/request-canonicalisation.md``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.config.model import METHODS, GatewayConfig, Target
from gateway.config.patterns import LITERAL_CHARS, UNRESERVED
from gateway.forward.headers import validate_request_headers
from gateway.forward.rejections import RejectReason, RequestRejected

__all__ = ["CanonicalRequest", "RejectReason", "RequestRejected", "canonicalise", "select_target"]

R = RejectReason

# RFC 9110 section 5.6.2 token; methods longer than this are not methods anyone implements.
_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")
# RFC 9110 sections 9.3.6 and 9.3.8: tunnels and request reflection are never relayed.
_NEVER_METHODS = frozenset({"CONNECT", "TRACE"})
_ALLOWED_METHODS = frozenset(METHODS)
_GRANTABLE_METHODS = frozenset(
    method
    for method in _ALLOWED_METHODS - _NEVER_METHODS
    if _METHOD.fullmatch(method) and method == method.upper()
)

# Characters a canonical segment may hold raw: exactly the single characters a pattern literal
# accepts (RFC 3986 pchar without ';'), derived from the pattern grammar so the two cannot drift.
_SEGMENT_CHARS = frozenset(
    char for char in map(chr, range(0x21, 0x7F)) if LITERAL_CHARS.fullmatch(char)
)
_BAD_PATH_CHAR = re.compile("[^" + re.escape("".join(sorted(_SEGMENT_CHARS | {"/", "%"}))) + "]")
_HEX = frozenset("0123456789abcdefABCDEF")
# Characters with a structural meaning in a path; a non-ASCII character that some servers fold
# to one of them is refused (see _folds_to_structure).
_STRUCTURAL = frozenset("/\\.%;?#")
# Words in the Unicode names of the characters that Windows "best fit" code-page conversion and
# similar ASCII folding map onto a structural character without any Unicode decomposition saying
# so (NFKC leaves them alone): U+2215 DIVISION SLASH and U+2044 FRACTION SLASH become '/', U+2216
# SET MINUS and U+29F5 REVERSE SOLIDUS OPERATOR become '\\', and likewise for full stops, percent,
# semicolon, question mark and number sign look-alikes. Matched on the name so that the whole
# family is covered, not a list that misses its next member.
_STRUCTURAL_NAMES = (
    "SOLIDUS",
    "SLASH",
    "SET MINUS",
    "FULL STOP",
    "DOT LEADER",
    "PERCENT",
    "SEMICOLON",
    "QUESTION MARK",
    "NUMBER SIGN",
)
# Code pages 932 (Japanese) and 949 (Korean) put the yen and won signs at byte 0x5C, the
# backslash, so converting either to those code pages turns it into a path separator.
_BACKSLASH_CURRENCIES = frozenset("\u00a5\u20a9\uffe5\uffe6")
# Encoded octets that some servers or frameworks treat as a delimiter once decoded: ';' starts
# path parameters (Tomcat, Jetty, Spring strip them), '?' and '#' end the path. A target that
# decodes before splitting would serve a shorter path than the one judged (RFC 3986 section 3.3).
_ENCODED_DELIMITERS = {
    0x3B: (R.MATRIX_PARAMETER, "an encoded ';' (%3B) is read as a path parameter by some servers"),
    0x3F: (R.ENCODED_DELIMITER, "an encoded '?' (%3F) ends the path for some servers"),
    0x23: (R.ENCODED_DELIMITER, "an encoded '#' (%23) ends the path for some servers"),
}
# Unicode categories that are invisible or control text: C0/C1 controls, format characters
# (bidirectional overrides, zero-width joiners), line and paragraph separators.
_INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp"})

# The query is passed through byte for byte (catalogue B 42) but must be one token of visible
# ASCII: no whitespace, controls or '#' that would change where the request line ends.
_BAD_QUERY_CHAR = re.compile(r"[^\x21-\x22\x24-\x7e]")

# Request-target forms other than origin-form (RFC 9112 section 3.2).
_AUTHORITY_FORM = re.compile(r"[^/?#@\s]+:[0-9]*")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")

# Host syntax a target may be named by: LDH labels (RFC 1123 section 2.1, any case) or an
# IPv6 literal in brackets (RFC 3986 section 3.2.2). Dotted-quad IPv4 is LDH-shaped.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_TARGET_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PORT = re.compile(r"[1-9][0-9]{0,4}")
_MAX_AUTHORITY = 262  # 253-byte name, ':' and a five-digit port, brackets of an IPv6 literal


@dataclass(frozen=True, slots=True)
class CanonicalRequest:
    """A relayed request in the single form policy judges and the forwarder sends."""

    target: str
    """The selected target's name from gateway.yaml."""
    method: str
    """RFC 9110 method token, checked upper-case and grantable by some operation."""
    path: str
    """Canonical path: exactly what will be forwarded."""
    segments: tuple[str, ...]
    """``path`` split once at '/'; what the policy matches patterns against."""
    trailing_slash: bool
    """Whether ``path`` ends in '/' (significant in patterns, see gateway.config.patterns)."""
    query: str | None
    """Raw query as received, never normalised; None when there was no (or an empty) query."""
    headers: tuple[tuple[str, str], ...]
    """Validated request headers, names lower-cased, in the order received."""
    websocket: bool
    """True for a stream (relay ``accept``) rather than an HTTP request."""

    @property
    def request_target(self) -> str:
        """The origin-form request target to send upstream: ``path`` plus ``?query``."""
        return self.path if self.query is None else f"{self.path}?{self.query}"


def canonicalise(
    config: GatewayConfig,
    *,
    method: str,
    target: str,
    request_target: str,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    websocket: bool = False,
) -> CanonicalRequest:
    """Check a relayed request and return its canonical form, or raise :class:`RequestRejected`.

    ``target`` is a target name from gateway.yaml or the exact ``host:port`` of a declared
    target. ``request_target`` is the origin-form ``/path?query`` as relayed (with the Hybrid
    Connection's own path prefix already removed). Checks run method, target, request target,
    headers, so the cheapest and most fundamental refusal is the one reported.
    """
    _check_method(method, websocket=websocket)
    name, selected = select_target(config, target)
    if selected.stream_only and not websocket:
        raise RequestRejected(
            R.STREAM_ONLY_TARGET, "the target carries raw streams, not HTTP requests"
        )
    path, segments, trailing, query = _canonical_target(
        request_target, config.limits.max_path_bytes
    )
    validated = validate_request_headers(config, headers)
    return CanonicalRequest(
        target=name,
        method=method,
        path=path,
        segments=segments,
        trailing_slash=trailing,
        query=query,
        headers=validated,
        websocket=websocket,
    )


def _check_method(method: str, *, websocket: bool) -> None:
    if method in _GRANTABLE_METHODS:
        # Nearly every request: a method some operation can grant is a token, upper-case and
        # neither CONNECT nor TRACE, so of the checks below only the WebSocket one is left.
        if websocket and method != "GET":
            raise RequestRejected(R.INVALID_METHOD, "a WebSocket stream opens with GET")
        return
    if not _METHOD.fullmatch(method):
        raise RequestRejected(R.INVALID_METHOD, "the method is not an HTTP token")
    # RFC 9110 section 9.1: methods are case-sensitive; 'get' is not GET, and a server that
    # folds case would run a method the policy never saw.
    if method != method.upper():
        raise RequestRejected(R.INVALID_METHOD, "methods are case-sensitive and upper-case")
    if method in _NEVER_METHODS or method not in _ALLOWED_METHODS:
        raise RequestRejected(R.METHOD_NOT_ALLOWED, "no operation can allow this method")
    # RFC 6455 section 4.1: the opening handshake of a WebSocket is a GET.
    if websocket and method != "GET":
        raise RequestRejected(R.INVALID_METHOD, "a WebSocket stream opens with GET")


def select_target(config: GatewayConfig, spelled: str) -> tuple[str, Target]:
    """The declared target ``spelled`` names: a target name, or the exact ``host:port``.

    The host is compared case-insensitively (DNS names are, RFC 4343) and everything else
    exactly; the returned :class:`Target` carries the allow-list spelling, which is what is
    dialled and sent as ``Host``. Raises :class:`RequestRejected` (400 malformed, 403 undeclared).
    """
    found = config.targets.get(spelled)
    if found is not None:
        return spelled, found
    if len(spelled) > _MAX_AUTHORITY or not spelled.isascii() or not spelled.isprintable():
        raise RequestRejected(R.INVALID_TARGET, "the target is not a name or host:port")
    # Userinfo would make some URL parsers dial the part after '@' (catalogue A 8).
    if "@" in spelled:
        raise RequestRejected(R.USERINFO, "a target cannot carry userinfo")
    if "%" in spelled:
        if "[" in spelled:
            raise RequestRejected(R.IPV6_ZONE_ID, "an IPv6 zone id is never part of a target")
        raise RequestRejected(R.PERCENT_ENCODED_HOST, "a target host is never percent-encoded")
    if ":" not in spelled and _TARGET_NAME.fullmatch(spelled):
        raise RequestRejected(R.UNKNOWN_TARGET, "no target of that name is declared")
    host, port_text = _split_authority(spelled)
    port = _parse_port(port_text)
    for name, candidate in config.targets.items():
        if candidate.effective_port == port and _same_host(candidate.host, host):
            return name, candidate
    raise RequestRejected(R.TARGET_NOT_ALLOWED, "that host:port is not a declared target")


def _split_authority(spelled: str) -> tuple[str | ipaddress.IPv6Address, str | None]:
    """Split ``host:port`` into a checked host (lower-cased name or IPv6 address) and port text."""
    if spelled.startswith("["):
        inside, bracket, rest = spelled[1:].partition("]")
        try:
            address = ipaddress.IPv6Address(inside)
        except ValueError:
            raise RequestRejected(R.INVALID_HOST, "not a valid IPv6 literal") from None
        if not bracket or (rest and not rest.startswith(":")):
            raise RequestRejected(R.INVALID_HOST, "not a valid IPv6 literal")
        return address, rest[1:] if rest else None
    host, colon, port_text = spelled.rpartition(":")
    if not colon:
        host, port_text = spelled, ""
    if ":" in host:
        raise RequestRejected(R.INVALID_HOST, "an IPv6 literal must be written in brackets")
    # A trailing dot names the same DNS node but a different string: TLS name checks, virtual
    # hosts and the allow-list would each see something else (catalogue A 4).
    if host.endswith("."):
        raise RequestRejected(R.NON_CANONICAL_HOST, "a target host has no trailing dot")
    if len(host) > 253 or not _HOST_NAME.fullmatch(host):
        raise RequestRejected(R.INVALID_HOST, "the target host is not a host name")
    return host.lower(), port_text if colon else None


def _parse_port(text: str | None) -> int:
    # Exactly the digits of 1-65535 with no sign, padding, space or leading zero (catalogue
    # A 22): int() would accept '+8443', ' 8443' and '08443' and make them equal to 8443.
    if text is None:
        raise RequestRejected(R.MISSING_PORT, "a host target must say its port")
    if not _PORT.fullmatch(text) or int(text) > 65535:
        raise RequestRejected(R.INVALID_PORT, "the port must be 1-65535 in plain digits")
    return int(text)


def _same_host(declared: str, host: str | ipaddress.IPv6Address) -> bool:
    if isinstance(host, ipaddress.IPv6Address):
        try:
            return ipaddress.IPv6Address(declared) == host
        except ValueError:
            return False
    return declared == host


def _canonical_target(
    request_target: str, max_bytes: int
) -> tuple[str, tuple[str, ...], bool, str | None]:
    # The bound covers path and query together: it is the whole URI the upstream must take
    # (RFC 9110 section 15.5.15, catalogue B 45). Counted before any other work.
    # An ASCII string has as many UTF-8 bytes as characters: only other text is encoded.
    if len(request_target) > max_bytes or (
        not request_target.isascii() and len(request_target.encode("utf-8", "replace")) > max_bytes
    ):
        raise RequestRejected(R.URI_TOO_LONG, f"the request target exceeds {max_bytes} bytes")
    if not request_target.startswith("/"):
        raise RequestRejected(*_other_form(request_target))
    if "#" in request_target:
        raise RequestRejected(R.FRAGMENT, "a request target never carries a fragment")
    raw_path, question, query = request_target.partition("?")
    path, segments, trailing = _canonical_path(raw_path)
    if question and _BAD_QUERY_CHAR.search(query):
        raise RequestRejected(
            R.INVALID_QUERY, "the query holds whitespace, control or non-ASCII characters"
        )
    # An empty query ('/x?') is sent as '/x' (RFC 3986 section 6.2.3 lets an empty component be
    # dropped); recording it as absent keeps "what was judged" equal to "what is forwarded".
    return path, segments, trailing, query if question and query else None


def _other_form(request_target: str) -> tuple[RejectReason, str]:
    # Only origin-form is relayed: absolute-form would name another host, authority-form is
    # CONNECT's and asterisk-form is server-wide OPTIONS (RFC 9112 sections 3.2.2-3.2.4).
    if request_target == "*":
        return R.ASTERISK_FORM, "asterisk-form is not relayed"
    if _AUTHORITY_FORM.fullmatch(request_target):
        return R.AUTHORITY_FORM, "authority-form is not relayed"
    if _SCHEME.match(request_target):
        return R.ABSOLUTE_FORM, "absolute-form is not relayed; send the path only"
    return R.INVALID_REQUEST_TARGET, "the request target must start with '/'"


def _canonical_path(raw: str) -> tuple[str, tuple[str, ...], bool]:
    bad = _BAD_PATH_CHAR.search(raw)
    if bad is not None:
        raise RequestRejected(*_raw_character(bad.group()))
    if raw == "/":
        return raw, (), False
    body = raw[1:]
    trailing = body.endswith("/")
    if trailing:
        body = body[:-1]
    if "%" not in raw and "//" not in raw and "/." not in raw:
        # No escape, no empty segment, no segment starting with a dot: every rule of
        # _canonical_segment is about one of those, so each segment is canonical as it is and
        # the path is its own canonical form (most requests: no per-segment work).
        return raw, tuple(body.split("/")), trailing
    # One split, one pass: the segments the policy matches are the ones joined for upstream.
    segments = tuple(_canonical_segment(part) for part in body.split("/"))
    return "/" + "/".join(segments) + ("/" if trailing else ""), segments, trailing


def _raw_character(char: str) -> tuple[RejectReason, str]:
    if char == "\x00":
        return R.NUL_BYTE, "the path contains a NUL byte"
    if char < " " or char == "\x7f":
        return R.CONTROL_CHARACTER, "the path contains a control character"
    if char == "\\":
        return R.BACKSLASH, "the path contains a backslash"
    if char == ";":
        return R.MATRIX_PARAMETER, "';' path parameters are not relayed"
    if not char.isascii():
        return R.NON_ASCII, "the path contains a raw non-ASCII character; percent-encode it"
    return R.INVALID_CHARACTER, "the path contains a character that must be percent-encoded"


def _canonical_segment(raw: str) -> str:
    # An empty segment ('//', also the start of a network-path reference '//host/...') is
    # collapsed by some servers and not by others (catalogue A 18, B 36).
    if raw == "":
        raise RequestRejected(R.EMPTY_SEGMENT, "the path has an empty segment ('//')")
    # RFC 3986 section 5.2.4 would remove dot segments; we refuse them, so that no component on
    # the way can resolve them differently from the policy (catalogue B 28).
    if raw in (".", ".."):
        raise RequestRejected(R.DOT_SEGMENT, "the path has a '.' or '..' segment")
    if "%" not in raw:
        if not raw.strip("."):
            _check_dots_only(raw)
        return raw
    out: list[str] = []
    encoded_dot = False
    index, end = 0, len(raw)
    while index < end:
        char = raw[index]
        if char != "%":
            out.append(char)
            index += 1
            continue
        octet = _octet(raw, index)
        if octet >= 0x80:
            index = _utf8_run(raw, index, out)
            continue
        index += 3
        if octet == 0x25:
            # One rule for '%': it is never relayed encoded. After one decoding it is a '%' that,
            # with whatever follows it (here, in the next segment or in the query), a second
            # decoding pass (a proxy, a framework, a file API) reads as a new escape: '%252e' is
            # '.', '%25' then '2F' is '/'. No reading of it is the same for every server.
            raise RequestRejected(R.DOUBLE_ENCODING, "an encoded '%' (%25) is never relayed")
        if octet == 0x2E:
            # Any '%2E' is refused (documented choice): decoding it is what turns '%2e%2e' into
            # '..' after the dot-segment check ran (catalogue B 27, 29).
            encoded_dot = True
            out.append(".")
        elif octet in UNRESERVED:
            out.append(chr(octet))
        else:
            _check_encoded_ascii(octet)
            out.append(f"%{octet:02X}")
    segment = "".join(out)
    if encoded_dot:
        if segment in (".", ".."):
            raise RequestRejected(R.ENCODED_DOT_SEGMENT, "the path has an encoded dot segment")
        raise RequestRejected(R.ENCODED_DOT, "'.' is written as itself, never as '%2E'")
    # Only a segment of dots and escapes can decode to dots and white space; the strip is a
    # cheap filter that keeps the decoding off every other segment.
    if not segment.strip(".%0123456789ABCDEF"):
        _check_dots_only(urllib.parse.unquote(segment, errors="strict"))
    return segment


def _check_dots_only(decoded: str) -> None:
    # A segment of dots and white space only ('..%20', '.%C2%A0', '%20..', '...') is a dot
    # segment, and one of white space only ('%20') an empty one, to any server that trims
    # trailing spaces and dots from names, as Windows does (catalogue B).
    if all(char == "." or _is_space(char) for char in decoded):
        if "." not in decoded:
            raise RequestRejected(R.EMPTY_SEGMENT, "the path has a segment of white space only")
        raise RequestRejected(
            R.PADDED_DOT_SEGMENT, "the path has a segment of only dots and white space"
        )


def _is_space(char: str) -> bool:
    return char.isspace() or unicodedata.category(char) == "Zs"


def _octet(raw: str, index: int) -> int:
    digits = raw[index + 1 : index + 3]
    if len(digits) != 2 or not _HEX.issuperset(digits):
        raise RequestRejected(R.INVALID_PERCENT_ENCODING, "'%' is not followed by two hex digits")
    return int(digits, 16)


def _check_encoded_ascii(octet: int) -> None:
    # The same octets gateway.config.patterns forbids in a pattern literal.
    if octet == 0x00:
        raise RequestRejected(R.NUL_BYTE, "the path contains an encoded NUL byte")
    if octet < 0x20 or octet == 0x7F:
        raise RequestRejected(R.CONTROL_CHARACTER, "the path contains an encoded control character")
    if octet == 0x2F:
        raise RequestRejected(R.ENCODED_SLASH, "the path contains an encoded '/' (%2F)")
    if octet == 0x5C:
        raise RequestRejected(R.BACKSLASH, "the path contains an encoded backslash (%5C)")
    delimiter = _ENCODED_DELIMITERS.get(octet)
    if delimiter is not None:
        raise RequestRejected(*delimiter)


def _utf8_run(raw: str, index: int, out: list[str]) -> int:
    """Check the run of encoded non-ASCII octets at ``index``; append it in canonical case."""
    octets = bytearray()
    end = len(raw)
    while index < end and raw[index] == "%":
        octet = _octet(raw, index)
        if octet < 0x80:
            break
        octets.append(octet)
        index += 3
    # Python's strict decoder refuses overlong forms (%C0%AE for '.'), surrogates and code
    # points past U+10FFFF (RFC 3629 section 3), which is what catalogue B 33 asks.
    try:
        text = octets.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestRejected(R.INVALID_UTF8, "the path decodes to invalid UTF-8") from None
    for char in text:
        if unicodedata.category(char) in _INVISIBLE:
            raise RequestRejected(
                R.CONTROL_CHARACTER, "the path contains an encoded control or format character"
            )
        if _folds_to_structure(char):
            raise RequestRejected(
                R.UNICODE_CONFUSABLE,
                "the path contains a character that folds to '/', '\\', '.' or another delimiter",
            )
    out.append("".join(f"%{octet:02X}" for octet in octets))
    return index


@functools.lru_cache(maxsize=4096)
def _folds_to_structure(char: str) -> bool:
    """Whether some server could read non-ASCII ``char`` as ``/ \\ . % ; ? #``: by Unicode
    compatibility folding (NFKC, which frameworks apply) or by Windows "best fit" conversion
    (IIS and Win32 file APIs), which maps characters by appearance."""
    folded = unicodedata.normalize("NFKC", char)
    if not _STRUCTURAL.isdisjoint(folded) or not _BACKSLASH_CURRENCIES.isdisjoint(folded + char):
        return True
    name = unicodedata.name(char, "")
    return any(word in name for word in _STRUCTURAL_NAMES)
