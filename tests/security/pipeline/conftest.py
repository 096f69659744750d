"""One complete environment per test module: relay emulator -> real gateway -> recording targets.

The catalogue's baseline fixture (docs/security-test-catalogue.md, "Baseline fixture"): the agent
is registered as ``agent-1`` on HC ``hc-agent-1`` with the control-plane simulator (real mTLS,
real request-signing key), runs in-process (:class:`gateway.service.Agent`) with the shipped Rego
policy, and serves target ``erp`` = https ``erp.corp.local:8443``, ``allowed_cidrs:
[10.1.2.0/24]``, GET/POST on ``/api/*``. Name resolution is a table (:class:`FakeDns`,
``erp.corp.local`` -> ``10.1.2.3``) and the dial step's redirect seam (:class:`Dialler`) records
every ``(ip, port)`` the gateway decides to dial and connects to a loopback stand-in instead, so
no packet ever goes to a 10.x address. The ``erp`` stand-in speaks real TLS with a trustme
certificate for ``erp.corp.local``, whose CA is the target's ``tls.ca_file``.

Two more declarations round out the shapes a request can name: operation ``session`` on ``erp``
(``GET /session/*``, naming ``Authorization`` and ``Cookie``, catalogue C 66) and the raw tcp
target ``ldap`` (``dc1.corp.local:636`` -> ``10.1.4.5``, the devkit TCP echo) for streams.

Every socket the gateway opens is first shown to :class:`LoopbackGuard` (the dial step's guard
seam), which refuses any endpoint outside 127.0.0.0/8: whatever a test does, nothing the gateway
dials can leave loopback, and a connection that bypassed the dial step could not be made at all.

A module may override the :func:`gateway_sections` fixture to change top-level gateway.yaml
sections (limits, signatures) and :func:`extra_targets` to declare more targets, for all of its
tests. Addresses in 10.1.3.0/24 are routed to the devkit's sample HTTP and WebSocket API.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import trustme

from gateway.auth.limiter import DEFAULT_COOLDOWN, DEFAULT_WINDOW
from gateway.config import LoadedConfig
from gateway.devkit.saas import SaaSClient, SaaSResponse
from gateway.devkit.stack import DevStack
from gateway.forward.dial import IPAddress
from gateway.pipeline import Decider, Decision
from gateway.service import Agent, AgentOptions, default_engine
from tests.security.pipeline.target import KeepAliveTarget, RecordingTarget

GATEWAY_ID = "agent-1"
ERP_HOST = "erp.corp.local"
ERP_ADDRESS = "10.1.2.3"
ERP_NETWORK = ipaddress.ip_network("10.1.2.0/24")
LDAP_HOST = "dc1.corp.local"
LDAP_NETWORK = ipaddress.ip_network("10.1.4.0/24")
API_NETWORK = ipaddress.ip_network("10.1.3.0/24")
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
START_TIMEOUT = 60.0
# Control channels per agent: enough that a test which makes the listener drop one (and wait out
# its reconnect backoff) leaves others serving the next test.
LISTENERS = 4


@dataclass
class FakeDns:
    """The resolver seam: a table from name to addresses; names not in it do not resolve."""

    answers: dict[str, list[str]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    delay: float = 0.0

    def reset(self) -> None:
        """Back to the baseline table."""
        self.answers = {ERP_HOST: [ERP_ADDRESS], LDAP_HOST: ["10.1.4.5"]}
        self.calls.clear()
        self.delay = 0.0

    async def __call__(self, host: str, port: int) -> Sequence[IPAddress]:
        """Answer from the table (after ``delay``), recording the question."""
        self.calls.append(host)
        if self.delay:
            await asyncio.sleep(self.delay)
        if host not in self.answers:
            raise OSError(f"{host} does not resolve")
        return [ipaddress.ip_address(text) for text in self.answers[host]]


@dataclass
class Dialler:
    """The dial step's redirect seam: records ``(ip, port)`` and picks the loopback stand-in.

    Addresses in 10.1.2.0/24 go to the ``erp`` stand-in (or to ``erp_override`` when a test
    wants a refusing or silent endpoint), 10.1.4.0/24 to the TCP echo. Anything else has no
    stand-in: it is recorded and refused, so a wrong decision shows up instead of leaving
    loopback.
    """

    erp_port: int
    ldap_port: int
    api_port: int
    erp_override: tuple[str, int] | None = None
    everything_to: str | None = None
    """Send every address to this host instead (same port): to show what the guard refuses."""
    dialled: list[tuple[str, int]] = field(default_factory=list)

    def reset(self) -> None:
        """Forget what was dialled and route erp to its stand-in again."""
        self.dialled.clear()
        self.erp_override = None
        self.everything_to = None

    def __call__(self, address: IPAddress, port: int) -> tuple[str, int]:
        """Where to really connect for the checked ``address``."""
        self.dialled.append((str(address), port))
        if self.everything_to is not None:
            return (self.everything_to, port)
        if address in ERP_NETWORK:
            return self.erp_override or ("127.0.0.1", self.erp_port)
        if address in LDAP_NETWORK:
            return ("127.0.0.1", self.ldap_port)
        if address in API_NETWORK:
            return ("127.0.0.1", self.api_port)
        raise OSError(f"no loopback stand-in for {address}")


@dataclass
class LoopbackGuard:
    """The dial step's guard seam: sees every endpoint a socket is created for, refuses all but
    loopback (and records both)."""

    connects: list[tuple[str, int]] = field(default_factory=list)
    refused: list[tuple[str, int]] = field(default_factory=list)

    def reset(self) -> None:
        """Forget every endpoint seen."""
        self.connects.clear()
        self.refused.clear()

    def __call__(self, address: IPAddress, port: int) -> None:
        """Allow a socket to ``address``:``port`` only on loopback."""
        if address not in LOOPBACK:
            self.refused.append((str(address), port))
            raise OSError(f"{address} is not loopback: refused by the test guard")
        self.connects.append((str(address), port))


class RecordingEngine:
    """The real policy engine, plus a record of every ``input`` document it was asked about."""

    def __init__(self, inner: Decider, inputs: list[dict[str, Any]]) -> None:
        self._inner = inner
        self._inputs = inputs

    @property
    def revision(self) -> str:
        """The real engine's revision."""
        return self._inner.revision

    @property
    def ready(self) -> bool:
        """Whether the real engine can decide."""
        return self._inner.ready

    async def decide(self, input: Mapping[str, Any]) -> Decision:
        """Record ``input`` and let the real engine decide."""
        self._inputs.append(dict(input))
        return await self._inner.decide(input)

    async def close(self) -> None:
        """Close the real engine (the agent closes retired revisions this way)."""
        closer = getattr(self._inner, "close", None)
        if closer is not None:
            await closer()


