"""The whole product under load: signed requests through the relay to a real ``gateway run``.

Each component runs in its own process on 127.0.0.1:

* ``relay``: the devkit relay emulator (one Hybrid Connection, listen and send SAS rules);
* ``services``: the control-plane simulator (registration, relay info, signing keys, heartbeats)
  and the sample on-prem targets (an HTTP API and a TCP echo service);
* ``gateway``: ``gateway register`` once, then ``gateway run`` with the demo's configuration shape
  (embedded Rego policy, decision log to a file, JSON logs, health endpoint);
* the load generator in this process: EmpowerID's side, signing every request (RFC 9421, Ed25519,
  RSA-PSS, or hmac-sha256 with the gateway's own key) as :class:`gateway.devkit.saas.SaaSClient`
  does.

Scenarios, interleaved per repetition, at 1 and 32 requests in flight: ``direct`` (the load
generator calls the sample HTTP target itself), ``gateway`` (``GET /{hc}/erp/api/accounts`` through
the relay emulator, the gateway's signature check, canonicalisation, policy decision with a warm
decision cache, and the forward), ``gateway-hmac`` (the same, signed with the gateway's own
hmac-sha256 key: ``signatures.hmac_sha256`` is on), ``gateway-rsa`` (the same, signed with
``rsa-pss-sha512`` by a 2048-bit RSA key the control plane publishes to this gateway beside its
Ed25519 key, as an EmpowerID key held in Azure Key Vault signs), and, on the same emulator and
target, two bare
listeners that forward every relayed request to the same target URL without any check: ``listener``
(our :class:`gateway.relay.listener.RelayListener` alone, as in ``bench_relay.py``) and ``hyco``
(Microsoft's hyco-https 1.4.5 on Node, skipped when Node or its packages are missing). The report's
ratio lines compare the gateway's CPU per request (Ed25519, then hmac-sha256, then RSA-PSS) with
hyco-https's, run by run. Requests are signed just before each timed run, so the load generator's
signing cost stays out of the measured window, and the run then waits as long as the signing took
(at most 3 s), so the signing's after-effect on the machine stays out of it too. The gateway's
CPU time comes from ``/proc/PID/stat`` (user + system, all threads) and its memory from
``VmRSS`` in ``/proc/PID/status``: idle after start, the peak while under load, and with 1,000
relayed TCP streams open at once to the ``directory`` target (each checked with one echoed
message).

The gateway runs as an operator starts it, ``gateway run`` with ``event_loop: auto``: on uvloop's
event loop wherever uvloop is installed (the report names the loop its ``/readyz`` reports). With
``--asyncio`` a second gateway (``bench-gateway-asyncio`` on its own Hybrid Connection, the same
configuration) runs ``gateway run --event-loop asyncio`` beside the first, and
``gateway-asyncio`` (Ed25519) is measured in the same interleaved runs: what the event loop
changes, side by side (the report's ``gateway/gateway-asyncio`` ratio). With ``--baseline
REF`` the bare listener of commit ``REF`` runs beside ours (``listener-base``), and so does a
whole gateway of that commit (``bench-gateway-base``, the same configuration on its own Hybrid
Connection): ``gateway-base``, signed with Ed25519 like ``gateway``, and the report's
``gateway/gateway-base`` ratio is a change's effect on the full pipeline, measured side by side.

Run: ``.venv/bin/python benchmarks/bench_pipeline.py [--quick] [--asyncio]`` (loopback only; the
full run takes about 3 minutes, ``--quick`` about one). The full run writes the printed report
to ``benchmarks/pipeline-report.md``; ``--quick`` only prints.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from bench_relay import (
    HC_BASE,
    HC_HYCO,
    HC_OURS,
    extract_baseline,
    prepare_node,
    run_listener,
    start_hyco,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from harness import (
    CLOCK_TICKS,
    Sample,
    cpu_seconds,
    rss_mb,
    start_child,
    stop_processes,
    until_terminated,
    write_report,
)
from yarl import URL

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()
REPORT = SCRIPT.parent / "pipeline-report.md"
NAMESPACE = "relay.bench.invalid"
GATEWAY_ID = "bench-gateway"
HC = f"hc-{GATEWAY_ID}"
# The second gateway of --asyncio: the same configuration on asyncio's own loop, side by side.
GATEWAY_ASYNCIO = "bench-gateway-asyncio"
HC_ASYNCIO = f"hc-{GATEWAY_ASYNCIO}"
# The second gateway of --baseline: the same configuration, the gateway package of another commit.
GATEWAY_BASE = "bench-gateway-base"
HC_GATEWAY_BASE = f"hc-{GATEWAY_BASE}"
PERSON, PERSON_PASSWORD = "operator", "bench-operator-password"
TARGET_PATH = "/api/accounts"
STEP = 30.0  # bound for one start-up wait (registration and policy compilation included)
SAS_HEADER = "ServiceBusAuthorization"
BARE_HCS = (HC_OURS, HC_HYCO, HC_BASE)
PATHS = (
    "direct",
    "gateway",
    "gateway-base",
    "gateway-hmac",
    "gateway-rsa",
    "gateway-asyncio",
    "listener",
    "listener-base",
    "hyco",
)
# The longest pause between signing a run's requests and timing the run (see Load.run).
SETTLE = 3.0
# The signed paths: Ed25519 with the control plane's key, hmac-sha256 with the gateway's own,
# RSA-PSS with the control plane's second key, and Ed25519 to the second gateway, which runs on
# asyncio's loop (--asyncio) or is another commit's (--baseline).
SIGNED = ("gateway", "gateway-base", "gateway-hmac", "gateway-rsa", "gateway-asyncio")


# --- child processes ---------------------------------------------------------------------


async def run_relay(
    signed: Sequence[str] = (HC, HC_ASYNCIO, HC_GATEWAY_BASE), bare: Sequence[str] = BARE_HCS
) -> None:
    """The relay emulator with the ``signed`` Hybrid Connections (senders need a Send token) and
    the ``bare`` ones; the SAS keys come from the environment."""
    from gateway.devkit.relay_emulator import (
        LISTEN,
        SEND,
        HybridConnectionSpec,
        RelayEmulator,
        SasRule,
    )

    rules = [
        SasRule("ListenRule", os.environ["BENCH_LISTEN_KEY"], frozenset({LISTEN})),
        SasRule("SendRule", os.environ["BENCH_SEND_KEY"], frozenset({SEND})),
    ]
    # The bare listeners' connections take anonymous senders, as in bench_relay.py.
    anonymous = [HybridConnectionSpec(hc, requires_client_authorization=False) for hc in bare]
    async with RelayEmulator([*signed, *anonymous], rules, namespace=NAMESPACE) as relay:
        print(f"ready {relay.port}", flush=True)
        await until_terminated()


async def run_services(workdir: Path) -> None:
    """The control-plane simulator and the sample targets; writes the CA and the signing key."""
    from gateway.devkit.controlplane import ControlPlaneSimulator
    from gateway.devkit.stack import SampleTargets

    simulator = ControlPlaneSimulator(
        relay_namespace=NAMESPACE,
        relay_key_name="ListenRule",
        relay_key=os.environ["BENCH_LISTEN_KEY"],
        # Each gateway its own Hybrid Connection, hc-{gateway id} (HC, HC_ASYNCIO, HC_GATEWAY_BASE).
        cert_lifetime=datetime.timedelta(days=1),
    )
    simulator.add_person(PERSON, PERSON_PASSWORD)
    targets = SampleTargets()
    async with simulator:
        await targets.start()
        try:
            simulator.write_ca(workdir / "empowerid-ca.pem")
            key = simulator.signing_key
            pem = key.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            (workdir / "signing-key.pem").write_bytes(pem)
            # A second, RSA-PSS key (rsa-pss-sha512, as a key in Azure Key Vault signs: PS512),
            # published to the first gateway only: a --baseline commit's gateway may not know
            # the algorithm, and would refuse the whole key set.
            second = simulator.add_signing_key("rsa-pss-sha512", gateway_ids=[GATEWAY_ID])
            rsa_pem = second.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            (workdir / "rsa-signing-key.pem").write_bytes(rsa_pem)
            (workdir / "rsa-keyid").write_text(second.keyid, encoding="utf-8")
            # The gateway's own hmac-sha256 key (signatures.hmac_sha256), as EmpowerID holds it.
            shared = simulator.request_secret(GATEWAY_ID)
            (workdir / "hmac-key").write_text(
                f"{shared.keyid} {base64.b64encode(shared.secret).decode()}", encoding="utf-8"
            )
            port = simulator.base_url.rstrip("/").rsplit(":", 1)[1]
            print(f"ready {port} {targets.http_port} {targets.tcp_port} {key.keyid}", flush=True)
            await until_terminated()
        finally:
            await targets.stop()


# --- orchestration helpers ---------------------------------------------------------------


def gateway_config(
    relay_port: int,
    cp_port: int,
    http_port: int,
    tcp_port: int,
    health_port: int,
    gateway_id: str = GATEWAY_ID,
) -> dict[str, Any]:
    """gateway.yaml for the benchmark: the demo's shape (see gateway.devkit.stack.demo_config)."""
    return {
        "version": 1,
        "gateway": {"id": gateway_id, "state_dir": "state"},
        "empowerid": {"url": f"https://127.0.0.1:{cp_port}/", "ca_file": "empowerid-ca.pem"},
        "relay": {"connections": 2, "endpoint": f"ws://127.0.0.1:{relay_port}"},
        "policy": {"directories": [str(ROOT / "policies")]},
        "signatures": {"hmac_sha256": True},
        "limits": {"request_timeout_seconds": 10},
        "logging": {"level": "info", "format": "json", "audit_file": "decisions.jsonl"},
        "observability": {"listen": f"127.0.0.1:{health_port}"},
        "targets": {
            "erp": {
                "description": "sample HTTP API on loopback",
                "scheme": "http",
                "host": "127.0.0.1",
                "port": http_port,
                "allow_special_addresses": True,
                "operations": [
                    {
                        "name": "read-accounts",
                        "methods": ["GET"],
                        "paths": ["/api/accounts", "/api/accounts/*"],
                    }
                ],
            },
            "directory": {
                "description": "sample TCP service on loopback",
                "scheme": "tcp",
                "host": "127.0.0.1",
                "port": tcp_port,
                "allow_special_addresses": True,
            },
        },
    }


