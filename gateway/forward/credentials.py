"""Credentials the gateway injects into target requests (the ``credentials`` section).

A target (or one operation) that names a credential gets it from the gateway, never from the
SaaS: the on-prem secret stays on-prem, and the relay, which sees every relayed request in the
clear, never carries it. :class:`CredentialSet` holds one :class:`Injector` per declared
credential for one configuration revision; :meth:`Injector.header` gives the header to add.

Kinds: ``header`` (``name: <secret>``), ``bearer`` (``Authorization: Bearer <secret>``, RFC 6750
section 2.1), ``basic`` (``Authorization: Basic base64(user:password)``, RFC 7617 with UTF-8) and
``oauth2_client_credentials`` (``Authorization: Bearer <token>`` from
:class:`gateway.forward.oauth.TokenSource`).

Rotation: file and systemd-credential secrets are re-read when the file changes (one ``stat`` per
use, :class:`gateway.config.secrets.SecretSource`); a reload builds a new set (and so fetches a
new OAuth token). Environment secrets are fixed for the life of the process.

Secret values never appear in a message or log record of this module.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config import LoadedConfig
from gateway.config.model import Credential, Operation, Target
from gateway.config.secrets import SecretError, SecretRef, SecretSource
from gateway.forward.dial import Guard, Redirect, Resolver, system_resolver
from gateway.forward.headers import credential_name
from gateway.forward.oauth import CredentialError, TokenSource

__all__ = [
    "CredentialError",
    "CredentialSet",
    "Injector",
    "describe",
]

# RFC 9110 section 5.5: field-vchar, SP and HTAB. A secret that is not a valid header value would
# split or corrupt the request: it is refused, never sent.
_HEADER_VALUE = re.compile(r"[\x21-\x7e](?:[\t\x20-\x7e]*[\x21-\x7e])?")


def describe(name: str, credential: Credential) -> str:
    """One line naming a credential by its references only (for explain, check and logs)."""
    if credential.header is not None:
        refs = credential.header.value.describe()
    elif credential.bearer is not None:
        refs = credential.bearer.token.describe()
    elif credential.basic is not None:
        refs = f"user {credential.basic.username}, password {credential.basic.password.describe()}"
    elif credential.oauth2_client_credentials is not None:
        oauth = credential.oauth2_client_credentials
        refs = (
            f"token from {oauth.token_url}, client {oauth.client_id}, secret "
            f"{oauth.client_secret.describe()}"
        )
    else:
        refs = "nothing"
    return f"{name} ({credential.kind}: {refs})"


class Injector:
    """One declared credential: which header it sets and, on demand, that header's value."""

    def __init__(
        self,
        name: str,
        credential: Credential,
        sources: Mapping[str, SecretSource],
        tokens: TokenSource | None,
    ) -> None:
        self.name = name
        self.credential = credential
        self.header_name = credential.header_name
        self._sources = sources
        self._tokens = tokens

    async def header(self) -> tuple[str, str]:
        """``(name, value)`` to add upstream; raises :class:`CredentialError` (fail closed)."""
        credential = self.credential
        if self._tokens is not None:
            token = await self._tokens.token()
            return self.header_name, "Bearer " + token.get_secret_value()
        if credential.basic is not None:
            password = self._secret("password")
            pair = f"{credential.basic.username}:{password}".encode()
            return self.header_name, "Basic " + base64.b64encode(pair).decode("ascii")
        if credential.bearer is not None:
            return self.header_name, "Bearer " + self._secret("token")
        return self.header_name, self._secret("value")

    def rejected(self, value: str) -> None:
        """The target answered 401 to ``value``: an OAuth token is dropped from the cache."""
        if self._tokens is not None and value.startswith("Bearer "):
            self._tokens.invalidate(value[len("Bearer ") :])

    def _secret(self, key: str) -> str:
        try:
            value = self._sources[key].get().get_secret_value()
        except SecretError as exc:
            raise CredentialError("credential_unavailable", str(exc), 503) from None
        if key != "password" and not _HEADER_VALUE.fullmatch(value):
            raise CredentialError(
                "credential_unavailable",
                f"the secret of credential {self.name} is not a valid header value",
                503,
            )
        return value

    async def close(self) -> None:
        """Release the token endpoint's connections, if any."""
        if self._tokens is not None:
            await self._tokens.close()


@dataclass(frozen=True)
class CredentialSet:
    """Every declared credential of one configuration revision, by name."""

    injectors: Mapping[str, Injector]

    @classmethod
    def build(
        cls,
        loaded: LoadedConfig,
        *,
        resolver: Resolver = system_resolver,
        redirect: Redirect | None = None,
        guard: Guard | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CredentialSet:
        """Injectors for ``loaded``'s credentials. Environment secrets come from the values the
        load resolved (``loaded.secrets``); files are read on use."""
        config = loaded.config
        injectors: dict[str, Injector] = {}
        for name, credential in config.credentials.items():
            base = f"credentials.{name}"
            refs: dict[str, tuple[str, SecretRef]] = {}
            if credential.header is not None:
                refs["value"] = (f"{base}.header.value", credential.header.value)
            if credential.bearer is not None:
                refs["token"] = (f"{base}.bearer.token", credential.bearer.token)
            if credential.basic is not None:
                refs["password"] = (f"{base}.basic.password", credential.basic.password)
            oauth = credential.oauth2_client_credentials
            if oauth is not None:
                path = f"{base}.oauth2_client_credentials.client_secret"
                refs["client_secret"] = (path, oauth.client_secret)
            # Raises SecretError for an environment secret that is not set: a revision whose
            # credentials cannot resolve is not built (the load's host checks report it first).
            sources = {
                key: SecretSource(
                    ref, base_dir=loaded.file.parent, env=env, initial=loaded.secrets.get(path)
                )
                for key, (path, ref) in refs.items()
            }
            tokens = None
            if oauth is not None:
                tokens = TokenSource(
                    name,
                    oauth,
                    sources["client_secret"],
                    config,
                    resolver=resolver,
                    redirect=redirect,
                    guard=guard,
                    resolve_path=loaded.resolve_path,
                )
            injectors[name] = Injector(name, credential, sources, tokens)
        return cls(injectors)

    def for_request(self, target: Target, operation: Operation | None) -> Injector | None:
        """The injector for a request ``operation`` allowed on ``target``, if it injects one."""
        name = credential_name(target, operation)
        return None if name is None else self.injectors[name]

    async def close(self) -> None:
        """Release every token endpoint's connections."""
        for injector in self.injectors.values():
            await injector.close()
