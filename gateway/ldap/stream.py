"""An LDAP target's stream, from the accepted connect to the last operation.

:class:`gateway.pipeline.Pipeline` decides the stream as any other (signed connect, the target
is the grant, stream limits) and then, for a target with scheme ``ldap`` or ``ldaps``:

1. before accepting, :func:`open_directory` checks the inner TLS can be served (the identity
   certificate must carry serverAuth) and opens the gateway's own connection to the directory
   through the dial step, with TLS (:mod:`gateway.ldap.directory`); any failure is a refused
   handshake for the SaaS, so nothing opens and dies;
2. once the listener serves the stream, :func:`serve` runs the inner TLS server handshake over
   the stream's messages (:mod:`gateway.ldap.innertls`) and the proxy
   (:class:`gateway.ldap.proxy.LdapProxy`) until either side ends.

Every operation is decided by ``Runtime.ldap_chain`` (:class:`gateway.ldap.decide.LdapChain`)
with the facts of this stream: its target, the signing key of its connect, its binding.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import LoadedConfig
from gateway.config.model import Target
from gateway.config.secrets import SecretRef, SecretSource
from gateway.forward.dial import Guard, Redirect, Resolver
from gateway.forward.streams import open_tcp
from gateway.forward.upstream import tls_context
from gateway.ldap.codec import Request
from gateway.ldap.decide import LdapChain, LdapFacts, LdapVerdict
from gateway.ldap.directory import DirectoryConnection, DirectoryTls, secure
from gateway.ldap.innertls import InnerTlsError, TlsOverMessages
from gateway.ldap.proxy import BindIdentity, LdapProxy, OperationOutcome
from gateway.relay.handlers import StreamSocket

log = logging.getLogger(__name__)


@dataclass
class LdapConnection:
    """A decided LDAP stream's directory connection and inner TLS, until it is served."""

    target: str
    directory: DirectoryConnection
    inner_tls: ssl.SSLContext = field(repr=False)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the directory connection (never raises); the stream closes it if not served."""
        await self.directory.close()


def directory_tls(target: Target, resolve_path: Callable[[str], Path]) -> DirectoryTls:
    """How the gateway secures its connection to ``target`` (scheme ldap or ldaps).

    The same verification as an https target (:func:`gateway.forward.upstream.tls_context`: the
    system CAs or the pinned ``tls.ca_file``, host name checked against ``tls.server_name`` or
    the host); only ``ldap.cleartext`` on scheme ldap goes without TLS.
    """
    server_name = target.tls.server_name if target.tls and target.tls.server_name else target.host
    if target.scheme == "ldap" and target.ldap is not None and target.ldap.cleartext:
        return DirectoryTls(None, server_name, start_tls=False)
    return DirectoryTls(
        tls_context(target, resolve_path), server_name, start_tls=target.scheme == "ldap"
    )


async def open_directory(
    loaded: LoadedConfig,
    name: str,
    *,
    resolver: Resolver,
    redirect: Redirect | None,
    guard: Guard | None,
    within: float,
) -> DirectoryConnection:
    """The gateway's secured connection to LDAP target ``name``, opened within ``within``
    seconds; raises ``DialError``, ``DirectoryError`` or ``TimeoutError``."""
    target = loaded.config.targets[name]
    tls = directory_tls(target, loaded.resolve_path)
    async with asyncio.timeout(within):
        reader, writer = await open_tcp(
            target, resolver=resolver, connect_timeout=within, redirect=redirect, guard=guard
        )
        return await secure(reader, writer, tls, within=within)


def bind_identities(loaded: LoadedConfig, name: str) -> dict[str, BindIdentity]:
    """Target ``name``'s bind identities, their passwords read from their references at each
    bind (a rotated file is used from the next bind on)."""
    target = loaded.config.targets[name]
    if target.ldap is None:
        return {}
    identities: dict[str, BindIdentity] = {}
    for identity, entry in target.ldap.bind_identities.items():
        path = f"targets.{name}.ldap.bind_identities.{identity}.password"
        reader = _SecretReader(entry.password, loaded, path)
        identities[identity] = BindIdentity(identity, entry.dn, reader.read)
    return identities


class _SecretReader:
    """Reads one password reference on demand; the source is made at the first bind, so a
    reference that cannot resolve fails that bind (resultCode 52), not the whole gateway."""

    def __init__(self, ref: SecretRef, loaded: LoadedConfig, path: str) -> None:
        self._ref = ref
        self._base = loaded.file.parent
        self._initial = loaded.secrets.get(path)
        self._source: SecretSource | None = None

    def read(self) -> bytes:
        if self._source is None:
            self._source = SecretSource(self._ref, base_dir=self._base, initial=self._initial)
        return self._source.get().get_secret_value().encode("utf-8")

    def __repr__(self) -> str:
        return f"<password {self._ref.describe()}>"


async def serve(
    socket: StreamSocket,
    connection: LdapConnection,
    *,
    loaded: LoadedConfig,
    chain: LdapChain,
    keyid: str | None,
    record: Callable[[OperationOutcome], None],
    idle_timeout: float,
    max_message: int,
) -> str:
    """Serve an accepted LDAP stream until either side ends; returns why it ended."""
    tls = TlsOverMessages(socket, connection.inner_tls, server_side=True, max_message=max_message)
    try:
        await tls.handshake()
    except InnerTlsError as exc:
        log.info(
            "inner TLS with the SaaS failed: %s",
            exc,
            extra={"event": "inner_tls_failed", "reason": exc.code},
        )
        await connection.close()
        return exc.code
    target = connection.target

    async def decide(request: Request, bound_as: str | None, injected: bool) -> LdapVerdict:
        facts = LdapFacts(
            target=target,
            request=request,
            bound_as=bound_as,
            injected=injected,
            keyid=keyid,
            inner_tls=True,
        )
        return await chain.decide(facts)

    proxy = LdapProxy(
        tls,
        connection.directory,
        decide=decide,
        record=record,
        identities=bind_identities(loaded, target),
        idle_timeout=idle_timeout,
    )
    try:
        reason = await proxy.run()
    finally:
        await connection.close()
    await tls.close()
    return reason
