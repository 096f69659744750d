"""The OPA engine: decisions from an OPA server over its REST API (aiohttp).

The gateway pushes its policy modules (``PUT /v1/policies/gateway/<id>``) and the allow-list
(``PUT /v1/data/gateway``) and asks ``POST /v1/data/gateway/authz/decision`` for each request.
Pushing keeps gateway.yaml the single source of truth: the OPA server is a place to evaluate, not
a second place to configure. Policies go first and the data last, because the data carries the
revision every decision echoes: until the new data is in, decisions name the old revision and the
engine refuses them, so a half-pushed update never decides anything. With ``push=False`` the
engine expects an operator to have loaded both (for example from a bundle) and only checks that
``data.gateway.revision`` is this revision.

Failure behaviour (catalogue G; every case is a deny, never an exception):

* OPA unreachable at start (112): the engine is not ``ready``; decisions are 503
  ``policy_unavailable`` at once, and a background task keeps pushing with capped, jittered
  backoff until OPA answers.
* OPA lost while running (113): the failed decision is a 503; the engine assumes OPA may come back
  empty (it keeps pushed policies in memory only), stops asking, and the background task pushes
  again, after which decisions resume by themselves.
* undefined or malformed result (114): 403 ``policy_undefined``; the background task checks that
  OPA still holds this revision and pushes again if not.
* slow OPA (116): no answer within ``policy.decision_timeout_seconds`` is a 503; the request is
  cancelled, so a late answer is discarded, and the event loop never waits on it.

No request is retried: a retry would multiply the decision time, and the timeout here is the
whole budget. No redirect is followed: OPA's REST API answers every request itself, and a
redirect would hand the request's input, the policy or the allow-list (hosts, ports, networks) to
another server and take that server's word for a decision or for the revision it holds. An
answer larger than :data:`MAX_ANSWER_BYTES` (a decision) or :data:`MAX_SYNC_ANSWER_BYTES` (the
loading requests; OPA lists policies with their syntax trees) is a fault before it is held in
memory. Earlier versions used ``opa-python-client``, whose requests do both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from gateway.errors import ConfigError, Problem
from gateway.outbound.sessions import RedirectRefusedError, client_session
from gateway.policy.cache import DecisionCache, project
from gateway.policy.engine import POLICY_UNAVAILABLE, UNDEFINED, EngineError, Mode, PolicyEngine
from gateway.policy.loader import PolicySet

__all__ = ["MAX_ANSWER_BYTES", "MAX_SYNC_ANSWER_BYTES", "POLICY_ID_PREFIX", "OpaEngine"]

log = logging.getLogger("gateway.policy")

POLICY_ID_PREFIX = "gateway/"
"""OPA policy ids the gateway owns; others on the same server are left alone."""
DECISION_PATH = "gateway/authz"
DATA_PATH = "gateway"
MAX_ANSWER_BYTES = 1 << 20
"""The largest decision answer read: a decision document is a few hundred bytes, an LDAP one
with long attribute lists a few KiB."""
MAX_SYNC_ANSWER_BYTES = 64 << 20
"""The largest answer to a loading request (the policy list carries every module's syntax tree)."""

# Errors a request to OPA can end in: transport, and an answer no decision can be read from
# (_OpaAnswerError, a ValueError: redirect, HTTP status, size, not JSON).
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError,
    OSError,
    ValueError,
    TimeoutError,
)


