"""The header policy under generated header sets (catalogue C 52-68, A 48, C 59, C 66).

For any relayed header list, :func:`validate_request_headers` either refuses it with
``RequestRejected`` or returns it validated, and :func:`outbound_headers` then builds an upstream
list that

* starts with the gateway's own ``host`` and has no other ``host``;
* holds only default end-to-end headers or headers the operation names;
* never holds a hop-by-hop, framing, forwarding or rewrite header, a handshake header, or a header
  a ``Connection`` header lists, whatever the operation names;
* carries values that cannot split a request line (no CR, LF, NUL, no non-ASCII);
* keeps the relayed order and values of what it forwards.

Time and memory stay bounded for the largest header blocks.
"""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.model import Operation
from gateway.config.semantics import NEVER_FORWARDED, NEVER_FORWARDED_PREFIXES
from gateway.forward.headers import (
    DEFAULT_FORWARDED,
    HANDSHAKE_ONLY,
    outbound_headers,
    validate_request_headers,
)
from gateway.forward.rejections import RequestRejected
from tests.fuzz.strategies import header_names, header_sets
from tests.unit.forward.configs import make_config

CONFIG = make_config(max_header_count=16, max_header_bytes=2048)
TARGET = CONFIG.targets["erp"]
NAMED = st.lists(
    st.sampled_from(["Authorization", "Cookie", "X-Api-Key", "X-Custom", "Accept", "Sec-Gw"]),
    unique=True,
    max_size=4,
)


@settings(max_examples=500)
@given(header_sets, NAMED)
def test_only_allow_listed_safe_headers_go_upstream(
    headers: list[tuple[str, str]], named: list[str]
) -> None:
    try:
        validated = validate_request_headers(CONFIG, headers)
    except RequestRejected as rejected:
        status = rejected.status
    else:
        status = 0
    if status:
        assert status in (400, 431)
        return
    operation = Operation.model_validate(
        {"name": "op", "methods": ["GET"], "paths": ["/api/*"], "headers": named}
    )
    sent = outbound_headers(TARGET, operation, validated)
    assert sent[0] == ("host", "erp.corp.local:8443")
    allowed = DEFAULT_FORWARDED | {name.lower() for name in named}
    listed = {
        token.strip(" \t").lower()
        for name, value in validated
        if name == "connection"
        for token in value.split(",")
    }
    for name, value in sent[1:]:
        assert name in allowed
        assert name not in NEVER_FORWARDED
        assert not name.startswith(NEVER_FORWARDED_PREFIXES)
        assert name not in HANDSHAKE_ONLY
        assert name not in listed
        assert value.isascii()
        assert not any(c in value for c in "\r\n\x00")
    # Nothing is invented or reordered: the forwarded pairs are a subsequence of the relayed ones.
    remaining = iter(validated)
    assert all(pair in remaining for pair in sent[1:])


@settings(max_examples=200)
@given(header_names, st.integers(1, 5000))
def test_oversized_header_blocks_are_refused_after_a_bounded_read(name: str, count: int) -> None:
    # An endless header source: the policy must stop reading at its limit, not drain it.
    def endless() -> object:
        while True:
            yield name or "x", "v" * 10

    with pytest.raises(RequestRejected) as caught:
        validate_request_headers(CONFIG, endless())  # type: ignore[arg-type]
    assert caught.value.status in (400, 431)


def test_the_largest_header_block_costs_bounded_memory() -> None:
    big = make_config(max_header_count=1000, max_header_bytes=1 << 20)
    headers = [(f"x-h{i}", "v" * 1000) for i in range(1000)]
    tracemalloc.start()
    try:
        validate_request_headers(big, headers)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # About 1 MiB of header text is checked without copying it more than a couple of times.
    assert peak < 4 << 20
