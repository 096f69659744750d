"""The shared start-with-retries of servers that must be told their port, against a real child
process that binds the port it is given (as redis-server, squid and slapd do)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.devkit.ports import (
    ADDRESS_IN_USE,
    ServerStartError,
    refused_port,
    start_on_free_ports,
    start_on_free_ports_async,
    stop_process,
    wait_started,
)

# A server as the third-party ones behave: binds the port from its command line, says so once
# it listens, and fails with the system's message when it cannot bind.
LISTENS = """
import socket, sys, time
server = socket.socket()
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen()
print("listening", flush=True)
time.sleep(600)
"""
# One that logs the bind failure and keeps running (some servers only log it).
LOGS_AND_STAYS = """
import socket, sys, time
server = socket.socket()
try:
    server.bind(("127.0.0.1", int(sys.argv[1])))
except OSError as exc:
    print("cannot bind:", exc.strerror, flush=True)
    time.sleep(600)
server.listen()
print("listening", flush=True)
time.sleep(600)
"""
BROKEN = "import sys; print('configuration error: no such directive', flush=True); sys.exit(3)"
SILENT = "import time; time.sleep(600)"


class Toy:
    """Starts the script on the ports given; keeps every process it started."""

    def __init__(self, directory: Path, script: str, *, timeout: float = 60.0) -> None:
        self.directory = directory
        self.script = script
        self.timeout = timeout
        self.processes: list[subprocess.Popen[bytes]] = []

    def launch(self, ports: list[int]) -> tuple[subprocess.Popen[bytes], int]:
        log = self.directory / f"attempt-{len(self.processes)}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-c", self.script, str(ports[0])],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)

        def output() -> str:
            return log.read_text(errors="replace")

        wait_started(
            process,
            lambda: "listening" in output(),
            output,
            name="toy",
            timeout=self.timeout,
            stop=lambda: stop_process(process, 10, graceful=False),
        )
        return process, ports[0]

    def stop(self) -> None:
        for process in self.processes:
            stop_process(process, 10, graceful=False)


@pytest.mark.parametrize("script", [LISTENS, LOGS_AND_STAYS], ids=["exits", "stays"])
def test_a_taken_port_is_replaced_by_another(tmp_path: Path, taken_port: int, script: str) -> None:
    toy = Toy(tmp_path, script)
    try:
        process, port = start_on_free_ports(toy.launch, name="toy", first=[taken_port])
        assert port != taken_port
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass
        assert len(toy.processes) == 2
        # The first attempt is stopped and reaped; the second one serves.
        assert toy.processes[0].returncode is not None
        assert process is toy.processes[1]
        assert process.poll() is None
    finally:
        toy.stop()


def test_a_coroutine_start_is_retried_the_same_way(tmp_path: Path, taken_port: int) -> None:
    toy = Toy(tmp_path, LISTENS)

    async def launch(ports: list[int]) -> tuple[subprocess.Popen[bytes], int]:
        return await asyncio.to_thread(toy.launch, ports)

    try:
        start = start_on_free_ports_async(launch, name="toy", first=[taken_port])
        _, port = asyncio.run(start)
        assert port != taken_port
        assert [p.poll() is None for p in toy.processes] == [False, True]
    finally:
        toy.stop()


def test_after_the_last_attempt_the_error_quotes_the_server(
    tmp_path: Path, taken_port: int
) -> None:
    toy = Toy(tmp_path, LISTENS)
    try:
        with pytest.raises(ServerStartError, match="port taken on each of 1 attempts") as error:
            start_on_free_ports(toy.launch, name="toy", attempts=1, first=[taken_port])
        assert ADDRESS_IN_USE in str(error.value)
        assert [p.returncode is not None for p in toy.processes] == [True]
    finally:
        toy.stop()


def test_another_failure_is_not_retried(tmp_path: Path) -> None:
    toy = Toy(tmp_path, BROKEN)
    try:
        with pytest.raises(ServerStartError, match="toy exited with 3") as error:
            start_on_free_ports(toy.launch, name="toy")
        assert "no such directive" in str(error.value)
        assert len(toy.processes) == 1
    finally:
        toy.stop()


def test_a_server_that_never_serves_is_stopped(tmp_path: Path) -> None:
    toy = Toy(tmp_path, SILENT, timeout=0.5)
    try:
        with pytest.raises(ServerStartError, match=r"toy not ready in 0\.5 s"):
            start_on_free_ports(toy.launch, name="toy")
        assert len(toy.processes) == 1
        assert toy.processes[0].returncode is not None
    finally:
        toy.stop()


def test_an_answer_from_another_process_is_not_a_start(tmp_path: Path, taken_port: int) -> None:
    # The port answers (this test listens there) but the server itself exited: not started.
    toy = Toy(tmp_path, BROKEN)
    directory = tmp_path

    def launch(ports: list[int]) -> None:
        log = directory / "broken.log"
        with log.open("wb") as sink:
            process = subprocess.Popen([sys.executable, "-c", BROKEN], stdout=sink)
        toy.processes.append(process)
        process.wait(30)

        def answers() -> bool:
            with socket.create_connection(("127.0.0.1", ports[0]), timeout=10):
                return True

        wait_started(
            process,
            answers,
            lambda: log.read_text(),
            name="toy",
            timeout=30,
            stop=lambda: stop_process(process, 10, graceful=False),
        )

    try:
        with pytest.raises(ServerStartError, match="toy exited with 3"):
            start_on_free_ports(launch, name="toy", first=[taken_port])
    finally:
        toy.stop()


def test_a_refused_port_refuses_and_no_other_socket_can_take_it() -> None:
    with refused_port() as port:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
        with socket.socket() as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError, match=ADDRESS_IN_USE):
                other.bind(("127.0.0.1", port))
