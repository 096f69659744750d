"""The header policy: what relayed headers are accepted, and what is sent upstream.

Two steps, both applied to every request and stream:

1. :func:`validate_request_headers` refuses a header list that is too big (431), that has names
   which are not RFC 9110 tokens, values with CR, LF, NUL or other controls (the way to inject a
   header or split a request, catalogue C 56-58), or ambiguous message framing (catalogue C 52-54;
   a ``Transfer-Encoding`` other than exactly one ``chunked``, RFC 9112 section 6.1), or a name
   given twice (JSON keys differing only in case). :func:`check_declared_length` then holds
   ``Content-Length`` to the body actually delivered.
2. :func:`outbound_headers` builds the upstream header list from an allow-list: the small
   :data:`DEFAULT_FORWARDED` set of end-to-end headers plus the headers the matched operation
   names. Everything else is dropped, and a few headers are dropped even when named: hop-by-hop
   and framing headers, forwarding and URL-rewrite headers (``NEVER_FORWARDED`` of
   :mod:`gateway.config.semantics`), headers a ``Connection`` header lists, and the one-hop
   WebSocket handshake headers. ``Host`` is always the target's configured host.

3. :func:`refuse_saas_credentials`: on a target (or operation) that has the gateway inject a
   credential, a request carrying any credential header of its own (``Authorization``,
   ``Proxy-Authorization``, ``Cookie`` or the injected header's name) is refused with 400, never
   silently replaced, so only the gateway's credential ever reaches that API.

Header values may be credentials, so no message here ever includes one.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence

from gateway.config.model import Credential, GatewayConfig, Limits, Operation, Target
from gateway.config.semantics import (
    CREDENTIAL_HEADERS,
    NEVER_FORWARDED,
    NEVER_FORWARDED_PREFIXES,
)
from gateway.forward.rejections import RejectReason, RequestRejected

__all__ = [
    "DEFAULT_FORWARDED",
    "HANDSHAKE_ONLY",
    "check_declared_length",
    "credential_name",
    "forwardable_names",
    "host_header",
    "outbound_headers",
    "refuse_saas_credentials",
    "validate_request_headers",
]

R = RejectReason

# End-to-end request headers (RFC 9110 section 7.6.1 and their defining sections) that describe
# the representation or make the request conditional, and say nothing about who is asking or how
# to route it. Deliberately absent: Authorization and Cookie (credentials: only when the operation
# names them, catalogue C 66), Accept-Encoding (the forwarder relays bodies undecoded and asks for
# no encoding of its own), Expect (the whole body is already here; forwarding 100-continue only
# adds a wait, catalogue C 61), User-Agent, and every X- header.
DEFAULT_FORWARDED = frozenset(
    {
        "accept",
        "accept-language",
        "cache-control",
        "content-encoding",
        "content-language",
        "content-type",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "prefer",
        "range",
    }
)

# RFC 6455 section 4.1: these belong to one handshake on one connection. The upstream WebSocket
# client makes its own; relaying the SaaS's would break or confuse that handshake.
HANDSHAKE_ONLY = frozenset(
    {
        "sec-websocket-accept",
        "sec-websocket-extensions",
        "sec-websocket-key",
        "sec-websocket-version",
    }
)

# RFC 9110 section 5.1: a field name is a token. Longer than this is abuse, not a header.
MAX_NAME_LENGTH = 256
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# RFC 9110 section 5.5: field-vchar, SP and HTAB. CR, LF, NUL and other controls are refused
# outright (catalogue C 56, 58). Non-ASCII (obs-text) is refused too: the JSON the relay sends
# carries characters, not octets, so there is no single byte sequence to forward for it.
_BAD_VALUE = re.compile(r"[^\t\x20-\x7e]")
# RFC 9110 section 8.6: Content-Length is 1*DIGIT. One value only; '+5', '5, 5', '-1' and '0x5'
# are refused (catalogue C 54). Eighteen digits keep the number far from any integer limit.
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
_OWS = " \t"
# The same two character sets as bytes, for checking every name (or every value) of a request in
# one call (``bytes.translate`` deleting the allowed ones leaves the refused ones).
_TOKEN_BYTES = bytes(c for c in range(128) if _TOKEN.fullmatch(chr(c)))
_VALUE_BYTES = bytes(c for c in range(128) if not _BAD_VALUE.search(chr(c)))
# The names whose repetition or combination :func:`_check_framing` refuses: a list without any
# (nearly every request) needs none of its passes.
_FRAMING_NAMES = frozenset({"content-length", "transfer-encoding", "host"})

HeaderInput = Mapping[str, str] | Iterable[tuple[str, str]]
# Header lists taken as they are (anything else is read into a list first, at most once).
_SEQUENCES = (tuple, list)

# Name lists that passed every name check before (each name a token of at most MAX_NAME_LENGTH,
# no name twice in any case), in the order received: their lower-cased names, whether one of them
# is a framing name, and their total length. A gateway's requests come from one SaaS and carry
# the same names request after request, so only their values are left to check. Bounded: emptied
# when full, so names an attacker varies cost it speed, never memory.
_KNOWN_NAMES: dict[tuple[str, ...], tuple[tuple[str, ...], bool, int]] = {}
_KNOWN_NAMES_LIMIT = 256


def validate_request_headers(
    config: GatewayConfig, headers: HeaderInput
) -> tuple[tuple[str, str], ...]:
    """Check relayed request headers; return them with lower-cased names, in order.

    Values lose leading and trailing spaces and tabs (RFC 9110 section 5.5: they are not part of
    the value); nothing else is changed. Raises :class:`RequestRejected`: 431 when
    ``limits.max_header_count`` or ``limits.max_header_bytes`` is exceeded, 400 for a malformed
    name or value or ambiguous framing.
    """
    limits = config.limits
    items: Sequence[tuple[str, str]]
    if isinstance(headers, _SEQUENCES):
        items = headers
    else:
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        # Bounded read: a caller's iterator is never drained past the limit.
        items = list(itertools.islice(pairs, limits.max_header_count + 1))
    if len(items) > limits.max_header_count:
        raise RequestRejected(
            R.TOO_MANY_HEADERS, f"more than {limits.max_header_count} request headers"
        )
    names = tuple([name for name, _ in items])
    values = [value for _, value in items]
    try:
        known = _KNOWN_NAMES.get(names)
    except TypeError:  # a name that is not text: refused below
        known = None
    if known is not None:
        # The names passed before: the checks below, less those on the names themselves.
        lowered, framing, names_length = known
        try:
            all_values = "".join(values)
        except TypeError:
            raise RequestRejected(
                R.INVALID_HEADER_VALUE, "header names and values must be text"
            ) from None
        if names_length + len(all_values) + 4 * len(items) > limits.max_header_bytes:
            raise RequestRejected(
                R.HEADERS_TOO_LARGE, f"request headers exceed {limits.max_header_bytes} bytes"
            )
        if all_values.isascii() and not all_values.encode("ascii").translate(None, _VALUE_BYTES):
            trimmed = [value.strip(_OWS) for value in values]
            if framing:
                _check_clean_framing(list(zip(lowered, trimmed, strict=True)), items)
            return tuple(zip(lowered, trimmed, strict=True))
        # A value to refuse: the full checks below find it and give their reason.
    return _validate(limits, items, names, values)


def _validate(
    limits: Limits,
    items: Sequence[tuple[str, str]],
    names: tuple[str, ...],
    values: list[str],
) -> tuple[tuple[str, str], ...]:
    try:
        all_names, all_values = "".join(names), "".join(values)
    except TypeError:
        raise RequestRejected(
            R.INVALID_HEADER_VALUE, "header names and values must be text"
        ) from None
    # Counted as a request header block would be: "name: value" plus CRLF per field line.
    if len(all_names) + len(all_values) + 4 * len(items) > limits.max_header_bytes:
        raise RequestRejected(
            R.HEADERS_TOO_LARGE, f"request headers exceed {limits.max_header_bytes} bytes"
        )
    if not items:
        return ()
    # The common case, every name a token and every value clean, is checked on all names and all
    # values at once: each name non-empty and at most MAX_NAME_LENGTH long, and no character
    # outside the token set (names) or the field-value set (values) anywhere. Anything else is
    # checked header by header, so the refusal is the one the first bad header earns.
    clean = (
        min(map(len, names)) > 0
        and max(map(len, names)) <= MAX_NAME_LENGTH
        and all_names.isascii()
        and not all_names.encode("ascii").translate(None, _TOKEN_BYTES)
        and all_values.isascii()
        and not all_values.encode("ascii").translate(None, _VALUE_BYTES)
    )
    if clean:
        validated = [(name.lower(), value.strip(_OWS)) for name, value in items]
        if not _FRAMING_NAMES.isdisjoint([name for name, _ in validated]):
            _check_clean_framing(validated, items)
    else:
        validated = []
        for name, value in items:
            if len(name) > MAX_NAME_LENGTH or not _TOKEN.fullmatch(name):
                raise RequestRejected(R.INVALID_HEADER_NAME, "a header name is not an HTTP token")
            lowered = name.lower()
            if lowered == "transfer-encoding":
                _check_transfer_encoding(value)
            trimmed = value.strip(_OWS)
            if _BAD_VALUE.search(trimmed):
                raise RequestRejected(
                    R.INVALID_HEADER_VALUE,
                    f"header {lowered!r} has a control or non-ASCII character in its value",
                )
            validated.append((lowered, trimmed))
        _check_framing(validated)
    # The relay delivers headers as a JSON object, one value per name (it joins repeated fields,
    # RFC 9110 section 5.3). Two keys that differ only in case are not something it sends; they
    # would reach the target as two field lines where every check here saw each one apart, and a
    # server may act on either. Refused rather than joined.
    names_lowered = tuple([name for name, _ in validated])
    if len(set(names_lowered)) != len(names_lowered):
        raise RequestRejected(R.DUPLICATE_HEADER, "a header name appears more than once")
    if len(_KNOWN_NAMES) >= _KNOWN_NAMES_LIMIT:
        _KNOWN_NAMES.clear()
    framing = not _FRAMING_NAMES.isdisjoint(names_lowered)
    _KNOWN_NAMES[names] = (names_lowered, framing, len(all_names))
    return tuple(validated)


def _check_clean_framing(
    validated: list[tuple[str, str]], items: Sequence[tuple[str, str]]
) -> None:
    """The framing checks of a list whose every name and value is clean (the value of
    ``Transfer-Encoding`` as received, before trimming)."""
    for (lowered, _), (_, value) in zip(validated, items, strict=True):
        if lowered == "transfer-encoding":
            _check_transfer_encoding(value)
    _check_framing(validated)


def check_declared_length(headers: Iterable[tuple[str, str]], body_size: int) -> None:
    """Refuse a request whose ``Content-Length`` is not the size of the body the relay delivered.

    ``headers`` are validated ones (:func:`validate_request_headers`, so at most one plain
    number). The forwarder frames the body it has; silently re-framing a body that disagrees with
    what the sender declared would forward a different message than the one signed and judged
    (RFC 9112 section 6.3: a mismatch is a framing error, not a detail). Raises
    :class:`RequestRejected` (400 ``content_length_mismatch``).
    """
    for name, value in headers:
        if name == "content-length" and int(value) != body_size:
            raise RequestRejected(
                R.CONTENT_LENGTH_MISMATCH,
                f"Content-Length is not the size of the {body_size}-byte body",
            )


def _check_transfer_encoding(raw: str) -> None:
    # RFC 9112 section 6.1: the only framing a request can have besides Content-Length is one
    # final 'chunked'. Any other list ('gzip, chunked', 'chunked, identity', 'chunked, chunked'),
    # a near name ('xchunked', 'chunked;x=1') or padding (' chunked') is read one way by one
    # parser and another way by the next: the request smuggling set-up. The relay delivered the
    # body whole, so the only value that describes it is exactly 'chunked' (names are
    # case-insensitive, RFC 9112 section 7); the forwarder re-frames it with Content-Length.
    if raw.lower() != "chunked":
        raise RequestRejected(
            R.INVALID_TRANSFER_ENCODING, "Transfer-Encoding must be exactly one 'chunked'"
        )


def _check_framing(headers: list[tuple[str, str]]) -> None:
    if sum(1 for name, _ in headers if name == "transfer-encoding") > 1:
        raise RequestRejected(
            R.INVALID_TRANSFER_ENCODING, "Transfer-Encoding on more than one field line"
        )
    lengths = [value for name, value in headers if name == "content-length"]
    if len(lengths) > 1:
        raise RequestRejected(R.INVALID_CONTENT_LENGTH, "more than one Content-Length")
    if lengths and not _CONTENT_LENGTH.fullmatch(lengths[0]):
        raise RequestRejected(R.INVALID_CONTENT_LENGTH, "Content-Length is not a plain number")
    # RFC 9112 section 6.3: with both, the framing depends on who reads it: the classic request
    # smuggling set-up, refused rather than resolved (catalogue C 52).
    if lengths and any(name == "transfer-encoding" for name, _ in headers):
        raise RequestRejected(
            R.CONTENT_LENGTH_WITH_TRANSFER_ENCODING,
            "Content-Length and Transfer-Encoding together",
        )
    # RFC 9112 section 3.2: a request with more than one Host is answered with 400.
    if sum(1 for name, _ in headers if name == "host") > 1:
        raise RequestRejected(R.DUPLICATE_HOST, "more than one Host header")


def host_header(target: Target) -> str:
    """The ``Host`` value for ``target``: its configured host, with the port unless default."""
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = {"https": 443, "http": 80}.get(target.scheme)
    port = target.effective_port
    return host if port == default else f"{host}:{port}"


def forwardable_names(operation: Operation) -> frozenset[str]:
    """The lower-case header names a request granted by ``operation`` may carry upstream: the
    defaults and the operation's own names, less those never forwarded (hop-by-hop, framing,
    forwarding and handshake headers). A revision derives it once per operation; only the names
    a request's ``Connection`` header lists are then left to remove per request."""
    allowed = DEFAULT_FORWARDED | {name.lower() for name in operation.headers}
    return frozenset(
        name
        for name in allowed
        if name not in NEVER_FORWARDED
        and not name.startswith(NEVER_FORWARDED_PREFIXES)
        and name not in HANDSHAKE_ONLY
    )


