"""Settings of the relay listener, as one explicit frozen dataclass.

The configuration model (``gateway.config``) is mapped onto :class:`ListenerSettings` by the
composition root; every field is documented here so that mapping is mechanical. Validation runs
at construction, so an impossible combination fails at start-up rather than on first connect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from gateway.hybridconnection.addresses import (
    RelayEndpoint,
    RendezvousPolicy,
    hc_path,
    relay_domain_for,
)
from gateway.hybridconnection.framing import (
    CONTROL_CHANNEL_BODY_LIMIT,
    DEFAULT_MAX_VIOLATIONS,
    DEFAULT_VIOLATION_WINDOW,
    ChannelLimits,
    SocketKind,
)
from gateway.outbound.proxy import ProxySettings
from gateway.relay.backoff import BackoffPolicy

__all__ = ["MAX_LISTENERS_PER_HC", "RELAY_RESPONSE_DEADLINE", "ListenerSettings"]

# Protocol notes section 7: at most 25 concurrent listeners per Hybrid Connection.
MAX_LISTENERS_PER_HC: Final = 25
# Section 5.1: the relay answers 504 if the `response` JSON has not arrived 60 s after the request.
RELAY_RESPONSE_DEADLINE: Final = 60.0
# Section 7: a rendezvous address is valid for a short time after it is handed out ("assume
# 30 s at most").
RENDEZVOUS_ADDRESS_VALIDITY: Final = 30.0


@dataclass(frozen=True)
class ListenerSettings:
    """Everything the listener needs besides its handlers and token provider.

    ``endpoint``: the relay namespace host (``contoso.servicebus.windows.net``, dialled as
    ``wss://host``), or a base URL (``wss://host[:port]``; ``ws://`` only with
    ``allow_insecure_dev_endpoint``) for a local relay emulator.
    ``hc_path``: the Hybrid Connection name (may contain ``/``).
    ``connections``: control channels kept open by this gateway (1-25, section 7); the relay
    spreads work across them, so one lost channel does not take the gateway offline.
    ``ping_interval`` / ``ping_timeout``: a WebSocket ping goes out every ``ping_interval`` s;
    no pong within ``ping_timeout`` s means the socket is half-open: drop it and reconnect
    (section 3.3; catalogue item 123: detection within interval + timeout). Accepted streams'
    sockets are pinged every ``ping_interval`` s too, so the relay's load balancer never drops
    them as idle (section 7).
    ``handshake_timeout``: bound for every WebSocket opening handshake (control and rendezvous).
    ``token_timeout``: bound for one call of the token provider.
    ``renew_at``: fraction of a token's lifetime after which ``renewToken`` is sent (section 9).
    ``backoff``: reconnect pacing (:mod:`gateway.relay.backoff`).
    ``max_request_body``: largest request body accepted over a rendezvous socket (the control
    channel is fixed at 64 KiB by the protocol); larger uploads are refused by closing the socket.
    ``max_concurrent_requests``: requests being handled at once per gateway; beyond it new ones are
    answered 503 at once. ``max_concurrent_streams``: accepted WebSockets at once; beyond it new
    ``accept`` messages are rejected with 503.
    ``request_timeout``: how long a handler may take before the listener answers 504 itself; must
    leave room under the relay's 60 s deadline. ``early_rendezvous_after``: a handler still
    running this many seconds after its request arrived on the control channel has the request's
    rendezvous address opened then, and its answer goes over that socket whatever its size: the
    address is valid for about 30 s only (section 7), so an answer over 64 KiB (or streamed)
    that is ready later could not reach the sender; must stay below 30 s, with room for the
    handshake. ``stream_decision_timeout``: bound for
    ``StreamHandler.decide`` (rendezvous addresses expire after ~30 s, section 4).
    ``send_timeout``: bound for writing one response (JSON plus body) to a socket.
    ``shutdown_grace``: how long :meth:`RelayListener.stop` waits for in-flight work.
    ``max_protocol_violations`` / ``violation_window``: a relay socket may produce this many
    tolerated defects (malformed requests, each answered 400; stray or misplaced messages) within
    any ``violation_window`` seconds; one more drops and reconnects it. Defects that break the
    framing (bad JSON, wrong frame types) drop it at once.
    ``proxy``: outbound proxy (:mod:`gateway.outbound.proxy`).
    ``relay_domain``: the DNS suffix rendezvous addresses must be in; ``None`` (the default)
    derives it from the endpoint's host, the namespace EmpowerID hands out
    (``contoso.servicebus.usgovcloudapi.net`` gives ``.servicebus.usgovcloudapi.net``, see
    :func:`gateway.hybridconnection.addresses.relay_domain_for`).
    ``rendezvous_endpoint``: one more exact origin (``scheme://host:port``) rendezvous addresses
    may use, for a local relay emulator that hands them out on another host than its namespace.
    ``allow_insecure_dev_endpoint``: permit a ``ws://`` endpoint (and ``rendezvous_endpoint``);
    rendezvous addresses may then use exactly those schemes, hosts and ports and nothing else
    plain-text.
    """

    endpoint: str
    hc_path: str
    connections: int = 2
    ping_interval: float = 30.0
    ping_timeout: float = 10.0
    handshake_timeout: float = 20.0
    token_timeout: float = 30.0
    renew_at: float = 0.8
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    max_request_body: int = 16 * 1024 * 1024
    max_concurrent_requests: int = 100
    max_concurrent_streams: int = 200
    request_timeout: float = 50.0
    early_rendezvous_after: float = 15.0
    stream_decision_timeout: float = 10.0
    send_timeout: float = 30.0
    shutdown_grace: float = 30.0
    max_protocol_violations: int = DEFAULT_MAX_VIOLATIONS
    violation_window: float = DEFAULT_VIOLATION_WINDOW
    proxy: ProxySettings = field(default_factory=ProxySettings)
    relay_domain: str | None = None
    rendezvous_endpoint: str | None = None
    allow_insecure_dev_endpoint: bool = False

    def __post_init__(self) -> None:
        """Check ranges and that the endpoint and path can be used."""
        relay = self.relay_endpoint  # raises ValueError when malformed
        if relay.scheme == "ws" and not self.allow_insecure_dev_endpoint:
            raise ValueError("a ws:// relay endpoint needs allow_insecure_dev_endpoint")
        for extra in self._extra_endpoints():
            if extra.scheme == "ws" and not self.allow_insecure_dev_endpoint:
                raise ValueError("a ws:// rendezvous endpoint needs allow_insecure_dev_endpoint")
        hc_path(self.hc_path)
        if not 1 <= self.connections <= MAX_LISTENERS_PER_HC:
            raise ValueError(f"connections must be 1-{MAX_LISTENERS_PER_HC}")
        if not 0 < self.renew_at < 1:
            raise ValueError("renew_at must be a fraction between 0 and 1")
        for name in (
            "ping_interval",
            "ping_timeout",
            "handshake_timeout",
            "token_timeout",
            "request_timeout",
            "early_rendezvous_after",
            "stream_decision_timeout",
            "send_timeout",
            "violation_window",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.shutdown_grace < 0:
            raise ValueError("shutdown_grace must not be negative")
        if self.early_rendezvous_after >= RENDEZVOUS_ADDRESS_VALIDITY:
            raise ValueError("early_rendezvous_after must stay below the 30 s address validity")
        if self.request_timeout >= RELAY_RESPONSE_DEADLINE:
            raise ValueError("request_timeout must stay below the relay's 60 s deadline")
        if self.max_request_body < CONTROL_CHANNEL_BODY_LIMIT:
            raise ValueError("max_request_body must be at least 64 KiB")
        if self.max_concurrent_requests < 1 or self.max_concurrent_streams < 1:
            raise ValueError("concurrency limits must be at least 1")
        if self.max_protocol_violations < 0:
            raise ValueError("max_protocol_violations must not be negative")
        self.rendezvous_policy()  # validates relay_domain

    @property
    def relay_endpoint(self) -> RelayEndpoint:
        """The parsed endpoint (a bare host means ``wss://host``)."""
        raw = self.endpoint.strip()
        return RelayEndpoint.parse(raw if "://" in raw else f"wss://{raw}")

    def channel_limits(self, kind: SocketKind) -> ChannelLimits:
        """The protocol core's reading bounds for a relay socket of ``kind``."""
        return ChannelLimits.for_socket(
            kind,
            rendezvous_body_limit=self.max_request_body,
            max_violations=self.max_protocol_violations,
            violation_window=self.violation_window,
        )

    def rendezvous_policy(self) -> RendezvousPolicy:
        """Which rendezvous addresses may be dialled (catalogue item 24).

        ``wss://`` inside ``relay_domain`` (or the domain derived from the endpoint) always; the
        configured endpoint itself in addition when it lies outside that domain (a local
        emulator), and ``rendezvous_endpoint``, each by scheme, host and port exactly.
        """
        relay = self.relay_endpoint
        host = relay.host.lower()
        domain = self.relay_domain
        if domain is None:
            domain = relay_domain_for(host)
        elif not domain.startswith("."):
            domain = "." + domain
        inside = domain is not None and host.endswith(domain.lower())
        return RendezvousPolicy(
            domain_suffix=domain,
            dev_endpoint=None if inside else relay,
            entity_path=self.hc_path,
            extra_endpoints=self._extra_endpoints(),
        )

    def _extra_endpoints(self) -> tuple[RelayEndpoint, ...]:
        if self.rendezvous_endpoint is None:
            return ()
        return (RelayEndpoint.parse(self.rendezvous_endpoint.strip()),)
