"""The load order of rego-cpp's library: read from the dynamic linker, and reported by the engine.

The order is fixed for the life of a process, so each case runs in a fresh interpreter that
imports things in the order under test. What the order does to memory is measured in
``tests/soak/test_policy_memory.py``.
"""

from __future__ import annotations

from typing import TypedDict

from gateway.policy.native import loaded_objects
from tests.unit.policy.conftest import SHIPPED_POLICIES, fresh_process_report

_CHILD = """
import io, json, logging, sys, tempfile
from pathlib import Path

if sys.argv[1] == "aiohttp":
    import aiohttp  # noqa: F401  (brings in the C++ runtime)
from gateway.policy import native
import aiohttp  # noqa: F401,F811

stream = io.StringIO()
handler = logging.StreamHandler(stream)
handler.setFormatter(logging.Formatter("%(levelname)s %(event)s %(message)s"))
logging.getLogger("gateway.policy").addHandler(handler)

from gateway.config import load
from gateway.policy.loader import build_engine

with tempfile.TemporaryDirectory() as directory:
    path = Path(directory) / "gateway.yaml"
    path.write_text(
        "version: 1\\ngateway: {id: agent-1}\\n"
        "empowerid: {url: 'https://tenant.empowerid.example'}\\n"
        f"policy: {{directories: ['{sys.argv[2]}']}}\\n"
        "targets: {erp: {scheme: http, host: erp.corp.local, port: 8080,"
        " allowed_cidrs: [10.1.2.0/24],"
        " operations: [{name: read, methods: [GET], paths: [/api/*]}]}}\\n",
        encoding="utf-8",
    )
    build_engine(load(path, check_host=False))
names = native.loaded_objects()
print(json.dumps({
    "problem": native.load_order_problem(),
    "rego": next(i for i, n in enumerate(names) if n == "librego_shared.so"),
    "runtime": next(i for i, n in enumerate(names) if n.startswith("libstdc++.so")),
    "log": stream.getvalue(),
}))
"""


class _Report(TypedDict):
    problem: str | None
    rego: int
    runtime: int
    log: str


def _fresh_process(first: str) -> _Report:
    report: _Report = fresh_process_report(_CHILD, first, str(SHIPPED_POLICIES))
    return report


def test_rego_loaded_first_is_no_problem_and_the_engine_stays_quiet() -> None:
    report = _fresh_process("gateway")
    assert report["problem"] is None
    assert report["rego"] < report["runtime"]
    assert report["log"] == ""


def test_cxx_runtime_loaded_first_is_reported_when_an_engine_is_built() -> None:
    report = _fresh_process("aiohttp")
    assert report["runtime"] < report["rego"]
    problem = report["problem"]
    assert problem is not None
    assert "libstdc++" in problem
    assert "leaks" in problem
    expected = "ERROR policy_engine_leaks embedded policy engine: the C++ runtime"
    assert report["log"].startswith(expected)


def test_loaded_objects_lists_this_process_in_load_order() -> None:
    names = loaded_objects()
    # The C library is loaded with the interpreter, long before rego-cpp is imported.
    libc = names.index("libc.so.6")
    assert libc < names.index("librego_shared.so")
    assert all("/" not in name for name in names)
