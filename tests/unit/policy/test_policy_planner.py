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
import tempfile
from pathlib import Path

import pytest
import regopy
from regopy import rego_shared

from gateway.errors import PolicyError
from gateway.policy import embedded, planner
from gateway.policy.cache import project
from gateway.policy.embedded import EmbeddedEngine
from gateway.policy.loader import PolicySet, build_engine, load_policies
from tests.unit.policy.conftest import (
    ROOT,
    MakeConfig,
    config_text,
    fresh_process_report,
    request_input,
)

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


def _unseen_module(tmp_path: Path) -> None:
    """A module no earlier compile saw: its source names this test's directory."""
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "fine.rego").write_text(
        f'# {tmp_path}\npackage gateway_extensions.fine\n\ndeny contains "x" if false\n',
        encoding="utf-8",
    )


def test_a_plan_and_bundle_the_child_cannot_deliver_refuse_the_revision(
    make_config: MakeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A module set the planner has not seen (its source names this test's directory), and no
    # time at all for the child: the revision must be refused, not accepted unchecked.
    _unseen_module(tmp_path)
    monkeypatch.setattr(planner, "PLAN_TIMEOUT", 0.0)
    with pytest.raises(PolicyError) as caught:
        build_engine(make_config(extra_dirs=(tmp_path / "extra",)))
    [problem] = caught.value.problems
    assert problem.code == "policy_check_failed"
    # The one child asked compiles the engine's bundle and the check's plan.
    assert "could not be compiled: the planner took longer than 0 s" in problem.message


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


def _decisions_compiled_here(policies: PolicySet, inputs: list[dict[str, object]]) -> list[object]:
    """What a bundle compiled in this process decides for ``inputs`` (the engine's way before
    the planner's child compiled it): each output as rego-cpp renders it, parsed."""
    rego = regopy.Interpreter()
    rego.log_level = regopy.LogLevel.NONE
    for module in policies.modules:
        rego.add_module(str(module.path), module.source)
    rego.add_data({**policies.extra_data, "gateway": policies.data})
    bundle = rego.build(None, [planner.DECISION_ENTRYPOINT])
    found: list[object] = []
    for document in inputs:
        rego.set_input(regopy.Input(document))
        output = rego.query_bundle_entrypoint(bundle, planner.DECISION_ENTRYPOINT)
        # Read as the engine reads its outputs.
        found.append(embedded._decision(str(output).encode()) if output.ok() else "error")
    return found


def test_the_engine_decides_with_the_childs_bundle_as_with_one_compiled_here(
    make_config: MakeConfig,
) -> None:
    policies = load_policies(make_config())
    engine = EmbeddedEngine(policies, mode="enforce", cache=None)
    inputs = [
        request_input(),
        request_input("DELETE"),
        request_input("GET", ("apiadmin",)),
        request_input("GET", ("api",), trailing_slash=True),
        request_input(websocket=True),
        request_input(verified=False),
        request_input(target="nowhere"),
        request_input(query="a=1&b=2"),
    ]
    fields = policies.cache_plan.fields
    projected = [doc if fields is None else project(doc, fields) for doc in inputs]
    here = _decisions_compiled_here(policies, projected)
    assert [engine.evaluate(doc) for doc in inputs] == here
    assert any(isinstance(d, dict) and d.get("allow") for d in here)
    assert any(isinstance(d, dict) and not d.get("allow") for d in here)


def test_one_child_compiles_a_revisions_bundle_and_its_plan(
    make_config: MakeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A module set no earlier test compiled: the engine's bundle and the call check's plan come
    # from one child, and the process itself builds nothing.
    _unseen_module(tmp_path)
    requests: list[dict[str, object]] = []
    ask = planner._ask_child

    def counted(request: bytes, *args: str) -> dict[str, object]:
        requests.append(json.loads(request))
        return ask(request, *args)

    def refused(*args: object) -> None:
        raise AssertionError("a bundle was built in the gateway's own process")

    monkeypatch.setattr(planner, "_ask_child", counted)
    monkeypatch.setattr(rego_shared, "rego_build", refused)
    build_engine(make_config(extra_dirs=(tmp_path / "extra",)))
    assert [sorted(request) for request in requests] == [["bundle", "modules"]]


def test_a_bundle_the_child_cannot_compile_is_located_as_before(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    (tmp_path / "extra").mkdir()
    broken = tmp_path / "extra" / "broken.rego"
    broken.write_text("package gateway_extensions.broken\n\ndeny contains if {\n", encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        build_engine(make_config(extra_dirs=(tmp_path / "extra",)))
    assert {problem.file for problem in caught.value.problems} == {str(broken)}
    assert all(problem.line for problem in caught.value.problems)


@pytest.mark.parametrize("compiled_before", [True, False], ids=["bundle-kept", "child-needed"])
def test_no_place_for_temporary_files_refuses_the_revision(
    make_config: MakeConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    compiled_before: bool,
) -> None:
    # The bundle is handed to rego-cpp through a private file, and the child's answer through
    # two: without a place for them the revision is refused like any planner failure, not
    # left to an OSError.
    _unseen_module(tmp_path)
    loaded = make_config(extra_dirs=(tmp_path / "extra",))
    if compiled_before:
        build_engine(loaded)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    with pytest.raises(PolicyError) as caught:
        build_engine(loaded)
    [problem] = caught.value.problems
    assert problem.code == "policy_check_failed"
    assert problem.message.startswith("the policy could not be compiled: ")
