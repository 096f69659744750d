"""The forward alone: CPU per request of the gateway's HTTP/1.1 forward against the alternatives.

Measures lever 3 of the pipeline work (benchmarks/pipeline-report.md): what sending one small
canonical ``GET`` to a keep-alive target and reading its small answer costs in the gateway's
process, over the same pinned, pooled loopback connections:

* ``session``: what the forward used before, aiohttp's ``ClientSession`` built by
  :class:`gateway.forward.upstream.TargetPool` (the dial step's connector, the never-resend
  middleware, timeouts);
* ``upstream``: the gateway's :class:`gateway.forward.upstream.Upstream` today
  (:mod:`gateway.forward.http1`: the request head written from the canonical pieces, httptools'
  (llhttp) response parser, a pool of dial-step sockets);
* ``h11``: a prototype written here only for the measurement, when ``h11`` is installed:
  sockets from the same :class:`gateway.forward.dial.DialStep`, a small idle pool, h11
  (python-hyper's sans-I/O HTTP/1.1) serialising the request and parsing the answer.

The target is bench_relay.py's aiohttp server in a child process (a ~100-byte JSON answer). CPU
is this process's ``time.process_time()`` across a run divided by the requests; runs are
interleaved per repetition and the medians printed.

Run: ``.venv/bin/python benchmarks/bench_forward.py [--quick]`` (loopback only). Prints only.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from bench_pipeline import gateway_config
from bench_relay import BODY, run_target
from harness import start_child, stop_processes

from gateway.config.model import GatewayConfig
from gateway.forward.dial import DialStep
from gateway.forward.headers import host_header
from gateway.forward.upstream import TargetPool, Upstream, drain

try:  # the prototype route only; the gateway does not depend on h11
    import h11

    HAVE_H11 = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_H11 = False

SCRIPT = Path(__file__).resolve()
HEADERS = [("accept", "application/json"), ("accept-language", "en")]


class _Conn(asyncio.Protocol):
    """One pooled connection: h11 state plus what the transport delivered."""

    def __init__(self) -> None:
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=16 * 1024)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.h11.receive_data(data)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def eof_received(self) -> bool:
        self.h11.receive_data(b"")
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class LeanClient:
    """The prototype: DialStep sockets, an idle pool, h11, one timeout, a body cap, no retry."""

    def __init__(self, config: GatewayConfig, name: str) -> None:
        self._dial = DialStep(config.targets)
        self._name = name
        self._host = host_header(config.targets[name])
        self._idle: list[_Conn] = []
        self._max_body = config.limits.max_response_body_bytes
        self._timeout = config.limits.request_timeout_seconds

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        for host, port in await self._dial.endpoints(self._name):
            sock = self._dial.socket((2, 1, 6, "", (host, port)))
            sock.setblocking(False)
            await loop.sock_connect(sock, (host, port))
            _, conn = await loop.create_connection(_Conn, sock=sock)
            return conn
        raise OSError("no endpoint")

    async def get(self, path: str, headers: list[tuple[str, str]]) -> tuple[int, bytes]:
        """One GET; the connection goes back to the pool only after a clean exchange."""
        conn = self._idle.pop() if self._idle else await self._connect()
        assert conn.transport is not None
        async with asyncio.timeout(self._timeout):
            out = conn.h11.send(
                h11.Request(method="GET", target=path, headers=[("host", self._host), *headers])
            )
            assert out is not None
            conn.transport.write(out)
            conn.h11.send(h11.EndOfMessage())
            status = 0
            parts: list[bytes] = []
            size = 0
            while True:
                event = conn.h11.next_event()
                if event is h11.NEED_DATA:
                    if conn.lost:
                        raise ConnectionError("lost")
                    conn.waiter = asyncio.get_running_loop().create_future()
                    await conn.waiter
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > self._max_body:
                        raise ValueError("too large")
                    parts.append(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
        if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            conn.h11.start_next_cycle()
            self._idle.append(conn)
        elif conn.transport is not None:
            conn.transport.close()
        return status, b"".join(parts)

    def close(self) -> None:
        """Close every idle connection."""
        for conn in self._idle:
            if conn.transport is not None:
                conn.transport.close()


async def measure(
    send: Callable[[], Awaitable[bytes]], in_flight: int, count: int
) -> tuple[float, float]:
    """(CPU us per request, requests/s) for ``count`` requests ``in_flight`` at a time."""
    issued = 0

    async def worker() -> None:
        nonlocal issued
        while issued < count:
            issued += 1
            body = await send()
            assert body == BODY

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / count * 1e6, count / wall


async def benchmark(quick: bool) -> None:
    """Start the target, run the routes interleaved, print the medians."""
    target = await start_child("target", [sys.executable, str(SCRIPT), "--role", "target"], step=30)
    try:
        port = int(target.values[0])
        config = GatewayConfig.model_validate(gateway_config(1, 2, port, 4, 5))
        upstream = Upstream(config)
        pool = TargetPool(
            config,
            config.targets,
            limit=config.limits.max_concurrent_requests,
            session_options=lambda: {"auto_decompress": False},
        )
        lean = LeanClient(config, "erp") if HAVE_H11 else None

        async def via_upstream() -> bytes:
            response = await upstream.send(
                "erp", method="GET", path="/item", query=None, headers=HEADERS, body=b""
            )
            return await drain(response)

        async def via_session() -> bytes:
            # What Upstream.send did before gateway.forward.http1: the hardened ClientSession.
            response = await pool.session().request(
                "GET",
                pool.url("erp", "http", "/item", None),
                headers=pool.headers("erp", HEADERS),
                data=None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=10, sock_connect=5, sock_read=10),
                ssl=True,
                server_hostname=None,
            )
            try:
                return await response.read()
            finally:
                response.release()

        routes: dict[str, Callable[[], Awaitable[bytes]]] = {
            "session": via_session,
            "upstream": via_upstream,
        }
        if lean is not None:

            async def via_h11() -> bytes:
                assert lean is not None
                return (await lean.get("/item", HEADERS))[1]

            routes["h11"] = via_h11
        repetitions, count = (3, 500) if quick else (7, 2000)
        cpu: dict[tuple[str, int], list[float]] = {}
        rate: dict[tuple[str, int], list[float]] = {}
        for route in routes.values():  # warm-up: pools, imports
            await measure(route, 32, 200)
        for _ in range(repetitions):
            for in_flight in (1, 32):
                for name, route in routes.items():
                    us, per_second = await measure(route, in_flight, count)
                    cpu.setdefault((name, in_flight), []).append(us)
                    rate.setdefault((name, in_flight), []).append(per_second)
        await upstream.close()
        await pool.close()
        if lean is not None:
            lean.close()
        print(f"medians over {repetitions} x {count} requests; CPU of this process per request")
        print("| route | in flight | CPU us/req | req/s | CPU / session |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for in_flight in (1, 32):
            base = statistics.median(cpu[("session", in_flight)])
            for name in routes:
                us = statistics.median(cpu[(name, in_flight)])
                per_second = statistics.median(rate[(name, in_flight)])
                print(f"| {name} | {in_flight} | {us:.0f} | {per_second:.0f} | {us / base:.2f} |")
    finally:
        await stop_processes([target.process], 5.0)


def main() -> int:
    """Run the benchmark or its target role."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--role", choices=("target",), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "target":
        asyncio.run(run_target())
    else:
        asyncio.run(benchmark(args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
