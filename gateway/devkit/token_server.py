"""A local OAuth 2.0 token endpoint and an API that requires a credential, for tests and demos.

:class:`TokenServer` implements the client credentials grant (RFC 6749 section 4.4) as an
on-prem identity provider would: ``POST`` of ``application/x-www-form-urlencoded``
``grant_type=client_credentials`` with the client authenticated by HTTP Basic
(``client_secret_basic``, RFC 6749 section 2.3.1, id and secret form-encoded) or in the body
(``client_secret_post``); it answers ``{"access_token", "token_type": "Bearer", "expires_in",
"scope"}`` with ``Cache-Control: no-store`` (section 5.1), or a section 5.2 error
(``invalid_client`` 401, ``unsupported_grant_type``, ``invalid_scope``, ``invalid_request`` 400).
Tokens are random and remembered with their expiry, so :class:`ProtectedApi` can check them.

Fault knobs: :meth:`TokenServer.go_down` / :meth:`come_back` (the port stops and starts accepting
connections), ``fail_status`` (answer that status with an error body), ``delay`` (seconds before
each answer) and ``lifetime`` (``expires_in`` of the next tokens). Loopback only; never used by
production code.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Self
from urllib.parse import unquote_plus

from aiohttp import web

__all__ = ["ProtectedApi", "TokenServer"]

MAX_FORM_BYTES = 16 * 1024


@dataclass(kw_only=True)
class _LoopbackServer:
    """An aiohttp application served on loopback, started and stopped as a context manager."""

    host: str = "127.0.0.1"
    port: int = 0
    ssl_context: ssl.SSLContext | None = None
    _runner: web.AppRunner | None = field(default=None, repr=False)

    def _app(self) -> web.Application:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start listening (on a free port if ``port`` is 0; the same port again after stop)."""
        self._runner = web.AppRunner(self._app(), access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # The port is reused when a server comes back after stopping (skips TIME_WAIT).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = int(sock.getsockname()[1])
        await web.SockSite(self._runner, sock, ssl_context=self.ssl_context).start()

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None


@dataclass
class TokenServer(_LoopbackServer):
    """``async with TokenServer({"client-id": "secret"}) as idp: idp.token_url``."""

    clients: Mapping[str, str]
    scopes: frozenset[str] = frozenset()
    lifetime: float = 3600.0
    fail_status: int | None = None
    delay: float = 0.0
    requests: int = 0
    """Token requests received (including refused ones)."""
    issued: dict[str, float] = field(default_factory=dict)
    """Every token issued, with its expiry on :func:`time.monotonic`."""

    @property
    def token_url(self) -> str:
        """The endpoint, as ``token_url`` is written in gateway.yaml."""
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}/oauth2/token"

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_FORM_BYTES)
        app.router.add_post("/oauth2/token", self._token)
        return app

    async def go_down(self) -> None:
        """Stop accepting connections, keeping the port number (issued tokens stay valid)."""
        await self.stop()

    async def come_back(self) -> None:
        """Listen again on the same port."""
        await self.start()

    def valid(self, token: str) -> bool:
        """Whether ``token`` was issued here and has not expired."""
        expiry = self.issued.get(token)
        return expiry is not None and time.monotonic() < expiry

    def revoke_all(self) -> None:
        """Forget every token issued so far (an identity provider's key rotation)."""
        self.issued.clear()

    async def _token(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_status is not None:
            return _error(self.fail_status, "server_error")
        if request.content_type != "application/x-www-form-urlencoded":
            return _error(400, "invalid_request")
        form = await request.post()
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
        client = _client_of(request, fields)
        if client is None or not secrets.compare_digest(
            self.clients.get(client[0], "\x00no such client").encode(), client[1].encode()
        ):
            return _error(401, "invalid_client", {"WWW-Authenticate": 'Basic realm="token"'})
        if fields.get("grant_type") != "client_credentials":
            return _error(400, "unsupported_grant_type")
        asked = fields.get("scope", "").split()
        if any(scope not in self.scopes for scope in asked):
            return _error(400, "invalid_scope")
        token = secrets.token_urlsafe(24)
        self.issued[token] = time.monotonic() + self.lifetime
        body: dict[str, object] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.lifetime,
        }
        if asked:
            body["scope"] = " ".join(asked)
        return web.json_response(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


def _client_of(request: web.Request, fields: Mapping[str, str]) -> tuple[str, str] | None:
    """(client id, secret) from HTTP Basic (form-encoded parts) or from the body; not both."""
    header = request.headers.get("Authorization", "")
    in_body = "client_id" in fields or "client_secret" in fields
    if header:
        if in_body or not header.startswith("Basic "):
            return None  # RFC 6749 section 2.3: one authentication method per request
        try:
            decoded = base64.b64decode(header[6:], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        return (unquote_plus(user), unquote_plus(password)) if sep else None
    if "client_id" in fields and "client_secret" in fields:
        return fields["client_id"], fields["client_secret"]
    return None


def _error(status: int, code: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(
        {"error": code}, status=status, headers={"Cache-Control": "no-store", **(headers or {})}
    )


@dataclass
class ProtectedApi(_LoopbackServer):
    """An on-prem API that answers 200 only with the credential it expects, else 401.

    ``expect`` maps a header name (lower-case) to the value required; ``tokens`` (a
    :class:`TokenServer`) instead accepts ``Authorization: Bearer <token>`` for any valid token it
    issued. Every request's headers are recorded in ``seen``.
    """

    expect: Mapping[str, str] = field(default_factory=dict)
    tokens: TokenServer | None = None
    seen: list[dict[str, str]] = field(default_factory=list)

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        headers = {name.lower(): value for name, value in request.headers.items()}
        self.seen.append(headers)
        if self.tokens is not None:
            value = headers.get("authorization", "")
            token = value[len("Bearer ") :] if value.startswith("Bearer ") else ""
            if not self.tokens.valid(token):
                return web.json_response(
                    {"error": "invalid_token"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
        for name, wanted in self.expect.items():
            got = headers.get(name)
            if got is None or not secrets.compare_digest(got.encode(), wanted.encode()):
                return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response({"ok": True, "path": request.path_qs})
