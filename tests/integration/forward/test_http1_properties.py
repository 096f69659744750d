"""The forward's answer reading and request writing against rule-by-rule references.

gateway.forward.http1 and gateway.forward.upstream take shortcuts on every request: a field name
is lower-cased only when its length is that of a framing name, the head's field count is the
length of its field list, a declared Content-Length is converted only when it has as many digits
as the body cap, a Host header is looked for only among four-character names. Each property here
runs generated input through the real code (a real connection on a loopback transport, or the
real Upstream against a loopback target) and through the rule as the module's docstring states
it, one field at a time, and requires the same outcome.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field

import httptools
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.forward.http1 import MAX_HEADERS, MAX_LINE, Connection, ExchangeError, request_head
from gateway.forward.upstream import Upstream, UpstreamError, drain
from tests.integration.forward.test_upstream import Dialled, make_config, table


@dataclass
class RefusedError(Exception):
    """The reference's refusal: the error code the forward reports."""

    code: str


@dataclass
class Reference:
    """The response rules, one callback at a time and with no shortcut: every field counted
    (head and trailers), every name and value held to MAX_LINE, every name lower-cased and
    compared, one Content-Length, one Transfer-Encoding and only ``chunked``, every
    Connection value kept, 1xx heads skipped, 101 refused."""

    fields: list[tuple[bytes, bytes]] = field(default_factory=list)
    connection: list[bytes] = field(default_factory=list)
    length: bytes | None = None
    reason: bytes = b""
    code: int = 0
    body: bytes = b""
    final: bool = False
    complete: bool = False
    _count: int = 0
    _in_head: bool = False
    _chunked: bool = False

    def on_message_begin(self) -> None:
        if self.final:
            raise RefusedError("upstream_protocol_error")
        self.fields, self.connection, self.length, self.reason = [], [], None, b""
        self._count, self._in_head, self._chunked = 0, True, False

    def on_status(self, reason: bytes) -> None:
        self.reason += reason
        if len(self.reason) > MAX_LINE:
            raise RefusedError("upstream_headers_too_large")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count += 1
        if self._count > MAX_HEADERS:
            raise RefusedError("upstream_headers_too_large")
        if len(name) > MAX_LINE or len(value) > MAX_LINE:
            raise RefusedError("upstream_headers_too_large")
        if not self._in_head:
            return
        lowered = name.lower()
        if lowered == b"content-length":
            if self.length is not None:
                raise RefusedError("upstream_protocol_error")
            self.length = value
        elif lowered == b"transfer-encoding":
            if self._chunked or value.strip().lower() != b"chunked":
                raise RefusedError("upstream_protocol_error")
            self._chunked = True
        elif lowered == b"connection":
            self.connection.append(value)
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self.code = self.parser.get_status_code()
        if self.code == 101:
            raise RefusedError("upstream_protocol_error")
        self.final = self.code >= 200

    def on_body(self, data: bytes) -> None:
        if self.final and not self.complete:
            self.body += data

    def on_message_complete(self) -> None:
        if self.final:
            self.complete = True

    def read(self, pieces: list[bytes]) -> tuple[object, ...]:
        self.parser = httptools.HttpResponseParser(self)
        try:
            for piece in pieces:
                self.parser.feed_data(piece)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            return ("refused", cause.code if isinstance(cause, RefusedError) else "?")
        except httptools.HttpParserError:
            return ("refused", "upstream_protocol_error")
        if not self.final:
            return ("no answer",)
        return (
            "answer",
            self.code,
            self.reason.decode("latin-1"),
            self.fields,
            self.length,
            self.connection,
            self.body,
            self.complete,
        )


