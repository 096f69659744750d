"""Header sets a target could read differently from the gateway, through the full pipeline as
relay JSON.

The relay's JSON holds one value per header name; keys that differ only in case are two field
lines by the time they reach a target. A covered field on two lines is signed joined (RFC 9421
section 2.1) while a target may act on one line: 401. Any other name on two lines: 400. A
``Content-Length`` that is not the size of the body the relay delivered: 400, never re-framed.
"""

from __future__ import annotations

import pytest

from gateway.auth.verifier import REQUIRED_COMPONENTS
from tests.security.pipeline.conftest import PipelineEnv

pytestmark = pytest.mark.asyncio(loop_scope="module")

Headers = list[tuple[str, str]]


def _split(signed: Headers, name: str, lines: list[str]) -> Headers:
    """``signed`` with header ``name`` replaced by one JSON key per line, in different cases."""
    kept = [(n, v) for n, v in signed if n.lower() != name.lower()]
    spellings = [name.title(), name.lower(), name.upper()]
    return kept + [(spellings[i], value) for i, value in enumerate(lines)]


@pytest.mark.parametrize(
    ("name", "lines", "path", "body"),
    [
        ("authorization", ["Bearer a", "Bearer b"], "/session/me", b""),
        ("content-type", ["application/json", "text/plain"], "/api/orders", b"{}"),
        ("cookie", ["a=1", "a=2"], "/session/me", b""),
    ],
)
async def test_a_covered_field_on_two_lines_is_401(
    env: PipelineEnv, name: str, lines: list[str], path: str, body: bytes
) -> None:
    method = "POST" if body else "GET"
    async with env.saas() as saas:
        assert saas.signer is not None
        # Signed exactly as the two lines join (RFC 9421 section 2.1): the signature verifies.
        signed = saas.signer.sign(
            method=method,
            authority=saas.namespace,
            path=f"/{saas.hc}/erp{path}",
            headers=[(name, ", ".join(lines))],
            body=body or None,
            components=(*REQUIRED_COMPONENTS, *(("content-digest",) if body else ()), name),
        )
        response, _ = await saas.relay_json(
            method, "erp", path, body=body, signed_headers=_split(signed, name, lines)
        )
    assert (response.status, response.reason_code) == (401, "duplicate_covered_field")
    env.assert_never_forwarded()


@pytest.mark.parametrize(
    ("name", "lines"),
    [("accept", ["application/json", "text/html"]), ("authorization", ["Bearer a", "Bearer b"])],
)
async def test_an_uncovered_name_in_two_cases_is_400(
    env: PipelineEnv, name: str, lines: list[str]
) -> None:
    async with env.saas() as saas:
        signed = saas.signed_headers("GET", f"/{saas.hc}/erp/session/me", "", [(name, lines[0])])
        response, _ = await saas.relay_json(
            "GET", "erp", "/session/me", signed_headers=_split(signed, name, lines)
        )
    assert (response.status, response.reason_code) == (400, "duplicate_header")
    env.assert_never_forwarded()


@pytest.mark.parametrize(("declared", "body"), [("10", b"hello"), ("3", b"hello"), ("1", b"")])
async def test_content_length_other_than_the_delivered_body_is_400(
    env: PipelineEnv, declared: str, body: bytes
) -> None:
    method = "POST" if body else "GET"
    response = await env.send_json(
        method, "erp", "/api/orders", headers=[("Content-Length", declared)], body=body
    )
    assert (response.status, response.reason_code) == (400, "content_length_mismatch")
    env.assert_never_forwarded()


async def test_content_length_equal_to_the_body_is_forwarded_once(env: PipelineEnv) -> None:
    response = await env.send_json(
        "POST", "erp", "/api/orders", headers=[("Content-Length", "5")], body=b"hello"
    )
    assert response.status == 200, response.body
    assert env.forwarded_once().body == b"hello"
