"""``gateway run``: run the agent until SIGTERM or SIGINT.

SIGHUP reloads the configuration (so does saving the file). The first SIGTERM/SIGINT stops taking
new work and drains in-flight requests within the grace period; a second one stops at once.
With ``workers`` above 1 this process supervises that many worker processes
(:mod:`gateway.supervisor`): the signals then apply to all of them together.
Exit codes: 0 stopped cleanly, 1 invalid configuration, 4 identity missing or unusable,
5 could not start. The agent refuses to run as root unless ``--allow-root`` is given: it needs no
privileges, and a compromised process should hold none.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import config as gwconfig
from gateway import eventloop
from gateway.commands._common import add_config_argument, config_path, forbid_core_dumps
from gateway.config.capacity import worker_count
from gateway.errors import ConfigError
from gateway.eventloop import EventLoop, EventLoopUnavailableError
from gateway.observability import logs
from gateway.release import read_snapshot
from gateway.service import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_START,
    Agent,
    AgentOptions,
    StartError,
    WorkerRole,
    stop_on_signals,
)
from gateway.statefile import StateDirInUseError, hold_run_lock

if TYPE_CHECKING:
    from gateway.supervisor import SupervisorOptions

log = logging.getLogger("gateway")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``run`` verb."""
    parser = subparsers.add_parser("run", help="run the gateway agent")
    add_config_argument(parser)
    parser.add_argument(
        "--allow-root", action="store_true", help="run even as root (not recommended)"
    )
    parser.add_argument(
        "--event-loop",
        choices=eventloop.CHOICES,
        help="the event loop to serve on, for this run instead of event_loop in gateway.yaml "
        "(auto: uvloop where it is installed, else asyncio's)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long in-flight requests may take to finish on SIGTERM (default 30)",
    )
    # How the supervisor of several workers starts each of them (gateway.supervisor); shown
    # so that a process list explains itself, not for operators to type.
    parser.add_argument(
        "--worker",
        type=_worker_role,
        metavar="INDEX/COUNT",
        help="set by the supervisor: run as worker INDEX of COUNT (workers > 1)",
    )
    parser.add_argument(
        "--worker-control",
        type=int,
        metavar="FD",
        help="set by the supervisor: the worker's control channel to it",
    )
    parser.add_argument(
        "--worker-snapshot",
        type=Path,
        metavar="FILE",
        help="set by the supervisor: the configuration bytes the other workers run",
    )
    parser.add_argument(
        "--worker-revision",
        metavar="REVISION",
        help="set by the supervisor: the revision --worker-snapshot must be",
    )
    parser.set_defaults(handler=run)


def _worker_role(text: str) -> WorkerRole:
    index, _, count = text.partition("/")
    try:
        role = WorkerRole(int(index), int(count))
    except ValueError:
        raise argparse.ArgumentTypeError("expected INDEX/COUNT") from None
    if not 1 <= role.index <= role.count:
        raise argparse.ArgumentTypeError("expected 1 <= INDEX <= COUNT")
    return role


