"""Resident memory of ``gateway run``, idle and with 1,000 open streams, two trees side by side.

Both gateways run at once on the same relay emulator, control-plane simulator and sample targets
(each component in its own process on 127.0.0.1), with the configuration of
``bench_pipeline.py`` (embedded Rego policy, two control channels, decision log to a file, JSON
logs, an ``http`` and a ``tcp`` target): ``base`` runs the ``gateway`` package of a git ref
(``--baseline``, default ``main``), ``tree`` the package of this working tree. Each is registered
with ``gateway register`` and started with ``gateway run``.

Per repetition (fresh gateway processes each time), for each gateway in turn: ``VmRSS`` and its
anonymous and file-backed parts (``/proc/PID/status``) two seconds after ``/readyz`` says ready
("idle"), then with ``--streams`` relayed TCP streams held open at once to the ``directory``
target, each checked with one echoed message ("streams"). Medians over the repetitions.

With ``--hold`` the stack stays up after the idle reading, printing the gateways' pids, until
interrupted: for ``/proc/PID/smaps`` and similar inspection.

Run: ``.venv/bin/python benchmarks/bench_memory.py [--baseline REF] [--streams N] [--repeat N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from bench_pipeline import (
    NAMESPACE,
    PERSON_PASSWORD,
    SAS_HEADER,
    SCRIPT,
    run_relay,
    start_gateway,
    start_stack,
)
from bench_relay import extract_baseline
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from harness import stop_processes, until_terminated

ROOT = Path(__file__).resolve().parent.parent
THIS = Path(__file__).resolve()
STEP = 60.0  # bound for one start-up wait (registration and policy compilation included)
# One gateway id (and Hybrid Connection, hc-{id}) per tree.
GATEWAYS = {"base": "mem-base", "tree": "mem-tree"}


def memory(pid: int) -> dict[str, float]:
    """``VmRSS``, ``RssAnon``, ``RssFile`` (MiB) and ``Threads`` of a process."""
    wanted = {"VmRSS", "RssAnon", "RssFile", "Threads"}
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in wanted:
            number = float(value.split()[0])
            found[name] = number if name == "Threads" else number / 1024
    return found


async def open_streams(
    relay_port: int,
    gateway_id: str,
    signing_key: ed25519.Ed25519PrivateKey,
    keyid: str,
    send_key: str,
    count: int,
    pid: int,
) -> tuple[dict[str, float], int]:
    """Open ``count`` relayed TCP streams to ``directory`` of ``gateway_id`` and hold them;
    returns the gateway's memory with them all open and how many echoed correctly."""
    from gateway.devkit.signing import RequestSigner
    from gateway.hybridconnection.sas import create_token, resource_uri

    hc = f"hc-{gateway_id}"
    signer = RequestSigner(signing_key, keyid=keyid, gateway_id=gateway_id)
    token = create_token(resource_uri(NAMESPACE, hc), "SendRule", send_key)
    relay_path = f"/{hc}/directory"
    url = f"ws://127.0.0.1:{relay_port}/$hc/{hc}/directory?sb-hc-action=connect"
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    echoed = 0
    gate = asyncio.Semaphore(32)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(index: int) -> None:
            nonlocal echoed
            headers = [
                *signer.sign(method="GET", authority=NAMESPACE, path=relay_path),
                (SAS_HEADER, token),
            ]
            async with gate:
                ws = await session.ws_connect(url, headers=headers)
                sockets.append(ws)
                payload = f"bind cn=user{index}".encode()
                await ws.send_bytes(payload)
                message = await ws.receive(timeout=10)
                if message.data == b"echo:" + payload:
                    echoed += 1

        try:
            async with asyncio.timeout(180):
                await asyncio.gather(*(one(i) for i in range(count)))
            await asyncio.sleep(1.0)  # let buffers settle before reading the RSS
            held = memory(pid)
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return held, echoed


@dataclass
class Readings:
    """Memory readings by (tree, state), one per repetition."""

    values: dict[tuple[str, str], list[dict[str, float]]] = field(default_factory=dict)
    echoed: dict[str, list[int]] = field(default_factory=dict)

    def add(self, tree: str, state: str, reading: dict[str, float]) -> None:
        self.values.setdefault((tree, state), []).append(reading)

    def median(self, tree: str, state: str, what: str) -> float:
        return statistics.median(r[what] for r in self.values[(tree, state)])


async def package_of(env: dict[str, str], cwd: Path) -> str:
    """The directory ``python -m gateway`` imports the package from, with ``env`` in ``cwd``."""
    probe = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import gateway; print(gateway.__file__)",
        env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(probe.communicate(), STEP)
    return str(Path(output.decode().strip()).parent)


async def start_pair(
    workdir: Path,
    ports: tuple[int, int, int, int],
    envs: dict[str, dict[str, str]],
    order: Sequence[str],
    facts: dict[str, str],
) -> dict[str, asyncio.subprocess.Process]:
    """Register and start one gateway per tree (in ``order``), each in its own directory."""
    started: dict[str, asyncio.subprocess.Process] = {}
    try:
        for tree in order:
            directory = workdir / tree
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            shutil.copy(workdir / "empowerid-ca.pem", directory / "empowerid-ca.pem")
            facts[tree] = await package_of(envs[tree], directory)
            started[tree], facts[f"{tree} event loop"] = await start_gateway(
                directory, ports, GATEWAYS[tree], envs[tree], cwd=directory
            )
    except BaseException:
        await stop_processes(list(started.values()), 5.0)
        raise
    return started


