"""Control messages of the Hybrid Connections protocol: strict parsing and serialisation.

Every control message is one JSON object in a WebSocket text frame whose single top-level key
names the command (protocol notes section 3.2). The service sends ``accept`` and ``request``; the
listener sends ``response`` and ``renewToken``. :func:`parse_command` turns the text of one frame
into a frozen dataclass or raises a :class:`~gateway.hybridconnection.errors.ProtocolError`
subclass - never any other exception type, whatever the input. :func:`encode_command` is its
inverse.

Choices where the notes leave room:

* Unknown fields *inside* a known command are ignored, so that a service adding a field (as it did
  with ``remoteEndpoint``, section 3.2) does not take listeners down; an unknown *command* raises
  :class:`UnknownCommandError`, which the channel state machines treat as ignorable (like .NET's
  listener, section 3.2).
* A full-form ``request`` whose ``id`` and ``body`` are sound but which is otherwise defective
  raises :class:`MalformedRequestError` carrying both: it can be answered (400) and the framing
  stays in step. A defective ``id`` or ``body`` raises the plain field error: such a message
  cannot be answered, and whether a body follows is unknown.
* Header names must be RFC 9110 tokens and header values, reason phrases, ids and request targets
  must not contain control characters: these strings end up on HTTP/1.1 wire lines, and a CR or LF
  in them would be a request- or response-splitting vector.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import orjson

from gateway.hybridconnection.errors import (
    InvalidFieldError,
    MalformedCommandError,
    MalformedMessageError,
    MalformedRequestError,
    MessageTooLargeError,
    MissingFieldError,
    ProtocolError,
    UnknownCommandError,
)
from gateway.hybridconnection.records import slot_setters

# Section 5.4: .NET reads control messages into a 64 KiB buffer; nothing legitimate is larger.
MAX_CONTROL_MESSAGE_SIZE: Final = 64 * 1024
# Section 5.2: the service carries at most 32 KB of header metadata; a few hundred headers at most.
MAX_HEADERS: Final = 256
# Section 5.2 and 7: the service carries at most 32 KB of HTTP header metadata per request or
# response, counted as each header's name and value in UTF-8 plus four bytes (": " and CRLF).
MAX_HEADER_METADATA: Final = 32 * 1024
# Bound for single string fields (ids, addresses, targets, tokens); generous but finite.
MAX_FIELD_LENGTH: Final = 16 * 1024

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 field-value / reason-phrase: HTAB, SP, VCHAR, obs-text. No CR, LF, NUL or other CTLs.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

# Methods known to be tokens, so the common ones skip the regular expression (RFC 9110 section 9).
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"})

_EMPTY_HEADERS: Final[Mapping[str, str]] = MappingProxyType({})
# The ASCII characters of the two sets above (a token's, a field value's), as bytes for
# ``bytes.translate``.
TOKEN_BYTES: Final = bytes(c for c in range(128) if _TOKEN.fullmatch(chr(c)))
FIELD_BYTES: Final = bytes(c for c in range(128) if not _CONTROL_CHARS.search(chr(c)))


@dataclass(frozen=True, slots=True, init=False)
class RemoteEndpoint:
    """The sender's network address as the service saw it (section 3.2, optional field)."""

    address: str
    port: int

    def __init__(self, address: str, port: int) -> None:
        set_address, set_port = _ENDPOINT_SLOTS  # made per request (see records.py)
        set_address(self, address)
        set_port(self, port)


_ENDPOINT_SLOTS: Final = slot_setters(RemoteEndpoint, "address", "port")


@dataclass(frozen=True, slots=True)
class AcceptCommand:
    """``accept``: a WebSocket sender wants a stream; open ``address`` to take it (section 4)."""

    address: str
    id: str
    connect_headers: Mapping[str, str]
    remote_endpoint: RemoteEndpoint | None = None


@dataclass(frozen=True, slots=True, init=False)
class RequestCommand:
    """``request``, full form: one HTTP request; a binary body message follows iff ``body``.

    ``address`` is present on the control channel (it is where a large response goes) and absent
    when the service repeats the request on a rendezvous socket (section 3.2).
    """

    id: str
    request_target: str
    method: str
    request_headers: Mapping[str, str]
    body: bool
    address: str | None = None
    remote_endpoint: RemoteEndpoint | None = None

    def __init__(
        self,
        id: str,
        request_target: str,
        method: str,
        request_headers: Mapping[str, str],
        body: bool,
        address: str | None = None,
        remote_endpoint: RemoteEndpoint | None = None,
    ) -> None:
        # Made per relayed request: each slot set by its own setter (see records.py).
        s_id, s_target, s_method, s_headers, s_body, s_address, s_endpoint = _REQUEST_SLOTS
        s_id(self, id)
        s_target(self, request_target)
        s_method(self, method)
        s_headers(self, request_headers)
        s_body(self, body)
        s_address(self, address)
        s_endpoint(self, remote_endpoint)


