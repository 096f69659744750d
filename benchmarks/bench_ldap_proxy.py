"""LDAP through the gateway: search operations per second and gateway CPU per operation.

Three paths in one run, against one slapd (the devkit's sample directory with ``--people``
entries under ``ou=People``, TLS on loopback):

* ``ldap-proxy``: ldap3 -> the devkit SaaS's loopback port -> inner TLS -> relay emulator ->
  ``gateway run`` (LDAP target: every PDU decoded and decided, entries checked for stripping,
  the gateway's own TLS to slapd);
* ``ldap-proxy-new``: the same, but every search of the run is of a person no earlier search
  named, so no verdict comes from the cache (``ldap-proxy`` repeats the same people in every
  sample, as a sync job does, so from its second sample on its verdicts are cached);
* ``tcp-stream``: the same relay path to a ``tcp`` target on slapd's ldaps port: the gateway
  splices bytes it cannot read, ldap3 does TLS with slapd end to end;
* ``direct``: ldap3 to slapd's ldaps port, no gateway.

Each sample is one ldap3 connection (bound as the service account; through the proxy by the
``inventory`` bind identity) doing ``--searches`` base-scope searches of one person entry each,
one after another. The gateway's CPU is user + system time of the ``gateway run`` process from
``/proc/PID/stat`` across the sample, divided by the operations; the paths alternate, and each
figure is the median of ``--rounds`` samples. Then one search returns every entry of
``ou=People`` through the proxy while the gateway's resident memory is sampled every 20 ms:
memory stays bounded if the peak stays near the idle figure, whatever the number of entries.

    .venv/bin/python benchmarks/bench_ldap_proxy.py --people 10000 --rounds 5 --searches 300

``--profile FILE`` runs the gateway under cProfile and leaves its statistics in FILE.

Needs slapd (Debian ``slapd``) and ldap3; writes a Markdown report to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness import cpu_seconds, rss_mb, stop_processes
from ldap3 import BASE, NONE, SUBTREE, Connection, Server, Tls

from gateway.devkit.slapd import (
    BIND_IDENTITY,
    SERVICE_DN,
    SERVICE_PASSWORD,
    SUFFIX,
    Slapd,
    directory_target,
    sample_directory,
    unavailable_reason,
)
from gateway.devkit.stack import DevStack

ROOT = Path(__file__).resolve().parents[1]
IO_TIMEOUT = 120  # an int: ldap3 packs receive_timeout into SO_RCVTIMEO
PATHS = ("ldap-proxy", "ldap-proxy-new", "tcp-stream", "direct")
# ldap-proxy-new searches people from here on, a new one for every search of the run, so that
# none of its decisions can come from the verdict cache.
NEW_DNS_FROM = 5000


@dataclass
class Sample:
    operations: int
    seconds: float
    gateway_cpu: float | None

    @property
    def rate(self) -> float:
        return self.operations / self.seconds

    @property
    def cpu_us(self) -> float | None:
        return None if self.gateway_cpu is None else self.gateway_cpu / self.operations * 1e6


@dataclass
class Results:
    samples: dict[str, list[Sample]] = field(default_factory=lambda: {p: [] for p in PATHS})
    big_entries: int = 0
    big_seconds: float = 0.0
    big_cpu: float = 0.0
    rss_idle: float = 0.0
    rss_peak: float = 0.0

    def median(self, path: str, what: Callable[[Sample], float | None]) -> float | None:
        values = [v for v in map(what, self.samples[path]) if v is not None]
        return statistics.median(values) if values else None


def _connection(port: int, *, ca_file: Path | None, proxy: bool) -> Connection:
    tls = Tls(ca_certs_file=str(ca_file), validate=ssl.CERT_REQUIRED) if ca_file else None
    server = Server(
        "127.0.0.1", port=port, use_ssl=tls is not None, tls=tls, get_info=NONE, connect_timeout=30
    )
    # Through the proxy: the bind identity's name (the gateway binds with the stored password).
    user, password = (BIND_IDENTITY, "placeholder") if proxy else (SERVICE_DN, SERVICE_PASSWORD)
    connection = Connection(server, user, password, receive_timeout=IO_TIMEOUT)
    connection.open()
    if not connection.bind():
        raise RuntimeError(f"bind failed: {connection.result}")
    return connection


def _searches(connection: Connection, count: int, people: int, offset: int) -> None:
    for index in range(offset, offset + count):
        base = f"uid=user{index % people},ou=People,{SUFFIX}"
        if not connection.search(base, "(objectClass=*)", BASE, attributes=["cn", "mail"]):
            raise RuntimeError(f"search failed: {connection.result}")
        if len(connection.response) != 1:
            raise RuntimeError(f"search returned {len(connection.response)} entries")


async def _sample(
    path: str,
    port: int,
    *,
    ca_file: Path | None,
    pid: int,
    searches: int,
    people: int,
    offset: int = 0,
) -> Sample:
    def work() -> float:
        connection = _connection(port, ca_file=ca_file, proxy=path.startswith("ldap-proxy"))
        try:
            started = time.perf_counter()
            _searches(connection, searches, people, offset)
            return time.perf_counter() - started
        finally:
            connection.unbind()

    # Warm the connection path (stream, handshakes, bind) outside the timed part: the bind is
    # not a search, and the CPU is read around the whole sample, so the per-operation figure
    # includes one stream's opening spread over --searches operations.
    before = cpu_seconds(pid)
    seconds = await asyncio.to_thread(work)
    after = cpu_seconds(pid)
    return Sample(searches, seconds, None if path == "direct" else after - before)


async def _big_search(port: int, pid: int, results: Results) -> None:
    stop = threading.Event()
    peaks: list[float] = []

    async def watch() -> None:
        while not stop.is_set():
            peaks.append(rss_mb(pid))
            await asyncio.sleep(0.02)

    def work() -> int:
        connection = _connection(port, ca_file=None, proxy=True)
        try:
            # One search, every entry: the SaaS reads as fast as it can; the gateway has to
            # pass 10,000 entries without holding them.
            if not connection.search(
                f"ou=People,{SUFFIX}",
                "(objectClass=inetOrgPerson)",
                SUBTREE,
                attributes=["cn", "mail", "uid"],
            ):
                raise RuntimeError(f"search failed: {connection.result}")
            return len(connection.response)
        finally:
            connection.unbind()

    results.rss_idle = rss_mb(pid)
    watcher = asyncio.create_task(watch())
    before = cpu_seconds(pid)
    started = time.perf_counter()
    try:
        results.big_entries = await asyncio.to_thread(work)
    finally:
        stop.set()
        await watcher
    results.big_seconds = time.perf_counter() - started
    results.big_cpu = cpu_seconds(pid) - before
    results.rss_peak = max(peaks, default=results.rss_idle)


async def benchmark(
    people: int, rounds: int, searches: int, profile: Path | None = None
) -> Results:
    results = Results()
    with tempfile.TemporaryDirectory(prefix="bench-ldap-") as temp:
        workdir = Path(temp)
        with sample_directory(workdir / "slapd", people=people) as slapd:
            await _with_gateway(workdir, slapd, results, rounds, searches, people, profile)
    return results


async def _with_gateway(
    workdir: Path,
    slapd: Slapd,
    results: Results,
    rounds: int,
    searches: int,
    people: int,
    profile: Path | None,
) -> None:
    ca_file = workdir / "slapd" / "ca.pem"
    gateway_dir = workdir / "gateway"
    gateway_dir.mkdir()
    (gateway_dir / "directory-ca.pem").write_bytes(ca_file.read_bytes())
    password = gateway_dir / "directory-password"
    password.write_text(SERVICE_PASSWORD + "\n")
    password.chmod(0o600)
    async with DevStack("bench-ldap") as stack:
        targets = {
            "corp-directory": directory_target(
                slapd, ca_file="directory-ca.pem", password_file="directory-password"
            ),
            # The same slapd port by another name (one host:port is one target).
            "raw-directory": {
                "scheme": "tcp",
                "host": "localhost",
                "port": slapd.ldaps_port,
                "allowed_cidrs": ["127.0.0.1/32"],
                "allow_special_addresses": True,
            },
        }
        document = stack.gateway_document(targets)
        document["observability"] = {"enabled": False}
        document["logging"]["level"] = "warning"
        config = stack.write_gateway_dir(gateway_dir, document=document)
        await stack.register_gateway(gateway_dir)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        with (gateway_dir / "gateway.log").open("wb") as log:
            # --profile: the gateway under cProfile (written when it stops on SIGTERM).
            profiler = ("-m", "cProfile", "-o", str(profile)) if profile else ()
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                *profiler,
                *("-m", "gateway", "run", "-c", str(config), "--allow-root"),
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        try:
            try:
                async with asyncio.timeout(60):
                    await stack.relay.wait_for_listeners(stack.hc, 2)
            except TimeoutError:
                tail = (gateway_dir / "gateway.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the gateway did not start:\n{tail}") from None
            async with (
                stack.saas() as saas,
                saas.ldap_endpoint("corp-directory") as proxy_port,
                saas.ldap_endpoint("raw-directory", inner_tls=False) as raw_port,
            ):
                ports = {
                    "ldap-proxy": proxy_port,
                    "ldap-proxy-new": proxy_port,
                    "tcp-stream": raw_port,
                    "direct": 0,
                }
                cas = {
                    "ldap-proxy": None,
                    "ldap-proxy-new": None,
                    "tcp-stream": ca_file,
                    "direct": ca_file,
                }
                ports["direct"] = slapd.ldaps_port
                # One unmeasured sample per path: imports, caches, first handshakes.
                for path in PATHS:
                    await _sample(
                        path,
                        ports[path],
                        ca_file=cas[path],
                        pid=process.pid,
                        searches=20,
                        people=people,
                    )
                fresh = NEW_DNS_FROM
                for _ in range(rounds):
                    for path in PATHS:
                        offset = 0
                        if path == "ldap-proxy-new":
                            offset, fresh = fresh, fresh + searches
                        results.samples[path].append(
                            await _sample(
                                path,
                                ports[path],
                                ca_file=cas[path],
                                pid=process.pid,
                                searches=searches,
                                people=people,
                                offset=offset,
                            )
                        )
                await _big_search(proxy_port, process.pid, results)
        finally:
            await stop_processes([process], 20)


def _fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def render(results: Results, command: str, people: int) -> str:
    lines = [
        "| path | searches/s (median) | gateway CPU per search (median) |",
        "| --- | --- | --- |",
    ]
    for path in PATHS:
        rate = results.median(path, lambda s: s.rate)
        cpu = results.median(path, lambda s: s.cpu_us)
        lines.append(f"| {path} | {_fmt(rate)} | {_fmt(cpu)} us |")
    raw = results.median("tcp-stream", lambda s: s.cpu_us)
    inspection = {}
    for path in ("ldap-proxy", "ldap-proxy-new"):
        proxy = results.median(path, lambda s: s.cpu_us)
        inspection[path] = None if proxy is None or raw is None else proxy - raw
    per_entry = results.big_cpu / results.big_entries * 1e6 if results.big_entries else None
    lines += [
        "",
        f"Inspection cost (ldap-proxy minus tcp-stream, gateway CPU per search): "
        f"{_fmt(inspection['ldap-proxy'])} us with the DNs searched before (verdicts cached), "
        f"{_fmt(inspection['ldap-proxy-new'])} us with DNs never searched before (ldap-proxy-new).",
        "",
        f"One search returning all {results.big_entries:,} entries of ou=People through the "
        f"proxy: {results.big_seconds:.1f} s, gateway CPU {results.big_cpu:.2f} s "
        f"({_fmt(per_entry)} us per entry); gateway RSS {results.rss_idle:.1f} MiB before, "
        f"peak {results.rss_peak:.1f} MiB during (+{results.rss_peak - results.rss_idle:.1f}).",
        "",
        f"Directory: {people:,} people. Command: `{command}`",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--searches", type=int, default=300)
    parser.add_argument(
        "--profile", type=Path, help="run the gateway under cProfile, writing stats to this file"
    )
    args = parser.parse_args(argv)
    if args.people < NEW_DNS_FROM + (args.rounds + 1) * args.searches:
        print(f"--people must leave room for ldap-proxy-new above {NEW_DNS_FROM}", file=sys.stderr)
        return 2
    reason = unavailable_reason()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    profile = args.profile.resolve() if args.profile else None
    results = asyncio.run(benchmark(args.people, args.rounds, args.searches, profile))
    command = "benchmarks/bench_ldap_proxy.py " + " ".join(sys.argv[1:])
    print(render(results, command.strip(), args.people))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