async def start_stack(
    relay_script: Path,
    workdir: Path,
    env: dict[str, str],
    processes: list[asyncio.subprocess.Process],
) -> tuple[tuple[int, int, int, int], str]:
    """Start the relay emulator (``relay_script --role relay``) and the control-plane simulator
    with the sample targets, appending both to ``processes``; returns the ports (relay, control
    plane, HTTP target, TCP target) and the control plane's signing key id. Their stderr goes to
    ``workdir/children.log``."""
    python = sys.executable
    errors = workdir / "children.log"
    relay = await start_child(
        "relay", [python, str(relay_script), "--role", "relay"], step=STEP, env=env, errors=errors
    )
    processes.append(relay.process)
    services = await start_child(
        "services",
        [python, str(SCRIPT), "--role", "services", "--workdir", str(workdir)],
        step=STEP,
        env=env,
        errors=errors,
    )
    processes.append(services.process)
    cp_port, http_port, tcp_port = (int(v) for v in services.values[:3])
    return (int(relay.values[0]), cp_port, http_port, tcp_port), services.values[3]


async def start_gateway(
    workdir: Path,
    ports: tuple[int, int, int, int],
    gateway_id: str,
    env: dict[str, str],
    *,
    event_loop: str | None = None,
    cwd: Path | None = None,
) -> tuple[asyncio.subprocess.Process, str]:
    """Write gateway.yaml in ``workdir``, register ``gateway_id`` and start ``gateway run`` (with
    ``--event-loop event_loop`` when given; else as configured, ``auto``) in ``cwd``; returns it
    once ``/readyz`` says ready, with the event loop ``/readyz`` names (``asyncio's default``
    for a commit that predates the setting).

    ``python -m gateway`` imports the package from its working directory first: a ``cwd``
    outside the repository lets ``PYTHONPATH`` choose another tree's package."""
    python = sys.executable
    config = workdir / "gateway.yaml"
    document = gateway_config(*ports, 0, gateway_id)
    config.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    registration = await asyncio.create_subprocess_exec(
        python, "-m", "gateway", "register", "-c", str(config), "--person", PERSON,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(registration.communicate(), 60)
    if registration.returncode != 0:
        raise RuntimeError("gateway register failed: " + output.decode(errors="replace"))
    run_args = ["run", "-c", str(config), "--shutdown-grace", "2"]
    if os.geteuid() == 0:
        run_args.append("--allow-root")
    if event_loop is not None:
        run_args += ["--event-loop", event_loop]

    # Imported here: this script's roles also run on a --baseline commit's package, which may
    # predate gateway.devkit.ports (only this parent process starts gateways).
    from gateway.devkit.ports import ADDRESS_IN_USE, PortTaken, start_on_free_ports_async

    async def launch(health: list[int]) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
        # The health port is chosen here, not by the kernel at bind time: a gateway of another
        # commit (--baseline) may predate publishing the port it got. One taken meanwhile makes
        # the gateway exit saying so, and it starts again on another (gateway.devkit.ports).
        document = gateway_config(*ports, health[0], gateway_id)
        config.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        log = workdir / "gateway.log"
        with log.open("wb") as log_file:
            gateway = await asyncio.create_subprocess_exec(
                python, "-m", "gateway", *run_args,
                env=env, cwd=cwd, stdout=log_file, stderr=log_file,
            )  # fmt: skip
        try:
            return gateway, await wait_ready(health[0], gateway)
        except BaseException:
            await stop_processes([gateway], 5.0)
            text = log.read_text(errors="replace")
            if ADDRESS_IN_USE in text:
                raise PortTaken("gateway run", text) from None
            raise

    gateway, ready = await start_on_free_ports_async(launch, name="gateway run")
    return gateway, str(ready.get("event_loop") or "asyncio's default")


async def wait_ready(health_port: int, process: asyncio.subprocess.Process) -> dict[str, Any]:
    """Poll ``/readyz`` until the gateway says it is ready (bounded); its answer."""
    url = f"http://127.0.0.1:{health_port}/readyz"
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as session, asyncio.timeout(STEP):
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"gateway exited with {process.returncode}")
            with contextlib.suppress(aiohttp.ClientError, OSError, ValueError):
                async with session.get(url) as response:
                    body = await response.json()
                    if body.get("ready"):
                        return dict(body)
            await asyncio.sleep(0.1)


