"""The call check's plan is compiled in a child process (gateway.policy.planner).

Saving a bundle, the only way rego-cpp gives its plan, takes tens of MiB that its allocator keeps
for the life of the process; compiled in a child, that memory leaves with the child (issue 13,
measured by ``benchmarks/bench_memory.py``). What must hold whatever process compiles the plan:
the check runs in every process, answers for the right files, and refuses a revision it cannot
check.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.errors import PolicyError
from gateway.policy import planner
from gateway.policy.loader import build_engine
from tests.unit.policy.conftest import ROOT, MakeConfig, config_text, fresh_process_report

BAD = (
    "package gateway_extensions.bad\n\n"
    'deny contains "x" if {\n\tinput.method == "DELETE"\n\tdata.corp.lib.missing(1)\n}\n'
)

# A process that loads the C++ runtime before rego-cpp (aiohttp first), then builds an engine for
# a policy whose undefined call no smoke request reaches.
_WRONG_ORDER = """
import json, sys
from pathlib import Path

import aiohttp  # noqa: F401  (brings in the C++ runtime before rego-cpp)
from gateway.config import load
from gateway.errors import PolicyError
from gateway.policy import native
from gateway.policy.loader import build_engine

try:
    build_engine(load(Path(sys.argv[1]), check_host=False))
    codes = []
except PolicyError as exc:
    codes = [problem.code for problem in exc.problems]
print(json.dumps({"problem": native.load_order_problem(), "codes": codes}))
"""


def test_the_call_check_runs_in_a_process_that_loaded_the_cxx_runtime_first(
    tmp_path: Path,
) -> None:
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "bad.rego").write_text(BAD, encoding="utf-8")
    config = tmp_path / "gateway.yaml"
    config.write_text(config_text([ROOT / "policies", tmp_path / "extra"]), encoding="utf-8")
    report = fresh_process_report(_WRONG_ORDER, str(config))
    # The order really is the one in which compiling a plan in-process is unsafe...
    assert report["problem"] is not None
    # ...and the call is refused all the same.
    assert report["codes"] == ["policy_undefined_function"]


def test_identical_modules_in_two_directories_are_each_reported_at_their_own_path(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    # Same module names and sources: the planner answers the second from what it kept, and
    # the problem must still name the second file.
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "bad.rego").write_text(BAD, encoding="utf-8")
    for name in ("one", "two"):
        with pytest.raises(PolicyError) as caught:
            build_engine(make_config(extra_dirs=(tmp_path / name,)))
        [problem] = caught.value.problems
        assert (problem.code, problem.file) == (
            "policy_undefined_function",
            str(tmp_path / name / "bad.rego"),
        )


def test_a_plan_the_child_cannot_deliver_refuses_the_revision(
    make_config: MakeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A module set the planner has not seen (its source names this test's directory), and no
    # time at all for the child: the revision must be refused, not accepted unchecked.
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "fine.rego").write_text(
        f'# {tmp_path}\npackage gateway_extensions.fine\n\ndeny contains "x" if false\n',
        encoding="utf-8",
    )
    monkeypatch.setattr(planner, "PLAN_TIMEOUT", 0.0)
    with pytest.raises(PolicyError) as caught:
        build_engine(make_config(extra_dirs=(tmp_path / "extra",)))
    [problem] = caught.value.problems
    assert problem.code == "policy_check_failed"
    assert "could not be checked" in problem.message


@pytest.mark.parametrize(
    "request_bytes",
    [b"[]", b'{"modules": {"a.rego": 1}}', b'{"modules": []}'],
    ids=["not-an-object", "source-not-text", "modules-not-a-map"],
)
def test_the_planner_refuses_input_that_is_not_a_module_map(request_bytes: bytes) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "gateway.policy.planner"],
        input=request_bytes,
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 2
    assert completed.stdout == b""


def test_the_planner_answers_only_what_the_call_check_reads() -> None:
    source = (ROOT / "policies" / "gateway" / "authz.rego").read_text(encoding="utf-8")
    modules = {"module0-authz.rego": source}
    completed = subprocess.run(
        [sys.executable, "-m", "gateway.policy.planner"],
        input=json.dumps({"modules": modules}).encode(),
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=True,
    )
    plan = json.loads(completed.stdout)["plan"]
    assert set(plan) == {"static", "funcs", "calls"}
    assert plan["static"]["files"] == [{"value": "module0-authz.rego"}]
    assert {"name": "count"} in plan["static"]["builtin_funcs"]
    calls = [call["stmt"] for call in plan["calls"]]
    assert calls
    assert all(set(call) == {"func", "file", "row", "col"} for call in calls)
    # Each distinct call once: the full plan repeats them per block.
    assert len({tuple(call.values()) for call in calls}) == len(calls)
