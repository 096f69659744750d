"""A local EmpowerID control-plane simulator (``schemas/controlplane.openapi.yaml``).

An aiohttp HTTPS server on loopback with its own CA (made with ``cryptography``). It knows
EmpowerID Persons with or without the "Register Server" and "Update Heart Beat" operations, issues
client certificates from CSRs, requires mTLS on the mTLS endpoints, hands out relay connection
info with a SAS listener token, records every request and heartbeat, and has fault knobs
(renewal endpoint down; a certificate for the wrong key, the wrong subject or without clientAuth;
an already-expired certificate; heartbeats judged by contract 1.0.0, which knows no ``worker``).

Heartbeats are kept per :class:`Instance`: gateway id, installation and worker index. Several
hosts share one gateway id (docs/high-availability.md), each registered on its own; the
installation is that registration, known from the client certificate (a renewed certificate
continues the installation it was renewed by). A gateway with several worker processes sends one
heartbeat per worker, each with its own counters and the head of its own decision-log hash chain.
The simulator checks what EmpowerID must check of those heads: within one instance a head only
moves forward (a head behind the newest one seen, or another hash at the same position, means
that chain was cut or rewritten); heads of different instances are never compared. Each
violation is kept in :attr:`ControlPlaneSimulator.audit_alarms` and logged as a warning (on
standard error under ``gateway dev controlplane``).

It is deliberately written against the OpenAPI document, not against the gateway's client models,
so the contract tests catch a drift on either side. Never used by production code.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import signal
import ssl
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.devkit.signing import PrivateKey, algorithm_of, generate_key
from gateway.hybridconnection.sas import create_token, resource_uri
from gateway.identity.keys import GATEWAY_URN_PREFIX

REGISTER_SERVER = "Register Server"
UPDATE_HEART_BEAT = "Update Heart Beat"
REQUIRED_OPERATIONS = frozenset({REGISTER_SERVER, UPDATE_HEART_BEAT})
SigningAlgorithm = Literal["ed25519", "ecdsa-p256-sha256", "rsa-pss-sha512"]
SIGNING_ALGORITHMS: tuple[SigningAlgorithm, ...] = (
    "ed25519",
    "ecdsa-p256-sha256",
    "rsa-pss-sha512",
)

PROBLEM_TYPE_PREFIX = "urn:empowerid:gateway:problem:"
API = "/api/gateway/v1"
MAX_REQUEST_BYTES = 64 * 1024
HEARTBEAT_INTERVAL_SECONDS = 60
# The members of a heartbeat under contract 1.0.0 (schemas/controlplane.openapi.yaml, Changes),
# for the fault that plays a control plane validating against it (additionalProperties: false).
HEARTBEAT_MEMBERS_1_0 = frozenset(
    {
        "status",
        "version",
        "config_hash",
        "policy_revision",
        "listeners_online",
        "counters",
        "audit_head",
    }
)
MAX_WORKERS = 64
_HASH_HEX = frozenset("0123456789abcdef")
# Certificates are back-dated a little so a gateway whose clock is slightly behind accepts them.
BACKDATE = dt.timedelta(minutes=1)
# A gateway identity certificate authenticates the gateway to the control plane (clientAuth) and
# serves the inner TLS of LDAP streams to the SaaS (serverAuth), see docs/relay-contract.md.
IDENTITY_USAGE = (ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH)

_log = logging.getLogger(__name__)
_CLIENT_CERT_REQUIRED = web.AppKey("client_cert_required", frozenset[str])


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


class DevCA:
    """A throw-away certificate authority (EC P-256) for servers and gateway clients."""

    def __init__(self, name: str = "Gateway Devkit CA", lifetime: dt.timedelta | None = None):
        now = _utcnow()
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        public = self.key.public_key()
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + (lifetime or dt.timedelta(days=365)))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        """The CA certificate in PEM, for a gateway to pin."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def _leaf(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        san: Sequence[x509.GeneralName],
        usage: Sequence[x509.ObjectIdentifier],
        not_before: dt.datetime,
        not_after: dt.datetime,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(list(usage)), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def issue_server(
        self, names: Iterable[str], lifetime: dt.timedelta = dt.timedelta(days=30)
    ) -> tuple[bytes, bytes]:
        """A server certificate for DNS names / IP addresses; returns (chain PEM, key PEM)."""
        names = list(names)
        if not names:
            raise ValueError("a server certificate needs at least one name")
        key = ec.generate_private_key(ec.SECP256R1())
        san: list[x509.GeneralName] = []
        for name in names:
            try:
                san.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                san.append(x509.DNSName(name))
        now = _utcnow()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        cert = self._leaf(
            subject,
            key.public_key(),
            san,
            (ExtendedKeyUsageOID.SERVER_AUTH,),
            now - BACKDATE,
            now + lifetime,
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem

    def issue_client(
        self,
        csr: x509.CertificateSigningRequest,
        *,
        not_before: dt.datetime,
        not_after: dt.datetime,
        substitute_key: bool = False,
        substitute_subject: str | None = None,
        usage: Sequence[x509.ObjectIdentifier] = IDENTITY_USAGE,
    ) -> x509.Certificate:
        """A gateway identity certificate for the CSR's subject and SAN URIs.

        Its extended key usages are clientAuth (mutual TLS to the control plane) and serverAuth
        (the inner TLS the SaaS opens inside an LDAP stream, docs/relay-contract.md): RFC 5280
        section 4.2.1.12 limits a certificate with this extension to the purposes it lists.

        The faults a gateway must detect before it stores anything: ``substitute_key`` certifies
        a freshly generated key instead of the CSR's; ``substitute_subject`` names another gateway
        id (CN and SAN URI) than the CSR; ``usage`` sets other extended key usages.
        """
        public_key = csr.public_key()
        if substitute_key:
            public_key = ec.generate_private_key(ec.SECP256R1()).public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise ValueError("unsupported key type")
        try:
            san_ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            uris = san_ext.value.get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            uris = []
        san = [x509.UniformResourceIdentifier(uri) for uri in uris]
        subject = csr.subject
        if substitute_subject is not None:
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, substitute_subject)])
            san = [x509.UniformResourceIdentifier(GATEWAY_URN_PREFIX + substitute_subject)]
        return self._leaf(subject, public_key, san, usage, not_before, not_after)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass
