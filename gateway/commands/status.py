"""``gateway status``: what this gateway is and how it is doing, without changing anything.

Reports the registered identity (from the state directory, offline), the revision of the file on
disk, and - when the agent is running - its live state from the local ``/readyz`` endpoint (with
port 0 in ``observability.listen``, at the address the agent published in the state directory,
``operator-endpoint``): the revision it runs (which differs from the file's until a reload),
listeners online, last heartbeat (and why heartbeats fail, while they do), the decision-log head
EmpowerID last accepted (the ``--expect-head`` of ``gateway audit verify``), policy revision,
mode and, after a rejected reload, the reload error. With several workers each has its own
heartbeat and decision-log chain, so these are shown per worker. When the file on disk is invalid
(a rejected reload) the live state is still shown, from the ``observability`` section as far as
it can be read, so an operator sees what runs and why the change did not take. The policy files
on disk are read too: their revision is compared with the one the agent runs (a rollout may
change only them), and files that do not load are reported. Exit 0 when the file and its policy
files are valid, the gateway registered and (if running) ready; 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gateway import identity
from gateway.commands._common import (
    add_config_argument,
    add_format_argument,
    config_path,
    load_or_report,
    passphrase,
    print_json,
    redacted,
    state_dir,
)
from gateway.config import yamlsafe
from gateway.config.model import LISTEN_PATTERN, GatewaySection, ObservabilitySection
from gateway.errors import ConfigError
from gateway.identity.session import identity_mismatch
from gateway.observability.health import published_endpoint
from gateway.policy.loader import load_policies

_PROBE_TIMEOUT = 2.0
# The keys of the agent's /readyz answer worth a line of their own, in this order.
_LIVE_KEYS = (
    "revision",
    "policy_revision",
    "mode",
    "event_loop",
    "listeners_online",
    "last_heartbeat",
    "heartbeat_error",
    "reload_failures",
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``status`` verb."""
    parser = subparsers.add_parser("status", help="show identity, certificate and live state")
    add_config_argument(parser)
    add_format_argument(parser)
    parser.set_defaults(handler=run)


def _live(listen: str) -> dict[str, Any]:
    # Loopback operator endpoint of the running agent; absent when it is not running.
    url = f"http://{listen}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=_PROBE_TIMEOUT) as response:
            body = response.read(65536)
    except urllib.error.HTTPError as exc:  # 503: running but not ready, body says why
        body = exc.read(65536)
    except (OSError, ValueError):
        return {"running": False}
    try:
        return {"running": True, **json.loads(body)}
    except ValueError:
        return {"running": True, "ready": False, "reasons": ["unreadable /readyz answer"]}


def _published_if_port_0(listen: str, state: Path) -> str:
    """``listen``, or with port 0 (the kernel picked one) the address the running agent
    published in its state directory; without that file, ``listen`` itself, where nothing
    answers."""
    if listen.rpartition(":")[2] == "0":
        return published_endpoint(state) or listen
    return listen


def _listen_of_invalid(path: str) -> str | None:
    """``observability.listen`` read from a file that does not validate (None: disabled), or
    with port 0 the address the agent published in ``gateway.state_dir`` as far as it can be
    read.

    Read with the same strict YAML reader; anything unreadable falls back to the default, where
    an agent started from an earlier valid file most likely listens.
    """
    default_listen = ObservabilitySection().listen
    default_state = GatewaySection.model_fields["state_dir"].default
    try:
        with open(path, "rb") as handle:
            raw = handle.read(yamlsafe.MAX_FILE_BYTES + 1)
    except OSError:
        return default_listen
    text, _ = yamlsafe.decode(raw, path)
    doc, _ = yamlsafe.parse(text, path) if text is not None else (None, [])
    data = doc.data if doc and isinstance(doc.data, dict) else {}
    section = data.get("observability")
    if not isinstance(section, dict):
        return default_listen
    if section.get("enabled") is False:
        return None
    listen = section.get("listen")
    if not isinstance(listen, str) or not re.fullmatch(LISTEN_PATTERN, listen):
        return default_listen
    gateway = data.get("gateway")
    state = gateway.get("state_dir") if isinstance(gateway, dict) else None
    state_path = Path(state if isinstance(state, str) and state else default_state).expanduser()
    return _published_if_port_0(listen, Path(path).parent / state_path)


def _invalid(args: argparse.Namespace) -> int:
    """The report when the file on disk does not validate: what still runs, if anything."""
    path = config_path(args)
    listen = _listen_of_invalid(path)
    agent = _live(listen) if listen else {}
    if args.format == "json":
        print_json({"config": {"file": path, "valid": False}, "agent": agent})
        return 1
    print(f"config      {path}: NOT VALID (run `gateway validate`)")
    _print_agent(agent, listen)
    return 1


