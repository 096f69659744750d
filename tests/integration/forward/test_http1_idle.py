"""Idle keep-alive connections of the forward's exchange are closed when their keep-alive ends,
whether or not another request comes (gateway.forward.http1.KEEPALIVE_SECONDS).

A pool that closed stale connections only when a later request picked one would hold, after a
burst, one descriptor per connection the burst opened for as long as the process lived.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.forward import http1
from tests.integration.forward.test_http1 import OK, Scripted, always, get

# How long the test waits for the closes at most: far beyond the shortened keep-alive, so a busy
# machine cannot fail it, while the unfixed pool (which never closes them) always does.
PATIENCE = 30.0


class Counted(Scripted):
    """The scripted server, telling when its side of every connection has ended."""

    ended = 0
    all_ended = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # It ends once it reads the client's close (EOF) on that connection.
        await super().serve(reader, writer)
        self.ended += 1
        if self.ended == self.connections:
            self.all_ended.set()


async def test_connections_left_idle_after_a_burst_are_closed_without_further_traffic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http1, "KEEPALIVE_SECONDS", 0.2)
    scripted = Counted(always(OK))
    scripted.all_ended = asyncio.Event()
    async with scripted as upstream:
        # Concurrent requests: each takes its own connection, and all of them go idle together.
        assert await asyncio.gather(*(get(upstream) for _ in range(4))) == [b"ok"] * 4
        assert scripted.connections == 4
        async with asyncio.timeout(PATIENCE):
            await scripted.all_ended.wait()
        assert scripted.ended == 4
        # The pool kept none of them: the next request opens a fresh connection.
        assert await get(upstream) == b"ok"
        assert scripted.connections == 5