def run(args: argparse.Namespace) -> int:
    """Load the logging settings, then hand over to the event loop."""
    forbid_core_dumps()  # before any secret is read
    path = config_path(args)
    role: WorkerRole | None = args.worker
    fields = {"worker": role.index} if role is not None else None
    workers = 1
    configured: eventloop.Choice = "auto"
    state_dir: Path | None = None
    try:
        # A worker logs as the revision it will run (its supervisor's snapshot), not as the
        # file on disk, which may have been saved since.
        source = read_snapshot(args.worker_snapshot).source if args.worker_snapshot else None
        loaded = gwconfig.load(path, check_host=False, source=source)
        config = loaded.config
        logs.configure(config.logging.level, config.logging.format, fields=fields)
        workers = worker_count(config)
        configured = config.event_loop
        state_dir = loaded.resolve_path(config.gateway.state_dir)
    except ConfigError:
        logs.configure("info", "json", fields=fields)
    if hasattr(os, "geteuid") and os.geteuid() == 0 and not args.allow_root:
        log.error(
            "refusing to run as root; run as the gateway's service user (or pass --allow-root)",
            extra={"event": "refused_root"},
        )
        return EXIT_CONFIG
    if (role is None) != (args.worker_control is None):
        log.error(
            "--worker and --worker-control are set together, by the supervisor only",
            extra={"event": "start_failed"},
        )
        return EXIT_CONFIG
    if (args.worker_snapshot is None) != (args.worker_revision is None) or (
        role is None and args.worker_snapshot is not None
    ):
        log.error(
            "--worker-snapshot and --worker-revision are set together, by the supervisor only",
            extra={"event": "start_failed"},
        )
        return EXIT_CONFIG
    if role is None and state_dir is not None:
        # The gateway process takes its state directory; its workers share it under it. The
        # descriptor stays open, and the lock held, for the life of the process.
        try:
            hold_run_lock(state_dir)
        except StateDirInUseError as exc:
            log.error("cannot start: %s", exc, extra={"event": "start_failed"})
            return EXIT_START
    loop = _event_loop(args.event_loop, configured)
    if loop is None:
        return EXIT_CONFIG
    if role is not None and args.worker_control is not None:
        role = dataclasses.replace(
            role, snapshot=args.worker_snapshot, revision=args.worker_revision
        )
        # The supervisor and the worker's side of it only where workers run (issue 13, memory).
        from gateway.supervisor import serve_worker

        control = socket.socket(fileno=args.worker_control)
        options = AgentOptions(
            config_path=path, shutdown_grace=args.shutdown_grace, worker=role, settle_memory=True
        )
        return eventloop.run(serve_worker(options, control), loop)
    if workers > 1:
        from gateway.supervisor import SupervisorOptions

        return eventloop.run(
            _supervise(
                SupervisorOptions(
                    config_path=path,
                    count=workers,
                    shutdown_grace=args.shutdown_grace,
                    allow_root=args.allow_root,
                    event_loop=loop.name,
                )
            ),
            loop,
        )
    options = AgentOptions(config_path=path, shutdown_grace=args.shutdown_grace, settle_memory=True)
    return eventloop.run(_serve(options), loop)


def _event_loop(flag: eventloop.Choice | None, configured: eventloop.Choice) -> EventLoop | None:
    """The loop this process serves on (``--event-loop``, else ``event_loop``), logged; None
    (logged as the reason not to start) when it demands uvloop and uvloop cannot be imported."""
    choice = flag or configured
    source = "--event-loop" if flag else "event_loop"
    try:
        loop = eventloop.pick(choice)
    except EventLoopUnavailableError as exc:
        log.error("cannot start: %s %s: %s", source, choice, exc, extra={"event": "start_failed"})
        return None
    fallback = f"; {loop.why}" if loop.why else ""
    log.info(
        "event loop: %s (%s %s%s)",
        loop.describe(),
        source,
        choice,
        fallback,
        extra={"event": "event_loop", "event_loop": loop.name, "choice": choice},
    )
    return loop


async def _supervise(options: SupervisorOptions) -> int:
    from gateway.supervisor import Supervisor

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    supervisor = Supervisor(options)
    stop_on_signals(stop, at_once=supervisor.force)

    def on_reload() -> None:
        task = loop.create_task(supervisor.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    reloads: set[asyncio.Task[bool]] = set()
    loop.add_signal_handler(signal.SIGHUP, on_reload)
    try:
        await supervisor.start()
    except StartError as exc:
        log.error("cannot start: %s", exc, extra={"event": "start_failed"})
        await supervisor.stop()
        return exc.exit_code
    await stop.wait()
    await supervisor.stop()
    return EXIT_OK


async def _serve(options: AgentOptions) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    agent = Agent(options)
    stop_on_signals(stop)

    def on_reload() -> None:
        task = loop.create_task(agent.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    reloads: set[asyncio.Task[bool]] = set()
    if hasattr(signal, "SIGHUP"):
        loop.add_signal_handler(signal.SIGHUP, on_reload)
    try:
        await agent.start()
    except StartError as exc:
        log.error("cannot start: %s", exc, extra={"event": "start_failed"})
        await agent.stop()
        return exc.exit_code
    await stop.wait()
    await agent.stop()
    return EXIT_OK
