"""The decision cache: what the key is made of, when there is none, and its bound."""

from __future__ import annotations

from gateway.policy.cache import DecisionCache, plan_cache, project, strip_comments
from gateway.policy.engine import Decision


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
