"""``RequestFacts``: the facts a verified signature completes, every field carried, and the
selector cut from a relayed target."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.pipeline import Refusal, RequestFacts, Verdict, split_selector


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


@pytest.mark.parametrize(
    ("cls", "values"),
    [
        (RequestFacts, ("GET", "erp", "/a", (("accept", "*/*"),), True, 3, False, "k")),
        (
            Verdict,
            (
                *(Refusal(403, "x"), "decide", None, {"a": 1}, None, 0.5),
                *(None, (("h", "v"),), ("p",), True, "cred"),
            ),
        ),
    ],
)
def test_records_made_per_request_set_every_field_and_stay_frozen(
    cls: type, values: tuple[object, ...]
) -> None:
    # Their __init__ is written out (each slot set by its own setter): it must set every field,
    # in order, by position or by name, and leave the record frozen like the dataclass's own.
    names = [field.name for field in dataclasses.fields(cls)]
    positional = cls(*values)
    by_name = cls(**dict(zip(names, values, strict=True)))
    assert [getattr(positional, name) for name in names] == list(values)
    assert [getattr(by_name, name) for name in names] == list(values)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(positional, names[0], values[0])
    changed = dataclasses.replace(positional, **{names[-1]: None})
    assert getattr(changed, names[-1]) is None
    assert getattr(changed, names[0]) is values[0]
    defaults = cls(*values[:3])
    assert [getattr(defaults, f.name) for f in dataclasses.fields(cls)][3:] == [
        f.default for f in dataclasses.fields(cls)[3:]
    ]


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
