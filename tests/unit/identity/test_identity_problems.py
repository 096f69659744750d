"""Control-plane error translation (RFC 9457 problem+json) and client input checks."""

from __future__ import annotations

import json
import re
import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.identity.controlplane import (
    PROBLEM_TYPE_PREFIX,
    ControlPlaneClient,
    problem_error,
    sanitize_server_text,
)
from gateway.identity.errors import ControlPlaneError

_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _problem(**members: object) -> bytes:
    return json.dumps(members).encode()


def test_problem_type_gives_the_stable_code() -> None:
    error = problem_error(
        403,
        "application/problem+json",
        _problem(
            type=PROBLEM_TYPE_PREFIX + "missing_operation",
            title="The Person lacks operations",
            detail="missing: Register Server",
            status=403,
        ),
    )
    assert error.code == "missing_operation"
    assert error.status == 403
    assert "Register Server" in str(error)


@pytest.mark.parametrize(
    ("status", "content_type", "body", "code"),
    [
        (503, "text/html", b"<html>down</html>", "service_unavailable"),
        (502, "application/problem+json", b"{not json", "service_unavailable"),
        (429, "application/json", b"[]", "rate_limited"),
        (400, "application/problem+json", _problem(type="about:blank"), "unexpected_status"),
        (
            400,
            "application/problem+json",
            _problem(type=PROBLEM_TYPE_PREFIX + "Bad Code!"),
            "unexpected_status",
        ),
        (401, "application/problem+json", _problem(type=7), "unexpected_status"),
    ],
)
def test_unrecognised_answers_fall_back_to_status_codes(
    status: int, content_type: str, body: bytes, code: str
) -> None:
    assert problem_error(status, content_type, body).code == code


@given(
    status=st.integers(min_value=100, max_value=599),
    content_type=st.sampled_from(["application/problem+json", "application/json", "text/plain"]),
    body=st.one_of(
        st.binary(max_size=2048),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=400),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=8), inner, max_size=4)
            ),
            max_leaves=20,
        ).map(lambda value: json.dumps(value).encode()),
        st.fixed_dictionaries(
            {"type": st.text(max_size=80), "title": st.text(), "detail": st.text()}
        ).map(lambda value: json.dumps(value).encode()),
    ),
)
def test_any_answer_becomes_one_bounded_printable_error(
    status: int, content_type: str, body: bytes
) -> None:
    error = problem_error(status, content_type, body)
    assert isinstance(error, ControlPlaneError)
    assert _CODE.fullmatch(error.code)
    text = str(error)
    assert text.isascii()
    assert text.isprintable()
    assert len(text) < 800


def test_deeply_nested_json_is_not_a_crash() -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    assert problem_error(500, "application/json", body).code == "unexpected_status"


@given(st.text())
def test_server_text_is_sanitised(text: str) -> None:
    cleaned = sanitize_server_text(text)
    assert len(cleaned) <= 300
    assert cleaned == "" or (cleaned.isascii() and cleaned.isprintable())


@pytest.mark.parametrize(
    "url",
    [
        "http://cp.example/",
        "ftp://cp.example/",
        "https://user:pw@cp.example/",
        "https://cp.example/?x=1",
        "https://cp.example/#f",
        "https:///nohost",
    ],
)
def test_only_plain_https_base_urls_are_accepted(url: str) -> None:
    with pytest.raises(ControlPlaneError) as info:
        ControlPlaneClient(url, ssl.create_default_context(), client_certificate=False)
    assert info.value.code == "invalid_url"


def test_base_url_path_prefix_is_kept() -> None:
    client = ControlPlaneClient(
        "https://cp.example/tenant-a", ssl.create_default_context(), client_certificate=False
    )
    assert client.base_url == "https://cp.example/tenant-a/"
