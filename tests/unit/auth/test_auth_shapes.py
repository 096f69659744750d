"""The verifier reads requests of a shape it has seen authentic without the general reading.

The shaped reading (fast path 5 of gateway/auth/verifier.py) never refuses on its own: for
anything it cannot vouch for it steps aside (``None``) before any cryptography, and the general
reading decides. What is pinned here: which requests teach a shape (authentic ones only, and only
shapes whose components are read directly), how many shapes are kept, that the shaped reading
answers for the signer's requests up to every limit, and that what it answers is what the general
reading answers. Every refusal is checked on a verifier that knows the signer's shapes by the
``primed`` runs of the other tests in this directory (tests/unit/auth/conftest.py), and fuzzed
against the package in test_auth_fast_path.py.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from gateway.auth import (
    ReplayCache,
    SignatureError,
    SignatureVerifier,
    VerifiedRequest,
    VerifierSettings,
)
from gateway.auth.keys import shared_key
from gateway.auth.verifier import REQUIRED_COMPONENTS
from tests.unit.auth.harness import (
    AUTHORITY,
    GATEWAY_ID,
    HC_PATH,
    PATH,
    T0,
    Harness,
    handmade_signature,
    request_components,
)
from tests.unit.auth.test_auth_verifier import replace_header

SECRET = bytes(range(64, 96))
BODY = b'{"order": 17}'
COVERED = request_components()


def shaped(
    harness: Harness,
    headers: list[tuple[str, str]],
    *,
    verifier: SignatureVerifier | None = None,
    body: bytes | None = None,
    method: str | None = None,
    path: str = PATH,
    query: str = "expand=1",
    authority: str = AUTHORITY,
) -> object:
    """What the shaped reading alone makes of a request: the verified request, the refusal it
    raised after its own checks (time, signature, digest), or ``None`` where it steps aside."""
    try:
        authentic = (verifier or harness.verifier)._shaped(
            method or ("POST" if body is not None else "GET"),
            authority,
            path,
            query,
            headers,
            body,
        )
    except SignatureError as refusal:
        return refusal.reason
    return None if authentic is None else authentic.verified


def learn(harness: Harness, headers: list[tuple[str, str]], **options: Any) -> None:
    """Verify one authentic request on the harness's verifier (which may learn its shape)."""
    assert isinstance(harness.verify(headers, **options), VerifiedRequest)


@pytest.fixture
def fresh(tmp_path: Path) -> Harness:
    return Harness(tmp_path / "state")


def test_a_shape_is_learnt_from_an_authentic_request_only(fresh: Harness) -> None:
    headers = fresh.sign()
    forged = replace_header(
        headers, "signature", "eid=:" + base64.b64encode(bytes(64)).decode() + ":"
    )
    with pytest.raises(SignatureError):
        fresh.verify(forged)
    assert shaped(fresh, fresh.sign()) is None
    learn(fresh, headers)
    assert isinstance(shaped(fresh, fresh.sign()), VerifiedRequest)
    # A request of another shape (with a body: Content-Digest covered) is still read in general.
    assert shaped(fresh, fresh.sign(body=BODY), body=BODY) is None


@pytest.mark.parametrize("which", ["ed", "ec", "hmac"])
@pytest.mark.parametrize("body", [None, b"", BODY])
def test_the_shaped_reading_answers_what_the_general_one_does(
    fresh: Harness, tmp_path: Path, which: str, body: bytes | None
) -> None:
    shared = shared_key("hmac-1", SECRET, not_before=T0 - 60, not_after=T0 + 3600)
    fresh.verifier.replace_keys(fresh.keys.with_keys([shared]))
    signer = {"ed": fresh.ed, "ec": fresh.ec}.get(which) or fresh.signer(SECRET, "hmac-1")
    learn(fresh, fresh.sign(signer, body=body), body=body)
    headers = fresh.sign(signer, body=body)
    found = shaped(fresh, headers, body=body)
    assert isinstance(found, VerifiedRequest)
    general = fresh.verify(headers, body=body, verifier=fresh.reference_verifier(tmp_path / "r"))
    assert found == general
    assert found.body_verified is (body is not None)


