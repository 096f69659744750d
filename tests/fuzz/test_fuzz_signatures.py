"""Signature inputs under structured attack (catalogue D 69-89): a real SaaS signature whose
``Signature-Input`` and ``Signature`` fields are rewritten the way RFC 8941 structured fields can
be rewritten - members added before or after, components swapped, parameters replaced, labels
changed, values re-encoded.

Invariants: the verifier raises nothing but ``SignatureError``; it accepts a request only when the
real, untouched signature member is present and verifies, and then reports every required
component as covered; every call is fast. The tests in tests/unit/auth flip bytes and feed
unstructured garbage; these keep the structure valid so the parser hands the edits on to the
checks behind it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import event, given, settings
from hypothesis import strategies as st

from gateway.auth import ReplayCache, SignatureError, SignatureVerifier, VerifiedRequest
from gateway.auth.verifier import REQUIRED_COMPONENTS
from tests.fuzz.strategies import SF_COMPONENTS, SF_PARAMETERS, signature_inputs, signature_values
from tests.unit.auth.harness import GATEWAY_ID, HC_PATH, Harness

HARNESS = Harness(Path(tempfile.mkdtemp()) / "state")
EDITS = ("none", "append", "prepend", "components", "parameters", "label", "signature", "duplicate")


def verifier() -> SignatureVerifier:
    """A verifier with an empty replay cache: the untouched request would be accepted."""
    return SignatureVerifier(
        HARNESS.keys,
        ReplayCache(max_entries=1000, clock=HARNESS.gateway_clock),
        gateway_id=GATEWAY_ID,
        hc_path=HC_PATH,
        settings=HARNESS.settings,
        clock=HARNESS.gateway_clock,
    )


@st.composite
def edited(draw: st.DrawFn) -> tuple[str, list[tuple[str, str]], bool]:
    """(edit, headers, untouched): a signed request's headers with one structured edit."""
    headers = HARNESS.sign()
    fields = dict(headers)
    sig_input, signature = fields["Signature-Input"], fields["Signature"]
    label, _, member = sig_input.partition("=")
    close = member.index(")") + 1
    inner, params = member[:close], member[close:]
    edit = draw(st.sampled_from(EDITS))
    if edit == "none":
        pass
    elif edit == "append":
        sig_input = f"{sig_input}, {draw(signature_inputs())}"
        signature = f"{signature}, {draw(signature_values)}"
    elif edit == "prepend":
        sig_input = f"{draw(signature_inputs())}, {sig_input}"
    elif edit == "components":
        inner = "(" + " ".join(draw(st.lists(SF_COMPONENTS, max_size=7))) + ")"
        sig_input = f"{label}={inner}{params}"
    elif edit == "parameters":
        params = "".join(draw(st.lists(SF_PARAMETERS, max_size=7)))
        sig_input = f"{label}={inner}{params}"
    elif edit == "label":
        sig_input = f"{draw(st.sampled_from(['sig', 'EID', 'eid2']))}={member}"
    elif edit == "signature":
        signature = draw(signature_values)
    else:
        headers = [*headers, ("Signature-Input", draw(signature_inputs()))]
    changed = [
        (name, sig_input if name == "Signature-Input" else signature if name == "Signature" else v)
        for name, v in headers
    ]
    untouched = dict(changed)["Signature-Input"].count(dict(headers)["Signature-Input"]) == 1
    return edit, changed, untouched and edit in ("none", "append", "prepend")


@settings(max_examples=300)
@given(edited())
def test_structured_edits_never_authenticate_an_altered_signature(
    case: tuple[str, list[tuple[str, str]], bool],
) -> None:
    edit, headers, may_verify = case
    try:
        verified = HARNESS.verify(headers, verifier=verifier())
    except SignatureError as error:
        status = error.status
    else:
        status = 0
    event(f"{edit}: {'refused' if status else 'accepted'}")
    if edit == "none":
        assert not status, "the untouched signature must verify (else this test proves nothing)"
    if status:
        assert status in (401, 431)
        return
    assert may_verify, f"an altered signature was accepted ({edit})"
    assert isinstance(verified, VerifiedRequest)
    covered = {component.strip('"') for component in verified.covered}
    assert covered >= set(REQUIRED_COMPONENTS)
