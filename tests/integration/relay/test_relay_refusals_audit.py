"""Listener-level refusals reach the decision log of a running agent (they never reach the
pipeline's steps, but each is a decision the on-prem owner must be able to review)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from gateway.devkit.stack import DevStack
from gateway.service import Agent, AgentOptions


def _records(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_listener_refusals_are_in_the_decision_log(tmp_path: Path) -> None:
    async with DevStack() as stack:
        directory = tmp_path / "gw"
        config = stack.write_gateway_dir(directory)
        await stack.register_gateway(directory)
        agent = Agent(AgentOptions(config_path=str(config), shutdown_grace=1))
        await agent.start()
        try:
            async with asyncio.timeout(10):
                await stack.relay.wait_for_listeners(stack.hc, 2)
            bad = await stack.relay.deliver_request(
                stack.hc, method="GET", request_target=f"/{stack.hc}/erp/x", headers={"X": "a\rb"}
            )
            outside = await stack.relay.deliver_request(
                stack.hc, method="POST", request_target="/not-this-hc/erp/x", headers={}
            )
        finally:
            await agent.stop()
    assert (bad.command.status_code, outside.command.status_code) == (400, 400)
    written = _records(directory / "decisions.jsonl")
    relay_records = [r for r in written if r.get("stage") == "relay"]
    assert [(r["reasons"], r["status"], r["result"], r["method"]) for r in relay_records] == [
        (["malformed_request"], 400, "rejected", None),
        (["bad_target"], 400, "rejected", "POST"),
    ]
    assert all(r["kind"] == "http" and r["decision_id"] for r in relay_records)
