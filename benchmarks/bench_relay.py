"""Relayed small GETs: our listener against Microsoft's hyco-https, and against no relay at all.

Every path serves the same request (``GET``, ~100-byte JSON answer) from the same loopback aiohttp
target, each component in its own process:

* ``direct``: the load generator calls the target itself (the baseline);
* ``ours``: relay emulator -> :class:`gateway.relay.listener.RelayListener` -> target;
* ``hyco``: relay emulator -> hyco-https 1.4.5 on Node -> target.

Both listeners do the same work: they forward the request to the target over a keep-alive
HTTP/1.1 connection, read the answer and relay status, ``Content-Type`` and body back over the
control channel (protocol notes section 5.3). Both use one control channel on the same emulator
(two Hybrid Connections, anonymous senders so no token is checked per request). Scenarios run
interleaved, 1 and 32 requests in flight, for several repetitions; the report gives medians and
ratios measured side by side. A listener's CPU time is read from ``/proc/PID/stat`` (user +
system, all threads) before and after each run and divided by the requests it completed.

Run: ``.venv/bin/python benchmarks/bench_relay.py [--quick]`` (loopback only; the full run takes
about 1.5 minutes, ``--quick`` about 15 seconds). The full run writes the printed report to
``benchmarks/relay-report.md``; ``--quick`` only prints.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from harness import (
    CLOCK_TICKS,
    Child,
    Sample,
    cpu_seconds,
    start_child,
    stop_processes,
    until_terminated,
    write_report,
)

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "tests" / "interop" / "node"
SCRIPT = Path(__file__).resolve()
REPORT = SCRIPT.parent / "relay-report.md"
HC_OURS, HC_HYCO, HC_BASE = "bench-ours", "bench-hyco", "bench-base"
RULE, KEY = "bench", "bench-key-0123456789abcdefghijklmnopqrstu"
BODY = b'{"id":17,"name":"order","status":"shipped","lines":3,"pad":"' + b"x" * 34 + b'"}\n'
STEP = 20.0  # bound for one start-up wait (Node is the slowest)

# hyco-https proxying to the target over a keep-alive agent; same work as our handler.
NODE_LISTENER = r"""
'use strict';
const https = require('hyco-https');
const http = require('http');
const uri = process.env.RELAY_LISTEN_URI;
// The token names the namespace (TOKEN_URI) when the emulator checks it against one.
const tokenUri = process.env.TOKEN_URI;
const target = new URL(process.env.TARGET_URL);
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
const server = https.createRelayedServer(
  { server: uri, token: () => https.createRelayToken(tokenUri, process.env.SAS_KEY_NAME,
                                                     process.env.SAS_KEY) },
  (req, res) => {
    req.resume();
    const upstream = http.get(
      { host: target.hostname, port: target.port, path: target.pathname, agent },
      (up) => {
        const chunks = [];
        up.on('data', (c) => chunks.push(c));
        up.on('end', () => {
          res.statusCode = up.statusCode;
          res.setHeader('Content-Type', up.headers['content-type'] || 'application/octet-stream');
          res.end(Buffer.concat(chunks));
        });
      });
    upstream.on('error', () => { res.statusCode = 502; res.end('upstream error'); });
  });
