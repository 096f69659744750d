"""Hypothesis strategies for adversarial gateway input, shared by the fuzz properties.

Each strategy produces input the way an attacker (or a broken peer) would: mostly well-formed
with one or two defects, because wholly random bytes are refused by the first check and never
reach the interesting code. The pieces come from the catalogue (sections B, C, D and H 131).
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from gateway.config.patterns import PathPattern, PatternError
from gateway.hybridconnection.messages import (
    AcceptCommand,
    Command,
    RenewTokenCommand,
    RequestCommand,
    ResponseCommand,
    encode_command,
)

# --- paths and allow-lists ------------------------------------------------------------------

# Literal segments a pattern may name: plain words, unreserved punctuation, an encoded non-ASCII
# character (canonical upper-case hex), sub-delimiters.
PATTERN_LITERALS = ("api", "v1", "orders", "admin", "a.b", "~u", "%C3%A9", "x=1", "@me")

# Segments a request may carry: the literals, spellings that canonicalise to them, case
# variants, and the refused forms of catalogue B.
PATH_SEGMENTS = (
    *PATTERN_LITERALS,
    "API",
    "Orders",
    "%61pi",
    "%7Eu",
    "%7eu",
    "%c3%a9",
    "apiadmin",
    "v2",
    "",
    ".",
    "..",
    "%2e",
    "%2E%2E",
    "%2f",
    "%5C",
    "%00",
    "%0a",
    "%C0%AE",
    "%FF",
    "%25",
    "%2541",
    "a;b",
    "\\",
    "é",
    " ",
    "%20",
)

pattern_segment = st.sampled_from((*PATTERN_LITERALS, "*"))


@st.composite
def path_patterns(draw: st.DrawFn) -> str:
    """One valid path pattern: literals and ``*``, optionally a final ``**`` or a trailing '/'."""
    segments = draw(st.lists(pattern_segment, min_size=0, max_size=4))
    ending = draw(st.sampled_from(["", "/", "/**"]))
    if not segments:
        return "/**" if ending == "/**" else "/"
    text = "/" + "/".join(segments)
    return text + ("/**" if ending == "/**" else ending)


def _independent(patterns: list[str]) -> list[str]:
    """Drop patterns another kept one covers (the config refuses redundant paths)."""
    kept: list[PathPattern] = []
    for text in patterns:
        try:
            parsed = PathPattern.parse(text)
        except PatternError:
            continue
        if any(p.covers(parsed) or parsed.covers(p) for p in kept):
            continue
        kept.append(parsed)
    return [p.text for p in kept]


# Method sets of different operations on one target never share a method, so the generated
# allow-list never has overlapping operations (which gateway.yaml refuses).
_METHOD_GROUPS = (("GET", "HEAD"), ("POST", "PUT"), ("DELETE",), ("PATCH", "OPTIONS"))


@st.composite
def operation_sets(draw: st.DrawFn) -> list[dict[str, Any]]:
    """One to four operations for one target, each with independent patterns."""
    groups = draw(st.lists(st.sampled_from(range(len(_METHOD_GROUPS))), min_size=1, unique=True))
    operations: list[dict[str, Any]] = []
    for index, group in enumerate(groups):
        methods = draw(st.lists(st.sampled_from(_METHOD_GROUPS[group]), min_size=1, unique=True))
        paths = _independent(draw(st.lists(path_patterns(), min_size=1, max_size=4)))
        operation: dict[str, Any] = {"name": f"op-{index}", "methods": methods, "paths": paths}
        if "GET" in methods and draw(st.booleans()):
            operation["websocket"] = True
        operations.append(operation)
    return operations


@st.composite
def request_paths(draw: st.DrawFn) -> str:
    """An on-prem path of :data:`PATH_SEGMENTS`, maybe with a trailing slash, query or fragment."""
    segments = draw(st.lists(st.sampled_from(PATH_SEGMENTS), max_size=5))
    trailing = draw(st.booleans())
    path = "/" + "/".join(segments) + ("/" if segments and trailing else "")
    return path + draw(st.sampled_from(["", "", "?a=1", "?x=/../admin&y=%2F", "?", "#f"]))


request_methods = st.sampled_from(
    ["GET", "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "get", "TRACE"]
)

# --- header sets ----------------------------------------------------------------------------

# Names a header policy must know about: forwarded by default, credentials, forwarding and
# rewrite headers, hop-by-hop and framing headers, handshake headers, and arbitrary tokens.
HEADER_NAMES = (
    "Accept",
    "Content-Type",
    "If-None-Match",
    "Authorization",
    "Cookie",
    "X-Api-Key",
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "Forwarded",
    "X-Real-IP",
    "X-Original-URL",
    "X-Rewrite-URL",
    "Host",
    "Connection",
    "Keep-Alive",
    "Transfer-Encoding",
    "Content-Length",
    "TE",
    "Upgrade",
    "Proxy-Authorization",
    "Sec-WebSocket-Key",
    "Expect",
    "Via",
    "X-Custom",
    "x-gateway-id",
    "Signature",
)
HEADER_VALUES = (
    "1",
    "text/plain",
    "chunked",
    "5",
    "+5",
    "5, 5",
    "close, X-Custom, Accept",
    "keep-alive",
    "a\r\nX-Injected: 1",
    "\x00",
    " padded\t",
    "é",
    "for=127.0.0.1;host=admin",
    "/admin",
    "",
)
header_names = st.one_of(
    st.sampled_from(HEADER_NAMES),
    st.sampled_from(HEADER_NAMES).map(str.lower),
    st.text(alphabet=string.ascii_letters + "-_:; @\x00é", min_size=0, max_size=12),
)
header_values = st.one_of(st.sampled_from(HEADER_VALUES), st.text(max_size=20))
header_sets = st.lists(st.tuples(header_names, header_values), max_size=12)

# --- relay control messages -----------------------------------------------------------------

_WORD = st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=12)
_ADDRESS = st.sampled_from(
    [
        "wss://ns.servicebus.windows.net/$hc/hc-1?sb-hc-action=request&sb-hc-id=1",
        "wss://evil.example/$hc/hc-1?sb-hc-action=accept",
        "ws://ns.servicebus.windows.net/$hc/hc-1",
        "wss://other.servicebus.windows.net/$hc/hc-2",
    ]
)
_HEADERS = st.dictionaries(_WORD, st.sampled_from(HEADER_VALUES), max_size=4)

valid_commands: st.SearchStrategy[Command] = st.one_of(
    st.builds(AcceptCommand, _ADDRESS, _WORD, _HEADERS),
    st.builds(
        RequestCommand,
        id=_WORD,
        request_target=st.sampled_from(["/hc-1/erp/api/x", "/hc-1/erp/api/x?y=1", "/"]),
        method=st.sampled_from(["GET", "POST"]),
        request_headers=_HEADERS,
        body=st.booleans(),
        address=st.one_of(st.none(), _ADDRESS),
    ),
    st.builds(ResponseCommand, _WORD, st.integers(100, 599), st.booleans()),
    st.builds(RenewTokenCommand, _WORD),
)

# JSON-level edits an attacker makes to a valid command's text: each keeps most of the message
# intact so the parser gets past its first checks.
_TEXT_EDITS: tuple[Callable[[str, int, str], str], ...] = (
    lambda text, at, piece: text[:at] + piece + text[at:],  # insertion
    lambda text, at, piece: text[:at] + piece + text[at + len(piece) :],  # overwrite
    lambda text, at, piece: text[:at],  # truncation
    lambda text, at, piece: text[:at] + text[at + 1 :],  # deletion
    lambda text, at, piece: text.replace('"', piece, 1),  # break the first key
)
_PIECES = st.sampled_from(
    [
        '"',
        "\\",
        "\\u0000",
        "\\ud800",
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "null",
        "true",
        "1e999",
        "-0",
        '"\r\n"',
        '"accept"',
        '{"x":1}',
        "\x00",
        "é",
        "\U0001f600",
    ]
)


@st.composite
def mutated_commands(draw: st.DrawFn) -> str:
    """A valid command's JSON with one to three attacker edits."""
    text = encode_command(draw(valid_commands))
    for _ in range(draw(st.integers(1, 3))):
        edit = draw(st.sampled_from(_TEXT_EDITS))
        at = draw(st.integers(0, max(len(text) - 1, 0)))
        text = edit(text, at, draw(_PIECES))
    return text


