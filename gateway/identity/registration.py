"""Registration: the one-time enrolment of a gateway with an EmpowerID Person's credentials.

Flow (ARCHITECTURE.md section 2, "Registration"):

1. read the operator-supplied CA file, if any (``empowerid.ca_file``): then it is the only trust
   anchor for this call (no system CAs); without one, the system trust store authenticates it;
2. generate a fresh key pair on the host and a CSR naming the gateway;
3. ``POST registrations`` over that TLS, with the Person's credentials (HTTP Basic). A server
   certificate from another CA or for another host name fails the handshake, so neither
   credentials nor CSR are ever sent to it;
4. check the answer: the returned CA must be the operator's pinned one (when there is one), and
   the certificate must belong to our key, name the gateway, allow clientAuth, be valid now and
   chain to that CA, which is pinned from here on (the returned one when the system store
   authenticated the call);
5. write the key pair as an uncommitted generation and prove it: one mTLS call pinned to that
   CA, as every later connection is made (the pair is discarded if it fails);
6. delete the hmac-sha256 request keys of a previous registration, write CA, signing keys and
   relay endpoint atomically, then commit.

The password is used for that single request; it is never stored, logged or put in an error.
"""

from __future__ import annotations

import datetime as dt
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from gateway import __version__
from gateway.identity.certs import (
    MAX_PEM_BYTES,
    Clock,
    answer_pem,
    parse_ca_certificate,
    parse_certificate_chain,
    renewal_time,
    utcnow,
    validate_client_certificate,
)
from gateway.identity.controlplane import ControlPlaneClient, Timeouts
from gateway.identity.errors import IdentityError
from gateway.identity.keys import (
    DEFAULT_KEY_ALGORITHM,
    KeyAlgorithm,
    build_csr,
    generate_private_key,
    validate_gateway_id,
)
from gateway.identity.models import RelayEndpoint
from gateway.identity.store import IdentityRecord, IdentityStore
from gateway.identity.tls import mtls_context, registration_context, system_context
from gateway.outbound.proxy import OutboundProxy, ProxySettings


@dataclass(frozen=True)
class RegistrationSettings:
    """What registration needs besides the Person's credentials.

    ``proxy`` is the gateway's outbound proxy configuration (the same section the relay uses);
    the default connects directly.
    """

    base_url: str
    state_dir: Path
    gateway_id: str
    ca_file: Path | None
    """The operator's CA to pin; None trusts the system store for this call only."""
    version: str = __version__
    timeouts: Timeouts = field(default_factory=Timeouts)
    key_algorithm: KeyAlgorithm = DEFAULT_KEY_ALGORITHM
    proxy: ProxySettings = field(default_factory=ProxySettings)
    force: bool = False


@dataclass(frozen=True)
class RegistrationOutcome:
    """What was stored, for the operator's confirmation message."""

    gateway_id: str
    state_dir: Path
    certificate_serial: int
    not_after: dt.datetime
    renew_at: dt.datetime
    relay: RelayEndpoint
    signing_key_ids: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form for ``gateway register --format json``."""
        return {
            "gateway_id": self.gateway_id,
            "state_dir": str(self.state_dir),
            "certificate_serial": f"{self.certificate_serial:x}",
            "not_after": self.not_after.isoformat(),
            "renew_at": self.renew_at.isoformat(),
            "relay": self.relay.model_dump(),
            "signing_key_ids": list(self.signing_key_ids),
        }


def read_ca_file(path: Path) -> bytes:
    """Read the operator's CA file: a regular file, not writable by others, one CA certificate."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise IdentityError("corrupt_file", f"{path} is not a regular file")
        if stat.S_IMODE(st.st_mode) & 0o022:
            raise IdentityError(
                "unsafe_permissions", f"{path} is writable by group or others; trust would be open"
            )
        if st.st_size > MAX_PEM_BYTES:
            raise IdentityError("corrupt_file", f"{path} is larger than {MAX_PEM_BYTES} bytes")
        data = path.read_bytes()
    except OSError as exc:
        raise IdentityError(
            "unreadable", f"cannot read the CA file {path}: {exc.strerror}"
        ) from None
    ca = parse_ca_certificate(data, source=str(path))
    return ca.public_bytes(Encoding.PEM)


