"""Composition root: build the agent from gateway.yaml, run it, reload it, drain and stop it.

Start (ARCHITECTURE section 2): load and validate the configuration and compile the policy ->
load the identity -> fetch relay connection info over mTLS -> open the listener control channels ->
ready. While running: heartbeats and signing-key refreshes over mTLS, certificate renewal, reloads
on SIGHUP or when the file changes (the new configuration and policy are built completely before
they replace the old ones, as one :class:`~gateway.pipeline.Runtime`; on any failure the last good
one stays), and the health endpoint. Stop: stop taking work, drain in-flight requests within the
grace period, close everything.

Exit codes of ``gateway run`` (also in docs/operations.md):

* 0 - stopped cleanly (SIGTERM/SIGINT)
* 1 - the configuration is invalid, or a start-up self-check failed (see :func:`self_check`)
* 4 - the identity is missing or unusable (not registered, expired, unsafe files)
* 5 - could not start (relay info, a policy that does not load, compile or decide, health port)
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import ssl
import stat
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from gateway import __version__, eventloop
from gateway.auth import BadSignatureLimiter, KeySet, SignatureVerifier, VerifierSettings
from gateway.auth.errors import SignatureError
from gateway.auth.keys import KeySetError, PinnedKey, shared_key
from gateway.auth.replay import MemoryReplayStore, ReplayStore
from gateway.auth.replaystores import open_replay_store
from gateway.config import LoadedConfig, load
from gateway.config.model import GatewayConfig
from gateway.errors import ConfigError, GatewayError, PolicyError, Problem
from gateway.filewatch import FileWatch
from gateway.forward.dial import Guard, Redirect, Resolver, system_resolver
from gateway.gitops.signing import verify_signed_config
from gateway.identity import (
    CertificateRenewer,
    ControlPlaneClient,
    IdentityStore,
    StoredIdentity,
    load_identity,
    mtls_client,
)
from gateway.identity.certs import CertificateHealth, certificate_health
from gateway.identity.errors import ControlPlaneError, IdentityError
from gateway.identity.models import (
    AuditHead,
    Heartbeat,
    RequestSecret,
    SigningKey,
    WorkerInstance,
)
from gateway.identity.session import identity_mismatch
from gateway.ldap.innertls import InnerTlsError, identity_context
from gateway.observability.audit import AuditLog, decision_log
from gateway.observability.export import Exporter, build_exporters
from gateway.observability.health import (
    ENDPOINT_FILE,
    HealthServer,
    Readiness,
    publish_endpoint,
    withdraw_endpoint,
)
from gateway.observability.metrics import Metrics
from gateway.outbound.proxy import OutboundProxy, ProxyConfigError, ProxySettings
from gateway.pipeline import AuditRecord, Decider, Pipeline, Runtime
from gateway.policy.loader import PolicySet, build_engine, load_policies, verify_policy
from gateway.relay.listener import RelayListener
from gateway.relay.settings import ListenerSettings
from gateway.release import read_snapshot
from gateway.settle import resettle, settle

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_IDENTITY = 4
EXIT_START = 5

EngineFactory = Callable[[LoadedConfig], Awaitable[Decider]]


def permission_problems(files: Iterable[Path]) -> list[str]:
    """Files (after following symlinks) that a group or other users could change.

    Catalogue F 109: whoever can write gateway.yaml or a policy decides what the gateway lets in,
    so such a file must be writable by its owner only. A symlink is judged by the file it leads
    to; the directory holding that file must not let others replace it either (writable by group
    or others without the sticky bit). On systems without POSIX modes this check has nothing to
    read and passes.
    """
    if os.name != "posix":
        return []
    problems: list[str] = []
    seen: set[Path] = set()
    for file in files:
        try:
            real = file.resolve(strict=True)
            mode = os.stat(real).st_mode
        except OSError:
            continue  # a missing file is reported by whatever reads it next
        shown = str(file) if real == file.absolute() else f"{file} (-> {real})"
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            problems.append(
                f"{shown} is writable by {_who(mode)} (mode {stat.S_IMODE(mode):04o}); "
                f"make it writable by its owner only: chmod go-w {real}"
            )
        directory = real.parent
        if directory in seen:
            continue
        seen.add(directory)
        with contextlib.suppress(OSError):
            dir_mode = os.stat(directory).st_mode
            if dir_mode & (stat.S_IWGRP | stat.S_IWOTH) and not dir_mode & stat.S_ISVTX:
                problems.append(
                    f"{directory} (holding {real.name}) is writable by {_who(dir_mode)} "
                    f"(mode {stat.S_IMODE(dir_mode):04o}); chmod go-w {directory}"
                )
    return problems


def _who(mode: int) -> str:
    parts = [
        name for bit, name in ((stat.S_IWGRP, "group"), (stat.S_IWOTH, "others")) if mode & bit
    ]
    return " and ".join(parts)


def policy_files(loaded: LoadedConfig) -> list[Path]:
    """Every Rego file under the configured policy directories (what the engine may load)."""
    found: list[Path] = []
    for directory in loaded.config.policy.directories:
        root = loaded.resolve_path(directory)
        if root.is_dir():
            found.extend(sorted(root.rglob("*.rego")))
    return found


def aiohttp_features(config: GatewayConfig) -> list[tuple[str, str]]:
    """The configured features that speak HTTP through aiohttp, as (configuration path, what).

    Everything else (the relay edge, the forward, the control-plane client, the health endpoint)
    has its own HTTP/1.1 code, so a gateway without these features never imports aiohttp.
    """
    found: list[tuple[str, str]] = []
    if config.policy.engine == "opa":
        found.append(("policy.engine", "the OPA server engine"))
    for name, credential in config.credentials.items():
        if credential.oauth2_client_credentials is not None:
            found.append((f"credentials.{name}", "OAuth 2.0 token requests"))
    for name, target in config.targets.items():
        if any(operation.websocket for operation in target.operations):
            found.append((f"targets.{name}", "WebSocket streams to the target"))
    if config.workers != 1:
        found.append(("workers", "the supervisor of several workers"))
    return found


def self_check(config: GatewayConfig) -> list[Problem]:
    """The start-up checks of the runtime itself (catalogue C 67): the event loop ``config``
    demands can be had (:func:`gateway.eventloop.problem`), and aiohttp's version and HTTP
    parser, when ``config`` uses a feature that speaks through aiohttp (:func:`aiohttp_features`;
    only then is aiohttp imported, and refused if it cannot be trusted)."""
    problems: list[Problem] = []
    missing = eventloop.problem(config.event_loop)
    if missing is not None:
        problems.append(Problem(missing, code="event_loop_unavailable", path="event_loop"))
    features = aiohttp_features(config)
    if not features:
        return problems
    # Imported here: it imports aiohttp, which a gateway without these features does without.
    from gateway.outbound.sessions import runtime_problems

    path, what = features[0]
    return problems + [
        Problem(f"{problem} (aiohttp serves {what})", code="runtime_self_check", path=path)
        for problem in runtime_problems()
    ]


def startup_problems(loaded: LoadedConfig, *, files: bool = True) -> None:
    """Raise ConfigError for what :meth:`Agent.start` refuses about a loaded configuration
    beyond the configuration and policy themselves: files others could change (``files``), and
    proxy settings that cannot be used. ``gateway validate`` calls this too, so it cannot call
    valid what ``run`` refuses."""
    problems = self_check(loaded.config)
    if files:
        config_file = Path(loaded.file)
        for finding in permission_problems([config_file]):
            problems.append(Problem(finding, code="unprotected_file", file=str(config_file)))
        for finding in permission_problems(policy_files(loaded)):
            problems.append(Problem(finding, code="unprotected_file", path="policy.directories"))
    try:
        OutboundProxy(proxy_settings(loaded))
    except ProxyConfigError as exc:
        problems.append(
            Problem(f"the proxy settings cannot be used: {exc}", code="invalid_proxy", path="proxy")
        )
    if problems:
        raise ConfigError(problems)


def check_release(loaded: LoadedConfig, *, files: bool = True) -> PolicySet:
    """Raise ConfigError for anything that makes a gateway refuse ``loaded`` at start or reload:
    :func:`startup_problems`, the release signature (with ``files``: it needs the host's
    anti-rollback state, which is read, never written, here) and a policy that does not decide.

    The one answer to "would ``run`` accept this revision?": ``gateway validate`` and ``check``,
    the supervisor's reload check and each worker (through :func:`default_engine`, which records
    the accepted epoch) ask it with the same code, so a refusal names its reason wherever it is
    asked. Returns the verified policy set.
    """
    startup_problems(loaded, files=files)
    verified = (
        verify_signed_config(
            loaded, loaded.resolve_path(loaded.config.gateway.state_dir), record=False
        )
        if files
        else None
    )
    policies = verify_policy(loaded)
    if verified is not None:
        verified.check_policies(policies)
    return policies


def stop_on_signals(stop: asyncio.Event, *, at_once: Callable[[], None] | None = None) -> None:
    """SIGTERM and SIGINT on the running loop: the first sets ``stop`` (drain), a second one exits
    at once, after calling ``at_once`` (a supervisor passes the signal on to its workers)."""
    loop = asyncio.get_running_loop()
    received = 0

    def on_stop() -> None:
        nonlocal received
        received += 1
        if received > 1:
            log.warning("second stop signal: exiting now", extra={"event": "forced_exit"})
            if at_once is not None:
                at_once()
            os._exit(EXIT_OK)
        log.info("stop requested: draining", extra={"event": "draining"})
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_stop)


class StartError(GatewayError):
    """The agent cannot start; ``exit_code`` says which kind of problem."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class OperatorEndpoint:
    """The loopback operator endpoint on ``observability.listen``, its bound address published
    in the state directory (:data:`gateway.observability.health.ENDPOINT_FILE`) while it serves:
    with port 0 configured, that file is the only place that names the port."""

    def __init__(self, server: HealthServer, state_dir: Path | None) -> None:
        self.server = server
        self._state_dir = state_dir
        self._published: str | None = None

    async def start(self, listen: str) -> None:
        """Bind ``listen`` (``HOST:PORT``) and publish the address; raises StartError."""
        host, _, port = listen.rpartition(":")
        try:
            await self.server.start(host.strip("[]"), int(port))
        except OSError as exc:
            raise StartError(f"cannot listen on {listen}: {exc.strerror}", EXIT_START) from None
        if self._state_dir is None:
            return
        try:
            self._published = publish_endpoint(self._state_dir, host, self.server.port)
        except OSError as exc:
            raise StartError(
                f"cannot write {ENDPOINT_FILE} in the state directory: {exc.strerror}", EXIT_START
            ) from None

    async def stop(self) -> None:
        """Withdraw the published address first (nothing answers there from now on), then stop
        serving."""
        if self._state_dir is not None and self._published is not None:
            with contextlib.suppress(OSError):
                withdraw_endpoint(self._state_dir, self._published)
            self._published = None
        await self.server.stop()


