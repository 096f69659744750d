"""A real ``redis-server`` (Debian package) for tests: loopback, a free port, a temp directory.

The server requires a password (``AUTH``), keeps its data in an append-only file fsynced at
every write (so a restart keeps every nonce, as a production server with persistence would) unless
``persistent=False``, and can be stopped and started again on the same port to show what the
gateway does while its replay store is down. With ``tls=True`` it serves TLS only (``tls-port``),
with a trustme certificate for ``127.0.0.1`` whose CA is written to ``ca_file``; with
``also_tls=True`` it serves plain ``port`` and TLS ``tls_port`` side by side, so one server can
answer a whole test module.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import trustme

PASSWORD = "replay-test-secret"
_START_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process under the test's control."""

    def __init__(
        self,
        directory: Path,
        *,
        persistent: bool = True,
        tls: bool = False,
        also_tls: bool = False,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (.ci/run installs it)")
        self.binary = binary
        self.directory = directory
        self.persistent = persistent
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.tls = tls
        self.also_tls = also_tls
        self.tls_port = _free_port() if also_tls else None
        self.ca_file = directory / "redis-ca.pem"
        self._client_context: ssl.SSLContext | None = None
        if tls or also_tls:
            ca = trustme.CA()
            cert = ca.issue_cert("127.0.0.1")
            ca.cert_pem.write_to_path(str(self.ca_file))
            cert.private_key_pem.write_to_path(str(directory / "redis-key.pem"))
            cert.cert_chain_pems[0].write_to_path(str(directory / "redis-cert.pem"))
            if tls:
                self._client_context = ssl.create_default_context(cafile=str(self.ca_file))

    def start(self) -> None:
        """Start the server and wait until it answers ``PING``."""
        certificate = (
            "--tls-cert-file", str(self.directory / "redis-cert.pem"),
            "--tls-key-file", str(self.directory / "redis-key.pem"),
            "--tls-ca-cert-file", str(self.ca_file), "--tls-auth-clients", "no",
        )  # fmt: skip
        if self.tls:
            ports: tuple[str, ...] = ("--port", "0", "--tls-port", str(self.port), *certificate)
        elif self.tls_port is not None:
            ports = ("--port", str(self.port), "--tls-port", str(self.tls_port), *certificate)
        else:
            ports = ("--port", str(self.port))
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            *ports,
            "--dir", str(self.directory),
            "--requirepass", PASSWORD,
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            "--appendfsync", "always",
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"redis-server exited: {(self.directory / 'redis.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as raw:
                    conn = (
                        self._client_context.wrap_socket(raw, server_hostname="127.0.0.1")
                        if self._client_context is not None
                        else raw
                    )
                    conn.sendall(f"AUTH {PASSWORD}\r\nPING\r\n".encode())
                    if b"PONG" in conn.recv(100):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        pytest.fail("redis-server did not start")

    def stop(self) -> None:
        """Stop the server (SIGTERM; it flushes its append-only file first)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=_START_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