async def _prove(
    settings: RegistrationSettings,
    proxy: OutboundProxy,
    ca_pem: bytes,
    key_path: Path,
    cert_path: Path,
    passphrase: bytes | None,
    store: IdentityStore,
    generation: int,
) -> None:
    """One mTLS call with the new, uncommitted pair, pinned to the CA about to be pinned; on
    failure the pair is discarded and nothing is committed.

    Every later connection is made exactly so. Without it a registration could report success
    for an identity that can never connect: above all without ``empowerid.ca_file``, when the
    system store accepted a server certificate from a CA other than the one EmpowerID returned.
    """
    try:
        context = mtls_context(ca_pem, cert_path, key_path, passphrase)
        client = ControlPlaneClient(
            settings.base_url,
            context,
            client_certificate=True,
            timeouts=settings.timeouts,
            proxy=proxy,
        )
        async with client:
            await client.signing_keys()
    except IdentityError as exc:
        store.discard_key_pair(generation)
        raise IdentityError(
            exc.code,
            "the new identity could not be used, so nothing was stored: a connection with it, "
            f"pinned to the CA EmpowerID returned, failed ({exc.args[0]})",
        ) from None


def _check_username(username: str) -> None:
    # RFC 7617 section 2: the user-id cannot contain a colon; control characters are never valid.
    if not username or ":" in username or not username.isprintable():
        raise IdentityError(
            "invalid_username", "the user name must be non-empty, printable and without ':'"
        )


async def register(
    settings: RegistrationSettings,
    *,
    username: str,
    password: str,
    passphrase: bytes | None = None,
    clock: Clock = utcnow,
) -> RegistrationOutcome:
    """Register the gateway and store its identity; see the module docstring for the steps.

    ``passphrase`` encrypts the private key at rest (PKCS#8). Raises :class:`IdentityError`
    (including :class:`ControlPlaneError`, e.g. ``bad_credentials``, ``missing_operation``,
    ``tls_interception_or_untrusted_ca``, ``proxy_auth_required``) or
    :class:`~gateway.outbound.proxy.ProxyConfigError` when the proxy's CA bundle cannot be read;
    nothing is committed unless every check passed.
    """
    gateway_id = validate_gateway_id(settings.gateway_id)
    _check_username(username)
    pinned = read_ca_file(settings.ca_file) if settings.ca_file is not None else None
    proxy = OutboundProxy(settings.proxy)
    store = IdentityStore(settings.state_dir, passphrase=passphrase)
    store.create_directory()
    if store.has_identity() and not settings.force:
        raise IdentityError(
            "already_registered",
            f"{settings.state_dir} already holds a gateway identity; "
            "register with force to replace it",
        )
    private_key = generate_private_key(settings.key_algorithm)
    csr_pem = build_csr(private_key, gateway_id)
    client = ControlPlaneClient(
        settings.base_url,
        registration_context(pinned) if pinned is not None else system_context(),
        client_certificate=False,
        timeouts=settings.timeouts,
        proxy=proxy,
    )
    async with client:
        result = await client.register(
            gateway_id=gateway_id,
            csr_pem=csr_pem,
            version=settings.version,
            username=username,
            password=password,
        )
    if result.gateway_id != gateway_id:
        raise IdentityError(
            "certificate_invalid", "the control plane registered a different gateway id"
        )
    returned_ca = parse_ca_certificate(
        answer_pem(result.ca_certificate, source="the registration answer's CA"),
        source="the registration answer's CA",
    )
    ca = returned_ca
    if pinned is not None:
        ca = parse_ca_certificate(pinned, source=str(settings.ca_file))
        if returned_ca.public_bytes(Encoding.DER) != ca.public_bytes(Encoding.DER):
            raise IdentityError(
                "ca_mismatch",
                f"the control plane returned a CA other than the one in {settings.ca_file}",
            )
    ca_pem = ca.public_bytes(Encoding.PEM)
    chain = parse_certificate_chain(
        answer_pem(result.certificate_chain, source="the registration answer's certificate"),
        source="the registration answer's certificate",
    )
    now = clock()
    validate_client_certificate(
        chain, private_key=private_key, ca=ca, gateway_id=gateway_id, now=now
    )
    generation = store.next_generation()
    key_path, cert_path = store.write_key_pair(generation, private_key, chain)
    await _prove(settings, proxy, ca_pem, key_path, cert_path, passphrase, store, generation)
    # A new registration starts over: the previous installation's hmac-sha256 keys (which the
    # agent falls back to while EmpowerID cannot hand out fresh ones) must not outlive it, above
    # all after a re-registration that follows a compromise.
    store.remove_request_secrets()
    store.write_pins(ca_pem=ca_pem, signing_keys=list(result.signing_keys), relay=result.relay)
    store.commit(IdentityRecord(gateway_id, client.base_url, generation, now))
    return RegistrationOutcome(
        gateway_id=gateway_id,
        state_dir=settings.state_dir,
        certificate_serial=chain[0].serial_number,
        not_after=chain[0].not_valid_after_utc,
        renew_at=renewal_time(chain[0]),
        relay=result.relay,
        signing_key_ids=tuple(key.keyid for key in result.signing_keys),
    )
