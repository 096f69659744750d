"""The per-request series are exposed exactly as prometheus_client's own metrics would be.

``gateway_requests``, ``gateway_decisions`` and the two duration histograms are kept as plain
numbers (:class:`gateway.observability.metrics.Count`, ``Latencies``) and turned into samples when
scraped. Held here to the library's ``Counter`` and ``Histogram`` fed the same observations: the
same exposition text, line for line, ``_created`` series included (their values are the moments
each series was made, so only their presence is compared).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.observability.metrics import _DECISION_BUCKETS, _LATENCY_BUCKETS, Metrics

RESULTS = ("allowed", "denied", "rejected", "failed")
REASONS = ("", "path_not_allowed", "invalid_signature", "upstream_timeout")
# Latencies on and around every bucket bound, and far past the last.
BOUNDS = sorted({float(b) for b in (*_LATENCY_BUCKETS, *_DECISION_BUCKETS)})
SECONDS = st.one_of(
    st.sampled_from(BOUNDS),
    st.sampled_from(BOUNDS).map(lambda b: b * (1 + 1e-9)),
    st.floats(min_value=0.0, max_value=1e4, allow_nan=False),
)
REQUEST = st.tuples(st.sampled_from(RESULTS), st.sampled_from(REASONS), SECONDS, SECONDS)


class Reference:
    """The same four series made with prometheus_client's own metric classes."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        labels = ["result", "reason"]
        self.requests = Counter(
            "gateway_requests", "Relayed HTTP requests by outcome", labels, registry=r
        )
        self.decisions = Counter(
            "gateway_decisions", "Policy decisions by result and reason", labels, registry=r
        )
        self.seconds = Histogram(
            "gateway_request_duration_seconds",
            "Time from receiving a relayed request to answering it",
            ["result"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.decision_seconds = Histogram(
            "gateway_decision_duration_seconds",
            "Time to reach a policy decision",
            buckets=_DECISION_BUCKETS,
            registry=r,
        )

    def finish(self, result: str, reason: str, seconds: float, decided: float) -> None:
        self.decision_seconds.observe(decided)
        self.requests.labels(result=result, reason=reason).inc()
        self.decisions.labels(result=result, reason=reason).inc()
        self.seconds.labels(result=result).observe(seconds)


def exposed(text: bytes, families: tuple[str, ...]) -> list[str]:
    """The lines of ``families`` in an exposition, ``_created`` values left out."""
    lines = []
    for line in text.decode().splitlines():
        name = line.split(" ")[2] if line.startswith("#") else line.split("{")[0].split(" ")[0]
        if not name.startswith(families):
            continue
        sample = not line.startswith("#")
        lines.append(line.rsplit(" ", 1)[0] if sample and "_created" in name else line)
    return lines


FAMILIES = (
    "gateway_requests",
    "gateway_decisions",
    "gateway_request_duration",
    "gateway_decision_duration",
)


@settings(max_examples=60, deadline=None)
@given(st.lists(REQUEST, max_size=40))
def test_the_per_request_series_expose_as_the_librarys_metrics(
    requests: list[tuple[str, str, float, float]],
) -> None:
    metrics, reference = Metrics(), Reference()
    for result, reason, seconds, decided in requests:
        metrics.decision_seconds.observe(decided)
        outcome = metrics.outcome(result, reason)
        outcome.requests.inc()
        outcome.decisions.inc()
        outcome.seconds.observe(seconds)
        reference.finish(result, reason, seconds, decided)
    ours = exposed(metrics.render(), FAMILIES)
    theirs = exposed(generate_latest(reference.registry), FAMILIES)
    assert ours == theirs


def test_an_unused_gateway_exposes_the_families_without_series() -> None:
    ours = exposed(Metrics().render(), FAMILIES)
    theirs = exposed(generate_latest(Reference().registry), FAMILIES)
    assert ours == theirs
