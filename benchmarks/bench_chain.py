"""The pipeline above the relay edge, in one process: CPU per request of everything but the edge.

``gateway run`` spends each relayed request's CPU in two places: the relay edge (reading the
control channel, framing, answering: :mod:`gateway.relay`, :mod:`gateway.hybridconnection`) and
the pipeline (:class:`gateway.pipeline.Pipeline`: the RFC 9421 signature check with its replay
memory, canonicalisation, the policy decision with its verdict cache, the header step, the forward
to the target, the decision record with its hash chain, metrics). This benchmark measures the
second alone and steadily enough to compare changes of a few microseconds: a worker process builds
the real parts as ``gateway run`` does (an embedded Rego engine on the repository's policies, the
hardened forward to a loopback target, a decision log file) and calls the pipeline with relayed
requests signed beforehand, ``--in-flight`` at a time, without relay sockets. CPU is the worker's
``time.process_time()`` (all threads) across a round divided by the requests answered.

With ``--baseline REF`` a second worker imports the ``gateway`` package of commit ``REF`` and the
rounds alternate between the two (``ours``, ``base``), so both see the same machine load; the
ratio ours / base is taken round by round and its median printed. ``--steps`` also prints where
this tree's pipeline spends a request: each step timed on its own, one request at a time.

Each worker settles its memory after warming up as ``gateway run`` does once ready
(:mod:`gateway.settle`, when its tree has it) and reports the time its rounds spent in the
garbage collector, per generation.

The target is bench_relay.py's aiohttp server in a child process (a ~100-byte JSON answer).

Run: ``.venv/bin/python benchmarks/bench_chain.py [--quick] [--baseline REF] [--steps] [--alg ALG]
[--base-alg ALG]`` (``--base-alg`` without ``--baseline``: this tree against itself, the SaaS
signing with another algorithm).
(loopback only). Prints only.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from harness import start_child, stop_processes

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
NAMESPACE = "relay.bench.invalid"
GATEWAY_ID = "bench-chain"
HC = f"hc-{GATEWAY_ID}"
TARGET_PATH = "/item"
STEP = 120.0
# The public-key algorithms a worker can sign with (gateway.devkit.signing.generate_key).
ALGORITHMS = ("ed25519", "ecdsa-p256-sha256", "rsa-pss-sha512")
# A SaaS request's usual extra headers, besides the signature fields (forwarded or dropped by
# the operation's allow-list).
EXTRA = [
    ("accept", "application/json"),
    ("accept-language", "en"),
    ("user-agent", "EmpowerID/1.0"),
    ("x-request-id", "4bf92f3577b34da6a3ce929d0e0e4736"),
]


def _config(target_port: int) -> dict[str, Any]:
    return {
        "version": 1,
        "gateway": {"id": GATEWAY_ID},
        "empowerid": {"url": "https://tenant.empowerid.example"},
        "policy": {"directories": [str(ROOT / "policies")]},
        "limits": {"request_timeout_seconds": 10},
        "logging": {"level": "info", "format": "json", "audit_file": "decisions.jsonl"},
        "targets": {
            "erp": {
                "scheme": "http",
                "host": "127.0.0.1",
                "port": target_port,
                "allow_special_addresses": True,
                "operations": [
                    {
                        "name": "read-item",
                        "methods": ["GET"],
                        "paths": [TARGET_PATH, f"{TARGET_PATH}/*"],
                        "headers": ["Accept-Language"],
                    }
                ],
            }
        },
    }


class Worker:
    """The pipeline's real parts, built as ``gateway run`` builds them (no relay sockets).

    The gateway is imported before anything else in the worker: its policy engine's library
    must be loaded before any other C++ extension (aiohttp's, which bench_relay.py imports).
    """

    def __init__(self, target_port: int, workdir: Path, alg: str = "ed25519") -> None:
        import yaml

        # Everything `gateway run` imports, so that the worker's heap (what the collector walks,
        # what the caches hold) is the agent's, not only the pipeline's.
        import gateway.service  # noqa: F401
        from gateway.auth import KeySet, ReplayCache, SignatureVerifier, VerifierSettings
        from gateway.config import load
        from gateway.devkit.signing import (
            RequestSigner,
            generate_key,
            key_entry,
            keyset_document,
        )
        from gateway.observability.audit import AuditLog
        from gateway.observability.metrics import Metrics
        from gateway.pipeline import Pipeline, Runtime
        from gateway.policy.loader import build_engine

        path = workdir / "gateway.yaml"
        path.write_text(yaml.safe_dump(_config(target_port)), encoding="utf-8")
        self.loaded = load(path, check_host=False)
        self.engine = build_engine(self.loaded)
        self.runtime = Runtime.build(self.loaded, self.engine)
        from gateway.auth.keys import PUBLIC_ALGORITHMS

        key = generate_key(next(known for known in PUBLIC_ALGORITHMS if known == alg))
        now = time.time()
        keys = KeySet.from_document(
            keyset_document([key_entry("saas-1", key, not_before=now - 3600, not_after=now + 1e5)])
        )
        self.signer = RequestSigner(key, keyid="saas-1", gateway_id=GATEWAY_ID)
        self.verifier = SignatureVerifier(
            keys,
            ReplayCache(max_entries=200_000),
            gateway_id=GATEWAY_ID,
            hc_path=HC,
            settings=VerifierSettings(max_age=300, max_skew=30),
        )
        self.metrics = Metrics()
        self.audit = AuditLog(workdir / "decisions.jsonl")

        def write(record: Any) -> None:
            self.audit.write(record.as_dict())

        # As `gateway run` wires it: relayed requests' records submitted, where the tree can
        # (a baseline from before AuditLog.submit writes each alone).
        submitting: dict[str, Any] = {}
        if hasattr(self.audit, "submit"):

            def submit(record: Any) -> Any:
                return self.audit.submit(record.as_dict())

            submitting["audit_submit"] = submit
        self.pipeline = Pipeline(
            lambda: self.runtime,
            self.verifier,
            authority=NAMESPACE,
            hc_path=HC,
            metrics=self.metrics,
            audit=write,
            **submitting,
        )
        self.counter = 0

    def signed(self, count: int) -> list[Any]:
        """``count`` relayed requests, each freshly signed (its own nonce)."""
        from gateway.relay.handlers import RelayedRequest

        relay_path = f"/{HC}/erp{TARGET_PATH}"
        requests = []
        for _ in range(count):
            self.counter += 1
            headers = (
                *self.signer.sign(method="GET", authority=NAMESPACE, path=relay_path),
                *EXTRA,
            )
            requests.append(
                RelayedRequest(
                    request_id=str(self.counter),
                    method="GET",
                    target=f"/erp{TARGET_PATH}",
                    headers=headers,
                    body=b"",
                    raw_target=relay_path,
                )
            )
        return requests

    async def round(self, count: int, in_flight: int) -> float:
        """CPU microseconds per request over ``count`` requests, ``in_flight`` at a time."""
        requests = self.signed(count)
        pending = iter(requests)
        failures = 0

        async def lane() -> None:
            nonlocal failures
            for request in pending:
                response = await self.pipeline(request)
                if response.status != 200:
                    failures += 1
                elif not isinstance(response.body, bytes):
                    async for _ in response.body:
                        pass

        began = time.process_time()
        await asyncio.gather(*(lane() for _ in range(in_flight)))
        spent = time.process_time() - began
        if failures:
            raise RuntimeError(f"{failures} of {count} requests failed")
        return spent / count * 1e6

    def collections(self) -> Callable[[str, dict[str, int]], None]:
        """A ``gc.callbacks`` entry adding each collection's CPU time (this thread's, so that
        the machine's other work does not count) to ``self.collected`` (seconds and count per
        generation)."""
        self.collected: dict[int, list[float]] = {0: [0.0, 0], 1: [0.0, 0], 2: [0.0, 0]}
        started = [0.0]

        def callback(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started[0] = time.thread_time()
            else:
                entry = self.collected[info["generation"]]
                entry[0] += time.thread_time() - started[0]
                entry[1] += 1

        return callback

    async def steps(self, count: int, repetitions: int = 3) -> dict[str, float]:
        """CPU microseconds per request of each step on its own, one request at a time (median
        of ``repetitions``)."""
        runs: dict[str, list[float]] = {}
        for _ in range(repetitions):
            for name, value in (await self._steps(count)).items():
                runs.setdefault(name, []).append(value)
        return {name: statistics.median(values) for name, values in runs.items()}

    async def _steps(self, count: int) -> dict[str, float]:
        from nacl.signing import SigningKey

        from gateway.pipeline import RequestFacts

        requests = self.signed(count)
        results: dict[str, float] = {}

        async def timed(name: str, step: Callable[[Any], Awaitable[Any]]) -> list[Any]:
            outputs = []
            began = time.process_time()
            for request in requests:
                outputs.append(await step(request))
            results[name] = (time.process_time() - began) / count * 1e6
            return outputs

        async def verify(request: Any) -> Any:
            path, _, query = request.raw_target.partition("?")
            return await self.verifier.verify_async(
                method="GET",
                authority=NAMESPACE,
                path=path,
                query=query,
                headers=list(request.headers),
                body=None,
            )

        async def decide(request: Any) -> Any:
            facts = RequestFacts.relayed(request.method, request.target, request.headers)
            return await self.runtime.chain.decide(facts.signed_by("saas-1"))

        await timed("signature check (verify_async, replay memory included)", verify)
        # The cryptographic check alone, on a signature base of the same size as the requests'
        # (libsodium's Ed25519 through PyNaCl, as the verifier calls it): the rest of the line
        # above is the verifier's own work around it.
        key = SigningKey.generate()
        base = bytes(330)
        signature, public = key.sign(base).signature, key.verify_key

        async def ed25519_alone(_: Any) -> None:
            public.verify(base, signature)

        await timed("  of which libsodium's Ed25519 check alone", ed25519_alone)
        verdicts = iter(await timed("chain: canonicalise, policy, headers", decide))

        async def forward(_: Any) -> Any:
            verdict = next(verdicts)
            canonical = verdict.granted()
            answer = await self.runtime.upstream.send(
                canonical.target,
                method=canonical.method,
                path=canonical.path,
                query=canonical.query,
                headers=list(verdict.headers),
                body=b"",
            )
            await answer.release()
            return answer

        await timed("forward (Upstream.send and release)", forward)
        requests = self.signed(count)
        await timed("whole pipeline (Pipeline.__call__)", self.pipeline)
        return results


async def serve_worker(target_port: int, alg: str) -> None:
    """The worker role: build once, then run one round per ``ROUND count in_flight`` line."""
    with tempfile.TemporaryDirectory(prefix="bench-chain-") as scratch:
        worker = Worker(target_port, Path(scratch), alg)
        await worker.round(200, 8)  # warm: connections, verdict cache, code paths
        try:
            from gateway.settle import settle
        except ImportError:  # a baseline from before gateway run froze its start-up objects
            pass
        else:
            settle()  # as gateway run does once it is ready
        gc.callbacks.append(worker.collections())
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            words = line.split() or [""]
            if words[0] == "ROUND":
                value = await worker.round(int(words[1]), int(words[2]))
                print(json.dumps({"cpu": value}), flush=True)
            elif words[0] == "STEPS":
                print(json.dumps(await worker.steps(int(words[1]))), flush=True)
            elif words[0] == "GC":
                print(json.dumps(worker.collected), flush=True)


async def ask(child: Any, line: str) -> Any:
    """Send one command line to a worker and read its one-line JSON answer."""
    process = child.process
    assert process.stdin is not None
    assert process.stdout is not None
    process.stdin.write(line.encode() + b"\n")
    await process.stdin.drain()
    answer = await asyncio.wait_for(process.stdout.readline(), 300)
    if not answer:
        raise RuntimeError(f"{child.name} exited")
    return json.loads(answer)


async def benchmark(
    quick: bool, baseline: Path | None, steps: bool, algs: tuple[str, str | None]
) -> tuple[dict[str, dict[int, list[float]]], dict[str, float]]:
    """Start the target and the workers, run the alternating rounds, stop everything."""
    rounds, count = (3, 600) if quick else (9, 2000)
    python = sys.executable
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{SCRIPT.parent}"}
    processes = []
    try:
        target = await start_child(
            "target", [python, str(SCRIPT), "--role", "target"], step=STEP, env=env
        )
        processes.append(target.process)
        workers = {}
        alg, base_alg = algs
        # The base worker: another commit's tree (--baseline), or this tree signing with another
        # algorithm (--base-alg), so two algorithms are compared round by round as well.
        base = baseline if baseline is not None else (ROOT if base_alg is not None else None)
        for name, package, signing in (("ours", ROOT, alg), ("base", base, base_alg or alg)):
            if package is None:
                continue
            child_env = {**env, "PYTHONPATH": f"{package}{os.pathsep}{SCRIPT.parent}"}
            argv = [python, str(SCRIPT), "--role", "worker", "--target-port", target.values[0]]
            argv += ["--alg", signing]
            # Run outside the repository: a `python -m gateway...` child of the worker (the policy
            # check's planner) imports the package from its working directory first.
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=child_env,
                cwd=tempfile.gettempdir(),
            )
            processes.append(process)
            assert process.stdout is not None
            async with asyncio.timeout(STEP):
                while not (line := await process.stdout.readline()).startswith(b"ready"):
                    if not line:
                        raise RuntimeError(f"worker {name} exited before it was ready")
            workers[name] = type("W", (), {"process": process, "name": name})()
        samples: dict[str, dict[int, list[float]]] = {name: {1: [], 32: []} for name in workers}
        for index in range(rounds):
            for in_flight in (1, 32):
                # Alternate which worker goes first, so neither always follows the other.
                order = list(workers) if index % 2 == 0 else list(reversed(workers))
                for name in order:
                    answer = await ask(workers[name], f"ROUND {count} {in_flight}")
                    samples[name][in_flight].append(answer["cpu"])
        for name in workers:
            # Time in the collector over every round (the steps below are not counted).
            collected = await ask(workers[name], "GC")
            requests = rounds * 2 * count
            print(
                f"  {name}: collections over {requests} requests: "
                + ", ".join(
                    f"generation {gen} {int(n)} taking {seconds * 1000:.1f} ms"
                    for gen, (seconds, n) in sorted(collected.items())
                )
            )
        breakdown = await ask(workers["ours"], f"STEPS {count}") if steps else {}
        return samples, breakdown
    finally:
        await stop_processes(processes, 5.0)


def main() -> int:
    """Run the benchmark (or one of its child roles) and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 short rounds instead of 9")
    parser.add_argument(
        "--baseline", metavar="GIT_REF", help="also run REF's pipeline, alternating"
    )
    parser.add_argument("--steps", action="store_true", help="also time each step on its own")
    parser.add_argument(
        "--alg",
        choices=ALGORITHMS,
        default="ed25519",
        help="the algorithm the SaaS signs with (default ed25519)",
    )
    parser.add_argument(
        "--base-alg",
        choices=ALGORITHMS,
        help="the base worker's algorithm; without --baseline, the base is this tree with it",
    )
    parser.add_argument("--role", choices=("target", "worker"), help=argparse.SUPPRESS)
    parser.add_argument("--target-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "target":
        from bench_relay import run_target

        asyncio.run(run_target())
        return 0
    if args.role == "worker":
        asyncio.run(serve_worker(args.target_port, args.alg))
        return 0
    from bench_relay import extract_baseline  # imports aiohttp: never in a worker (see Worker)

    with tempfile.TemporaryDirectory(prefix="bench-chain-base-") as scratch:
        commit = None
        if args.baseline:
            commit = extract_baseline(args.baseline, Path(scratch))
        samples, breakdown = asyncio.run(
            benchmark(
                args.quick,
                Path(scratch) if commit else None,
                args.steps,
                (args.alg, args.base_alg),
            )
        )
    print(
        f"CPU us per request of the pipeline process (median of {len(samples['ours'][1])} rounds)"
    )
    for in_flight in (1, 32):
        figures = ", ".join(
            f"{name} {statistics.median(values[in_flight]):.0f}" for name, values in samples.items()
        )
        line = f"  {in_flight:>2} in flight: {figures}"
        if "base" in samples:
            ratios = [
                mine / theirs
                for mine, theirs in zip(
                    samples["ours"][in_flight], samples["base"][in_flight], strict=True
                )
            ]
            base = commit if commit else "this tree"
            if args.base_alg:
                base += f", {args.base_alg}; ours {args.alg}"
            line += f"; ours/base {statistics.median(ratios):.3f} (base = {base})"
        print(line)
    if breakdown:
        print("Steps, one request at a time, CPU us per request:")
        for name, value in breakdown.items():
            print(f"  {value:7.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
