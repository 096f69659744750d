"""Settings for the whole test suite.

No test may depend on how fast the machine is: the suite runs on busy 2-core machines, and CI
runs the security and pipeline suites a second time beside a CPU hog (``make test-loaded``).
Hypothesis therefore never fails an example for taking long (``deadline=None``) and never
refuses to run because data generation was slow (``HealthCheck.too_slow``); a test that hangs is
still stopped by pytest-timeout. Timings belong in benchmarks/.

``TEST_EVENT_LOOP=uvloop`` (not a ``GATEWAY_*`` name: the configuration loader would report it as
an unknown override) runs every asynchronous test, and so every agent, relay listener,
forward and server the tests start in their own process, on uvloop's event loop instead of
asyncio's: the loop ``gateway run`` serves on by default wherever uvloop is installed
(:mod:`gateway.eventloop`). CI runs the suites that exercise the loop's own work (sockets, TLS,
timers) once more so (``make test-uvloop``). The ``gateway run`` processes the tests start pick
their loop themselves (``event_loop: auto``: uvloop where it is installed), signals, workers and
the policy planner's child process included.

Under the mutation tool (``make mutation``, which sets ``MUTANT_UNDER_TEST`` before any test
module is imported) Hypothesis draws the same examples on every run, so that a mutant is killed or
survives the same way each time and the committed report can be reproduced.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Mapping

import pytest
from hypothesis import HealthCheck, settings

from gateway.devkit import ports

TEST_LOOP = os.environ.get("TEST_EVENT_LOOP", "asyncio")
if TEST_LOOP not in ("asyncio", "uvloop"):
    raise pytest.UsageError(f"TEST_EVENT_LOOP must be asyncio or uvloop, not {TEST_LOOP!r}")
if TEST_LOOP == "uvloop":
    import asyncio

    import uvloop

    # pytest-asyncio's hook for the loops a test runs on: one factory, so nothing is doubled.
    def pytest_asyncio_loop_factories(
        config: pytest.Config, item: pytest.Item
    ) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
        """Every asynchronous test on uvloop's loop (``TEST_EVENT_LOOP=uvloop``)."""
        return {"uvloop": uvloop.new_event_loop}


settings.register_profile(
    "gateway",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "mutation",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
    database=None,
)
settings.load_profile("mutation" if "MUTANT_UNDER_TEST" in os.environ else "gateway")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the files that hold a test marked ``slow`` first, every file's tests in their order.

    ``make test`` spreads the suite over one pytest-xdist worker per core, a file at a time
    (``--dist loadfile``: a file's tests share module-scoped servers and processes, and some
    follow one process through its life in order). A long file handed out last would keep one
    worker busy while the others have nothing left to do; handed out first, the short files
    fill in beside it. The order is the same in every worker, as pytest-xdist requires.
    """
    slow = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in slow)  # stable: the rest keeps its order


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port where connections are refused for as long as the test runs
    (gateway.devkit.ports.refused_port)."""
    with ports.refused_port() as port:
        yield port


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port the test listens on for as long as it runs: a server started on it must
    find it taken (gateway.devkit.ports)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])