@dataclass(frozen=True)
class WorkerRole:
    """This agent is worker ``index`` (from 1) of ``count`` under ``gateway run``'s supervisor
    (:mod:`gateway.supervisor`).

    A worker serves like a whole gateway, except for what must happen once per host: it writes
    its own decision log file (``NAME.wN``), answers ``/readyz`` and ``/metrics`` on a loopback
    port of its own for the supervisor to aggregate, leaves watching gateway.yaml and reloading
    to the supervisor (which moves all workers to one revision together), and only worker 1
    renews the client certificate; the others read the renewed identity from the state directory.
    """

    index: int
    count: int
    # The configuration the supervisor runs: the exact bytes it checked and committed (a 0600
    # file in the state directory) and their revision. A worker starts from them, not from
    # gateway.yaml as it is now, which may have been saved since without a reload.
    snapshot: Path | None = None
    revision: str | None = None

    @property
    def renews(self) -> bool:
        """Whether this worker runs the certificate renewal (one renewer per host)."""
        return self.index == 1


@dataclass
class AgentOptions:
    """How to build the agent. The dial seams (resolver, redirect, guard) are for tests and demo;
    ``limiter_clock`` (monotonic seconds) drives the bad-signature limiter's windows, so a test can
    step through them without waiting."""

    config_path: str
    env: Mapping[str, str] | None = None
    resolver: Resolver = system_resolver
    redirect: Redirect | None = None
    guard: Guard | None = None
    heartbeat_interval: float = 60.0
    key_refresh_interval: float = 900.0
    reload_poll_interval: float = 2.0
    shutdown_grace: float = 30.0
    engine_factory: EngineFactory | None = None
    limiter_clock: Callable[[], float] = time.monotonic
    worker: WorkerRole | None = None
    identity_poll_interval: float = 60.0
    wall_clock: Callable[[], float] = time.time
    """Seconds since the epoch, against which ``/readyz`` judges the client certificate's
    validity (a test steps it past the renewal, alert and expiry points without waiting)."""
    settle_memory: bool = False
    """Freeze start-up's objects once ready (:mod:`gateway.settle`): set by ``gateway run``,
    whose process serves this one agent; not by a process that runs agents among other work."""


