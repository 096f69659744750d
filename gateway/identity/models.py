"""Typed forms of the control-plane API documents (``schemas/controlplane.openapi.yaml``).

Responses are parsed into these models at the client boundary, so the rest of the gateway never
handles raw JSON. Unknown members are ignored (the API may grow compatibly); missing or mistyped
members are errors. Every string has a length bound so a hostile answer cannot inflate memory.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr, model_validator

KeyId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]
Pem = Annotated[str, Field(min_length=1, max_length=65536)]
# The relay namespace host, optionally with a port (the local relay emulator listens on one).
Namespace = Annotated[
    str, Field(min_length=1, max_length=260, pattern=r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
]
HybridConnectionPath = Annotated[
    str, Field(min_length=1, max_length=260, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
]
GatewayStatus = Literal["starting", "online", "degraded", "draining", "offline"]
# The most worker processes one gateway runs (gateway.config.model.MAX_WORKERS is lower): the
# contract leaves room to raise the configuration's limit without a new contract version.
MAX_WORKERS = 64


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class SigningKey(_Wire):
    """A control-plane public key that signs relayed requests (RFC 9421 ``keyid``/``alg``)."""

    keyid: KeyId
    alg: Literal["ed25519", "ecdsa-p256-sha256", "rsa-pss-sha512"]  # what gateway.auth verifies
    public_key_pem: Pem
    not_before: AwareDatetime
    not_after: AwareDatetime

    def active_at(self, now: dt.datetime) -> bool:
        """True if the key may verify a signature made at ``now``."""
        return self.not_before <= now < self.not_after


class RequestSecret(_Wire):
    """This gateway's own symmetric request-signing key (RFC 9421 ``hmac-sha256``).

    Handed out only over mTLS, only to the gateway it belongs to. ``secret`` is the key in
    Base64 (RFC 4648 section 4), 32 to 64 bytes; a ``SecretStr`` so that no ``repr``, log line or
    model dump shows it (:meth:`key_bytes` is the one way to the bytes).
    """

    keyid: KeyId
    alg: Literal["hmac-sha256"]
    secret: SecretStr = Field(min_length=44, max_length=88)
    not_before: AwareDatetime
    not_after: AwareDatetime

    def key_bytes(self) -> bytes:
        """The key (raises ``ValueError`` when ``secret`` is not Base64 of 32 to 64 bytes)."""
        raw = base64.b64decode(self.secret.get_secret_value(), validate=True)
        if not 32 <= len(raw) <= 64:
            raise ValueError("an hmac-sha256 key must be 32 to 64 bytes")
        return raw

    def stored(self) -> dict[str, str]:
        """The form written to the identity store's 0600 file (the secret in clear)."""
        return {
            "keyid": self.keyid,
            "alg": self.alg,
            "secret": self.secret.get_secret_value(),
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
        }


class RelayEndpoint(_Wire):
    """Where the gateway listens: the relay namespace and its hybrid connection path."""

    namespace: Namespace
    hybrid_connection: HybridConnectionPath


class ListenerToken(_Wire):
    """A SAS token with ``Listen`` rights on the hybrid connection, and when it expires."""

    token: SecretStr = Field(max_length=4096)
    expires_at: AwareDatetime


class RelayInfo(_Wire):
    """``GET /relay-info``: the endpoint and a fresh listener token."""

    gateway_id: str = Field(max_length=63)
    relay: RelayEndpoint
    listener_token: ListenerToken


class RegistrationResult(_Wire):
    """``POST /registrations`` answer: the client chain, the CA to pin, keys and relay endpoint."""

    gateway_id: str = Field(max_length=63)
    certificate_chain: Pem
    ca_certificate: Pem
    signing_keys: list[SigningKey] = Field(min_length=1, max_length=16)
    relay: RelayEndpoint


class CertificateResult(_Wire):
    """``POST /certificates`` answer: the renewed client chain."""

    certificate_chain: Pem


class SigningKeySet(_Wire):
    """``GET /signing-keys`` answer: the current request-signing keys."""

    keys: list[SigningKey] = Field(min_length=1, max_length=16)


class RequestSecretSet(_Wire):
    """``GET /request-secrets`` answer: this gateway's current hmac-sha256 keys (during a
    rotation the outgoing key stays listed, until its ``not_after``, beside the new one)."""

    keys: list[RequestSecret] = Field(min_length=1, max_length=4)


class AuditHead(_Wire):
    """The newest signed checkpoint of the decision log (gateway.observability.auditchain):
    every record before ``seq`` hashes to ``hash``. Kept by EmpowerID so that a log cut back to
    before it can be shown incomplete."""

    seq: int = Field(ge=0)
    hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    time: str = Field(max_length=64)
    alg: str = Field(max_length=32)
    key_id: str = Field(max_length=64)
    signature: str = Field(max_length=1024)


class WorkerInstance(_Wire):
    """Which worker process of a gateway sends a heartbeat (contract 1.1.0): worker ``index``
    (from 1) of ``count``. Each worker has its own counters, listeners and decision-log hash
    chain (``NAME.wINDEX``), so EmpowerID keeps one state and one audit head per index."""

    index: int = Field(ge=1, le=MAX_WORKERS)
    count: int = Field(ge=2, le=MAX_WORKERS)

    @model_validator(mode="after")
    def _index_within_count(self) -> WorkerInstance:
        if self.index > self.count:
            raise ValueError("a worker index cannot exceed the worker count")
        return self


class Heartbeat(_Wire):
    """``POST /heartbeats`` body: what the gateway (or one of its workers) reports about itself.

    ``worker`` is absent for a gateway that runs one process, so such a heartbeat is exactly what
    a control plane built on contract 1.0.0 accepts."""

    status: GatewayStatus
    version: str = Field(max_length=64)
    config_hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    policy_revision: str = Field(max_length=128)
    listeners_online: int = Field(ge=0, le=10_000)
    counters: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")], int] = Field(
        default_factory=dict, max_length=64
    )
    audit_head: AuditHead | None = None
    worker: WorkerInstance | None = None


class HeartbeatAck(_Wire):
    """``POST /heartbeats`` answer: when the control plane wants the next heartbeat."""

    interval_seconds: int = Field(ge=5, le=3600)
