"""What the tests need to know about the event loop they run on (``TEST_EVENT_LOOP``,
tests/conftest.py) and the loops ``gateway run`` can serve on (:mod:`gateway.eventloop`)."""

from __future__ import annotations

import importlib.util

import pytest

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None
needs_uvloop = pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop is not installed here")

# How much earlier than asked a loop may fire a timer: asyncio's never does; uvloop's timers are
# libuv's, which count whole milliseconds from a clock read once per loop iteration, and fire up
# to about half a millisecond early (measured: 0.57 ms at most over 300 timeouts). A test that a
# timeout did not end a wait *before* its time allows this much, no more.
TIMER_SLACK = 0.001
