"""OAuth 2.0 client credentials (RFC 6749 section 4.4) against an on-prem token endpoint.

The token request goes through a :class:`gateway.forward.upstream.TargetPool` built for the token
endpoint alone, so it is dialled exactly like a target: the host is resolved once and every
address checked against the endpoint's ``allowed_cidrs`` and the special ranges, the connection is
pinned to a checked address, TLS is verified with the configured CA, redirects are never followed,
environment proxies are ignored and every phase is bounded by ``timeout_seconds``. OAuth client
libraries bring their own HTTP clients (httpx, requests) with their own resolution and proxy
handling, which would bypass that step; the grant itself is one form-encoded POST and one JSON
answer, written here against the RFC.

Caching: one token per credential and configuration revision, used until ``refresh_before_seconds``
before it expires. Concurrent requests that find no usable token share one fetch (single-flight).
When a refresh fails while the old token is still valid, the old token is used and the failure
logged; with no valid token the request fails closed (503 ``token_endpoint_unavailable`` when the
endpoint cannot be reached or answers 5xx, 502 ``token_endpoint_error`` when it answers wrongly).
After a failure, new fetches wait :data:`FAILURE_HOLD` seconds so a down endpoint is not hammered
by every relayed request.

Secrets: the client secret and the tokens never appear in a message, a log record or an
exception; only the endpoint URL, the HTTP status and the RFC 6749 section 5.2 ``error`` code.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote_plus, urlencode

from pydantic import SecretStr

from gateway.config.model import GatewayConfig, OAuth2ClientCredentials
from gateway.config.secrets import SecretError, SecretSource
from gateway.errors import GatewayError
from gateway.forward.dial import DialError, Guard, Redirect, Resolver, system_resolver
from gateway.forward.upstream import TargetPool

__all__ = [
    "FAILURE_HOLD",
    "CredentialError",
    "Token",
    "TokenSource",
    "parse_token_response",
]

log = logging.getLogger(__name__)

# A token answer is a small JSON object; anything bigger is not one.
MAX_TOKEN_RESPONSE = 64 * 1024
# Longest access token accepted (it becomes a header value: limits.max_header_bytes applies).
MAX_TOKEN_LENGTH = 16 * 1024
# Seconds new fetches are held back after a failed one (see the module docstring).
FAILURE_HOLD = 1.0
# RFC 6749 section 5.1 makes expires_in RECOMMENDED: without it, the token is used this long.
DEFAULT_LIFETIME = 300.0
# A longer lifetime is capped: a credential change at the endpoint is noticed within a day.
MAX_LIFETIME = 86_400.0
# RFC 6750 section 2.1 b64token: what may follow "Bearer " in an Authorization header.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# RFC 6749 section 5.2: error codes are NQSCHAR; shown only when they look like one.
_ERROR_CODE = re.compile(r"[\x20-\x21\x23-\x5b\x5d-\x7e]{1,64}")


class CredentialError(GatewayError):
    """A credential cannot be injected: ``code`` and ``status`` are what the SaaS is told."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def _unavailable(message: str) -> CredentialError:
    return CredentialError("token_endpoint_unavailable", message, 503)


def _bad_answer(message: str) -> CredentialError:
    return CredentialError("token_endpoint_error", message, 502)


@dataclass(frozen=True, slots=True)
class Token:
    """An access token and when (on the source's clock) to stop using and to refresh it."""

    value: SecretStr
    expires_at: float
    refresh_at: float


