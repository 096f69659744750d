"""Policy decision cost: embedded engine cold (cache miss) and warm (cache hit) with 10, 100 and
1,000 targets, cold denies, where one cold decision spends its time, the cost of handing a
decision to a thread, the OPA engine on loopback, and the memory a cold decision leaves behind.

Cold decisions use distinct inputs against an engine without a cache, so every one is evaluated
by rego-cpp; warm decisions repeat one input through the cache. Decisions per second are for one
core (one event loop, sequential decisions). "cpu p50" is the thread's CPU time per decision,
which other jobs on a shared machine disturb less than wall time. The OPA engine talks to the
devkit OPA server, run in a separate process on 127.0.0.1 (no OPA binary is available here).

The process loads rego-cpp's library the way the gateway does (``gateway`` first); the report
says which order was measured, because the other order leaks on every evaluation
(``gateway/policy/native.py``).

Run: ``.venv/bin/python benchmarks/bench_policy.py [--decisions N]``
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import datetime
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from harness import start_child

from gateway.config import LoadedConfig, load
from gateway.policy import embedded as embedded_module
from gateway.policy.cache import DecisionCache, project
from gateway.policy.embedded import EmbeddedEngine
from gateway.policy.loader import load_policies
from gateway.policy.native import load_order_problem
from gateway.policy.opa import OpaEngine

ROOT = Path(__file__).resolve().parents[1]


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile of ``samples``."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def write_config(directory: Path, targets: int, opa_url: str | None = None) -> LoadedConfig:
    """A gateway.yaml with ``targets`` https targets of three operations each."""
    lines = [
        "version: 1",
        "gateway: {id: bench}",
        "empowerid: {url: 'https://tenant.empowerid.example'}",
        f"policy: {{directories: ['{ROOT / 'policies'}']"
        + (f", engine: opa, opa_url: '{opa_url}'" if opa_url else "")
        + "}",
        "targets:",
    ]
    for i in range(targets):
        lines += [
            f"  t{i}:",
            "    scheme: https",
            f"    host: h{i}.corp.local",
            "    allowed_cidrs: [10.0.0.0/8]",
            "    operations:",
            "      - {name: read, methods: [GET, HEAD], paths: [/api/orders, /api/orders/*]}",
            "      - {name: write, methods: [POST], paths: [/api/orders/*/lines]}",
            "      - {name: events, methods: [GET], paths: ['/events/**'], websocket: true}",
        ]
    path = directory / f"gateway-{targets}.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load(path, check_host=False)


def make_input(target: int, order: int, method: str = "GET") -> dict[str, Any]:
    """A full input document (as build_input makes it) for METHOD /api/orders/<order>."""
    return {
        "target": f"t{target}",
        "method": method,
        "path": f"/api/orders/{order}",
        "path_segments": ["api", "orders", str(order)],
        "trailing_slash": False,
        "query": "expand=lines",
        "header_names": ["accept", "authorization"],
        "websocket": False,
        "signature": {"verified": True, "keyid": "empowerid-2026"},
    }


async def measure(
    decide: Callable[[dict[str, Any]], Awaitable[Any]], inputs: list[dict[str, Any]]
) -> tuple[float, float, float, float]:
    """p50 and p99 latency, p50 CPU time (us) and decisions per second over ``inputs``."""
    samples = []
    cpu = []
    started = time.perf_counter()
    for item in inputs:
        t0 = time.perf_counter()
        c0 = time.thread_time()
        await decide(item)
        cpu.append(time.thread_time() - c0)
        samples.append(time.perf_counter() - t0)
    total = time.perf_counter() - started
    return (
        percentile(samples, 0.5) * 1e6,
        percentile(samples, 0.99) * 1e6,
        percentile(cpu, 0.5) * 1e6,
        len(inputs) / total,
    )


def rss_kib() -> int:
    """This process's resident set size in KiB (Linux)."""
    status = Path("/proc/self/status").read_text(encoding="ascii")
    return next(int(line.split()[1]) for line in status.splitlines() if "VmRSS" in line)


def row(name: str, p50: float, p99: float, cpu: float, rate: float) -> str:
    """One Markdown table row."""
    return f"| {name} | {p50:.1f} | {p99:.1f} | {cpu:.1f} | {rate:,.0f} |"


def breakdown(engine: EmbeddedEngine, inputs: list[dict[str, Any]]) -> list[str]:
    """p50 of the parts of one cold decision: building the input, rego-cpp, all of evaluate."""
    lib = embedded_module._LIB
    rego = engine._native.interpreter
    bundle = engine._native.bundle
    fields = engine._fields
    parts: dict[str, list[float]] = {
        "project the input and set it (ctypes calls)": [],
        "run the entrypoint and render the result": [],
        "EmbeddedEngine.evaluate (both, plus parsing the result)": [],
    }
    setting, running, evaluating = parts.values()
    for item in inputs:
        t0 = time.perf_counter()
        document = item if fields is None else project(item, fields)
        node = lib.regoNewInput()
        embedded_module._input_node(node, document, embedded_module._MAX_INPUT_DEPTH)
        lib.regoSetInput(rego, node)
        lib.regoFreeInput(node)
        t1 = time.perf_counter()
        output = lib.regoBundleQueryEntrypoint(rego, bundle, embedded_module._ENTRYPOINT)
        size = lib.regoOutputJSONSize(output)
        lib.regoOutputJSON(output, ctypes.create_string_buffer(size), size)
        lib.regoFreeOutput(output)
        t2 = time.perf_counter()
        engine.evaluate(item)
        t3 = time.perf_counter()
        setting.append(t1 - t0)
        running.append(t2 - t1)
        evaluating.append(t3 - t2)
    return [f"| {name} | {percentile(samples, 0.5) * 1e6:.1f} |" for name, samples in parts.items()]


