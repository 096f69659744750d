"""Fault scenarios against the whole gateway on loopback, each returning the figures it measured.

One scenario = a :class:`FaultBed` (relay emulator, control-plane simulator, recording sample
targets, an in-process :class:`gateway.service.Agent`, optional fault proxies and an optional
OPA stand-in) + fixed-rate signed traffic from the SaaS side + one fault. The figures are the ones
an operator asks about:

* ``lost``: requests that never got an HTTP answer although the relay did not drop them itself
  (must be 0);
* ``cut_by_relay``: requests the relay itself dropped while it stopped (only the relay-restart
  scenario), as Azure does when a relay node dies, according to the relay's own journal
  (:attr:`gateway.devkit.relay_emulator.RelayEmulator.exchanges`): the request was inside the
  relay when the stop began (its entry says ``cut``), or the stopping relay closed the sender's
  connection before reading the request at all (no entry, and the sender's connection failed
  after the stop began). Counted apart from ``lost``; which ones the gateway had received is
  checked by ``unaccounted``;
* ``relay_timeouts``: requests the relay routed to a listener that sent no response before the
  relay's deadline (its 504);
* ``unaccounted``: requests the relay handed to the gateway for which the gateway neither wrote an
  answer nor recorded that it could not (its listener counts every request it read by outcome,
  ``send_failed`` included): a request the gateway lost, even one whose sender the relay cut
  (reported where the relay's sockets are closed cleanly, so everything it sent was received);
* ``duplicates``: requests the target received more than once (counted by a unique ``rid`` query
  parameter, must be 0);
* ``unauthorised``: refused requests (``/api/admin`` is never granted) that reached the target
  (must be 0);
* ``reconnect_p50`` / ``reconnect_p99``: seconds from a relay fault until every control channel is
  back;
* ``recovered``: the same agent answers 200 again after the fault clears (no restart).

The short forms run in CI (tests/faults/test_faults.py); ``benchmarks/faults.py --long`` runs the
same functions with longer durations and writes benchmarks/faults-report.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import json
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from gateway.auth import ReplayCache
from gateway.devkit.opa_server import OpaServer
from gateway.devkit.saas import SaaSClient
from gateway.devkit.signing import RequestSigner
from gateway.devkit.stack import NAMESPACE, PERSON, PERSON_PASSWORD, DevStack, demo_config
from gateway.forward.dial import IPAddress, Resolver
from gateway.identity import RegistrationSettings, register
from gateway.service import Agent, AgentOptions
from tests.faults.faultproxy import FaultProxy

ALLOWED = "/api/accounts/{n}"
DENIED = "/api/admin/{n}"
_ids = itertools.count()

# How long a probe waits for the first 200 after a fault ends: it returns as soon as one comes,
# so a generous bound costs nothing on a healthy run and keeps a busy machine from failing it.
PROBE_WITHIN = 90.0


@dataclass
class Outcomes:
    """What happened to each request of a load run, by category."""

    sent: int = 0
    ok: int = 0
    refused: int = 0
    gateway_error: int = 0
    relay_error: int = 0
    not_accepted: int = 0
    lost: int = 0
    truncated: int = 0
    # rid -> monotonic instant its sender's connection failed without an answer, to look it up
    # in the relay's journal (see integrity()).
    unanswered: dict[str, float] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    denied_rids: set[str] = field(default_factory=set)


@dataclass
class Figures:
    """One scenario's measured figures (printed and written to the report)."""

    scenario: str
    values: dict[str, Any]

    def line(self) -> str:
        """``scenario: key=value ...`` for the test log."""
        return f"{self.scenario}: " + " ".join(f"{k}={v}" for k, v in self.values.items())


