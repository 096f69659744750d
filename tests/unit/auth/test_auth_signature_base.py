"""The verifier's own signature base (RFC 9421 section 2.5) agrees with the signing library's.

The verifier assembles the base itself instead of calling the library's ``verify()``; these tests
sign with the library (as the SaaS does) and check that what it signed verifies here, for the
parameter values whose serialisation needs escaping and for component identifiers that carry
parameters.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.auth import VerifiedRequest
from gateway.auth.verifier import REQUIRED_COMPONENTS
from tests.unit.auth.harness import Harness

# RFC 8941 section 3.3.3: a String holds printable ASCII; '"' and '\' are escaped when serialised.
SF_STRING = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=64)


@settings(max_examples=60, deadline=None)
@given(nonce=SF_STRING.filter(bool), escaped=st.sampled_from(['"', "\\", '\\"', "\\\\"]))
def test_parameters_needing_escapes_verify(nonce: str, escaped: str) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        harness = Harness(Path(scratch) / "state")
        nonce = (nonce + escaped)[:128]
        result = harness.verify(harness.sign(nonce=nonce))
    assert isinstance(result, VerifiedRequest)
    assert result.nonce == nonce


@pytest.mark.parametrize("which", ["ed", "ec"])
def test_parameterised_component_verifies(harness: Harness, which: str) -> None:
    signer = harness.ed if which == "ed" else harness.ec
    components = (*REQUIRED_COMPONENTS, '"@query-param";name="expand"')
    result = harness.verify(harness.sign(signer, components=components))
    assert isinstance(result, VerifiedRequest)
    assert '"@query-param";name="expand"' in result.covered


def test_covered_values_are_reported_as_in_the_base(harness: Harness) -> None:
    result = harness.verify(harness.sign(body=b"{}"), body=b"{}")
    assert isinstance(result, VerifiedRequest)
    assert result.covered == (
        '"@method"',
        '"@authority"',
        '"@path"',
        '"@query"',
        '"x-gateway-id"',
        '"content-digest"',
    )
    assert result.body_verified