class TokenSource:
    """Fetches, caches and refreshes one credential's access token (see the module docstring)."""

    def __init__(
        self,
        name: str,
        settings: OAuth2ClientCredentials,
        secret: SecretSource,
        config: GatewayConfig,
        *,
        resolver: Resolver = system_resolver,
        redirect: Redirect | None = None,
        guard: Guard | None = None,
        resolve_path: Callable[[str], Path] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._settings = settings
        self._secret = secret
        self._endpoint = settings.endpoint()
        # One pool per credential: the dial step maps host:port to one set of allowed networks.
        self._pool = TargetPool(
            config,
            {name: self._endpoint},
            limit=4,
            resolver=resolver,
            redirect=redirect,
            guard=guard,
            resolve_path=resolve_path,
            session_options=lambda: {"auto_decompress": False},
        )
        self._clock = clock
        self._token: Token | None = None
        self._fetch: asyncio.Future[Token] | None = None
        self._held_until = 0.0
        self._last_error: CredentialError | None = None

    @property
    def url(self) -> str:
        """The token endpoint (safe to show: it holds no credential)."""
        return self._settings.token_url

    async def token(self) -> SecretStr:
        """A valid access token: the cached one, or a fresh one (one fetch for all callers)."""
        now = self._clock()
        current = self._token
        if current is not None and now < current.refresh_at:
            return current.value
        try:
            fresh = await self._shared_fetch(now)
        except CredentialError:
            if current is not None and self._clock() < current.expires_at:
                return current.value  # logged once by _settle as token_refresh_failed
            raise
        return fresh.value

    def invalidate(self, value: str) -> None:
        """Forget the cached token if it is ``value`` (the API answered 401 with it), so the next
        request fetches a new one."""
        current = self._token
        if current is not None and current.value.get_secret_value() == value:
            self._token = None

    async def _shared_fetch(self, now: float) -> Token:
        if self._fetch is None:
            last = self._last_error
            if now < self._held_until and last is not None:
                raise CredentialError(last.code, str(last), last.status)
            self._fetch = asyncio.ensure_future(self._fetch_once())
            self._fetch.add_done_callback(self._settle)
        # Shielded: one caller giving up (its request was cancelled) must not cancel the fetch
        # the others are waiting for.
        return await asyncio.shield(self._fetch)

    def _settle(self, fetch: asyncio.Future[Token]) -> None:
        self._fetch = None
        if fetch.cancelled():
            return
        error = fetch.exception()
        if error is None:
            token = fetch.result()
            self._token = token
            self._last_error = None
            log.info(
                "credential %s: new token from %s, valid for %.0f s",
                self.name,
                self.url,
                token.expires_at - self._clock(),
                extra={"event": "token_fetched", "credential": self.name},
            )
            return
        if isinstance(error, CredentialError):
            self._last_error = error
            self._held_until = self._clock() + FAILURE_HOLD
            current = self._token
            # The error names the endpoint and the status or RFC 6749 error code, never a secret.
            if current is not None and self._clock() < current.expires_at:
                log.warning(
                    "credential %s: %s: the current token is still valid and stays in use",
                    self.name,
                    error,
                    extra={"event": "token_refresh_failed", "credential": self.name},
                )
            else:
                log.warning(
                    "credential %s: %s: requests that need it fail closed until a token can be "
                    "fetched",
                    self.name,
                    error,
                    extra={"event": "token_fetch_failed", "credential": self.name},
                )

    async def _fetch_once(self) -> Token:
        settings = self._settings
        try:
            secret = self._secret.get().get_secret_value()
        except SecretError as exc:
            raise CredentialError("credential_unavailable", str(exc), 503) from None
        form: dict[str, str] = {"grant_type": "client_credentials"}
        if settings.scopes:
            form["scope"] = " ".join(settings.scopes)
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }
        if settings.client_auth == "client_secret_basic":
            # RFC 6749 section 2.3.1: id and secret are form-encoded, then used as Basic
            # credentials (RFC 7617).
            pair = f"{quote_plus(settings.client_id, safe='')}:{quote_plus(secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = settings.client_id
            form["client_secret"] = secret
        started = self._clock()
        body, status = await self._post(urlencode(form).encode(), headers)
        return parse_token_response(
            body,
            status,
            started=started,
            refresh_before=settings.refresh_before_seconds,
            where=f"token endpoint {self.url}",
        )

    async def _post(self, body: bytes, headers: dict[str, str]) -> tuple[bytes, int]:
        settings = self._settings
        endpoint = self._endpoint
        pool = self._pool
        # The pool's URL names the endpoint by its dial-step name, so only the dial step can
        # turn it into an address; Host and TLS keep the configured name.
        url = pool.url(self.name, endpoint.scheme, settings.path, None)
        timeout = settings.timeout_seconds
        # Imported with the first token request: only gateways with OAuth credentials need it.
        import aiohttp

        from gateway.outbound.sessions import RedirectRefusedError

        try:
            async with asyncio.timeout(timeout):
                response = await pool.session().post(
                    url,
                    data=body,
                    headers=pool.headers(self.name, headers.items()),
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                    ssl=pool.tls(self.name) if endpoint.scheme == "https" else True,
                    server_hostname=pool.server_name(self.name),
                )
                async with response:
                    data = await response.content.read(MAX_TOKEN_RESPONSE + 1)
                    return data, response.status
        except TimeoutError:
            raise _unavailable(
                f"token endpoint {self.url} did not answer within {timeout}s"
            ) from None
        except DialError as exc:
            raise _bad_answer(f"token endpoint {self.url}: {exc}") from None
        except RedirectRefusedError as exc:
            raise _bad_answer(
                f"token endpoint {self.url} refused the request: {exc.status}"
            ) from None
        except aiohttp.ClientSSLError:
            # Before ClientConnectorError, its base class: a certificate the configured CA does
            # not vouch for is a wrong endpoint, not a down one.
            raise _bad_answer(f"TLS with token endpoint {self.url} failed") from None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, DialError):
                raise _bad_answer(f"token endpoint {self.url}: {exc.os_error}") from None
            raise _unavailable(f"cannot connect to token endpoint {self.url}") from None
        except (aiohttp.ClientError, OSError, ValueError):
            raise _unavailable(f"token endpoint {self.url} failed mid-answer") from None

    async def close(self) -> None:
        """Close the endpoint's connection pool and forget the token."""
        self._token = None
        if self._fetch is not None:
            self._fetch.cancel()
        await self._pool.close()


