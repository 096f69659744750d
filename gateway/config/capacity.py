"""How many worker processes a gateway runs, and the relay's listener limit they share.

Azure Relay accepts at most 25 listeners on one Hybrid Connection (hybrid-connections-protocol,
"Quotas"); every control channel of every worker of every gateway on the HC is one of them, and
``gateway check`` opens one more for a moment. ``workers: auto`` is resolved here, the same way by
``validate``, ``check`` and ``run``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from gateway.config.model import MAX_WORKERS, GatewayConfig
from gateway.config.yamlsafe import Located
from gateway.errors import Problem

HC_LISTENER_LIMIT = 25
# The listener `gateway check` opens beside the running ones to test the relay path.
CHECK_LISTENERS = 1


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and systemd narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def listener_room(config: GatewayConfig) -> int:
    """Listeners one worker of this gateway may hold so the whole HC stays within the limit."""
    return (HC_LISTENER_LIMIT - CHECK_LISTENERS) // (
        config.relay.gateways * config.relay.connections
    )


def worker_count(config: GatewayConfig, cpus: int | None = None) -> int:
    """The number of worker processes ``config`` asks for; ``auto`` is one per usable CPU, no more
    than the listener limit leaves room for (and at least one)."""
    if config.workers != "auto":
        return config.workers
    found = usable_cpus() if cpus is None else cpus
    return max(1, min(found, listener_room(config), MAX_WORKERS))


def listeners_on_hc(config: GatewayConfig, cpus: int | None = None) -> int:
    """Listeners all gateways of the HC hold together when each runs like this one."""
    return config.relay.gateways * worker_count(config, cpus) * config.relay.connections


def check(config: GatewayConfig, doc: Located) -> Iterator[Problem]:
    """The listener budget and the settings several workers need."""
    workers = worker_count(config)
    total = listeners_on_hc(config)
    if total + CHECK_LISTENERS > HC_LISTENER_LIMIT:
        at = ("workers",) if "workers" in config.model_fields_set else ("relay", "connections")
        yield doc.problem(
            at,
            f"{config.relay.gateways} gateway(s) x {workers} worker(s) x "
            f"{config.relay.connections} connection(s) = {total} listeners; a Hybrid Connection "
            f"accepts {HC_LISTENER_LIMIT}, and `gateway check` needs {CHECK_LISTENERS} more",
            code="listener_limit",
            hint="lower workers or relay.connections (relay.gateways counts every gateway on "
            "the HC)",
        )
    several = config.workers == "auto" or config.workers > 1
    if several and config.signatures.replay_store.kind == "memory":
        # Each worker is its own process with its own memory: a captured request could be
        # served once by each worker within signatures.max_age_seconds.
        yield doc.problem(
            ("workers",),
            f"workers: {config.workers} with signatures.replay_store.kind 'memory': each worker "
            "process would remember only the nonces it accepted, so a replayed request could "
            "be served once per worker",
            code="replay_store_per_worker",
            hint="set signatures.replay_store.kind: sqlite (one host) or redis (several "
            "gateways), or workers: 1",
        )
    if several and config.logging.audit_file is None:
        # Every worker keeps its own hash chain; on one standard output they would interleave
        # and neither chain could be verified.
        yield doc.problem(
            ("workers",),
            f"workers: {config.workers} needs logging.audit_file: each worker writes its own "
            "decision log file with its own hash chain",
            code="audit_file_per_worker",
            hint="set logging.audit_file (worker N writes NAME.wN); logging.export.stdout: "
            "true still copies every record to standard output",
        )
