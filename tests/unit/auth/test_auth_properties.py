"""Property tests with adversarial inputs.

* Any single-byte change to a covered component (method, authority, path, query, the gateway-id
  header) or to the body makes verification fail.
* Arbitrary garbage in Signature / Signature-Input (and in the other inputs) never raises anything
  but ``SignatureError``.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.auth import ReplayCache, SignatureError, SignatureVerifier, VerifiedRequest
from tests.unit.auth.harness import AUTHORITY, GATEWAY_ID, HC_PATH, PATH, Harness

BODY = b'{"order": 17, "lines": [1, 2, 3]}'
QUERY = "expand=1&x=%2F"
PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def flip(text: str, position: int, value: int, *, ignore_case: bool = False) -> str:
    """``text`` with the byte at ``position`` replaced by a different printable ASCII byte.

    With ``ignore_case`` the replacement also differs case-insensitively (the host in
    ``@authority`` is case-insensitive and normalised to lower case, RFC 9421 section 2.2.3).
    """
    data = bytearray(text.encode("ascii"))
    index = position % len(data)
    original = chr(data[index]).lower() if ignore_case else chr(data[index])
    for step in range(94):
        replacement = chr(0x21 + (value + step) % 94)
        if (replacement.lower() if ignore_case else replacement) != original:
            break
    data[index] = ord(replacement)
    return data.decode("ascii")


def fresh_verifier(harness: Harness) -> SignatureVerifier:
    """A verifier with an empty replay cache, so the unchanged request would be accepted."""
    return SignatureVerifier(
        harness.keys,
        ReplayCache(max_entries=100, clock=harness.gateway_clock),
        gateway_id=GATEWAY_ID,
        hc_path=HC_PATH,
        settings=harness.settings,
        clock=harness.gateway_clock,
    )


@PROPERTY_SETTINGS
@given(
    field=st.sampled_from(["method", "authority", "path", "query", "gateway-id", "body"]),
    position=st.integers(min_value=0, max_value=10_000),
    value=st.integers(min_value=0, max_value=255),
)
def test_any_single_byte_change_to_covered_data_fails(
    harness: Harness, field: str, position: int, value: int
) -> None:
    headers = harness.sign(body=BODY, query=QUERY)
    request: dict[str, object] = {
        "method": "POST",
        "authority": AUTHORITY,
        "path": PATH,
        "query": QUERY,
        "headers": headers,
        "body": BODY,
    }
    assert isinstance(fresh_verifier(harness).verify(**request), VerifiedRequest)  # type: ignore[arg-type]
    if field == "body":
        data = bytearray(BODY)
        index = position % len(data)
        data[index] ^= 1 + value % 255
        request["body"] = bytes(data)
    elif field == "gateway-id":
        request["headers"] = [
            (n, flip(v, position, value) if n == "x-gateway-id" else v) for n, v in headers
        ]
    elif field == "path":
        # Keep the Hybrid Connection prefix so the change reaches the signature check.
        prefix = f"/{HC_PATH}/"
        request["path"] = prefix + flip(PATH[len(prefix) :], position, value)
    else:
        request[field] = flip(
            str(request[field]), position, value, ignore_case=field == "authority"
        )
    with pytest.raises(SignatureError):
        fresh_verifier(harness).verify(**request)  # type: ignore[arg-type]


sf_text = st.text(
    alphabet=st.characters(min_codepoint=0, max_codepoint=0x2FF), max_size=300
) | st.sampled_from(
    [
        'eid=("@method" "@authority");created=1;keyid="ed-1";nonce="n";tag="gateway-request"',
        "eid=:AAAA:",
        'eid=();tag="gateway-request"',
        'eid=("@method";req);tag="gateway-request";keyid="ed-1";created=1;nonce="x"',
        "eid=?1",
        'eid=(("a"))',
        'eid=("\\\\")',
        'eid=("@query-param";name=1);tag="gateway-request"',
        'eid=("x";key="a";sf);tag="gateway-request";keyid="ed-1";created=1750000000;nonce="n"',
    ]
)


@PROPERTY_SETTINGS
@given(
    sig_input=sf_text,
    signature=sf_text,
    method=st.sampled_from(["GET", "POST", "get", "", "G E T"]),
    path=st.sampled_from([PATH, f"/{HC_PATH}", "", "/", f"/{HC_PATH}/\x00", f"/{HC_PATH}/é"]),
    extra=st.lists(st.tuples(st.text(max_size=20), st.text(max_size=40)), max_size=5),
    body=st.none() | st.binary(max_size=64),
)
def test_garbage_only_ever_raises_signature_error(
    harness: Harness,
    sig_input: str,
    signature: str,
    method: str,
    path: str,
    extra: list[tuple[str, str]],
    body: bytes | None,
) -> None:
    headers = [("Signature-Input", sig_input), ("Signature", signature), *extra]
    with pytest.raises(SignatureError) as caught:
        harness.verify(headers, method=method, path=path, body=body)
    assert caught.value.status in (401, 431, 503)


@PROPERTY_SETTINGS
@given(
    param=st.sampled_from(["created", "expires", "keyid", "nonce", "alg", "tag"]),
    value=st.sampled_from(['""', "-1", "1.5", "?0", ":AA==:", "tok", "99999999999999", '"é"']),
)
def test_garbage_parameter_values_of_a_real_signature(
    harness: Harness, param: str, value: str
) -> None:
    headers = harness.sign()
    sig_input = dict(headers)["Signature-Input"]
    assert f";{param}=" in sig_input
    tampered = re.sub(rf";{param}=[^;]*", lambda _: f";{param}={value}", sig_input)
    changed = [(n, tampered if n == "Signature-Input" else v) for n, v in headers]
    with pytest.raises(SignatureError):
        harness.verify(changed)
