"""The relay listener's counters as Prometheus metrics, read when they are scraped.

:class:`gateway.relay.listener.ListenerMetrics` is the listener's own record (plain attributes,
updated where things happen). :class:`RelayCollector` exposes it through ``prometheus_client``'s
custom-collector interface, so ``/metrics`` always shows the current values: a gauge that was
copied on some other occasion (a ``/readyz`` poll) would show whatever it was then.

Every family is described even before a listener is bound (empty counters, a zero gauge), so the
metric names exist from the start and a scrape never fails.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["RelayCollector", "RelayCounters"]


class RelayCounters(Protocol):
    """What the collector reads (``ListenerMetrics`` has it)."""

    @property
    def listeners_online(self) -> int:
        """Control channels connected now."""
        ...

    @property
    def reconnects(self) -> Mapping[str, int]:
        """Reconnects by reason."""
        ...

    @property
    def listen_refusals(self) -> Mapping[str, int]:
        """Refused listen handshakes by kind."""
        ...

    @property
    def protocol_errors(self) -> Mapping[str, int]:
        """Protocol errors by code."""
        ...

    @property
    def late_answers(self) -> int:
        """Answers sent over a rendezvous address after their control channel was lost."""
        ...

    @property
    def token_renewals(self) -> int:
        """``renewToken`` messages sent."""
        ...


class RelayCollector(Collector):
    """Exposes one listener's counters; :meth:`bind` it once the listener exists."""

    def __init__(self) -> None:
        self._source: RelayCounters | None = None

    def bind(self, source: RelayCounters | None) -> None:
        """Read ``source`` from now on (``None``: no listener, everything zero)."""
        self._source = source

    def collect(self) -> Iterator[Metric]:
        """The families, with the listener's values at this moment."""
        source = self._source
        online = GaugeMetricFamily(
            "gateway_listeners_online", "Relay control channels currently connected"
        )
        online.add_metric([], source.listeners_online if source else 0)
        yield online
        yield _by_label(
            "gateway_relay_reconnects",
            "Relay control channel reconnects by reason",
            "reason",
            source.reconnects if source else {},
        )
        yield _by_label(
            "gateway_relay_listen_refusals",
            "Listen handshakes the relay refused, by kind (quota, unauthorized, not_found, other)",
            "kind",
            source.listen_refusals if source else {},
        )
        yield _by_label(
            "gateway_relay_protocol_errors",
            "Relay protocol errors by code",
            "code",
            source.protocol_errors if source else {},
        )
        late = CounterMetricFamily(
            "gateway_relay_late_answers",
            "Answers sent over the request's rendezvous address after its control channel was lost",
        )
        late.add_metric([], source.late_answers if source else 0)
        yield late
        renewals = CounterMetricFamily(
            "gateway_relay_token_renewals", "Listener tokens renewed on open control channels"
        )
        renewals.add_metric([], source.token_renewals if source else 0)
        yield renewals


def _by_label(name: str, documentation: str, label: str, values: Mapping[str, int]) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=[label])
    # A copy: the listener may add a key while the scrape iterates.
    for key, value in sorted(dict(values).items()):
        family.add_metric([key], value)
    return family
