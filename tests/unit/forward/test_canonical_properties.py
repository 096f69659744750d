"""Hypothesis properties of the canonicaliser (catalogue B 49 and 50) and its robustness.

49: whatever path is accepted, the canonical path is a fixed point of canonicalisation, is exactly
the string forwarded (``request_target``), and is exactly the segments the policy matches.
50: no spelling of ``/admin`` (mixed-case hex, double encoding, overlong UTF-8, backslashes, dot
segments, look-alike characters, ...) behind ``/api/`` is both accepted and matched by ``/api/*``.
Arbitrary text in any argument raises nothing but ``RequestRejected``.
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.config.patterns import PathPattern
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
