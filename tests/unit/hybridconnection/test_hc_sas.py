"""SAS token creation and validation (protocol notes section 2)."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.hybridconnection.errors import (
    BadSignatureError,
    MalformedTokenError,
    TokenError,
    TokenExpiredError,
    UnknownKeyNameError,
    WrongResourceError,
)
from gateway.hybridconnection.sas import (
    create_token,
    parse_token,
    resource_covers,
    resource_uri,
    validate_token,
)

# Section 2.1 test vector (computed with Python hmac and node crypto).
KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG="
RULE = "RootManageSharedAccessKey"
VECTOR = (
    "SharedAccessSignature sr=http%3A%2F%2Fcontoso.servicebus.windows.net%2Fhyco%2F"
    "&sig=7fC5FyPigmAZMEuXL6jYRje%2BWzZ081tr%2FWXoJBHs9RU%3D&se=1700000000"
    "&skn=RootManageSharedAccessKey"
)
LOWER_SR = "http%3a%2f%2fcontoso.servicebus.windows.net%2fhyco%2f"
NS = "contoso.servicebus.windows.net"


def before_expiry() -> float:
    return 1_699_999_000.0


def validate(token: str, *, path: str = "hyco", host: str = NS) -> None:
    validate_token(
        token, keys={RULE: KEY}, namespace_host=host, entity_path=path, clock=before_expiry
    )


def test_create_token_reproduces_the_published_vector() -> None:
    resource = "http://contoso.servicebus.windows.net/hyco/"
    assert create_token(resource, RULE, KEY, expiry=1_700_000_000) == VECTOR
    assert resource_uri("Contoso.servicebus.windows.net", "/hyco") == resource


def test_vector_validates() -> None:
    validate(VECTOR)


def test_signature_is_over_the_raw_sr_so_lowercase_escapes_have_their_own_signature() -> None:
    sig = quote("+Mc9HAlk0UJwGxbvpCpQfj2OKL8hVqZvBvIAMKJu06Y=", safe="")
    validate(f"SharedAccessSignature sr={LOWER_SR}&sig={sig}&se=1700000000&skn={RULE}")
    # The uppercase-escape signature does not fit the lowercase-escape sr.
    swapped = VECTOR.replace("http%3A%2F%2Fcontoso.servicebus.windows.net%2Fhyco%2F", LOWER_SR)
    with pytest.raises(BadSignatureError):
        validate(swapped)


def test_field_order_and_prefix_case_do_not_matter() -> None:
    parts = dict(p.split("=", 1) for p in VECTOR.split(" ", 1)[1].split("&"))
    reordered = "sharedaccesssignature " + "&".join(
        f"{k}={parts[k]}" for k in ("sig", "se", "skn", "sr")
    )
    validate(reordered)


def test_raw_slash_in_sig_from_the_python_sample_is_accepted() -> None:
    validate(VECTOR.replace("%2FWXoJ", "/WXoJ"))


def test_expiry_uses_the_injected_clock() -> None:
    with pytest.raises(TokenExpiredError):
        validate_token(
            VECTOR,
            keys={RULE: KEY},
            namespace_host=NS,
            entity_path="hyco",
            clock=lambda: 1_700_000_000.0,
        )


def test_unknown_rule_and_wrong_key_are_refused() -> None:
    with pytest.raises(UnknownKeyNameError):
        validate_token(
            VECTOR, keys={"other": KEY}, namespace_host=NS, entity_path="hyco", clock=before_expiry
        )
    with pytest.raises(BadSignatureError):
        validate_token(
            VECTOR,
            keys={RULE: KEY + "x"},
            namespace_host=NS,
            entity_path="hyco",
            clock=before_expiry,
        )


@pytest.mark.parametrize(
    ("resource", "host", "path", "covers"),
    [
        ("http://contoso.servicebus.windows.net/hyco/", NS, "hyco", True),
        # hyco-* keep the port and drop the trailing slash (section 2.2).
        ("http://contoso.servicebus.windows.net:443/hyco", NS, "hyco", True),
        ("sb://CONTOSO.servicebus.windows.net/", NS, "hyco", True),
        ("http://contoso.servicebus.windows.net/$hc/hyco", NS, "hyco", True),
        ("http://contoso.servicebus.windows.net/HYCO", NS, "hyco", True),
        ("http://contoso.servicebus.windows.net/a", NS, "a/b", True),
        ("http://contoso.servicebus.windows.net/a/b", NS, "a", False),
        ("http://contoso.servicebus.windows.net/hy", NS, "hyco", False),
        ("http://contoso.servicebus.windows.net/hyco2", NS, "hyco", False),
        ("http://other.servicebus.windows.net/hyco", NS, "hyco", False),
        ("http://127.0.0.1:8080/hyco", "127.0.0.1", "hyco", True),
        ("http://[::1", NS, "hyco", False),
        ("not a url", NS, "hyco", False),
    ],
)
def test_resource_scope_rules(resource: str, host: str, path: str, covers: bool) -> None:
    assert resource_covers(resource, host, path) is covers


def test_token_for_another_entity_is_wrong_resource() -> None:
    with pytest.raises(WrongResourceError):
        validate(VECTOR, path="other")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "Bearer abc",
        "SharedAccessSignature",
        "SharedAccessSignature sr=a&sig=b&se=1",
        "SharedAccessSignature sr=a&sig=b&se=1&skn=c&sr=d",
        "SharedAccessSignature sr=a&sig=AAAA&se=12x&skn=c",
        "SharedAccessSignature sr=a&sig=%%%&se=1&skn=c",
        "SharedAccessSignature sr=a&sig=QUJD&se=1&skn=c",
        "SharedAccessSignature sr=a&sig=b&se=1&skn=c&extra=1",
        "SharedAccessSignature sr=&sig=b&se=1&skn=c",
        "SharedAccessSignature sr=a\n&sig=b&se=1&skn=c",
        "SharedAccessSignature " + "x" * 5000,
    ],
)
def test_malformed_tokens(token: str) -> None:
    with pytest.raises(MalformedTokenError):
        parse_token(token)


def test_error_messages_never_contain_the_token() -> None:
    with pytest.raises(TokenError) as caught:
        validate(VECTOR, path="other")
    assert "7fC5" not in str(caught.value)
    assert "contoso" not in str(caught.value)


_keys = st.text(min_size=1, max_size=60).filter(lambda k: "\x00" not in k)
_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789-_.", min_size=1, max_size=30)
_paths = st.lists(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=10),
    min_size=1,
    max_size=3,
).map("/".join)


@given(_keys, _names, _paths, st.integers(1, 2**33))
def test_round_trip(key: str, name: str, path: str, expiry: int) -> None:
    token = create_token(resource_uri(NS, path), name, key, expiry=expiry)
    parsed = validate_token(
        token, keys={name: key}, namespace_host=NS, entity_path=path, clock=lambda: expiry - 1
    )
    assert parsed.expiry == expiry
    assert parsed.key_name == name


@given(_keys, st.integers(0, 10_000), st.data())
def test_any_single_character_change_is_detected(
    key: str, position: int, data: st.DataObject
) -> None:
    token = create_token(resource_uri(NS, "hyco"), RULE, key, expiry=1_700_000_000)
    body_start = len("SharedAccessSignature ")
    index = body_start + position % (len(token) - body_start)
    replacement = data.draw(st.sampled_from("AbZz09%&=+/_-."))
    tampered = token[:index] + replacement + token[index + 1 :]
    if tampered == token:
        return
    try:
        validate_token(
            tampered, keys={RULE: key}, namespace_host=NS, entity_path="hyco", clock=before_expiry
        )
    except TokenError:
        return
    # The only accepted changes are ones that decode to the same signature and fields
    # (e.g. a different spelling of the same percent-escape in sig or skn).
    original, changed = parse_token(token), parse_token(tampered)
    assert (changed.signature, changed.expiry, changed.key_name, changed.resource) == (
        original.signature,
        original.expiry,
        original.key_name,
        original.resource,
    )


@given(st.text(max_size=300))
def test_parser_only_raises_token_errors(token: str) -> None:
    try:
        parsed = parse_token(token)
    except MalformedTokenError:
        return
    assert len(parsed.signature) == 32
