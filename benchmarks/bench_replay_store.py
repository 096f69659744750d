"""Cost of recording one nonce in each replay store (p50/p99 latency, CPU, microseconds).

Stores, side by side in one run: per-process memory (:class:`MemoryReplayStore`), a SQLite file in
WAL mode with ``synchronous=FULL`` in a temporary directory (``--dir`` to put it on the disk the
gateway's state directory uses), and a real ``redis-server`` on loopback (append-only file fsynced
every second, as a production server would run; ``--fsync always`` for every write). Each admission
is a fresh nonce, awaited one at a time (what one request costs) and then ``--concurrency`` at a
time (what a busy gateway sees, Redis pipelining over its connection pool). CPU is this process's
user + system time per admission (the gateway's side; the Redis server's CPU is not included).

Run: ``.venv/bin/python benchmarks/bench_replay_store.py [--admissions N] [--concurrency N]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import SecretStr

from gateway.auth.redisstore import RedisReplayStore
from gateway.auth.replay import Admission, MemoryReplayStore, ReplayCache, ReplayStore
from gateway.auth.sqlitestore import SqliteReplayStore
from gateway.config.model import RedisReplayStore as RedisSettings
from gateway.config.secrets import SecretRef, SecretSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.redisserver import PASSWORD, RedisServer


@contextmanager
def redis_server(directory: Path, fsync: str) -> Iterator[int]:
    """A redis-server on a free loopback port (the tests' own: started again on another port if
    the one it was given is taken meanwhile), stopped on exit."""
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(directory, fsync=fsync)
    server.start()
    try:
        yield server.port
    finally:
        server.stop()


async def measure(
    store: ReplayStore, admissions: int, concurrency: int, tag: str
) -> dict[str, float]:
    """Latency percentiles one at a time, CPU per admission, and throughput when concurrent."""
    now = time.time()
    latencies: list[float] = []
    cpu_start = time.process_time()
    for i in range(admissions):
        started = time.perf_counter()
        admission = await store.admit("bench", f"{tag}s{i}", created=now, expires=now + 60)
        latencies.append(time.perf_counter() - started)
        assert admission is Admission.ACCEPTED, admission
    cpu_serial = (time.process_time() - cpu_start) / admissions
    latencies.sort()

    async def batch(base: int) -> None:
        results = await asyncio.gather(
            *(
                store.admit("bench", f"{tag}c{base + j}", created=now, expires=now + 60)
                for j in range(concurrency)
            )
        )
        assert all(r is Admission.ACCEPTED for r in results), results

    cpu_start = time.process_time()
    started = time.perf_counter()
    for base in range(0, admissions, concurrency):
        await batch(base)
    wall = time.perf_counter() - started
    cpu_concurrent = (time.process_time() - cpu_start) / admissions
    return {
        "p50_us": statistics.median(latencies) * 1e6,
        "p99_us": latencies[int(len(latencies) * 0.99) - 1] * 1e6,
        "cpu_us": cpu_serial * 1e6,
        "concurrent_per_s": admissions / wall,
        "concurrent_cpu_us": cpu_concurrent * 1e6,
    }


async def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    base = Path(args.dir) if args.dir else None
    with tempfile.TemporaryDirectory(dir=base) as temp:
        directory = Path(temp)
        stores: list[tuple[str, Callable[[], ReplayStore]]] = []
        cache_dir = directory / "memory"
        cache_dir.mkdir()
        ReplayCache.initialise(cache_dir)
        stores.append(
            (
                "memory",
                lambda: MemoryReplayStore(
                    ReplayCache.open(cache_dir, max_entries=10_000_000, max_skew=30)
                ),
            )
        )
        sqlite_path = directory / "replay.sqlite3"
        SqliteReplayStore.initialise(sqlite_path)
        stores.append(
            (
                "sqlite (WAL, synchronous=FULL)",
                lambda: SqliteReplayStore(sqlite_path, max_entries=10_000_000, max_skew=30),
            )
        )
        redis_dir = directory / "redis"
        redis_dir.mkdir()
        with redis_server(redis_dir, args.fsync) as port:
            settings = RedisSettings.model_validate(
                {"host": "127.0.0.1", "port": port, "tls": False,
                 "password": SecretRef(env="P"), "timeout_seconds": 5.0}
            )  # fmt: skip
            source = SecretSource(
                SecretRef(env="P"), base_dir=directory, env={"P": PASSWORD},
                initial=SecretStr(PASSWORD),
            )  # fmt: skip

            def redis_store() -> ReplayStore:
                return RedisReplayStore(settings, password=source, prefix="b:", max_skew=30)

            stores.append((f"redis (loopback, appendfsync {args.fsync})", redis_store))
            for name, make in stores:
                store = make()
                if isinstance(store, RedisReplayStore):
                    await store.initialise()
                try:
                    await measure(store, min(200, args.admissions), args.concurrency, "warm")
                    results[name] = await measure(store, args.admissions, args.concurrency, "run")
                finally:
                    await store.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admissions", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--dir", help="directory for the SQLite file and Redis data")
    parser.add_argument("--fsync", choices=("everysec", "always"), default="everysec")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{platform.node()} {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"{args.admissions} admissions; concurrent: {args.concurrency} in flight")
    print(
        f"{'store':40} {'p50 us':>9} {'p99 us':>9} {'CPU us':>8} {'conc/s':>9} {'conc CPU us':>12}"
    )
    for name, row in results.items():
        print(
            f"{name:40} {row['p50_us']:9.1f} {row['p99_us']:9.1f} {row['cpu_us']:8.1f} "
            f"{row['concurrent_per_s']:9.0f} {row['concurrent_cpu_us']:12.1f}"
        )


if __name__ == "__main__":
    main()
