"""``RequestFacts.signed_by``: the facts a verified signature completes, every field carried."""

from __future__ import annotations

import dataclasses

from gateway.pipeline import RequestFacts


def test_signed_by_carries_every_field_and_sets_the_key() -> None:
    facts = RequestFacts(
        method="POST",
        selector="erp",
        request_target="/api/x?y=1",
        headers=(("content-type", "text/plain"),),
        websocket=True,
        body_size=5,
        signed=False,
        keyid=None,
    )
    # Every field is set above; a field added to RequestFacts must be carried by signed_by too.
    assert {f.name for f in dataclasses.fields(RequestFacts)} == {
        "method",
        "selector",
        "request_target",
        "headers",
        "websocket",
        "body_size",
        "signed",
        "keyid",
    }
    assert facts.signed_by("eid-1") == dataclasses.replace(facts, keyid="eid-1")
    assert facts.signed_by(None) == facts