async def read_with_connection(pieces: list[bytes]) -> tuple[object, ...]:
    """The same bytes, in the same pieces, through a real Connection on a loopback transport."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    try:
        _, connection = await loop.create_connection(lambda: Connection(loop), sock=ours)
        connection.begin("GET", 5.0, 5.0)
        for piece in pieces:
            connection.data_received(piece)
            if connection.failure is not None:
                break
        failure = connection.failure
        if failure is not None:
            return ("refused", failure.code)
        response, body = connection.response, connection.body
        if response is None or body is None:
            return ("no answer",)
        chunks = []
        while body.ready() and not body.at_eof():
            chunks.append(body.read_ready(1 << 20))
        return (
            "answer",
            response.code,
            response.reason,
            response.raw_headers,
            response.content_length,
            response.connection,
            b"".join(chunks),
            body.is_eof(),
        )
    except ExchangeError as exc:
        return ("refused", exc.code)
    finally:
        connection.close()
        theirs.close()


_FRAMING = ["content-length", "transfer-encoding", "connection"]
# Names of the framing names' lengths that are not framing names, and ordinary ones.
_OTHERS = ["content-lengtx", "transfer-encodinz", "connectioX", "keep-alive", "X-A", "Date", "te"]


def _any_case(name: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda upper: "".join(c.upper() if u else c for c, u in zip(name, upper, strict=True))
    )


_NAMES = st.one_of(
    st.sampled_from(_FRAMING).flatmap(_any_case),
    st.sampled_from(_OTHERS).flatmap(_any_case),
    st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,18}", fullmatch=True),
)
_VALUES = st.one_of(
    st.sampled_from(["2", " 2", "2 ", "chunked", " Chunked ", "gzip", "close", "x-a, Date"]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=12),
    st.integers(min_value=MAX_LINE - 2, max_value=MAX_LINE + 2).map(lambda n: "v" * n),
)


@st.composite
def answers(draw: st.DrawFn) -> list[bytes]:
    """A response (at times after a 1xx one, at times with more fields than allowed, at times
    with trailers), cut into pieces at generated points."""
    interim = draw(st.sampled_from([b"", b"HTTP/1.1 103 Early\r\nLink: </a>\r\n\r\n"]))
    fields = draw(st.lists(st.tuples(_NAMES, _VALUES), max_size=6))
    # At times the head (its framing field included) is one field short of the limit, at it,
    # or past it; trailers then take the count on.
    room = draw(st.sampled_from([None, None, -1, 0, 1]))
    if room is not None:
        fields += [("X-Filler", "f")] * max(0, MAX_HEADERS - 1 - len(fields) + room)
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(
        f"{name}: {value}\r\n".encode("latin-1") for name, value in fields
    )
    framing = draw(st.sampled_from(["length", "chunked", "none"]))
    if framing == "length":
        message = head + b"Content-Length: 2\r\n\r\nok"
    elif framing == "chunked":
        trailers = b"".join(b"T-%d: t\r\n" % i for i in range(draw(st.integers(0, 3))))
        message = head + b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n" + trailers + b"\r\n"
    else:
        message = head + b"\r\nok"
    data = interim + message
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True) if b > a]


@settings(max_examples=300)
@given(pieces=answers())
async def test_the_answer_is_read_as_the_rules_read_it_field_by_field(
    pieces: list[bytes],
) -> None:
    assert await read_with_connection(pieces) == Reference().read(pieces)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cap=st.integers(min_value=0, max_value=1200),
    declared=st.integers(min_value=0, max_value=1500),
    zeros=st.integers(min_value=0, max_value=4),
)
async def test_a_declared_length_is_refused_exactly_when_it_exceeds_the_cap(
    cap: int, declared: int, zeros: int
) -> None:
    # RFC 9110 section 8.6: Content-Length is 1*DIGIT, leading zeros included. The target sends
    # the head alone and closes: only the check of the declared length, before any byte of the
    # body is read, refuses the answer as too large.
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: %s\r\n\r\n" % (b"0" * zeros + b"%d" % declared)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    scripted_config = make_config(limits={"max_response_body_bytes": cap})
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    upstream = Upstream(
        scripted_config,
        resolver=table({"erp.corp.local": ["10.1.2.3"]}),
        redirect=Dialled(port),
    )
    try:
        response = await upstream.send(
            "erp", method="GET", path="/api/x", query=None, headers=[], body=b""
        )
        outcome: object = len(await drain(response))
    except UpstreamError as exc:
        outcome = exc.code
    finally:
        await upstream.close()
        server.close()
        await server.wait_closed()
    if declared > cap:
        assert outcome == "upstream_body_too_large"
    else:
        assert outcome == (0 if declared == 0 else "upstream_protocol_error")


_HEADER_NAMES = st.one_of(
    _any_case("host"),
    st.sampled_from(["date", "Xost", "hosts", "hos", "accept"]),
    st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True),
)


@given(
    headers=st.lists(
        st.tuples(_HEADER_NAMES, st.from_regex(r"[a-z0-9]{0,6}", fullmatch=True)), max_size=8
    ),
    body=st.sampled_from([b"", b"abc"]),
)
def test_the_request_head_carries_the_one_configured_host_and_every_other_header(
    headers: list[tuple[str, str]], body: bytes
) -> None:
    # RFC 9110 section 7.2: exactly one Host, the target's, first; the rest in order.
    head = request_head("POST", "/x", headers, body, host="erp.corp.local")
    assert head is not None
    lines = head.decode("utf-8").split("\r\n")
    kept = [f"{name}: {value}" for name, value in headers if name.lower() != "host"]
    framing = [f"content-length: {len(body)}"]
    assert lines == ["POST /x HTTP/1.1", "host: erp.corp.local", *kept, *framing, "", ""]


# RFC 9110 section 7.6.1: the hop-by-hop fields, spelt as a target might; framing fields apart.
_HOP_NAMES = ["keep-alive", "proxy-authenticate", "proxy-connection", "te", "trailer"]
# Names of the same lengths that describe the resource, and names a Connection field may list.
_END_TO_END = ["keep-alivx", "tx", "trailex", "content-type", "etag", "x-hop", "X-Other"]
_LISTABLE = ["x-hop", "X-Other", "etag", "tx", "te", "keep-alive", "date"]


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fields=st.lists(
        st.tuples(
            st.sampled_from(_HOP_NAMES + _END_TO_END).flatmap(_any_case),
            st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True),
        ),
        max_size=8,
    ),
    listed=st.lists(
        st.tuples(
            _any_case("connection"),
            st.lists(st.sampled_from(_LISTABLE).flatmap(_any_case), max_size=3),
        ),
        max_size=2,
    ),
)
async def test_the_answer_keeps_every_field_but_the_hop_by_hop_ones(
    fields: list[tuple[str, str]], listed: list[tuple[str, list[str]]]
) -> None:
    # Each Connection field lists names (any case, spaces around commas) for this hop only.
    fields = [(name, value) for name, value in fields if name.lower() != "connection"]
    fields += [(spelt, " , ".join(names)) for spelt, names in listed]
    reply = (
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(f"{name}: {value}\r\n".encode() for name, value in fields)
        + b"Content-Length: 2\r\n\r\nok"
    )

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    upstream = Upstream(
        make_config(), resolver=table({"erp.corp.local": ["10.1.2.3"]}), redirect=Dialled(port)
    )
    try:
        response = await upstream.send(
            "erp", method="GET", path="/api/x", query=None, headers=[], body=b""
        )
        assert await drain(response) == b"ok"
    finally:
        await upstream.close()
        server.close()
        await server.wait_closed()
    dropped = {*_HOP_NAMES, "connection", "transfer-encoding", "upgrade", "content-length"}
    dropped |= {name.lower() for _, names in listed for name in names}
    assert response.headers == [
        (name, value) for name, value in fields if name.lower() not in dropped
    ]
