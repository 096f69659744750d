"""The embedded engine deciding with the shipped policy: decisions, cache, monitor mode, faults."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import jsonschema
import pytest
from referencing import Registry, Resource

from gateway.config import LoadedConfig, load
from gateway.errors import ConfigError
from gateway.forward.canonical import canonicalise
from gateway.policy.data import bucket, policy_data
from gateway.policy.decision_log import mask_query
from gateway.policy.embedded import EmbeddedEngine
from gateway.policy.engine import POLICY_UNAVAILABLE, POLICY_UNDEFINED
from gateway.policy.input import build_input
from gateway.policy.loader import build_engine, load_policies
from tests.unit.policy.conftest import (
    ROOT,
    SHIPPED_POLICIES,
    MakeConfig,
    config_text,
    request_input,
)

SCHEMAS = ROOT / "schemas"


def unchecked_engine(loaded: LoadedConfig) -> EmbeddedEngine:
    """An engine built without the proof that its policy decides (gateway.policy.check), which
    every engine the gateway uses gets: how a decision fails closed when it cannot be made."""
    return EmbeddedEngine(load_policies(loaded), mode="enforce", cache=None)


def _schema(name: str) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    return loaded


def _validator(name: str) -> jsonschema.Draft202012Validator:
    registry: Registry = Registry()
    for file in ("policy-input.schema.json", "policy-decision.schema.json"):
        schema = _schema(file)
        registry = registry.with_resource(str(schema["$id"]), Resource.from_contents(schema))
    return jsonschema.Draft202012Validator(
        _schema(name), registry=registry, format_checker=jsonschema.FormatChecker()
    )


async def test_allowed_request_names_target_operation_and_revision(
    make_config: MakeConfig,
) -> None:
    loaded = make_config()
    engine = build_engine(loaded)
    decision = await engine.decide(request_input())
    assert decision.allow
    assert (decision.target, decision.operation, decision.reasons) == ("erp", "read-orders", ())
    assert decision.revision.startswith(loaded.revision + "/sha256:")
    assert not decision.cached
    assert decision.status == 403  # only meaningful for a deny, but defined


@pytest.mark.parametrize(
    ("method", "segments", "trailing", "websocket", "reason"),
    [
        ("DELETE", ("api", "orders"), False, False, "method_not_allowed"),
        ("GET", ("apiadmin",), False, False, "path_not_allowed"),
        ("GET", ("api",), False, False, "path_not_allowed"),
        ("GET", ("api",), True, False, "path_not_allowed"),
        ("GET", ("API", "orders"), False, False, "path_not_allowed"),
        ("GET", ("api", "orders"), False, True, "websocket_not_allowed"),
    ],
)
async def test_denials_carry_the_specific_reason(
    make_config: MakeConfig,
    method: str,
    segments: tuple[str, ...],
    trailing: bool,
    websocket: bool,
    reason: str,
) -> None:
    engine = build_engine(make_config())
    decision = await engine.decide(
        request_input(method, segments, trailing_slash=trailing, websocket=websocket)
    )
    assert not decision.allow
    assert decision.reasons == (reason,)
    assert decision.status == 403


async def test_tcp_target_allows_streams_only(make_config: MakeConfig) -> None:
    engine = build_engine(make_config())
    stream = await engine.decide(request_input(target="directory", segments=(), websocket=True))
    assert stream.allow
    assert stream.operation is None
    http = await engine.decide(request_input(target="directory", segments=()))
    assert http.reasons == ("stream_only_target",)


async def test_unsigned_is_denied_even_when_an_operation_grants(make_config: MakeConfig) -> None:
    decision = await build_engine(make_config()).decide(request_input(verified=False))
    assert not decision.allow
    assert decision.operation == "read-orders"
    assert decision.reasons == ("unsigned",)


async def test_repeated_decision_comes_from_the_cache(make_config: MakeConfig) -> None:
    engine = build_engine(make_config())
    first = await engine.decide(request_input(query="a=1"))
    # Fields the policy does not read (query, header names, key id) do not split the cache.
    second = await engine.decide(request_input(query="b=2"))
    assert not first.cached
    assert second.cached
    assert (second.allow, second.operation) == (first.allow, first.operation)
    other = await engine.decide(request_input("POST"))
    assert not other.cached
    assert engine.cache is not None
    assert engine.cache.hits == 1


async def test_cache_keys_on_exactly_the_fields_the_policy_reads(make_config: MakeConfig) -> None:
    policies = load_policies(make_config())
    assert policies.cache_plan.cacheable
    assert policies.cache_plan.fields == (
        # An LDAP operation and its connection, each as a whole (gateway/ldap/decide.py).
        ("connection",),
        ("ldap",),
        ("method",),
        ("path_segments",),
        ("signature", "verified"),
        ("target",),
        ("trailing_slash",),
        ("websocket",),
    )


async def test_monitor_mode_marks_denials_and_warns_at_start(
    make_config: MakeConfig, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.policy"):
        engine = build_engine(make_config(mode="monitor"))
    assert any("MONITOR" in r.getMessage() for r in caplog.records)
    denied = await engine.decide(request_input("DELETE"))
    assert not denied.allow
    assert denied.monitor
    assert denied.forward
    allowed = await engine.decide(request_input())
    assert allowed.forward
    assert not allowed.monitor


async def test_enforce_mode_never_forwards_a_deny(make_config: MakeConfig) -> None:
    denied = await build_engine(make_config()).decide(request_input("DELETE"))
    assert not denied.monitor
    assert not denied.forward


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ('{"allow": "yes", "target": null, "operation": null, "reasons": [], "revision": r}', 1),
        ('{"allow": true, "target": null, "operation": null, "reasons": ["x"], "revision": r}', 1),
        ('{"allow": false, "target": null, "operation": null, "reasons": [], "revision": r}', 1),
        ('{"allow": true, "target": null, "operation": null, "reasons": []}', 1),
        ('{"allow": true, "target": null, "operation": null, "reasons": [], "revision": "x"}', 2),
    ],
)
async def test_malformed_decision_documents_deny(
    make_config: MakeConfig, tmp_path: Path, document: str, reason: int
) -> None:
    custom = tmp_path / "custom"
    _write(
        custom,
        "gateway/authz.rego",
        f"package gateway.authz\n\nr := data.gateway.revision\n\ndecision := {document}\n",
    )
    loaded = make_config(extra_dirs=(custom,), shipped=False)
    with pytest.raises(ConfigError):
        build_engine(loaded)  # refused at load; unchecked, every decision is a deny
    decision = await unchecked_engine(loaded).decide(request_input())
    assert not decision.allow
    expected = POLICY_UNDEFINED if reason == 1 else POLICY_UNAVAILABLE
    assert decision.reasons == (expected,)
    assert decision.status == (403 if reason == 1 else 503)


async def test_undefined_decision_denies(make_config: MakeConfig, tmp_path: Path) -> None:
    custom = tmp_path / "custom"
    _write(custom, "gateway/authz.rego", "package gateway.authz\n\nrenamed := true\n")
    loaded = make_config(extra_dirs=(custom,), shipped=False)
    with pytest.raises(ConfigError, match=r"data\.gateway\.authz\.decision is undefined"):
        build_engine(loaded)
    decision = await unchecked_engine(loaded).decide(request_input())
    assert decision.reasons == (POLICY_UNDEFINED,)


async def test_rule_conflict_at_evaluation_denies_503(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    custom = tmp_path / "custom"
    _write(
        custom,
        "gateway/authz.rego",
        "package gateway.authz\n\ndecision := 1 if input.method\n\ndecision := 2 if input.target\n",
    )
    loaded = make_config(extra_dirs=(custom,), shipped=False)
    with pytest.raises(ConfigError, match="the policy cannot decide"):
        build_engine(loaded)
    decision = await unchecked_engine(loaded).decide(request_input())
    assert decision.reasons == (POLICY_UNAVAILABLE,)
    assert decision.status == 503


@pytest.mark.parametrize(
    "changes",
    [
        # A NUL would cut the string short in rego-cpp's C API: "erp\0x" must not become "erp".
        {"target": "erp\x00x"},
        {"path_segments": ["api", "or\x00ders"]},
        {"method": b"GET"},
        {"signature": {"verified": {"a": {"b": {"c": {"d": {"e": {"f": {"g": True}}}}}}}}},
    ],
)
async def test_inputs_rego_cannot_hold_exactly_deny_503(
    make_config: MakeConfig, changes: dict[str, object]
) -> None:
    engine = build_engine(make_config())
    decision = await engine.decide(request_input() | changes)
    assert (decision.allow, decision.reasons, decision.status) == (
        False,
        (POLICY_UNAVAILABLE,),
        503,
    )
    # The engine is still usable afterwards.
    assert (await engine.decide(request_input())).allow


async def test_numbers_in_the_input_reach_the_policy(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    custom = tmp_path / "custom"
    _write(
        custom,
        "gateway/authz.rego",
        "package gateway.authz\n\n"
        'decision := {"allow": true, "target": null, "operation": null, "reasons": [], '
        '"revision": data.gateway.revision} if {\n'
        "\tinput.n == 7\n\tinput.f == 2.5\n\tinput.z == null\n\tinput.t == [1, 2]\n}\n",
    )
    engine = unchecked_engine(make_config(extra_dirs=(custom,), shipped=False))
    good = {"n": 7, "f": 2.5, "z": None, "t": (1, 2)}
    assert (await engine.decide(good)).allow
    assert not (await engine.decide(good | {"n": 8})).allow


async def test_extension_module_adds_a_veto(make_config: MakeConfig, tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    _write(
        extra,
        "freeze.rego",
        "package gateway_extensions.freeze\n\n"
        'deny contains "change_freeze" if input.method == "POST"\n',
    )
    engine = build_engine(make_config(extra_dirs=(extra,)))
    assert (await engine.decide(request_input())).allow
    post = await engine.decide(request_input("POST"))
    assert post.reasons == ("change_freeze",)
    assert post.operation == "read-orders"


async def test_example_change_window_turns_the_cache_off(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    extra = tmp_path / "extra"
    source = (ROOT / "policies" / "examples" / "change_window.rego").read_text(encoding="utf-8")
    _write(extra, "change_window.rego", source)
    engine = build_engine(make_config(extra_dirs=(extra,)))
    assert engine.cache is None
    read = await engine.decide(request_input())
    assert read.allow  # reads are never vetoed by the window
    write = await engine.decide(request_input("POST"))
    assert write.allow or write.reasons == ("outside_change_window",)


@pytest.mark.parametrize(
    ("name", "text", "code"),
    [
        ("extra/a.rego", "package gateway.authz\nx := 1\n", "reserved_package"),
        ("extra/b.rego", "package gateway.lib\nx := 1\n", "reserved_package"),
        ("extra/c.rego", "package gateway\ntargets := {}\n", "reserved_package"),
        ("extra/d.rego", "package gateway_extensions.a.b\nx := 1\n", "invalid_extension_package"),
        ("extra/e.rego", "x := 1\n", "invalid_policy"),
        ("extra/f.rego", "package corp\nx := time.weekday(0)\n", "unsupported_builtin"),
    ],
)
def test_modules_that_could_grant_or_crash_are_refused(
    make_config: MakeConfig, tmp_path: Path, name: str, text: str, code: str
) -> None:
    _write(tmp_path, name, text)
    with pytest.raises(ConfigError) as caught:
        load_policies(make_config(extra_dirs=(tmp_path / "extra",)))
    assert [p.code for p in caught.value.problems] == [code]


def test_examples_and_tests_are_not_policy_modules(make_config: MakeConfig) -> None:
    policies = load_policies(make_config())
    assert [m.id for m in policies.modules] == ["gateway/authz.rego"]
    assert [m.id for m in policies.tests] == ["gateway/authz_test.rego"]


def test_missing_decision_package_is_a_config_error(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    # Only a replacement of the built-in decision module can take the decision away.
    _write(tmp_path / "only", "gateway/authz.rego", "package corp.helpers\nx := 1\n")
    with pytest.raises(ConfigError) as caught:
        load_policies(make_config(extra_dirs=(tmp_path / "only",), shipped=False))
    assert caught.value.problems[0].code == "missing_decision"


def test_built_in_policy_needs_no_directory(make_config: MakeConfig, tmp_path: Path) -> None:
    policies = load_policies(make_config(extra_dirs=(tmp_path / "missing",), shipped=False))
    assert [(m.id, m.builtin) for m in policies.modules] == [("gateway/authz.rego", True)]
    assert [(m.id, m.builtin) for m in policies.tests] == [("gateway/authz_test.rego", True)]
    # The repository's copy of the policy is the packaged one: the same policy revision.
    shipped = load_policies(make_config())
    assert policies.revision.split("/")[1] == shipped.revision.split("/")[1]


def test_extensions_load_beside_the_built_in_policy(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    _write(
        tmp_path / "own",
        "freeze.rego",
        'package gateway_extensions.freeze\ndeny contains "x" if false\n',
    )
    policies = load_policies(make_config(extra_dirs=(tmp_path / "own",), shipped=False))
    assert [(m.id, m.builtin) for m in policies.modules] == [
        ("gateway/authz.rego", True),
        ("freeze.rego", False),
    ]


def test_compile_error_is_located(make_config: MakeConfig, tmp_path: Path) -> None:
    bad = _write(tmp_path / "extra", "bad.rego", "package corp\n\nallow if {\n  input.a ==\n}\n")
    with pytest.raises(ConfigError) as caught:
        build_engine(make_config(extra_dirs=(tmp_path / "extra",)))
    problem = caught.value.problems[0]
    assert problem.code == "policy_compile_error"
    assert problem.file == str(bad)
    assert problem.line == 4


async def test_records_and_documents_match_the_schemas(make_config: MakeConfig) -> None:
    loaded = make_config()
    request = canonicalise(
        loaded.config,
        method="GET",
        target="erp",
        request_target="/api/orders?access_token=s3cret&page=2",
        headers=[("Accept", "application/json")],
    )
    input = build_input(request, signed=True, keyid="empowerid-2026")
    _validator("policy-input.schema.json").validate(input)
    engine = build_engine(loaded)
    decision = await engine.decide(input)
    document = {
        k: v for k, v in decision.as_dict().items() if k in ("allow", "target", "operation")
    }
    document |= {"reasons": list(decision.reasons), "revision": decision.revision}
    _validator("policy-decision.schema.json").validate(document)


def test_query_masking_keeps_everything_but_credential_values() -> None:
    assert (
        mask_query("sig=abc&se=1&skn=x&q=1&%74oken=t&flag")
        == "sig=***&se=***&skn=***&q=1&%74oken=***&flag"
    )


def test_policy_data_is_the_allow_list_by_target_name(make_config: MakeConfig) -> None:
    data = policy_data(make_config().config, "rev")
    erp = data["targets"]["erp"]
    assert erp["port"] == 8443
    assert erp["operations"][0]["paths"] == [{"segments": ["api", "*"], "trailing_slash": False}]
    assert data["revision"] == "rev"


def test_policy_index_groups_routes_by_bucket_method_and_length(make_config: MakeConfig) -> None:
    data = policy_data(make_config().config, "rev")
    # The bucket is what the policy computes: substring(crypto.md5(name), 0, 1).
    assert bucket("erp") == hashlib.md5(b"erp").hexdigest()[0]
    erp = data["index"][bucket("erp")]["erp"]
    assert erp["scheme"] == "https"
    read = {
        "operation": "read-orders",
        "websocket": False,
        "length": 2,
        "literals": [[0, "api"]],
        "trailing_slash": False,
    }
    events = {
        "operation": "events",
        "websocket": True,
        "length": 1,
        "literals": [[0, "events"]],
        "trailing_slash": False,
    }
    assert erp["paths"] == {"exact": [[], [], [read]], "many": [events]}
    assert erp["methods"]["POST"] == {"exact": [[], [], [read]], "many": []}
    assert erp["methods"]["GET"]["many"] == [events]
    assert set(erp["methods"]) == {"GET", "POST"}
    directory = data["index"][bucket("directory")]["directory"]
    assert directory == {"scheme": "tcp", "paths": {"exact": [], "many": []}, "methods": {}}


async def test_targets_in_every_bucket_are_found(tmp_path: Path) -> None:
    # Enough targets that every one of the 16 buckets holds some: each must still be found.
    names = [f"t{i}" for i in range(80)]
    assert len({bucket(n) for n in names}) == 16
    body = "".join(
        f"  {n}:\n    scheme: https\n    host: {n}.corp.local\n    allowed_cidrs: [10.0.0.0/8]\n"
        "    operations: [{name: read, methods: [GET], paths: ['/x']}]\n"
        for n in names
    )
    path = tmp_path / "gateway.yaml"
    path.write_text(
        config_text([SHIPPED_POLICIES]).split("targets:")[0] + "targets:\n" + body,
        encoding="utf-8",
    )
    engine = build_engine(load(path, check_host=False))
    for name in names:
        decision = await engine.decide(request_input("GET", ("x",), target=name))
        assert (decision.allow, decision.target, decision.operation) == (True, name, "read")