# --- signature inputs -----------------------------------------------------------------------

# Structured-field pieces (RFC 8941) for Signature-Input: inner lists of component ids and
# parameters, well-formed and not.
SF_COMPONENTS = st.sampled_from(
    [
        '"@method"',
        '"@authority"',
        '"@path"',
        '"@query"',
        '"x-gateway-id"',
        '"content-digest"',
        '"@METHOD"',
        '"@target-uri"',
        '"@query-param";name="a"',
        '"x-gateway-id";sf',
        '"@path";bs',
        '"nonexistent"',
        '"@method"',
    ]
)
SF_PARAMETERS = st.sampled_from(
    [
        ";created=1750000000",
        ";created=-1",
        ";created=99999999999999999",
        ';created="1"',
        ";expires=1750000060",
        ";expires=0",
        ';keyid="ed-1"',
        ';keyid="unknown"',
        ";keyid=ed-1",
        ';nonce="n1"',
        ';alg="ed25519"',
        ';alg="hmac-sha256"',
        ';tag="gateway-request"',
        ';tag="other"',
        ";created",
        ";=",
    ]
)


@st.composite
def signature_inputs(draw: st.DrawFn) -> str:
    """A ``Signature-Input`` field value: one or two labelled inner lists with parameters."""
    members = []
    for _ in range(draw(st.integers(1, 2))):
        label = draw(st.sampled_from(["eid", "sig", "EID", "e id", "*"]))
        components = " ".join(draw(st.lists(SF_COMPONENTS, max_size=7)))
        params = "".join(draw(st.lists(SF_PARAMETERS, max_size=6)))
        members.append(f"{label}=({components}){params}")
    return draw(st.sampled_from([", ", ",", " ,"])).join(members)


