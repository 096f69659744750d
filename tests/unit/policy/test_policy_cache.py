"""The decision cache: what the key is made of, when there is none, and its bound."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from gateway.policy.cache import DecisionCache, plan_cache, project, strip_comments
from gateway.policy.engine import Decision
from gateway.policy.loader import build_engine
from tests.unit.policy.conftest import MakeConfig, request_input


def _decision(allow: bool = True) -> Decision:
    return Decision(allow, "erp", "op", (), "rev", 0.0)


def test_fields_come_from_input_references_and_comments_do_not_count() -> None:
    plan = plan_cache(['package p\n# the whole input document\nx if input.method == "GET"\n'])
    assert plan.fields == (("method",),)
    assert plan.cacheable


def test_a_reference_to_the_whole_input_keys_on_everything() -> None:
    assert plan_cache(["package p\nx := input\n"]).fields is None
    assert plan_cache(['package p\nx := input["method"]\n']).fields is None


def test_nested_fields_collapse_into_their_parent() -> None:
    plan = plan_cache(["package p\na := input.signature.verified\nb := input.signature\n"])
    assert plan.fields == (("signature",),)


def test_non_deterministic_builtins_turn_the_cache_off() -> None:
    plan = plan_cache(["package p\nx := time.now_ns()\n"])
    assert not plan.cacheable
    assert "time.now_ns" in plan.reason
    assert plan_cache(["package p\n# time.now_ns() in a comment\ny := 1\n"]).cacheable
    # Text inside strings counts: the analysis may only err towards no cache.
    assert not plan_cache(['package p\ny := "time.now_ns()"\n']).cacheable


def test_strings_containing_hash_are_not_comments() -> None:
    assert "input.query" in strip_comments('x := "#" ; y := input.query # input.method\n')
    assert "input.method" not in strip_comments('x := "#" ; y := input.query # input.method\n')


def test_key_separates_json_types_and_ignores_unread_fields() -> None:
    cache = DecisionCache((("a",),))
    assert cache.key({"a": True}) != cache.key({"a": 1})
    assert cache.key({"a": [1]}) != cache.key({"a": {"1": 1}})
    assert cache.key({"a": "x", "b": 1}) == cache.key({"a": "x", "b": 2})
    assert cache.key({}) != cache.key({"a": None})


def test_lru_is_bounded_and_keeps_the_recently_used() -> None:
    cache = DecisionCache((("a",),), max_entries=2)
    for value in ("x", "y"):
        cache.put(cache.key({"a": value}), _decision())
    assert cache.get(cache.key({"a": "x"})) is not None  # x is now most recent
    cache.put(cache.key({"a": "z"}), _decision())
    assert len(cache) == 2
    assert cache.get(cache.key({"a": "y"})) is None
    assert cache.get(cache.key({"a": "x"})) is not None


def test_projection_keeps_only_read_fields() -> None:
    doc = {"a": 1, "s": {"v": True, "k": "secret"}, "q": "x"}
    assert project(doc, (("a",), ("s", "v"), ("missing",))) == {"a": 1, "s": {"v": True}}


def test_key_is_total_and_an_unkeyable_input_is_not_cached() -> None:
    cache = DecisionCache((("a",), ("b", "c")))
    for odd in ({"x"}, b"x", {1: "x"}, object(), [1, {"y"}], {"n": frozenset()}):
        key = cache.key({"a": odd})
        assert key is None
        cache.put(key, _decision())
        assert cache.get(key) is None
    assert len(cache) == 0
    assert DecisionCache(None).key({"a": {"x"}}) is None
    # A value the policy does not read never matters, whatever it is.
    assert cache.key({"a": "x", "z": {"x"}}) == cache.key({"a": "x"})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(a=json_values, b=json_values)
def test_keys_are_equal_exactly_when_the_json_documents_are(a: object, b: object) -> None:
    cache = DecisionCache((("v",),))
    same = json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert (cache.key({"v": a}) == cache.key({"v": b})) == same
    hash(cache.key({"v": a}))


any_numbers = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(2**63 - 2, 2**64 + 2)
    | st.floats()
    | st.sampled_from([0.0, -0.0, 1.0, float("inf"), float("-inf"), float("nan")])
    | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3)
    ),
    max_leaves=8,
)
documents = st.dictionaries(st.sampled_from(["a", "b", "s"]), any_numbers, max_size=3)


def _same(a: object, b: object) -> bool:
    """Whether two documents are the same JSON value, telling types apart (true is not 1, 1 is
    not 1.0) and NaN, the infinities and -0.0 apart from anything else."""
    return json.dumps(_tagged(a), sort_keys=True) == json.dumps(_tagged(b), sort_keys=True)


def _tagged(value: object) -> object:
    if isinstance(value, dict):
        return {k: _tagged(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tagged(v) for v in value]
    if isinstance(value, float):
        return ["float", repr(value)]
    return [type(value).__name__, value]


@given(a=documents, b=documents)
def test_equal_keys_mean_equal_read_fields_whatever_the_numbers(
    a: dict[str, object], b: dict[str, object]
) -> None:
    # NaN, infinities (which JSON texts write as null), integers beyond 64 bits and -0.0 never
    # make two different documents share a key; a missing field is not a null one.
    for fields in ((("a",), ("b",)), (("a",), ("s", "x")), None):
        cache = DecisionCache(fields)
        key_a, key_b = cache.key(a), cache.key(b)
        assert key_a is not None
        hash(key_a)
        if key_a == key_b:
            read_a = a if fields is None else project(a, fields)
            read_b = b if fields is None else project(b, fields)
            assert _same(read_a, read_b)


def test_nan_and_infinities_are_not_null() -> None:
    cache = DecisionCache((("a",),))
    keys = [cache.key({"a": v}) for v in (None, float("inf"), float("-inf"), [None], [1e999])]
    assert len(set(keys)) == 5
    assert cache.key({"a": 2**64}) != cache.key({"a": 2**64 + 1})
    assert cache.key({"a": 2**64}) == cache.key({"a": 2**64})


async def test_an_input_the_cache_cannot_key_is_decided_without_it(
    make_config: MakeConfig,
) -> None:
    engine = build_engine(make_config())
    odd = {**request_input(), "method": {"GET"}}  # a set: not JSON, so no cache key exists
    decision = await engine.decide(odd)
    assert not decision.allow
    assert not decision.cached
    assert engine.cache is not None
    assert len(engine.cache) == 0
    # The same request as JSON is decided and cached as before.
    assert (await engine.decide(request_input())).allow
    assert len(engine.cache) == 1


def test_a_decision_served_from_the_cache_keeps_every_field() -> None:
    import dataclasses

    from gateway.policy.engine import Decision

    decision = Decision(
        allow=False,
        target="erp",
        operation="read",
        reasons=("r1", "r2"),
        revision="rev",
        latency=0.25,
        cached=False,
        monitor=True,
        strip_attributes=("userpassword",),
        hidden_subtrees=(("dc=example", "ou=secret"),),
    )
    # Every field is set above; a field added to Decision must be carried by from_cache too.
    assert {f.name for f in dataclasses.fields(Decision)} == {
        "allow",
        "target",
        "operation",
        "reasons",
        "revision",
        "latency",
        "cached",
        "monitor",
        "strip_attributes",
        "hidden_subtrees",
    }
    served = decision.from_cache(0.5)
    assert served == dataclasses.replace(decision, latency=0.5, cached=True)


@given(value=json_values)
def test_a_missing_field_keys_unlike_any_value(value: object) -> None:
    # The stand-in for a field the input does not have (top-level or nested) must differ from
    # every JSON value, the falsy ones and the NUL character included.
    cache = DecisionCache((("a",), ("s", "x")))
    for present in ({"a": value}, {"s": {"x": value}}):
        assert cache.key(present) != cache.key({})
    falsy_values: list[object] = [None, False, 0, 0.0, "", "\x00", [], {}]
    for falsy in falsy_values:
        assert cache.key({"a": falsy}) != cache.key({})
        assert cache.key({"s": {"x": falsy}}) != cache.key({"s": {}})
