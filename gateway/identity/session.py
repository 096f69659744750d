"""Using a stored identity: load it for start-up, open mTLS clients, refresh keys, report status.

Start-up (ARCHITECTURE.md section 2, "Start") calls :func:`load_identity`, which refuses an
identity that cannot be used *now* (expired or not yet valid certificate, broken chain) before any
connection is attempted, then :func:`mtls_client` for relay-info and heartbeats.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from gateway.identity.certs import (
    DEFAULT_ALERT_FRACTION,
    certificate_health,
    not_yet_valid,
    utcnow,
    validate_client_certificate,
)
from gateway.identity.controlplane import ControlPlaneClient, Timeouts
from gateway.identity.errors import IdentityError
from gateway.identity.models import SigningKey
from gateway.identity.store import IdentityStore, StoredIdentity
from gateway.identity.tls import mtls_context
from gateway.outbound.proxy import OutboundProxy


def load_identity(
    state_dir: Path, *, passphrase: bytes | None = None, now: dt.datetime | None = None
) -> StoredIdentity:
    """Load the committed identity and check it is usable at ``now`` (default: the real time).

    Raises ``client_certificate_expired`` for a certificate outside its validity period: the
    gateway then reports not ready instead of attempting a handshake doomed to fail.
    """
    identity = IdentityStore(state_dir, passphrase=passphrase).load()
    validate_client_certificate(
        list(identity.certificate_chain),
        private_key=identity.private_key,
        ca=identity.ca_certificate,
        gateway_id=identity.gateway_id,
        now=now or utcnow(),
    )
    return identity


def mtls_client(
    identity: StoredIdentity,
    *,
    passphrase: bytes | None = None,
    timeouts: Timeouts | None = None,
    proxy: OutboundProxy | None = None,
    now: dt.datetime | None = None,
) -> ControlPlaneClient:
    """A control-plane client presenting the identity's certificate, pinned to its CA.

    ``proxy`` is the gateway's shared outbound proxy decision (the one the relay listener uses
    too); ``None`` connects directly. Refuses (``client_certificate_expired``) if the
    certificate is not valid at ``now``.
    """
    moment = now or utcnow()
    health = certificate_health(identity.certificate, moment)
    if health.state == "not_yet_valid":
        raise not_yet_valid(health.not_before, moment)
    if not health.usable:
        raise IdentityError(
            "client_certificate_expired",
            f"the client certificate is {health.state.replace('_', ' ')} "
            f"(valid {health.not_before.isoformat()} to {health.not_after.isoformat()}); "
            "no connection attempted",
        )
    context = mtls_context(identity.ca_pem, identity.cert_path, identity.key_path, passphrase)
    return ControlPlaneClient(
        identity.record.control_plane_url,
        context,
        client_certificate=True,
        timeouts=timeouts,
        proxy=proxy,
    )


async def refresh_signing_keys(
    store: IdentityStore, client: ControlPlaneClient
) -> list[SigningKey]:
    """Fetch the current request-signing keys over mTLS and pin them (atomic replace).

    Key rotation (catalogue item 87): the new set replaces the old one as a whole, so a key the
    control plane revoked disappears at once and a new ``keyid`` is known from now on.
    """
    keys = await client.signing_keys()
    store.write_signing_keys(keys)
    return keys


def identity_mismatch(registered: str, configured: str) -> str | None:
    """Why the identity of gateway ``registered`` cannot serve a file whose ``gateway.id`` is
    ``configured``, or None when they are the same gateway.

    EmpowerID signs each request for the gateway it registered (the covered ``x-gateway-id``,
    docs/relay-contract.md "Signatures"), so a gateway running under another id would refuse
    every real request. ``run`` refuses to start and to reload such a file, ``check`` fails its
    ``identity`` line and ``status`` lists it as a problem, all with this answer."""
    if registered == configured:
        return None
    return (
        f"the state directory holds gateway {registered!r}, the configuration names {configured!r}"
    )


def status(
    state_dir: Path,
    *,
    passphrase: bytes | None = None,
    now: dt.datetime | None = None,
    alert_fraction: float = DEFAULT_ALERT_FRACTION,
) -> dict[str, Any]:
    """A JSON-friendly report of the identity for ``gateway status``; never raises for a bad
    identity and never contacts the network.

    ``ready`` is true only if the identity loads completely (key included) and the certificate
    is usable now. Without the passphrase of an encrypted key, the certificate is still reported
    but ``key_checked`` is false and ``ready`` is false.
    """
    moment = now or utcnow()
    report: dict[str, Any] = {
        "state_dir": str(state_dir),
        "registered": False,
        "ready": False,
        "key_checked": False,
        "problems": [],
    }
    problems: list[dict[str, str]] = report["problems"]
    store = IdentityStore(state_dir, passphrase=passphrase)
    identity: StoredIdentity | None = None
    try:
        identity = store.load()
        record, chain = identity.record, list(identity.certificate_chain)
        report["key_checked"] = True
    except IdentityError as exc:
        if exc.code != "passphrase_required":
            problems.append({"code": exc.code, "message": str(exc.args[0])})
            return report
        problems.append({"code": exc.code, "message": str(exc.args[0])})
        try:
            record, chain = store.read_certificate_chain()
        except IdentityError as inner:
            problems.append({"code": inner.code, "message": str(inner.args[0])})
            return report
    leaf = chain[0]
    health = certificate_health(leaf, moment, alert_fraction=alert_fraction)
    report.update(
        registered=True,
        gateway_id=record.gateway_id,
        control_plane_url=record.control_plane_url,
        registered_at=record.registered_at.isoformat(),
        generation=record.generation,
        certificate={
            "subject": leaf.subject.rfc4514_string(),
            "issuer": leaf.issuer.rfc4514_string(),
            "serial": f"{leaf.serial_number:x}",
            "not_before": health.not_before.isoformat(),
            "not_after": health.not_after.isoformat(),
            "renew_at": health.renew_at.isoformat(),
            "alert_at": health.alert_at.isoformat(),
            "state": health.state,
            "seconds_left": int(health.seconds_left),
        },
    )
    if identity is not None:
        report["relay"] = identity.relay.model_dump()
        report["signing_keys"] = [
            {
                "keyid": key.keyid,
                "alg": key.alg,
                "not_before": key.not_before.isoformat(),
                "not_after": key.not_after.isoformat(),
                "active": key.active_at(moment),
            }
            for key in identity.signing_keys
        ]
        try:
            validate_client_certificate(
                chain,
                private_key=identity.private_key,
                ca=identity.ca_certificate,
                gateway_id=record.gateway_id,
                now=moment,
            )
        except IdentityError as exc:
            problems.append({"code": exc.code, "message": str(exc.args[0])})
        else:
            report["ready"] = True
    if health.state == "alert":
        problems.append(
            {
                "code": "certificate_renewal_overdue",
                "message": f"the client certificate expires at {health.not_after.isoformat()} "
                "and has not been renewed",
            }
        )
    return report