async def start_bare_listeners(
    relay_port: int,
    target_url: str,
    env: dict[str, str],
    errors: Path,
    results: Results,
    baseline: Path | None = None,
) -> dict[str, asyncio.subprocess.Process]:
    """Start our listener alone and hyco-https (when Node can run it) on the bench emulator,
    both forwarding to ``target_url``, and with ``baseline`` (a ``gateway`` package of another
    commit) that commit's listener too; returns their processes by path name."""
    started: dict[str, asyncio.subprocess.Process] = {}
    listener = await start_child(
        "listener",
        [sys.executable, str(SCRIPT), "--role", "listener", "--relay-port", str(relay_port),
         "--target", target_url],
        step=STEP,
        env=env,
        errors=errors,
    )  # fmt: skip
    started["listener"] = listener.process
    if baseline is not None:
        base = await start_child(
            "baseline listener",
            [sys.executable, str(SCRIPT), "--role", "listener", "--relay-port", str(relay_port),
             "--target", target_url, "--hc", HC_BASE],
            step=STEP,
            env={**env, "PYTHONPATH": f"{baseline}{os.pathsep}{SCRIPT.parent}"},
            errors=errors,
        )  # fmt: skip
        started["listener-base"] = base.process
    node_version, why_not = prepare_node()
    if node_version is None:
        results.facts["hyco skipped"] = why_not
        return started
    try:
        hyco = await start_hyco(
            relay_port,
            target_url,
            rule="ListenRule",
            key=env["BENCH_LISTEN_KEY"],
            step=STEP,
            namespace=NAMESPACE,
            errors=errors,
        )
    except BaseException:
        await stop_processes(list(started.values()), 5.0)
        raise
    started["hyco"] = hyco.process
    results.facts["node"] = node_version
    return started


async def wait_serving(session: aiohttp.ClientSession, url: URL) -> None:
    """Retry until a plain GET through ``url`` is answered 200 (bounded): a bare listener
    counts as attached once the relay forwards to it."""
    async with asyncio.timeout(STEP):
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url) as response:
                    await response.read()
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)