class Person:
    """An EmpowerID Person and the operations it holds."""

    username: str
    password: str = field(repr=False)
    operations: frozenset[str] = REQUIRED_OPERATIONS


@dataclass
class Faults:
    """Fault knobs; flip them at any time, they apply to the next request."""

    renewal_unavailable: bool = False
    issue_wrong_key: bool = False
    issue_wrong_subject: bool = False
    issue_server_usage: bool = False
    issue_client_usage_only: bool = False
    """Issue clientAuth-only certificates, as control planes did before the inner TLS."""
    issue_expired: bool = False
    echo_credentials: bool = False
    """Refuse registrations with a problem document that repeats the credentials it was sent
    (the password, and the Authorization header), as a careless control plane might."""
    garble_pem: bool = False
    """Answer registrations and renewals with PEM that holds a character outside ASCII (JSON
    allows it; PEM does not), as a broken or hostile control plane might."""
    heartbeat_contract_1_0: bool = False
    """Judge heartbeats by contract 1.0.0: a member it does not describe (``worker``) makes the
    heartbeat a 400 ``invalid_request``, as a control plane validating against 1.0.0 answers."""


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the simulator saw it, with the client certificate that made it."""

    method: str
    path: str
    client_gateway_id: str | None
    client_serial: int | None
    body: bytes = field(repr=False)


class Instance(NamedTuple):
    """What EmpowerID keeps one state and one audit head for: one process of one installation.

    ``installation`` numbers the registrations the simulator made (1, 2, ...; a renewal keeps
    the number); ``worker`` is the worker index, None for a gateway running one process."""

    gateway_id: str
    installation: int | None
    worker: int | None


@dataclass(frozen=True)
class RecordedHeartbeat:
    """A heartbeat accepted from a gateway."""

    gateway_id: str
    received_at: dt.datetime
    body: dict[str, Any]
    installation: int | None = None

    @property
    def worker(self) -> int | None:
        """The index of the worker that sent it; None for a gateway running one process."""
        worker = self.body.get("worker")
        return worker["index"] if isinstance(worker, dict) else None

    @property
    def instance(self) -> Instance:
        """The process this heartbeat speaks for."""
        return Instance(self.gateway_id, self.installation, self.worker)


@dataclass(frozen=True)
class AuditAlarm:
    """An audit head that did not move forward within its own chain (one worker's decision log).

    ``kind`` is ``behind`` (the head is before the newest one this instance reported: the log was
    cut back or started over) or ``forked`` (another hash at the same position: rewritten)."""

    instance: Instance
    kind: str
    newest: tuple[int, str]
    reported: tuple[int, str]

    def __str__(self) -> str:
        gateway_id, installation, worker = self.instance
        who = f"{gateway_id} installation {installation}"
        if worker is not None:
            who += f" worker {worker}"
        return (
            f"{who}: audit head {self.reported[0]}:{self.reported[1][:12]} is {self.kind} "
            f"(newest seen {self.newest[0]}:{self.newest[1][:12]})"
        )


@dataclass(frozen=True)
class SigningKeyPair:
    """The simulated control plane's request-signing key (RFC 9421: ``ed25519`` unless the
    simulator was made with another ``signing_alg``)."""

    keyid: str
    private_key: PrivateKey = field(repr=False)
    not_before: dt.datetime
    not_after: dt.datetime

    def public_document(self) -> dict[str, str]:
        """The key as published in registration and signing-key answers."""
        public_pem = self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return {
            "keyid": self.keyid,
            "alg": algorithm_of(self.private_key),
            "public_key_pem": public_pem.decode("ascii"),
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
        }


@dataclass(frozen=True)
class RequestSecretKey:
    """One gateway's hmac-sha256 request-signing key (RFC 9421 section 3.3.3)."""

    keyid: str
    secret: bytes = field(repr=False)
    not_before: dt.datetime
    not_after: dt.datetime

    def document(self) -> dict[str, str]:
        """The key as the ``request-secrets`` answer carries it."""
        return {
            "keyid": self.keyid,
            "alg": "hmac-sha256",
            "secret": base64.b64encode(self.secret).decode("ascii"),
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
        }