def percentile(samples: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile (``None`` without samples), rounded to milliseconds."""
    if not samples:
        return None
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return round(ordered[index], 3)


class FaultBed:
    """The gateway and everything around it, with fault knobs. ``async with FaultBed(dir):``."""

    def __init__(
        self,
        directory: Path,
        *,
        relay_via_proxy: bool = False,
        target_via_proxy: bool = False,
        resolver: Resolver | None = None,
        edit: Callable[[dict[str, Any]], None] | None = None,
        opa: bool = False,
        relay_response_timeout: float = 10.0,
    ) -> None:
        self.directory = directory
        self.stack = DevStack("fault-gateway")
        self.stack.relay.response_timeout = relay_response_timeout
        self.relay_proxy: FaultProxy | None = None
        self.target_proxy: FaultProxy | None = None
        self.opa: OpaServer | None = None
        self._relay_via_proxy = relay_via_proxy
        self._target_via_proxy = target_via_proxy
        self._resolver = resolver
        self._edit = edit
        self._opa = opa
        self._exit = contextlib.AsyncExitStack()
        self.agent: Agent | None = None
        self.config = directory / "gateway.yaml"

    async def __aenter__(self) -> FaultBed:
        await self._exit.__aenter__()
        try:
            await self._start()
        except BaseException:
            await self._exit.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._exit.aclose()

    async def _start(self) -> None:
        stack = await self._exit.enter_async_context(self.stack)
        document = demo_config(stack)
        if self._relay_via_proxy:
            # As the outbound (CONNECT) proxy: control channels and rendezvous sockets cross it.
            self.relay_proxy = await self._exit.enter_async_context(FaultProxy(tunnel=True))
            document["proxy"] = {"url": f"http://127.0.0.1:{self.relay_proxy.port}"}
        if self._target_via_proxy:
            self.target_proxy = await self._exit.enter_async_context(
                FaultProxy(stack.targets.http_port)
            )
            document["targets"]["erp"]["port"] = self.target_proxy.port
        if self._opa:
            self.opa = await self._exit.enter_async_context(OpaServer())
            document["policy"].update(
                {"engine": "opa", "opa_url": self.opa.url, "decision_timeout_seconds": 0.25}
            )
        document["relay"]["ping_interval_seconds"] = 1
        document["limits"].update({"request_timeout_seconds": 3, "connect_timeout_seconds": 2})
        document["observability"] = {"enabled": False}
        if self._edit is not None:
            self._edit(document)
        stack.write_gateway_dir(self.directory, document=document)
        await register(
            RegistrationSettings(
                base_url=stack.controlplane.base_url,
                state_dir=self.directory / "state",
                gateway_id=stack.gateway_id,
                ca_file=self.directory / "empowerid-ca.pem",
            ),
            username=PERSON,
            password=PERSON_PASSWORD,
        )
        ReplayCache.initialise(self.directory / "state")
        options = AgentOptions(
            config_path=str(self.config), shutdown_grace=2, reload_poll_interval=30
        )
        if self._resolver is not None:
            options.resolver = self._resolver
        self.agent = Agent(options)
        await self.agent.start()
        self._exit.push_async_callback(self.agent.stop)
        await self.wait_online(60)

    async def wait_online(self, within: float, count: int = 2) -> float:
        """Seconds until ``count`` control channels are connected at the relay."""
        started = time.monotonic()
        async with asyncio.timeout(within):
            await self.stack.relay.wait_for_listeners(self.stack.hc, count)
        return time.monotonic() - started

    async def wait_reconnected(self, within: float, count: int = 2) -> None:
        """After a fault: wait until the relay has lost a channel, then until all are back."""
        relay, hc = self.stack.relay, self.stack.hc
        async with asyncio.timeout(within):
            # The emulator can wait for "at least" or "exactly", not for "fewer than": poll.
            while relay.listener_count(hc) >= count:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            await relay.wait_for_listeners(hc, count)

    def saas(self, *, clock_offset: float = 0.0) -> SaaSClient:
        """A signing SaaS client for the relay as it is now; its clock may run off by an offset."""
        if not clock_offset:
            return self.stack.saas()
        key = self.stack.controlplane.signing_key
        signer = RequestSigner(
            key.private_key,
            keyid=key.keyid,
            gateway_id=self.stack.gateway_id,
            clock=lambda: time.time() + clock_offset,
        )
        return SaaSClient(
            http_base=self.stack.relay.http_base,
            ws_base=self.stack.relay.ws_base,
            namespace=NAMESPACE,
            hc=self.stack.hc,
            send_token=self.stack.relay.token(self.stack.hc, "SendRule"),
            signer=signer,
            timeout=30,
        )

    def received(self) -> Counter[str]:
        """How many times the sample HTTP target received each ``rid``."""
        counts: Counter[str] = Counter()
        for request in self.stack.targets.http_requests:
            _, _, query = request.path_qs.partition("?")
            for pair in query.split("&"):
                if pair.startswith("rid="):
                    counts[pair[4:]] += 1
        return counts

    async def restart_relay(self, downtime: float) -> None:
        """Stop the relay emulator (every connection and pending request is lost), wait, and
        start it again on the same port, as a restarted relay service comes back at its name."""
        relay = self.stack.relay
        # The emulator binds its constructor port on start; pin it to the one it got, so the
        # gateway's configured endpoint and the relay's rendezvous addresses stay valid.
        relay._port = relay.port
        await relay.stop()
        await asyncio.sleep(downtime)
        await relay.start()


async def one_request(
    saas: SaaSClient, outcomes: Outcomes, path: str, *, expect_size: int | None = None
) -> int | None:
    """Send one signed GET with a unique ``rid``; classify the answer; return the status."""
    rid = f"r{next(_ids)}"
    outcomes.sent += 1
    if path.startswith("/api/admin"):
        outcomes.denied_rids.add(rid)
    query = f"rid={rid}" if expect_size is None else f"size={expect_size}&rid={rid}"
    try:
        response, _ = await saas.request("GET", "erp", path, query=query)
    except aiohttp.ClientConnectorError:
        outcomes.not_accepted += 1  # the relay's front door was down: never accepted
        return None
    except (aiohttp.ClientError, TimeoutError):
        outcomes.lost += 1
        outcomes.unanswered[rid] = time.monotonic()
        return None
    outcomes.statuses[response.status] += 1
    if response.status == 200:
        outcomes.ok += 1
        if expect_size is not None and len(response.body) != expect_size:
            outcomes.truncated += 1
    elif response.reason_code:
        if response.status >= 500:
            outcomes.gateway_error += 1
        else:
            outcomes.refused += 1
    else:
        outcomes.relay_error += 1
    return response.status


async def steady_load(
    bed: FaultBed,
    outcomes: Outcomes,
    *,
    rate: float,
    seconds: float,
    denied_every: int = 5,
    path: str = ALLOWED,
) -> None:
    """Send ``rate`` requests per second for ``seconds`` (every ``denied_every``-th one denied)."""
    tasks: set[asyncio.Task[int | None]] = set()
    async with bed.saas() as saas:
        started = time.monotonic()
        for index in itertools.count():
            due = started + index / rate
            if due - started >= seconds:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            chosen = DENIED if denied_every and index % denied_every == 0 else path
            tasks.add(asyncio.create_task(one_request(saas, outcomes, chosen.format(n=index))))
        await asyncio.gather(*tasks)


def integrity(bed: FaultBed, outcomes: Outcomes) -> dict[str, Any]:
    """The figures every scenario reports: sent, answered, lost, duplicated, unauthorised."""
    received = bed.received()
    cut = cut_by_relay(bed, outcomes)
    return {
        "sent": outcomes.sent,
        "ok": outcomes.ok,
        "refused": outcomes.refused,
        "gateway_5xx": outcomes.gateway_error,
        "relay_5xx": outcomes.relay_error,
        "relay_timeouts": sum(1 for e in bed.stack.relay.exchanges if e.outcome == "timeout"),
        "not_accepted": outcomes.not_accepted,
        "lost": outcomes.lost - len(cut),
        "cut_by_relay": len(cut),
        "duplicates": sum(1 for count in received.values() if count > 1),
        "unauthorised": sum(1 for rid in outcomes.denied_rids if rid in received),
        "truncated_200": outcomes.truncated,
    }


def _rid(target: str) -> str | None:
    _, _, query = target.partition("?")
    for pair in query.split("&"):
        if pair.startswith("rid="):
            return pair[4:]
    return None


def cut_by_relay(bed: FaultBed, outcomes: Outcomes) -> set[str]:
    """The unanswered requests the relay itself dropped while it stopped (module docstring).

    Decided from what the relay recorded, not from when things happened to run: a request the
    relay held when it stopped is ``cut`` in its journal; a request it never read has no entry,
    and only a stopping relay closes a sender's connection without reading its request, so that
    connection failed after a stop began. Any other unanswered request is lost.
    """
    relay = bed.stack.relay
    journal = {_rid(exchange.target): exchange for exchange in relay.exchanges}
    cut: set[str] = set()
    for rid, failed_at in outcomes.unanswered.items():
        exchange = journal.get(rid)
        if exchange is not None:
            if exchange.outcome == "cut":
                cut.add(rid)
        elif any(stopped <= failed_at for stopped in relay.stop_instants):
            cut.add(rid)
    return cut


async def unaccounted(bed: FaultBed, within: float = 60.0) -> dict[str, int]:
    """Requests the relay handed to the gateway against those the gateway accounted for.

    The gateway's listener counts each request it read once, by outcome, when it has written the
    answer or failed to (``send_failed``, ``dropped``); a request it lost is in no count. Answers
    may still be on their way (a late answer dials a rendezvous address), so this waits up to
    ``within`` s for the counts to meet; it returns as soon as they do.
    """
    delivered = sum(1 for exchange in bed.stack.relay.exchanges if exchange.delivered)
    listener = getattr(bed.agent, "_listener", None)
    metrics = getattr(listener, "metrics", None)
    assert metrics is not None, "the agent has no relay listener"
    deadline = time.monotonic() + within
    # The listener's counters have no event to wait on: poll.
    while sum(metrics.requests.values()) < delivered and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    accounted = sum(metrics.requests.values())
    return {
        "delivered_to_gateway": delivered,
        "gateway_accounted": accounted,
        "unaccounted": max(0, delivered - accounted),
    }


async def probe(bed: FaultBed, within: float, **saas: Any) -> float | None:
    """Seconds until an allowed request is answered 200 again (``None``: not ``within`` s)."""
    started = time.monotonic()
    async with bed.saas(**saas) as client:
        while time.monotonic() - started < within:
            if await one_request(client, Outcomes(), ALLOWED.format(n=0)) == 200:
                return round(time.monotonic() - started, 3)
            await asyncio.sleep(0.1)
    return None


@contextlib.asynccontextmanager
async def background(coroutine: Awaitable[None]) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``coroutine`` as an owned task for the duration of the block."""
    task = asyncio.ensure_future(coroutine)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- relay faults -------------------------------------------------------------------------------


async def relay_drops(directory: Path, *, seconds: float, rate: float, every: float) -> Figures:
    """The relay drops every control channel (TCP abort) every ``every`` s under steady load."""
    async with FaultBed(directory) as bed:
        outcomes = Outcomes()
        reconnects: list[float] = []

        async def fault() -> None:
            while True:
                await asyncio.sleep(every)
                dropped = time.monotonic()
                await bed.stack.relay.drop_listeners()
                with contextlib.suppress(TimeoutError):
                    await bed.wait_reconnected(60.0)
                    reconnects.append(time.monotonic() - dropped)

        async with background(fault()):
            await steady_load(bed, outcomes, rate=rate, seconds=seconds)
        figures = integrity(bed, outcomes)
        figures.update(
            drops=len(reconnects),
            reconnect_p50=percentile(reconnects, 0.5),
            reconnect_p99=percentile(reconnects, 0.99),
            recovered_after=await probe(bed, 70),
            reconnects_counted=_reconnect_total(bed),
        )
        return Figures("relay drops under load", figures)


def _reconnect_total(bed: FaultBed) -> int:
    listener = getattr(bed.agent, "_listener", None)
    metrics = getattr(listener, "metrics", None)
    return sum(metrics.reconnects.values()) if metrics is not None else -1


async def blackholed_relay(directory: Path, *, rate: float) -> Figures:
    """Every relay socket goes silent (no FIN, no RST); the gateway must notice and reconnect."""
    async with FaultBed(directory, relay_via_proxy=True, relay_response_timeout=5) as bed:
        assert bed.relay_proxy is not None
        outcomes = Outcomes()
        started = time.monotonic()
        bed.relay_proxy.blackhole()
        await steady_load(bed, outcomes, rate=rate, seconds=2)
        await bed.wait_reconnected(60)
        reconnect = time.monotonic() - started
        figures = integrity(bed, outcomes)
        figures.update(
            detected_and_reconnected=round(reconnect, 3),
            recovered_after=await probe(bed, PROBE_WITHIN),
        )
        return Figures("blackholed relay sockets", figures)


async def token_expiry(directory: Path, *, rate: float, rounds: int) -> Figures:
    """The relay declares listener tokens expired (close 1008) ``rounds`` times under load."""
    async with FaultBed(directory) as bed:
        outcomes = Outcomes()
        reconnects: list[float] = []

        async def fault() -> None:
            for _ in range(rounds):
                await asyncio.sleep(1.0)
                expired = time.monotonic()
                await bed.stack.relay.expire_tokens()
                await bed.wait_reconnected(60)
                reconnects.append(time.monotonic() - expired)

        async with background(fault()) as task:
            await steady_load(bed, outcomes, rate=rate, seconds=rounds * 1.5 + 1)
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), 60)
        figures = integrity(bed, outcomes)
        figures.update(
            expiries=len(reconnects),
            reconnect_p50=percentile(reconnects, 0.5),
            reconnect_p99=percentile(reconnects, 0.99),
            recovered_after=await probe(bed, PROBE_WITHIN),
        )
        # The relay closed each channel with a close frame (1008): everything it sent was read.
        figures.update(await unaccounted(bed))
        return Figures("listener token expiry", figures)