# --- load --------------------------------------------------------------------------------


class Load:
    """EmpowerID's side: signed requests through the relay, or plain ones straight to the target."""

    def __init__(
        self,
        relay_port: int,
        http_port: int,
        signers: dict[str, Any],
        send_key: str,
        gateway_pid: int,
    ) -> None:
        from gateway.hybridconnection.sas import create_token, resource_uri

        relay = f"http://127.0.0.1:{relay_port}"
        self.urls = {
            "direct": URL(f"http://127.0.0.1:{http_port}{TARGET_PATH}", encoded=True),
            "gateway": URL(f"{relay}/{HC}/erp{TARGET_PATH}", encoded=True),
            "gateway-hmac": URL(f"{relay}/{HC}/erp{TARGET_PATH}", encoded=True),
            "gateway-rsa": URL(f"{relay}/{HC}/erp{TARGET_PATH}", encoded=True),
            "gateway-asyncio": URL(f"{relay}/{HC_ASYNCIO}/erp{TARGET_PATH}", encoded=True),
            "gateway-base": URL(f"{relay}/{HC_GATEWAY_BASE}/erp{TARGET_PATH}", encoded=True),
            "listener": URL(f"{relay}/{HC_OURS}{TARGET_PATH}", encoded=True),
            "listener-base": URL(f"{relay}/{HC_BASE}{TARGET_PATH}", encoded=True),
            "hyco": URL(f"{relay}/{HC_HYCO}{TARGET_PATH}", encoded=True),
        }
        # Each signed path's Hybrid Connection, for the signed path and the Send token.
        self.hcs = {
            "gateway": HC,
            "gateway-hmac": HC,
            "gateway-rsa": HC,
            "gateway-asyncio": HC_ASYNCIO,
            "gateway-base": HC_GATEWAY_BASE,
        }
        self.tokens = {
            hc: create_token(resource_uri(NAMESPACE, hc), "SendRule", send_key)
            for hc in (HC, HC_ASYNCIO, HC_GATEWAY_BASE)
        }
        # The process whose CPU each path measures (the others are added once started).
        self.pids: dict[str, int] = {
            "gateway": gateway_pid,
            "gateway-hmac": gateway_pid,
            "gateway-rsa": gateway_pid,
        }
        self.ws_base = f"ws://127.0.0.1:{relay_port}"
        self.signers = signers
        self.signer = signers["gateway"]
        self.send_token = self.tokens[HC]
        self.pid = gateway_pid
        self.peak_rss = 0.0
        self.session: aiohttp.ClientSession | None = None

    def sign(self, count: int, path: str = "gateway") -> list[list[tuple[str, str]]]:
        """``count`` header lists, each with a fresh signature (nonce) for the relayed GET,
        made with the key of ``path``."""
        signer, hc = self.signers[path], self.hcs[path]
        relay_path = f"/{hc}/erp{TARGET_PATH}"
        return [
            [
                *signer.sign(method="GET", authority=NAMESPACE, path=relay_path),
                (SAS_HEADER, self.tokens[hc]),
            ]
            for _ in range(count)
        ]

    async def run(
        self, path: str, in_flight: int, seconds: float, budget: int
    ) -> tuple[Sample, bytes]:
        """Keep ``in_flight`` requests outstanding for ``seconds`` (or ``budget`` requests)."""
        assert self.session is not None
        session = self.session
        signing = time.perf_counter()
        signed = self.sign(budget, path) if path in SIGNED else []
        # Let the machine settle after signing for as long as the signing took (at most
        # SETTLE s): right after ~10 s of RSA signing in this process, the gateway measured
        # ~10% more CPU per request than 3 s later (quick runs, 2026-12-08), which made the
        # RSA-PSS path look no cheaper than Ed25519 although its pipeline is (bench_chain.py
        # --alg rsa-pss-sha512 --base-alg ed25519: 0.85 at 32 in flight).
        await asyncio.sleep(min(time.perf_counter() - signing, SETTLE))
        url = self.urls[path]
        measured = self.pids.get(path)
        latencies: list[float] = []
        errors = 0
        last_body = b""
        deadline = time.perf_counter() + seconds
        issued = 0

        async def worker() -> None:
            nonlocal errors, issued, last_body
            while time.perf_counter() < deadline and issued < budget:
                headers = signed[issued] if signed else None
                issued += 1
                started = time.perf_counter()
                try:
                    async with session.get(url, headers=headers) as response:
                        body = await response.read()
                        ok = response.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    ok, body = False, b""
                if ok:
                    latencies.append(time.perf_counter() - started)
                    last_body = body
                else:
                    errors += 1

        async def watch_memory() -> None:
            while True:
                self.peak_rss = max(self.peak_rss, rss_mb(self.pid))
                await asyncio.sleep(0.2)

        cpu_before = cpu_seconds(measured) if measured is not None else 0.0
        watcher = asyncio.create_task(watch_memory())
        began = time.perf_counter()
        try:
            await asyncio.gather(*(worker() for _ in range(in_flight)))
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        elapsed = time.perf_counter() - began
        cpu = cpu_seconds(measured) - cpu_before if measured is not None else None
        return Sample(len(latencies), errors, elapsed, latencies, cpu), last_body

    async def open_streams(self, count: int, parallel: int) -> tuple[float, float, int]:
        """Open ``count`` relayed TCP streams to ``directory`` and hold them; returns (gateway RSS
        MiB with them open, seconds to open them all, streams that echoed correctly)."""
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=30)
        sockets: list[aiohttp.ClientWebSocketResponse] = []
        echoed = 0
        gate = asyncio.Semaphore(parallel)
        relay_path = f"/{HC}/directory"
        url = f"{self.ws_base}/$hc/{HC}/directory?sb-hc-action=connect"
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def one(index: int, headers: list[tuple[str, str]]) -> None:
                nonlocal echoed
                async with gate:
                    ws = await session.ws_connect(url, headers=headers)
                    sockets.append(ws)
                    payload = f"bind cn=user{index}".encode()
                    await ws.send_bytes(payload)
                    message = await ws.receive(timeout=10)
                    if message.data == b"echo:" + payload:
                        echoed += 1

            headers = [
                [
                    *self.signer.sign(method="GET", authority=NAMESPACE, path=relay_path),
                    (SAS_HEADER, self.send_token),
                ]
                for _ in range(count)
            ]
            began = time.perf_counter()
            try:
                async with asyncio.timeout(120):
                    await asyncio.gather(*(one(i, h) for i, h in enumerate(headers)))
                opened = time.perf_counter() - began
                await asyncio.sleep(1.0)  # let buffers settle before reading the RSS
                held = rss_mb(self.pid)
            finally:
                await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        return held, opened, echoed


