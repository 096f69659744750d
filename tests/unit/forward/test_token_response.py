"""Token endpoint answers (RFC 6749 sections 5.1 and 5.2): what is accepted, and that nothing
the endpoint sends, other than a well-formed error code, reaches a message."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.forward.oauth import MAX_LIFETIME, CredentialError, parse_token_response

WHERE = "token endpoint https://idp/oauth2/token"


def parse(answer: Any, status: int = 200, refresh_before: float = 60) -> Any:
    body = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
    return parse_token_response(
        body, status, started=100.0, refresh_before=refresh_before, where=WHERE
    )


def test_a_bearer_token_with_its_lifetime() -> None:
    token = parse({"access_token": "abc.DEF-_~+/==", "token_type": "bearer", "expires_in": 600})
    assert token.value.get_secret_value() == "abc.DEF-_~+/=="
    assert (token.expires_at, token.refresh_at) == (700.0, 640.0)
    # The refresh margin is at most half the lifetime; a missing lifetime is a short default.
    short = parse({"access_token": "t", "token_type": "Bearer", "expires_in": 10})
    assert short.refresh_at == 105.0
    default = parse({"access_token": "t", "token_type": "Bearer"})
    assert default.expires_at == 400.0
    long = parse({"access_token": "t", "token_type": "Bearer", "expires_in": 10**400})
    assert long.expires_at == 100.0 + MAX_LIFETIME


@pytest.mark.parametrize(
    ("answer", "status", "code", "shown"),
    [
        (
            {"error": "invalid_client", "error_description": "secret xyz"},
            401,
            "token_endpoint_error",
            "invalid_client",
        ),
        ({"error": "a\nb"}, 400, "token_endpoint_error", "no code"),
        ({"access_token": "t", "token_type": "mac"}, 200, "token_endpoint_error", "not a bearer"),
        ({"access_token": "t x", "token_type": "Bearer"}, 200, "token_endpoint_error", "usable"),
        (
            {"access_token": "t", "token_type": "Bearer", "expires_in": 0},
            200,
            "token_endpoint_error",
            "expires_in",
        ),
        (
            {"access_token": "t", "token_type": "Bearer", "expires_in": True},
            200,
            "token_endpoint_error",
            "expires_in",
        ),
        (b"<html>", 200, "token_endpoint_error", "without a JSON object"),
        ([], 200, "token_endpoint_error", "without a JSON object"),
        (b"", 503, "token_endpoint_unavailable", "503"),
    ],
)
def test_wrong_answers_fail_closed(answer: Any, status: int, code: str, shown: str) -> None:
    with pytest.raises(CredentialError) as caught:
        parse(answer, status)
    assert caught.value.code == code
    assert shown in str(caught.value)
    assert "secret xyz" not in str(caught.value)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "access_token": _JSON | st.just("MARKER-token"),
        "token_type": st.sampled_from(["Bearer", "bearer", "MAC", ""]) | _JSON,
        "expires_in": _JSON,
        "error": _JSON | st.just("MARKER-error"),
        "error_description": st.just("MARKER-description"),
    },
)


@given(_FIELDS, st.sampled_from([200, 400, 401, 500]))
def test_any_answer_is_a_token_or_a_credential_error_without_its_content(
    answer: dict[str, Any], status: int
) -> None:
    outcome: Any
    try:
        outcome = parse(answer, status)
    except CredentialError as exc:
        outcome = exc
    if isinstance(outcome, CredentialError):
        assert outcome.status in (502, 503)
        assert "MARKER-description" not in str(outcome)
        assert "MARKER-token" not in str(outcome)
        return
    assert status == 200
    assert outcome.refresh_at <= outcome.expires_at
    assert outcome.expires_at > 100.0


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_escape_as_another_exception(body: bytes) -> None:
    with contextlib.suppress(CredentialError):
        parse(body)