server.on('listening', () => console.log('ready'));
server.on('error', (err) => console.error('relay error:', err && err.message));
server.listen();
"""


# --- child processes ---------------------------------------------------------------------


async def run_target() -> None:
    """The loopback HTTP target: a ~100-byte JSON answer to every GET."""

    async def item(_: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type="application/json")

    app = web.Application()
    app.router.add_get("/item", item)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"ready {runner.addresses[0][1]}", flush=True)
    try:
        await until_terminated()
    finally:
        await runner.cleanup()


async def run_emulator() -> None:
    """The devkit relay emulator with one Hybrid Connection per listener."""
    from gateway.devkit.relay_emulator import HybridConnectionSpec, RelayEmulator, SasRule

    specs = [
        HybridConnectionSpec(hc, requires_client_authorization=False)
        for hc in (HC_OURS, HC_HYCO, HC_BASE)
    ]
    async with RelayEmulator(specs, [SasRule(RULE, KEY)]) as relay:
        print(f"ready {relay.port}", flush=True)
        await until_terminated()


async def run_listener(
    relay_port: int,
    target_url: str,
    *,
    namespace: str = "127.0.0.1",
    hc_path: str = HC_OURS,
    rule: str = RULE,
    key: str = KEY,
    forward_with: str = "gateway",
) -> None:
    """Our listener, forwarding every relayed request to the target (tokens for ``namespace``)."""
    from gateway.hybridconnection.sas import create_token, parse_token, resource_uri
    from gateway.relay.handlers import (
        AcceptInfo,
        RejectStream,
        StreamDecision,
        StreamSocket,
    )
    from gateway.relay.listener import RelayListener
    from gateway.relay.settings import ListenerSettings

    class NoStreams:
        async def decide(self, info: AcceptInfo) -> StreamDecision:
            return RejectStream(404, "No streams here")

        async def serve(self, info: AcceptInfo, socket: StreamSocket) -> None:
            await socket.close()

    async def tokens() -> tuple[str, float]:
        token = create_token(resource_uri(namespace, hc_path), rule, key)
        return token, float(parse_token(token).expiry)

    forward, close = _forwarder(target_url, forward_with)
    try:
        settings = ListenerSettings(
            endpoint=f"ws://127.0.0.1:{relay_port}",
            hc_path=hc_path,
            connections=1,
            allow_insecure_dev_endpoint=True,
        )
        listener = RelayListener(
            settings, token_provider=tokens, request_handler=forward, stream_handler=NoStreams()
        )
        async with listener:
            # The parent retries a request until one succeeds, so "ready" means "started".
            print("ready", flush=True)
            await until_terminated()
    finally:
        await close()


def _forwarder(
    target_url: str, forward_with: str
) -> tuple[Callable[[Any], Awaitable[Any]], Callable[[], Awaitable[None]]]:
    """The listener's handler: forward to the target with the gateway's own forward
    (``gateway``: :class:`gateway.forward.upstream.Upstream`, as ``gateway run`` does) or with
    aiohttp's ``ClientSession`` (``session``: what this benchmark used before)."""
    from gateway.relay.handlers import RelayedRequest, RelayedResponse

    if forward_with == "session":
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))

        async def via_session(request: RelayedRequest) -> RelayedResponse:
            async with session.get(target_url) as answer:
                body = await answer.read()
                kind = answer.headers.get("Content-Type", "application/octet-stream")
                return RelayedResponse(
                    answer.status, answer.reason or "", (("Content-Type", kind),), body
                )

        return via_session, session.close

    from bench_pipeline import gateway_config

    from gateway.config.model import GatewayConfig
    from gateway.forward.upstream import Upstream, drain

    url = urlsplit(target_url)
    document = gateway_config(1, 2, url.port or 80, 4, 5)
    upstream = Upstream(GatewayConfig.model_validate(document))

    async def via_upstream(request: RelayedRequest) -> RelayedResponse:
        answer = await upstream.send(
            "erp", method="GET", path=url.path, query=None, headers=[], body=b""
        )
        body = await drain(answer)
        kind = next(
            (value for name, value in answer.headers if name.lower() == "content-type"),
            "application/octet-stream",
        )
        return RelayedResponse(answer.status, answer.reason, (("Content-Type", kind),), body)

    return via_upstream, upstream.close


# --- orchestration -----------------------------------------------------------------------


async def start_hyco(
    relay_port: int,
    target_url: str,
    *,
    rule: str,
    key: str,
    step: float,
    namespace: str | None = None,
    errors: Path | None = None,
) -> Child:
    """hyco-https forwarding to ``target_url`` from ``HC_HYCO`` on the emulator at
    ``relay_port``; its tokens name ``namespace`` when given (the emulator checks them)."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed")
    listen_uri = f"ws://127.0.0.1:{relay_port}/$hc/{HC_HYCO}?sb-hc-action=listen"
    env = {
        **os.environ,
        "RELAY_LISTEN_URI": listen_uri,
        "TOKEN_URI": f"http://{namespace}/{HC_HYCO}" if namespace else listen_uri,
        "SAS_KEY_NAME": rule,
        "SAS_KEY": key,
        "TARGET_URL": target_url,
    }
    return await start_child(
        "hyco-https", [node, "-e", NODE_LISTENER], step=step, cwd=str(NODE_DIR), env=env,
        errors=errors,
    )  # fmt: skip


def prepare_node() -> tuple[str | None, str]:
    """``(node version, "")`` when the hyco-https path can run, else ``(None, reason)``.

    Installs the pinned packages of ``tests/interop/node`` with ``npm ci`` when they are missing.
    """
    node = shutil.which("node")
    if node is None:
        return None, "node is not installed"
    if not (NODE_DIR / "node_modules" / "hyco-https").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            return None, "npm is not installed"
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            return None, "npm ci failed in tests/interop/node"
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=False, timeout=10
    ).stdout.strip()
    return version, ""


async def load(
    session: aiohttp.ClientSession, url: str, in_flight: int, seconds: float, pid: int | None
) -> Sample:
    """Keep ``in_flight`` GETs outstanding against ``url`` for ``seconds``."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                async with session.get(url) as response:
                    body = await response.read()
                    ok = response.status == 200 and body == BODY
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1

    cpu_before = None if pid is None else cpu_seconds(pid)
    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - began
    cpu = None if pid is None or cpu_before is None else cpu_seconds(pid) - cpu_before
    return Sample(len(latencies), errors, elapsed, latencies, cpu)