async def benchmark(
    base: Path, streams: int, repeat: int, hold: bool, keep: bool
) -> tuple[Readings, dict[str, str]]:
    """Start the shared stack, then per repetition both gateways; read their memory."""
    readings = Readings()
    facts: dict[str, str] = {}
    processes: list[asyncio.subprocess.Process] = []
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-memory-"))
    listen_key = base64.b64encode(secrets.token_bytes(32)).decode()
    send_key = base64.b64encode(secrets.token_bytes(32)).decode()
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{SCRIPT.parent}",
        "BENCH_LISTEN_KEY": listen_key,
        "BENCH_SEND_KEY": send_key,
    }
    env.pop("GATEWAY_CONFIG", None)
    gateway_env = {**env, "GATEWAY_REGISTER_PASSWORD": PERSON_PASSWORD}
    envs = {
        "tree": {**gateway_env, "PYTHONPATH": str(ROOT)},
        "base": {**gateway_env, "PYTHONPATH": str(base)},
    }
    try:
        ports, keyid = await start_stack(THIS, workdir, env, processes)
        relay_port = ports[0]
        key = serialization.load_pem_private_key((workdir / "signing-key.pem").read_bytes(), None)
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        for repetition in range(repeat):
            # Alternate which tree starts first, so neither always meets a quieter machine.
            order = ("base", "tree") if repetition % 2 == 0 else ("tree", "base")
            gateways = await start_pair(workdir, ports, envs, order, facts)
            try:
                await asyncio.sleep(2.0)
                for tree in order:
                    readings.add(tree, "idle", memory(gateways[tree].pid))
                if hold:
                    pids = " ".join(f"{tree}={p.pid}" for tree, p in gateways.items())
                    print(f"holding: {pids} (workdir {workdir}); interrupt to stop", flush=True)
                    with contextlib.suppress(asyncio.CancelledError):
                        await until_terminated()
                    break
                for tree in order:
                    held, echoed = await open_streams(
                        relay_port,
                        GATEWAYS[tree],
                        key,
                        keyid,
                        send_key,
                        streams,
                        gateways[tree].pid,
                    )
                    readings.add(tree, "streams", held)
                    readings.echoed.setdefault(tree, []).append(echoed)
            finally:
                await stop_processes(list(gateways.values()), 10.0)
        return readings, facts
    finally:
        await stop_processes(list(reversed(processes)), 10.0)
        if keep:
            print(f"(kept {workdir})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def render(
    readings: Readings,
    facts: dict[str, str],
    command: str,
    base_commit: str,
    streams: int,
    repeat: int,
) -> str:
    """The table: each tree's memory idle and with ``streams`` open streams."""
    lines = [
        f"Command: `{command}`",
        f"Measured: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; base = {base_commit} "
        f"(package {facts.get('base', '?')}, event loop {facts.get('base event loop', '?')}), "
        f"tree = this working tree (package {facts.get('tree', '?')}, event loop "
        f"{facts.get('tree event loop', '?')}); medians of {repeat} repetition(s), MiB",
        "",
        "| state | tree | VmRSS | RssAnon | RssFile | threads |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for state in ("idle", "streams"):
        for tree in ("base", "tree"):
            if (tree, state) not in readings.values:
                continue
            label = state if state == "idle" else f"{streams} streams"
            cells = [f"{readings.median(tree, state, w):.1f}" for w in ("VmRSS", "RssAnon")]
            cells.append(f"{readings.median(tree, state, 'RssFile'):.1f}")
            cells.append(f"{readings.median(tree, state, 'Threads'):.0f}")
            lines.append(f"| {label} | {tree} | {' | '.join(cells)} |")
    lines.append("")
    for state in ("idle", "streams"):
        if ("tree", state) in readings.values and ("base", state) in readings.values:
            label = state if state == "idle" else f"{streams} streams"
            before = readings.median("base", state, "VmRSS")
            after = readings.median("tree", state, "VmRSS")
            lines.append(
                f"{label}: base {before:.1f} MiB ({before * 1.048576:.0f} MB), tree {after:.1f} "
                f"MiB ({after * 1.048576:.0f} MB), tree - base {after - before:+.1f} MiB"
            )
    for tree, counts in readings.echoed.items():
        lines.append(f"{tree}: streams echoed {min(counts)} of {streams} (worst repetition)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison (or the relay role) and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--baseline", default="main", metavar="GIT_REF", help="default: main")
    parser.add_argument("--streams", type=int, default=1000, help="streams held open at once")
    parser.add_argument("--repeat", type=int, default=2, help="repetitions (fresh gateways)")
    parser.add_argument("--hold", action="store_true", help="stay up after the idle reading")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--role", choices=("relay",), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "relay":
        asyncio.run(run_relay([f"hc-{gid}" for gid in GATEWAYS.values()], ()))
        return 0
    command = ".venv/bin/python benchmarks/bench_memory.py"
    if args.baseline != "main":
        command += f" --baseline {args.baseline}"
    if args.streams != 1000:
        command += f" --streams {args.streams}"
    if args.repeat != 2:
        command += f" --repeat {args.repeat}"
    with tempfile.TemporaryDirectory(prefix="bench-memory-base-") as scratch:
        commit = extract_baseline(args.baseline, Path(scratch))
        readings, facts = asyncio.run(
            benchmark(Path(scratch), args.streams, args.repeat, args.hold, args.keep)
        )
    print(render(readings, facts, command, commit, args.streams, args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