def parse_token_response(
    body: bytes, status: int, *, started: float, refresh_before: float, where: str
) -> Token:
    """The token in a token endpoint's answer (RFC 6749 sections 5.1 and 5.2), or
    :class:`CredentialError`. ``started`` is when the request was sent (the lifetime counts from
    then); ``where`` names the endpoint in messages. No part of ``body`` but a well-formed RFC
    6749 ``error`` code ever reaches a message."""
    if status >= 500:
        raise _unavailable(f"{where} answered {status}")
    if len(body) > MAX_TOKEN_RESPONSE:
        raise _bad_answer(f"{where} sent more than {MAX_TOKEN_RESPONSE} bytes")
    try:
        answer = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _bad_answer(f"{where} answered {status} without a JSON object") from None
    if not isinstance(answer, dict):
        raise _bad_answer(f"{where} answered {status} without a JSON object")
    if status != 200:
        # RFC 6749 section 5.2: {"error": "invalid_client", ...}. Only the code is shown:
        # error_description is free text and could echo what was sent.
        code = answer.get("error")
        shown = code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else "no code"
        raise _bad_answer(f"{where} refused the request: {status} {shown}")
    token = answer.get("access_token")
    if (
        not isinstance(token, str)
        or len(token) > MAX_TOKEN_LENGTH
        or not _B64TOKEN.fullmatch(token)
    ):
        raise _bad_answer(f"{where} answered without a usable access_token")
    token_type = answer.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        # RFC 6749 section 7.1: a client must not use a token type it does not understand.
        raise _bad_answer(f"{where} issued a token that is not a bearer token")
    lifetime = answer.get("expires_in", DEFAULT_LIFETIME)
    if (
        isinstance(lifetime, bool)
        or not isinstance(lifetime, int | float)
        or not 0 < lifetime < math.inf
    ):
        raise _bad_answer(f"{where} answered with an invalid expires_in")
    lifetime = float(min(lifetime, MAX_LIFETIME))
    expires_at = started + lifetime
    margin = min(refresh_before, lifetime / 2)
    return Token(SecretStr(token), expires_at, expires_at - margin)