def _new_request_secret(gateway_id: str, lifetime: dt.timedelta) -> RequestSecretKey:
    now = _utcnow()
    return RequestSecretKey(
        keyid=f"hmac-{gateway_id}-{secrets.token_hex(4)}",
        secret=secrets.token_bytes(32),
        not_before=now - BACKDATE,
        not_after=now + lifetime,
    )


def _new_signing_key(alg: SigningAlgorithm) -> SigningKeyPair:
    key = generate_key(alg)
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = _utcnow()
    return SigningKeyPair(
        keyid="devkit-" + hashlib.sha256(public).hexdigest()[:16],
        private_key=key,
        not_before=now - BACKDATE,
        not_after=now + dt.timedelta(days=90),
    )


def _basic_credentials(header: str) -> tuple[str, str]:
    """(login, password) from an RFC 7617 ``Authorization: Basic`` header; empty if malformed."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    login, sep, password = decoded.partition(":")
    return (login, password) if sep else ("", "")


def _worker_index(worker: object) -> int | None:
    """The index of a heartbeat's ``worker`` member, or None when it breaks the contract."""
    if not isinstance(worker, dict) or set(worker) != {"index", "count"}:
        return None
    index, count = worker["index"], worker["count"]
    if not all(type(value) is int for value in (index, count)):
        return None
    return index if 1 <= index <= count and 2 <= count <= MAX_WORKERS else None


def _head_position(head: object) -> tuple[int, str] | None:
    """(seq, hash) of a heartbeat's ``audit_head``, or None when those are malformed."""
    if not isinstance(head, dict):
        return None
    seq, digest = head.get("seq"), head.get("hash")
    if type(seq) is not int or seq < 0 or not isinstance(digest, str):
        return None
    if len(digest) != 64 or not set(digest) <= _HASH_HEX:
        return None
    return seq, digest


def problem(status: int, code: str, title: str, **extra: Any) -> web.Response:
    """An RFC 9457 problem+json response whose ``type`` ends in the stable ``code``."""
    document = {"type": PROBLEM_TYPE_PREFIX + code, "title": title, "status": status, **extra}
    return web.Response(
        status=status, body=json.dumps(document), content_type="application/problem+json"
    )


