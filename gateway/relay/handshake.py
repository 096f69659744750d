"""The reason phrase of a refused relay handshake, through aiohttp's public tracing API.

aiohttp's ``WSServerHandshakeError`` carries the status of a refused WebSocket handshake but not
its reason phrase, and the relay puts what went wrong there (protocol notes section 3.1: a 403 for
a listener quota looks like a 403 for a wrong token except for its text, and every refusal
carries a tracking id). A :class:`HandshakeReasons` is attached to the client session as a
``TraceConfig``; it keeps the reason of every refused response by URL until the caller takes it.
"""

from __future__ import annotations

from collections import OrderedDict
from types import SimpleNamespace
from typing import Final

import aiohttp
from yarl import URL

__all__ = ["HandshakeReasons"]

# Refusals are taken right after the handshake fails; this bounds what a burst of failures that
# nobody collects (a cancelled dial) could leave behind.
_MAX_KEPT: Final = 64


class HandshakeReasons:
    """Remembers the reason phrases of refused responses of one session, keyed by URL."""

    def __init__(self) -> None:
        self._reasons: OrderedDict[str, str] = OrderedDict()
        self.trace_config = aiohttp.TraceConfig()
        self.trace_config.on_request_end.append(self._on_request_end)

    async def _on_request_end(
        self,
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestEndParams,
    ) -> None:
        response = params.response
        if response.status >= 400:
            self._reasons[str(params.url)] = response.reason or ""
            while len(self._reasons) > _MAX_KEPT:
                self._reasons.popitem(last=False)

    def take(self, url: str | URL) -> str:
        """The reason of the refused response to ``url`` (empty if none was seen); forgets it."""
        # aiohttp builds the request URL as URL(text) for a str; normalise the same way.
        return self._reasons.pop(str(url if isinstance(url, URL) else URL(url)), "")
