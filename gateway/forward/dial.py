"""The dial step: the only place that turns a target into an address and a socket.

SSRF defence (catalogue section A, ARCHITECTURE rule 5): the host always comes from gateway.yaml,
never from the request; it is resolved once per connection, with a timeout (an IP literal is taken
as written); every address is checked against the target's ``allowed_cidrs`` and the special
ranges (loopback, link-local and metadata, ...) unless the target explicitly allows them; the
connection then goes to a checked address while TLS SNI and ``Host`` keep the configured name.

Structure, not convention: :class:`DialStep` is the socket factory of every outbound connection
(HTTP and WebSocket through :meth:`DialStep.connector`, raw TCP through
:meth:`DialStep.open_stream`), and it creates a socket only for an endpoint it issued after the
check. The HTTP client is never given a target's real host: it is given a ``.invalid`` name only
the dial step resolves. An HTTP client connects to an IP literal without asking its resolver, and
resolving again at connect time would let a DNS answer change between check and use; neither can
bypass a check that sits in the socket factory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from gateway.config.model import Target
from gateway.config.semantics import special_range
from gateway.errors import GatewayError

if TYPE_CHECKING:
    import aiohttp
    from aiohttp.abc import ResolveResult

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_RESOLVE_TIMEOUT = 2.0
MAX_ADDRESSES = 32


class DialError(GatewayError):
    """The target cannot be dialled: ``code`` is the reason, ``status`` the answer (502/504)."""

    def __init__(self, code: str, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


# Name resolution seam: the system resolver in production, a table in tests. Returns every
# address of the host; raises OSError when the name does not resolve.
Resolver = Callable[[str, int], Awaitable[Sequence["IPAddress"]]]


async def close_stream(writer: asyncio.StreamWriter, within: float) -> None:
    """Close a connection opened by :meth:`DialStep.open_stream`, within ``within`` seconds.

    A graceful close sends what the transport still buffers before the FIN, and asyncio waits for
    that as long as it takes: a peer that stopped reading would keep the socket (and its buffered
    bytes) for the life of the process. Past ``within`` the connection is reset instead
    (:func:`reset`). Never
    raises (but for the caller's own cancellation).
    """
    writer.close()
    closed = False
    try:
        # A timeout, the peer's reset or a TLS error all leave the connection to reset below.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), within)
            closed = True
    finally:
        # Also when the caller is cancelled while waiting: the socket must not outlive it.
        if not closed:
            reset(writer.transport)


def reset(transport: asyncio.WriteTransport) -> None:
    """Abort ``transport`` with a TCP reset.

    A plain abort frees the file descriptor, but the kernel would still try to deliver the unsent
    bytes to a peer that does not read them, keeping the connection open on both hosts; a zero
    linger time (SO_LINGER, POSIX ``close``) discards them and sends a reset (RFC 9293 section
    3.6), so the peer learns at once that the connection ended.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # Called, not looked for: uvloop's transports have abort() but are not registered as
    # asyncio.WriteTransport, and an isinstance() test sent them to a graceful close instead.
    transport.abort()


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Resolve with the operating system's resolver (``getaddrinfo``), TCP addresses only."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(_unscoped(str(sockaddr[0])))
        if address not in found:
            found.append(address)
    return found


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which addresses one target may be reached on."""

    networks: tuple[IPNetwork, ...]
    allow_special: bool

    @classmethod
    def for_target(cls, target: Target) -> AddressPolicy:
        """The policy written in the target's ``allowed_cidrs`` (or its IP literal host)."""
        networks = tuple(ipaddress.ip_network(cidr) for cidr in target.allowed_cidrs)
        if not networks:  # config validation guarantees the host is then an IP literal
            networks = (ipaddress.ip_network(target.host),)
        return cls(networks, target.allow_special_addresses)

    def permits(self, address: IPAddress) -> bool:
        """Whether ``address`` is inside the allowed networks and not in a forbidden range."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            # ::ffff:127.0.0.1 reaches 127.0.0.1; judge the IPv4 address it stands for.
            address = address.ipv4_mapped
        if not any(address in network for network in self.networks):
            return False
        return self.allow_special or special_range(ipaddress.ip_network(address)) is None


async def resolve_checked(
    target: Target,
    policy: AddressPolicy,
    resolver: Resolver = system_resolver,
    resolve_timeout: float = DEFAULT_RESOLVE_TIMEOUT,
) -> list[IPAddress]:
    """Resolve ``target.host`` once and keep only permitted addresses (in resolver order).

    Raises :class:`DialError`: ``dns_timeout`` (504), ``dns_failure`` (502) or
    ``resolved_address_not_allowed`` (502) when nothing permitted is left.
    """
    try:
        literal: IPAddress | None = ipaddress.ip_address(target.host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses: Sequence[IPAddress] = [literal]
    else:
        try:
            async with asyncio.timeout(resolve_timeout):
                addresses = await resolver(target.host, target.effective_port)
        except TimeoutError:
            raise DialError(
                "dns_timeout", f"resolving {target.host} took longer than {resolve_timeout}s", 504
            ) from None
        except (OSError, UnicodeError) as exc:
            raise DialError("dns_failure", f"cannot resolve {target.host}: {exc}") from None
    permitted = [a for a in list(addresses)[:MAX_ADDRESSES] if policy.permits(a)]
    if not permitted:
        shown = ", ".join(str(a) for a in list(addresses)[:4]) or "no addresses"
        raise DialError(
            "resolved_address_not_allowed",
            f"{target.host} resolved to {shown}, none inside allowed_cidrs",
        )
    return permitted


Redirect = Callable[[IPAddress, int], tuple[str, int]]
# Test seam: the last look at the exact endpoint a socket is about to be connected to (after any
# redirect). It raises OSError to refuse. Production passes none; the security suite passes one
# that refuses everything but loopback, so a connection that escaped the dial step fails loudly.
Guard = Callable[[IPAddress, int], None]
# What a socket factory is handed (the shape of one getaddrinfo() entry, as aiohttp passes it).
AddrInfo = tuple[
    int | socket.AddressFamily,
    int | socket.SocketKind,
    int,
    str,
    tuple[str, int] | tuple[str, int, int, int],
]

# Names the HTTP client is given instead of the targets' hosts (RFC 6761 section 6.4: ".invalid"
# never resolves anywhere). Only :class:`DialStep` can turn one into an address, so a URL carrying
# a real host name or, worse, an IP literal (which aiohttp connects to without asking any
# resolver) cannot reach a socket.
DIAL_DOMAIN = "dial.invalid"
# The endpoints the dial step issued to the connection being made in this task, each good for
# one socket. A context variable binds them to that flow: the client resolves and then connects
# in the same task (or in tasks it starts from there, which inherit the context), so another
# request, or a URL that skipped the resolver, finds none and is refused (fail closed).
_ISSUED: ContextVar[frozenset[tuple[IPAddress, int]]] = ContextVar(
    "gateway_dial_issued", default=frozenset()
)


class ConnectRefusedError(DialError, OSError):
    """The dial step refused to create a socket for an endpoint it did not issue (or the guard
    refused it). An OSError too, so connection libraries report it as a failed connect."""


def _unscoped(host: str) -> str:
    """``host`` without an IPv6 zone ('fe80::1%eth0' is 'fe80::1', RFC 4007 section 11): the
    address is what the checks judge and what the dial step issues."""
    return host.split("%", 1)[0]


def _family(host: str) -> socket.AddressFamily:
    """The socket family for an address written as text (IPv6 literals hold ':')."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _endpoint(host: str, port: int) -> tuple[IPAddress, int]:
    try:
        return ipaddress.ip_address(_unscoped(host)), int(port)
    except ValueError:
        raise ConnectRefusedError("connect_not_dialled", "the endpoint is not an address") from None


class DialStep:
    """The only source of outbound sockets for one connection pool (HTTP, WebSocket and TCP).

    For each new connection it resolves the target's configured host (an IP literal is taken as
    it is, a name goes to the resolver once, with a timeout), keeps the addresses inside the
    target's ``allowed_cidrs`` (:func:`resolve_checked`), applies the ``redirect`` test seam and
    issues those endpoints to the connection being made. :meth:`socket` is the socket factory
    every connection is made with: it creates one socket per endpoint issued to that connection,
    after the ``guard`` seam had its look, and nothing else. So the check runs at connect time,
    for names and literals alike, and nothing in the forwarder can open a connection except
    through here (catalogue A; ARCHITECTURE rule 5).

    The HTTP client reaches it through :meth:`connector`: its resolver answers only for the
    :meth:`dial_host` names of declared targets, and its socket factory is :meth:`socket`.
    """

    def __init__(
        self,
        targets: Mapping[str, Target],
        *,
        resolver: Resolver = system_resolver,
        timeout: float = DEFAULT_RESOLVE_TIMEOUT,
        redirect: Redirect | None = None,
        guard: Guard | None = None,
    ) -> None:
        self._targets = dict(targets)
        self._policies = {name: AddressPolicy.for_target(t) for name, t in self._targets.items()}
        self._hosts = {name: f"t{index}.{DIAL_DOMAIN}" for index, name in enumerate(self._targets)}
        self._names = {host: name for name, host in self._hosts.items()}
        self._resolver = resolver
        self._timeout = timeout
        self._redirect = redirect
        self._guard = guard

    def dial_host(self, name: str) -> str:
        """The host to put in a client URL for target ``name`` (resolvable only here)."""
        return self._hosts[name]

    async def endpoints(self, name: str) -> list[tuple[str, int]]:
        """Resolve and check target ``name`` now; the ``(host, port)`` endpoints to try, in order.

        Raises :class:`DialError` (``dns_timeout``, ``dns_failure``,
        ``resolved_address_not_allowed``).
        """
        target = self._targets[name]
        addresses = await resolve_checked(
            target, self._policies[name], self._resolver, self._timeout
        )
        port = target.effective_port
        issued: list[tuple[IPAddress, int]] = []
        for address in addresses:
            host, connect_port = (
                self._redirect(address, port) if self._redirect else (str(address), port)
            )
            issued.append(_endpoint(host, connect_port))
        _ISSUED.set(frozenset(issued))
        return [(str(address), connect_port) for address, connect_port in issued]

    def socket(self, addr_info: AddrInfo) -> socket.socket:
        """The socket factory: a new socket for an endpoint this step issued, else refuse."""
        family, kind, proto, _name, sockaddr = addr_info
        key = _endpoint(str(sockaddr[0]), int(sockaddr[1]))
        issued = _ISSUED.get()
        if key not in issued:
            raise ConnectRefusedError(
                "connect_not_dialled", f"{key[0]} port {key[1]} was not issued by the dial step"
            )
        _ISSUED.set(issued - {key})
        if self._guard is not None:
            try:
                self._guard(*key)
            except OSError as exc:
                raise ConnectRefusedError("connect_refused_by_guard", str(exc)) from None
        return socket.socket(family, kind, proto)

    async def open_stream(
        self, name: str, *, connect_timeout: float, limit: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A raw TCP connection to the first reachable checked endpoint of target ``name``.

        Raises :class:`DialError` (``upstream_unreachable`` when no endpoint answered).
        """
        loop = asyncio.get_running_loop()
        last_error = "no address"
        for host, port in await self.endpoints(name):
            sock = self.socket(
                (_family(host), socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))
            )
            try:
                sock.setblocking(False)
                async with asyncio.timeout(connect_timeout):
                    await loop.sock_connect(sock, (host, port))
            except TimeoutError:
                sock.close()
                last_error = f"connect to {host} timed out"
                continue
            except OSError as exc:
                sock.close()
                last_error = f"connect to {host} failed: {exc.strerror or exc}"
                continue
            except BaseException:
                sock.close()
                raise
            return await asyncio.open_connection(sock=sock, limit=limit)
        raise DialError("upstream_unreachable", last_error)

    def connector(self, *, limit: int, force_close: bool) -> aiohttp.TCPConnector:
        """An aiohttp connector whose only way to a socket is this dial step.

        aiohttp is imported here: only the features that still speak through it (the upstream
        WebSocket, OAuth token requests) make a connector, and a gateway without them never
        loads aiohttp (issue 13).
        """
        import aiohttp
        from aiohttp.abc import AbstractResolver

        return aiohttp.TCPConnector(
            # _DialResolver implements AbstractResolver's two methods; it cannot derive from it
            # without importing aiohttp with this module.
            resolver=cast(AbstractResolver, _DialResolver(self)),
            use_dns_cache=False,
            socket_factory=self.socket,
            limit=limit,
            force_close=force_close,
            enable_cleanup_closed=not force_close,
        )

    def target_at(self, host: str, port: int) -> str:
        """The target whose :meth:`dial_host` is ``host`` (and whose port is ``port``)."""
        name = self._names.get(host.lower())
        if name is None or port != self._targets[name].effective_port:
            raise DialError("connect_not_dialled", f"{host}:{port} is not a declared target")
        return name


class _DialResolver:
    """aiohttp's resolver interface (``aiohttp.abc.AbstractResolver``: ``resolve`` and
    ``close``) onto :meth:`DialStep.endpoints` (dial-host names only)."""

    def __init__(self, dial: DialStep) -> None:
        self._dial = dial

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Checked endpoints for a dial-host name, in the order to try them."""
        from aiohttp.abc import ResolveResult  # loaded: only aiohttp's connector calls this

        endpoints = await self._dial.endpoints(self._dial.target_at(host, port))
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=connect_port,
                family=_family(address),
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address, connect_port in endpoints
        ]

    async def close(self) -> None:
        """Nothing to release: resolution is delegated per call."""
