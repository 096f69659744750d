"""A local stand-in for an OPA server: the parts of OPA's REST API the OPA engine uses.

No OPA binary can be installed on the machines this project is built and tested on, so the OPA
engine (:mod:`gateway.policy.opa`) is tested against this server instead. It speaks OPA's wire
format (Policy API and Data API, https://www.openpolicyagent.org/docs/rest-api) and evaluates
with the same rego-cpp library as the embedded engine, so it checks the engine's protocol and
fault handling, not OPA's own evaluator:

* ``PUT /v1/policies/{id}`` (Rego text; a module that does not compile is refused with 400 and
  the previous modules stay), ``GET /v1/policies``, ``DELETE /v1/policies/{id}``;
* ``PUT /v1/data/{path}`` (JSON document, 204), ``GET /v1/data/{path}`` (``{"result": ...}``, or
  ``{}`` when undefined);
* ``POST /v1/data/{path}`` with ``{"input": ...}``: ``{"result": ...}`` or ``{}``;
* ``GET /health``.

Fault knobs (catalogue G): :meth:`OpaServer.go_down` / :meth:`come_back` (the port stops and
starts accepting connections; like a restarted OPA, it comes back empty unless told otherwise),
``delay`` (seconds before every decision answer), ``undefined`` (decisions answer ``{}``),
``fail_status`` (decisions answer that HTTP status), ``redirect_to`` (every API request is
answered 307 to that base URL, which a client following redirects would ask instead, body and
all) and ``pad_bytes`` (decisions
carry that much padding beside the result: an answer too large to hold). Loopback only; never
used by production code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

import regopy
from aiohttp import web
from aiohttp.typedefs import Handler

__all__ = ["OpaServer", "register"]

MAX_BODY_BYTES = 4 << 20
_REF = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class OpaServer:
    """An OPA-compatible server on 127.0.0.1; ``async with OpaServer() as opa: opa.url``."""

    host: str = "127.0.0.1"
    port: int = 0
    delay: float = 0.0
    undefined: bool = False
    fail_status: int | None = None
    redirect_to: str | None = None
    pad_bytes: int = 0
    policies: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    decisions: int = 0
    """Decision requests answered (including faulty answers)."""
    _runner: web.AppRunner | None = field(default=None, repr=False)
    _site: web.SockSite | None = field(default=None, repr=False)
    _rego: regopy.Interpreter | None = field(default=None, repr=False)
    _bundles: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def url(self) -> str:
        """Base URL, as ``policy.opa_url`` is written."""
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> OpaServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start listening (on a free port if ``port`` is 0)."""
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._redirect])
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/policies", self._list_policies)
        app.router.add_get("/v1/policies/", self._list_policies)
        app.router.add_put("/v1/policies/{id:.+}", self._put_policy)
        app.router.add_delete("/v1/policies/{id:.+}", self._delete_policy)
        app.router.add_put("/v1/data/{path:.*}", self._put_data)
        app.router.add_get("/v1/data/{path:.*}", self._get_data)
        app.router.add_post("/v1/data/{path:.*}", self._query)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await self._listen()

    async def stop(self) -> None:
        """Stop listening and release everything."""
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = self._site = None

    async def go_down(self) -> None:
        """Stop accepting connections and close open ones, keeping the port number."""
        await self.stop()

    async def come_back(self, *, empty: bool = True) -> None:
        """Listen again on the same port; ``empty`` forgets policies and data (an OPA restart)."""
        if empty:
            self.policies.clear()
            self.data.clear()
            self._recompile()
        await self.start()

    @web.middleware
    async def _redirect(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.redirect_to is not None and request.path.startswith("/v1/"):
            # 307 keeps the method and the body (RFC 9110 section 15.4.8): a client that
            # follows it sends the input, the policy or the data on to the other server.
            raise web.HTTPTemporaryRedirect(self.redirect_to + request.path_qs)
        return await handler(request)

    async def _listen(self) -> None:
        assert self._runner is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # The port is reused when the server "comes back" after go_down (SO_REUSEADDR skips
        # TIME_WAIT of the connections just closed).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._site = web.SockSite(self._runner, sock)
        await self._site.start()

    # Policy API --------------------------------------------------------------------------------

    async def _health(self, _: web.Request) -> web.Response:
        return web.json_response({})

    async def _list_policies(self, _: web.Request) -> web.Response:
        result = [{"id": pid, "raw": raw} for pid, raw in sorted(self.policies.items())]
        return web.json_response({"result": result})

    async def _put_policy(self, request: web.Request) -> web.Response:
        policy_id = request.match_info["id"]
        source = await request.text()
        candidate = dict(self.policies, **{policy_id: source})
        try:
            _compile(candidate, self.data)
        except regopy.RegoError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "invalid module"
            return web.json_response(
                {
                    "code": "invalid_parameter",
                    "message": "error(s) occurred while compiling module(s)",
                    "errors": [{"code": "rego_parse_error", "message": first}],
                },
                status=400,
            )
        self.policies = candidate
        self._recompile()
        return web.json_response({})

    async def _delete_policy(self, request: web.Request) -> web.Response:
        policy_id = request.match_info["id"]
        if self.policies.pop(policy_id, None) is None:
            return web.json_response(
                {"code": "resource_not_found", "message": f"storage_not_found_error: {policy_id}"},
                status=404,
            )
        self._recompile()
        return web.json_response({})

    # Data API ----------------------------------------------------------------------------------

    async def _put_data(self, request: web.Request) -> web.Response:
        path = _ref_path(request.match_info["path"])
        if path is None:
            return _bad_path()
        try:
            document = json.loads(await request.text())
        except ValueError:
            return web.json_response(
                {"code": "invalid_parameter", "message": "body is not JSON"}, status=400
            )
        if not path:
            if not isinstance(document, dict):
                return web.json_response(
                    {"code": "invalid_parameter", "message": "root must be an object"}, status=400
                )
            self.data = document
        else:
            node = self.data
            for name in path[:-1]:
                child = node.get(name)
                if not isinstance(child, dict):
                    child = node[name] = {}
                node = child
            node[path[-1]] = document
        self._recompile()
        return web.Response(status=204)

    async def _get_data(self, request: web.Request) -> web.Response:
        path = _ref_path(request.match_info["path"])
        if path is None:
            return _bad_path()
        return web.json_response(self._evaluate(path, None))

    async def _query(self, request: web.Request) -> web.Response:
        path = _ref_path(request.match_info["path"])
        if path is None:
            return _bad_path()
        try:
            body = json.loads(await request.text() or "{}")
        except ValueError:
            return web.json_response(
                {"code": "invalid_parameter", "message": "body is not JSON"}, status=400
            )
        self.decisions += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_status is not None:
            return web.json_response(
                {"code": "internal_error", "message": "injected fault"}, status=self.fail_status
            )
        if self.undefined:
            return web.json_response({})
        answer = self._evaluate(path, body.get("input"))
        if self.pad_bytes:
            answer["padding"] = "x" * self.pad_bytes
        return web.json_response(answer)

    # Evaluation --------------------------------------------------------------------------------

    def _recompile(self) -> None:
        self._rego = _compile(self.policies, self.data) if self.policies or self.data else None
        self._bundles.clear()

    def _evaluate(self, path: list[str], input: Any) -> dict[str, Any]:
        rego = self._rego
        if rego is None:
            return {}
        bundle = self._bundles.get(".".join(path))
        if bundle is None:
            query = "x := data" + "".join(f".{name}" for name in path)
            bundle = self._bundles[".".join(path)] = rego.build(query)
        if input is not None:
            rego.set_input(regopy.Input(input))
        else:
            rego.set_input(regopy.Input({}))
        output = rego.query_bundle(bundle)
        if not output.ok() or not output.results:
            return {}
        bindings = output.results[0].bindings
        return {"result": bindings["x"]} if "x" in bindings else {}


def _compile(policies: dict[str, str], data: dict[str, Any]) -> regopy.Interpreter:
    rego = regopy.Interpreter()
    rego.log_level = regopy.LogLevel.NONE
    for policy_id, source in sorted(policies.items()):
        rego.add_module(policy_id, source)
    rego.add_data(data)
    return rego


def _ref_path(text: str) -> list[str] | None:
    """``a/b/c`` as Rego reference parts; None if a part is not a plain identifier."""
    parts = [p for p in text.split("/") if p]
    return parts if all(_REF.fullmatch(p) for p in parts) else None


def _bad_path() -> web.Response:
    return web.json_response(
        {"code": "invalid_parameter", "message": "path parts must be identifiers"}, status=400
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``gateway dev opa-server``."""
    parser = subparsers.add_parser(
        "opa-server", help="a local OPA-compatible server for the opa policy engine (loopback)"
    )
    parser.add_argument("--port", type=int, default=8181)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted."""

    async def serve() -> None:
        async with OpaServer(port=args.port) as server:
            print(f"OPA-compatible server on {server.url} (Ctrl-C to stop)", file=sys.stderr)
            await asyncio.Event().wait()

    asyncio.run(serve())
    return 0