async def relay_restart(directory: Path, *, downtime: float, rate: float) -> Figures:
    """The relay service restarts (all state lost, back after ``downtime`` s) under load."""
    async with FaultBed(directory) as bed:
        outcomes = Outcomes()
        load = asyncio.ensure_future(steady_load(bed, outcomes, rate=rate, seconds=downtime + 3))
        await asyncio.sleep(1)
        stopped = time.monotonic()
        await bed.restart_relay(downtime)
        await bed.wait_online(60)
        back = time.monotonic() - stopped
        await load
        figures = integrity(bed, outcomes)
        figures.update(
            downtime=downtime,
            online_again_after=round(back, 3),
            recovered_after=await probe(bed, PROBE_WITHIN),
        )
        # The relay closed its control channels cleanly (1001): everything it sent was read.
        figures.update(await unaccounted(bed))
        return Figures("relay restart", figures)


# --- on-prem target faults ----------------------------------------------------------------------


async def target_faults(directory: Path, *, requests: int) -> Figures:
    """The target refuses, hangs, drips, and resets mid-body; then behaves again."""
    async with FaultBed(directory, target_via_proxy=True) as bed:
        proxy = bed.target_proxy
        assert proxy is not None
        figures: dict[str, Any] = {}
        modes: list[tuple[str, Callable[[FaultProxy, bool], None], int | None]] = [
            ("refusing", lambda p, on: setattr(p, "refuse", on), None),
            ("hanging", lambda p, on: setattr(p, "hang", on), None),
            ("dripping", lambda p, on: setattr(p, "drip", 0.05 if on else None), 20_000),
            (
                "reset_mid_body",
                lambda p, on: setattr(p, "reset_after", 2000 if on else None),
                20_000,
            ),
            (
                "reset_mid_large_body",
                lambda p, on: setattr(p, "reset_after", 150_000 if on else None),
                300_000,
            ),
        ]
        total = Outcomes()
        async with bed.saas() as saas:
            for name, knob, size in modes:
                knob(proxy, True)
                outcomes = Outcomes()
                started = time.monotonic()
                path = "/api/blob" if size is not None else ALLOWED.format(n=1)
                await asyncio.gather(
                    *(one_request(saas, outcomes, path, expect_size=size) for _ in range(requests))
                )
                knob(proxy, False)
                figures[f"{name}_statuses"] = dict(sorted(outcomes.statuses.items()))
                figures[f"{name}_seconds"] = round(time.monotonic() - started, 3)
                figures[f"{name}_truncated_200"] = outcomes.truncated
                for key in ("sent", "lost", "truncated", "ok", "not_accepted"):
                    setattr(total, key, getattr(total, key) + getattr(outcomes, key))
        figures.update(
            sent=total.sent,
            lost=total.lost,
            not_accepted=total.not_accepted,
            truncated_200=total.truncated,
            duplicates=sum(1 for count in bed.received().values() if count > 1),
            recovered_after=await probe(bed, PROBE_WITHIN),
        )
        return Figures("target refusing / hanging / dripping / resetting", figures)


