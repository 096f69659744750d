"""What proving a policy decides (gateway/policy/check.py) adds to building an engine.

For 10, 100 and 1,000 targets of two operations each, with the shipped policy: the time to
compile the embedded engine's bundle, and the time of the check on top of it (compiling the
modules alone for their plan, reading the calls, and the smoke decisions, at most 512). Both
happen at start, at every reload, and in ``validate``, ``policy-test``, ``explain``, ``check`` and
``sign``; no request pays for them. Wall time on whatever machine runs it: the report says which.

Run: ``.venv/bin/python benchmarks/bench_policy_check.py``
"""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path

from gateway.config import load
from gateway.policy import planner
from gateway.policy.check import check_policy, smoke_inputs
from gateway.policy.embedded import EmbeddedEngine, compiled_plan
from gateway.policy.loader import load_policies

POLICIES = Path(__file__).resolve().parents[1] / "policies"


def config_text(targets: int) -> str:
    lines = [
        "version: 1",
        "gateway: {id: bench}",
        "empowerid: {url: 'https://tenant.empowerid.example'}",
        f"policy: {{directories: ['{POLICIES}']}}",
        "targets:",
    ]
    for index in range(targets):
        lines.append(
            f"  t{index}: {{scheme: https, host: h{index}.corp.local, port: 443,"
            " allowed_cidrs: [10.1.0.0/16], operations: ["
            "{name: read, methods: [GET], paths: ['/api/*']},"
            "{name: write, methods: [POST], paths: ['/api/x/**']}]}"
        )
    return "\n".join(lines) + "\n"


def measure(targets: int, directory: Path) -> str:
    path = directory / f"gateway-{targets}.yaml"
    path.write_text(config_text(targets), encoding="utf-8")
    loaded = load(path, check_host=False)
    policies = load_policies(loaded)
    started = time.perf_counter()
    engine = EmbeddedEngine(policies, mode="enforce", cache=None)
    compiled = time.perf_counter() - started
    started = time.perf_counter()
    compiled_plan(policies.modules)
    planned = time.perf_counter() - started
    started = time.perf_counter()
    planner._cache.clear()  # the check compiles the plan again, as a new revision would
    check_policy(engine, policies, loaded.config)
    checked = time.perf_counter() - started
    smoked = sum(1 for _ in smoke_inputs(loaded.config))
    return (
        f"| {targets:,} | {compiled * 1000:,.0f} ms | {checked * 1000:,.0f} ms "
        f"({planned * 1000:,.0f} ms of it the plan) | {smoked} |"
    )


def main() -> None:
    print(f"machine: {platform.machine()}, Python {platform.python_version()}")
    print()
    print("| targets | compile the bundle | check (plan + calls + smoke) | smoke decisions |")
    print("| --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as directory:
        for targets in (10, 100, 1000):
            print(measure(targets, Path(directory)))


if __name__ == "__main__":
    main()