_REQUEST_SLOTS: Final = slot_setters(
    RequestCommand,
    "id",
    "request_target",
    "method",
    "request_headers",
    "body",
    "address",
    "remote_endpoint",
)


@dataclass(frozen=True, slots=True)
class RendezvousRequestCommand:
    """``request``, rendezvous-only form: open ``address``; the request itself arrives there."""

    address: str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class ResponseCommand:
    """``response``: the answer to request ``request_id``; a body follows iff ``body``."""

    request_id: str
    status_code: int
    body: bool
    status_description: str | None = None
    response_headers: Mapping[str, str] = field(default_factory=lambda: _EMPTY_HEADERS)


@dataclass(frozen=True, slots=True)
class RenewTokenCommand:
    """``renewToken``: replace the token bound to the control channel (section 3.2)."""

    token: str


Command = (
    AcceptCommand | RequestCommand | RendezvousRequestCommand | ResponseCommand | RenewTokenCommand
)


def parse_command(data: str | bytes, *, max_size: int = MAX_CONTROL_MESSAGE_SIZE) -> Command:
    """Parse the text of one control-message frame.

    ``max_size`` bounds the UTF-8 length. Raises a ``ProtocolError`` subclass on any defect:
    :class:`MessageTooLargeError`, :class:`MalformedMessageError`, :class:`UnknownCommandError`,
    :class:`MissingFieldError`, :class:`InvalidFieldError` or :class:`MalformedRequestError`.
    """
    if _utf8_length_exceeds(data, max_size):
        raise MessageTooLargeError(f"control message larger than {max_size} bytes")
    try:
        # orjson also refuses lone surrogates (raw or escaped), so every str it returns is
        # encodable on any wire.
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise MalformedMessageError("control message is not valid UTF-8 JSON") from None
    if not isinstance(document, dict):
        raise MalformedMessageError("control message is not a JSON object")
    if len(document) != 1:
        raise MalformedMessageError("control message must have exactly one top-level key")
    ((name, payload),) = document.items()
    parser = _PARSERS.get(name)
    if parser is None:
        raise UnknownCommandError(f"unknown control command {_excerpt(name)}")
    try:
        if not isinstance(payload, dict):
            raise InvalidFieldError(f"{name}: payload is not a JSON object")
        return parser(payload)
    except (MalformedRequestError, MalformedCommandError):
        raise
    except ProtocolError as error:
        # An accept, and a request without `method` or `body` (the rendezvous-only form), are
        # never followed by a body message (section 3.2): a defect in them leaves the framing in
        # step, so the socket need not be given up for it.
        bodiless = name == "accept" or (
            name == "request"
            and isinstance(payload, dict)
            and ("method" not in payload or "body" not in payload)
        )
        if bodiless:
            raise MalformedCommandError(error, command=name) from None
        raise


def encode_command(command: Command) -> str:
    """Serialise a command to the JSON text of one control-message frame (inverse of parse)."""
    return command_bytes(command).decode()


def command_bytes(command: Command) -> bytes:
    """:func:`encode_command` as the UTF-8 payload of the text frame itself."""
    payload: dict[str, Any]
    if isinstance(command, AcceptCommand):
        payload = {
            "address": command.address,
            "id": command.id,
            "connectHeaders": _plain(command.connect_headers),
        }
        if command.remote_endpoint is not None:
            payload["remoteEndpoint"] = _endpoint_json(command.remote_endpoint)
        document: dict[str, Any] = {"accept": payload}
    elif isinstance(command, RequestCommand):
        payload = {}
        if command.address is not None:
            payload["address"] = command.address
        payload["id"] = command.id
        payload["requestTarget"] = command.request_target
        payload["method"] = command.method
        if command.remote_endpoint is not None:
            payload["remoteEndpoint"] = _endpoint_json(command.remote_endpoint)
        payload["requestHeaders"] = _plain(command.request_headers)
        payload["body"] = command.body
        document = {"request": payload}
    elif isinstance(command, RendezvousRequestCommand):
        # Section 3.2: neither `method` nor `body` in this form, so every listener family
        # (.NET/Java look at `body`, hyco-https at `method`) recognises it.
        payload = {"address": command.address}
        if command.id is not None:
            payload["id"] = command.id
        document = {"request": payload}
    elif isinstance(command, ResponseCommand):
        return response_bytes(
            command.request_id,
            command.status_code,
            command.status_description,
            _plain(command.response_headers),
            command.body,
        )
    else:
        document = {"renewToken": {"token": command.token}}
    return orjson.dumps(document)