def _print_agent(agent: dict[str, Any], listen: str | None) -> None:
    if agent.get("running"):
        print(f"agent       {'ready' if agent.get('ready') else 'NOT READY'}")
        for key in _LIVE_KEYS:
            if key in agent:
                print(f"  {key:15} {agent[key]}")
        head = _head(agent.get("audit_head"))
        if head:
            print(f"  {'audit_head':15} {head}")
        workers = agent.get("workers")
        if isinstance(workers, list):
            # A supervisor's /readyz (workers > 1): one line per worker process.
            ready = sum(1 for w in workers if isinstance(w, dict) and w.get("ready"))
            print(f"  {'workers':15} {ready} of {len(workers)} ready")
            for worker in workers:
                if isinstance(worker, dict):
                    print(
                        f"    worker {worker.get('worker')}: pid {worker.get('pid')}, "
                        f"{'ready' if worker.get('ready') else worker.get('state')}, "
                        f"{worker.get('listeners_online')} listeners, "
                        f"{worker.get('restarts')} restarts"
                    )
                    # Each worker reports to EmpowerID on its own, with its own chain's head.
                    if "last_heartbeat" in worker:
                        print(f"      last heartbeat {worker['last_heartbeat']}")
                    if "heartbeat_error" in worker:
                        print(f"      heartbeat error {worker['heartbeat_error']}")
                    head = _head(worker.get("audit_head"))
                    if head:
                        print(f"      audit head {head}")
        reload_error = agent.get("reload_error")
        if isinstance(reload_error, dict):
            print(
                f"  reload failed   {reload_error.get('at')}: {reload_error.get('error')}"
                " (the revision above still serves)"
            )
        for reason in agent.get("reasons", []):
            print(f"  not ready: {reason}")
        for condition in agent.get("degraded", []):
            print(f"  degraded: {condition}")
    elif listen:
        print(f"agent       not running (nothing answers on {listen})")


def _head(head: object) -> str | None:
    """``SEQ:HASH (LOG)``: the head EmpowerID holds, as ``gateway audit verify --expect-head``
    takes it, and the chain it is the head of."""
    if not isinstance(head, dict) or "seq" not in head or "hash" not in head:
        return None
    text = f"{head['seq']}:{head['hash']}"
    return f"{text} ({head['log']})" if head.get("log") else text


def run(args: argparse.Namespace) -> int:
    """Print the status report."""
    loaded = load_or_report(args)
    if loaded is None:
        return _invalid(args)
    config = loaded.config
    listen = (
        _published_if_port_0(config.observability.listen, state_dir(loaded))
        if config.observability.enabled
        else None
    )
    # The Rego files on disk are part of what a reload would serve: a rollout that changed only
    # them leaves the file's revision as it was, so they are compared on their own.
    policy: dict[str, Any] = {"engine": config.policy.engine, "mode": config.policy.mode}
    try:
        policy["revision"] = load_policies(loaded).revision
    except ConfigError as exc:
        policy["problems"] = [problem.render() for problem in exc.problems]
    report: dict[str, Any] = {
        "gateway_id": config.gateway.id,
        "config": {"file": str(loaded.file), "revision": loaded.revision},
        "policy": policy,
        "identity": identity.status(state_dir(loaded), passphrase=passphrase(loaded)),
        "agent": _live(listen) if listen else {},
    }
    registered_id = report["identity"].get("gateway_id")
    mismatch = (
        identity_mismatch(registered_id, config.gateway.id)
        if isinstance(registered_id, str)
        else None
    )
    if mismatch is not None:
        # What run refuses to start with (exit 4) and check fails its identity line for.
        report["identity"]["problems"].append({"code": "identity_mismatch", "message": mismatch})
        report["identity"]["ready"] = False
    report = redacted(report)
    healthy = (
        bool(report["identity"].get("ready"))
        and report["agent"].get("ready", True)
        and "problems" not in report["policy"]
    )
    if args.format == "json":
        print_json(report)
        return 0 if healthy else 1
    ident = report["identity"]
    cert = ident.get("certificate") or {}
    print(f"gateway     {config.gateway.id}")
    print(f"config      {loaded.file} (revision on disk {loaded.revision})")
    print(f"policy      {config.policy.engine}, {config.policy.mode}")
    policy_problems = report["policy"].get("problems") or []
    if policy_problems:
        more = f" (and {len(policy_problems) - 1} more)" if len(policy_problems) > 1 else ""
        print(
            f"            policy files on disk NOT VALID: {policy_problems[0]}{more} "
            "(run `gateway validate`; a reload would be rejected)"
        )
    unreadable = [p for p in ident.get("problems", []) if p.get("code") != "not_registered"]
    if ident.get("registered"):
        print("registered  yes")
    elif unreadable:
        # Unsafe permissions or a damaged file: the identity may well be there.
        print("registered  unknown: the state directory cannot be used (problem below)")
    else:
        print("registered  no")
    if cert:
        print(
            f"certificate {cert.get('state')}, expires {cert.get('not_after')},",
            f"renews {cert.get('renew_at')}",
        )
    keys = [k.get("keyid") for k in ident.get("signing_keys", [])]
    if keys:
        print(f"signing keys {', '.join(str(k) for k in keys)}")
    for problem in ident.get("problems", []):
        print(f"problem     {problem.get('code')}: {problem.get('message')}")
    agent = report["agent"]
    running = agent.get("revision")
    # The agent's revision is "<configuration>/<policy>"; the file's is the configuration's.
    if isinstance(running, str) and running.split("/")[0] != loaded.revision:
        print("            (the running agent has another revision: reload to apply the file)")
    elif (
        isinstance(agent.get("policy_revision"), str)
        and "revision" in report["policy"]
        and agent["policy_revision"] != report["policy"]["revision"]
    ):
        print(
            "            (the running agent has another policy revision: reload to apply the "
            "policy files)"
        )
    _print_agent(agent, listen)
    return 0 if healthy else 1
