"""One state directory, one ``gateway run``: a second process on it is refused at start.

Two processes on one replay-cache state would each accept a signed request the other had
accepted, and the one that stopped first would write its own nonces as the clean state of both,
so a later crash of the other would restore a memory without its nonces (catalogue D 77, D 78).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from .gatewayrun import ROOT, child_environment, registered_run

pytestmark = pytest.mark.asyncio

EXIT_START = 5
WAIT = 60.0


async def test_a_second_gateway_run_on_the_same_state_directory_is_refused(
    tmp_path: Path,
) -> None:
    async with (
        registered_run(tmp_path, "one-state-dir", env={}, program=("-m", "gateway")) as (
            stack,
            first,
        ),
        stack.saas() as saas,
    ):
        config = tmp_path / "gw" / "gateway.yaml"
        log = tmp_path / "second.log"
        with log.open("wb") as sink:
            second = await asyncio.create_subprocess_exec(
                sys.executable,
                *("-m", "gateway", "run", "-c", str(config), "--allow-root"),
                cwd=ROOT,
                env=child_environment(),
                stdout=sink,
                stderr=asyncio.subprocess.STDOUT,
            )
        try:
            code = await asyncio.wait_for(second.wait(), WAIT)
        finally:
            if second.returncode is None:
                second.kill()
                await second.wait()
        text = log.read_text(errors="replace")
        assert code == EXIT_START, text
        assert "in use by another gateway process" in text
        # The first one serves on, its replay memory its own.
        response, sent = await saas.request("GET", "erp", "/api/accounts/1")
        assert response.status == 200
        replayed, _ = await saas.request("GET", "erp", "/api/accounts/1", signed_headers=sent)
        assert (replayed.status, replayed.reason_code) == (401, "replay")
    assert first.returncode == 0
