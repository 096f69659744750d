"""Fidelity check: Microsoft's Node listeners (hyco-https, hyco-ws) against the relay emulator.

Nobody on this project wrote those packages, so a round trip through them shows the emulator
speaks the protocol as Azure's own clients expect it (protocol notes section 10). The Node code
lives in ``tests/interop/node``; its dependencies are installed with npm on first use.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.devkit.relay_emulator import RelayEmulator, SasRule
from gateway.hybridconnection.framing import CONTROL_CHANNEL_BODY_LIMIT

NODE_DIR = Path(__file__).parent / "node"
HTTP_HC = "hyco"
WS_HC = "hycows"
RULE, KEY = "RootManageSharedAccessKey", "interop-key-0123456789"
STEP = 60.0  # bound for a single wait; Node start-up is the slowest step

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """Install the pinned packages once (``npm ci`` with the lockfile)."""
    modules = NODE_DIR / "node_modules"
    if not modules.is_dir():
        npm = shutil.which("npm")
        assert npm is not None, "node is installed but npm is not"
        command = "ci" if (NODE_DIR / "package-lock.json").is_file() else "install"
        result = subprocess.run(
            [npm, command, "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, f"npm {command} failed:\n{result.stderr[-2000:]}"
    return modules


async def start_listener(relay: RelayEmulator, script: str, hc: str) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "RELAY_LISTEN_URI": f"{relay.ws_base}/$hc/{hc}?sb-hc-action=listen",
        "SAS_KEY_NAME": RULE,
        "SAS_KEY": KEY,
    }
    node = shutil.which("node")
    assert node is not None
    return await asyncio.create_subprocess_exec(
        node,
        script,
        cwd=NODE_DIR,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def stop(process: asyncio.subprocess.Process) -> str:
    """Terminate a Node listener and return what it wrote to stderr (for failure messages)."""
    if process.returncode is None:
        process.terminate()
    assert process.stderr is not None
    errors = await asyncio.wait_for(process.stderr.read(), STEP)
    await asyncio.wait_for(process.wait(), STEP)
    return errors.decode(errors="replace")


@pytest.fixture
async def relay(node_modules: Path) -> AsyncIterator[RelayEmulator]:
    emulator = RelayEmulator([HTTP_HC, WS_HC], [SasRule(RULE, KEY)], response_timeout=STEP)
    async with emulator:
        yield emulator


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2 * STEP)) as client:
        yield client


async def test_hyco_https_echoes_every_body_size(
    relay: RelayEmulator, session: aiohttp.ClientSession
) -> None:
    process = await start_listener(relay, "https-listener.js", HTTP_HC)
    try:
        async with asyncio.timeout(STEP):
            await relay.wait_for_listeners(HTTP_HC, 1)
        token = {"ServiceBusAuthorization": relay.token(HTTP_HC)}
        # Small, exactly the control-channel limit, one byte over (rendezvous), large, empty.
        for size in (11, CONTROL_CHANNEL_BODY_LIMIT, CONTROL_CHANNEL_BODY_LIMIT + 1, 300_000, 0):
            payload = os.urandom(size)
            url = f"{relay.http_base}/{HTTP_HC}/echo"
            params = {"size": str(size)}
            async with session.post(url, params=params, data=payload, headers=token) as response:
                assert response.status == 200, (size, await response.text())
                assert await response.read() == payload, size
                assert response.headers["X-Length"] == str(size)
                assert response.headers["X-Method"] == "POST"
                assert response.headers["X-Url"] == f"/{HTTP_HC}/echo?size={size}"
                assert response.headers["Via"] == "1.1 127.0.0.1"
        async with session.get(f"{relay.http_base}/{HTTP_HC}/plain", headers=token) as response:
            assert response.status == 200
            assert response.headers["X-Method"] == "GET"
            assert await response.read() == b""
    finally:
        errors = await stop(process)
    assert "Error" not in errors, errors


async def test_hyco_ws_echoes_a_websocket_stream(
    relay: RelayEmulator, session: aiohttp.ClientSession
) -> None:
    process = await start_listener(relay, "ws-listener.js", WS_HC)
    try:
        async with asyncio.timeout(STEP):
            await relay.wait_for_listeners(WS_HC, 1)
        url = f"{relay.ws_base}/$hc/{WS_HC}?sb-hc-action=connect"
        headers = {"ServiceBusAuthorization": relay.token(WS_HC)}
        async with session.ws_connect(url, headers=headers) as ws:
            for index in range(20):
                await ws.send_str(f"message {index}")
                assert (await ws.receive(timeout=STEP)).data == f"MESSAGE {index}"
            blob = os.urandom(100_000)
            await ws.send_bytes(blob)
            reply = await ws.receive(timeout=STEP)
            assert reply.type is aiohttp.WSMsgType.BINARY
            assert reply.data == blob[::-1]
    finally:
        errors = await stop(process)
    assert "Error" not in errors, errors