class OpaEngine(PolicyEngine):
    """Asks an OPA server, with a decision timeout, and keeps it loaded with this revision."""

    name = "opa"

    def __init__(
        self,
        policies: PolicySet,
        *,
        url: str,
        timeout: float,
        mode: Mode,
        cache: DecisionCache | None,
        push: bool = True,
        sync_timeout: float = 5.0,
        retry_base: float = 0.2,
        retry_cap: float = 5.0,
    ) -> None:
        super().__init__(revision=policies.revision, mode=mode, cache=cache)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                [Problem("opa_url must be http(s)://HOST[:PORT]", code="invalid_opa_url")]
            )
        self._policies = policies
        self._root_url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}/v1"
        self._tls = parts.scheme == "https"
        self._timeout = timeout
        self._sync_timeout = max(sync_timeout, timeout)
        self._push = push
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        # In push mode the policy is known, so only the fields it reads are sent.
        self._fields = policies.cache_plan.fields if push else None
        self._session: aiohttp.ClientSession | None = None
        self._exit = contextlib.AsyncExitStack()
        self._synced = False
        self._wake = asyncio.Event()
        self._sync_task: asyncio.Task[None] | None = None
        self._last_error = "not started"

    @property
    def ready(self) -> bool:
        """True once OPA holds this revision; false while it is unreachable or being loaded."""
        return self._synced

    @property
    def status(self) -> str:
        """One line for health output: ``loaded`` or the last error."""
        return "loaded" if self._synced else self._last_error

    async def start(self) -> None:
        """Connect, load OPA once (without raising), and start the background loader."""
        # https: the system's CAs, hostname checked. Every request also runs under an
        # asyncio.timeout of its own (decision or loading timeout); this one is the backstop.
        self._session = await self._exit.enter_async_context(
            client_session(
                follow_redirects=False,
                connector=aiohttp.TCPConnector(
                    ssl=ssl.create_default_context() if self._tls else False
                ),
                timeout=aiohttp.ClientTimeout(total=self._sync_timeout),
            )
        )
        await self._sync_once()
        self._sync_task = asyncio.create_task(self._sync_loop(), name="opa-policy-sync")
        if not self._synced:
            self._wake.set()

    async def close(self) -> None:
        """Stop the background loader and close the HTTP session."""
        task, self._sync_task = self._sync_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._exit.aclose()
        self._session = None

    async def _evaluate(self, input: Mapping[str, Any]) -> Any:
        session = self._session
        if session is None or not self._synced:
            self._wake.set()
            raise EngineError(POLICY_UNAVAILABLE, f"OPA is not loaded: {self._last_error}")
        document = dict(input) if self._fields is None else project(input, self._fields)
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._call(
                    session,
                    "POST",
                    f"data/{DECISION_PATH}/decision",
                    body=orjson.dumps({"input": document}),
                    content_type="application/json",
                    limit=MAX_ANSWER_BYTES,
                )
        except TimeoutError:
            raise EngineError(
                POLICY_UNAVAILABLE, f"OPA gave no decision within {self._timeout} s"
            ) from None
        except _TRANSPORT_ERRORS as exc:
            # OPA may restart empty: stop asking and load it again before the next decision.
            self._lost(f"OPA request failed: {_describe(exc)}")
            raise EngineError(POLICY_UNAVAILABLE, self._last_error) from None
        if not isinstance(response, dict) or "result" not in response:
            self._wake.set()  # check in the background that OPA still holds this revision
            return UNDEFINED
        return response["result"]

    async def _call(
        self,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        content_type: str = "application/json",
        limit: int = MAX_SYNC_ANSWER_BYTES,
    ) -> Any:
        """One request to OPA's REST API (``/v1/<path>``), the parsed JSON answer or None for an
        empty one; raises one of the transport errors on a redirect or another status than 2xx,
        or an answer over ``limit`` bytes or not JSON."""
        headers = {"Content-Type": content_type} if body is not None else None
        async with session.request(
            method,
            f"{self._root_url}/{path}",
            data=body,
            headers=headers,
            allow_redirects=False,
        ) as response:
            if not 200 <= response.status < 300:
                raise _OpaAnswerError(f"HTTP {response.status}")
            if (response.content_length or 0) > limit:
                raise _OpaAnswerError(f"answer of {response.content_length} bytes")
            raw = bytearray()
            while chunk := await response.content.read(64 * 1024):
                raw += chunk
                if len(raw) > limit:
                    raise _OpaAnswerError(f"answer larger than {limit} bytes")
        if not raw:
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _OpaAnswerError("answer is not JSON") from None

    def _lost(self, why: str) -> None:
        self._synced = False
        self._last_error = why
        self._wake.set()

    async def _sync_loop(self) -> None:
        failures = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._sync_once()
            if self._synced:
                failures = 0
                continue
            failures += 1
            # Full-jitter exponential backoff, so a fleet does not hammer a recovering OPA.
            delay = random.uniform(0, min(self._retry_cap, self._retry_base * 2**failures))  # noqa: S311
            await asyncio.sleep(delay)
            self._wake.set()

    async def _sync_once(self) -> None:
        session = self._session
        if session is None:
            return
        try:
            async with asyncio.timeout(self._sync_timeout):
                if self._synced or not self._push:
                    if await self._holds_revision(session):
                        self._mark_synced()
                        return
                    if not self._push:
                        self._synced = False
                        self._last_error = "OPA does not hold this revision's data"
                        return
                    self._synced = False
                await self._load(session)
            self._mark_synced()
        except Exception as exc:  # the loader must survive anything OPA or the network does
            self._synced = False
            self._last_error = f"loading OPA failed: {_describe(exc)}"
            log.warning(
                "%s",
                self._last_error,
                extra={"event": "opa_sync_failed", "revision": self.revision},
            )

    def _mark_synced(self) -> None:
        if not self._synced:
            log.info(
                "OPA holds policy revision %s",
                self.revision,
                extra={"event": "opa_synced", "revision": self.revision},
            )
        self._synced = True
        self._last_error = ""

    async def _holds_revision(self, session: aiohttp.ClientSession) -> bool:
        # OPA answers {} for data that is not there (Data API, GET /v1/data/{path}).
        body = await self._call(session, "GET", f"data/{DATA_PATH}/revision")
        return isinstance(body, dict) and body.get("result") == self.revision

    async def _load(self, session: aiohttp.ClientSession) -> None:
        wanted = {POLICY_ID_PREFIX + m.id for m in self._policies.modules}
        for module in self._policies.modules:
            await self._call(
                session,
                "PUT",
                f"policies/{POLICY_ID_PREFIX}{module.id}",
                body=module.source.encode("utf-8"),
                content_type="text/plain",
            )
        # Modules of an earlier revision that are gone now must not stay in the decision.
        listed = await self._call(session, "GET", "policies")
        policies = listed.get("result") if isinstance(listed, dict) else None
        for policy in policies if isinstance(policies, list) else ():
            policy_id = policy.get("id") if isinstance(policy, dict) else None
            if (
                isinstance(policy_id, str)
                and policy_id.startswith(POLICY_ID_PREFIX)
                and policy_id not in wanted
            ):
                await self._call(session, "DELETE", f"policies/{policy_id}")
        await self._call(
            session, "PUT", f"data/{DATA_PATH}", body=orjson.dumps(self._policies.data)
        )


class _OpaAnswerError(ValueError):
    """OPA answered, but not with something a decision can be read from (a redirect, an error
    status, an oversized or malformed body)."""


def _describe(exc: BaseException) -> str:
    """A short description of a transport error, free of request contents."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status}"
    if isinstance(exc, RedirectRefusedError):
        return f"HTTP {exc.status} (a redirect, not followed)"
    if isinstance(exc, _OpaAnswerError):
        return f"unusable answer ({exc})"
    text = str(exc).splitlines()[0][:160] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
