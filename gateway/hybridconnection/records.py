"""Construction of the frozen records the relay edge makes for every relayed request.

A frozen dataclass's generated ``__init__`` sets each field with ``object.__setattr__`` (its own
``__setattr__`` refuses), about 0.12 us a field on the build machine. A slotted one can instead
call each slot's own setter (the ``__set__`` of its member descriptor), which is what
``object.__setattr__`` ends up calling anyway, at about half the cost. The records built once or
more per request (the parsed ``request``, its event, the application's request and answer, the
frames) declare ``init=False`` and an ``__init__`` that uses :func:`slot_setters`; every other
behaviour (equality, hashing, ``repr``, refusal to be changed, ``dataclasses.replace``) is the
dataclass's own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

__all__ = ["slot_setters"]


def slot_setters(cls: type, *names: str) -> tuple[Callable[[Any, Any], None], ...]:
    """The setters of the slots of a slotted dataclass ``cls``, one per field, in order.

    ``names`` must be every field of ``cls`` in declaration order (``TypeError`` otherwise), so
    an ``__init__`` written with them cannot leave a field unset.
    """
    declared = tuple(field.name for field in dataclasses.fields(cls))
    if names != declared:
        raise TypeError(f"{cls.__name__}: fields are {declared}, not {names}")
    return tuple(vars(cls)[name].__set__ for name in names)
