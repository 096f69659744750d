"""``gateway run``: run the agent until SIGTERM or SIGINT.

SIGHUP reloads the configuration (so does saving the file). The first SIGTERM/SIGINT stops taking
new work and drains in-flight requests within the grace period; a second one stops at once.
Exit codes: 0 stopped cleanly, 1 invalid configuration, 4 identity missing or unusable,
5 could not start. The agent refuses to run as root unless ``--allow-root`` is given: it needs no
privileges, and a compromised process should hold none.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

from gateway import config as gwconfig
from gateway.commands._common import add_config_argument, config_path
from gateway.errors import ConfigError
from gateway.observability import logs
from gateway.service import EXIT_CONFIG, EXIT_OK, Agent, AgentOptions, StartError

log = logging.getLogger("gateway")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``run`` verb."""
    parser = subparsers.add_parser("run", help="run the gateway agent")
    add_config_argument(parser)
    parser.add_argument(
        "--allow-root", action="store_true", help="run even as root (not recommended)"
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long in-flight requests may take to finish on SIGTERM (default 30)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Load the logging settings, then hand over to the event loop."""
    path = config_path(args)
    try:
        level = gwconfig.load(path, check_host=False).config.logging
        logs.configure(level.level, level.format)
    except ConfigError:
        logs.configure("info", "json")
    if hasattr(os, "geteuid") and os.geteuid() == 0 and not args.allow_root:
        log.error(
            "refusing to run as root; run as the gateway's service user (or pass --allow-root)",
            extra={"event": "refused_root"},
        )
        return EXIT_CONFIG
    return asyncio.run(_serve(AgentOptions(config_path=path, shutdown_grace=args.shutdown_grace)))


async def _serve(options: AgentOptions) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    agent = Agent(options)
    signals = 0

    def on_stop() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warning("second stop signal: exiting now", extra={"event": "forced_exit"})
            os._exit(EXIT_OK)
        log.info("stop requested: draining", extra={"event": "draining"})
        stop.set()

    def on_reload() -> None:
        task = loop.create_task(agent.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    reloads: set[asyncio.Task[bool]] = set()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop)
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