def test_the_shaped_reading_checks_the_digest_and_the_signature(fresh: Harness) -> None:
    learn(fresh, fresh.sign(body=BODY), body=BODY)
    assert shaped(fresh, fresh.sign(body=BODY), body=BODY + b" ") == "digest_mismatch"
    headers = fresh.sign(body=BODY)
    signature = dict(headers)["Signature"]
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    assert shaped(fresh, replace_header(headers, "signature", flipped), body=BODY) == (
        "bad_signature"
    )


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
def test_each_plain_method_is_read_as_a_shape(fresh: Harness, method: str) -> None:
    def sign() -> list[tuple[str, str]]:
        return fresh.ed.sign(method=method, authority=AUTHORITY, path=PATH, query="expand=1")

    learn(fresh, sign(), method=method)
    assert isinstance(shaped(fresh, sign(), method=method), VerifiedRequest)


@pytest.mark.parametrize(
    ("path", "query", "authority"),
    [
        (f"/{HC_PATH}", "", AUTHORITY),
        (f"/$hc/{HC_PATH}", "a=1", AUTHORITY),
        (f"/$hc/{HC_PATH}/x/y", "", f"{AUTHORITY}:443"),
        (PATH + "/a%2Fb:@", "q=%41&r=/?", "Contoso.Example:8443"),
    ],
)
def test_targets_in_the_uri_grammar_are_read_as_a_shape(
    fresh: Harness, path: str, query: str, authority: str
) -> None:
    learn(fresh, fresh.sign())

    def sign() -> list[tuple[str, str]]:
        return fresh.ed.sign(method="GET", authority=authority, path=path, query=query)

    found = shaped(fresh, sign(), path=path, query=query, authority=authority)
    assert isinstance(found, VerifiedRequest)
    # The same verifier, asked for another authority afterwards, reads that one.
    again = shaped(fresh, fresh.sign(), path=PATH, query="expand=1")
    assert isinstance(again, VerifiedRequest)


def test_the_shaped_reading_answers_up_to_every_limit(fresh: Harness) -> None:
    learn(fresh, fresh.sign())
    headers = fresh.sign()
    filled = [*headers, *((f"x-f{i}", "v") for i in range(256 - len(headers)))]
    assert isinstance(shaped(fresh, filled), VerifiedRequest)
    headers = fresh.sign()
    size = sum(len(n) + len(v) for n, v in headers)
    filled = [("x-big", "v" * (65536 - size - len("x-big"))), *headers]
    assert isinstance(shaped(fresh, filled), VerifiedRequest)
    assert isinstance(shaped(fresh, fresh.sign(nonce="n" * 128)), VerifiedRequest)
    # Blanks around the gateway id and a covered field's name in capitals.
    headers = [
        (name.upper(), f" \t{value} " if name.lower() == "x-gateway-id" else value)
        for name, value in fresh.sign()
    ]
    assert isinstance(shaped(fresh, headers), VerifiedRequest)


@pytest.mark.parametrize(("created", "expires"), [(2**40 - 2, 2**40 - 1), (0, 1)])
def test_timestamps_at_the_edges_of_the_range_are_judged_by_time(
    fresh: Harness, created: int, expires: int
) -> None:
    learn(fresh, fresh.sign())
    # The signer's shape (its parameters in its order), signed by hand at the edges.
    params = (
        f';created={created};keyid="ed-1";alg="ed25519";expires={expires};nonce="n"'
        ';tag="gateway-request"'
    )
    headers = [("x-gateway-id", GATEWAY_ID), *handmade_signature(fresh.ed_key, COVERED, params)]
    assert shaped(fresh, headers) == ("expired" if created == 0 else "clock_skew")


def test_the_signature_field_limit_is_inclusive(fresh: Harness) -> None:
    nonce = "n" * 22
    length = len(dict(fresh.sign(nonce=nonce))["Signature-Input"])
    cache = ReplayCache(max_entries=10, clock=fresh.gateway_clock)
    verifier = SignatureVerifier(
        fresh.keys,
        cache,
        gateway_id=GATEWAY_ID,
        hc_path=HC_PATH,
        settings=VerifierSettings(max_age=60, max_skew=30, max_signature_field_bytes=length),
        clock=fresh.gateway_clock,
    )
    learn(fresh, fresh.sign(nonce=nonce), verifier=verifier)
    found = shaped(fresh, fresh.sign(nonce=nonce), verifier=verifier)
    assert isinstance(found, VerifiedRequest)


