"""Prometheus metrics for the gateway, in a registry of their own (one per agent instance).

Label values are always from small fixed sets (result, reason codes, target names from the
validated config), so cardinality stays bounded whatever the SaaS sends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.relay.prometheus import RelayCollector

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


# Distinct (result, reason) pairs whose labelled children are kept; reasons come from a fixed set
# of codes plus the policy's own reasons, so this bounds the cache, not the metric.
MAX_CACHED_OUTCOMES = 256


@dataclass(frozen=True, slots=True)
class Outcome:
    """The labelled children one finished request updates."""

    requests: Counter
    decisions: Counter
    seconds: Histogram


class Metrics:
    """Every metric the agent exports."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gateway_requests", "Relayed HTTP requests by outcome", ["result", "reason"], registry=r
        )
        self.decisions = Counter(
            "gateway_decisions",
            "Policy decisions by result and reason",
            ["result", "reason"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "gateway_request_duration_seconds",
            "Time from receiving a relayed request to answering it",
            ["result"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._outcomes: dict[tuple[str, str], Outcome] = {}
        self.decision_seconds = Histogram(
            "gateway_decision_duration_seconds",
            "Time to reach a policy decision",
            buckets=_DECISION_BUCKETS,
            registry=r,
        )
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
            ["version", "revision", "mode"],
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
        """The request and decision counters and the latency histogram of ``(result, reason)``.

        Labelled once and kept: prometheus_client's ``labels()`` validates and locks on every
        call, about 12 us per request for these three (benchmarks/pipeline-report.md), where a
        dictionary lookup costs well under one.
        """
        key = (result, reason)
        found = self._outcomes.get(key)
        if found is None:
            found = Outcome(
                self.requests.labels(result=result, reason=reason),
                self.decisions.labels(result=result, reason=reason),
                self.request_seconds.labels(result=result),
            )
            if len(self._outcomes) < MAX_CACHED_OUTCOMES:
                self._outcomes[key] = found
        return found

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
