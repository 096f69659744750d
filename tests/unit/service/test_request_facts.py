"""``RequestFacts``: the facts a verified signature completes, every field carried, and the
selector cut from a relayed target."""

from __future__ import annotations

import dataclasses

from hypothesis import example, given
from hypothesis import strategies as st

from gateway.pipeline import Refusal, RequestFacts, split_selector


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


def _split_reference(relayed: str) -> tuple[str, str] | None:
    """The selector rule spelled out: the first segment up to the first '/' or '?', whichever
    comes first; the rest (with a '/' put in front of a bare query) is the on-prem target."""
    if not relayed.startswith("/"):
        return None
    rest = relayed[1:]
    cuts = [i for i in (rest.find("/"), rest.find("?")) if i >= 0]
    cut = min(cuts) if cuts else len(rest)
    selector, remainder = rest[:cut], rest[cut:]
    if not selector:
        return None
    return selector, remainder if remainder.startswith("/") else "/" + remainder


@given(st.text(alphabet="/?ab=", max_size=12))
@example("/erp")
@example("/erp?x=/y")
@example("/erp/a?b")
@example("/?x")
@example("//a")
def test_the_selector_is_cut_at_the_first_slash_or_question_mark(relayed: str) -> None:
    expected = _split_reference(relayed)
    try:
        found: tuple[str, str] | None = split_selector(relayed)
    except Refusal:
        found = None
    assert found == expected
