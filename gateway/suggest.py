"""The "did you mean" suggestion of a refused name: the closest of the names that are known.

Only a mistake needs a suggestion, so :mod:`difflib` is imported on the first one rather than
by every module that can refuse a name: a gateway that starts with a correct configuration and
command line never carries it (issue 13: idle memory of ``gateway run``).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["closest"]


def closest(word: str, known: Iterable[str]) -> str | None:
    """The known name most like ``word`` (:func:`difflib.get_close_matches`, its default
    similarity cutoff of 0.6), or None when none is close enough."""
    import difflib

    matches = difflib.get_close_matches(word, list(known), n=1)
    return matches[0] if matches else None
