"""Relay URLs: building listen/connect/HTTP addresses and checking rendezvous addresses.

URL shapes are in protocol notes section 1: the control channel and WebSocket senders use
``{endpoint}/$hc/{path}`` with ``sb-hc-action`` / ``sb-hc-id`` / ``sb-hc-token`` query keys, HTTP
senders ``https://{host}/{path}`` without ``$hc``. Rendezvous addresses arrive in ``accept`` and
``request`` messages; the listener dials them verbatim and sends no credential there (section
2.3), so a hostile or broken relay could point it anywhere. :class:`RendezvousPolicy` refuses every
address that is not ``wss://`` on the relay service's domain or exactly a configured local
development endpoint (catalogue item 24), and every address that is not for this Hybrid Connection
and for the very ``accept``/``request`` that carried it (its ``sb-hc-id`` is the command's ``id``).
The service's domain follows the namespace: rendezvous hosts are shared service nodes next to the
namespace host (``g63-prod-...-sb.servicebus.windows.net`` for ``contoso.servicebus.windows.net``,
section 1), so the domain is the namespace's parent, ``servicebus.`` plus the cloud's suffix
(:func:`relay_domain_for`), which makes sovereign clouds work without configuration.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote, unquote, urlencode, urlsplit

from gateway.hybridconnection.errors import BadRendezvousAddressError

DEFAULT_RELAY_DOMAIN: Final = ".servicebus.windows.net"
# Generous bound for a rendezvous address (real ones are ~200 characters).
MAX_ADDRESS_LENGTH: Final = 4096
_DEFAULT_PORTS: Final = {"ws": 80, "wss": 443, "http": 80, "https": 443}
_HOSTNAME = re.compile(
    r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
)
# What a rendezvous address may hold: printable ASCII but for space, backslash, '@' and '#'
# (deleting these with bytes.translate leaves exactly the refused characters).
_ADDRESS_BYTES: Final = bytes(c for c in range(0x20, 0x7F) if chr(c) not in " \\@#")
# host[:port] with a canonical port: no empty port, no leading zero (parsers disagree on both).
_NETLOC: Final = re.compile(r"(?:\[[0-9a-fA-F:.]+\]|[^:\[\]]+)(?::[1-9][0-9]{0,4})?")
# The piece of a rendezvous address's query that names its interaction (section 1).
_ID_PIECE: Final = "&sb-hc-id="
# Distinct address heads (up to the '?') whose verdict a policy keeps.
_MAX_VERDICTS: Final = 256


@dataclass(frozen=True, slots=True)
class RelayEndpoint:
    """A relay base address: scheme ``ws``/``wss``, host and port, nothing else."""

    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> RelayEndpoint:
        """Parse ``wss://host[:port]`` (or ``ws://``); raises ``ValueError`` for anything else."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("ws", "wss"):
            raise ValueError("relay endpoint must use ws:// or wss://")
        if (
            parts.username is not None
            or parts.query
            or parts.fragment
            or parts.path not in ("", "/")
        ):
            raise ValueError("relay endpoint must be scheme://host[:port] only")
        host = parts.hostname
        if not host:
            raise ValueError("relay endpoint has no host")
        port = parts.port  # raises ValueError for a malformed port
        return cls(scheme=scheme, host=host, port=port or _DEFAULT_PORTS[scheme])

    @property
    def authority(self) -> str:
        """``host[:port]``, omitting the scheme's default port; IPv6 hosts bracketed."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def base(self) -> str:
        """``scheme://authority``."""
        return f"{self.scheme}://{self.authority}"


def hc_path(path: str) -> str:
    """The URL-encoded HC path without surrounding slashes (names may contain ``/``)."""
    cleaned = path.strip("/")
    if not cleaned:
        raise ValueError("hybrid connection path must not be empty")
    return quote(cleaned, safe="/")


def _query(pairs: Iterable[tuple[str, str]]) -> str:
    return urlencode(list(pairs), quote_via=quote)


def listen_url(
    endpoint: RelayEndpoint, path: str, *, listener_id: str | None = None, token: str | None = None
) -> str:
    """Control-channel URL: ``{base}/$hc/{path}?sb-hc-action=listen[&sb-hc-id][&sb-hc-token]``.

    Prefer sending the token in the ``ServiceBusAuthorization`` header (section 2.3); a URL
    carrying ``token`` must itself be treated as a secret.
    """
    pairs = [("sb-hc-action", "listen")]
    if listener_id is not None:
        pairs.append(("sb-hc-id", listener_id))
    if token is not None:
        pairs.append(("sb-hc-token", token))
    return f"{endpoint.base}/$hc/{hc_path(path)}?{_query(pairs)}"