def proxy_settings(loaded: LoadedConfig) -> ProxySettings:
    """The outbound proxy for relay and EmpowerID traffic, from gateway.yaml (direct if absent)."""
    proxy = loaded.config.proxy
    if proxy is None:
        return ProxySettings()
    return ProxySettings(
        url=proxy.url.rstrip("/"),
        username=proxy.username,
        password=loaded.secrets.get("proxy.password"),
        no_proxy=tuple(proxy.no_proxy),
        extra_ca_file=loaded.resolve_path(proxy.ca_file) if proxy.ca_file else None,
    )


def signing_keyset(keys: tuple[SigningKey, ...] | list[SigningKey]) -> KeySet:
    """The verifier's key set from the keys pinned at registration (or refreshed since)."""
    return KeySet.from_document({"keys": [key.model_dump(mode="json") for key in keys]})


def request_keys(secrets: list[RequestSecret]) -> list[PinnedKey]:
    """The verifier's hmac-sha256 keys from this gateway's request secrets (control plane)."""
    keys: list[PinnedKey] = []
    for secret in secrets:
        try:
            raw = secret.key_bytes()
        except ValueError:
            # The message names the key id only, never the value.
            raise KeySetError(f"{secret.keyid}: secret is not Base64 of 32 to 64 bytes") from None
        keys.append(
            shared_key(
                secret.keyid,
                raw,
                not_before=secret.not_before.timestamp(),
                not_after=secret.not_after.timestamp(),
            )
        )
    return keys


async def default_engine(loaded: LoadedConfig) -> Decider:
    """The policy engine for this revision: signature checked (when the configuration requires
    one), policies loaded once, compiled and started.

    The policy files verified are the ones compiled: ``check_policies`` refuses modules that
    changed between the signature check and loading.
    """
    state_dir = loaded.resolve_path(loaded.config.gateway.state_dir)
    verified = await asyncio.to_thread(verify_signed_config, loaded, state_dir)
    policies = load_policies(loaded)
    verified.check_policies(policies)
    engine = build_engine(loaded, policies)
    await engine.start()
    if verified.signed:
        log.info(
            "configuration signature verified: epoch %d",
            verified.epoch,
            extra={"event": "config_signature_ok", "epoch": verified.epoch},
        )
    return engine


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat()


@dataclass
class _RenewalFailure:
    code: str
    message: str
    failures: int
    since: float
    last: float


# Settings read once, when the process starts: the relay listeners, the loop, the worker count,
# the outbound proxy, logging and the decision log, the operator endpoint, the state directory,
# and the signature verifier with its replay store. A reload serves a revision that changes them
# without applying the change; :func:`restart_only_changes` names what waits for the restart.
RESTART_ONLY: Final = (
    "workers",
    "event_loop",
    "gateway.state_dir",
    "relay",
    "proxy",
    "signatures.max_age_seconds",
    "signatures.clock_skew_seconds",
    "signatures.replay_store",
    "logging",
    "observability",
)


