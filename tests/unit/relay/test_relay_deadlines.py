"""The listener's handler deadlines (gateway/relay/listener.py ``_Deadlines``): one timer, a
queue in start order, memory bounded by the handlers still running."""

from __future__ import annotations

import asyncio
import contextlib

from gateway.relay.listener import _Deadlines


async def test_a_slow_handler_at_the_head_does_not_keep_the_finished_ones() -> None:
    deadlines = _Deadlines(60.0)
    loop = asyncio.get_running_loop()
    slow = loop.create_task(asyncio.sleep(60))
    head = deadlines.start(slow)
    done = loop.create_task(asyncio.sleep(0))
    for _ in range(10_000):
        deadlines.finish(deadlines.start(done))
    # Only the slow handler is running: the queue holds it and at most 2 x 1 + 64 others.
    assert len(deadlines._queue) <= 2 * 1 + 64 + 1
    assert not head.expired
    deadlines.finish(head)
    assert not deadlines._queue
    deadlines.cancel()
    slow.cancel()
    await asyncio.gather(slow, done, return_exceptions=True)


async def test_only_the_handlers_past_their_deadline_are_cancelled() -> None:
    deadlines = _Deadlines(0.05)
    loop = asyncio.get_running_loop()
    stuck = loop.create_task(asyncio.sleep(60))
    stuck_deadline = deadlines.start(stuck)
    quick = loop.create_task(asyncio.sleep(0))
    quick_deadline = deadlines.start(quick)
    await quick
    deadlines.finish(quick_deadline)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(stuck), 30)  # a bound for the failure only
    assert stuck.cancelled()
    assert stuck_deadline.expired
    assert not quick_deadline.expired
    deadlines.finish(stuck_deadline)
    deadlines.cancel()
