"""``gateway explain METHOD TARGET PATH``: would this request pass, and why?

``gateway explain --ldap TARGET OPERATION DN [--attribute NAME]... [--scope base|one|sub]
[--filter FILTER] [--bind-dn DN]`` asks it of one LDAP operation on an ldap/ldaps target
(:mod:`gateway.commands.explain_ldap`).

``gateway explain --stream TARGET [PATH]`` asks the same of a stream: a WebSocket at PATH on an
http(s) target (RFC 6455 section 4.1: the opening handshake is a GET), or a raw stream to a tcp
target, which has no method and no path. Every dropped request header is named with the reason
it is dropped, in particular when the matching operation does not list it in ``headers``.

The answer comes from the code that enforces: the request goes through the chain of steps a
running gateway uses (:class:`gateway.pipeline.Chain`: canonicalise, limits, decide, select
headers) with the engine ``gateway.yaml`` selects. Printed: the canonical request, the decision,
the operation that grants it or the reasons it is refused, the names of the headers that would be
forwarded and dropped (never their values), and the revision. The request is taken as correctly
signed unless ``--unsigned`` is given.

Exit codes: 0 allowed; 3 denied (by the policy, or rejected before it); 1 configuration or
policy error; 2 usage error.

With the OPA engine, explain asks the configured OPA server but never loads it: a file being
edited must not replace what a running gateway pushed. If OPA does not hold this revision, the
answer is the deny a gateway would give (503 ``policy_unavailable``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from gateway import config as gwconfig
from gateway.commands._common import add_config_argument
from gateway.commands.explain_ldap import add_arguments as add_ldap_arguments
from gateway.commands.explain_ldap import explain_ldap
from gateway.config.semantics import NEVER_FORWARDED, NEVER_FORWARDED_PREFIXES
from gateway.errors import ConfigError
from gateway.forward.credentials import describe as describe_credential
from gateway.forward.headers import DEFAULT_FORWARDED, HANDSHAKE_ONLY
from gateway.pipeline import Chain, RequestFacts, Verdict
from gateway.policy.decision_log import mask_query
from gateway.policy.engine import PolicyEngine
from gateway.policy.loader import PolicySet, build_engine, checked_engine, load_policies

EXIT_ALLOWED = 0
EXIT_CONFIG = 1
EXIT_DENIED = 3

# What each policy reason means, for people. Codes are stable; the wording may improve.
REASON_TEXT: dict[str, str] = {
    "unknown_target": "no target of that name is declared",
    "path_not_allowed": "no operation of the target has a path pattern matching this path",
    "method_not_allowed": "operations match this path, but none of them allows this method",
    "websocket_not_allowed": "the matching operation does not allow WebSocket streams",
    "stream_only_target": "the target carries raw streams only, not HTTP requests",
    "ambiguous_operation": "more than one operation grants the request",
    "unsigned": "the request signature was not verified",
    "empty_segment": "the path has an empty segment",
    "invalid_extension": "an extension module's deny is not a set of strings",
    "policy_unavailable": "the policy engine could not decide (unreachable, timed out, failed)",
    "policy_undefined": "the policy returned no decision document",
    "saas_credential_refused": "the gateway injects this target's credential, so the request "
    "may not carry a credential header of its own",
}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``explain`` verb."""
    parser = subparsers.add_parser(
        "explain",
        help="show whether a request would be allowed, and why",
        usage="gateway explain [options] METHOD TARGET PATH\n"
        "       gateway explain [options] --stream TARGET [PATH]\n"
        "       gateway explain [options] --ldap TARGET OPERATION DN [--attribute NAME]... "
        "[--scope base|one|sub] [--filter FILTER] [--bind-dn DN]",
        description="Exit 0 if allowed, 3 if denied, 1 on a configuration or policy error.",
    )
    add_config_argument(parser)
    parser.add_argument(
        "words",
        nargs="+",
        metavar="METHOD TARGET PATH",
        help="the request: method, target (name or declared host:port) and /path?query as "
        "relayed; with --stream: TARGET, and PATH unless the target is tcp; with --ldap: "
        "TARGET OPERATION DN",
    )
    parser.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'Name: value'",
        help="request header (repeatable)",
    )
    parser.add_argument(
        "--stream",
        "--websocket",
        action="store_true",
        dest="stream",
        help="a stream (relay accept): a WebSocket at PATH, or the stream to a tcp or LDAP target",
    )
    parser.add_argument(
        "--unsigned", action="store_true", help="as if the signature did not verify"
    )
    parser.add_argument("--keyid", default="explain", help="signing key id to put in the input")
    parser.add_argument(
        "--body-size", type=int, default=0, metavar="BYTES", help="size of the request body"
    )
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text for people (default) or json for scripts",
    )
    add_ldap_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Explain one request."""
    headers: list[tuple[str, str]] = []
    for raw in args.header:
        name, sep, value = raw.partition(":")
        if not sep:
            # Not echoed: the argument may be a credential written without its colon.
            print(
                f"-H expects 'Name: value'; header {len(headers) + 1} has no ':'", file=sys.stderr
            )
            return 2
        headers.append((name.strip(), value.strip()))
    path = args.config or gwconfig.default_config_path()
    try:
        loaded = gwconfig.load(path, check_host=False)
        policies = load_policies(loaded)
        engine = _engine(loaded, policies)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem.render(), file=sys.stderr)
        return EXIT_CONFIG
    if args.ldap:
        return explain_ldap(args, loaded, engine)
    request = _request(args, loaded.config)
    if request is None:
        return 2
    method, selector, request_target = request
    facts = RequestFacts(
        method=method,
        selector=selector,
        request_target=request_target,
        headers=tuple(headers),
        websocket=args.stream,
        body_size=args.body_size,
        signed=not args.unsigned,
        keyid=args.keyid,
    )
    verdict = asyncio.run(_decide(Chain(loaded.config, engine), engine, facts))
    _report(args.format, facts, verdict, policies.revision, loaded.config)
    return EXIT_ALLOWED if verdict.allowed else EXIT_DENIED


def _request(
    args: argparse.Namespace, config: gwconfig.GatewayConfig
) -> tuple[str, str, str] | None:
    """``(method, selector, request target)`` from the words; None after a usage error."""
    words = list(args.words)
    if not args.stream:
        if len(words) != 3:
            print(
                "gateway explain: expected METHOD TARGET PATH (for a stream: --stream TARGET "
                "[PATH])",
                file=sys.stderr,
            )
            return None
        return words[0], words[1], words[2]
    if len(words) == 3:  # METHOD TARGET PATH --websocket, as written before --stream existed
        return words[0], words[1], words[2]
    if len(words) not in (1, 2):
        print("gateway explain: expected --stream TARGET [PATH]", file=sys.stderr)
        return None
    # A relay accept is a WebSocket opening handshake, a GET (RFC 6455 section 4.1); a tcp
    # target's stream has no path, and the relay addresses it as the target itself ("/").
    target = config.targets.get(words[0])
    if len(words) == 1 and (target is None or not target.stream_only):
        print("gateway explain: a stream to an http(s) target needs its PATH", file=sys.stderr)
        return None
    return "GET", words[0], words[1] if len(words) == 2 else "/"


def _drop_reasons(verdict: Verdict, facts: RequestFacts, tcp: bool) -> dict[str, str]:
    """Why each dropped request header stays behind (forward/headers.py decides; this says it)."""
    operation = verdict.operation
    allowed = DEFAULT_FORWARDED | {h.lower() for h in (operation.headers if operation else ())}
    connection = {
        token.strip().lower()
        for name, value in facts.headers
        if name.lower() == "connection"
        for token in value.split(",")
    }
    reasons: dict[str, str] = {}
    for name in verdict.dropped:
        if tcp:
            reasons[name] = "a raw stream carries no HTTP headers"
        elif name in NEVER_FORWARDED or name.startswith(NEVER_FORWARDED_PREFIXES):
            reasons[name] = "never forwarded (hop-by-hop, framing or routing header)"
        elif name in HANDSHAKE_ONLY:
            reasons[name] = "belongs to the relay's WebSocket handshake only"
        elif name in connection:
            reasons[name] = "named in Connection: for the next hop only"
        elif name not in allowed and operation is not None and operation.name != "no-operation":
            reasons[name] = (
                f"operation {operation.name!r} does not list it in headers (add it there to "
                "forward it)"
            )
        else:
            reasons[name] = "not a forwarded header"
    return reasons


def _engine(loaded: gwconfig.LoadedConfig, policies: PolicySet) -> PolicyEngine:
    if loaded.config.policy.engine != "opa":
        return build_engine(loaded, policies)
    from gateway.policy.opa import OpaEngine

    # The proof build_engine gives every engine: a policy run would refuse is refused here too.
    checked_engine(loaded, policies, mode="enforce", cache=None)
    settings = loaded.config.policy
    assert settings.opa_url is not None  # the configuration semantics require it
    return OpaEngine(
        policies,
        url=settings.opa_url,
        timeout=settings.decision_timeout_seconds,
        mode=settings.mode,
        cache=None,
        push=False,
        sync_timeout=max(1.0, settings.decision_timeout_seconds),
    )


async def _decide(chain: Chain, engine: PolicyEngine, facts: RequestFacts) -> Verdict:
    """The verdict of the chain of steps ``gateway run`` uses (gateway.pipeline.Chain)."""
    await engine.start()
    try:
        return await chain.decide(facts)
    finally:
        await engine.close()


def _report(
    fmt: str,
    facts: RequestFacts,
    verdict: Verdict,
    revision: str,
    config: gwconfig.GatewayConfig,
) -> None:
    decision, refusal = verdict.decision, verdict.refusal
    input = verdict.input
    if input is not None and input["query"] is not None:
        # Values of credential-like parameters are masked, as in the decision log.
        input = {**input, "query": mask_query(input["query"])}
    # A refusal before the policy was asked (canonical form, limits) never reaches the engine.
    rejected = None
    if refusal is not None and decision is None:
        rejected = {
            "code": refusal.code,
            "status": refusal.status,
            "stage": refusal.stage,
            "message": refusal.detail,
        }
    # Header names only: values may be credentials, and no command prints a credential.
    forwarded = [name for name, _ in verdict.headers]
    # The injected credential by name and references; its value is never fetched here.
    injected = None
    if verdict.credential is not None:
        credential = config.credentials[verdict.credential]
        injected = {
            "name": verdict.credential,
            "kind": credential.kind,
            "header": credential.header_name,
            "references": describe_credential(verdict.credential, credential),
        }
    name = verdict.canonical.target if verdict.canonical else facts.selector
    target = config.targets.get(name)
    tcp = facts.websocket and target is not None and target.stream_only
    drop_reasons = _drop_reasons(verdict, facts, tcp)
    if fmt == "json":
        print(
            json.dumps(
                {
                    "request": {
                        # A raw stream has neither: nothing is made up for it.
                        "method": None if tcp else facts.method,
                        "target": facts.selector,
                        "path": None if tcp else _masked(facts.request_target),
                        "websocket": facts.websocket and not tcp,
                        "stream": facts.websocket,
                    },
                    "rejected": rejected,
                    "canonical": input,
                    "decision": decision.as_dict() if decision else None,
                    "allowed": verdict.allowed,
                    "verdict": {
                        "result": verdict.result,
                        "status": refusal.status if refusal else None,
                        "reason": refusal.code if refusal else None,
                        "reasons": verdict.reasons,
                        "stage": verdict.stage,
                        "forwarded": verdict.forwarded,
                    },
                    "headers": {
                        "forwarded": forwarded,
                        "dropped": list(verdict.dropped),
                        "dropped_because": drop_reasons,
                    },
                    "credential": injected,
                    "revision": revision,
                    "engine": config.policy.engine,
                    "mode": config.policy.mode,
                },
                indent=2,
            )
        )
        return
    if tcp:
        kind = target.scheme if target is not None else "tcp"
        raw = "raw " if kind == "tcp" else ""
        print(f"request:   {raw}stream to {facts.selector} ({kind} target: no method, no path)")
    elif facts.websocket:
        print(f"request:   WebSocket stream to {facts.selector} {_masked(facts.request_target)}")
    else:
        print(f"request:   {facts.method} {facts.selector} {_masked(facts.request_target)}")
    if rejected is not None:
        where = "rejected before policy"
        print(f"canonical: {where}: {rejected['code']} - {rejected['message']}")
        if rejected["code"] == "stream_only_target":
            print(f"           a stream to it: gateway explain --stream {facts.selector}")
        print(f"decision:  DENY (HTTP {rejected['status']}, never reaches the policy)")
        print(f"revision:  {revision}")
        return
    if input is None or decision is None:
        return
    if tcp:
        print(f"canonical: raw stream -> target {input['target']}")
        print(f"           signed {_yes(input['signature']['verified'])}")
    else:
        query = f"?{input['query']}" if input["query"] is not None else ""
        segments = json.dumps(input["path_segments"])
        print(f"canonical: {input['method']} {input['path']}{query} -> target {input['target']}")
        print(
            f"           segments {segments}, trailing slash {_yes(input['trailing_slash'])}, "
            f"signed {_yes(input['signature']['verified'])}, "
            f"headers {', '.join(input['header_names']) or '(none)'}"
        )
    if verdict.allowed:
        if decision.operation:
            granted = f"operation {decision.operation!r} of target {decision.target!r}"
            print(f"decision:  ALLOW by {granted}")
        else:
            kind = target.scheme if target is not None else "tcp"
            print(f"decision:  ALLOW: {kind} target {decision.target!r} allows streams as a whole")
            if target is not None and target.ldap is not None:
                print(
                    f"           each LDAP operation: gateway explain --ldap {decision.target} ..."
                )
    else:
        status = refusal.status if refusal else decision.status
        forwarded_anyway = " (monitor mode: logged as would-deny, forwarded anyway)"
        print(f"decision:  DENY (HTTP {status}){forwarded_anyway if verdict.monitor else ''}")
        if decision.operation and not decision.allow:
            print(f"           operation {decision.operation!r} matched, but a veto applies")
        for reason in verdict.reasons:
            text = REASON_TEXT.get(reason, "denied by an extension module")
            print(f"reason:    {reason} - {text}")
    if not tcp and ((verdict.forwarded and not facts.websocket) or verdict.headers):
        print(f"forwards:  {', '.join(forwarded) or '(none)'}")
    for dropped in verdict.dropped:
        print(f"drops:     {dropped} - {drop_reasons[dropped]}")
    if injected is not None:
        print(f"injects:   {injected['header']} from credential {injected['references']}")
    print(f"revision:  {decision.revision}")
    print(f"engine:    {config.policy.engine}, {decision.latency * 1e6:.0f} us")


def _masked(request_target: str) -> str:
    path, sep, query = request_target.partition("?")
    return f"{path}{sep}{mask_query(query)}" if sep else path


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