async def wait_serving(session: aiohttp.ClientSession, url: str) -> None:
    """Retry until a request through ``url`` succeeds (the listener is attached), bounded."""
    async with asyncio.timeout(STEP):
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url) as response:
                    if response.status == 200 and await response.read() == BODY:
                        return
            await asyncio.sleep(0.05)


@dataclass
class Results:
    """Samples by (path, in flight), in repetition order."""

    samples: dict[tuple[str, int], list[Sample]] = field(default_factory=dict)

    def add(self, path: str, in_flight: int, sample: Sample) -> None:
        """Record one run."""
        self.samples.setdefault((path, in_flight), []).append(sample)

    def median(self, path: str, in_flight: int, what: str) -> float | None:
        """Median over repetitions of ``rate``, ``p50``, ``p99`` (ms) or ``cpu`` (us/request)."""
        runs = self.samples.get((path, in_flight))
        if not runs:
            return None
        values: list[float] = []
        for run in runs:
            if what == "rate":
                values.append(run.rate)
            elif what == "p50":
                values.append(run.percentile(0.50) * 1e3)
            elif what == "p99":
                values.append(run.percentile(0.99) * 1e3)
            elif run.cpu_per_request is not None:
                values.append(run.cpu_per_request)
        return statistics.median(values) if values else None

    def paired_ratio(
        self, in_flight: int, what: str, other: str = "hyco", path: str = "ours"
    ) -> float | None:
        """Median over repetitions of path/other, each ratio from runs made back to back."""
        ours = self.samples.get((path, in_flight), [])
        hyco = self.samples.get((other, in_flight), [])
        ratios = []
        for mine, theirs in zip(ours, hyco, strict=False):
            if what == "cpu" and mine.cpu_per_request and theirs.cpu_per_request:
                ratios.append(mine.cpu_per_request / theirs.cpu_per_request)
            elif what == "rate":
                ratios.append(mine.rate / theirs.rate)
        return statistics.median(ratios) if ratios else None

    def errors(self) -> int:
        """Failed requests over all runs."""
        return sum(run.errors for runs in self.samples.values() for run in runs)


