"""``gateway status``: what this gateway is and how it is doing, without changing anything.

Reports the registered identity (from the state directory, offline), the configuration revision,
and - when the agent is running - its live state from the local ``/readyz`` endpoint: listeners
online, last heartbeat, policy revision and mode. Exit 0 when registered and (if running) ready,
1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from typing import Any

from gateway import identity
from gateway.commands._common import (
    add_config_argument,
    add_format_argument,
    load_or_report,
    passphrase,
    print_json,
    state_dir,
)

_PROBE_TIMEOUT = 2.0


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


def run(args: argparse.Namespace) -> int:
    """Print the status report."""
    loaded = load_or_report(args)
    if loaded is None:
        return 1
    config = loaded.config
    report: dict[str, Any] = {
        "gateway_id": config.gateway.id,
        "config": {"file": str(loaded.file), "revision": loaded.revision},
        "policy": {"engine": config.policy.engine, "mode": config.policy.mode},
        "identity": identity.status(state_dir(loaded), passphrase=passphrase(loaded)),
        "agent": _live(config.observability.listen) if config.observability.enabled else {},
    }
    healthy = bool(report["identity"].get("ready")) and report["agent"].get("ready", True)
    if args.format == "json":
        print_json(report)
        return 0 if healthy else 1
    ident = report["identity"]
    cert = ident.get("certificate") or {}
    print(f"gateway     {config.gateway.id}")
    print(f"config      {loaded.file} ({loaded.revision})")
    print(f"policy      {config.policy.engine}, {config.policy.mode}")
    print(f"registered  {'yes' if ident.get('registered') else 'no'}")
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
    if agent.get("running"):
        print(f"agent       {'ready' if agent.get('ready') else 'NOT READY'}")
        for key in ("listeners_online", "last_heartbeat", "policy_revision", "mode"):
            if key in agent:
                print(f"  {key:15} {agent[key]}")
        for reason in agent.get("reasons", []):
            print(f"  not ready: {reason}")
        for condition in agent.get("degraded", []):
            print(f"  degraded: {condition}")
    elif config.observability.enabled:
        print(f"agent       not running (nothing answers on {config.observability.listen})")
    return 0 if healthy else 1
