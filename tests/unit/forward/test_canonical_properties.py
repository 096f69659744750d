"""Hypothesis properties of the canonicaliser (catalogue B 49 and 50) and its robustness.

49: whatever path is accepted, the canonical path is a fixed point of canonicalisation, is exactly
the string forwarded (``request_target``), and is exactly the segments the policy matches.
50: no spelling of ``/admin`` (mixed-case hex, double encoding, overlong UTF-8, backslashes, dot
segments, look-alike characters, ...) behind ``/api/`` is both accepted and matched by ``/api/*``.
Arbitrary text in any argument raises nothing but ``RequestRejected``. One reading: however a
target decodes (once, twice) or folds (NFKC, Windows "best fit") an accepted path, it finds the
segments the policy judged and no new delimiter.
"""

from __future__ import annotations

import re
import unicodedata
import urllib.parse
from collections.abc import Callable

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.config.model import METHODS
from gateway.config.patterns import PathPattern
from gateway.forward import canonical
from gateway.forward.canonical import CanonicalRequest, RequestRejected, canonicalise
from gateway.policy.input import build_input
from tests.unit.forward.configs import make_config

CONFIG = make_config()
API = PathPattern.parse("/api/*")
API_TREE = PathPattern.parse("/api/**")


def attempt(request_target: str, **kwargs: object) -> CanonicalRequest | None:
    arguments: dict[str, object] = {"method": "GET", "target": "erp", "headers": []}
    arguments.update(kwargs)
    try:
        return canonicalise(CONFIG, request_target=request_target, **arguments)  # type: ignore[arg-type]
    except RequestRejected as rejected:
        status = rejected.status
    assert status in (400, 403, 405, 414, 431)
    return None


# Pieces that exercise every rule: plain text, the delimiters, every encoding that matters, in
# both hex cases, plus valid and invalid UTF-8 sequences.
PIECES = st.sampled_from(
    [
        "a",
        "api",
        "Z9",
        "-._~",
        "!$&'()*+,=:@",
        ".",
        "..",
        "/",
        "//",
        "\\",
        ";",
        "?",
        "#",
        " ",
        "%",
        "%2",
        "%2e",
        "%2E",
        "%2f",
        "%2F",
        "%5c",
        "%41",
        "%61",
        "%7e",
        "%25",
        "%252e",
        "%3a",
        "%3B",
        "%20",
        "%00",
        "%0a",
        "%c3%a9",
        "%C3%A9",
        "%c0%ae",
        "%e2%80%ae",
        "%ef%bc%8f",
        "%f0%9f%98%80",
        "%ff",
        "\x00",
        "\t",
        "é",
    ]
)
PATHS = st.lists(PIECES, max_size=12).map(lambda pieces: "/" + "".join(pieces))


@settings(max_examples=400)
@given(PATHS)
@example("/api/%41%2d%c3%a9/")
def test_49_accepted_paths_are_fixed_points_and_what_is_forwarded(raw: str) -> None:
    request = attempt(raw)
    if request is None:
        return
    again = attempt(request.path)
    assert again is not None
    assert again.path == request.path
    assert again.segments == request.segments
    assert again.trailing_slash == request.trailing_slash
    # The string forwarded is the string judged: path + query, and path == joined segments.
    assert request.request_target == request.path + (
        "" if request.query is None else "?" + request.query
    )
    rebuilt = "/" + "/".join(request.segments) + ("/" if request.trailing_slash else "")
    assert request.path == rebuilt
    document = build_input(request, signed=True, keyid="k")
    assert document["path"] == request.path
    assert document["path_segments"] == list(request.segments)


def segment_by_segment(raw: str) -> tuple[str, tuple[str, ...], bool]:
    """The path rules applied to every segment in turn, without the canonicaliser's shortcut
    for paths that need no per-segment work."""
    bad = canonical._BAD_PATH_CHAR.search(raw)
    if bad is not None:
        raise RequestRejected(*canonical._raw_character(bad.group()))
    if raw == "/":
        return raw, (), False
    body = raw[1:]
    trailing = body.endswith("/")
    body = body[:-1] if trailing else body
    segments = tuple(canonical._canonical_segment(part) for part in body.split("/"))
    return "/" + "/".join(segments) + ("/" if trailing else ""), segments, trailing


def outcome(rules: Callable[[str], tuple[str, tuple[str, ...], bool]], raw: str) -> object:
    try:
        return rules(raw)
    except RequestRejected as rejected:
        return str(rejected.code)


