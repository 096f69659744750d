"""A stand-in for the EmpowerID SaaS side: signs requests as EmpowerID would and sends them (and
WebSocket streams) through the relay emulator to whichever gateway listens.

Addressing follows the relay contract (docs/relay-contract.md): ``/{hc}/{selector}{path}?{query}``,
``selector`` being a target name or ``host:port``. The signature covers the path as sent to the
relay, so the gateway can check it was meant for this Hybrid Connection.

LDAP targets: :meth:`SaaSClient.ldap_endpoint` is a loopback LDAP port for any LDAP client
(ldap3 in the tests, the demo and the benchmark). Each connection to it becomes a signed stream
to the target with the inner TLS of the relay contract: the SaaS side trusts only the EmpowerID
CA and pins the gateway's identity (its SAN URI) before one byte of LDAP is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import aiohttp
from yarl import URL

from gateway.devkit.relay_emulator import RelayEmulator
from gateway.devkit.signing import RequestSigner
from gateway.ldap.innertls import (
    InnerTlsError,
    TlsOverMessages,
    check_gateway_certificate,
    client_context,
)
from gateway.outbound.sessions import client_session

log = logging.getLogger(__name__)
# Inner TLS messages: at most one 64 KiB plaintext chunk of records each (gateway.ldap.innertls).
MAX_INNER_MESSAGE = 1 << 20

SAS_HEADER = "ServiceBusAuthorization"


@dataclass(frozen=True)
class SaaSResponse:
    """What the SaaS got back."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def reason_code(self) -> str:
        """The gateway's refusal reason (``x-gateway-reason``), or empty for upstream answers."""
        return self.headers.get("x-gateway-reason", "")


