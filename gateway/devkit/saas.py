"""A stand-in for the EmpowerID SaaS side: signs requests as EmpowerID would and sends them (and
WebSocket streams) through the relay emulator to whichever gateway listens.

Addressing follows the relay contract (docs/relay-contract.md): ``/{hc}/{selector}{path}?{query}``,
``selector`` being a target name or ``host:port``. The signature covers the path as sent to the
relay, so the gateway can check it was meant for this Hybrid Connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from yarl import URL

from gateway.devkit.relay_emulator import RelayEmulator
from gateway.devkit.signing import RequestSigner
from gateway.outbound.sessions import client_session

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
    ) -> None:
        """``relay``: the in-process emulator, needed only for :meth:`relay_json`."""
        self.relay = relay
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