def connect_url(
    endpoint: RelayEndpoint,
    path: str,
    *,
    suffix: str = "",
    query: Iterable[tuple[str, str]] = (),
    sender_id: str | None = None,
    token: str | None = None,
) -> str:
    """WebSocket sender URL: ``{base}/$hc/{path}{suffix}?{query}&sb-hc-action=connect...``."""
    pairs = [*query, ("sb-hc-action", "connect")]
    if sender_id is not None:
        pairs.append(("sb-hc-id", sender_id))
    if token is not None:
        pairs.append(("sb-hc-token", token))
    return f"{endpoint.base}/$hc/{hc_path(path)}{_suffix(suffix)}?{_query(pairs)}"


def http_url(
    endpoint: RelayEndpoint, path: str, *, suffix: str = "", query: Iterable[tuple[str, str]] = ()
) -> str:
    """HTTP sender URL: ``http(s)://{authority}/{path}{suffix}[?query]`` (no ``$hc``)."""
    scheme = "https" if endpoint.scheme == "wss" else "http"
    encoded = _query(query)
    return f"{scheme}://{endpoint.authority}/{hc_path(path)}{_suffix(suffix)}" + (
        f"?{encoded}" if encoded else ""
    )


def reject_url(address: str, status_code: int, description: str) -> str:
    """The address a listener opens to reject a WebSocket sender (section 4, step 6)."""
    if not 100 <= status_code <= 999:
        raise ValueError("status code must be 100-999")
    extra = _query(
        [("sb-hc-statusCode", str(status_code)), ("sb-hc-statusDescription", description)]
    )
    return f"{address}&{extra}" if "?" in address else f"{address}?{extra}"


def _suffix(suffix: str) -> str:
    if not suffix:
        return ""
    return "/" + quote(suffix.lstrip("/"), safe="/")


def relay_domain_for(namespace_host: str) -> str | None:
    """The DNS suffix rendezvous hosts of ``namespace_host`` live in, or ``None`` if unknown.

    Every Azure cloud names relay namespaces ``{name}.servicebus.{cloud suffix}``
    (``servicebus.windows.net``, ``servicebus.usgovcloudapi.net``,
    ``servicebus.chinacloudapi.cn``, ``servicebus.cloudapi.de``) and hands out rendezvous
    addresses on other hosts of that same domain (section 1). Anything not of that shape has no
    derivable domain: configure one, or only the endpoint itself is trusted.
    """
    host = namespace_host.strip().lower()
    name, _, parent = host.partition(".")
    labels = parent.split(".")
    if not name or len(labels) < 3 or labels[0] != "servicebus":
        return None
    if _HOSTNAME.fullmatch(host) is None:
        return None
    return "." + parent


