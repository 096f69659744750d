"""The event loop ``gateway run`` serves on: asyncio's own, or uvloop's where it is installed.

``event_loop`` in gateway.yaml (or ``gateway run --event-loop``) chooses: ``auto`` (the default)
takes uvloop when it can be imported and asyncio's loop otherwise; ``uvloop`` demands it, and a
host without it refuses to start (``gateway validate`` and ``gateway check`` say so first);
``asyncio`` keeps the standard library's loop. uvloop runs the loop's own work per iteration
(ready handles, timers, the poll for I/O, the transports' reads and writes) in C on libuv: the
whole gateway needed 3-10% less CPU per relayed request at 32 in flight and 5-13% at 1 in three
measurements (benchmarks/pipeline-report.md, "the event loop"). The dependency is declared only
where uvloop ships wheels (CPython on Linux and macOS), so ``auto`` is asyncio's loop elsewhere.

Only uvloop's public API is used: :func:`uvloop.new_event_loop` as the ``loop_factory`` of an
:class:`asyncio.Runner`, exactly as ``asyncio.run`` would use its own, so everything above the
loop (signal handlers, subprocesses, TLS, the default executor, shutdown) goes through asyncio's
documented interface whichever loop runs it. The choice is made once per process, before the
loop starts: a reload that changes ``event_loop`` takes effect at the next restart.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args

from gateway.errors import GatewayError

__all__ = [
    "CHOICES",
    "Choice",
    "EventLoop",
    "EventLoopUnavailableError",
    "in_use",
    "pick",
    "problem",
    "run",
]

Choice = Literal["auto", "asyncio", "uvloop"]
CHOICES: tuple[str, ...] = get_args(Choice)
T = TypeVar("T")


class EventLoopUnavailableError(GatewayError):
    """``event_loop: uvloop`` on a host where uvloop cannot be imported."""


@dataclass(frozen=True)
class EventLoop:
    """The loop a process will run: its ``name``, the ``choice`` that led to it, and how to make
    one (``factory``, for :class:`asyncio.Runner`)."""

    name: Literal["asyncio", "uvloop"]
    choice: Choice
    factory: Callable[[], asyncio.AbstractEventLoop]
    version: str = ""
    why: str = ""
    """Why ``auto`` fell back to asyncio's loop (empty otherwise)."""

    def describe(self) -> str:
        """``uvloop 0.23.0`` or ``asyncio``: the loop as the log and ``gateway check`` name it."""
        return f"{self.name} {self.version}" if self.version else self.name


def _uvloop() -> tuple[Any, str]:
    """The uvloop module, or None and why it cannot be imported."""
    try:
        import uvloop
    except ImportError as exc:
        return None, str(exc) or type(exc).__name__
    return uvloop, ""


def pick(choice: Choice) -> EventLoop:
    """The loop ``choice`` means on this host; raises :class:`EventLoopUnavailableError` when it
    demands uvloop and uvloop cannot be imported (never a silent fallback: the operator asked
    for it by name)."""
    if choice == "asyncio":
        return EventLoop("asyncio", choice, asyncio.new_event_loop)
    module, missing = _uvloop()
    if module is None:
        if choice == "uvloop":
            raise EventLoopUnavailableError(_unavailable(missing))
        return EventLoop(
            "asyncio", choice, asyncio.new_event_loop, why=f"uvloop is not available: {missing}"
        )
    factory: Callable[[], asyncio.AbstractEventLoop] = module.new_event_loop
    return EventLoop("uvloop", choice, factory, version=str(module.__version__))


def problem(choice: Choice) -> str | None:
    """What is wrong with ``choice`` on this host (the message :func:`pick` raises), or None.
    Only ``uvloop`` can be wrong: ``auto`` falls back by definition."""
    if choice != "uvloop":
        return None
    try:
        pick(choice)
    except EventLoopUnavailableError as exc:
        return str(exc)
    return None


def _unavailable(missing: str) -> str:
    return (
        f"the uvloop event loop is required but cannot be imported ({missing}); install uvloop "
        f"(a dependency on CPython for Linux and macOS) or choose auto"
    )


def run(main: Coroutine[Any, Any, T], loop: EventLoop) -> T:
    """Run ``main`` to completion on a new loop of ``loop``'s kind, as :func:`asyncio.run` does
    (cancel what is left, close asynchronous generators and the default executor, close)."""
    with asyncio.Runner(loop_factory=loop.factory) as runner:
        return runner.run(main)


def in_use() -> str:
    """The running loop as :meth:`EventLoop.describe` names it (``/readyz``, ``gateway_info``):
    read from the loop itself, so it is true however the process was started."""
    loop = asyncio.get_running_loop()
    # uvloop.Loop is the public class of its loops; the module is in sys.modules when one runs.
    uvloop = sys.modules.get("uvloop")
    if uvloop is not None and isinstance(loop, uvloop.Loop):
        return f"uvloop {uvloop.__version__}"
    if type(loop).__module__.startswith("asyncio."):
        return "asyncio"
    return f"{type(loop).__module__}.{type(loop).__qualname__}"