async def embedded(directory: Path, count: int, parts: list[str], memory: list[str]) -> list[str]:
    """Cold, warm and thread-offloaded figures of the embedded engine; ``parts`` gets the
    breakdown of a cold decision at 100 targets, ``memory`` the RSS growth of the cold runs."""
    rows = []
    for targets in (10, 100, 1000):
        policies = load_policies(write_config(directory, targets))
        cold = EmbeddedEngine(policies, mode="enforce", cache=None)
        inputs = [make_input(i % targets, i) for i in range(count)]
        for item in inputs[:200]:
            await cold.decide(item)
        before = rss_kib()
        rows.append(row(f"embedded, {targets} targets, cold", *await measure(cold.decide, inputs)))
        grown = rss_kib() - before
        memory.append(f"| {targets} targets | {grown / 1024:.1f} | {grown * 1024 / count:,.0f} |")
        denied = [make_input(i % targets, i, method="DELETE") for i in range(count)]
        rows.append(
            row(
                f"embedded, {targets} targets, cold deny (method_not_allowed)",
                *await measure(cold.decide, denied),
            )
        )
        warm = EmbeddedEngine(
            policies, mode="enforce", cache=DecisionCache(policies.cache_plan.fields)
        )
        same = [make_input(1, 7)] * count
        await warm.decide(same[0])
        rows.append(row(f"embedded, {targets} targets, warm", *await measure(warm.decide, same)))
        if targets == 100:
            parts.extend(breakdown(cold, inputs))

            async def offloaded(item: dict[str, Any], engine: EmbeddedEngine = cold) -> Any:
                return await asyncio.to_thread(engine.evaluate, item)

            rows.append(
                row(
                    "embedded, 100 targets, cold, via asyncio.to_thread",
                    *await measure(offloaded, inputs),
                )
            )
    return rows


async def opa(directory: Path, count: int) -> list[str]:
    """The OPA engine against the devkit server in its own process."""
    # The server binds port 0 and says which port it got (the harness's "ready" line): no port
    # is chosen here that another process could take before the server binds it.
    script = (
        "import asyncio\nfrom gateway.devkit.opa_server import OpaServer\n"
        "async def main():\n"
        "    async with OpaServer(port=0) as server:\n"
        "        print('ready', server.port, flush=True)\n"
        "        await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    child = await start_child("opa server", [sys.executable, "-c", script], step=30)
    server = child.process
    port = int(child.values[0])
    try:
        loaded = write_config(directory, 100, opa_url=f"http://127.0.0.1:{port}")
        policies = load_policies(loaded)
        engine = OpaEngine(
            policies, url=f"http://127.0.0.1:{port}", timeout=1.0, mode="enforce", cache=None
        )
        deadline = time.monotonic() + 10
        await engine.start()
        # The engine is ready after its first answer; `ready` is a property, polled like /readyz.
        while not engine.ready and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        inputs = [make_input(i % 100, i) for i in range(count)]
        for item in inputs[:100]:
            await engine.decide(item)
        result = row(
            "opa engine, 100 targets, loopback, cold", *await measure(engine.decide, inputs)
        )
        await engine.close()
        return [result]
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), timeout=10)


async def main() -> None:
    """Run everything and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--decisions", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        parts: list[str] = []
        memory: list[str] = []
        rows = await embedded(directory, args.decisions, parts, memory)
        rows += await opa(directory, min(args.decisions, 1000))
    print(
        f"{datetime.date.today().isoformat()}, python {platform.python_version()} on "
        f"{platform.machine()}, {platform.system()}, load average {os.getloadavg()[0]:.2f}"
    )
    print("| case | p50 us | p99 us | cpu p50 us | decisions/s (one core) |")
    print("| --- | --- | --- | --- | --- |")
    for line in rows:
        print(line)
    print(f"({args.decisions} decisions per embedded case)")
    print()
    print("| one cold decision, 100 targets | p50 us |")
    print("| --- | --- |")
    for line in parts:
        print(line)
    print()
    print(f"native load order: {load_order_problem() or 'rego-cpp before the C++ runtime'}")
    print(f"| cold run of {args.decisions} decisions | RSS growth MiB | bytes per decision |")
    print("| --- | --- | --- |")
    for line in memory:
        print(line)


if __name__ == "__main__":
    asyncio.run(main())