def response_bytes(
    request_id: str,
    status_code: int,
    status_description: str | None,
    response_headers: dict[str, str],
    body: bool,
) -> bytes:
    """The text frame of a ``response`` message (:func:`command_bytes` of a
    :class:`ResponseCommand`) from its parts, without building the command: the listener
    writes one per relayed request. ``response_headers`` must have ``str`` keys (not a
    subclass: orjson refuses those) and is serialised as it is.
    """
    payload: dict[str, Any] = {"requestId": request_id, "statusCode": status_code}
    if status_description is not None:
        payload["statusDescription"] = status_description
    payload["responseHeaders"] = response_headers
    payload["body"] = body
    return orjson.dumps({"response": payload})


def header_metadata_size(headers: Mapping[str, str]) -> int:
    """The header metadata of ``headers`` (see :data:`MAX_HEADER_METADATA`)."""
    return sum(header_line_size(name, value) for name, value in headers.items())


def header_line_size(name: str, value: str) -> int:
    """One header's share of :data:`MAX_HEADER_METADATA`: name and value in UTF-8, ``": "`` and
    CRLF (the bytes of its line in the head the relay writes)."""
    size = len(value) if value.isascii() else len(value.encode("utf-8", "replace"))
    return len(name) + 4 + size


def _plain(headers: Mapping[str, str]) -> dict[str, str]:
    # orjson accepts only exact str keys; header mappings often use str subclasses (multidict).
    return {str(name): str(value) for name, value in headers.items()}


# --- field readers -------------------------------------------------------------------------


def _utf8_length_exceeds(data: str | bytes, limit: int) -> bool:
    if isinstance(data, bytes):
        return len(data) > limit
    if len(data) > limit:
        return True
    # A str of n code points is at most 4n UTF-8 bytes; only measure when it could matter.
    if len(data) * 4 <= limit:
        return False
    return len(data.encode("utf-8", "surrogatepass")) > limit


def _excerpt(value: str) -> str:
    """A short, quoted, control-character-free rendering of peer input for messages."""
    cleaned = _CONTROL_CHARS.sub("?", value[:40])
    return repr(cleaned) + ("..." if len(value) > 40 else "")


def _require(payload: dict[str, Any], command: str, key: str) -> object:
    if key not in payload:
        raise MissingFieldError(f"{command}: missing required field {key!r}")
    return payload[key]


