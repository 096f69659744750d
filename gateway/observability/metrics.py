"""Prometheus metrics for the gateway, in a registry of their own (one per agent instance).

Label values are always from small fixed sets (result, reason codes, target names from the
validated config), so cardinality stays bounded whatever the SaaS sends; the per-request series
are capped besides (:data:`MAX_OUTCOME_SERIES`), as a policy names its own deny reasons.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from gateway.relay.prometheus import RelayCollector

# The exposition's spelling of a bucket bound ("+Inf", "0.0005"), as the library's histograms
# write it (the function carries no annotations).
_le: Callable[[float], str] = floatToGoString

# Relayed requests are answered within tens of milliseconds normally and 60 s at worst.
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)
# The heartbeat's counter names (identity.models.Heartbeat): at most 64, each a short identifier.
MAX_HEARTBEAT_COUNTERS = 64
_COUNTER_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")
_KEY_CHARS = re.compile(r"[^a-z0-9_]")
_DECISION_BUCKETS = (0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.05, 0.25, 1)


# Distinct (result, reason) series of the per-request metrics. Results and reason codes come from
# fixed sets, but a policy names its own deny reasons: a policy (or a fault) that made a new reason
# per request would otherwise grow the series, and the scrape, without bound. A pair first seen
# once this many exist is counted under reason OVERFLOW_REASON (and result OVERFLOW_REASON when
# its result is new too), so every request is still counted and totals stay exact.
MAX_OUTCOME_SERIES = 256
OVERFLOW_REASON = "other"


class Count:
    """A counter updated on every request: a plain number, read when ``/metrics`` is scraped.

    prometheus_client's counters take a lock and check their state on every ``inc`` (0.35 us,
    0.77 us a histogram observation, four of them per request): the agent updates these on its
    event loop only, where a plain addition is enough."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (never negative: a counter only grows)."""
        self.value += amount


