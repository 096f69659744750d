"""Shared Access Signature (SAS) tokens for Azure Relay (protocol notes section 2).

Token:
``SharedAccessSignature sr={enc resource}&sig={enc base64 HMAC}&se={unix expiry}&skn={rule}``.

* The string to sign is the ``sr`` value *exactly as it appears in the token* (still
  percent-encoded, whatever the case of its escapes), a newline, and ``se``; the HMAC-SHA256 key
  is the UTF-8 bytes of the key string as shown in the portal (section 2.1).
* Validation mirrors the service as far as it is known (section 2.2): pairs in any order, ``sig``
  URL-decoded before comparison, constant-time comparison, expiry against an injectable clock,
  and a lenient scope rule: scheme and port of ``sr`` ignored, host compared case-insensitively,
  a trailing ``/`` and a leading ``$hc/`` removed, and the token path must equal the entity path or
  be a ``/``-segment prefix of it, compared case-insensitively (section 2.2 marks the case rule
  [UNCONFIRMED]; insensitive is the lenient choice the notes recommend).

Nothing here logs or puts a token, signature or key into an exception message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, unquote, urlsplit

from gateway.hybridconnection.errors import (
    BadSignatureError,
    MalformedTokenError,
    TokenExpiredError,
    UnknownKeyNameError,
    WrongResourceError,
)

SAS_SCHEME: Final = "SharedAccessSignature"
# Section 2.1: every SDK defaults to one hour.
DEFAULT_TOKEN_TTL: Final = 3600
# Far above any real token (~250 characters); bounds parsing work on hostile input.
MAX_TOKEN_LENGTH: Final = 4096
_FIELDS: Final = frozenset({"sr", "sig", "se", "skn"})
_MAC_LENGTH: Final = hashlib.sha256().digest_size

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class SasToken:
    """The parts of a parsed token. ``resource`` is the raw, still percent-encoded ``sr``."""

    resource: str
    signature: bytes
    expiry: int
    key_name: str

    @property
    def decoded_resource(self) -> str:
        """``sr`` with percent-escapes decoded: the resource URI the token is scoped to."""
        return unquote(self.resource)


def resource_uri(namespace_host: str, entity_path: str) -> str:
    """The resource URI .NET signs for an entity: ``http://{host}/{path}/`` (section 2.2)."""
    path = entity_path.strip("/")
    return (
        f"http://{namespace_host.lower()}/{path}/" if path else f"http://{namespace_host.lower()}/"
    )


def create_token(
    resource: str,
    key_name: str,
    key: str,
    *,
    expiry: int | None = None,
    ttl: int = DEFAULT_TOKEN_TTL,
    clock: Clock = time.time,
) -> str:
    """Create a token for ``resource`` signed with rule ``key_name`` / ``key``.

    ``expiry`` is absolute (unix seconds); without it the token lives ``ttl`` seconds from
    ``clock()``. ``sr`` is percent-encoded with uppercase hex, as node and Python clients do.
    """
    if not key_name or any(ch in key_name for ch in "&= \r\n"):
        raise ValueError("key name must be non-empty and free of '&', '=', spaces and newlines")
    if not key:
        raise ValueError("key must not be empty")
    se = int(clock()) + ttl if expiry is None else expiry
    sr = quote(resource, safe="")
    sig = base64.b64encode(_mac(key, sr, se)).decode("ascii")
    return f"{SAS_SCHEME} sr={sr}&sig={quote(sig, safe='')}&se={se}&skn={quote(key_name, safe='')}"


def parse_token(token: str) -> SasToken:
    """Split a token into its parts; raises :class:`MalformedTokenError` on any defect."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        raise MalformedTokenError("token is not a string of acceptable length")
    if not token.isascii() or not token.isprintable():
        # Real tokens are printable ASCII (everything else is percent-encoded).
        raise MalformedTokenError("token contains characters outside printable ASCII")
    scheme, sep, rest = token.partition(" ")
    if not sep or scheme.lower() != SAS_SCHEME.lower():
        raise MalformedTokenError("token does not start with 'SharedAccessSignature '")
    fields: dict[str, str] = {}
    for pair in rest.split("&"):
        name, eq, value = pair.partition("=")
        if not eq or name not in _FIELDS or name in fields or not value:
            raise MalformedTokenError(
                "token fields must be sr, sig, se, skn, each once and non-empty"
            )
        fields[name] = value
    if len(fields) != len(_FIELDS):
        raise MalformedTokenError("token lacks one of sr, sig, se, skn")
    se = fields["se"]
    if not (se.isascii() and se.isdigit() and len(se) <= 12):
        raise MalformedTokenError("token expiry 'se' is not a unix time in seconds")
    try:
        signature = base64.b64decode(unquote(fields["sig"]), validate=True)
    except (binascii.Error, ValueError):
        raise MalformedTokenError("token signature is not base64") from None
    if len(signature) != _MAC_LENGTH:
        raise MalformedTokenError("token signature has the wrong length")
    return SasToken(
        resource=fields["sr"],
        signature=signature,
        expiry=int(se),
        key_name=unquote(fields["skn"]),
    )


def validate_token(
    token: str,
    *,
    keys: Mapping[str, str],
    namespace_host: str,
    entity_path: str,
    clock: Clock = time.time,
) -> SasToken:
    """Check ``token`` for entity ``entity_path`` on ``namespace_host``; returns the parsed token.

    ``keys`` maps rule names to key strings. Raises :class:`MalformedTokenError`,
    :class:`UnknownKeyNameError`, :class:`BadSignatureError`, :class:`TokenExpiredError` or
    :class:`WrongResourceError` (all :class:`TokenError`). Rights (Listen/Send) are the caller's.
    """
    parsed = parse_token(token)
    key = keys.get(parsed.key_name)
    if key is None:
        raise UnknownKeyNameError("token names an unknown signing rule")
    if not hmac.compare_digest(_mac(key, parsed.resource, parsed.expiry), parsed.signature):
        raise BadSignatureError("token signature does not match")
    if clock() >= parsed.expiry:
        raise TokenExpiredError("token has expired")
    if not resource_covers(parsed.decoded_resource, namespace_host, entity_path):
        raise WrongResourceError("token is not valid for this entity")
    return parsed


def resource_covers(resource: str, namespace_host: str, entity_path: str) -> bool:
    """Whether a decoded resource URI grants access to ``entity_path`` (section 2.2 rules 1-3)."""
    try:
        parts = urlsplit(resource)
    except ValueError:
        return False
    host = parts.hostname
    if not host or host != namespace_host.lower().strip("[]"):
        return False
    granted = _segments(parts.path)
    wanted = _segments(entity_path)
    return len(granted) <= len(wanted) and granted == wanted[: len(granted)]


def _segments(path: str) -> list[str]:
    path = path.strip("/")
    if path.lower() == "$hc" or path.lower().startswith("$hc/"):
        path = path[4:]
    return [segment.lower() for segment in path.split("/") if segment]


def _mac(key: str, encoded_resource: str, expiry: int) -> bytes:
    message = f"{encoded_resource}\n{expiry}".encode()
    return hmac.new(key.encode("utf-8"), message, hashlib.sha256).digest()
