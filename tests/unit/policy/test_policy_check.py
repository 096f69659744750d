"""A policy is proven to decide before any engine built from it is used (gateway.policy.check).

Each case is a module that compiles with rego-cpp 1.5.2 and then cannot decide, or decides
wrongly, the way users could write it by mistake. Every one must be refused at build time with
its location where the engine records one; a policy that decides must still build.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest
import regopy

from gateway.cli import main
from gateway.config import LoadedConfig
from gateway.errors import ConfigError, PolicyError
from gateway.policy.check import MAX_SMOKE_INPUTS, smoke_inputs
from gateway.policy.embedded import EmbeddedEngine
from gateway.policy.engine import POLICY_UNAVAILABLE
from gateway.policy.loader import build_engine, load_policies, verify_policy
from gateway.policy.testing import run_policy_tests
from tests.unit.policy.conftest import SHIPPED_POLICIES, MakeConfig, config_text, request_input


def _module(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# (module text, line, column) of a call to a function nobody defined.
UNDEFINED_CALLS = [
    pytest.param(
        'package gateway_extensions.bad\n\ndeny contains "nope" if not_a_function(input.method)\n',
        3,
        25,
        id="plain-name",
    ),
    pytest.param(
        "package gateway_extensions.bad\n\n"
        'deny contains "x" if {\n\tinput.method == "DELETE"\n\tdata.corp.lib.missing(1)\n}\n',
        5,
        2,
        id="other-package-only-reached-by-delete",
    ),
    pytest.param(
        "package gateway_extensions.bad\n\nimport data.corp.lib\n\n"
        'deny contains "x" if lib.absent(input.path)\n',
        5,
        22,
        id="imported-package",
    ),
]


def _refusal(loaded: LoadedConfig) -> tuple[str, str | None, int, int]:
    """Where and why building the engine refuses the policy (it must have one problem)."""
    with pytest.raises(PolicyError) as caught:
        build_engine(loaded)
    [problem] = caught.value.problems
    return problem.code, problem.file, problem.line, problem.column


@pytest.mark.parametrize(("text", "line", "column"), UNDEFINED_CALLS)
def test_a_call_to_an_undefined_function_is_refused_at_its_location(
    make_config: MakeConfig, tmp_path: Path, text: str, line: int, column: int
) -> None:
    bad = _module(tmp_path / "extra", "bad.rego", text)
    loaded = make_config(extra_dirs=(tmp_path / "extra",))
    # Without the check the engine builds and every request the call touches is a 503.
    unchecked = EmbeddedEngine(load_policies(loaded), mode="enforce", cache=None)
    fault = asyncio.run(unchecked.decide(request_input("DELETE")))
    assert fault.reasons == (POLICY_UNAVAILABLE,)
    assert _refusal(loaded) == ("policy_undefined_function", str(bad), line, column)


def test_the_engines_own_words_replace_unreadable_output(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    _module(
        tmp_path / "extra",
        "bad.rego",
        'package gateway_extensions.bad\n\ndeny contains "x" if nope(input.method)\n',
    )
    loaded = make_config(extra_dirs=(tmp_path / "extra",))
    unchecked = EmbeddedEngine(load_policies(loaded), mode="enforce", cache=None)
    with pytest.raises(Exception, match="Function not found: nope") as caught:
        unchecked.evaluate(request_input())
    assert "unreadable" not in str(caught.value)


def test_policy_test_failures_carry_the_engines_error(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    _module(tmp_path / "own", "x_test.rego", "package corp.x_test\n\ntest_calls if nope_fn(1)\n")
    results = run_policy_tests(verify_policy(make_config(extra_dirs=(tmp_path / "own",))))
    [failed] = [r for r in results if not r.passed]
    assert failed.detail == "evaluation failed: Function not found: nope_fn"


def test_a_decision_that_fails_for_some_requests_is_refused(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    # Compiles, and decides GET; a POST makes two complete definitions disagree.
    _module(
        tmp_path / "extra",
        "conflict.rego",
        "package gateway_extensions.conflict\n\n"
        'mode := "a" if input.method == "POST"\n\nmode := "b" if input.target == "erp"\n\n'
        'deny contains "x" if mode == "c"\n',
    )
    with pytest.raises(PolicyError, match=r"cannot decide POST erp /"):
        build_engine(make_config(extra_dirs=(tmp_path / "extra",)))


def test_not_inside_every_is_refused_because_the_engine_gets_it_wrong(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    text = "package corp.x_test\n\ntest_none if {\n\tevery x in [1, 2] {\n\t\tnot x == 2\n\t}\n}\n"
    module = _module(tmp_path / "own", "x_test.rego", text)
    with pytest.raises(ConfigError) as caught:
        load_policies(make_config(extra_dirs=(tmp_path / "own",)))
    [problem] = caught.value.problems
    assert (problem.code, problem.file, problem.line) == ("unsupported_construct", str(module), 4)


def test_not_in_a_helper_called_from_every_is_accepted_and_correct(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    _module(
        tmp_path / "own",
        "x_test.rego",
        "package corp.x_test\n\nsmall(x) if not x == 2\n\n"
        "test_holds if {\n\tevery x in [1, 3] {\n\t\tsmall(x)\n\t}\n}\n\n"
        "test_broken if {\n\tevery x in [1, 2] {\n\t\tsmall(x)\n\t}\n}\n",
    )
    results = run_policy_tests(verify_policy(make_config(extra_dirs=(tmp_path / "own",))))
    verdicts = {r.name: r.passed for r in results if r.name.startswith("corp.")}
    assert verdicts == {"corp.x_test.test_holds": True, "corp.x_test.test_broken": False}


def test_the_smoke_requests_cover_every_operation_and_stay_bounded(
    make_config: MakeConfig,
) -> None:
    loaded = make_config()
    documents = list(smoke_inputs(loaded.config))
    seen = {
        (d["target"], d["method"], d["websocket"], d["signature"]["verified"]) for d in documents
    }
    assert ("erp", "GET", False, True) in seen  # read-orders
    assert ("erp", "GET", True, True) in seen  # events, a stream
    assert ("erp", "GET", False, False) in seen  # unsigned
    assert ("erp", "PUT", False, True) in seen  # a method no operation of the path grants
    assert ("directory", "GET", True, True) in seen  # the tcp target
    assert len(documents) <= MAX_SMOKE_INPUTS


def test_the_shipped_policy_builds_and_decides(make_config: MakeConfig) -> None:
    engine = build_engine(make_config())
    assert asyncio.run(engine.decide(request_input())).allow


@pytest.mark.parametrize("verb", ["validate", "explain"])
def test_an_opa_configuration_gets_the_same_proof(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], verb: str
) -> None:
    bad = _module(
        tmp_path / "extra",
        "bad.rego",
        'package gateway_extensions.bad\n\ndeny contains "nope" if not_a_function(input.method)\n',
    )
    config = tmp_path / "gateway.yaml"
    # Nothing listens on the OPA URL: the policy is refused before any engine would be asked.
    opa = "  engine: opa\n  opa_url: http://127.0.0.1:9\n"
    config.write_text(
        config_text([SHIPPED_POLICIES, tmp_path / "extra"], extra=opa), encoding="utf-8"
    )
    args = [verb, "-c", str(config)] + (["GET", "erp", "/api/x"] if verb == "explain" else [])
    assert main(args) == 1
    assert f"{bad}:3:25:" in capsys.readouterr().err


def test_proving_a_policy_never_writes_its_files(make_config: MakeConfig, tmp_path: Path) -> None:
    # The plan is read from a bundle saved to a private directory; saving it under the modules'
    # own paths rewrote every policy file in place, and several workers starting together then
    # read an empty file ("no package declaration found").
    extension = _module(
        tmp_path / "extra",
        "ok.rego",
        'package gateway_extensions.ok\n\ndeny contains "no" if input.method == "TRACE"\n',
    )
    loaded = make_config(extra_dirs=(tmp_path / "extra",))
    before = extension.stat().st_mtime_ns - 10_000_000_000
    os.utime(extension, ns=(before, before))
    verify_policy(loaded)
    assert extension.stat().st_mtime_ns == before


# Each built-in with an argument for which rego-cpp (the embedded engine) answers otherwise than
# OPA's built-in reference says; what OPA answers is in the comment.
_DIVERGENT = [
    # OPA merges nested objects: {"a": {"b": 1, "c": 2}}.
    ('object.union({"a": {"b": 1}}, {"a": {"c": 2}})', {"a": {"c": 2}}),
    ('object.union_n([{"a": {"b": 1}}, {"a": {"c": 2}}])', {"a": {"c": 2}}),
    # OPA (semantic versioning 2.0.0, section 11): a release follows its pre-release, 1.
    ('semver.compare("1.0.0", "1.0.0-rc1")', -1),
    # OPA: leading zeros make a version invalid, false.
    ('semver.is_valid("01.0.0")', True),
    # OPA: not a number, an error; a veto reading a limit from the query would not fire.
    (
        'to_number("1_000000")',
        1,
    ),  # OPA (RFC 3339 section 5.6, "Z" is UTC): 1704067200000000000; None is undefined here, so
    # a change-freeze veto comparing the clock with it never fires.
    ('time.parse_rfc3339_ns("2024-01-01T00:00:00Z")', None),
    ('time.parse_ns("2006-01-02T15:04:05Z07:00", "2024-01-01T00:00:00Z")', None),
]


@pytest.mark.parametrize(("call", "embedded"), _DIVERGENT)
def test_builtins_the_engine_answers_unlike_opa_are_refused(
    make_config: MakeConfig, tmp_path: Path, call: str, embedded: object
) -> None:
    # The divergence is real (should a later rego-cpp fix it, this says the refusal can go).
    rego = regopy.Interpreter()
    rego.log_level = regopy.LogLevel.NONE
    output = rego.query(f"x := {call}")
    assert output.ok()
    assert (output.results[0].bindings.get("x") if output.results else None) == embedded
    module = _module(
        tmp_path / "own",
        "corp.rego",
        f'package gateway_extensions.corp\n\ndeny contains "x" if {{\n\tv := {call}\n\tv\n}}\n',
    )
    with pytest.raises(ConfigError) as caught:
        load_policies(make_config(extra_dirs=(tmp_path / "own",)))
    [problem] = caught.value.problems
    assert (problem.code, problem.file, problem.line) == ("unsupported_builtin", str(module), 4)
    assert call.split("(")[0] in problem.message


def test_divergent_builtins_are_accepted_in_policy_tests(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    # A test module builds inputs for policy-test, which run never evaluates: object.union
    # there makes the same input for the test's decision as a relayed request would.
    _module(
        tmp_path / "own",
        "x_test.rego",
        "package corp.x_test\n\n"
        'test_union if object.union({"a": 1}, {"b": 2}) == {"a": 1, "b": 2}\n',
    )
    results = run_policy_tests(verify_policy(make_config(extra_dirs=(tmp_path / "own",))))
    assert all(r.passed for r in results if r.name == "corp.x_test.test_union")


@pytest.mark.parametrize(
    "call",
    [
        'net.cidr_contains("10.0.0.0/8", "10.1.2.3")',
        'http.send({"method": "GET", "url": "http://127.0.0.1:9/"})',
    ],
)
def test_a_builtin_the_engine_declares_but_lacks_is_refused_at_its_location(
    make_config: MakeConfig, tmp_path: Path, call: str
) -> None:
    """rego-cpp knows these names but evaluates them as undefined, so the veto below never
    fired (OPA: it fires, or the evaluation fails and the request is refused)."""
    bad = _module(
        tmp_path / "extra",
        "bad.rego",
        'package gateway_extensions.bad\n\ndeny contains "vetoed" if {\n'
        f"\tr := {call}\n\tr != 1\n}}\n",
    )
    loaded = make_config(extra_dirs=(tmp_path / "extra",))
    unchecked = EmbeddedEngine(load_policies(loaded), mode="enforce", cache=None)
    assert asyncio.run(unchecked.decide(request_input())).allow  # the silent hole
    assert _refusal(loaded) == ("policy_unavailable_builtin", str(bad), 4, 7)
    with pytest.raises(PolicyError, match=re.escape(repr(call.split("(")[0]))):
        build_engine(loaded)