class FlakyResolver:
    """The resolver seam: maps every name to 127.0.0.1, or fails, or stalls, on demand."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.calls = 0

    async def __call__(self, host: str, port: int) -> Sequence[IPAddress]:
        self.calls += 1
        if self.mode == "fail":
            raise OSError(f"{host}: Name or service not known")
        if self.mode == "slow":
            await asyncio.sleep(5)
        return [ipaddress.ip_address("127.0.0.1")]


async def dns_faults(directory: Path, *, requests: int) -> Figures:
    """The target's name stops resolving, then resolves slowly, then recovers."""
    resolver = FlakyResolver()

    def by_name(document: dict[str, Any]) -> None:
        erp = document["targets"]["erp"]
        erp.update({"host": "erp.corp.example", "allowed_cidrs": ["127.0.0.0/8"]})

    async with FaultBed(directory, resolver=resolver, edit=by_name) as bed:
        figures: dict[str, Any] = {}
        async with bed.saas() as saas:
            lost = 0
            for mode in ("fail", "slow"):
                resolver.mode = mode
                started = time.monotonic()
                reasons = await asyncio.gather(
                    *(_reason(saas, ALLOWED.format(n=i)) for i in range(requests))
                )
                figures[f"{mode}_answers"] = dict(Counter(reasons))
                figures[f"{mode}_seconds"] = round(time.monotonic() - started, 3)
                lost += reasons.count("lost")
            resolver.mode = "ok"
        figures["lost"] = lost
        figures["forwarded_while_failing"] = len(bed.stack.targets.http_requests)
        figures["recovered_after"] = await probe(bed, PROBE_WITHIN)
        return Figures("DNS failing or slow", figures)