def restart_only_changes(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    """The settings of :data:`RESTART_ONLY` that differ between ``old`` and ``new``."""

    def value(config: GatewayConfig, path: str) -> object:
        found: object = config
        for part in path.split("."):
            found = getattr(found, part)
        return found

    return [path for path in RESTART_ONLY if value(old, path) != value(new, path)]


@dataclass
class _State:
    identity: StoredIdentity | None = None
    last_heartbeat: float | None = None
    heartbeat_error: str | None = None
    # The decision-log head the last accepted heartbeat carried: what EmpowerID holds for this
    # process's chain, so an operator can run `gateway audit verify --expect-head` against it.
    reported_head: AuditHead | None = None
    renewal_failure: _RenewalFailure | None = None
    reloads_failed: int = 0
    reload_error: dict[str, str] | None = None
    next_key_refresh: float = 0.0
    # The loop this agent runs on, read from the loop itself at start (gateway.eventloop).
    event_loop: str = ""
    # Settings the served revision changed since start that only a restart applies.
    restart_needed: list[str] = field(default_factory=list)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


class Agent:
    """One running gateway."""

    def __init__(self, options: AgentOptions) -> None:
        self.options = options
        self.metrics = Metrics()
        self._runtime: Runtime | None = None
        # The configuration the process started with: what start-only settings still are.
        self._started: GatewayConfig | None = None
        # What a reload reads, watched for changes (the file watch of a one-process gateway).
        self._watch = FileWatch(options.config_path)
        self._state = _State()
        self._listener: RelayListener | None = None
        self._verifier: SignatureVerifier | None = None
        self._replay: ReplayStore | None = None
        self._audit: AuditLog | None = None
        self._exporters: list[Exporter] = []
        self._health: OperatorEndpoint | None = None
        self._pipeline: Pipeline | None = None
        self._renewer: CertificateRenewer | None = None
        self._reload_lock = asyncio.Lock()
        self._inner_tls_context: tuple[Path, ssl.SSLContext] | None = None
        self._proxy_settings = ProxySettings()
        self._proxy = OutboundProxy(self._proxy_settings)

    # --- building --------------------------------------------------------------------------------

    def runtime(self) -> Runtime:
        """The current revision (each request takes one snapshot of it)."""
        if self._runtime is None:
            raise RuntimeError("agent not started")
        return self._runtime

    @property
    def health_port(self) -> int | None:
        """The port the health endpoint is bound to (useful with port 0), or None if off."""
        return self._health.server.port if self._health is not None else None

    def _load(self, *, pinned: bool = False) -> LoadedConfig:
        """gateway.yaml as it is now, or (``pinned``, a worker starting) the revision its
        supervisor runs: a worker restarted after the file was saved, but before a reload,
        comes back on the revision the other workers serve, or refuses to start."""
        role = self.options.worker
        if not pinned or role is None or role.snapshot is None:
            return load(self.options.config_path, env=self.options.env)
        release = read_snapshot(role.snapshot)
        loaded = load(self.options.config_path, env=self.options.env, source=release.source)
        # Policies, signature and trusted keys as the supervisor captured them, not as they are
        # on disk now (gateway.release).
        loaded = release.apply(loaded)
        if loaded.revision != role.revision:
            raise ConfigError(
                [
                    Problem(
                        f"the supervisor's snapshot is revision {loaded.revision}, "
                        f"not {role.revision}",
                        code="snapshot_mismatch",
                        file=str(role.snapshot),
                    )
                ]
            )
        return loaded

    async def _build_runtime(self, loaded: LoadedConfig) -> Runtime:
        factory = self.options.engine_factory or default_engine
        engine = await factory(loaded)
        return Runtime.build(
            loaded,
            engine,
            resolver=self.options.resolver,
            redirect=self.options.redirect,
            guard=self.options.guard,
        )

    def _passphrase(self, loaded: LoadedConfig) -> bytes | None:
        secret = loaded.secrets.get("gateway.key_passphrase")
        return secret.get_secret_value().encode() if secret is not None else None

    def _state_dir(self, loaded: LoadedConfig) -> Path:
        return loaded.resolve_path(loaded.config.gateway.state_dir)

    def _control_plane(self) -> ControlPlaneClient:
        loaded = self.runtime().loaded
        identity = load_identity(self._state_dir(loaded), passphrase=self._passphrase(loaded))
        self._state.identity = identity
        return mtls_client(identity, passphrase=self._passphrase(loaded), proxy=self._proxy)

    # --- running ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Everything up to 'ready'; raises :class:`StartError` with the exit code on failure.

        Before anything is read: the permissions of gateway.yaml; once it is loaded, those of the
        policy files (:func:`permission_problems`) and, for a configuration with a feature that
        speaks through aiohttp, the runtime self-checks (:func:`self_check`). Any failure
        refuses to start with exit code 1.
        """
        self._refuse_if(
            permission_problems([Path(self.options.config_path)]),
            "the configuration file is not protected",
        )
        self._state.event_loop = eventloop.in_use()
        seen = self._watch.state()
        try:
            loaded = self._load(pinned=True)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("%s", problem.render(), extra={"event": "config_invalid"})
            raise StartError("the configuration is invalid", EXIT_CONFIG) from None
        self._watch.follow(loaded, seen)
        try:
            startup_problems(loaded)
        except ConfigError as exc:
            self._refuse_if([p.message for p in exc.problems], "the gateway cannot start")
        config = loaded.config
        self._started = config
        for override in loaded.overrides:
            log.info(
                "%s is set by %s",
                override.path,
                override.variable,
                extra={"event": "config_override"},
            )
        if config.policy.mode == "monitor":
            log.warning(
                "POLICY MONITOR MODE: denied requests are logged and FORWARDED ANYWAY",
                extra={"event": "monitor_mode"},
            )
        state_dir = self._state_dir(loaded)
        passphrase = self._passphrase(loaded)
        self._proxy_settings = proxy_settings(loaded)
        self._proxy = OutboundProxy(self._proxy_settings)  # usable: startup_problems said so
        try:
            identity = load_identity(state_dir, passphrase=passphrase)
            keys = signing_keyset(identity.signing_keys)
        except (GatewayError, KeySetError) as exc:
            raise StartError(f"identity not usable: {exc}", EXIT_IDENTITY) from None
        mismatch = identity_mismatch(identity.gateway_id, config.gateway.id)
        if mismatch is not None:
            raise StartError(
                f"identity not usable: {mismatch}; point gateway.state_dir at this gateway's "
                "directory, or re-register",
                EXIT_IDENTITY,
            )
        self._state.identity = identity
        self.metrics.cert_expiry.set(identity.certificate.not_valid_after_utc.timestamp())
        try:
            self._runtime = await self._build_runtime(loaded)
        except PolicyError as exc:
            # The policy does not load, compile or decide: serving would refuse every request.
            for problem in exc.problems:
                log.error("%s", problem.render(), extra={"event": "policy_invalid"})
            raise StartError(f"the policy cannot be used: {exc}", EXIT_START) from None
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("%s", problem.render(), extra={"event": "config_invalid"})
            raise StartError(f"configuration refused: {exc}", EXIT_CONFIG) from None
        except GatewayError as exc:
            raise StartError(f"policy could not be built: {exc}", EXIT_START) from None
        self._record_info()
        try:
            async with mtls_client(identity, passphrase=passphrase, proxy=self._proxy) as client:
                info = await client.relay_info()
                keys = keys.with_keys(await self._request_keys(client, loaded))
        except KeySetError as exc:
            raise StartError(f"request-signing keys not usable: {exc}", EXIT_IDENTITY) from None
        except GatewayError as exc:
            raise StartError(f"cannot fetch relay connection info: {exc}", EXIT_START) from None
        hc = info.relay.hybrid_connection
        try:
            self._replay = open_replay_store(loaded, state_dir, hc, env=self.options.env)
        except GatewayError as exc:
            raise StartError(f"replay store unusable: {exc}", EXIT_START) from None
        log.info(
            "replay store: %s",
            self._replay.description,
            extra={"event": "replay_store", "kind": config.signatures.replay_store.kind},
        )
        replay = self._replay
        self._verifier = SignatureVerifier(
            keys,
            # The per-process memory is given to the verifier itself: it then admits a nonce
            # with a plain call, where the store would add a coroutine per request (its admit
            # only calls the cache's). The store still closes it at shutdown.
            replay.cache if isinstance(replay, MemoryReplayStore) else replay,
            gateway_id=config.gateway.id,
            hc_path=hc,
            settings=VerifierSettings(
                max_age=config.signatures.max_age_seconds,
                max_skew=config.signatures.clock_skew_seconds,
            ),
        )
        try:
            self._exporters = build_exporters(loaded, on_drop=self._export_dropped)
            self._audit = decision_log(
                loaded,
                identity.private_key,
                observers=[e.offer for e in self._exporters],
                on_failure=self.metrics.audit_write_failures.inc,
                worker=self.options.worker.index if self.options.worker else None,
            )
        except (OSError, ValueError) as exc:
            raise StartError(f"decision log or export not usable: {exc}", EXIT_CONFIG) from None
        for exporter in self._exporters:
            exporter.start()
        self._pipeline = pipeline = Pipeline(
            self.runtime,
            self._verifier,
            authority=info.relay.namespace,
            hc_path=hc,
            metrics=self.metrics,
            audit=self._write_audit,
            audit_submit=self._submit_audit,
            limiter=BadSignatureLimiter(clock=self.options.limiter_clock),
            inner_tls=self._inner_tls,
        )
        first_token = [
            (info.listener_token.token.get_secret_value(), info.listener_token.expires_at)
        ]

        async def tokens() -> tuple[str, float]:
            if first_token:
                token, expires = first_token.pop()
                return token, expires.timestamp()
            async with self._control_plane() as client:
                fresh = await client.relay_info()
            return (
                fresh.listener_token.token.get_secret_value(),
                fresh.listener_token.expires_at.timestamp(),
            )

        endpoint = config.relay.endpoint or info.relay.namespace
        self._listener = RelayListener(
            ListenerSettings(
                endpoint=endpoint.rstrip("/"),
                hc_path=hc,
                connections=config.relay.connections,
                ping_interval=config.relay.ping_interval_seconds,
                max_request_body=config.limits.max_request_body_bytes,
                max_concurrent_requests=config.limits.max_concurrent_requests,
                max_concurrent_streams=config.limits.max_concurrent_streams,
                request_timeout=min(config.limits.request_timeout_seconds + 2, 55.0),
                shutdown_grace=self.options.shutdown_grace,
                allow_insecure_dev_endpoint=endpoint.startswith("ws://"),
                relay_domain=config.relay.rendezvous_domain,
                rendezvous_endpoint=config.relay.rendezvous_endpoint,
                proxy=self._proxy_settings,
            ),
            token_provider=tokens,
            request_handler=pipeline,
            stream_handler=pipeline,
            on_alert=self._alert,
            on_refusal=pipeline.record_refusal,
        )
        self.metrics.relay.bind(self._listener.metrics)
        if config.observability.enabled:
            # A worker answers its supervisor on a loopback port of its own (reported over the
            # control channel, not in the state directory); the supervisor serves the configured
            # address for the whole gateway.
            is_worker = self.options.worker is not None
            listen = "127.0.0.1:0" if is_worker else config.observability.listen
            self._health = OperatorEndpoint(
                HealthServer(self.metrics, self.readiness), None if is_worker else state_dir
            )
            await self._health.start(listen)
        self._renewer = self._certificate_renewer(identity, state_dir, passphrase)
        # The keys were pinned at registration or refreshed since; next refresh one interval on.
        self._state.next_key_refresh = time.monotonic() + self.options.key_refresh_interval
        await self._listener.start()
        self._spawn(self._heartbeats(), "heartbeats")
        worker = self.options.worker
        if worker is None:
            self._spawn(self._watch_config(), "config-watch")
        if worker is None or worker.renews:
            self._spawn(self._renewals(self._renewer), "renewal")
        else:
            # Two renewers would each replace the key pair the other just proved.
            self._spawn(self._follow_identity(state_dir, passphrase), "identity-follow")
        if self.options.settle_memory:
            settle()
        log.info(
            "gateway %s started: %d targets, revision %s, relay %s/%s",
            config.gateway.id,
            len(config.targets),
            loaded.revision,
            endpoint,
            hc,
            extra={"event": "started"},
        )

    async def stop(self) -> None:
        """Drain and close everything (safe to call after a partial start)."""
        if self._listener is not None:
            await self._listener.stop(self.options.shutdown_grace)
        if self._pipeline is not None:
            await self._pipeline.close()
        for task in list(self._state.tasks):
            task.cancel()
        await asyncio.gather(*self._state.tasks, return_exceptions=True)
        if self._runtime is not None:
            await self._runtime.close()
        if self._health is not None:
            await self._health.stop()
        if self._replay is not None:
            await self._replay.close()
        if self._audit is not None:
            self._audit.close()
        loop = asyncio.get_running_loop()
        for exporter in self._exporters:
            await loop.run_in_executor(None, exporter.stop)
        log.info("gateway stopped", extra={"event": "stopped"})

    @staticmethod
    def _refuse_if(problems: list[str], summary: str) -> None:
        for problem in problems:
            log.error("%s", problem, extra={"event": "self_check_failed"})
        if problems:
            raise StartError(f"{summary}: {problems[0]}", EXIT_CONFIG)

    def _spawn(self, coro: Awaitable[object], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._state.tasks.add(task)
        task.add_done_callback(self._state.tasks.discard)

    def _alert(self, code: str, message: str) -> None:
        self.metrics.alerts.labels(code=code).inc()
        log.error("ALERT %s: %s", code, message, extra={"event": "alert", "code": code})

    def _certificate_alert(self, health: CertificateHealth) -> None:
        self.metrics.cert_expiry.set(health.not_after.timestamp())
        self._alert(
            "certificate_expiring",
            f"client certificate is {health.state.replace('_', ' ')}; it expires "
            f"{health.not_after.isoformat()} ({int(health.seconds_left)} s left)",
        )

    def _inner_tls(self) -> ssl.SSLContext:
        """The inner TLS server context of LDAP streams: the current identity certificate
        (a renewal changes the file, and the next stream uses the new one)."""
        identity = self._state.identity
        if identity is None:
            raise InnerTlsError("inner_tls_unavailable", "the gateway has no identity loaded")
        cached = self._inner_tls_context
        if cached is not None and cached[0] == identity.cert_path:
            return cached[1]
        context = identity_context(identity, self._passphrase(self.runtime().loaded))
        self._inner_tls_context = (identity.cert_path, context)
        return context

    def _write_audit(self, record: AuditRecord) -> None:
        if self._audit is not None:
            self._audit.write(record.as_dict())

    def _submit_audit(self, record: AuditRecord) -> Awaitable[None] | None:
        return None if self._audit is None else self._audit.submit(record.as_dict())

    def _export_dropped(self, sink: str) -> None:
        self.metrics.export_dropped.labels(sink=sink).inc()

    def _audit_head(self) -> AuditHead | None:
        head = self._audit.checkpoint() if self._audit is not None else None
        return AuditHead.model_validate(head.as_dict()) if head is not None else None

    def _record_info(self) -> None:
        runtime = self.runtime()
        self.metrics.info.clear()
        self.metrics.info.labels(
            version=__version__,
            revision=runtime.revision,
            mode=runtime.loaded.config.policy.mode,
            event_loop=self._state.event_loop,
        ).set(1)

    # --- readiness, heartbeats, renewals -----------------------------------------------------

    def readiness(self) -> Readiness:
        """Ready while at least one listener is online, a valid config and policy are loaded, and
        the policy engine and the replay store answered their last question, and the client
        certificate is valid now.

        Conditions that do not stop the gateway from serving but need an operator (a failing
        certificate renewal, a certificate past its alert point, lost decision-log records,
        failing heartbeats, a systematic clock skew) are listed under ``degraded``; the gateway
        stays ready.
        """
        reasons: list[str] = []
        online = self._listener.metrics.listeners_online if self._listener else 0
        if online < 1:
            reasons.append("no relay listener online")
        if self._runtime is None:
            reasons.append("no valid configuration and policy loaded")
        elif not self._runtime.engine.ready:
            # Every decision would be a 503 (an OPA engine that is unreachable or lost this
            # revision): not ready, so a load balancer sends requests to a gateway that decides.
            reasons.append("the policy engine cannot decide")
        problem = self._replay.problem if self._replay is not None else None
        if problem is not None:
            # Every signed request is answered 503 replay_store_unavailable while the store
            # cannot admit a nonce (down, refusing the password, or able to evict nonces): not
            # ready, as for the policy engine. The next admission that succeeds clears it.
            reasons.append(f"the replay store cannot admit nonces: {problem}")
        details: dict[str, Any] = {"listeners_online": online, "event_loop": self._state.event_loop}
        if self._runtime is not None:
            details["revision"] = self._runtime.revision
            details["policy_revision"] = self._runtime.engine.revision
            details["mode"] = self._runtime.loaded.config.policy.mode
            details["policy_engine_ready"] = self._runtime.engine.ready
        degraded: list[str] = []
        self._certificate_readiness(details, reasons, degraded)
        if self._state.last_heartbeat is not None:
            details["last_heartbeat"] = _iso(self._state.last_heartbeat)
        if self._state.heartbeat_error:
            details["heartbeat_error"] = self._state.heartbeat_error
            degraded.append("heartbeats to EmpowerID are failing")
        head = self._state.reported_head
        if head is not None:
            audit_path = self._audit.path if self._audit is not None else None
            details["audit_head"] = {
                "seq": head.seq,
                "hash": head.hash,
                "log": str(audit_path) if audit_path is not None else None,
            }
        skew = self._verifier.clock_skew() if self._verifier else None
        if skew is not None:
            details["clock_skew"] = {
                "offset_seconds": round(skew.offset, 3),
                "samples": skew.samples,
                "systematic": skew.systematic,
            }
            if skew.systematic:
                degraded.append(f"the local clock is off by about {skew.offset:+.1f} s")
        failure = self._state.renewal_failure
        if failure is not None:
            details["certificate_renewal"] = {
                "status": "failing",
                "code": failure.code,
                "error": failure.message,
                "failures": failure.failures,
                "failing_since": _iso(failure.since),
                "last_failure": _iso(failure.last),
            }
            degraded.append(f"certificate renewal is failing ({failure.code})")
        if self._audit is not None:
            details["audit_write_failures"] = self._audit.failures
            if self._audit.failing:
                degraded.append("decision log records cannot be written")
        details["reload_failures"] = self._state.reloads_failed
        if self._state.restart_needed:
            # The revision serves, but these settings are still the ones the process started
            # with: the revision alone would say the file is what runs.
            details["restart_needed"] = list(self._state.restart_needed)
            degraded.append(
                "settings changed since start take effect at the next restart: "
                + ", ".join(self._state.restart_needed)
            )
        if self._state.reload_error is not None:
            # The file on disk is not what runs: `gateway status` shows both side by side.
            details["reload_error"] = self._state.reload_error
            degraded.append("the last reload was rejected; the previous revision still serves")
        details["degraded"] = degraded
        return Readiness(ready=not reasons, reasons=reasons, details=details)

    def _certificate_readiness(
        self, details: dict[str, Any], reasons: list[str], degraded: list[str]
    ) -> None:
        """The client certificate's place in its life, judged now rather than when the last
        renewal attempt ran: an expired certificate cannot fetch a listener token, send a
        heartbeat or renew, so the gateway stops serving when the current token runs out and
        only a new registration brings it back; that is not ready. Past the alert point
        without a renewal (the renewer failed, or on another worker) needs an operator."""
        identity = self._state.identity
        if identity is None:
            return
        now = dt.datetime.fromtimestamp(self.options.wall_clock(), dt.UTC)
        health = certificate_health(identity.certificate, now)
        details["certificate"] = {
            "state": health.state,
            "not_after": health.not_after.isoformat(),
            "renew_at": health.renew_at.isoformat(),
            "seconds_left": int(health.seconds_left),
        }
        if health.state == "expired":
            reasons.append(
                f"the client certificate expired at {health.not_after.isoformat()}; "
                "re-register the gateway (gateway register --force)"
            )
        elif health.state == "not_yet_valid":
            reasons.append(
                f"the client certificate is valid only from {health.not_before.isoformat()}; "
                "check the local clock"
            )
        elif health.state == "alert":
            degraded.append(
                f"the client certificate expires at {health.not_after.isoformat()} and has not "
                "been renewed"
            )

    async def heartbeat(self) -> float:
        """Send one heartbeat (and refresh the signing keys when due); returns the interval the
        control plane asked for. A failure is recorded for ``/readyz`` and counted, never raised.

        The heartbeat carries the configuration revision (the SHA-256 of the effective
        configuration, as in ``/readyz`` and the decision log) as ``config_hash``, so the control
        plane can see drift between high-availability peers; the policy revision every decision
        carries; and the totals of the gateway's counters (see :meth:`Metrics.counters`).

        A worker's heartbeat names the worker (contract 1.1.0): its counters, listeners and
        decision-log head are that process's own. A heartbeat the control plane refuses as
        invalid (400: one validating against contract 1.0.0 refuses the ``worker`` member)
        fails like any other, and the signing keys are still refreshed when due, so a key
        rotation reaches a gateway whose heartbeats are refused.
        """
        interval = self.options.heartbeat_interval
        role = self.options.worker
        try:
            runtime = self.runtime()
            online = self._listener.metrics.listeners_online if self._listener else 0
            state = self.readiness()
            # What /readyz says: not ready, or ready with conditions an operator must see.
            healthy = state.ready and not state.details["degraded"]
            beat = Heartbeat(
                status="online" if healthy else "degraded",
                version=__version__,
                config_hash=runtime.revision,
                policy_revision=runtime.engine.revision,
                listeners_online=online,
                counters=self.metrics.counters(),
                audit_head=self._audit_head(),
                worker=WorkerInstance(index=role.index, count=role.count) if role else None,
            )
            refused: ControlPlaneError | None = None
            async with self._control_plane() as client:
                try:
                    ack = await client.heartbeat(beat)
                    interval = float(ack.interval_seconds)
                except ControlPlaneError as exc:
                    if exc.status != 400:
                        raise
                    refused = exc
                if time.monotonic() >= self._state.next_key_refresh:
                    await self._refresh_keys(client)
            if refused is not None:
                raise refused
            self._state.last_heartbeat = time.time()
            self._state.heartbeat_error = None
            self._state.reported_head = beat.audit_head or self._state.reported_head
            self.metrics.heartbeats.labels(result="ok").inc()
        except (GatewayError, KeySetError, SignatureError) as exc:
            reason = str(exc)
            if role is not None and isinstance(exc, ControlPlaneError) and exc.status == 400:
                reason += (
                    f" (worker {role.index} of {role.count} sends the `worker` member of "
                    "control-plane contract 1.1.0; a control plane on 1.0.0 refuses it. The "
                    "gateway serves on.)"
                )
            self._state.heartbeat_error = reason
            self.metrics.heartbeats.labels(result="failed").inc()
            log.warning("heartbeat failed: %s", reason, extra={"event": "heartbeat_failed"})
        return interval

    async def _refresh_keys(self, client: ControlPlaneClient) -> None:
        """Re-pin the request-signing keys (and this gateway's hmac-sha256 keys when the running
        configuration accepts them) as one set; the next refresh is one interval on."""
        keys = signing_keyset(await client.signing_keys())
        keys = keys.with_keys(await self._request_keys(client, self.runtime().loaded))
        if self._verifier is not None:
            self._verifier.replace_keys(keys)
        self._state.next_key_refresh = time.monotonic() + self.options.key_refresh_interval

    async def _request_keys(
        self, client: ControlPlaneClient, loaded: LoadedConfig
    ) -> list[PinnedKey]:
        """This gateway's hmac-sha256 keys when ``signatures.hmac_sha256`` is on: fetched over
        mTLS and stored 0600 in the state directory, or the stored ones when the control plane
        cannot hand them out now (their own ``not_after`` still bounds them). When the option
        is off there are none, and a stored set is deleted: a secret nobody verifies with has
        no business on the disk."""
        store = IdentityStore(self._state_dir(loaded), passphrase=self._passphrase(loaded))
        if not loaded.config.signatures.hmac_sha256:
            if store.remove_request_secrets():
                log.info(
                    "hmac-sha256 request keys deleted: signatures.hmac_sha256 is off",
                    extra={"event": "request_secrets_removed"},
                )
            return []
        try:
            secrets = await client.request_secrets()
        except GatewayError as exc:
            secrets = store.read_request_secrets()
            log.warning(
                "hmac-sha256 request keys not refreshed (%s); %d stored key(s) stay in use",
                exc,
                len(secrets),
                extra={"event": "request_secrets_stale"},
            )
            return request_keys(secrets)
        keys = request_keys(secrets)  # refused before anything is written
        store.write_request_secrets(secrets)
        log.info(
            "hmac-sha256 request keys pinned: %s",
            ", ".join(secret.keyid for secret in secrets),
            extra={"event": "request_secrets_pinned"},
        )
        return keys

    async def _hmac_changed(self, accepted: bool) -> None:
        """``signatures.hmac_sha256`` changed with a reload: off takes effect at once (the keys
        leave the verifier and the disk); on fetches the keys now rather than at the next
        refresh."""
        verifier = self._verifier
        if not accepted:
            if verifier is not None:
                kept = [key for key in verifier.keys.values() if key.alg != "hmac-sha256"]
                verifier.replace_keys(KeySet(kept))
            loaded = self.runtime().loaded
            store = IdentityStore(self._state_dir(loaded), passphrase=self._passphrase(loaded))
            with contextlib.suppress(GatewayError):
                store.remove_request_secrets()
        try:
            await self.refresh_keys()
        except (GatewayError, KeySetError) as exc:
            log.warning(
                "request-signing keys not refreshed after the reload: %s",
                exc,
                extra={"event": "key_refresh_failed"},
            )

    async def refresh_keys(self) -> None:
        """Fetch and pin the request-signing keys now (over mTLS), instead of at the next
        scheduled refresh. Raises the control plane's error; the pinned keys stay as they were."""
        async with self._control_plane() as client:
            await self._refresh_keys(client)

    async def _heartbeats(self) -> None:
        while True:
            interval = await self.heartbeat()
            await asyncio.sleep(min(interval, self.options.heartbeat_interval))

    def _certificate_renewer(
        self, identity: StoredIdentity, state_dir: Path, passphrase: bytes | None
    ) -> CertificateRenewer:
        url = identity.record.control_plane_url
        return CertificateRenewer(
            IdentityStore(state_dir, passphrase=passphrase),
            passphrase=passphrase,
            client_factory=lambda context: ControlPlaneClient(
                url, context, client_certificate=True, proxy=self._proxy
            ),
            on_alert=self._certificate_alert,
            on_failure=self._renewal_failed,
            on_renewed=self._renewed,
        )

    async def renew_certificate(self) -> bool:
        """Renew the client certificate now (the renewal loop does this when it is due);
        returns whether it renewed. A failure is an alert, as in the loop."""
        if self._renewer is None:
            raise RuntimeError("agent not started")
        return await self._renewer.attempt()

    def _renewal_failed(self, exc: IdentityError) -> None:
        now = time.time()
        previous = self._state.renewal_failure
        self._state.renewal_failure = _RenewalFailure(
            code=exc.code,
            message=str(exc),
            failures=1 if previous is None else previous.failures + 1,
            since=now if previous is None else previous.since,
            last=now,
        )
        self.metrics.certificate_renewals.labels(result="failed", reason=exc.code).inc()
        self._alert(
            "certificate_renewal_failed",
            f"client certificate renewal failed ({exc.code}): {exc}; the current certificate "
            "stays in use until it expires",
        )

    def _renewed(self, identity: StoredIdentity) -> None:
        self._state.renewal_failure = None
        self._state.identity = identity
        self.metrics.certificate_renewals.labels(result="ok", reason="renewed").inc()
        self.metrics.cert_expiry.set(identity.certificate.not_valid_after_utc.timestamp())

    async def _follow_identity(self, state_dir: Path, passphrase: bytes | None) -> None:
        """Pick up the certificate another worker renewed (control-plane calls already load the
        identity afresh each time; this keeps the expiry metric and the renewal state true)."""
        while True:
            await asyncio.sleep(self.options.identity_poll_interval)
            try:
                identity = await asyncio.to_thread(load_identity, state_dir, passphrase=passphrase)
            except GatewayError as exc:
                # Read between the renewer's writes, or damaged: the renewer reports it.
                log.warning(
                    "cannot read the identity: %s", exc, extra={"event": "identity_unreadable"}
                )
                continue
            current = self._state.identity
            serial = identity.certificate.serial_number
            if current is None or current.certificate.serial_number != serial:
                self._state.identity = identity
                self.metrics.cert_expiry.set(identity.certificate.not_valid_after_utc.timestamp())
                log.info(
                    "identity reloaded: certificate renewed by worker 1",
                    extra={"event": "identity_reloaded"},
                )

    async def _renewals(self, renewer: CertificateRenewer) -> None:
        try:
            await renewer.run()
        except GatewayError as exc:
            self._alert("certificate_renewal_stopped", str(exc))

    # --- reload ----------------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Validate and compile the file again and swap it in; keep the old one on any failure."""
        async with self._reload_lock:
            # Taken before the files are read: a change made while this reload runs is still
            # one for the watch.
            seen = self._watch.state()
            runtime = await self.prepare_reload()
            if runtime is None:
                self._watch.follow(None, seen)
                return False
            self.commit_reload(runtime)
            self._watch.follow(runtime.loaded, seen)
            return True

    async def prepare_reload(self, revision: str | None = None) -> Runtime | None:
        """Build the revision on disk completely, without serving it yet; ``None`` (recorded as a
        failed reload) if it is invalid or, with ``revision``, not that revision.

        A worker's supervisor calls this on every worker, then :meth:`commit_reload` on all of
        them only if all prepared the same revision, else :meth:`discard` (all move or none).
        """
        unsafe = permission_problems([Path(self.options.config_path)])
        if unsafe:
            for finding in unsafe:
                log.error("%s", finding, extra={"event": "reload_rejected"})
            # The first finding names the file and the chmod that fixes it, for /readyz and
            # `gateway status` too, not only for the log.
            self._reload_failed(f"the configuration file is not protected: {unsafe[0]}")
            return None
        try:
            loaded = self._load()
            startup_problems(loaded)  # what a restart would refuse, refused now
            identity = self._state.identity
            mismatch = (
                identity_mismatch(identity.gateway_id, loaded.config.gateway.id)
                if identity
                else None
            )
            if mismatch is not None:
                # The running listeners, signature checks and certificate are this identity's;
                # a restart would refuse the file.
                raise ConfigError([Problem(mismatch, code="identity_mismatch", path="gateway.id")])
            if revision is not None and loaded.revision != revision:
                # The file changed again since the supervisor checked it.
                self._reload_failed(
                    f"the file is revision {loaded.revision}, not {revision} as checked"
                )
                return None
            return await self._build_runtime(loaded)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("%s", problem.render(), extra={"event": "reload_rejected"})
            first = exc.problems[0].render() if exc.problems else ""
            count = len(exc.problems)
            more = f" (and {count - 1} more)" if count > 1 else ""
            self._reload_failed(f"the new configuration is invalid: {first}{more}")
        except GatewayError as exc:
            self._reload_failed(f"the new policy could not be built: {exc}")
        return None

    def commit_reload(self, runtime: Runtime) -> None:
        """Serve ``runtime`` (from :meth:`prepare_reload`) from the next request on."""
        old = self._runtime
        if old is not None:
            for path in restart_only_changes(old.loaded.config, runtime.loaded.config):
                log.warning(
                    "%s changed; it takes effect at the next restart (%s)",
                    path,
                    f"this process runs on {self._state.event_loop}"
                    if path == "event_loop"
                    else "this process keeps the value it started with",
                    extra={"event": "restart_needed", "setting": path},
                )
        if self._started is not None:
            self._state.restart_needed = restart_only_changes(self._started, runtime.loaded.config)
        self._runtime = runtime
        self._state.reload_error = None
        self._record_info()
        accepted = runtime.loaded.config.signatures.hmac_sha256
        if old is not None and old.loaded.config.signatures.hmac_sha256 != accepted:
            self._spawn(self._hmac_changed(accepted), "hmac-keys")
        self.metrics.reloads.labels(result="ok").inc()
        log.info(
            "configuration reloaded: revision %s", runtime.revision, extra={"event": "reloaded"}
        )
        if self._pipeline is not None:
            # Streams were decided when they opened: the ones this revision revokes end now.
            self._spawn(self._pipeline.revise(runtime), "revise-streams")
        if old is not None:
            self._spawn(self._retire(old), "retire-runtime")

    async def discard(self, runtime: Runtime, why: str) -> None:
        """Drop a prepared ``runtime`` that will not be served (another worker could not
        prepare the same revision); counted as a failed reload."""
        await runtime.close()
        self._reload_failed(why)

    def _reload_failed(self, why: str) -> None:
        self._state.reloads_failed += 1
        self._state.reload_error = {"error": why, "at": _iso(time.time())}
        self.metrics.reloads.labels(result="failed").inc()
        log.error(
            "reload failed, keeping revision %s: %s",
            self.runtime().revision,
            why,
            extra={"event": "reload_failed"},
        )

    async def _retire(self, old: Runtime) -> None:
        # Requests still running under the old revision finish with its pool, and streams
        # opened under it keep it until they end; then close it (or at stop, whichever comes
        # first).
        try:
            await asyncio.sleep(old.loaded.config.limits.request_timeout_seconds + 1)
            if self._pipeline is not None:
                await self._pipeline.unused(old)
        finally:
            await old.close()
            if self.options.settle_memory:
                # A reference cycle through the old revision would stay frozen for good.
                del old
                resettle()

    async def _watch_config(self) -> None:
        while True:
            await asyncio.sleep(self.options.reload_poll_interval)
            if self._watch.poll():
                await self.reload()