class ManualClock:
    """Monotonic seconds that move only when a test says so (the bad-signature limiter's clock).

    The limiter counts failures within a window of seconds; on the wall clock, whether a test's
    failures land in one window would depend on how fast the machine sends them. Here time stands
    still while a test sends, and a test steps over a window or a cool-down with :meth:`advance`.
    """

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        """The current reading."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self.now += seconds


@dataclass
class PipelineEnv:
    """Everything one module's tests drive and observe."""

    stack: DevStack
    agent: Agent
    config: Path
    dns: FakeDns
    dialler: Dialler
    guard: LoopbackGuard
    erp: RecordingTarget
    ca: trustme.CA
    policy_inputs: list[dict[str, Any]]
    limiter_clock: ManualClock

    def reset(self) -> None:
        """Clear every recorder and scripted behaviour (run before each test)."""
        self.dns.reset()
        self.dialler.reset()
        self.guard.reset()
        self.erp.reset()
        self.stack.targets.tcp_bytes.clear()
        self.stack.targets.http_requests.clear()
        self.stack.targets.ws_streams.clear()
        self.policy_inputs.clear()
        # Past every window and cool-down: no test inherits the bad-signature counts of another.
        self.limiter_clock.advance(DEFAULT_WINDOW + DEFAULT_COOLDOWN + 1)

    def saas(self, *, signed: bool = True) -> SaaSClient:
        """A SaaS client sending through the relay emulator, signing as EmpowerID does."""
        return self.stack.saas(signed=signed)

    async def send(self, method: str, selector: str, path: str, **kwargs: Any) -> SaaSResponse:
        """One signed request through the relay's HTTP front door."""
        async with self.saas() as saas:
            response, _ = await saas.request(method, selector, path, **kwargs)
        return response

    async def send_json(self, method: str, selector: str, path: str, **kwargs: Any) -> SaaSResponse:
        """One signed request handed to the listener as relay JSON (see SaaSClient.relay_json)."""
        async with self.saas() as saas:
            response, _ = await saas.relay_json(method, selector, path, **kwargs)
        return response

    async def deliver(
        self, method: str, request_target: str, headers: dict[str, str] | None = None
    ) -> SaaSResponse:
        """Hand a raw ``request`` command to a listener (unsigned, target exactly as given).

        A listener that drops its control channel over the message is answered by the relay
        with 502, as the HTTP front door would answer the sender.
        """
        try:
            got = await self.stack.relay.deliver_request(
                self.stack.hc, method=method, request_target=request_target, headers=headers or {}
            )
        except ConnectionError:
            return SaaSResponse(502, {}, b"")
        answer = {k.lower(): v for k, v in got.command.response_headers.items()}
        return SaaSResponse(got.command.status_code, answer, got.body or b"")

    def assert_never_forwarded(self) -> None:
        """Nothing reached any on-prem stand-in, and nothing was even dialled."""
        assert self.erp.arrivals == []
        assert self.erp.connections == 0
        assert self.dialler.dialled == []
        assert self.guard.connects == self.guard.refused == []
        assert self.stack.targets.tcp_bytes == []

    def forwarded_once(self) -> Any:
        """The single request the ``erp`` stand-in received."""
        assert len(self.erp.arrivals) == 1, self.erp.arrivals
        return self.erp.arrivals[0]