async def _reason(saas: SaaSClient, path: str) -> str:
    try:
        response, _ = await saas.request("GET", "erp", path)
    except (aiohttp.ClientError, TimeoutError):
        return "lost"
    return f"{response.status} {response.reason_code or '-'}"


async def opa_faults(directory: Path, *, requests: int) -> Figures:
    """The OPA server goes down (and comes back empty), then answers slowly."""
    async with FaultBed(directory, opa=True) as bed:
        assert bed.opa is not None
        figures: dict[str, Any] = {}
        async with bed.saas() as saas:
            await bed.opa.go_down()
            started = time.monotonic()
            down = await asyncio.gather(
                *(_reason(saas, ALLOWED.format(n=i)) for i in range(requests))
            )
            figures["down_answers"] = dict(Counter(down))
            figures["down_seconds"] = round(time.monotonic() - started, 3)
            await bed.opa.come_back(empty=True)
            figures["recovered_after_restart"] = await probe(bed, PROBE_WITHIN)
            bed.opa.delay = 2.0
            started = time.monotonic()
            # Paths not decided before: a repeated input would be answered from the decision
            # cache of this revision without asking OPA (by design, see gateway.policy.cache).
            slow = await asyncio.gather(
                *(_reason(saas, ALLOWED.format(n=1000 + i)) for i in range(requests))
            )
            figures["slow_answers"] = dict(Counter(slow))
            figures["slow_seconds"] = round(time.monotonic() - started, 3)
            figures["lost"] = (down + slow).count("lost")
            bed.opa.delay = 0.0
        figures["forwarded_while_faulty"] = len(bed.stack.targets.http_requests) - 1
        figures["recovered_after"] = await probe(bed, PROBE_WITHIN)
        return Figures("OPA down or slow", figures)