def extract_baseline(ref: str, into: Path) -> str:
    """Write the ``gateway`` package as of git ``ref`` under ``into``; return the commit."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", ref],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()  # fmt: skip
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "gateway"],
        cwd=ROOT, capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True, timeout=60)
    return commit


async def profile(
    session: aiohttp.ClientSession, url: str, pid: int, output: Path, in_flight: int
) -> None:
    """Sample our listener with py-spy (collapsed stacks, native frames) under load."""
    seconds = 15
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    sampler = await asyncio.create_subprocess_exec(
        spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "500",
        "--native", "--format", "raw", "--output", str(output),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await load(session, url, in_flight, seconds + 1.0, None)
    await asyncio.wait_for(sampler.wait(), seconds + 30)


async def benchmark(
    quick: bool,
    node_version: str | None,
    why_not: str,
    baseline: Path | None = None,
    profile_to: Path | None = None,
    profile_in_flight: int = 32,
    base_forward: str = "gateway",
    base_loop: str = "asyncio",
) -> tuple[Results, dict[str, str]]:
    """Start everything, run the interleaved scenarios, stop everything."""
    repetitions, seconds = (2, 0.8) if quick else (5, 2.5)
    python = sys.executable
    script = str(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    children: list[Child] = []
    facts: dict[str, str] = {}
    try:
        target = await start_child(
            "target", [python, script, "--role", "target"], step=STEP, env=env
        )
        children.append(target)
        relay = await start_child(
            "emulator", [python, script, "--role", "emulator"], step=STEP, env=env
        )
        children.append(relay)
        target_url = f"http://127.0.0.1:{target.values[0]}/item"
        ours = await start_child(
            "listener",
            [
                python,
                script,
                "--role",
                "listener",
                "--relay-port",
                relay.values[0],
                "--target",
                target_url,
            ],
            step=STEP,
            env=env,
        )
        children.append(ours)
        urls = {
            "direct": target_url,
            "ours": f"http://127.0.0.1:{relay.values[0]}/{HC_OURS}/item",
            "hyco": f"http://127.0.0.1:{relay.values[0]}/{HC_HYCO}/item",
        }
        pids: dict[str, int | None] = {"direct": None, "ours": ours.process.pid}
        if baseline is not None:
            # The same listener role, importing the gateway package of the baseline commit.
            base = await start_child(
                "baseline listener",
                [python, script, "--role", "listener", "--relay-port", relay.values[0],
                 "--target", target_url, "--hc", HC_BASE, "--forward", base_forward,
                 "--loop", base_loop],
                step=STEP,
                env={**os.environ, "PYTHONPATH": f"{baseline}{os.pathsep}{ROOT / 'benchmarks'}"},
            )  # fmt: skip
            children.append(base)
            urls["base"] = f"http://127.0.0.1:{relay.values[0]}/{HC_BASE}/item"
            pids["base"] = base.process.pid
        if node_version is not None:
            hyco = await start_hyco(int(relay.values[0]), target_url, rule=RULE, key=KEY, step=STEP)
            children.append(hyco)
            pids["hyco"] = hyco.process.pid
            facts["node"] = node_version
        else:
            del urls["hyco"]
            facts["hyco skipped"] = why_not
        results = Results()
        timeout = aiohttp.ClientTimeout(total=10)
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            for url in urls.values():
                await wait_serving(session, url)
            for url in urls.values():  # warm-up: connections, caches, JIT
                await load(session, url, 32, min(seconds, 1.0), None)
            if profile_to is not None:
                await profile(
                    session, urls["ours"], ours.process.pid, profile_to, profile_in_flight
                )
                return Results(), facts
            for _ in range(repetitions):
                for in_flight in (1, 32):
                    for path, url in urls.items():
                        sample = await load(session, url, in_flight, seconds, pids[path])
                        results.add(path, in_flight, sample)
        facts["repetitions"] = f"{repetitions} x {seconds} s per path and concurrency"
        return results, facts
    finally:
        await stop_processes([child.process for child in children], 5.0)


# --- the frame layer alone, in this process ------------------------------------------------


def frames_benchmark(rounds: int = 20_000, repetitions: int = 7) -> str:
    """CPU per relayed request of the WebSocket frame layer alone: reading the request's text
    frame and writing the response's two frames, with the core's codec and with ``websockets``'
    sans-IO protocol (what the listener used before), best of ``repetitions`` x ``rounds``."""
    from websockets.client import ClientProtocol
    from websockets.protocol import State
    from websockets.uri import parse_uri

    from gateway.hybridconnection.connection import RelayedResponse, prepare_response
    from gateway.hybridconnection.messages import RemoteEndpoint, RequestCommand, command_bytes
    from gateway.hybridconnection.wsframes import ClientFrames

    address = "wss://ns.servicebus.windows.net/$hc/bench-ours?sb-hc-action=request&sb-hc-id=r-1"
    request = command_bytes(
        RequestCommand(
            id="r-1",
            request_target=f"/{HC_OURS}/item",
            method="GET",
            request_headers={"Accept": "*/*", "User-Agent": "Python/3.11 aiohttp/3.14"},
            body=False,
            address=address,
            remote_endpoint=RemoteEndpoint("10.0.0.7", 50123),
        )
    )
    assert 126 <= len(request) < 65536
    wire = bytes((0x81, 126)) + len(request).to_bytes(2, "big") + request
    answer = RelayedResponse(200, "OK", (("Content-Type", "application/json"),), BODY)
    out = prepare_response("r-1", answer).frames()
    codec = ClientFrames(1 << 20)
    protocol = ClientProtocol(parse_uri("wss://ns/"), state=State.OPEN, max_size=1 << 20)

    def ours_read() -> None:
        codec.receive_data(wire)
        codec.events_received()

    def ours_write() -> None:
        for frame in out:
            codec.encode_data(frame.opcode, frame.payload, frame.fin)

    def theirs_read() -> None:
        protocol.receive_data(wire)
        protocol.events_received()

    def theirs_write() -> None:
        protocol.send_text(out[0].payload)
        protocol.send_binary(out[1].payload)
        protocol.data_to_send()

    def best(step: Callable[[], None]) -> float:
        times = []
        for _ in range(repetitions):
            began = time.process_time()
            for _ in range(rounds):
                step()
            times.append((time.process_time() - began) / rounds * 1e6)
        return min(times)

    rows = [
        ("read the request's text frame", best(ours_read), best(theirs_read)),
        ("write the response (text + binary frame)", best(ours_write), best(theirs_write)),
    ]
    lines = [
        f"Frame layer alone, one process, best of {repetitions} x {rounds:,} (us per request):",
        "",
        "| step | core codec | websockets | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {name} | {mine:.2f} | {ref:.2f} | {mine / ref:.2f} |" for name, mine, ref in rows]
    return "\n".join(lines)


# --- report ------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render(results: Results, facts: dict[str, str], command: str) -> str:
    """The Markdown report: figures table, side-by-side ratios, targets, method."""
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Relay benchmark: small relayed GETs",
        "",
        f"Command: `{command}`  ",
        f"Measured: {when}  ",
        f"Machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}"
        + (f", Node {facts['node']}" if "node" in facts else ""),
        "",
        f"Medians over {facts['repetitions']}; runs interleaved (direct, ours, "
        + ("base, " if "baseline" in facts else "")
        + "hyco).",
        "",
        "| path | in flight | req/s | p50 ms | p99 ms | p50 added vs direct, ms | "
        "listener CPU us/req |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    paths = [path for path in ("direct", "ours", "base", "hyco") if (path, 1) in results.samples]
    for in_flight in (1, 32):
        direct_p50 = results.median("direct", in_flight, "p50")
        for path in paths:
            p50 = results.median(path, in_flight, "p50")
            added = (
                None if path == "direct" or p50 is None or direct_p50 is None else p50 - direct_p50
            )
            lines.append(
                f"| {path} | {in_flight} | {_fmt(results.median(path, in_flight, 'rate'), 0)} | "
                f"{_fmt(p50)} | {_fmt(results.median(path, in_flight, 'p99'))} | "
                f"{'-' if path == 'direct' else _fmt(added)} | "
                f"{'-' if path == 'direct' else _fmt(results.median(path, in_flight, 'cpu'), 0)} |"
            )
    lines += ["", "Side by side (median of per-repetition ratios, ours / hyco-https):", ""]
    lines += ["| in flight | CPU per request | req/s |", "| ---: | ---: | ---: |"]
    for in_flight in (1, 32):
        lines.append(
            f"| {in_flight} | {_fmt(results.paired_ratio(in_flight, 'cpu'))} | "
            f"{_fmt(results.paired_ratio(in_flight, 'rate'))} |"
        )
    if "baseline" in facts:
        lines += [
            "",
            f"Before and after in the same run (ours / base = this tree / {facts['baseline']}):",
            "",
            "| in flight | ours/base CPU per request | ours/base req/s "
            "| base/hyco CPU per request |",
            "| ---: | ---: | ---: | ---: |",
        ]
        for in_flight in (1, 32):
            lines.append(
                f"| {in_flight} | {_fmt(results.paired_ratio(in_flight, 'cpu', 'base'))} | "
                f"{_fmt(results.paired_ratio(in_flight, 'rate', 'base'))} | "
                f"{_fmt(results.paired_ratio(in_flight, 'cpu', 'hyco', 'base'))} |"
            )
    lines += ["", "Targets:", ""]
    cpu_ratios = [results.paired_ratio(n, "cpu") for n in (1, 32)]
    if all(ratio is not None for ratio in cpu_ratios):
        met = all(ratio is not None and ratio <= 1.0 for ratio in cpu_ratios)
        shown = ", ".join(_fmt(ratio) for ratio in cpu_ratios)
        lines.append(
            f"- Listener CPU per request <= hyco-https: **{'met' if met else 'not met'}** "
            f"(ours/hyco = {shown} at 1 / 32 in flight)."
        )
    else:
        lines.append(
            f"- Listener CPU per request <= hyco-https: not measured ({facts.get('hyco skipped')})."
        )
    ours_p50, direct_p50 = results.median("ours", 1, "p50"), results.median("direct", 1, "p50")
    hyco_p50 = results.median("hyco", 1, "p50")
    if ours_p50 is not None and direct_p50 is not None:
        added = ours_p50 - direct_p50
        lines.append(
            "- p50 added latency <= 1 ms at 1 in flight: "
            f"**{'met' if added <= 1.0 else 'not met'}** "
            f"({added:.2f} ms over a direct call; this includes the emulator's own hop"
            + (f"; ours - hyco = {ours_p50 - hyco_p50:+.2f} ms)." if hyco_p50 is not None else ").")
        )
    lines += [
        "",
        "Method: every component runs in its own process on 127.0.0.1 (target: aiohttp; relay:",
        "the devkit emulator; listeners: `RelayListener` and hyco-https 1.4.5, both proxying each",
        "request to the target over keep-alive HTTP/1.1 and answering on the control channel;",
        "`RelayListener` forwards with the gateway's own forward (`gateway.forward.upstream`),",
        "hyco-https with Node's `http` agent;",
        "load: an aiohttp client in the parent process). Listener CPU = user + system time of the",
        "listener process from `/proc/PID/stat` across a run, divided by the requests it",
        f"completed (clock tick {1000 / CLOCK_TICKS:.0f} ms). On a 2-CPU machine the emulator,",
        "target, load generator and listener compete for the same cores, so latencies include",
        "scheduling; the relay paths also pay the emulator's own hop (HTTP in, WebSocket out and",
        "back), identical for both listeners. `direct` at 32 in flight is bounded by the Python",
        "load generator.",
        f"Failed requests over all runs: {results.errors()}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or one of its child roles) and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short runs (under 30 s in total)")
    parser.add_argument(
        "--role", choices=("target", "emulator", "listener"), help=argparse.SUPPRESS
    )
    parser.add_argument("--relay-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--hc", default=HC_OURS, help=argparse.SUPPRESS)
    parser.add_argument(
        "--forward", choices=("gateway", "session"), default="gateway", help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--base-forward",
        choices=("gateway", "session"),
        default="gateway",
        help="how the --baseline listener forwards: the gateway's own forward (default) or "
        "aiohttp's ClientSession (to measure the forward itself, e.g. with --baseline HEAD)",
    )
    parser.add_argument(
        "--base-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the --baseline listener's event loop (uvloop: what uvloop changes, side by side, "
        "e.g. with --baseline HEAD)",
    )
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--baseline",
        metavar="GIT_REF",
        help="also run the listener of this commit beside ours, in the same run (before/after)",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        type=Path,
        help="only sample our listener with py-spy for 15 s (collapsed stacks to FILE)",
    )
    parser.add_argument(
        "--frames",
        action="store_true",
        help="only measure the frame layer alone in this process (core codec vs websockets)",
    )
    parser.add_argument(
        "--profile-in-flight", type=int, default=32, help="requests in flight while profiling"
    )
    args = parser.parse_args(argv)
    if args.role == "target":
        asyncio.run(run_target())
        return 0
    if args.role == "emulator":
        asyncio.run(run_emulator())
        return 0
    if args.role == "listener":
        listener = run_listener(
            args.relay_port, args.target, hc_path=args.hc, forward_with=args.forward
        )
        if args.loop == "uvloop":
            import uvloop  # an optional extra: only this role needs it

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(listener)
        else:
            asyncio.run(listener)
        return 0
    if args.frames:
        print(frames_benchmark())
        return 0
    command = ".venv/bin/python benchmarks/bench_relay.py" + (" --quick" if args.quick else "")
    if args.baseline:
        command += f" --baseline {args.baseline}"
        if args.base_forward != "gateway":
            command += f" --base-forward {args.base_forward}"
        if args.base_loop != "asyncio":
            command += f" --base-loop {args.base_loop}"
    started = time.monotonic()
    node_version, why_not = prepare_node()
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as scratch:
        baseline = None
        commit = ""
        if args.baseline:
            commit = extract_baseline(args.baseline, Path(scratch))
            baseline = Path(scratch)
        results, facts = asyncio.run(
            benchmark(
                args.quick,
                node_version,
                why_not,
                baseline,
                args.profile,
                args.profile_in_flight,
                args.base_forward,
                args.base_loop,
            )
        )
        if args.profile is not None:
            print(f"(profile of our listener written to {args.profile})")
            return 0
        if commit:
            facts["baseline"] = (
                commit
                + (
                    ""
                    if args.base_forward == "gateway"
                    else f", forwarding with {args.base_forward}"
                )
                + ("" if args.base_loop == "asyncio" else f", on {args.base_loop}'s event loop")
            )
    report = render(results, facts, command)
    print(report)
    if args.quick:
        print(f"(quick run, {time.monotonic() - started:.0f} s; the report file is left as it is)")
    else:
        write_report(REPORT, report)
        print(f"(wrote {REPORT.relative_to(ROOT)} in {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