def outbound_headers(
    target: Target,
    operation: Operation,
    headers: Iterable[tuple[str, str]],
    *,
    forwardable: frozenset[str] | None = None,
    host: str | None = None,
) -> list[tuple[str, str]]:
    """The headers to send upstream for a request ``operation`` allowed on ``target``.

    ``headers`` are the validated request headers (:func:`validate_request_headers`, or
    ``CanonicalRequest.headers``). The result starts with ``host`` and keeps the relayed order
    of every header that passes the allow-list; names stay lower-case. ``forwardable`` and
    ``host`` are :func:`forwardable_names` of ``operation`` and :func:`host_header` of
    ``target`` when the caller derived them already (once per revision).
    """
    pairs = headers if isinstance(headers, _SEQUENCES) else list(headers)
    allowed = forwardable_names(operation) if forwardable is None else forwardable
    result = [("host", host_header(target) if host is None else host)]
    connection = False
    for name, value in pairs:
        lowered = name.lower()
        if lowered in allowed:
            result.append((lowered, value))
            connection = connection or lowered == "connection"
        elif lowered == "connection":
            connection = True
    if connection:
        # RFC 9110 section 7.6.1: headers named in Connection are meant for the next hop only.
        named = {
            token.strip(_OWS).lower()
            for name, value in pairs
            if name.lower() == "connection"
            for token in value.split(",")
        }
        result = [result[0], *(pair for pair in result[1:] if pair[0] not in named)]
    return result


def credential_name(target: Target, operation: Operation | None) -> str | None:
    """The credential injected for ``operation`` on ``target``: the operation's own, else the
    target's; None for a tcp target or when neither names one."""
    if target.stream_only:
        return None
    if operation is not None and operation.credential is not None:
        return operation.credential
    return target.credential


def refuse_saas_credentials(credential: Credential, headers: Iterable[tuple[str, str]]) -> None:
    """Refuse (400 ``saas_credential_refused``) a request that brings a credential header where
    the gateway injects ``credential``. ``headers`` are validated (lower-case names)."""
    refused = CREDENTIAL_HEADERS | {credential.header_name}
    for name, _ in headers:
        if name in refused:
            raise RequestRejected(
                R.SAAS_CREDENTIAL,
                f"the gateway injects this target's credential; the request may not carry "
                f"its own {name!r} header",
            )