@pytest.mark.parametrize(
    "components",
    [
        (*REQUIRED_COMPONENTS, '"@query-param";name="expand"'),
        (*REQUIRED_COMPONENTS, "@target-uri"),
    ],
)
def test_no_shape_is_learnt_where_a_component_needs_the_resolver(
    fresh: Harness, components: tuple[str, ...]
) -> None:
    learn(fresh, fresh.sign(components=components))
    assert shaped(fresh, fresh.sign(components=components)) is None
    assert not fresh.verifier._shapes


def test_a_shape_may_cover_other_header_fields(fresh: Harness) -> None:
    components = (*REQUIRED_COMPONENTS, "x-trace")
    extra = [("X-Trace", "t-1")]
    learn(fresh, fresh.ed.sign(method="GET", authority=AUTHORITY, path=PATH, query="expand=1",
                               headers=extra, components=components))  # fmt: skip
    headers = fresh.ed.sign(
        method="GET", authority=AUTHORITY, path=PATH, query="expand=1", headers=extra,
        components=components,
    )  # fmt: skip
    found = shaped(fresh, headers)
    assert isinstance(found, VerifiedRequest)
    assert found.covered[-1] == '"x-trace"'
    # Without its covered field, on two lines, or with a control character: read in general.
    assert shaped(fresh, [h for h in headers if h[0] != "X-Trace"]) is None
    assert shaped(fresh, [*headers, ("x-trace", "t-1")]) is None
    assert shaped(fresh, replace_header(headers, "x-trace", "t\x01")) is None


def _sign_covering(harness: Harness, field: str) -> list[tuple[str, str]]:
    return harness.ed.sign(
        method="GET",
        authority=AUTHORITY,
        path=PATH,
        query="expand=1",
        headers=[(field, "v")],
        components=(*REQUIRED_COMPONENTS, field),
    )


def test_at_most_eight_shapes_are_kept_the_oldest_forgotten_first(fresh: Harness) -> None:
    for index in range(8):
        learn(fresh, _sign_covering(fresh, f"x-s{index}"))
    # Learning a shape already known forgets nothing.
    learn(fresh, _sign_covering(fresh, "x-s7"))
    assert all(
        isinstance(shaped(fresh, _sign_covering(fresh, f"x-s{index}")), VerifiedRequest)
        for index in range(8)
    )
    learn(fresh, _sign_covering(fresh, "x-s8"))
    assert shaped(fresh, _sign_covering(fresh, "x-s0")) is None
    for index in range(1, 9):
        assert isinstance(shaped(fresh, _sign_covering(fresh, f"x-s{index}")), VerifiedRequest)


# -- on the edges, the shaped verifier answers what the package alone does ----------------------

SIGNER_PARAMS = ';created={created};keyid="ed-1";alg="ed25519";expires={expires};nonce="{nonce}"'


def _handmade(
    harness: Harness,
    *,
    created: int = int(T0),
    expires: int | str = int(T0) + 60,
    nonce: str = "n1",
    field: str | None = None,
    tag: str = "gateway-request",
    params: str | None = None,
    label: str = "eid",
) -> list[tuple[str, str]]:
    """A request signed by hand in the signer's shape (its parameters in its order), covering
    ``x-a`` as well when ``field`` is given (the line as sent; the base holds it trimmed);
    ``params`` replaces the parameters altogether."""
    if params is None:
        params = SIGNER_PARAMS.format(created=created, expires=expires, nonce=nonce)
        params += f';tag="{tag}"'
    covered = list(COVERED)
    lines = [("x-gateway-id", GATEWAY_ID)]
    if field is not None:
        # A base is ASCII: a non-ASCII line is signed as "a" (either way it never verifies).
        trimmed = field.strip(" \t")
        covered.append(("x-a", trimmed if trimmed.isascii() else "a"))
        lines.append(("X-A", field))
    return [*lines, *handmade_signature(harness.ed_key, covered, params, label)]