class Latencies:
    """A histogram updated on every request (see :class:`Count`): per-bucket counts and a sum,
    made cumulative when scraped, as a prometheus_client ``Histogram`` exposes them."""

    __slots__ = ("_bounds", "buckets", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds  # ascending, the last +Inf
        self.buckets = [0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, seconds: float) -> None:
        """Count ``seconds`` in the first bucket whose upper bound is at least it."""
        self.buckets[bisect.bisect_left(self._bounds, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, count)`` pairs, the exposition's buckets."""
        counts = itertools.accumulate(self.buckets)
        return [(_le(b), float(c)) for b, c in zip(self._bounds, counts, strict=True)]


@dataclass(frozen=True, slots=True)
class Outcome:
    """The labelled series one finished request updates."""

    requests: Count
    decisions: Count
    seconds: Latencies

    def finished(self, seconds: float) -> None:
        """Count one request answered after ``seconds`` (and its decision)."""
        self.requests.value += 1
        self.decisions.value += 1
        self.seconds.observe(seconds)


class _RequestMetrics(Collector):
    """``gateway_requests``, ``gateway_decisions``, ``gateway_request_duration_seconds`` and
    ``gateway_decision_duration_seconds``: the series every request updates, exposed with the
    same names, labels and samples (``_created`` included) as prometheus_client's own.

    ``outcomes`` holds each ``(result, reason)`` pair's series, made when the pair is first seen
    and then found with one dictionary look-up per request (labelling each request anew cost
    about 12 us, benchmarks/pipeline-report.md); ``latencies`` the duration histogram of each
    result, which the pairs of that result share. Both are bounded by
    :data:`MAX_OUTCOME_SERIES`."""

    def __init__(self) -> None:
        self.outcomes: dict[tuple[str, str], Outcome] = {}
        self.latencies: dict[str, Latencies] = {}
        self.decision_seconds = Latencies(_bounds(_DECISION_BUCKETS))

    def series(self, result: str, reason: str) -> Outcome:
        """The series of ``(result, reason)``, made on first use (see :data:`OVERFLOW_REASON`)."""
        found = self.outcomes.get((result, reason))
        if found is not None:
            return found
        if len(self.outcomes) >= MAX_OUTCOME_SERIES:
            # At most one overflow pair per result already seen, plus one for new results.
            if result not in self.latencies:
                result = OVERFLOW_REASON
            reason = OVERFLOW_REASON
            found = self.outcomes.get((result, reason))
            if found is not None:
                return found
        seconds = self.latencies.get(result)
        if seconds is None:
            seconds = self.latencies[result] = Latencies(_bounds(_LATENCY_BUCKETS))
        found = self.outcomes[(result, reason)] = Outcome(Count(), Count(), seconds)
        return found

    def collect(self) -> Iterator[Metric]:
        labels = ["result", "reason"]
        requests = CounterMetricFamily("gateway_requests", _REQUESTS_HELP, labels=labels)
        decisions = CounterMetricFamily("gateway_decisions", _DECISIONS_HELP, labels=labels)
        for key, outcome in list(self.outcomes.items()):
            requested, decided = outcome.requests, outcome.decisions
            requests.add_metric(list(key), requested.value, created=requested.created)
            decisions.add_metric(list(key), decided.value, created=decided.created)
        yield requests
        yield decisions
        name = "gateway_request_duration_seconds"
        durations = HistogramMetricFamily(name, _REQUEST_SECONDS_HELP, labels=["result"])
        for result, latency in list(self.latencies.items()):
            durations.add_metric([result], latency.cumulative(), latency.sum)
            durations.add_sample(f"{name}_created", {"result": result}, latency.created)
        yield durations
        name = "gateway_decision_duration_seconds"
        decided_in = self.decision_seconds
        decision = HistogramMetricFamily(name, _DECISION_SECONDS_HELP)
        decision.add_metric([], decided_in.cumulative(), decided_in.sum)
        decision.add_sample(f"{name}_created", {}, decided_in.created)
        yield decision


def _bounds(buckets: tuple[float, ...]) -> tuple[float, ...]:
    return (*(float(b) for b in buckets), math.inf)


_REQUESTS_HELP = "Relayed HTTP requests by outcome"
_DECISIONS_HELP = "Policy decisions by result and reason"
_REQUEST_SECONDS_HELP = "Time from receiving a relayed request to answering it"
_DECISION_SECONDS_HELP = "Time to reach a policy decision"


class Metrics:
    """Every metric the agent exports."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # The per-request series (gateway_requests, gateway_decisions and both durations).
        self._per_request = _RequestMetrics()
        r.register(self._per_request)
        self._outcomes = self._per_request.outcomes  # the collector's own series, not a copy
        self.decision_seconds = self._per_request.decision_seconds
        # gateway_listeners_online and the gateway_relay_* counters, read from the listener at
        # scrape time (bind it with metrics.relay.bind(listener.metrics)).
        self.relay = RelayCollector()
        r.register(self.relay)
        self.reloads = Counter(
            "gateway_config_reloads", "Configuration reloads by result", ["result"], registry=r
        )
        self.streams_active = Gauge("gateway_streams_active", "Open relayed streams", registry=r)
        self.streams = Counter(
            "gateway_streams", "Relayed streams by outcome", ["result", "reason"], registry=r
        )
        # One per LDAP operation on an LDAP target's stream (gateway.ldap.proxy): operation is
        # the RFC 4511 operation (bind, search, ...), result the decision-log result.
        self.ldap_operations = Counter(
            "gateway_ldap_operations",
            "LDAP operations by type and outcome",
            ["operation", "result"],
            registry=r,
        )
        # Places the directory's answers named outside the operation's grant, not passed on
        # (gateway.ldap.disclosure): what is "referral" (URLs) or "matched_dn".
        self.ldap_withheld = Counter(
            "gateway_ldap_withheld",
            "Referral URLs and matchedDNs of LDAP answers withheld from the SaaS",
            ["what"],
            registry=r,
        )
        self.cert_expiry = Gauge(
            "gateway_certificate_expiry_timestamp_seconds",
            "Expiry of the gateway's client certificate (Unix time)",
            registry=r,
        )
        self.export_dropped = Counter(
            "gateway_decision_export_dropped",
            "Decision log records dropped from an export because its queue was full",
            ["sink"],
            registry=r,
        )
        self.audit_write_failures = Counter(
            "gateway_audit_write_failures",
            "Decision-log records that could not be written",
            registry=r,
        )
        self.certificate_renewals = Counter(
            "gateway_certificate_renewals",
            "Client certificate renewal attempts by result and reason",
            ["result", "reason"],
            registry=r,
        )
        self.heartbeats = Counter(
            "gateway_heartbeats",
            "Heartbeats to the control plane by result",
            ["result"],
            registry=r,
        )
        self.alerts = Counter(
            "gateway_alerts",
            "Alerts raised (conditions an operator must act on)",
            ["code"],
            registry=r,
        )
        self.info = Gauge(
            "gateway_info",
            "Build and configuration identity",
            ["version", "revision", "mode", "event_loop"],
            registry=r,
        )

        # Kept by the supervisor of several workers (gateway.supervisor); zero in a worker.
        self.workers_running = Gauge(
            "gateway_workers_running",
            "Worker processes running and started (gateway run with workers > 1)",
            registry=r,
        )
        self.worker_restarts = Counter(
            "gateway_worker_restarts",
            "Worker processes restarted after they exited, by worker number",
            ["worker"],
            registry=r,
        )
        self.worker_reloads = Counter(
            "gateway_worker_reloads",
            "Reloads of all workers together by result (ok: every worker moved; failed: none)",
            ["result"],
            registry=r,
        )

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)

    def outcome(self, result: str, reason: str) -> Outcome:
        """The request and decision counters and the latency histogram of ``(result, reason)``
        (bounded: see :data:`MAX_OUTCOME_SERIES`)."""
        found = self._outcomes.get((result, reason))
        return found if found is not None else self._per_request.series(result, reason)

    def counters(self) -> dict[str, int]:
        """Every counter's total since start, summed per ``result`` (or ``code``) label value.

        This is what the heartbeat reports to the control plane: ``requests_allowed``,
        ``config_reloads_failed``, ``audit_write_failures``, ``alerts_certificate_renewal_failed``
        and so on. Label values come from small fixed sets, so the keys stay few; the control
        plane takes at most :data:`MAX_HEARTBEAT_COUNTERS` of them, the first in name order.
        """
        totals: dict[str, float] = {}
        for family in self.registry.collect():
            if family.type != "counter":
                continue
            stem = family.name.removeprefix("gateway_")
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue  # the *_created timestamps
                split = sample.labels.get("result") or sample.labels.get("code")
                key = f"{stem}_{_KEY_CHARS.sub('_', split.lower())}" if split else stem
                totals[key] = totals.get(key, 0.0) + sample.value
        chosen = sorted(key for key in totals if _COUNTER_KEY.fullmatch(key))
        return {key: int(totals[key]) for key in chosen[:MAX_HEARTBEAT_COUNTERS]}