class ControlPlaneSimulator:
    """The simulator; use ``async with ControlPlaneSimulator(...) as sim``.

    ``server_names`` go into the server certificate (a name the client does not use simulates a
    host-name mismatch); a negative ``server_cert_lifetime`` gives it an expired one, and a
    ``server_ca`` other than ``ca`` issues it from a CA other than the one gateways are pinned to.
    ``relay_namespace`` / ``relay_key_name`` / ``relay_key`` describe the relay the listener
    tokens are for (normally the devkit relay emulator). ``signing_alg`` is the algorithm of the
    request-signing key it publishes: ``rsa-pss-sha512`` simulates an EmpowerID whose key is
    held in Azure Key Vault or Managed HSM (``PS512``), which keep no Ed25519 keys.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        server_names: Sequence[str] = ("localhost", "127.0.0.1"),
        relay_namespace: str = "relay.devkit.invalid",
        relay_key_name: str = "ListenRule",
        relay_key: str | None = None,
        hybrid_connection: str | None = None,
        token_ttl: dt.timedelta = dt.timedelta(hours=1),
        cert_lifetime: dt.timedelta = dt.timedelta(days=30),
        server_cert_lifetime: dt.timedelta = dt.timedelta(days=30),
        ca: DevCA | None = None,
        server_ca: DevCA | None = None,
        signing_alg: SigningAlgorithm = "ed25519",
    ) -> None:
        self.host = host
        self.port = port
        self.server_names = tuple(server_names)
        self.relay_namespace = relay_namespace
        self.relay_key_name = relay_key_name
        self.relay_key = relay_key or base64.b64encode(secrets.token_bytes(32)).decode()
        self.hybrid_connection = hybrid_connection
        self.token_ttl = token_ttl
        self.cert_lifetime = cert_lifetime
        # Less than minus the one-minute backdating: a server certificate that has expired.
        self.server_cert_lifetime = server_cert_lifetime
        self.ca = ca or DevCA()
        # The CA of the server certificate; another than ``ca`` simulates an EmpowerID whose TLS
        # certificate comes from a public CA while a private one issues gateway certificates.
        self.server_ca = server_ca or self.ca
        self.faults = Faults()
        self.signing_alg = signing_alg
        self.signing_key = _new_signing_key(signing_alg)
        # Further published keys (add_signing_key), each with the gateways it is published to
        # (None: every gateway).
        self._further_keys: list[tuple[SigningKeyPair, frozenset[str] | None]] = []
        self.request_secret_lifetime = dt.timedelta(days=30)
        self._request_secrets: dict[str, list[RequestSecretKey]] = {}
        self.persons: dict[str, Person] = {}
        self.registered: dict[str, str] = {}
        self.requests: list[RecordedRequest] = []
        self.heartbeats: list[RecordedHeartbeat] = []
        self.heartbeat_interval = HEARTBEAT_INTERVAL_SECONDS
        # Registrations made, and the installation (registration number) of each certificate
        # serial issued, by registration or renewal.
        self.registrations = 0
        self.installations: dict[int, int] = {}
        # The newest heartbeat and the newest audit head (seq, hash) of each instance.
        self.instances: dict[Instance, RecordedHeartbeat] = {}
        self.audit_heads: dict[Instance, tuple[int, str]] = {}
        self.audit_alarms: list[AuditAlarm] = []
        self._runner: web.AppRunner | None = None
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None

    # -- set-up --------------------------------------------------------------------------------

    def add_person(
        self, username: str, password: str, operations: Iterable[str] = REQUIRED_OPERATIONS
    ) -> Person:
        """Add (or replace) a Person with the given operations."""
        person = Person(username, password, frozenset(operations))
        self.persons[username] = person
        return person

    @property
    def base_url(self) -> str:
        """``https://HOST:PORT/`` of the running simulator."""
        if self._runner is None:
            raise RuntimeError("the simulator is not running")
        port = self._runner.addresses[0][1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{port}/"

    def write_ca(self, path: Path) -> Path:
        """Write the CA certificate (to pin) to ``path``."""
        path.write_bytes(self.ca.pem)
        return path

    def relay_hybrid_connection(self, gateway_id: str) -> str:
        """The hybrid connection path assigned to ``gateway_id``."""
        return self.hybrid_connection or f"hc-{gateway_id}"

    def listener_token(self, gateway_id: str) -> tuple[str, dt.datetime]:
        """A SAS token with the relay rule for the gateway's hybrid connection, and its expiry."""
        expires = _utcnow().replace(microsecond=0) + self.token_ttl
        namespace_host = self.relay_namespace.rsplit(":", 1)[0]
        resource = resource_uri(namespace_host, self.relay_hybrid_connection(gateway_id))
        token = create_token(
            resource, self.relay_key_name, self.relay_key, expiry=int(expires.timestamp())
        )
        return token, expires

    def rotate_signing_key(self) -> SigningKeyPair:
        """Sign with a new request-signing key from now on; the published set holds only the
        new one, so a gateway that refreshes its keys revokes the old one."""
        self.signing_key = _new_signing_key(self.signing_alg)
        return self.signing_key

    def add_signing_key(
        self, alg: SigningAlgorithm, *, gateway_ids: Iterable[str] | None = None
    ) -> SigningKeyPair:
        """Publish a further request-signing key of ``alg`` beside the current one (EmpowerID
        signing with two keys at once, as during a move of its key into an HSM), to the gateways
        ``gateway_ids`` only when given. :meth:`rotate_signing_key` leaves it published."""
        pair = _new_signing_key(alg)
        scope = None if gateway_ids is None else frozenset(gateway_ids)
        self._further_keys.append((pair, scope))
        return pair

    def published_keys(self, gateway_id: str) -> list[dict[str, str]]:
        """The signing-key documents published to ``gateway_id``: the current key first."""
        return [self.signing_key.public_document()] + [
            pair.public_document()
            for pair, scope in self._further_keys
            if scope is None or gateway_id in scope
        ]

    def request_secret(self, gateway_id: str) -> RequestSecretKey:
        """The current hmac-sha256 key of ``gateway_id`` (made on first use): what EmpowerID
        signs that gateway's requests with when it is configured for ``hmac-sha256``."""
        keys = self._request_secrets.setdefault(gateway_id, [])
        if not keys:
            keys.append(_new_request_secret(gateway_id, self.request_secret_lifetime))
        return keys[-1]

    def rotate_request_secret(self, gateway_id: str, *, overlap: dt.timedelta) -> RequestSecretKey:
        """Issue a new key for ``gateway_id``; the outgoing one stays listed (and valid) for
        ``overlap`` more, so requests signed with it just before the rotation still verify."""
        outgoing = self.request_secret(gateway_id)
        keys = self._request_secrets[gateway_id]
        end = min(outgoing.not_after, _utcnow() + overlap)
        keys[-1] = RequestSecretKey(outgoing.keyid, outgoing.secret, outgoing.not_before, end)
        keys.append(_new_request_secret(gateway_id, self.request_secret_lifetime))
        return keys[-1]

    def request_secrets(self, gateway_id: str) -> list[RequestSecretKey]:
        """The keys of ``gateway_id`` still inside their validity (oldest first)."""
        now = _utcnow()
        kept = self._request_secrets.get(gateway_id, [])
        live = [key for key in kept if now < key.not_after]
        self._request_secrets[gateway_id] = live
        self.request_secret(gateway_id)  # a gateway always has a current key
        return list(self._request_secrets[gateway_id])

    async def start(self) -> None:
        """Bind and serve."""
        self._tempdir = tempfile.TemporaryDirectory(prefix="controlplane-sim-")
        workdir = Path(self._tempdir.name)
        chain_pem, key_pem = self.server_ca.issue_server(
            self.server_names, self.server_cert_lifetime
        )
        (workdir / "server.crt").write_bytes(chain_pem)
        (workdir / "server.key").write_bytes(key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(workdir / "server.crt", workdir / "server.key")
        # Optional at the TLS layer because registration has no client certificate yet; the
        # mTLS endpoints insist on one in the handler. A presented certificate is verified.
        context.verify_mode = ssl.CERT_OPTIONAL
        context.load_verify_locations(cadata=self.ca.pem.decode("ascii"))
        app = web.Application(client_max_size=MAX_REQUEST_BYTES, middlewares=[self._record])
        app.router.add_post(f"{API}/registrations", self._registrations)
        app.router.add_get(f"{API}/relay-info", self._relay_info)
        app.router.add_post(f"{API}/heartbeats", self._heartbeats)
        app.router.add_post(f"{API}/certificates", self._certificates)
        app.router.add_get(f"{API}/signing-keys", self._signing_keys)
        app.router.add_get(f"{API}/request-secrets", self._request_secrets_answer)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=context)
        await site.start()

    async def close(self) -> None:
        """Stop serving and delete the server key files."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    async def __aenter__(self) -> ControlPlaneSimulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- request handling ----------------------------------------------------------------------

    @staticmethod
    def peer_certificate(request: web.Request) -> x509.Certificate | None:
        """The verified client certificate of the request's connection, if one was presented."""
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        return x509.load_der_x509_certificate(der) if der else None

    @staticmethod
    def _gateway_of(cert: x509.Certificate | None) -> str | None:
        if cert is None:
            return None
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        value = names[0].value if names else None
        return value if isinstance(value, str) else None

    @web.middleware
    async def _record(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        body = await request.read()
        cert = self.peer_certificate(request)
        self.requests.append(
            RecordedRequest(
                request.method,
                request.path,
                self._gateway_of(cert),
                cert.serial_number if cert else None,
                body,
            )
        )
        return await handler(request)

    def _answer_pem(self, cert: x509.Certificate) -> str:
        pem = _pem(cert)
        return pem.replace("MII", "MI\u00cf", 1) if self.faults.garble_pem else pem

    def _issue(self, csr: x509.CertificateSigningRequest) -> x509.Certificate:
        now = _utcnow()
        not_before = now - BACKDATE
        not_after = now + self.cert_lifetime
        if self.faults.issue_expired:
            not_before, not_after = now - 2 * self.cert_lifetime, now - self.cert_lifetime
        return self.ca.issue_client(
            csr,
            not_before=not_before,
            not_after=not_after,
            substitute_key=self.faults.issue_wrong_key,
            substitute_subject="another-gateway" if self.faults.issue_wrong_subject else None,
            usage=(
                (ExtendedKeyUsageOID.SERVER_AUTH,)
                if self.faults.issue_server_usage
                else (ExtendedKeyUsageOID.CLIENT_AUTH,)
                if self.faults.issue_client_usage_only
                else IDENTITY_USAGE
            ),
        )

    @staticmethod
    async def _json_body(request: web.Request) -> dict[str, Any] | None:
        try:
            body = json.loads(await request.read())
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    @staticmethod
    def _parse_csr(pem: object, gateway_id: str) -> x509.CertificateSigningRequest | None:
        if not isinstance(pem, str):
            return None
        try:
            csr = x509.load_pem_x509_csr(pem.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            return None
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not csr.is_signature_valid or len(names) != 1 or names[0].value != gateway_id:
            return None
        return csr

    def _authenticate(self, request: web.Request) -> Person | web.Response:
        authorization = request.headers.get("Authorization", "")
        login, password = _basic_credentials(authorization)
        if self.faults.echo_credentials:
            return problem(
                401,
                "bad_credentials",
                f"Password {password!r} refused",
                detail=f"header was {authorization}",
            )
        person = self.persons.get(login)
        if person is None or not hmac.compare_digest(person.password.encode(), password.encode()):
            response = problem(401, "bad_credentials", "The Person's credentials are not valid")
            response.headers["WWW-Authenticate"] = 'Basic realm="gateway", charset="UTF-8"'
            return response
        return person

    async def _registrations(self, request: web.Request) -> web.Response:
        person = self._authenticate(request)
        if isinstance(person, web.Response):
            return person
        missing = sorted(REQUIRED_OPERATIONS - person.operations)
        if missing:
            return problem(
                403,
                "missing_operation",
                "The Person lacks operations required to register a gateway",
                detail="missing: " + ", ".join(missing),
                missing_operations=missing,
            )
        body = await self._json_body(request)
        gateway_id = body.get("gateway_id") if body else None
        if not body or not isinstance(gateway_id, str) or not isinstance(body.get("version"), str):
            return problem(400, "invalid_request", "gateway_id, csr and version are required")
        csr = self._parse_csr(body.get("csr"), gateway_id)
        if csr is None:
            return problem(400, "invalid_csr", "The CSR is invalid or does not name the gateway")
        cert = self._issue(csr)
        self.registered[gateway_id] = person.username
        self.registrations += 1
        self.installations[cert.serial_number] = self.registrations
        hybrid_connection = self.relay_hybrid_connection(gateway_id)
        document = {
            "gateway_id": gateway_id,
            "certificate_chain": self._answer_pem(cert),
            "ca_certificate": self.ca.pem.decode("ascii"),
            "signing_keys": self.published_keys(gateway_id),
            "relay": {"namespace": self.relay_namespace, "hybrid_connection": hybrid_connection},
        }
        return web.json_response(document, status=201)

    def _mtls_gateway(self, request: web.Request) -> str | web.Response:
        gateway_id = self._gateway_of(self.peer_certificate(request))
        if gateway_id is None:
            return problem(401, "client_certificate_required", "This endpoint requires mTLS")
        if gateway_id not in self.registered:
            return problem(403, "not_registered", "The gateway is not registered")
        return gateway_id

    async def _relay_info(self, request: web.Request) -> web.Response:
        gateway_id = self._mtls_gateway(request)
        if isinstance(gateway_id, web.Response):
            return gateway_id
        token, expires = self.listener_token(gateway_id)
        hybrid_connection = self.relay_hybrid_connection(gateway_id)
        return web.json_response(
            {
                "gateway_id": gateway_id,
                "relay": {
                    "namespace": self.relay_namespace,
                    "hybrid_connection": hybrid_connection,
                },
                "listener_token": {"token": token, "expires_at": expires.isoformat()},
            }
        )

    async def _heartbeats(self, request: web.Request) -> web.Response:
        gateway_id = self._mtls_gateway(request)
        if isinstance(gateway_id, web.Response):
            return gateway_id
        body = await self._json_body(request)
        if body is None or not isinstance(body.get("status"), str):
            return problem(400, "invalid_request", "A heartbeat needs at least a status")
        if self.faults.heartbeat_contract_1_0:
            unknown = sorted(set(body) - HEARTBEAT_MEMBERS_1_0)
            if unknown:
                return problem(
                    400,
                    "invalid_request",
                    "The heartbeat has members this API does not know",
                    detail="unknown: " + ", ".join(unknown)[:200],
                )
        if "worker" in body and _worker_index(body["worker"]) is None:
            return problem(
                400, "invalid_request", "worker must be {index, count} with 1 <= index <= count"
            )
        head = _head_position(body["audit_head"]) if "audit_head" in body else None
        if "audit_head" in body and head is None:
            return problem(400, "invalid_request", "audit_head needs seq and a SHA-256 hash")
        beat = RecordedHeartbeat(gateway_id, _utcnow(), body, self._installation(request))
        self.heartbeats.append(beat)
        self.instances[beat.instance] = beat
        if head is not None:
            self._advance_head(beat.instance, head)
        return web.json_response({"interval_seconds": self.heartbeat_interval})

    def _installation(self, request: web.Request) -> int | None:
        cert = self.peer_certificate(request)
        return self.installations.get(cert.serial_number) if cert is not None else None

    def _advance_head(self, instance: Instance, reported: tuple[int, str]) -> None:
        """Keep the newest head of ``instance``; a head that does not move forward is an alarm.

        Only heads of one instance are compared: each worker writes its own chain (``NAME.wN``),
        so worker 2 at seq 40 says nothing about worker 1 at seq 90, nor another host's worker 1
        about this one's. The newest head stays the
        reference after an alarm, so a cut log cannot make itself look whole again."""
        newest = self.audit_heads.get(instance)
        if newest is None or reported[0] > newest[0]:
            self.audit_heads[instance] = reported
            return
        kind = "behind" if reported[0] < newest[0] else "forked" if reported != newest else None
        if kind is not None:
            alarm = AuditAlarm(instance, kind, newest, reported)
            self.audit_alarms.append(alarm)
            _log.warning("audit head alarm: %s", alarm)

    async def _certificates(self, request: web.Request) -> web.Response:
        gateway_id = self._mtls_gateway(request)
        if isinstance(gateway_id, web.Response):
            return gateway_id
        if self.faults.renewal_unavailable:
            return problem(503, "service_unavailable", "Certificate renewal is unavailable")
        body = await self._json_body(request)
        csr = self._parse_csr(body.get("csr") if body else None, gateway_id)
        if csr is None:
            return problem(400, "invalid_csr", "The CSR is invalid or names another gateway")
        cert = self._issue(csr)
        # The renewed certificate continues the installation of the one that asked for it.
        installation = self._installation(request)
        if installation is not None:
            self.installations[cert.serial_number] = installation
        return web.json_response({"certificate_chain": self._answer_pem(cert)}, status=201)

    async def _signing_keys(self, request: web.Request) -> web.Response:
        gateway_id = self._mtls_gateway(request)
        if isinstance(gateway_id, web.Response):
            return gateway_id
        return web.json_response({"keys": self.published_keys(gateway_id)})

    async def _request_secrets_answer(self, request: web.Request) -> web.Response:
        # Only over mTLS and only the caller's own keys: the certificate names the gateway.
        gateway_id = self._mtls_gateway(request)
        if isinstance(gateway_id, web.Response):
            return gateway_id
        keys = self.request_secrets(gateway_id)
        return web.json_response({"keys": [key.document() for key in keys]})


# -- `gateway dev controlplane` ----------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``gateway dev controlplane``."""
    parser = subparsers.add_parser(
        "controlplane",
        help="run a local EmpowerID control-plane simulator (HTTPS, mTLS)",
        description="Serve the control-plane API on HTTPS. Prints its URL and the request-signing "
        "keyid, then runs until interrupted. With --signing-key-out, `gateway dev send` can sign "
        "requests as EmpowerID would (docs/development.md drives the whole stack from a script).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument(
        "--port", type=int, default=8443, help="port to bind (default 8443; 0 picks a free one)"
    )
    parser.add_argument(
        "--ca-out", type=Path, required=True, help="where to write the CA certificate to pin"
    )
    parser.add_argument(
        "--signing-key-out",
        type=Path,
        metavar="FILE",
        help="write the request-signing private key (PEM, mode 0600) for `gateway dev send`",
    )
    parser.add_argument(
        "--signing-alg",
        choices=SIGNING_ALGORITHMS,
        default="ed25519",
        help="algorithm of the request-signing key (RFC 9421; default ed25519; rsa-pss-sha512 "
        "is what a key in Azure Key Vault or Managed HSM signs with)",
    )
    parser.add_argument(
        "--person",
        action="append",
        default=[],
        metavar="USER=PASSWORD",
        help="a Person holding both gateway operations (repeatable)",
    )
    parser.add_argument(
        "--person-without-operations",
        action="append",
        default=[],
        metavar="USER=PASSWORD",
        help="a Person holding no gateway operation (repeatable)",
    )
    parser.add_argument(
        "--relay-namespace",
        default="127.0.0.1:9443",
        metavar="HOST",
        help="relay namespace the listener tokens are for (default 127.0.0.1:9443)",
    )
    parser.add_argument(
        "--relay-key-name",
        default="ListenRule",
        metavar="NAME",
        help="relay rule the listener tokens are made with (default ListenRule)",
    )
    parser.add_argument("--relay-key", default=None, help="relay rule key (default: random)")
    parser.add_argument(
        "--hc",
        metavar="NAME",
        help="Hybrid Connection every gateway is given (default hc-GATEWAY_ID)",
    )
    parser.add_argument(
        "--token-lifetime",
        type=_lifetime,
        default=3600.0,
        metavar="SECONDS",
        help="lifetime of the listener tokens handed out (default 3600)",
    )
    parser.add_argument(
        "--cert-lifetime-hours",
        type=float,
        default=24 * 30,
        metavar="HOURS",
        help="lifetime of the client certificates issued (default 720)",
    )
    parser.set_defaults(handler=run)


def _lifetime(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    # SAS tokens carry whole seconds (hybrid-connections-protocol: se= is a Unix time).
    if not 1 <= value <= 7 * 86400:
        raise argparse.ArgumentTypeError("must be from 1 to 604800 seconds")
    return value


def _person_arg(text: str) -> tuple[str, str]:
    user, sep, password = text.partition("=")
    if not sep or not user or not password:
        raise ValueError(f"expected USER=PASSWORD, got {user or text!r}")
    return user, password


def run(args: argparse.Namespace) -> int:
    """Run the simulator until SIGINT or SIGTERM."""
    try:
        with_ops = [_person_arg(p) for p in args.person]
        without_ops = [_person_arg(p) for p in args.person_without_operations]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    simulator = ControlPlaneSimulator(
        host=args.host,
        port=args.port,
        relay_namespace=args.relay_namespace,
        relay_key_name=args.relay_key_name,
        relay_key=args.relay_key,
        hybrid_connection=args.hc,
        token_ttl=dt.timedelta(seconds=args.token_lifetime),
        cert_lifetime=dt.timedelta(hours=args.cert_lifetime_hours),
        signing_alg=args.signing_alg,
    )
    for user, password in with_ops:
        simulator.add_person(user, password)
    for user, password in without_ops:
        simulator.add_person(user, password, operations=())
    try:
        asyncio.run(_serve(simulator, args.ca_out, args.signing_key_out))
    except OSError as exc:
        print(f"gateway dev controlplane: cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0


def write_signing_key(simulator: ControlPlaneSimulator, path: Path) -> None:
    """Write the request-signing private key as unencrypted PKCS#8 PEM, readable by the owner only
    (created with mode 0600, so it is never readable by others even for a moment)."""
    pem = simulator.signing_key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    path.chmod(0o600)


async def _serve(
    simulator: ControlPlaneSimulator, ca_out: Path, signing_key_out: Path | None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with simulator:
        simulator.write_ca(ca_out)
        print(f"control-plane simulator on {simulator.base_url} (CA written to {ca_out})")
        if signing_key_out is not None:
            write_signing_key(simulator, signing_key_out)
            print(f"request-signing key written to {signing_key_out}")
        print(f"signing keyid: {simulator.signing_key.keyid}")
        print(f"signing alg: {simulator.signing_alg}")
        print(
            "persons: " + (", ".join(sorted(simulator.persons)) or "none (use --person)"),
            flush=True,
        )
        await stop.wait()
