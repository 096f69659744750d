"""The decision log record (``schemas/decision-log.schema.json``), version 2.

A record says what was decided (result, reasons, stage, status, target, operation, revisions) and
holds, under ``input``, exactly what the gateway's steps after authentication read to decide:
the method, the request target as relayed (``/{selector}/{path}?{query}``), the names of the
request headers in the order received with the length of each value, whether it was a stream,
the body length and the verified signing key. ``gateway replay`` feeds that back through the same
steps under another configuration; nothing else is needed, and nothing secret is kept:

* header values are never recorded, only their lengths (the header limits count bytes), except
  ``Content-Length`` and ``Sec-WebSocket-Protocol``, which steps read and which never hold a
  credential;
* bodies are never recorded, only their length (the body limit);
* the values of query parameters whose names suggest a credential (``token``, ``sig``,
  ``password``, ...) are replaced by ``***`` (names compared after percent-decoding); parameter
  names, order and the rest of the query stay as received. A policy extension that reads such a
  value cannot be replayed exactly; the built-in policy never reads the query.

Version 1 records (before ``v`` existed) hold no ``input`` and cannot be replayed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

__all__ = [
    "MASK",
    "RECORD_VERSION",
    "RecordedInput",
    "mask_query",
    "mask_target",
    "recorded_input",
]

MASK = "***"
RECORD_VERSION = 2

# Parameter names that carry credentials in the wild: OAuth (RFC 6749 access_token, code),
# Azure SAS (sig, se, skn), API keys, session ids, passwords.
_SECRET_NAME = re.compile(
    r"(token|secret|passw|pwd|key|sig|auth|session|credential|code|cookie|^sk[n]?$|^se$)",
    re.IGNORECASE,
)
# Placeholder octet for a header value replayed from its length: a digit is valid in every
# header the canonicaliser checks the syntax of (Content-Length must be digits).
_FILLER = "0"
# Header values a step reads and that are never credentials: kept verbatim (framing, RFC 9112
# section 6.3; offered subprotocols, RFC 6455 section 11.3.4).
KEPT_VALUES = frozenset({"content-length", "sec-websocket-protocol"})


def mask_query(query: str) -> str:
    """``query`` with the values of credential-like parameters replaced by ``***``."""
    parts = []
    for part in query.split("&"):
        name, sep, _ = part.partition("=")
        parts.append(f"{name}={MASK}" if sep and _SECRET_NAME.search(unquote_plus(name)) else part)
    return "&".join(parts)


def mask_target(request_target: str) -> str:
    """A relayed request target (``/path?query``) with credential-like query values masked."""
    path, sep, query = request_target.partition("?")
    return f"{path}?{mask_query(query)}" if sep else path


def recorded_input(
    *,
    method: str,
    relayed: str,
    headers: Sequence[tuple[str, str]],
    websocket: bool,
    body_bytes: int,
    keyid: str | None,
) -> dict[str, Any]:
    """The ``input`` member of a record: what replay needs, without a secret.

    Each header is ``(name, length)``, or ``(name, length, value)`` for :data:`KEPT_VALUES`
    (JSON arrays once written). Built in one comprehension: it is done for every record, and it
    costs about half of mapping the names and lengths and zipping them."""
    kept = KEPT_VALUES
    recorded = [
        (lower, len(value), value) if (lower := name.lower()) in kept else (lower, len(value))
        for name, value in headers
    ]
    return {
        "method": method,
        "target": mask_target(relayed),
        "headers": recorded,
        "websocket": websocket,
        "body_bytes": body_bytes,
        "keyid": keyid,
    }


@dataclass(frozen=True)
class RecordedInput:
    """A record's ``input``, parsed for replay."""

    method: str
    target: str
    """The request target as relayed, ``/{selector}/{path}?{query}``."""
    headers: tuple[tuple[str, int, str | None], ...]
    websocket: bool
    body_bytes: int
    keyid: str | None

    @classmethod
    def parse(cls, document: Mapping[str, Any]) -> RecordedInput:
        """Parse and check ``document``; raises ``ValueError`` naming what is wrong."""
        method, target = document.get("method"), document.get("target")
        if not (isinstance(method, str) and isinstance(target, str)):
            raise ValueError("input needs method and target as strings")
        headers = document.get("headers")
        if not isinstance(headers, list) or not all(
            isinstance(h, list)
            and len(h) in (2, 3)
            and isinstance(h[0], str)
            and isinstance(h[1], int)
            and 0 <= h[1] <= 1 << 20
            and (len(h) == 2 or (isinstance(h[2], str) and h[0] in KEPT_VALUES))
            for h in headers
        ):
            raise ValueError("input.headers must be [name, length] or [name, length, value]")
        body = document.get("body_bytes")
        websocket = document.get("websocket")
        keyid = document.get("keyid")
        if not isinstance(body, int) or body < 0 or not isinstance(websocket, bool):
            raise ValueError("input needs body_bytes (a length) and websocket (true or false)")
        if keyid is not None and not isinstance(keyid, str):
            raise ValueError("input.keyid must be a string or null")
        return cls(
            method=method,
            target=target,
            headers=tuple((h[0], h[1], h[2] if len(h) == 3 else None) for h in headers),
            websocket=websocket,
            body_bytes=body,
            keyid=keyid,
        )

    def header_pairs(self) -> list[tuple[str, str]]:
        """Headers to replay: the recorded names, with the kept values or placeholders of the
        recorded lengths."""
        return [
            (name, _FILLER * length if value is None else value)
            for name, length, value in self.headers
        ]
