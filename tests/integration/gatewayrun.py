"""A real ``gateway run`` process for the agent-level suites, ready once its listeners are up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

from gateway.devkit.stack import DevStack

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60
STOP_TIMEOUT = 20


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without ``GATEWAY_*`` overrides, plus ``extra``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return {**base, **(extra or {})}


@contextlib.asynccontextmanager
async def gateway_run(
    stack: DevStack,
    config: Path,
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    program: Sequence[str] = ("-m", "gateway"),
    args: Sequence[str] = (),
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run ``gateway run -c config`` (output to ``log``) until the block ends; yields once the
    relay emulator sees the gateway's two listeners. Stopped with SIGTERM, then killed.
    ``program``: the interpreter's arguments that start the command line; ``args``: more
    arguments of ``gateway run``."""
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *program,
            *("run", "-c", str(config), "--allow-root", "--shutdown-grace", "1", *args),
            cwd=ROOT,
            env=dict(env) if env is not None else child_environment(),
            stdout=sink,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        async with asyncio.timeout(START_TIMEOUT):
            await stack.relay.wait_for_listeners(stack.hc, 2)
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def registered_run(
    tmp_path: Path,
    stack_name: str,
    *,
    env: Mapping[str, str],
    program: Sequence[str],
    args: Sequence[str] = (),
) -> AsyncIterator[tuple[DevStack, asyncio.subprocess.Process]]:
    """A fresh dev stack, a gateway registered with it (``tmp_path/gw``) and its ``gateway
    run`` started by ``program`` with ``env`` added and ``args`` (log: ``tmp_path/gateway.log``);
    its health endpoint on a port the kernel picks (published in the state directory: see
    :func:`gateway.devkit.stack.operator_port`)."""
    async with DevStack(stack_name) as stack:
        directory = tmp_path / "gw"
        config = stack.write_gateway_dir(directory)
        await stack.register_gateway(directory)
        async with gateway_run(
            stack,
            config,
            log=tmp_path / "gateway.log",
            env=child_environment(env),
            program=program,
            args=args,
        ) as process:
            yield stack, process