@dataclass(frozen=True, slots=True)
class RendezvousPolicy:
    """Which rendezvous addresses the listener may dial (catalogue item 24).

    Allowed: ``wss://`` to a host strictly inside ``domain_suffix`` on port 443 (the service
    always uses it, section 1), or - only when configured - exactly the scheme, host and port of
    ``dev_endpoint`` or of one of ``extra_endpoints`` (for example ``ws://127.0.0.1:8765``). In
    every case the path must be ``/$hc/`` plus ``entity_path`` (when set; compared
    case-insensitively), the query must carry ``sb-hc-action=accept`` or ``sb-hc-action=request``
    and exactly one non-empty ``sb-hc-id``, equal to the command's ``id`` when it has one.
    ``domain_suffix=None`` trusts no domain at all. The address itself is never echoed in errors:
    it is a bearer credential.
    """

    domain_suffix: str | None = DEFAULT_RELAY_DOMAIN
    dev_endpoint: RelayEndpoint | None = None
    entity_path: str | None = None
    extra_endpoints: tuple[RelayEndpoint, ...] = ()
    # The verdict of judge_head per address head seen (see check); not part of the policy's value.
    _verdicts: dict[str, str | None] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        # Without the leading dot "evilservicebus.windows.net" would match; a single-label
        # suffix (".net") would trust a whole top-level domain.
        suffix = self.domain_suffix
        if suffix is not None and (
            not suffix.startswith(".")
            or suffix.count(".") < 2
            or _HOSTNAME.fullmatch(suffix[1:].lower()) is None
        ):
            raise ValueError(
                "domain_suffix must start with '.' and name a domain of at least two labels, "
                "e.g. '.servicebus.windows.net'"
            )

    def check(self, address: str, command_id: str | None = None) -> str:
        """Return ``address`` if it may be dialled; else raise BadRendezvousAddressError.

        ``command_id`` is the ``id`` of the ``accept``/``request`` that carried the address: an
        address naming another interaction (its ``sb-hc-id``) is refused.
        """
        if not isinstance(address, str) or len(address) > MAX_ADDRESS_LENGTH:
            raise BadRendezvousAddressError("rendezvous address missing or too long")
        # urlsplit silently drops tabs and newlines and treats '\' inconsistently across parsers;
        # refuse anything a strict parser and a lax one could read differently.
        if not address.isascii() or address.encode("ascii").translate(None, _ADDRESS_BYTES):
            raise BadRendezvousAddressError("rendezvous address contains forbidden characters")
        # With '#' refused, urlsplit's query is exactly what follows the first '?', and the scheme,
        # host, port and path depend only on what precedes it. That part is the same for every
        # request of a relay connection (the per-request id is in the query), so its verdict is
        # kept per policy; the query is checked on every call.
        head, _, query = address.partition("?")
        verdicts = self._verdicts
        try:
            problem = verdicts[head]
        except KeyError:
            if len(verdicts) >= _MAX_VERDICTS:
                # A hostile relay sending ever new heads holds at most this many x 4 KiB here.
                verdicts.clear()
            problem = verdicts[head] = self.judge_head(head)
        if problem is not None:
            raise BadRendezvousAddressError(problem)
        # The query's '&'-separated pieces, read as substrings of "&{query}&": a piece equal to
        # P is an occurrence of "&P&", a piece starting with P one of "&P" (P holds no '&', so
        # two occurrences never overlap). One scan each instead of a list of pieces per request.
        pieces = f"&{query}&"
        if "&sb-hc-action=accept&" not in pieces and "&sb-hc-action=request&" not in pieces:
            raise BadRendezvousAddressError("rendezvous address lacks an accept/request action")
        if pieces.count(_ID_PIECE) != 1:
            raise BadRendezvousAddressError("rendezvous address lacks exactly one sb-hc-id")
        start = pieces.index(_ID_PIECE) + len(_ID_PIECE)
        found = pieces[start : pieces.index("&", start)]
        if "%" in found:
            found = unquote(found)
        if not found:
            raise BadRendezvousAddressError("rendezvous address lacks exactly one sb-hc-id")
        if command_id is not None and found != command_id:
            raise BadRendezvousAddressError("rendezvous address is for another interaction")
        return address

    def judge_head(self, head: str) -> str | None:
        """Why ``head`` (an address up to its ``?``) may not be dialled, or ``None`` if it may."""
        try:
            parts = urlsplit(head)
            port = parts.port
        except ValueError:
            return "rendezvous address is not a valid URL"
        if _NETLOC.fullmatch(parts.netloc) is None:
            return "rendezvous address has a malformed host or port"
        scheme = parts.scheme.lower()
        host = parts.hostname or ""
        if not self._trusted_origin(scheme, host, port):
            return "rendezvous address is outside the relay service"
        if not self._entity_matches(parts.path):
            return "rendezvous address is not for this hybrid connection"
        return None

    def _trusted_origin(self, scheme: str, host: str, port: int | None) -> bool:
        for dev in (self.dev_endpoint, *self.extra_endpoints):
            if (
                dev is not None
                and scheme == dev.scheme
                and host == dev.host.lower()
                and (port or _DEFAULT_PORTS[scheme]) == dev.port
            ):
                return True
        if self.domain_suffix is None:
            return False
        suffix = self.domain_suffix.lower()
        return (
            scheme == "wss"
            and port in (None, 443)
            and len(host) > len(suffix)
            and host.endswith(suffix)
            and _HOSTNAME.fullmatch(host) is not None
        )

    def _entity_matches(self, path: str) -> bool:
        if not path.startswith("/$hc/"):
            return False
        if self.entity_path is None:
            return True
        wanted = hc_path(self.entity_path).lower()
        rest = path[len("/$hc/") :].lower()
        return rest == wanted or rest.startswith(wanted + "/")