signature_values = st.one_of(
    st.just("eid=:AAAA:"),
    st.just("eid=:"),
    st.just("eid=:" + "A" * 88 + ":"),
    st.binary(max_size=96).map(lambda raw: "eid=:" + raw.hex() + ":"),
    st.text(max_size=40),
)


@st.composite
def paths_near(draw: st.DrawFn, patterns: list[str]) -> str:
    """A path that one of ``patterns`` matches, or misses by one edit (segment, length, slash).

    Random paths almost never hit a generated allow-list; paths built from it probe exactly the
    boundaries (one segment more or less, a trailing '/', a case or encoding variant).
    """
    if not patterns:
        return draw(request_paths())
    pattern = PathPattern.parse(draw(st.sampled_from(patterns)))
    segments: list[str] = []
    for part in pattern.segments:
        if part == "**":
            segments.extend(
                draw(st.lists(st.sampled_from(PATTERN_LITERALS), min_size=1, max_size=3))
            )
        elif part == "*":
            segments.append(draw(st.sampled_from(PATTERN_LITERALS)))
        else:
            segments.append(part)
    trailing = pattern.trailing_slash
    edit = draw(st.sampled_from(["none", "none", "segment", "append", "drop", "slash"]))
    if edit == "segment" and segments:
        segments[draw(st.integers(0, len(segments) - 1))] = draw(st.sampled_from(PATH_SEGMENTS))
    elif edit == "append":
        segments.append(draw(st.sampled_from(PATH_SEGMENTS)))
    elif edit == "drop" and segments:
        segments.pop()
    elif edit == "slash":
        trailing = not trailing
    path = "/" + "/".join(segments)
    return path + ("/" if trailing and segments else "")
