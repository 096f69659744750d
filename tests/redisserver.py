"""A real ``redis-server`` (Debian package) for tests: loopback, a free port, a temp directory.

redis-server cannot report a port it picked itself, so it is given one and started again on
another when that one turns out taken (:mod:`gateway.devkit.ports`).

The server requires a password (``AUTH``), keeps its data in an append-only file fsynced at
every write (so a restart keeps every nonce, as a production server with persistence would;
``fsync`` sets redis's ``appendfsync`` otherwise) unless ``persistent=False``, and can be
stopped and started again on the same port to show what the gateway does while its replay store
is down. With ``tls=True`` it serves TLS only (``tls-port``), with a trustme certificate for
``127.0.0.1`` whose CA is written to ``ca_file``; with ``also_tls=True`` it serves plain
``port`` and TLS ``tls_port`` side by side, so one server can answer a whole test module.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trustme

from gateway.devkit.ports import (
    PortTaken,
    ServerStartError,
    loopback_ports,
    start_on_free_ports,
    stop_process,
    tail,
    wait_started,
)

PASSWORD = "replay-test-secret"
_START_TIMEOUT = 30.0


class RedisServer:
    """One ``redis-server`` process under the test's control."""

    def __init__(
        self,
        directory: Path,
        *,
        persistent: bool = True,
        tls: bool = False,
        also_tls: bool = False,
        ports: Sequence[int] | None = None,
        fsync: str = "always",
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (.ci/run installs it)")
        self.binary = binary
        self.directory = directory
        self.persistent = persistent
        self.fsync = fsync
        self.process: subprocess.Popen[bytes] | None = None
        self.tls = tls
        self.also_tls = also_tls
        # The first start takes these ports (or others, if they are taken: see start); a restart
        # keeps the ones it took. Until then they are ports held by nobody (for tests that need
        # a redis that does not answer, ``ports`` can name one the test holds).
        self._first = list(ports) if ports is not None else loopback_ports(2 if also_tls else 1)
        self._started = False
        self.port = self._first[0]
        self.tls_port = self._first[1] if also_tls else None
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
        """Start the server and wait until it answers ``PING``.

        The first start retries on other ports while the chosen ones turn out taken (see
        :mod:`gateway.devkit.ports`); a restart must get the same port back, so it fails then.
        """
        if self._started:
            try:
                self._launch([self.port] if self.tls_port is None else [self.port, self.tls_port])
            except PortTaken as taken:
                raise ServerStartError(
                    f"redis-server could not get port {self.port} back:\n{tail(taken.output)}"
                ) from None
            return
        ports = start_on_free_ports(
            self._launch, name="redis-server", count=len(self._first), first=self._first
        )
        self.port = ports[0]
        self.tls_port = ports[1] if self.also_tls else None
        self._started = True

    def _launch(self, ports: list[int]) -> list[int]:
        log = self.directory / "redis.log"
        certificate = (
            "--tls-cert-file", str(self.directory / "redis-cert.pem"),
            "--tls-key-file", str(self.directory / "redis-key.pem"),
            "--tls-ca-cert-file", str(self.ca_file), "--tls-auth-clients", "no",
        )  # fmt: skip
        if self.tls:
            listen: tuple[str, ...] = ("--port", "0", "--tls-port", str(ports[0]), *certificate)
        elif self.also_tls:
            listen = ("--port", str(ports[0]), "--tls-port", str(ports[1]), *certificate)
        else:
            listen = ("--port", str(ports[0]))
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            *listen,
            "--dir", str(self.directory),
            "--requirepass", PASSWORD,
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            "--appendfsync", self.fsync,
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--logfile", str(log),
        ]  # fmt: skip
        # Each start's log on its own: a port taken in an earlier start is not this one's.
        log.unlink(missing_ok=True)
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL)

        def output() -> str:
            return log.read_text(errors="replace") if log.exists() else ""

        def ready() -> bool:
            # Redis logs this once every listener is bound; the PING shows it answers (and, over
            # TLS, that the certificate works).
            return "Ready to accept connections" in output() and self._pong(ports[0])

        wait_started(
            process,
            ready,
            output,
            name="redis-server",
            timeout=_START_TIMEOUT,
            stop=lambda: stop_process(process, _START_TIMEOUT, graceful=False),
        )
        self.process = process
        return ports

    def _pong(self, port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                conn = (
                    self._client_context.wrap_socket(raw, server_hostname="127.0.0.1")
                    if self._client_context is not None
                    else raw
                )
                conn.sendall(f"AUTH {PASSWORD}\r\nPING\r\n".encode())
                return b"PONG" in conn.recv(100)
        except OSError:
            return False

    def replay_store(self, password: dict[str, str], **options: Any) -> dict[str, Any]:
        """The ``signatures.replay_store`` section of a gateway keeping its nonces here (plain
        port); ``password`` is a secret reference, ``options`` more keys of the ``redis`` part."""
        redis = {"host": "127.0.0.1", "port": self.port, "tls": False, "password": password}
        return {"kind": "redis", "redis": {**redis, **options}}

    def stop(self) -> None:
        """Stop the server (SIGTERM; it flushes its append-only file first)."""
        if self.process is not None:
            stop_process(self.process, _START_TIMEOUT, graceful=True)
        self.process = None