def _outcome(verifier: SignatureVerifier, headers: list[tuple[str, str]], **request: Any) -> Any:
    target = {"method": "GET", "authority": AUTHORITY, "path": PATH, "query": "expand=1"}
    try:
        found = verifier.verify(headers=headers, **(target | request))
    except SignatureError as refusal:
        return refusal.reason, refusal.detail, refusal.keyid
    assert isinstance(found, VerifiedRequest)
    return found.covered, found.created, found.expires, found.nonce


def _alike(
    fresh: Harness,
    tmp_path: Path,
    headers: list[tuple[str, str]],
    *,
    settings: VerifierSettings | None = None,
    **request: Any,
) -> Any:
    """The harness verifier's outcome, after checking it is a package-only verifier's."""
    ReplayCache.initialise(tmp_path)
    reference = SignatureVerifier(
        fresh.verifier.keys,
        ReplayCache.open(tmp_path, max_entries=10, max_skew=30, clock=fresh.gateway_clock),
        gateway_id=GATEWAY_ID,
        hc_path=HC_PATH,
        settings=settings or fresh.settings,
        clock=fresh.gateway_clock,
        reference=True,
    )
    outcome = _outcome(fresh.verifier, headers, **request)
    assert outcome == _outcome(reference, headers, **request)
    return outcome


@pytest.mark.parametrize(
    ("created", "expires", "answered"),
    [
        (int(T0), int(T0) + 1, True),
        (int(T0), int(T0), False),  # expires not after created
        (int(T0), int(T0) - 1, False),
        (2**40 - 1, 2**40, False),  # beyond the timestamp range
        (2**40, 2**40 + 1, False),
        (int(T0), "-5", False),
        (int(T0), "01", False),  # not a canonical Integer
    ],
)
def test_timestamps_of_a_known_shape_are_judged_as_in_general(
    fresh: Harness, tmp_path: Path, created: int, expires: int | str, answered: bool
) -> None:
    learn(fresh, _handmade(fresh, nonce="n0"))
    headers = _handmade(fresh, created=created, expires=expires)
    assert (shaped(fresh, headers) is not None) is answered
    _alike(fresh, tmp_path, headers)


@pytest.mark.parametrize(
    "field",
    [
        "a",
        " \ta\t ",
        "XaX",
        "a b",
        "",
        "a\tb",  # read in general
        "a\x01b",
        "a\x7f",
        "a\x0b",
        "a\u00a0",
        "a\r\n b",
        "é",
    ],
)
def test_covered_field_values_of_a_known_shape_are_judged_as_in_general(
    fresh: Harness, tmp_path: Path, field: str
) -> None:
    learn(fresh, _handmade(fresh, nonce="n0", field="v"))
    headers = _handmade(fresh, field=field)
    answered = field.strip(" \t").isascii() and field.strip(" \t").isprintable()
    assert (shaped(fresh, headers) is not None) is answered
    _alike(fresh, tmp_path, headers)


@pytest.mark.parametrize(
    "gateway_id",
    [GATEWAY_ID, f" {GATEWAY_ID}\t", f"X{GATEWAY_ID}X", "agent-2", f"{GATEWAY_ID}\x0b"],
)
def test_the_gateway_id_of_a_known_shape_is_judged_as_in_general(
    fresh: Harness, tmp_path: Path, gateway_id: str
) -> None:
    learn(fresh, _handmade(fresh, nonce="n0"))
    headers = replace_header(_handmade(fresh), "x-gateway-id", gateway_id)
    assert (shaped(fresh, headers) is not None) is (gateway_id.strip(" \t") == GATEWAY_ID)
    _alike(fresh, tmp_path, headers)


@pytest.mark.parametrize(
    ("nonce", "tag", "answered"),
    [
        ("n" * 128, "gateway-request", True),
        ("n)1", "gateway-request", True),
        ("n" * 129, "gateway-request", False),
        ("", "gateway-request", False),
        ("n1", "other", False),
        ("n1", "gateway-request2", False),
    ],
)
def test_nonce_and_tag_of_a_known_shape_are_judged_as_in_general(
    fresh: Harness, tmp_path: Path, nonce: str, tag: str, answered: bool
) -> None:
    learn(fresh, _handmade(fresh, nonce="n0"))
    headers = _handmade(fresh, nonce=nonce, tag=tag)
    assert (shaped(fresh, headers) is not None) is answered
    _alike(fresh, tmp_path, headers)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("signature", "eid=::"),
        ("signature", "eid=:AAA:"),
        ("signature", "sig=:AAAA:"),
        ("signature", " eid=:AAAA:"),
        ("signature-input", "eid=()"),
        ("signature-input", ""),
    ],
)
def test_signature_fields_of_a_known_shape_are_judged_as_in_general(
    fresh: Harness, tmp_path: Path, name: str, value: str
) -> None:
    learn(fresh, _handmade(fresh, nonce="n0"))
    headers = replace_header(_handmade(fresh), name, value)
    assert shaped(fresh, headers) is None
    _alike(fresh, tmp_path, headers)