async def audit_disk_full(directory: Path, *, rate: float, seconds: float) -> Figures:
    """The decision log is on a full disk (/dev/full): requests must still be answered."""

    def full_disk(document: dict[str, Any]) -> None:
        document["logging"]["audit_file"] = "/dev/full"

    async with FaultBed(directory, edit=full_disk) as bed:
        outcomes = Outcomes()
        await steady_load(bed, outcomes, rate=rate, seconds=seconds)
        figures = integrity(bed, outcomes)
        audit = getattr(bed.agent, "_audit", None)
        figures["audit_write_failures"] = getattr(audit, "failures", -1)
        return Figures("audit log disk full", figures)


async def clock_skew(directory: Path, *, offset: float, requests: int) -> Figures:
    """The SaaS signer's clock is ``offset`` s off; then it is corrected."""
    async with FaultBed(directory) as bed:
        figures: dict[str, Any] = {}
        async with bed.saas(clock_offset=offset) as skewed:
            answers = await asyncio.gather(
                *(_reason(skewed, ALLOWED.format(n=i)) for i in range(requests))
            )
        figures["skewed_answers"] = dict(Counter(answers))
        figures["lost"] = answers.count("lost")
        assert bed.agent is not None
        figures["health_clock_skew"] = bed.agent.readiness().details.get("clock_skew")
        figures["forwarded_while_skewed"] = len(bed.stack.targets.http_requests)
        figures["recovered_after"] = await probe(bed, PROBE_WITHIN)
        return Figures(f"clock skew {offset:+.0f} s", figures)


def as_json(figures: Figures) -> str:
    """One line of JSON for machine-readable logs."""
    return json.dumps({"scenario": figures.scenario, **figures.values}, default=str)
