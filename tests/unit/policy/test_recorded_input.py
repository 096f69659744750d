"""The ``input`` of a decision record: header names and lengths, no secret value."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from gateway.policy.decision_log import KEPT_VALUES, RecordedInput, recorded_input

names = st.sampled_from(
    ["Content-Length", "content-length", "Authorization", "Sec-WebSocket-Protocol", "X-Key"]
) | st.text(alphabet="abcXYZ-", min_size=1, max_size=6)
headers = st.lists(st.tuples(names, st.text(max_size=12)), max_size=8)


@given(headers)
def test_headers_are_recorded_by_name_and_length_and_kept_values_only(
    given_headers: list[tuple[str, str]],
) -> None:
    document = recorded_input(
        method="GET",
        relayed="/erp/x?access_token=secret&a=1",
        headers=given_headers,
        websocket=False,
        body_bytes=0,
        keyid="k",
    )
    expected = [
        [name.lower(), len(value), value]
        if name.lower() in KEPT_VALUES
        else [name.lower(), len(value)]
        for name, value in given_headers
    ]
    written = orjson.loads(orjson.dumps(document))
    assert written["headers"] == expected
    assert written["target"] == "/erp/x?access_token=***&a=1"
    # What replay reads back: the same names in order, values of the recorded lengths.
    replayed = RecordedInput.parse(written).header_pairs()
    assert [(n, len(v)) for n, v in replayed] == [(n.lower(), len(v)) for n, v in given_headers]