def _text(value: object, where: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidFieldError(f"{where}: expected a string")
    if not value and not allow_empty:
        raise InvalidFieldError(f"{where}: must not be empty")
    if len(value) > MAX_FIELD_LENGTH:
        raise InvalidFieldError(f"{where}: longer than {MAX_FIELD_LENGTH} characters")
    # A printable string has no control character; only one that is not (a TAB, a non-ASCII
    # character that is not printable) needs the exact test.
    if not value.isprintable() and _CONTROL_CHARS.search(value):
        raise InvalidFieldError(f"{where}: contains control characters")
    return value


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidFieldError(f"{where}: expected true or false")
    return value


def _headers(value: object, where: str) -> Mapping[str, str]:
    if not isinstance(value, dict):
        raise InvalidFieldError(f"{where}: expected an object of string values")
    if len(value) > MAX_HEADERS:
        raise InvalidFieldError(f"{where}: more than {MAX_HEADERS} headers")
    if _ascii_fields_fit(value):
        # The parsed document's own dict: nothing else refers to it.
        return MappingProxyType(value)
    # Header by header: non-ASCII values, and the refusal that names the first bad header.
    result: dict[str, str] = {}
    for name, item in value.items():
        if not _TOKEN.fullmatch(name):
            raise InvalidFieldError(f"{where}: header name {_excerpt(name)} is not an HTTP token")
        if (
            isinstance(item, str)
            and len(item) <= MAX_FIELD_LENGTH
            and not _CONTROL_CHARS.search(item)
        ):
            result[name] = item  # the checks of _text, without naming the field unless it fails
        else:
            result[name] = _text(item, f"{where}[{name}]", allow_empty=True)
    return MappingProxyType(result)


def _ascii_fields_fit(headers: dict[str, Any], fields: str = "") -> bool:
    """Whether every name is a token and every value an ASCII string that may stand on a field
    line (at most :data:`MAX_FIELD_LENGTH` characters, no control character): the common case,
    checked with one ``bytes.translate`` over all names and one over all values (deleting the
    allowed characters leaves the refused ones) instead of two regular expressions per header.
    ``fields`` (other strings of the message, their lengths checked by the caller) is held to
    the values' rule in the same pass. ``False`` sends the caller to the header-by-header
    checks, which also accept non-ASCII values.
    """
    if not headers and not fields:
        return True
    try:
        values = "".join(headers.values())
    except TypeError:  # a value that is not a string
        return False
    names = "".join(headers)
    text = fields + values if fields else values
    return (
        names.isascii()
        and text.isascii()
        and not names.encode("ascii").translate(None, TOKEN_BYTES)
        and not text.encode("ascii").translate(None, FIELD_BYTES)
        and "" not in headers
        # No single value is longer than all of them together.
        and (len(values) <= MAX_FIELD_LENGTH or max(map(len, headers.values())) <= MAX_FIELD_LENGTH)
    )


def _endpoint(value: object, where: str) -> RemoteEndpoint:
    if not isinstance(value, dict):
        raise InvalidFieldError(f"{where}: expected an object")
    address = _text(_require(value, where, "address"), f"{where}.address", allow_empty=True)
    port = _require(value, where, "port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InvalidFieldError(f"{where}.port: expected an integer 0-65535")
    return RemoteEndpoint(address, port)


def _optional_endpoint(payload: dict[str, Any], where: str) -> RemoteEndpoint | None:
    value = payload.get("remoteEndpoint")
    if value is None:
        return None
    return _endpoint(value, f"{where}.remoteEndpoint")


def _endpoint_json(endpoint: RemoteEndpoint) -> dict[str, Any]:
    return {"address": endpoint.address, "port": endpoint.port}


def _status_code(value: object) -> int:
    # Section 3.2: SDKs send a number, the guide's example a string; accept both. Any 100-999 code
    # is passable end to end (the .NET live tests relay 418, 450, 502, 504).
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) == 3:
        code = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        code = value
    else:
        raise InvalidFieldError("response.statusCode: expected a 3-digit number")
    if not 100 <= code <= 999:
        raise InvalidFieldError("response.statusCode: outside 100-999")
    return code


# --- command parsers -----------------------------------------------------------------------


def _parse_accept(payload: dict[str, Any]) -> AcceptCommand:
    return AcceptCommand(
        address=_text(_require(payload, "accept", "address"), "accept.address"),
        id=_text(_require(payload, "accept", "id"), "accept.id"),
        connect_headers=_headers(
            _require(payload, "accept", "connectHeaders"), "accept.connectHeaders"
        ),
        remote_endpoint=_optional_endpoint(payload, "accept"),
    )


def _parse_request(payload: dict[str, Any]) -> RequestCommand | RendezvousRequestCommand:
    command = _common_request(payload)
    if command is not None:
        return command
    return _checked_request(payload)


def _common_request(payload: dict[str, Any]) -> RequestCommand | None:
    """The full-form request every relayed call is, checked with a few tests over all its
    fields together; ``None`` for anything else, which :func:`_checked_request` then reads
    field by field (and names the defect, if there is one).

    Accepts only what :func:`_checked_request` accepts, and returns what it would: a common
    method, ASCII string fields without a control character, headers that pass
    :func:`_ascii_fields_fit` (which checks those fields in the same pass), an endpoint with a
    string address and a port in range.
    """
    request_id = payload.get("id")
    target = payload.get("requestTarget")
    method = payload.get("method")
    body = payload.get("body")
    address = payload.get("address")
    if (
        type(request_id) is not str
        or type(target) is not str
        or type(method) is not str
        or (body is not True and body is not False)
        or method not in _METHODS
        or not request_id
        or not target.startswith("/")
        or " " in target
        or len(request_id) > MAX_FIELD_LENGTH
        or len(target) > MAX_FIELD_LENGTH
    ):
        return None
    fields = request_id + target
    if address is not None:
        if type(address) is not str or not address or len(address) > MAX_FIELD_LENGTH:
            return None
        fields += address
    endpoint = payload.get("remoteEndpoint")
    remote = None
    if endpoint is not None:
        if type(endpoint) is not dict:
            return None
        remote_address = endpoint.get("address")
        port = endpoint.get("port")
        if (
            type(remote_address) is not str
            or type(port) is not int
            or not 0 <= port <= 65535
            or len(remote_address) > MAX_FIELD_LENGTH
        ):
            return None
        fields += remote_address
        remote = RemoteEndpoint(remote_address, port)
    headers = payload.get("requestHeaders")
    listed = {} if headers is None else headers
    # The string fields are held to _text's rule in the headers' pass: ASCII, no control
    # character (TAB is allowed, as there).
    if (
        type(listed) is not dict
        or len(listed) > MAX_HEADERS
        or not _ascii_fields_fit(listed, fields)
    ):
        return None
    # The parsed document's own dict, as _headers does.
    checked = _EMPTY_HEADERS if headers is None else MappingProxyType(headers)
    return RequestCommand(request_id, target, method, checked, body, address, remote)


def _checked_request(payload: dict[str, Any]) -> RequestCommand | RendezvousRequestCommand:
    # Section 3.2: .NET/Java decide on `body`, hyco-https on `method`; a message missing either is
    # the rendezvous-only form.
    if "method" not in payload or "body" not in payload:
        raw_id = payload.get("id")
        return RendezvousRequestCommand(
            address=_text(_require(payload, "request", "address"), "request.address"),
            id=None if raw_id is None else _text(raw_id, "request.id"),
        )
    # The id (echoed as `requestId`, section 3.2) and the body flag (whether one binary message
    # follows, section 5.4) are what the listener needs to answer the request and to stay in step
    # with the framing. With both sound, any other defect makes the request answerable as
    # malformed rather than a reason to distrust the whole socket.
    request_id = _text(_require(payload, "request", "id"), "request.id")
    body = _bool(payload["body"], "request.body")
    try:
        return _full_request(payload, request_id, body)
    except ProtocolError as error:
        raise MalformedRequestError(error, request_id=request_id, body=body) from error


def _full_request(payload: dict[str, Any], request_id: str, body: bool) -> RequestCommand:
    method = payload["method"]
    if not isinstance(method, str) or (method not in _METHODS and not _TOKEN.fullmatch(method)):
        raise InvalidFieldError("request.method: expected an HTTP method token")
    target = _text(_require(payload, "request", "requestTarget"), "request.requestTarget")
    if not target.startswith("/") or " " in target:
        raise InvalidFieldError("request.requestTarget: expected an origin-form target")
    raw_address = payload.get("address")
    raw_headers = payload.get("requestHeaders")
    # Positional: a call by keyword costs more, and this is made per relayed request.
    return RequestCommand(
        request_id,
        target,
        method,
        _EMPTY_HEADERS if raw_headers is None else _headers(raw_headers, "request.requestHeaders"),
        body,
        None if raw_address is None else _text(raw_address, "request.address"),
        _optional_endpoint(payload, "request"),
    )


def _parse_response(payload: dict[str, Any]) -> ResponseCommand:
    description = payload.get("statusDescription")
    raw_headers = payload.get("responseHeaders")
    return ResponseCommand(
        request_id=_text(_require(payload, "response", "requestId"), "response.requestId"),
        status_code=_status_code(_require(payload, "response", "statusCode")),
        body=_bool(_require(payload, "response", "body"), "response.body"),
        status_description=(
            None
            if description is None
            else _text(description, "response.statusDescription", allow_empty=True)
        ),
        response_headers=(
            _EMPTY_HEADERS
            if raw_headers is None
            else _headers(raw_headers, "response.responseHeaders")
        ),
    )


def _parse_renew_token(payload: dict[str, Any]) -> RenewTokenCommand:
    return RenewTokenCommand(
        token=_text(_require(payload, "renewToken", "token"), "renewToken.token")
    )


_PARSERS: Final[dict[str, Callable[[dict[str, Any]], Command]]] = {
    "accept": _parse_accept,
    "request": _parse_request,
    "response": _parse_response,
    "renewToken": _parse_renew_token,
}