def baseline_targets(ca_file: str) -> dict[str, Any]:
    """The catalogue's ``erp`` entry (plus ``session`` and the ``ldap`` stream target)."""
    return {
        "erp": {
            "scheme": "https",
            "host": ERP_HOST,
            "port": 8443,
            "allowed_cidrs": [str(ERP_NETWORK)],
            "tls": {"ca_file": ca_file},
            "operations": [
                {"name": "orders", "methods": ["GET", "POST"], "paths": ["/api/*"]},
                {
                    "name": "session",
                    "methods": ["GET"],
                    "paths": ["/session/*"],
                    "headers": ["Authorization", "Cookie"],
                },
            ],
        },
        "ldap": {
            "scheme": "tcp",
            "host": LDAP_HOST,
            "port": 636,
            "allowed_cidrs": [str(LDAP_NETWORK)],
        },
    }


# The port of ``pool``, a second erp target served by a keep-alive stand-in (connection reuse).
POOL_PORT = 9443


def pool_target(operation: dict[str, Any]) -> dict[str, Any]:
    """``pool``: the erp host on :data:`POOL_PORT` with one operation, for ``extra_targets``."""
    return {
        "pool": {
            "scheme": "https",
            "host": ERP_HOST,
            "port": POOL_PORT,
            "allowed_cidrs": [str(ERP_NETWORK)],
            "tls": {"ca_file": "target-ca.pem"},
            "operations": [operation],
        }
    }


@contextlib.asynccontextmanager
async def keep_alive_pool(env: PipelineEnv) -> AsyncIterator[KeepAliveTarget]:
    """A TLS stand-in for ``pool`` (the erp certificate and CA) that keeps every connection
    open after answering."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    env.ca.issue_cert(ERP_HOST).configure_cert(context)
    server = KeepAliveTarget(context)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(scope="module")
def gateway_sections() -> dict[str, Any]:
    """Top-level gateway.yaml sections for this module (short timeouts keep faults fast)."""
    return {"limits": {"request_timeout_seconds": 3, "connect_timeout_seconds": 1}}


@pytest.fixture(scope="module")
def extra_targets() -> dict[str, Any]:
    """Targets this module declares beside the baseline ones (none by default)."""
    return {}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(
    tmp_path_factory: pytest.TempPathFactory,
    gateway_sections: dict[str, Any],
    extra_targets: dict[str, Any],
) -> AsyncIterator[PipelineEnv]:
    """Start the stack, the stand-ins and a registered agent once for the module."""
    directory = tmp_path_factory.mktemp("gateway")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "target-ca.pem"))
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(ERP_HOST).configure_cert(server_context)
    erp = RecordingTarget(server_context)
    await erp.start()
    try:
        async with DevStack(GATEWAY_ID) as stack:
            targets = {**baseline_targets("target-ca.pem"), **extra_targets}
            document = stack.gateway_document(targets, **gateway_sections)
            document["relay"]["connections"] = LISTENERS
            config = stack.write_gateway_dir(directory, document=document)
            await stack.register_gateway(directory)
            dns = FakeDns()
            dialler = Dialler(erp.port, stack.targets.tcp_port, stack.targets.http_port)
            guard = LoopbackGuard()
            inputs: list[dict[str, Any]] = []
            clock = ManualClock()

            async def engine(loaded: LoadedConfig) -> Decider:
                return RecordingEngine(await default_engine(loaded), inputs)

            agent = Agent(
                AgentOptions(
                    config_path=str(config),
                    resolver=dns,
                    redirect=dialler,
                    guard=guard,
                    shutdown_grace=1,
                    reload_poll_interval=600,
                    engine_factory=engine,
                    limiter_clock=clock,
                )
            )
            await agent.start()
            try:
                async with asyncio.timeout(START_TIMEOUT):
                    await stack.relay.wait_for_listeners(stack.hc, LISTENERS)
                env = PipelineEnv(stack, agent, config, dns, dialler, guard, erp, ca, inputs, clock)
                yield env
            finally:
                # A test may have restarted the agent (catalogue D 78): stop the current one.
                await env.agent.stop() if "env" in locals() else await agent.stop()
    finally:
        await erp.stop()


@pytest_asyncio.fixture(autouse=True, loop_scope="module")
async def fresh(env: PipelineEnv) -> None:
    """Every test starts with a listener online, empty recorders and the baseline routes.

    Some tests make the listener drop a control channel on purpose (a relay message its
    protocol core refuses); it reconnects with backoff, and the other channels serve meanwhile.
    """
    async with asyncio.timeout(START_TIMEOUT):
        await env.stack.relay.wait_for_listeners(env.stack.hc, 1, at_least=True)
    env.reset()
