"""The dial step: the only place that turns a target's host name into an address to connect to.

SSRF defence (catalogue section A, ARCHITECTURE rule 5): the host always comes from gateway.yaml,
never from the request; it is resolved once, with a timeout; every resolved address is checked
against the target's ``allowed_cidrs`` and the special ranges (loopback, link-local and metadata,
...) unless the target explicitly allows them; the connection then goes to a checked address while
TLS SNI and ``Host`` keep the configured name. Resolving again at connect time (which a plain HTTP
client would do) would let a DNS answer change between check and use, so the checked addresses are
handed to aiohttp through :class:`PinnedResolver`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from aiohttp.abc import AbstractResolver, ResolveResult

from gateway.config.model import Target
from gateway.config.semantics import special_range
from gateway.errors import GatewayError

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


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Resolve with the operating system's resolver (``getaddrinfo``), TCP addresses only."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
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


class PinnedResolver(AbstractResolver):
    """aiohttp resolver that only ever returns addresses checked for the target being dialled.

    ``targets`` maps ``(host, port)`` to the declared target; a lookup for anything else fails,
    so even a bug elsewhere cannot make the client dial an undeclared host. ``redirect`` is the
    test seam of catalogue section A: it receives the checked address and returns where to really
    connect (a loopback fake target), so tests observe the decision without leaving loopback.
    """

    def __init__(
        self,
        targets: Mapping[tuple[str, int], Target],
        *,
        resolver: Resolver = system_resolver,
        timeout: float = DEFAULT_RESOLVE_TIMEOUT,
        redirect: Redirect | None = None,
    ) -> None:
        self._targets = dict(targets)
        self._policies = {key: AddressPolicy.for_target(t) for key, t in self._targets.items()}
        self._resolver = resolver
        self._timeout = timeout
        self._redirect = redirect

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Checked addresses for a declared ``host:port``, in the order to try them."""
        key = (host.lower(), port)
        target = self._targets.get(key)
        if target is None:
            raise OSError(f"{host}:{port} is not a declared target")
        addresses = await resolve_checked(
            target, self._policies[key], self._resolver, self._timeout
        )
        results: list[ResolveResult] = []
        for address in addresses:
            connect_host, connect_port = (
                self._redirect(address, port) if self._redirect else (str(address), port)
            )
            results.append(
                ResolveResult(
                    hostname=host,
                    host=connect_host,
                    port=connect_port,
                    family=socket.AF_INET6 if ":" in connect_host else socket.AF_INET,
                    proto=0,
                    flags=socket.AI_NUMERICHOST,
                )
            )
        return results

    async def close(self) -> None:
        """Nothing to release: resolution is delegated per call."""