DOTS_AND_SLASHES = st.lists(
    st.sampled_from(["a", "b.c", ".", "..", "...", ".x", "x.", "/", "//", "%2e", "%41"]),
    max_size=8,
).map(lambda pieces: "/" + "".join(pieces))


@settings(max_examples=500)
@given(st.one_of(PATHS, DOTS_AND_SLASHES))
@example("/a/.b")
@example("/a/b/")
@example("/a//")
@example("/.")
def test_the_path_shortcut_agrees_with_the_rules_segment_by_segment(raw: str) -> None:
    assert outcome(canonical._canonical_path, raw) == outcome(segment_by_segment, raw)


def method_rules(method: str, websocket: bool) -> str:
    """The method checks in order, as RFC 9110 section 9.1 and RFC 6455 section 4.1 put them."""
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}", method):
        return "invalid_method"
    if method != method.upper():
        return "invalid_method"
    if method in ("CONNECT", "TRACE") or method not in METHODS:
        return "method_not_allowed"
    if websocket and method != "GET":
        return "invalid_method"
    return "ok"


@settings(max_examples=400)
@given(
    st.one_of(
        st.sampled_from([*METHODS, "CONNECT", "TRACE", "get", "Get", "PROPFIND", "", "G ET"]),
        st.text(max_size=40),
    ),
    st.booleans(),
)
def test_the_method_checks_answer_as_the_rules_in_order(method: str, websocket: bool) -> None:
    try:
        canonical._check_method(method, websocket=websocket)
    except RequestRejected as rejected:
        answer = str(rejected.code)
    else:
        answer = "ok"
    assert answer == method_rules(method, websocket)


# --- 50: equivalent spellings of /admin ------------------------------------------------------


def _hex(octet: int, upper: bool) -> str:
    text = f"%{octet:02x}"
    return text.upper() if upper else text


def _spell_char(char: str, how: int, upper: bool) -> str:
    octet = ord(char)
    if how == 0:
        return char
    if how == 1:
        return _hex(octet, upper)  # plain percent-encoding
    if how == 2:
        return "%25" + _hex(octet, upper)[1:]  # double encoding
    # Overlong two-byte UTF-8 form of an ASCII character (RFC 3629 forbids it).
    return _hex(0xC0 | (octet >> 6), upper) + _hex(0x80 | (octet & 0x3F), upper)


@st.composite
def admin_word(draw: st.DrawFn) -> str:
    return "".join(
        _spell_char(char, draw(st.integers(0, 3)), draw(st.booleans())) for char in "admin"
    )


SEPARATORS = st.sampled_from(
    ["/", "//", "\\", "%2f", "%2F", "%5c", "%5C", "%252f", "%255c", "%c0%af", "%ef%bc%8f", "/./"]
)
UP = st.sampled_from(
    [
        "..",
        "%2e%2e",
        "%2E%2E",
        ".%2e",
        "%2e.",
        "%252e%252e",
        "%c0%ae%c0%ae",
        "%ef%bc%8e%ef%bc%8e",
        "..;",
        ".. ",
        "..%00",
    ]
)


@st.composite
def admin_behind_api(draw: st.DrawFn) -> str:
    """'/api/' + one or more ways up, each with a separator, + a spelling of 'admin'.

    Every member names '/admin' to a server that decodes, folds or resolves the way some
    servers do; none of them may reach an upstream as something '/api/*' allows.
    """
    ups = draw(st.lists(UP, min_size=1, max_size=3))
    separators = draw(st.lists(SEPARATORS, min_size=len(ups), max_size=len(ups)))
    trail = draw(st.sampled_from(["", "/", "%2f", "?x=1", "#x", ";a=1"]))
    climb = "".join(up + separator for up, separator in zip(ups, separators, strict=True))
    return "/api/" + climb + draw(admin_word()) + trail


@settings(max_examples=400)
@given(admin_behind_api())
@example("/api/../admin")
@example("/api/%2e%2e%2fadmin")
@example("/api/..%5cadmin")
@example("/api/%252e%252e/admin")
@example("/api/%c0%ae%c0%ae/admin")
@example("/api/%ef%bc%8e%ef%bc%8e%ef%bc%8fadmin")
def test_50_no_spelling_of_admin_is_accepted_and_matched(raw: str) -> None:
    request = attempt(raw)
    if request is None:
        return
    assert not API.matches(request.segments, request.trailing_slash)
    assert not API_TREE.matches(request.segments, request.trailing_slash)