# --- the run -----------------------------------------------------------------------------


@dataclass
class Results:
    """Samples by (path, in flight), in repetition order, plus memory and stream facts."""

    samples: dict[tuple[str, int], list[Sample]] = field(default_factory=dict)
    facts: dict[str, str] = field(default_factory=dict)
    rss: dict[str, float] = field(default_factory=dict)
    body_matches: bool = True

    def add(self, path: str, in_flight: int, sample: Sample) -> None:
        """Record one run."""
        self.samples.setdefault((path, in_flight), []).append(sample)

    def median(self, path: str, in_flight: int, what: str) -> float | None:
        """Median over repetitions of ``rate``, ``p50``, ``p99`` (ms) or ``cpu`` (us/request)."""
        runs = self.samples.get((path, in_flight), [])
        values: list[float] = []
        for run in runs:
            if not run.latencies:
                continue
            if what == "rate":
                values.append(run.rate)
            elif what == "p50":
                values.append(run.percentile(0.50) * 1e3)
            elif what == "p99":
                values.append(run.percentile(0.99) * 1e3)
            elif run.cpu_per_request is not None:
                values.append(run.cpu_per_request)
        return statistics.median(values) if values else None

    def paired(self, in_flight: int, what: str, path: str = "gateway") -> float | None:
        """Median over repetitions of ``path`` minus direct (``p50``/``p99`` ms, run by run) or
        ``path``/direct (``rate``)."""
        values: list[float] = []
        pairs = zip(
            self.samples.get(("direct", in_flight), []),
            self.samples.get((path, in_flight), []),
            strict=False,
        )
        for direct, relayed in pairs:
            if not direct.latencies or not relayed.latencies:
                continue
            if what == "rate":
                values.append(relayed.rate / direct.rate)
            else:
                fraction = 0.5 if what == "p50" else 0.99
                gap = relayed.percentile(fraction) - direct.percentile(fraction)
                values.append(gap * 1e3)
        return statistics.median(values) if values else None

    def cpu_ratio(self, in_flight: int, path: str, baseline: str = "hyco") -> float | None:
        """Median over repetitions of ``path``'s CPU per request over ``baseline``'s, each ratio
        from runs made in the same repetition (seconds apart, so the machine's load is alike)."""
        ratios: list[float] = []
        pairs = zip(
            self.samples.get((path, in_flight), []),
            self.samples.get((baseline, in_flight), []),
            strict=False,
        )
        for mine, theirs in pairs:
            if mine.cpu_per_request and theirs.cpu_per_request:
                ratios.append(mine.cpu_per_request / theirs.cpu_per_request)
        return statistics.median(ratios) if ratios else None

    def ratio_line(self, path: str = "gateway") -> str:
        """The one-line verdict: ``path``'s CPU per request over hyco-https's at 1 and 32."""
        at1, at32 = (_fmt(self.cpu_ratio(n, path), 2) for n in (1, 32))
        return f"ratio {path}/hyco-https cpu: {at1} at 1, {at32} at 32"

    def errors(self) -> int:
        """Failed requests over all runs."""
        return sum(run.errors for runs in self.samples.values() for run in runs)