class SaaSClient:
    """Sends signed requests through the relay emulator's HTTP sender endpoint."""

    def __init__(
        self,
        *,
        http_base: str,
        ws_base: str,
        namespace: str,
        hc: str,
        send_token: str,
        signer: RequestSigner | None,
        timeout: float = 30.0,
        relay: RelayEmulator | None = None,
        gateway_id: str | None = None,
        ca_pem: bytes | None = None,
    ) -> None:
        """``relay``: the in-process emulator, needed only for :meth:`relay_json`;
        ``gateway_id`` and ``ca_pem`` (the EmpowerID CA): the inner TLS pins, for
        :meth:`ldap_endpoint`."""
        self.relay = relay
        self.gateway_id = gateway_id
        self.ca_pem = ca_pem
        self.http_base = http_base.rstrip("/")
        self.ws_base = ws_base.rstrip("/")
        self.namespace = namespace
        self.hc = hc
        self.send_token = send_token
        self.signer = signer
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> SaaSClient:
        """Open the HTTP session."""
        self._session = client_session(timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()

    def signed_headers(
        self,
        method: str,
        path: str,
        query: str = "",
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
    ) -> list[tuple[str, str]]:
        """``headers`` plus a signature over the request as the relay will deliver it."""
        base = list(headers or [])
        if self.signer is None:
            return base
        return self.signer.sign(
            method=method,
            authority=self.namespace,
            path=path,
            query=query,
            headers=base,
            body=body or None,
        )

    async def request(
        self,
        method: str,
        selector: str,
        path: str,
        *,
        query: str = "",
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        signed_headers: list[tuple[str, str]] | None = None,
    ) -> tuple[SaaSResponse, list[tuple[str, str]]]:
        """Send one request; returns the response and the headers sent (to replay them)."""
        assert self._session is not None, "use 'async with SaaSClient(...)'"
        relay_path = f"/{self.hc}/{selector}{path}"
        sent = signed_headers or self.signed_headers(method, relay_path, query, headers, body)
        # encoded=True: send the path exactly as signed (yarl would resolve '..' and re-encode).
        url = URL(f"{self.http_base}{relay_path}" + (f"?{query}" if query else ""), encoded=True)
        async with self._session.request(
            method,
            url,
            headers=[*sent, (SAS_HEADER, self.send_token)],
            data=body or None,
            allow_redirects=False,
            skip_auto_headers=("Content-Type",),
        ) as response:
            payload = await response.read()
            got = {k.lower(): v for k, v in response.headers.items()}
        return SaaSResponse(response.status, got, payload), sent

    async def relay_json(
        self,
        method: str,
        selector: str,
        path: str,
        *,
        query: str = "",
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        signed_headers: list[tuple[str, str]] | None = None,
    ) -> tuple[SaaSResponse, list[tuple[str, str]]]:
        """Like :meth:`request`, but handed to a listener as relay JSON, bypassing HTTP parsing.

        For requests no HTTP/1.1 stack would send (a CR in a header value, a lower-case or padded
        method, raw control characters in the path) and header sets the relay's own
        normalisation would change (``Content-Length`` with ``Transfer-Encoding``): this is the
        ``request`` command such a request would become (see
        :meth:`RelayEmulator.deliver_request`). Headers are one value per name, as in the JSON.
        """
        if self.relay is None:
            raise RuntimeError("relay_json needs the in-process relay emulator")
        relay_path = f"/{self.hc}/{selector}{path}"
        sent = signed_headers or self.signed_headers(method, relay_path, query, headers, body)
        try:
            got = await self.relay.deliver_request(
                self.hc,
                method=method,
                request_target=relay_path + (f"?{query}" if query else ""),
                headers=dict(sent),
                body=body,
            )
        except ConnectionError:
            # What the relay's HTTP front door answers when the listener drops the request.
            return SaaSResponse(502, {}, b"The listener connection was lost."), sent
        answer = {k.lower(): v for k, v in got.command.response_headers.items()}
        return SaaSResponse(got.command.status_code, answer, got.body or b""), sent

    async def stream(
        self,
        selector: str,
        path: str = "",
        *,
        protocols: Sequence[str] = (),
        headers: list[tuple[str, str]] | None = None,
    ) -> aiohttp.ClientWebSocketResponse:
        """Open a signed WebSocket stream to ``selector`` (and ``path`` on it) through the relay.

        ``protocols`` are offered as subprotocols; ``headers`` are sent (and signed) with the
        handshake.
        """
        assert self._session is not None, "use 'async with SaaSClient(...)'"
        relay_path = f"/{self.hc}/{selector}{path}"
        signed = self.signed_headers("GET", relay_path, headers=headers)
        url = f"{self.ws_base}/$hc/{self.hc}/{selector}{path}?sb-hc-action=connect"
        return await self._session.ws_connect(
            url,
            headers=[*signed, (SAS_HEADER, self.send_token)],
            protocols=tuple(protocols),
            autoping=True,
        )

    @contextlib.asynccontextmanager
    async def ldap_endpoint(self, selector: str, *, inner_tls: bool = True) -> AsyncIterator[int]:
        """A loopback port (127.0.0.1, kernel-chosen) that speaks plain LDAP to a local client
        and carries each connection as a stream to LDAP target ``selector``, inside the inner
        TLS pinned to this client's ``gateway_id`` and ``ca_pem``.

        ``inner_tls=False`` carries the bytes as they are, for a ``tcp`` target (the benchmark
        compares the two; the local client then brings its own TLS to the directory).
        """
        context = None
        if inner_tls:
            if self.gateway_id is None or self.ca_pem is None:
                raise RuntimeError("ldap_endpoint needs the gateway id and the EmpowerID CA")
            context = client_context(self.ca_pem)
        tasks: set[asyncio.Task[None]] = set()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is not None:
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            try:
                await self._carry(reader, writer, selector, context)
            except (InnerTlsError, aiohttp.ClientError, OSError) as exc:
                log.info("LDAP stream to %s ended: %s", selector, exc)
            except asyncio.CancelledError:
                # The endpoint is closing; asyncio's server would log a cancelled handler.
                return
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        try:
            yield server.sockets[0].getsockname()[1]
        finally:
            server.close()
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await server.wait_closed()

    async def _carry(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        selector: str,
        context: ssl.SSLContext | None,
    ) -> None:
        socket = await self.stream(selector)
        try:
            tls: TlsOverMessages | _Plain
            if context is None:
                tls = _Plain(socket)
            else:
                assert self.gateway_id is not None
                tls = TlsOverMessages(
                    _ClientSocket(socket), context, server_side=False, max_message=MAX_INNER_MESSAGE
                )
                await tls.handshake()
                # Pin the gateway before any LDAP byte leaves (docs/relay-contract.md).
                check_gateway_certificate(tls.peer_certificate, self.gateway_id)

            async def up() -> None:
                while data := await reader.read(65536):
                    await tls.send(data)
                await tls.close()

            async def down() -> None:
                while (data := await tls.receive()) is not None:
                    writer.write(data)
                    await writer.drain()

            tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
                if tasks[0] in done:
                    # The local client finished: let the gateway's last answers arrive.
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(tasks[1], self._timeout.total)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await socket.close()


class _ClientSocket:
    """The SaaS's WebSocket as a message channel for :class:`TlsOverMessages`."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket

    async def receive(self) -> str | bytes | None:
        message = await self._socket.receive()
        if message.type is aiohttp.WSMsgType.BINARY:
            return bytes(message.data)
        if message.type is aiohttp.WSMsgType.TEXT:
            return str(message.data)
        return None

    async def send(self, data: str | bytes) -> None:
        if isinstance(data, str):
            await self._socket.send_str(data)
        else:
            await self._socket.send_bytes(data)


class _Plain(_ClientSocket):
    """A stream's bytes as they are (a ``tcp`` target), with the TLS object's interface."""

    async def receive(self) -> bytes | None:
        message = await super().receive()
        return message.encode() if isinstance(message, str) else message

    async def close(self) -> None:
        """Nothing to end above the stream itself."""
