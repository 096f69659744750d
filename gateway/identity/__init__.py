"""The gateway's identity: key pair, client certificate, pinned CA and the control-plane client.

Entry points for the CLI and the service:

* :func:`register` with :class:`RegistrationSettings` - ``gateway register``;
* :func:`status` - ``gateway status`` (offline, never raises for a bad identity);
* :func:`load_identity` and :func:`mtls_client` - start-up, relay-info and heartbeats;
* :class:`CertificateRenewer` - the renewal background task;
* :func:`refresh_signing_keys` - re-pin the control plane's request-signing keys.

Only :mod:`gateway.identity.controlplane` speaks the control-plane API. The outbound proxy it
goes through is configured with :class:`gateway.outbound.proxy.ProxySettings` (in
:class:`RegistrationSettings`) or passed as the shared :class:`gateway.outbound.proxy.OutboundProxy`
(to :func:`mtls_client`), exactly as for relay traffic.
"""

from gateway.identity.controlplane import ControlPlaneClient, Timeouts
from gateway.identity.errors import ControlPlaneError, IdentityError
from gateway.identity.registration import RegistrationOutcome, RegistrationSettings, register
from gateway.identity.renewal import CertificateRenewer, RenewalPolicy
from gateway.identity.session import load_identity, mtls_client, refresh_signing_keys, status
from gateway.identity.store import IdentityStore, StoredIdentity, read_passphrase

__all__ = [
    "CertificateRenewer",
    "ControlPlaneClient",
    "ControlPlaneError",
    "IdentityError",
    "IdentityStore",
    "RegistrationOutcome",
    "RegistrationSettings",
    "RenewalPolicy",
    "StoredIdentity",
    "Timeouts",
    "load_identity",
    "mtls_client",
    "read_passphrase",
    "refresh_signing_keys",
    "register",
    "status",
]