async def profile(load: Load, output: Path, seconds: float) -> None:
    """Sample the gateway with py-spy (collapsed stacks) under 32 requests in flight."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    sampler = await asyncio.create_subprocess_exec(
        spy, "record", "--pid", str(load.pid), "--duration", str(int(seconds)),
        "--rate", "500", "--format", "raw", "--output", str(output),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    rate, _ = await load.run("gateway", 32, 0.5, 1000)
    await load.run("gateway", 32, seconds + 1.0, int(rate.rate * (seconds + 1.0) * 1.6) + 50)
    await asyncio.wait_for(sampler.wait(), seconds + 30)


async def benchmark(
    quick: bool,
    streams: int,
    keep: bool,
    profile_to: Path | None = None,
    on_asyncio: bool = False,
    baseline: Path | None = None,
) -> Results:
    """Start everything, register and run the gateway, measure, stop everything."""
    from gateway.devkit.signing import RequestSigner

    repetitions, seconds = (2, 1.0) if quick else (5, 3.0)
    results = Results()
    processes: list[asyncio.subprocess.Process] = []
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    try:
        listen_key = base64.b64encode(secrets.token_bytes(32)).decode()
        send_key = base64.b64encode(secrets.token_bytes(32)).decode()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "BENCH_LISTEN_KEY": listen_key,
            "BENCH_SEND_KEY": send_key,
        }
        env.pop("GATEWAY_CONFIG", None)
        try:
            errors = workdir / "children.log"
            ports, keyid = await start_stack(SCRIPT, workdir, env, processes)
            relay_port, _, http_port, _ = ports
            gateway_env = {**env, "GATEWAY_REGISTER_PASSWORD": PERSON_PASSWORD}
            gateway, loop = await start_gateway(workdir, ports, GATEWAY_ID, gateway_env)
            processes.append(gateway)
            await asyncio.sleep(1.0)
            results.rss["idle"] = rss_mb(gateway.pid)

            key = serialization.load_pem_private_key(
                (workdir / "signing-key.pem").read_bytes(), None
            )
            assert isinstance(key, ed25519.Ed25519PrivateKey)
            hmac_keyid, hmac_secret = (workdir / "hmac-key").read_text(encoding="utf-8").split()
            rsa_key = serialization.load_pem_private_key(
                (workdir / "rsa-signing-key.pem").read_bytes(), None
            )
            assert isinstance(rsa_key, rsa.RSAPrivateKey)
            rsa_keyid = (workdir / "rsa-keyid").read_text(encoding="utf-8")
            signers = {
                "gateway": RequestSigner(key, keyid=keyid, gateway_id=GATEWAY_ID),
                "gateway-hmac": RequestSigner(
                    base64.b64decode(hmac_secret), keyid=hmac_keyid, gateway_id=GATEWAY_ID
                ),
                "gateway-rsa": RequestSigner(rsa_key, keyid=rsa_keyid, gateway_id=GATEWAY_ID),
                "gateway-asyncio": RequestSigner(key, keyid=keyid, gateway_id=GATEWAY_ASYNCIO),
                "gateway-base": RequestSigner(key, keyid=keyid, gateway_id=GATEWAY_BASE),
            }
            load = Load(relay_port, http_port, signers, send_key, gateway.pid)
            results.facts["loop"] = results.facts["gateway loop"] = loop
            if on_asyncio:
                second = workdir / "asyncio"
                second.mkdir()
                shutil.copy(workdir / "empowerid-ca.pem", second / "empowerid-ca.pem")
                asyncio_gateway, second_loop = await start_gateway(
                    second, ports, GATEWAY_ASYNCIO, gateway_env, event_loop="asyncio"
                )
                processes.append(asyncio_gateway)
                load.pids["gateway-asyncio"] = asyncio_gateway.pid
                results.facts["loop"] += f" (gateway-asyncio: {second_loop})"
            if baseline is not None:
                # Started in its own directory, so that PYTHONPATH, not the working directory,
                # decides which tree's package `python -m gateway` imports.
                third = workdir / "baseline"
                third.mkdir()
                shutil.copy(workdir / "empowerid-ca.pem", third / "empowerid-ca.pem")
                base_env = {**gateway_env, "PYTHONPATH": str(baseline)}
                base_gateway, base_loop = await start_gateway(
                    third, ports, GATEWAY_BASE, base_env, cwd=third
                )
                results.facts["loop"] += f" (gateway-base: {base_loop})"
                processes.append(base_gateway)
                load.pids["gateway-base"] = base_gateway.pid
            target_url = f"http://127.0.0.1:{http_port}{TARGET_PATH}"
            bare = await start_bare_listeners(
                relay_port, target_url, env, errors, results, baseline
            )
            processes.extend(process for process in bare.values())
            load.pids.update({path: process.pid for path, process in bare.items()})
            paths = [path for path in PATHS if path in ("direct", *SIGNED) or path in bare]
            if not on_asyncio:
                paths.remove("gateway-asyncio")
            if baseline is None:
                paths.remove("gateway-base")
            connector = aiohttp.TCPConnector(limit=64)
            timeout = aiohttp.ClientTimeout(total=10)
            async with aiohttp.ClientSession(
                connector=connector, timeout=timeout, trust_env=False
            ) as session:
                load.session = session
                for path in bare:
                    await wait_serving(session, load.urls[path])
                # Warm-up: connections, the decision cache, and a first rate for the budget.
                rates: dict[tuple[str, int], float] = {}
                for in_flight in (1, 32):
                    for path in paths:
                        sample, _ = await load.run(path, in_flight, min(seconds, 1.0), 4000)
                        rates[(path, in_flight)] = sample.rate
                        if sample.errors:
                            raise RuntimeError(f"{path} warm-up failed ({sample.errors} errors)")
                for _ in range(repetitions):
                    for in_flight in (1, 32):
                        bodies = []
                        for path in paths:
                            budget = int(rates[(path, in_flight)] * seconds * 1.6) + 50
                            sample, body = await load.run(path, in_flight, seconds, budget)
                            results.add(path, in_flight, sample)
                            bodies.append(body)
                        # The sample target echoes the path it saw: both ways must look alike.
                        results.body_matches &= all(body == bodies[0] for body in bodies)
                results.rss["load"] = load.peak_rss
                if profile_to is not None:
                    await profile(load, profile_to, 15.0)
                await asyncio.sleep(1.0)
                results.rss["after load"] = rss_mb(gateway.pid)
                held, opened, echoed = await load.open_streams(streams, 32)
                results.rss[f"{streams} streams"] = held
                results.facts["streams"] = f"{echoed} of {streams} echoed; opened in {opened:.1f} s"
            results.facts["repetitions"] = f"{repetitions} x {seconds:g} s"
            results.facts["streams_count"] = str(streams)
            return results
        finally:
            await stop_processes(list(reversed(processes)), 10.0)
    finally:
        if keep:
            print(f"(kept {workdir}: gateway.yaml, gateway.log, decisions.jsonl, children.log)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


# --- report ------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _verdict(met: bool) -> str:
    return "**met**" if met else "**not met**"


def render(results: Results, command: str) -> str:
    """The Markdown report: figures, side-by-side gaps, memory, targets, method."""
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    streams = results.facts["streams_count"]
    paths = [path for path in PATHS if (path, 1) in results.samples]
    node = f", Node {results.facts['node']}" if "node" in results.facts else ""
    lines = [
        "# Pipeline benchmark: signed requests through the relay to `gateway run`",
        "",
        f"Command: `{command}`  ",
        f"Measured: {when}  ",
        f"Machine: {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}{node}; gateway event loop: {results.facts['loop']}",
        "",
        f"Medians over {results.facts['repetitions']} per path and concurrency; runs interleaved "
        f"({', '.join(paths)}), all on the same relay emulator and target."
        + (f" hyco-https skipped: {results.facts['hyco skipped']}." if "hyco" not in paths else ""),
        "",
        results.ratio_line(),
        "",
        results.ratio_line("gateway-hmac"),
        "",
        results.ratio_line("gateway-rsa"),
        "",
        *(
            line
            for path in ("gateway-asyncio", "gateway-base")
            if (path, 1) in results.samples
            for line in (results.ratio_line(path), "")
        ),
        "| path | in flight | req/s | p50 ms | p99 ms | CPU us/req of the process under test |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for in_flight in (1, 32):
        for path in paths:
            cpu = "-" if path == "direct" else _fmt(results.median(path, in_flight, "cpu"), 0)
            lines.append(
                f"| {path} | {in_flight} | {_fmt(results.median(path, in_flight, 'rate'), 0)} | "
                f"{_fmt(results.median(path, in_flight, 'p50'))} | "
                f"{_fmt(results.median(path, in_flight, 'p99'))} | {cpu} |"
            )
    lines += [
        "",
        "Side by side (median over repetitions of each relayed run against the direct run of "
        "the same repetition; CPU ratios against the hyco-https run of the same repetition):",
        "",
        "| path | in flight | added p50 ms | added p99 ms | req/s path / direct | "
        "CPU / hyco-https |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for in_flight in (1, 32):
        for path in paths[1:]:
            lines.append(
                f"| {path} | {in_flight} | {_fmt(results.paired(in_flight, 'p50', path))} | "
                f"{_fmt(results.paired(in_flight, 'p99', path))} | "
                f"{_fmt(results.paired(in_flight, 'rate', path))} | "
                f"{_fmt(results.cpu_ratio(in_flight, path))} |"
            )
    if ("gateway-asyncio", 1) in results.samples:
        lines += [
            "",
            f"The event loop in the same run: `gateway` on {results.facts['gateway loop']}, "
            "against `gateway-asyncio`, the same configuration on asyncio's own loop (`gateway run "
            "--event-loop asyncio`); CPU per request, gateway / gateway-asyncio: "
            + ", ".join(
                f"{_fmt(results.cpu_ratio(n, 'gateway', 'gateway-asyncio'))} at {n}"
                for n in (1, 32)
            )
            + ".",
        ]
    if "baseline" in results.facts:
        lines += [
            "",
            f"Before and after in the same run: `listener` is this tree's `RelayListener`, "
            f"`listener-base` that of {results.facts['baseline']} (CPU per request, "
            "listener / listener-base, median of the repetitions' ratios): "
            + ", ".join(
                f"{_fmt(results.cpu_ratio(n, 'listener', 'listener-base'))} at {n}" for n in (1, 32)
            )
            + f"; `gateway` is this tree's whole gateway, `gateway-base` that of "
            f"{results.facts['baseline']} with the same configuration (gateway / gateway-base): "
            + ", ".join(
                f"{_fmt(results.cpu_ratio(n, 'gateway', 'gateway-base'))} at {n}" for n in (1, 32)
            )
            + ".",
        ]
    lines += ["", "Gateway memory (VmRSS):", "", "| state | MiB |", "| --- | ---: |"]
    for state, value in results.rss.items():
        lines.append(f"| {state} | {value:.1f} |")
    lines += ["", f"Streams: {results.facts['streams']}.", "", "Targets:", ""]
    per_request = [results.median("gateway", n, "cpu") for n in (1, 32)]
    best = min((value for value in per_request if value is not None), default=None)
    rate32 = results.median("gateway", 32, "rate")
    if best is not None:
        lines.append(
            f"- Gateway CPU <= 300 us per relayed request (warm policy cache): "
            f"{_verdict(best <= 300)} ({_fmt(per_request[0], 0)} us at 1 in flight, "
            f"{_fmt(per_request[1], 0)} us "
            f"at 32, i.e. {1e6 / best:,.0f} req/s per core of gateway CPU; reached "
            f"{_fmt(rate32, 0)} req/s at 32 in flight on this machine)."
        )
    ratio32 = results.cpu_ratio(32, "gateway")
    if ratio32 is not None:
        lines.append(
            f"- Full pipeline CPU per request <= 2.0 x hyco-https's at 32 in flight: "
            f"{_verdict(ratio32 <= 2.0)} ({ratio32:.2f}; at 1 in flight "
            f"{_fmt(results.cpu_ratio(1, 'gateway'))})."
        )
    added50, added99 = results.paired(1, "p50"), results.paired(1, "p99")
    if added50 is not None and added99 is not None:
        lines.append(
            f"- Added latency at 1 in flight, p50 <= 1 ms: {_verdict(added50 <= 1.0)} "
            f"({added50:.2f} ms); p99 <= 5 ms: {_verdict(added99 <= 5.0)} ({added99:.2f} ms). "
            "Both include the relay emulator's own hop."
        )
    hyco50 = results.paired(1, "p50", "hyco")
    if added50 is not None and hyco50 is not None:
        lines.append(
            f"- Added p50 at 1 in flight <= hyco-https's added p50 + 1 ms: "
            f"{_verdict(added50 <= hyco50 + 1.0)} (gateway {added50:.2f} ms, hyco-https "
            f"{hyco50:.2f} ms over a direct call)."
        )
    idle, held = results.rss.get("idle"), results.rss.get(f"{streams} streams")
    if idle is not None and held is not None:
        lines.append(
            f"- RSS <= 90 MB idle: {_verdict(idle * 1.048576 <= 90)} ({idle * 1.048576:.0f} MB); "
            f"<= 150 MB with {streams} open streams: {_verdict(held * 1.048576 <= 150)} "
            f"({held * 1.048576:.0f} MB)."
        )
    lines += [
        "",
        "Method: relay emulator, control-plane simulator + sample targets, the gateway and the",
        "load generator each run in their own process on 127.0.0.1; the gateway is registered",
        "with `gateway register` and started with `gateway run` as `gateway demo` does (two",
        "control channels, embedded Rego policy with its decision cache, decision log to a",
        "file, JSON logs at info). Every relayed request carries a fresh RFC 9421 signature",
        "(nonce, created/expires) made before the timed run, which then waits as long as the",
        "signing took (at most 3 s): Ed25519 with the control plane's",
        "key on `gateway`, hmac-sha256 with the gateway's own key (`signatures.hmac_sha256`,",
        "fetched by the gateway over mTLS) on `gateway-hmac`, rsa-pss-sha512 with a 2048-bit",
        "RSA key the control plane publishes beside its Ed25519 key on `gateway-rsa`; the same",
        "gateway process serves all three, so they differ only in the signature check. Gateway",
        "CPU = user +",
        "system time of the `gateway run` process from `/proc/PID/stat` across a run divided",
        f"by the requests completed (clock tick {1000 / CLOCK_TICKS:.0f} ms). On a 2-CPU machine",
        "the relay emulator, target, load generator and gateway compete for the same cores, so",
        "latencies include scheduling, and the relayed path pays the emulator's own hop (HTTP",
        "in, WebSocket to the gateway and back) besides the gateway's work; `direct` at 32 in",
        "flight is bounded by the Python load generator. MB = 10^6 bytes, MiB = 2^20 bytes.",
        "`listener` (our `RelayListener` alone) and `hyco` (hyco-https) forward each relayed",
        "request to the same target URL over keep-alive HTTP/1.1 with no check at all; their",
        "CPU is read the same way from their own processes. This machine's speed varies by more",
        "than 2x from hour to hour and other work shares its two cores, so absolute figures are",
        "noisy: only the ratios, each taken between runs of the same repetition, compare.",
        f"Failed requests over all runs: {results.errors()}; relayed and direct bodies "
        f"{'identical' if results.body_matches else 'DIFFER'}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or one of its child roles) and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short runs (under 30 s in total)")
    parser.add_argument(
        "--streams",
        type=int,
        help="relayed TCP streams held open at once (default 1000; 300 with --quick)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (gateway log, decisions)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="also sample the gateway with py-spy under load; collapsed stacks to FILE",
    )
    parser.add_argument(
        "--asyncio",
        action="store_true",
        help="also run a second gateway on asyncio's own event loop (path gateway-asyncio), "
        "beside the first on the loop `gateway run` picks (uvloop where installed)",
    )
    parser.add_argument(
        "--baseline",
        metavar="GIT_REF",
        help="also run the bare listener and a whole gateway of this commit (paths listener-base "
        "and gateway-base), in the same run",
    )
    parser.add_argument("--role", choices=("relay", "services", "listener"), help=argparse.SUPPRESS)
    parser.add_argument("--hc", default=HC_OURS, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--relay-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "listener":
        asyncio.run(
            run_listener(
                args.relay_port,
                args.target,
                namespace=NAMESPACE,
                hc_path=args.hc,
                rule="ListenRule",
                key=os.environ["BENCH_LISTEN_KEY"],
            )
        )
        return 0
    if args.role == "relay":
        asyncio.run(run_relay())
        return 0
    if args.role == "services":
        asyncio.run(run_services(args.workdir))
        return 0
    command = ".venv/bin/python benchmarks/bench_pipeline.py" + (" --quick" if args.quick else "")
    command += " --asyncio" if args.asyncio else ""
    streams = args.streams or (300 if args.quick else 1000)
    if args.streams is not None:
        command += f" --streams {args.streams}"
    if args.baseline:
        command += f" --baseline {args.baseline}"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as scratch:
        baseline = None
        if args.baseline:
            results_commit = extract_baseline(args.baseline, Path(scratch))
            baseline = Path(scratch)
        results = asyncio.run(
            benchmark(args.quick, streams, args.keep, args.profile, args.asyncio, baseline)
        )
        if baseline is not None:
            results.facts["baseline"] = results_commit
    report = render(results, command)
    print(report)
    if args.quick:
        print(f"(quick run, {time.monotonic() - started:.0f} s; the report file is left as it is)")
    else:
        write_report(REPORT, report)
        print(f"(wrote {REPORT.relative_to(ROOT)} in {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
