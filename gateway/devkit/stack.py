"""Everything around a gateway, on loopback: relay emulator, control-plane simulator, two sample
on-prem targets (an HTTP API and a TCP echo service), and a signing SaaS client.

Used by ``gateway demo``, the end-to-end tests and the benchmarks. The targets record what they
received so a test can assert that a refused request never reached them.

The HTTP target also serves WebSockets under ``/ws/``: ``/ws/echo`` answers every message with
``echo:`` plus the message, text as text and binary as binary; the text ``close:CODE`` makes it
close with that code and ``abort`` makes it drop the connection without a close frame. Any other
``/ws/`` path refuses the upgrade with 403.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from aiohttp import WSMsgType, web

from gateway.auth import ReplayCache
from gateway.devkit.controlplane import ControlPlaneSimulator, SigningAlgorithm
from gateway.devkit.relay_emulator import LISTEN, SEND, RelayEmulator, SasRule
from gateway.devkit.saas import SaaSClient
from gateway.devkit.signing import RequestSigner
from gateway.identity import RegistrationSettings, register
from gateway.observability.health import ENDPOINT_FILE, published_endpoint

NAMESPACE = "relay.devkit.invalid"
# gateway.state_dir of the gateway directories written here, relative to gateway.yaml.
STATE_DIR = "state"
# How often a waiting caller looks for the published operator endpoint.
_PUBLISHED_POLL = 0.05
PERSON = "operator"
PERSON_PASSWORD = "devkit-operator-password"  # noqa: S105 - a throwaway local test account


@dataclass
class ReceivedRequest:
    """What the sample HTTP target saw."""

    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes


@dataclass
class ReceivedStream:
    """A WebSocket the sample HTTP target accepted: handshake, messages, how it ended."""

    path_qs: str
    headers: dict[str, str]
    protocol: str | None
    messages: list[str | bytes] = field(default_factory=list)
    close_code: int | None = None
    """The code the gateway closed with; ``None`` while open or when the connection dropped."""
    ended: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class SampleTargets:
    """The sample on-prem HTTP API and TCP echo service, recording what they receive."""

    http_port: int = 0
    tcp_port: int = 0
    http_requests: list[ReceivedRequest] = field(default_factory=list)
    tcp_bytes: list[bytes] = field(default_factory=list)
    ws_streams: list[ReceivedStream] = field(default_factory=list)
    ws_protocols: tuple[str, ...] = ("chat.v2", "chat.v1")
    http_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    """Set whenever an HTTP request arrives (clear it to wait for the next one)."""
    _runner: web.AppRunner | None = None
    _tcp: asyncio.Server | None = None

    async def start(self) -> None:
        """Bind both targets on 127.0.0.1 ephemeral ports."""
        app = web.Application(client_max_size=64 << 20)
        app.router.add_get("/ws/{tail:.*}", self._websocket)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.http_port = self._runner.addresses[0][1]
        self._tcp = await asyncio.start_server(self._echo, "127.0.0.1", 0)
        self.tcp_port = self._tcp.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop both targets."""
        if self._runner is not None:
            await self._runner.cleanup()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.http_requests.append(
            ReceivedRequest(request.method, request.path_qs, dict(request.headers), body)
        )
        self.http_arrived.set()
        if request.path.startswith("/api/blob"):
            size = int(request.query.get("size", "200000"))
            return web.Response(body=b"b" * size, content_type="application/octet-stream")
        if "delay" in request.query:  # a slow target, for drain and timeout behaviour
            await asyncio.sleep(min(float(request.query["delay"]), 30.0))
        return web.json_response(
            {
                "target": "sample-api",
                "method": request.method,
                "path": request.path_qs,
                "received_bytes": len(body),
            }
        )

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if request.path != "/ws/echo":
            return web.Response(status=403, text="no WebSocket here")
        ws = web.WebSocketResponse(protocols=self.ws_protocols, max_msg_size=1 << 20)
        await ws.prepare(request)
        stream = ReceivedStream(request.path_qs, dict(request.headers), ws.ws_protocol)
        self.ws_streams.append(stream)
        try:
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    stream.messages.append(message.data)
                    if message.data.startswith("close:"):
                        await ws.close(code=int(message.data[6:]))
                        break
                    if message.data == "abort" and request.transport is not None:
                        request.transport.abort()
                        break
                    await ws.send_str("echo:" + message.data)
                elif message.type is WSMsgType.BINARY:
                    stream.messages.append(message.data)
                    await ws.send_bytes(b"echo:" + message.data)
        finally:
            if ws.close_code is not None and ws.close_code != 1006:
                stream.close_code = ws.close_code
            stream.ended.set()
        return ws

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                self.tcp_bytes.append(data)
                writer.write(b"echo:" + data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


def demo_config(
    stack: DevStack,
    *,
    extra_operations: Sequence[Mapping[str, object]] = (),
    policy_dir: Path | None = None,
    extra_targets: Mapping[str, Mapping[str, object]] | None = None,
) -> dict[str, Any]:
    """The gateway.yaml document for a gateway wired to ``stack`` (plus ``extra_targets``)."""
    # Relative to the gateway directory, where write_gateway_dir makes an extensions directory.
    policies = policy_dir or Path("policies")
    operations: list[Mapping[str, object]] = [
        {
            "name": "read-accounts",
            "methods": ["GET"],
            "paths": ["/api/accounts", "/api/accounts/*"],
        },
        {"name": "download-blob", "methods": ["GET"], "paths": ["/api/blob"]},
        *extra_operations,
    ]
    return {
        "version": 1,
        "gateway": {"id": stack.gateway_id, "state_dir": STATE_DIR},
        "empowerid": {"url": stack.controlplane.base_url, "ca_file": "empowerid-ca.pem"},
        "relay": {
            "connections": 2,
            "endpoint": stack.relay.ws_base,
            "rendezvous_endpoint": stack.relay.rendezvous_base,
        },
        "policy": {"directories": [str(policies)]},
        "limits": {"request_timeout_seconds": 10},
        "logging": {"level": "info", "format": "console", "audit_file": "decisions.jsonl"},
        "observability": {"listen": f"127.0.0.1:{stack.health_port}"},
        "targets": {
            "erp": {
                "description": "sample HTTP API on loopback",
                "scheme": "http",
                "host": "127.0.0.1",
                "port": stack.targets.http_port,
                "allow_special_addresses": True,
                "operations": operations,
            },
            "directory": {
                "description": "sample TCP service on loopback",
                "scheme": "tcp",
                "host": "127.0.0.1",
                "port": stack.targets.tcp_port,
                "allow_special_addresses": True,
            },
            **(extra_targets or {}),
        },
    }


class DevStack:
    """Starts the relay emulator, control-plane simulator and sample targets together."""

    def __init__(
        self,
        gateway_id: str = "demo-gateway",
        *,
        health_port: int = 0,
        signing_alg: SigningAlgorithm = "ed25519",
    ) -> None:
        """``signing_alg``: the algorithm of the control plane's request-signing key, which
        :meth:`saas` signs with."""
        self.gateway_id = gateway_id
        self.hc = f"hc-{gateway_id}"
        listen_key = base64.b64encode(secrets.token_bytes(32)).decode()
        send_key = base64.b64encode(secrets.token_bytes(32)).decode()
        # The relay's Send rule, for senders outside this process (`gateway dev send`).
        self.send_key_name = "SendRule"
        self.send_key = send_key
        self.relay = RelayEmulator(
            [self.hc],
            [
                SasRule("ListenRule", listen_key, frozenset({LISTEN})),
                SasRule("SendRule", send_key, frozenset({SEND})),
            ],
            namespace=NAMESPACE,
            # As in Azure, rendezvous addresses are not on the namespace's host and port (here:
            # the same loopback host, a port of their own), so a listener that rebuilt them from
            # its endpoint would fail here too.
            rendezvous_host="127.0.0.1",
        )
        self.controlplane = ControlPlaneSimulator(
            relay_namespace=NAMESPACE,
            relay_key_name="ListenRule",
            relay_key=listen_key,
            hybrid_connection=self.hc,
            cert_lifetime=dt.timedelta(days=1),
            signing_alg=signing_alg,
        )
        self.controlplane.add_person(PERSON, PERSON_PASSWORD)
        self.targets = SampleTargets()
        self.health_port = health_port
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> DevStack:
        """Start everything; on failure, stop what started."""
        await self._stack.__aenter__()
        try:
            await self._stack.enter_async_context(self.relay)
            await self._stack.enter_async_context(self.controlplane)
            await self.targets.start()
            self._stack.push_async_callback(self.targets.stop)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop everything."""
        await self._stack.__aexit__(exc_type, exc, tb)

    def write_gateway_dir(
        self,
        directory: Path,
        *,
        extra_operations: Sequence[Mapping[str, object]] = (),
        document: Mapping[str, Any] | None = None,
        extra_targets: Mapping[str, Mapping[str, object]] | None = None,
    ) -> Path:
        """Write gateway.yaml and the pinned EmpowerID CA into ``directory``; returns the config.

        The file is :func:`demo_config` (plus ``extra_operations`` and ``extra_targets``) unless
        ``document`` gives the whole gateway.yaml document to write instead (see
        :meth:`gateway_document`).
        """
        directory.mkdir(parents=True, exist_ok=True)
        self.controlplane.write_ca(directory / "empowerid-ca.pem").chmod(0o644)
        # The built-in policy ships with the gateway; this is the (empty) extensions directory,
        # mode 0755 whatever the umask: the agent refuses group-writable policy directories.
        (directory / "policies").mkdir(exist_ok=True)
        (directory / "policies").chmod(0o755)
        path = directory / "gateway.yaml"
        if document is None:
            document = demo_config(
                self, extra_operations=extra_operations, extra_targets=extra_targets
            )
        # Written to a temporary name and renamed, so a watching gateway never reads half a file.
        partial = path.with_suffix(".yaml.tmp")
        partial.write_text(yaml.safe_dump(dict(document), sort_keys=False), encoding="utf-8")
        # The gateway refuses group- or world-writable configuration, whatever the umask.
        partial.chmod(0o644)
        partial.replace(path)
        return path

    async def register_gateway(self, directory: Path) -> None:
        """Register the gateway prepared in ``directory`` (see :meth:`write_gateway_dir`) as
        ``gateway register`` does, with the stack's Person, and give it a fresh replay cache."""
        await register(
            RegistrationSettings(
                base_url=self.controlplane.base_url,
                state_dir=directory / STATE_DIR,
                gateway_id=self.gateway_id,
                ca_file=directory / "empowerid-ca.pem",
            ),
            username=PERSON,
            password=PERSON_PASSWORD,
        )
        ReplayCache.initialise(directory / STATE_DIR)

    def gateway_document(self, targets: Mapping[str, Any], **sections: Any) -> dict[str, Any]:
        """A gateway.yaml document wired to this stack with the given ``targets``.

        The ``gateway``, ``empowerid``, ``relay``, ``policy``, ``logging`` and ``observability``
        sections are those of :func:`demo_config`; ``sections`` replace or add top-level sections
        (``limits={...}``, ``signatures={...}``).
        """
        document = demo_config(self)
        document["targets"] = dict(targets)
        document.update(sections)
        return document

    def saas(self, *, signed: bool = True, hmac: bool = False) -> SaaSClient:
        """A SaaS client signing with the control plane's request-signing key (or unsigned);
        ``hmac``: with this gateway's current hmac-sha256 key instead (RFC 9421 section 3.3.3),
        as EmpowerID does for a gateway with ``signatures.hmac_sha256``."""
        signer: RequestSigner | None = None
        if signed and hmac:
            secret = self.controlplane.request_secret(self.gateway_id)
            signer = RequestSigner(secret.secret, keyid=secret.keyid, gateway_id=self.gateway_id)
        elif signed:
            key = self.controlplane.signing_key
            signer = RequestSigner(key.private_key, keyid=key.keyid, gateway_id=self.gateway_id)
        return SaaSClient(
            http_base=self.relay.http_base,
            ws_base=self.relay.ws_base,
            namespace=NAMESPACE,
            hc=self.hc,
            send_token=self.relay.token(self.hc, "SendRule"),
            signer=signer,
            relay=self.relay,
            gateway_id=self.gateway_id,
            ca_pem=self.controlplane.ca.pem,
        )


async def operator_port(
    directory: Path, process: asyncio.subprocess.Process, *, within: float
) -> int:
    """The port of the operator endpoint of ``gateway run`` (``process``) for the gateway
    directory ``directory``, once the gateway has published it in its state directory (see
    :data:`gateway.observability.health.ENDPOINT_FILE`): :func:`demo_config` has it listen on
    port 0, so the port is the kernel's choice and no other process can take it first.

    Raises RuntimeError when the process exits first or ``within`` seconds pass. A file left by
    an earlier run that did not stop cleanly names a stale port: a caller that starts a gateway
    again in the same directory removes it first.
    """
    deadline = time.monotonic() + within
    while True:
        address = published_endpoint(directory / STATE_DIR)
        if address is not None:
            return int(address.rpartition(":")[2])
        if process.returncode is not None:
            raise RuntimeError(
                f"gateway exited with {process.returncode} before it published {ENDPOINT_FILE}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gateway did not publish {ENDPOINT_FILE} within {within} s")
        await asyncio.sleep(_PUBLISHED_POLL)
