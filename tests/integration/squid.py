"""Run Debian's real ``squid`` on 127.0.0.1 as the outbound proxy in the integration tests.

Shared by the relay and the control-plane (identity) tests: both kinds of outbound traffic go
through the same proxy code, so both are proven against the same real proxy.

Each instance gets its own temporary directory with a generated ``squid.conf``: no cache, no disk
cache directories, PID file and logs inside the directory, DNS pointed at 127.0.0.1 so nothing ever
leaves the host, client access from 127.0.0.1 only and tunnels to 127.0.0.0/8 only. Destinations in
127.0.0.2/32 are refused on purpose (403) so tests can see a refused ``CONNECT``. With
``with_auth=True`` squid demands Basic credentials checked by ``basic_ncsa_auth`` against an
htpasswd file made here with ``openssl passwd -apr1``. squid cannot report a port it picked
itself, so it is given one and started again on another when that one turns out taken
(:mod:`gateway.devkit.ports`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.devkit.ports import start_on_free_ports, stop_process, wait_started

SQUID = shutil.which("squid") or "/usr/sbin/squid"
NCSA_HELPER = Path("/usr/lib/squid/basic_ncsa_auth")
USERNAME = "gw-agent"
PASSWORD = "s3cret-proxy-pass"
REFUSED_NETWORK = "127.0.0.2/32"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Squid:
    """A running squid: where it listens and where it logs."""

    port: int
    workdir: Path
    with_auth: bool

    @property
    def url(self) -> str:
        """The proxy URL to configure (``http://127.0.0.1:PORT``)."""
        return f"http://127.0.0.1:{self.port}"

    def access_log(self) -> str:
        """The access log so far (one line per proxied request or tunnel)."""
        path = self.workdir / "access.log"
        return path.read_text() if path.exists() else ""

    async def wait_for_log(self, needle: str, within: float = 30.0, *, count: int = 1) -> str:
        """The access log once ``needle`` shows ``count`` times in it (or ``within`` seconds
        passed). Squid logs a tunnel when it ends, so each line may come some time after the
        request it records."""
        deadline = time.monotonic() + within
        while True:
            log = self.access_log()
            if log.count(needle) >= count or time.monotonic() > deadline:
                return log
            await asyncio.sleep(0.02)


def squid_unavailable_reason() -> str | None:
    """Why squid tests cannot run here, or ``None`` when they can."""
    if not Path(SQUID).exists():
        return "squid is not installed (CI installs it with `apt-get install -y squid`)"
    if not NCSA_HELPER.exists():
        return f"{NCSA_HELPER} is missing (package squid)"
    if shutil.which("openssl") is None:
        return "openssl is needed to write the squid htpasswd file"
    return None


def _write_config(workdir: Path, port: int, with_auth: bool) -> Path:
    lines = [
        f"http_port 127.0.0.1:{port}",
        f"pid_filename {workdir / 'squid.pid'}",
        f"cache_log {workdir / 'cache.log'}",
        f"access_log stdio:{workdir / 'access.log'}",
        f"coredump_dir {workdir}",
        "netdb_filename none",
        "cache deny all",
        "cache_mem 0 MB",
        "dns_nameservers 127.0.0.1",
        "pinger_enable off",
        "shutdown_lifetime 0 seconds",
        "acl local_client src 127.0.0.1/32",
        "acl loopback_dst dst 127.0.0.0/8",
        f"acl refused_dst dst {REFUSED_NETWORK}",
        "http_access deny !local_client",
        "http_access deny refused_dst",
        "http_access deny !loopback_dst",
    ]
    if os.geteuid() == 0:
        # squid refuses to run as root; it drops to this account after reading the config.
        lines.append("cache_effective_user proxy")
    if with_auth:
        hashed = subprocess.run(
            ["openssl", "passwd", "-apr1", PASSWORD],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        htpasswd = workdir / "htpasswd"
        htpasswd.write_text(f"{USERNAME}:{hashed}\n")
        htpasswd.chmod(0o644)
        lines += [
            f"auth_param basic program {NCSA_HELPER} {htpasswd}",
            "auth_param basic children 2 startup=1 idle=1",
            "auth_param basic realm gateway-test",
            "acl authenticated proxy_auth REQUIRED",
            "http_access allow authenticated",
        ]
    else:
        lines.append("http_access allow local_client")
    lines.append("http_access deny all")
    config = workdir / "squid.conf"
    config.write_text("\n".join(lines) + "\n")
    return config


def _launch(workdir: Path, port: int, with_auth: bool) -> subprocess.Popen[bytes]:
    """squid on ``port``, once it accepts connections there (PortTaken if another process holds
    the port: squid then says so in cache.log and exits)."""
    config = _write_config(workdir, port, with_auth)
    log = workdir / "cache.log"
    log.unlink(missing_ok=True)  # an earlier attempt's log is not this one's
    proc = subprocess.Popen(
        [SQUID, "-N", "-f", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def output() -> str:
        return log.read_text(errors="replace") if log.exists() else ""

    def ready() -> bool:
        # squid logs this once its own socket listens; the connection shows it is reachable.
        if "Accepting HTTP Socket connections at conn" not in output():
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 5):
            return True
        return False

    wait_started(proc, ready, output, name="squid", timeout=START_TIMEOUT, stop=lambda: _stop(proc))
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    # A graceful SIGTERM costs squid two seconds even with shutdown_lifetime 0; this instance keeps
    # no cache or state worth flushing, and its auth helpers exit on EOF when it dies.
    stop_process(proc, STOP_TIMEOUT, graceful=False)


@contextlib.contextmanager
def run_squid(*, with_auth: bool, first_port: int | None = None) -> Iterator[Squid]:
    """Start squid in the foreground on a free loopback port (``first_port`` first, when given;
    another if that one is taken), yield it, stop it."""
    workdir = Path(tempfile.mkdtemp(prefix="gw-squid-"))
    try:
        if os.geteuid() == 0:
            # Logs and the auth helper run as the unprivileged account.
            shutil.chown(workdir, user="proxy")

        def launch(ports: list[int]) -> tuple[subprocess.Popen[bytes], int]:
            return _launch(workdir, ports[0], with_auth), ports[0]

        proc, port = start_on_free_ports(
            launch, name="squid", first=None if first_port is None else [first_port]
        )
        try:
            yield Squid(port=port, workdir=workdir, with_auth=with_auth)
        finally:
            _stop(proc)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def squid_for_fixture(*, with_auth: bool) -> Iterator[Squid]:
    """Body of a squid fixture: skip the requesting test if squid cannot run, else run one."""
    reason = squid_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with run_squid(with_auth=with_auth) as proxy:
        yield proxy
