"""``gateway run`` on each event loop it can be told to use (:mod:`gateway.eventloop`).

The real command line against the dev stack (relay emulator, control-plane simulator over mTLS,
sample targets): it logs the loop it chose, relays a request and a TCP stream, reloads on SIGHUP
(a changed ``event_loop`` waits for the next restart, and says so), answers a request still in
flight when SIGTERM arrives, and exits 0. The rest of what it does on uvloop (squid, LDAP, TLS to
targets, workers) is covered by the suites CI runs again with ``TEST_EVENT_LOOP=uvloop`` and by
every test that starts ``gateway run``, which picks uvloop by default where it is installed.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
import yaml

from gateway import eventloop

from ..eventloops import needs_uvloop
from .gatewayrun import registered_run

pytestmark = pytest.mark.asyncio

LOOPS = [pytest.param("asyncio"), pytest.param("uvloop", marks=needs_uvloop)]
# Bounds for a busy machine, not measures: each wait returns as soon as its line is logged.
LOG_TIMEOUT = 60


async def _logged(log: Path, text: str) -> None:
    """Return once ``text`` is in ``log`` (another process writes it: nothing to wait on but
    the file)."""
    async with asyncio.timeout(LOG_TIMEOUT):
        while text not in _read(log):  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def _read(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")


@pytest.mark.parametrize("loop", LOOPS)
async def test_gateway_run_serves_reloads_and_drains_on_the_loop_it_is_told(
    tmp_path: Path, loop: eventloop.Choice
) -> None:
    expected = eventloop.pick(loop).describe()
    log = tmp_path / "gateway.log"
    async with (
        registered_run(
            tmp_path,
            f"loop-{loop}",
            env={},
            program=("-m", "gateway"),
            # The last --shutdown-grace counts: long enough for the request in flight below.
            args=("--event-loop", loop, "--shutdown-grace", "30"),
        ) as (stack, process),
        stack.saas() as saas,
    ):
        assert f"event loop: {expected} (--event-loop {loop})" in _read(log)
        response, _ = await saas.request("GET", "erp", "/api/accounts/1")
        assert response.status == 200, response.body
        stream = await saas.stream("directory")
        try:
            await stream.send_bytes(b"ping")
            echoed = await stream.receive()
        finally:
            await stream.close()
        assert echoed.data == b"echo:ping"

        # A reload that asks for another loop: served at once, the loop kept until a restart.
        config = tmp_path / "gw" / "gateway.yaml"
        document = yaml.safe_load(config.read_text(encoding="utf-8"))
        document["event_loop"] = "asyncio"
        partial = config.with_suffix(".yaml.tmp")
        partial.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        partial.chmod(0o644)
        partial.replace(config)
        process.send_signal(signal.SIGHUP)
        await _logged(log, f"it takes effect at the next restart (this process runs on {expected})")
        await _logged(log, "configuration reloaded")
        again, _ = await saas.request("GET", "erp", "/api/accounts/2")
        assert again.status == 200, again.body

        # SIGTERM while a request waits on its target: it is answered, then the process exits 0.
        stack.targets.http_arrived.clear()
        pending = asyncio.ensure_future(
            saas.request("GET", "erp", "/api/accounts/3", query="delay=1")
        )
        async with asyncio.timeout(LOG_TIMEOUT):
            await stack.targets.http_arrived.wait()
        process.send_signal(signal.SIGTERM)
        drained, _ = await pending
        assert drained.status == 200, drained.body
        async with asyncio.timeout(LOG_TIMEOUT):
            code = await process.wait()
    assert code == 0, _read(log)
    text = _read(log)
    assert "stop requested: draining" in text
    assert "gateway stopped" in text