@settings(max_examples=300)
@given(admin_word(), st.sampled_from(["", "/"]))
def test_50_a_spelling_of_root_admin_never_matches_the_api_patterns(word: str, trail: str) -> None:
    request = attempt("/" + word + trail)
    if request is None:
        return
    assert request.segments == ("admin",)
    assert not API.matches(request.segments, request.trailing_slash)
    assert not API_TREE.matches(request.segments, request.trailing_slash)


# --- robustness: only RequestRejected, whatever the input -------------------------------------


TEXT = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda data: data.decode("latin-1")),
    st.text(alphabet=st.characters(codec="ascii"), max_size=200),
)


@settings(max_examples=300)
@given(
    request_target=TEXT,
    method=st.one_of(TEXT, st.sampled_from(["GET", "POST", "DELETE"])),
    target=st.one_of(TEXT, st.sampled_from(["erp", "erp.corp.local:8443", "[fd00::5]:9443"])),
    headers=st.lists(st.tuples(TEXT, TEXT), max_size=8),
    websocket=st.booleans(),
)
def test_arbitrary_input_raises_only_request_rejected(
    request_target: str,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    websocket: bool,
) -> None:
    request = attempt(
        "/" + request_target if len(request_target) % 2 else request_target,
        method=method,
        target=target,
        headers=headers,
        websocket=websocket,
    )
    if request is not None:
        assert attempt(request.path, target=request.target) is not None


# --- one reading: what a target decodes is what was judged --------------

# Pieces chosen to be read differently by different servers: '%' in every depth of encoding,
# encoded delimiters, white space next to dots, and characters that Windows "best fit"
# conversion or NFKC folding turn into structure.
ADVERSARIAL = st.sampled_from(
    [
        "a",
        "admin",
        ".",
        "..",
        "...",
        ";",
        "%25",
        "%2525",
        "%252e",
        "%252F",
        "%25%32%65",
        "%3b",
        "%3B",
        "%3f",
        "%23",
        "%20",
        "%09",
        "%C2%A0",
        "%E3%80%80",
        "%2e",
        "%41",
        "%E2%88%95",
        "%E2%88%96",
        "%E2%A7%B5",
        "%E2%81%84",
        "%C2%A5",
        "%E2%82%A9",
        "%EF%BC%8F",
        "%EF%BC%BC",
        "%E2%80%A4",
        "%C3%A9",
    ]
)
ADVERSARIAL_PATHS = st.lists(
    st.lists(ADVERSARIAL, min_size=1, max_size=4).map("".join), min_size=1, max_size=4
).map(lambda segments: "/" + "/".join(segments))
# What Windows "best fit" conversion (code pages 1252, 932, 949) makes of characters NFKC leaves
# alone, written from the published mapping tables: the test's own model of a folding server.
BEST_FIT = str.maketrans(
    {"\u2215": "/", "\u2044": "/", "\u2216": "\\", "\u29f5": "\\", "\u00a5": "\\", "\u20a9": "\\"}
)
WHITE_SPACE = " \t\u00a0\u3000"


def _readings(path: str) -> list[str]:
    """How servers that decode once, twice, or decode and then fold, read ``path``."""
    once = urllib.parse.unquote(path, errors="strict")
    twice = urllib.parse.unquote(once, errors="replace")
    return [once, twice, unicodedata.normalize("NFKC", once), once.translate(BEST_FIT)]


@settings(max_examples=600)
@given(ADVERSARIAL_PATHS)
@example("/api/100%25")
@example("/api/%252e%252e/admin")
@example("/api/admin%3Bjsessionid")
@example("/api/..%20/admin")
@example("/api/%E2%88%95admin")
def test_every_reading_of_an_accepted_path_has_the_judged_structure(raw: str) -> None:
    request = attempt(raw)
    if request is None:
        return
    for reading in _readings(request.path):
        segments = reading[1:].split("/")
        # Same segments, no delimiter or escape created by the decoding or folding.
        assert len(segments) == len(request.segments), reading
        assert not set("\\;?#%") & set(reading), reading
        for segment in segments:
            # No dot segment, even after trimming white space and trailing dots as Windows does.
            assert segment.strip(WHITE_SPACE).rstrip(".") not in ("", "."), reading