@pytest.mark.parametrize("size", [1, 63, 65, 256])
def test_a_signature_of_any_admitted_size_is_checked_in_the_shaped_reading(
    fresh: Harness, tmp_path: Path, size: int
) -> None:
    learn(fresh, _handmade(fresh, nonce="n0"))
    value = "eid=:" + base64.b64encode(bytes(size)).decode() + ":"
    headers = replace_header(_handmade(fresh), "signature", value)
    assert shaped(fresh, headers) == "bad_signature"
    _alike(fresh, tmp_path, headers)


def test_a_signature_input_over_its_limit_is_refused_as_in_general(
    fresh: Harness, tmp_path: Path
) -> None:
    short = _handmade(fresh, nonce="n0")
    headers = _handmade(fresh, nonce="n" * 20)
    length = len(dict(headers)["Signature-Input"])
    settings = VerifierSettings(max_age=60, max_skew=30, max_signature_field_bytes=length - 1)
    fresh.verifier = SignatureVerifier(
        fresh.keys,
        ReplayCache(max_entries=10, clock=fresh.gateway_clock),
        gateway_id=GATEWAY_ID,
        hc_path=HC_PATH,
        settings=settings,
        clock=fresh.gateway_clock,
    )
    learn(fresh, short)
    assert shaped(fresh, headers) is None
    assert _alike(fresh, tmp_path, headers, settings=settings)[0] == "headers_too_large"


@pytest.mark.parametrize(
    "params",
    [
        ';tag="gateway-request";created={now};keyid="ed-1";nonce="{nonce}"',
        ';created={now};keyid="ed-1";nonce="{nonce}";tag="gateway-request"',
        ';nonce="{nonce}";keyid="ed-1";expires={later};tag="gateway-request";created={now}',
    ],
)
def test_shapes_with_other_parameters_in_other_orders_are_learnt(
    fresh: Harness, tmp_path: Path, params: str
) -> None:
    def sign(nonce: str) -> list[tuple[str, str]]:
        text = params.format(now=int(T0), later=int(T0) + 30, nonce=nonce)
        return _handmade(fresh, params=text)

    learn(fresh, sign("n0"))
    assert isinstance(shaped(fresh, sign("n1")), VerifiedRequest)
    _alike(fresh, tmp_path, sign("n2"))


@pytest.mark.parametrize("authority", ["a b", "[::1]", "h:x", "é", "Contoso.Example:0443"])
def test_an_authority_outside_the_uri_grammar_is_judged_as_in_general(
    fresh: Harness, tmp_path: Path, authority: str
) -> None:
    learn(fresh, _handmade(fresh, nonce="n0"))
    headers = _handmade(fresh)
    assert (shaped(fresh, headers, authority=authority) is None) is (":0443" not in authority)
    _alike(fresh, tmp_path, headers, authority=authority)


def test_a_label_and_a_tag_are_matched_as_they_are_written(fresh: Harness, tmp_path: Path) -> None:
    # Characters a pattern would read as operators: the shape must take them literally.
    settings = VerifierSettings(max_age=60, max_skew=30, tag="a.b+c")
    fresh.verifier = SignatureVerifier(
        fresh.keys,
        ReplayCache(max_entries=10, clock=fresh.gateway_clock),
        gateway_id=GATEWAY_ID,
        hc_path=HC_PATH,
        settings=settings,
        clock=fresh.gateway_clock,
    )
    learn(fresh, _handmade(fresh, nonce="n0", tag="a.b+c", label="s*.1"))
    assert isinstance(shaped(fresh, _handmade(fresh, tag="a.b+c", label="s*.1")), VerifiedRequest)
    for tag in ("aXbc", "a.bbc"):
        headers = _handmade(fresh, tag=tag, label="s*.1")
        assert shaped(fresh, headers) is None
        _alike(fresh, tmp_path / tag, headers, settings=settings)
    headers = _handmade(fresh, tag="a.b+c", label="s*.1")
    relabelled = [
        (name, "ss1" + value[4:] if name == "Signature" else value) for name, value in headers
    ]
    assert shaped(fresh, relabelled) is None
    _alike(fresh, tmp_path / "label", relabelled, settings=settings)


