"""The Rego ``input`` document, built in one place from a canonical request.

The policy sees only what the canonicaliser produced: the path already split into segments (the
policy never parses a raw path, catalogue B 51), the query as received, and the names of the
request headers. Header values are left out on purpose: they may be credentials, and a decision
that depended on them could not be cached on the fields it reads.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

from gateway.forward.canonical import CanonicalRequest

__all__ = ["build_input"]

_NAME = itemgetter(0)


def build_input(request: CanonicalRequest, *, signed: bool, keyid: str | None) -> dict[str, Any]:
    """The ``input`` document for one decision.

    ``signed`` says whether the RFC 9421 signature was verified and ``keyid`` names the key that
    verified it. ``header_names`` is sorted and free of repeats, so equal requests give equal
    documents whatever order their headers came in.
    """
    return {
        "target": request.target,
        "method": request.method,
        "path": request.path,
        "path_segments": list(request.segments),
        "trailing_slash": request.trailing_slash,
        "query": request.query,
        "header_names": sorted(set(map(_NAME, request.headers))),
        "websocket": request.websocket,
        "signature": {"verified": signed, "keyid": keyid},
    }
