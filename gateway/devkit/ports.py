"""Start a server that must be told its TCP port, on loopback, despite other processes.

The project's own servers bind port 0 and report the port the kernel gave them (``gateway run``
publishes its operator endpoint in the state directory). Third-party servers
(``slapd``, ``redis-server``, ``squid``) cannot: slapd reads ``:0`` as its scheme's default
port, and the others have no way to say which port they took. They get a port the kernel has
just handed out for port 0, released for them; between that release and their own ``bind(2)``
any other process may take it (a parallel test, another server started at the same moment).
The start is then retried on new ports a bounded number of times, and only for that reason: a
server that fails otherwise fails at once, with its own output.

A server's start function runs it on the ports it is given and returns once it serves, or
raises :class:`PortTaken` after stopping it when its output says the address was in use
(``EADDRINUSE``, which Linux spells "Address already in use"); :func:`wait_started` is that
wait, shared by every such server.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TypeVar

# Enough that losing every race in a row is out of the question on any machine, few enough that
# a server which cannot start for another reason still fails promptly.
START_ATTEMPTS = 5
OUTPUT_TAIL = 3000
# The text Linux (glibc and musl alike) gives EADDRINUSE in the servers' logs.
ADDRESS_IN_USE = os.strerror(errno.EADDRINUSE)

T = TypeVar("T")


class PortTaken(Exception):  # noqa: N818 - a condition, not an error: the caller retries
    """The server could not bind a port it was given: another process holds it."""

    def __init__(self, name: str, output: str) -> None:
        super().__init__(f"{name}: {ADDRESS_IN_USE}")
        self.output = output


class ServerStartError(RuntimeError):
    """A server did not start; the message ends with the tail of its own output."""


def loopback_ports(count: int) -> list[int]:
    """``count`` distinct 127.0.0.1 ports the kernel has just handed out (all bound together,
    so they differ, then released for the server)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A 127.0.0.1 port where connections are refused while the block runs, for tests of what
    happens when nothing listens. It stays bound by this process, without listening and without
    ``SO_REUSEADDR`` (Linux lets a second socket bind a port only when both set it), so no other
    process can start listening there meanwhile, as it could on a port bound and released."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield int(holder.getsockname()[1])


def tail(output: str) -> str:
    """The end of a server's output, as error messages quote it."""
    return output[-OUTPUT_TAIL:]


def start_on_free_ports(
    start: Callable[[list[int]], T],
    *,
    name: str,
    count: int = 1,
    attempts: int = START_ATTEMPTS,
    first: Sequence[int] | None = None,
) -> T:
    """``start(ports)`` with ``count`` fresh loopback ports (``first`` on the first attempt, when
    given), again with new ports while it raises :class:`PortTaken`, at most ``attempts`` times;
    raises :class:`ServerStartError` with the server's output after the last. Any other failure
    of ``start`` propagates at once."""
    output = ""
    for attempt in range(attempts):
        try:
            return start(_ports(attempt, count, first))
        except PortTaken as taken:
            output = taken.output
    raise _exhausted(name, attempts, output)


async def start_on_free_ports_async(
    start: Callable[[list[int]], Awaitable[T]],
    *,
    name: str,
    count: int = 1,
    attempts: int = START_ATTEMPTS,
    first: Sequence[int] | None = None,
) -> T:
    """:func:`start_on_free_ports` for a ``start`` that is a coroutine function."""
    output = ""
    for attempt in range(attempts):
        try:
            return await start(_ports(attempt, count, first))
        except PortTaken as taken:
            output = taken.output
    raise _exhausted(name, attempts, output)


def _ports(attempt: int, count: int, first: Sequence[int] | None) -> list[int]:
    return list(first) if first is not None and attempt == 0 else loopback_ports(count)


def _exhausted(name: str, attempts: int, output: str) -> ServerStartError:
    return ServerStartError(
        f"{name} found its port taken on each of {attempts} attempts; its output the last "
        f"time:\n{tail(output)}"
    )


def stop_process(process: subprocess.Popen[bytes], timeout: float, *, graceful: bool) -> None:
    """Stop ``process`` (SIGTERM when ``graceful``, SIGKILL if that is not enough within
    ``timeout`` seconds) and reap it."""
    if process.poll() is None:
        if graceful:
            process.terminate()
            try:
                process.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                pass
        process.kill()
    process.wait(timeout)


def wait_started(
    process: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    output: Callable[[], str],
    *,
    name: str,
    timeout: float,
    stop: Callable[[], None],
) -> None:
    """Poll ``ready()`` until it holds; ``output()`` is what the server wrote so far.

    When the server reports an address in use (whether it exits or not), ``stop()`` is called and
    :class:`PortTaken` raised; when it exits otherwise or is not ready within ``timeout``
    seconds, ``stop()`` is called and :class:`ServerStartError` raised. Either way no process is
    left behind. A server of another process answering on the port does not count: ``ready`` must
    hold while this process still runs, and is checked before the process is looked at.
    """
    deadline = time.monotonic() + timeout
    while True:
        if ready() and process.poll() is None:
            return
        exited = process.poll() is not None
        text = output()
        if ADDRESS_IN_USE in text:
            stop()
            raise PortTaken(name, text)
        if exited or time.monotonic() > deadline:
            stop()
            text = output()
            why = f"exited with {process.returncode}" if exited else f"not ready in {timeout} s"
            raise ServerStartError(f"{name} {why}; its output:\n{tail(text)}")
        time.sleep(0.05)