def test_a_key_of_a_known_shape_is_looked_up_as_in_general(fresh: Harness, tmp_path: Path) -> None:
    learn(fresh, _handmade(fresh, nonce="n0"))
    # Another algorithm named, a key id not pinned, a key no longer valid: read in general.
    for old, new in ((';alg="ed25519"', ';alg="ecdsa-p256-sha256"'), ('"ed-1"', '"ed-9"')):
        headers = [
            (name, value.replace(old, new) if name == "Signature-Input" else value)
            for name, value in _handmade(fresh)
        ]
        assert shaped(fresh, headers) is None
        _alike(fresh, tmp_path, headers)
    fresh.verifier.replace_keys(fresh.keyset(("ed-1", fresh.ed_key), lifetime=-1800.0))
    assert shaped(fresh, _handmade(fresh)) is None


def test_a_value_no_base_may_hold_is_refused_with_the_fixed_detail(fresh: Harness) -> None:
    # Read in general (a control character) whether or not the shape is known: the refusal is
    # bad_signature with its fixed detail and the key id, never the value.
    for _ in range(2):
        learn(fresh, _handmade(fresh, nonce=f"n{_}", field="v"))
        with pytest.raises(SignatureError) as caught:
            fresh.verify(_handmade(fresh, nonce="bad", field="a\x01b"))
        refusal = caught.value
        assert (refusal.reason, refusal.detail, refusal.keyid) == (
            "bad_signature",
            "signature does not verify",
            "ed-1",
        )


def test_a_signature_at_the_field_limit_is_checked_in_the_shaped_reading(fresh: Harness) -> None:
    value = "eid=:" + base64.b64encode(bytes(256)).decode() + ":"
    settings = VerifierSettings(max_age=60, max_skew=30, max_signature_field_bytes=len(value))
    fresh.verifier = SignatureVerifier(
        fresh.keys,
        ReplayCache(max_entries=10, clock=fresh.gateway_clock),
        gateway_id=GATEWAY_ID,
        hc_path=HC_PATH,
        settings=settings,
        clock=fresh.gateway_clock,
    )
    learn(fresh, _handmade(fresh, nonce="n0"))
    assert shaped(fresh, replace_header(_handmade(fresh), "signature", value)) == "bad_signature"


@pytest.mark.parametrize(("created", "answered"), [(2**40 - 1, True), (2**40, False)])
def test_created_at_the_end_of_the_range_without_expires(
    fresh: Harness, tmp_path: Path, created: int, answered: bool
) -> None:
    def sign(when: int, nonce: str) -> list[tuple[str, str]]:
        text = f';created={when};keyid="ed-1";alg="ed25519";nonce="{nonce}";tag="gateway-request"'
        return _handmade(fresh, params=text)

    learn(fresh, sign(int(T0), "n0"))
    headers = sign(created, "n1")
    # First beside the package (a third far-off sample would make the skew look systematic).
    _alike(fresh, tmp_path, headers)
    assert (shaped(fresh, headers) is not None) is answered


def test_the_gateway_id_may_come_after_another_covered_field(fresh: Harness) -> None:
    def sign(nonce: str) -> list[tuple[str, str]]:
        covered = [*COVERED[:4], ("x-a", "v"), COVERED[4]]
        params = SIGNER_PARAMS.format(created=int(T0), expires=int(T0) + 60, nonce=nonce)
        signed = handmade_signature(fresh.ed_key, covered, params + ';tag="gateway-request"')
        return [("X-A", "v"), ("x-gateway-id", GATEWAY_ID), *signed]

    learn(fresh, sign("n0"))
    found = shaped(fresh, sign("n1"))
    assert isinstance(found, VerifiedRequest)
    assert found.covered[-2:] == ('"x-a"', '"x-gateway-id"')
