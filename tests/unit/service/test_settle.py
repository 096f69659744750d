"""Start-up's objects frozen out of full collections, and thawed again after a reload."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from gateway.settle import resettle, settle


class Node:
    """A weak-referenceable object that can sit in a reference cycle."""

    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> tuple[Node, weakref.ref[Node]]:
    first, second = Node(), Node()
    first.other, second.other = second, first
    return first, weakref.ref(first)


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    # The test process's objects must not stay frozen for the tests that follow.
    yield
    gc.unfreeze()
    gc.collect()


def test_settle_collects_the_garbage_made_before_it_and_freezes_the_rest() -> None:
    garbage, dead = cycle()
    kept: list[object] = []
    del garbage
    frozen = settle()
    assert dead() is None
    assert frozen >= 1
    # A frozen object is in the permanent generation, out of every collection's walk.
    assert not any(found is kept for found in gc.get_objects())


def test_a_cycle_frozen_while_alive_survives_collections_until_resettle() -> None:
    held, alive = cycle()
    settle()
    del held
    gc.collect()
    assert alive() is not None  # what settle alone would leak once per reload
    resettle()
    assert alive() is None
    assert gc.get_freeze_count() >= 1
