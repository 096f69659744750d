"""An in-process TCP fault proxy on loopback, placed between the gateway and the relay emulator or
between the gateway and an on-prem target.

It forwards bytes both ways and misbehaves on demand:

* :meth:`FaultProxy.drop_all` resets every open connection (RST, no FIN), as a NAT or firewall
  that forgets a flow does; :meth:`drop_every` keeps doing it on a period;
* :meth:`FaultProxy.blackhole` silences every open connection in both directions while keeping
  its sockets open: no FIN, no RST, nothing (the half-open socket of catalogue H 123); new
  connections are not affected (the path recovered, the old flows are dead);
* :attr:`hang` accepts new connections and never forwards anything on them;
* :attr:`drip` delivers upstream bytes to the client one at a time with a pause between them;
* :attr:`reset_after` resets a connection once that many upstream bytes have reached the client;
* :attr:`refuse` resets new connections at once;
* :meth:`retarget` points new connections at another upstream port (a restarted service).

With ``tunnel=True`` it is an HTTP proxy instead of a port forwarder: ``CONNECT`` tunnels (RFC
9110 section 9.3.6) and absolute-form requests (RFC 9112 section 3.2.2; how a plain ``ws://``
handshake goes through a proxy) are both served. The gateway's outbound proxy setting sends relay
traffic through it, so control channels and rendezvous sockets both cross it while the relay
addresses the gateway dials stay the relay's own (the rendezvous address check compares them with
the configured endpoint).

Counters say what happened. Loopback only: the proxy listens on and dials 127.0.0.1, and a tunnel
to anything else is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field

_CHUNK = 65536
# SO_LINGER with a zero timeout: close() sends RST instead of FIN.
_LINGER_RESET = struct.pack("ii", 1, 0)


@dataclass
class ProxyCounters:
    """What the proxy saw: connections accepted, reset by a knob, bytes each way."""

    accepted: int = 0
    reset: int = 0
    to_upstream: int = 0
    to_client: int = 0


@dataclass(eq=False)
class _Flow:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    silent: bool = False
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


def _reset(writer: asyncio.StreamWriter | None) -> None:
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    writer.transport.abort()


class FaultProxy:
    """``async with FaultProxy(upstream_port) as proxy:`` then dial ``127.0.0.1:proxy.port``."""

    def __init__(
        self, upstream_port: int = 0, *, tunnel: bool = False, connect_timeout: float = 2.0
    ) -> None:
        self.upstream_port = upstream_port
        self.tunnel = tunnel
        self.connect_timeout = connect_timeout
        self.hang = False
        self.refuse = False
        self.drip: float | None = None
        """Seconds between single bytes delivered upstream -> client; None delivers at once."""
        self.reset_after: int | None = None
        """Reset a connection once this many upstream bytes reached its client."""
        self.counters = ProxyCounters()
        self._flows: set[_Flow] = set()
        self._server: asyncio.Server | None = None
        self._dropper: asyncio.Task[None] | None = None
        self.port = 0

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop listening and reset every flow."""
        self.drop_every(None)
        if self._server is not None:
            self._server.close()
        self.drop_all()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # -- knobs ----------------------------------------------------------------------------------

    def drop_all(self) -> int:
        """Reset every open connection (both legs); returns how many flows were cut."""
        flows = list(self._flows)
        for flow in flows:
            self._cut(flow)
        return len(flows)

    def blackhole(self) -> int:
        """Silence every open connection for good; returns how many flows went quiet."""
        for flow in self._flows:
            flow.silent = True
        return len(self._flows)

    def drop_every(self, seconds: float | None) -> None:
        """Reset every open connection each ``seconds`` (``None`` stops)."""
        if self._dropper is not None:
            self._dropper.cancel()
            self._dropper = None
        if seconds is not None:
            self._dropper = asyncio.create_task(self._drop_loop(seconds))

    def retarget(self, upstream_port: int) -> None:
        """Send new connections to ``upstream_port`` from now on."""
        self.upstream_port = upstream_port

    @property
    def open_flows(self) -> int:
        """Connections currently open through the proxy."""
        return len(self._flows)

    # -- internals ------------------------------------------------------------------------------

    async def _drop_loop(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            self.drop_all()

    def _cut(self, flow: _Flow) -> None:
        self.counters.reset += 1
        _reset(flow.client)
        _reset(flow.upstream)
        for task in flow.tasks:
            task.cancel()
        self._flows.discard(flow)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counters.accepted += 1
        flow = _Flow(writer)
        self._flows.add(flow)
        try:
            if self.refuse:
                self._cut(flow)
                return
            if self.hang:
                # Accepted and then silence: read and discard until the client gives up.
                while await reader.read(_CHUNK):
                    pass
                return
            port, head = self.upstream_port, b""
            if self.tunnel:
                route = await self._proxy_request(reader, writer)
                if route is None:
                    return
                port, head = route
            try:
                async with asyncio.timeout(self.connect_timeout):
                    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except (OSError, TimeoutError):
                self._cut(flow)
                return
            if self.tunnel and not head:
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
            elif head:
                up_writer.write(head)
            flow.upstream = up_writer
            outbound = asyncio.create_task(self._pump(reader, up_writer, flow, upstream=True))
            inbound = asyncio.create_task(self._pump(up_reader, writer, flow, upstream=False))
            flow.tasks = {outbound, inbound}
            await asyncio.gather(outbound, inbound, return_exceptions=True)
        finally:
            self._flows.discard(flow)
            for leg in (flow.client, flow.upstream):
                if leg is not None and not leg.transport.is_closing():
                    leg.close()

    async def _proxy_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[int, bytes] | None:
        """Read a proxy request head for 127.0.0.1: (port, head to forward), None if refused.

        ``CONNECT 127.0.0.1:PORT`` gives no head (the tunnel starts empty); an absolute-form
        ``GET http://127.0.0.1:PORT/path`` gives the head rewritten to origin-form.
        """
        try:
            async with asyncio.timeout(self.connect_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            return None
        line, _, rest = head.partition(b"\r\n")
        method, _, remainder = line.decode("latin-1").partition(" ")
        target, _, version = remainder.partition(" ")
        if method == "CONNECT":
            authority, path = target, ""
        else:
            _, _, after_scheme = target.partition("://")
            authority, slash, tail = after_scheme.partition("/")
            path = slash + tail
        host, _, port = authority.rpartition(":")
        if host.strip("[]") not in ("127.0.0.1", "localhost", "::1") or not port.isdigit():
            writer.write(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
            return None
        if method == "CONNECT":
            return int(port), b""
        return int(port), f"{method} {path} {version}\r\n".encode("latin-1") + rest

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        flow: _Flow,
        *,
        upstream: bool,
    ) -> None:
        delivered = 0
        try:
            while data := await source.read(_CHUNK):
                if flow.silent:
                    continue  # swallowed: the peer never learns anything happened
                if upstream:
                    self.counters.to_upstream += len(data)
                    sink.write(data)
                    await sink.drain()
                    continue
                for piece in self._pieces(data):
                    if self.reset_after is not None and delivered + len(piece) > self.reset_after:
                        sink.write(piece[: self.reset_after - delivered])
                        await sink.drain()
                        self._cut(flow)
                        return
                    sink.write(piece)
                    await sink.drain()
                    delivered += len(piece)
                    self.counters.to_client += len(piece)
                    if self.drip is not None:
                        await asyncio.sleep(self.drip)
            if sink.can_write_eof():
                sink.write_eof()
        except (ConnectionError, OSError):
            self._cut(flow)

    def _pieces(self, data: bytes) -> list[bytes]:
        if self.drip is None:
            return [data]
        return [data[index : index + 1] for index in range(len(data))]
