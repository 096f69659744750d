"""Checks the JSON Schema cannot express, reported in the same located form as schema errors.

Each check here closes a way to grant more than the author meant: overlapping operations (which
one did the reviewer approve?), address ranges that reach the host itself or a cloud metadata
service, two targets that answer to the same host:port, headers that would let the SaaS rewrite
the request after the policy judged it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import urllib.parse
from collections.abc import Iterator

from gateway.config import capacity
from gateway.config.model import (
    CREDENTIAL_KINDS,
    LDAP_SCHEMES,
    Credential,
    GatewayConfig,
    Target,
)
from gateway.config.patterns import PathPattern, PatternError
from gateway.config.yamlsafe import JsonPath, Located
from gateway.errors import Problem
from gateway.outbound.proxy import NoProxyList, ProxyConfigError
from gateway.suggest import closest

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Ranges a target may reach only with `allow_special_addresses: true`. Sources: RFC 6890 special
# purpose registries, plus the cloud instance-metadata and platform endpoints an SSRF would aim at.
SPECIAL_RANGES: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "'this network' (RFC 1122)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local, including cloud metadata 169.254.169.254"),
    ("168.63.129.16/32", "the Azure platform endpoint (WireServer)"),
    ("100.100.100.200/32", "a cloud metadata service"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved and broadcast"),
    ("::/128", "the unspecified address"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped addresses (bypass IPv4 checks)"),
    ("fe80::/10", "link-local"),
    ("fd00:ec2::254/128", "a cloud metadata service"),
    ("ff00::/8", "multicast"),
)
_SPECIAL = tuple((ipaddress.ip_network(net), why) for net, why in SPECIAL_RANGES)

# Headers the SaaS may never have forwarded: hop-by-hop (RFC 9110 section 7.6.1), framing
# (RFC 9112 section 6), and routing or rewrite headers upstream proxies trust (catalogue C 48, 59).
NEVER_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "forwarded",
        "via",
        "x-real-ip",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    }
)
NEVER_FORWARDED_PREFIXES = ("x-forwarded-",)


def special_range(network: IPNetwork) -> str | None:
    """Why ``network`` touches a special range, or None if it does not."""
    for special, why in _SPECIAL:
        if network.version == special.version and network.overlaps(special):
            return f"{special} ({why})"
    return None


def check(config: GatewayConfig, doc: Located) -> list[Problem]:
    """Every semantic problem in a schema-valid configuration."""
    problems = list(_check_sections(config, doc))
    problems.extend(_check_credentials(config, doc))
    endpoints: dict[tuple[str, int], str] = {}
    for name, target in config.targets.items():
        problems.extend(_check_target(name, target, config, doc))
        key = (target.host, target.effective_port)
        if key in endpoints:
            problems.append(
                doc.problem(
                    ("targets", name, "host"),
                    f"{target.host}:{target.effective_port} is already target "
                    f"{endpoints[key]!r}; a request naming it would be ambiguous",
                    code="duplicate_target",
                    hint="merge the operations into one target",
                )
            )
        else:
            endpoints[key] = name
    return problems


def _check_sections(config: GatewayConfig, doc: Located) -> Iterator[Problem]:
    limits = config.limits
    if (
        "read_timeout_seconds" in limits.model_fields_set
        and limits.read_timeout_seconds > limits.request_timeout_seconds
    ):
        yield doc.problem(
            ("limits", "read_timeout_seconds"),
            f"{limits.read_timeout_seconds} exceeds limits.request_timeout_seconds "
            f"{limits.request_timeout_seconds}",
            code="conflicting_settings",
            hint="a read timeout is at most the request timeout",
        )
    for key in ("endpoint", "rendezvous_endpoint"):
        endpoint = getattr(config.relay, key)
        if endpoint and endpoint.startswith("ws://"):
            host = endpoint[len("ws://") :].rstrip("/").rsplit(":", 1)[0].strip("[]")
            if host != "localhost" and not _is_loopback(host):
                yield doc.problem(
                    ("relay", key),
                    f"an unencrypted ws:// relay {key.replace('_', ' ')} is accepted only on "
                    "loopback",
                    code="insecure_endpoint",
                    hint="use wss:// for any relay that is not on this machine",
                )
    if config.relay.rendezvous_endpoint and not config.relay.endpoint:
        yield doc.problem(
            ("relay", "rendezvous_endpoint"),
            "rendezvous_endpoint is for a local relay and needs relay.endpoint",
            code="conflicting_settings",
            hint="set relay.endpoint to the local relay, or remove rendezvous_endpoint",
        )
    yield from _check_ports(config, doc)
    yield from _check_replay_store(config, doc)
    yield from capacity.check(config, doc)
    policy = config.policy
    if policy.engine == "opa" and policy.opa_url is None:
        yield doc.problem(
            ("policy",),
            "engine 'opa' needs 'opa_url'",
            code="missing_key",
            hint="for example opa_url: http://127.0.0.1:8181",
        )
    if policy.engine == "embedded" and policy.opa_url is not None:
        yield doc.problem(
            ("policy", "opa_url"),
            "'opa_url' is set but engine is 'embedded', so it would be ignored",
            code="unused_setting",
            hint="set engine: opa, or remove opa_url",
        )
    proxy = config.proxy
    if proxy is not None and (proxy.username is None) != (proxy.password is None):
        missing = "password" if proxy.password is None else "username"
        yield doc.problem(
            ("proxy",),
            f"proxy authentication needs both username and password; {missing} is missing",
            code="missing_key",
        )
    if proxy is not None:
        for index, entry in enumerate(proxy.no_proxy):
            if not _valid_no_proxy(entry):
                yield doc.problem(
                    ("proxy", "no_proxy", index),
                    f"{entry!r} is not a host, a domain suffix ('.corp.local') or a CIDR",
                    code="invalid_value",
                )


def _addresses(config: GatewayConfig) -> Iterator[tuple[JsonPath, str]]:
    """Every URL of the file but token endpoints (checked with their credential), with its
    path."""
    yield ("empowerid", "url"), config.empowerid.url
    for key in ("endpoint", "rendezvous_endpoint"):
        endpoint = getattr(config.relay, key)
        if endpoint:
            yield ("relay", key), endpoint
    if config.proxy is not None:
        yield ("proxy", "url"), config.proxy.url
    if config.policy.opa_url is not None:
        yield ("policy", "opa_url"), config.policy.opa_url


def _check_ports(config: GatewayConfig, doc: Located) -> Iterator[Problem]:
    """A port outside 1-65535 in a URL, or outside 0-65535 in ``observability.listen``.

    The schema's patterns take any digits there; a URL's port out of range used to end
    ``register`` and ``check`` in a traceback, and a health port of 99999 was bound as 34463
    (the socket layer keeps 16 bits) while ``status`` looked at the written one."""
    hint = "a TCP port is a number from 1 to 65535"
    for path, url in _addresses(config):
        try:
            port = urllib.parse.urlsplit(url).port
        except ValueError:
            # The authority as the schema's patterns take it: up to the first '/' after '://'.
            authority = url.partition("://")[2].partition("/")[0]
            if authority.count("[") != authority.count("]"):
                yield doc.problem(
                    path,
                    f"the brackets around the IPv6 address in {url!r} do not match",
                    code="invalid_url",
                    hint="write an IPv6 address as [2001:db8::1]",
                )
                continue
            host_end = authority.rfind("]") + 1 if "[" in authority else 0
            written = authority[host_end:].partition(":")[2]
            what = f"port {written}" if written.isdigit() else repr(written)
            why = "is out of range" if written.isdigit() else "is not a port"
            yield doc.problem(path, f"{what} in {url!r} {why}", code="invalid_port", hint=hint)
            continue
        if port == 0:
            yield doc.problem(path, f"port 0 in {url!r} cannot be dialled", code="invalid_port")
    listen = config.observability.listen
    written = listen.rpartition(":")[2]
    # Port 0 is allowed here: the kernel picks a free port (tests read it from the agent).
    if not 0 <= int(written) <= 65535:
        yield doc.problem(
            ("observability", "listen"),
            f"port {written} in {listen!r} is out of range",
            code="invalid_port",
            hint="a TCP port is a number up to 65535",
        )


def _check_replay_store(config: GatewayConfig, doc: Located) -> Iterator[Problem]:
    store = config.signatures.replay_store
    at = ("signatures", "replay_store")
    if store.kind == "redis" and store.redis is None:
        yield doc.problem(
            at,
            "kind 'redis' needs a 'redis' section",
            code="missing_key",
            hint="for example redis: {host: redis.corp.local, password: {env: REDIS_PASSWORD}}",
        )
    if store.kind != "redis" and store.redis is not None:
        yield doc.problem(
            (*at, "redis"),
            f"a 'redis' section is set but kind is {store.kind!r}, so it would be ignored",
            code="unused_setting",
        )
    if store.kind != "sqlite" and store.sqlite_path is not None:
        yield doc.problem(
            (*at, "sqlite_path"),
            f"'sqlite_path' is set but kind is {store.kind!r}, so it would be ignored",
            code="unused_setting",
        )
    redis = store.redis
    if redis is not None and not redis.tls and not _is_loopback(redis.host):
        # The password and every nonce would cross the network in clear text.
        yield doc.problem(
            (*at, "redis", "tls"),
            "an unencrypted Redis connection is accepted only on loopback",
            code="insecure_endpoint",
            hint="enable TLS on the server (tls-port) and set tls: true",
        )


def _valid_no_proxy(entry: str) -> bool:
    # The proxy module is the authority on what a no-proxy entry means; ask it.
    try:
        NoProxyList((entry,))
    except ProxyConfigError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_target(
    name: str, target: Target, config: GatewayConfig, doc: Located
) -> Iterator[Problem]:
    base = ("targets", name)
    if target.scheme in LDAP_SCHEMES or target.ldap is not None:
        # Imported here: its DN parser (and pyasn1) is needed only for LDAP settings, and a
        # running gateway without any should not hold it (issue 13, memory).
        from gateway.config.ldap_semantics import check_ldap_target

        yield from check_ldap_target(base, target, doc)
    if target.scheme in LDAP_SCHEMES:
        yield from _check_addresses(base, target, doc)
        yield from _check_limits(base, target, config, doc)
        yield from _check_tls(base, target, doc)
        return
    if target.scheme == "tcp":
        if target.port is None:
            yield doc.problem(base, "a tcp target needs a 'port'", code="missing_key")
        if target.operations:
            yield doc.problem(
                (*base, "operations"),
                "operations apply to http and https targets; a tcp target carries raw streams",
                code="unused_setting",
                hint="remove 'operations', or change the scheme",
            )
    elif not target.operations:
        yield doc.problem(
            base,
            "an http(s) target needs at least one operation; without one it grants nothing",
            code="missing_key",
            hint="add operations: [{name: ..., methods: [GET], paths: [/...]}]",
        )
    yield from _check_tls(base, target, doc)
    yield from _check_addresses(base, target, doc)
    yield from _check_target_credentials(base, target, config, doc)
    yield from _check_limits(base, target, config, doc)
    yield from _check_read_timeout(base, target, config, doc)
    yield from _check_operations(base, target, doc)


def _check_tls(base: JsonPath, target: Target, doc: Located) -> Iterator[Problem]:
    if target.tls is None:
        return
    if target.scheme not in ("https", *LDAP_SCHEMES):
        yield doc.problem(
            (*base, "tls"),
            "'tls' applies to https, ldaps and ldap targets only",
            code="unused_setting",
        )
    elif target.tls.insecure_skip_verify and target.tls.ca_file is not None:
        yield doc.problem(
            (*base, "tls"),
            "'insecure_skip_verify' and 'ca_file' contradict each other",
            code="conflicting_settings",
            hint="keep ca_file and drop insecure_skip_verify",
        )


def _check_addresses(base: JsonPath, target: Target, doc: Located) -> Iterator[Problem]:
    networks: list[IPNetwork] = []
    for index, text in enumerate(target.allowed_cidrs):
        path = (*base, "allowed_cidrs", index)
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            hint = ""
            with contextlib.suppress(ValueError):
                hint = f"did you mean {ipaddress.ip_network(text, strict=False)}?"
            yield doc.problem(
                path, f"{text!r} is not a valid network: {exc}", code="invalid_cidr", hint=hint
            )
            continue
        networks.append(network)
        why = special_range(network)
        if why and not target.allow_special_addresses:
            yield doc.problem(
                path,
                f"{network} includes {why}",
                code="special_range",
                hint="narrow the range, or set allow_special_addresses: true if this is intended",
            )
    try:
        literal = ipaddress.ip_address(target.host)
    except ValueError:
        if ":" in target.host:
            yield doc.problem(
                (*base, "host"), f"{target.host!r} is not a valid IPv6 address", code="invalid_host"
            )
        elif not target.allowed_cidrs:
            yield doc.problem(
                (*base, "allowed_cidrs"),
                f"list the networks {target.host} may resolve to",
                code="missing_key",
                hint="for example allowed_cidrs: [10.1.2.0/24]; other addresses are refused",
            )
        return
    single = ipaddress.ip_network(literal)
    why = special_range(single)
    if why and not target.allow_special_addresses:
        yield doc.problem(
            (*base, "host"),
            f"{literal} is in {why}",
            code="special_range",
            hint="set allow_special_addresses: true if this target really lives there",
        )
    if networks and not any(literal in net for net in networks):
        yield doc.problem(
            (*base, "host"),
            f"{literal} is outside allowed_cidrs",
            code="host_outside_cidrs",
        )


def _check_limits(
    base: JsonPath, target: Target, config: GatewayConfig, doc: Located
) -> Iterator[Problem]:
    limits = config.limits
    for field in type(target.limits).model_fields:
        value = getattr(target.limits, field)
        ceiling = getattr(limits, field)
        if value is not None and value > ceiling:
            yield doc.problem(
                (*base, "limits", field),
                f"{value} exceeds the global limit {ceiling} (limits.{field})",
                code="exceeds_global_limit",
            )


def _check_read_timeout(
    base: JsonPath, target: Target, config: GatewayConfig, doc: Located
) -> Iterator[Problem]:
    # A read timeout longer than the request timeout could never fire. A value written in the
    # file must make sense as written; the default (15 s) is capped at a shorter request timeout.
    read = target.limits.read_timeout_seconds
    total = target.limits.request_timeout_seconds or config.limits.request_timeout_seconds
    if read is not None and read > total:
        yield doc.problem(
            (*base, "limits", "read_timeout_seconds"),
            f"{read} exceeds the request timeout {total} that applies to this target",
            code="conflicting_settings",
            hint="a read timeout is at most the request timeout",
        )


def _check_operations(base: JsonPath, target: Target, doc: Located) -> Iterator[Problem]:
    names: dict[str, int] = {}
    parsed: list[list[PathPattern | None]] = []
    for index, operation in enumerate(target.operations):
        op_path = (*base, "operations", index)
        if operation.name in names:
            yield doc.problem(
                (*op_path, "name"),
                f"operation name {operation.name!r} is already used by "
                f"operations[{names[operation.name]}]",
                code="duplicate_operation",
            )
        names.setdefault(operation.name, index)
        patterns: list[PathPattern | None] = []
        for text in operation.paths:
            # Malformed patterns were reported by the schema check (format gateway-path-pattern).
            try:
                patterns.append(PathPattern.parse(text))
            except PatternError:
                patterns.append(None)
        parsed.append(patterns)
        for header_index, header in enumerate(operation.headers):
            lowered = header.lower()
            if lowered in NEVER_FORWARDED or lowered.startswith(NEVER_FORWARDED_PREFIXES):
                yield doc.problem(
                    (*op_path, "headers", header_index),
                    f"{header!r} is never forwarded: the gateway sets or strips it itself",
                    code="forbidden_header",
                )
        if operation.websocket and "GET" not in operation.methods:
            yield doc.problem(
                (*op_path, "websocket"),
                "a WebSocket stream opens with GET; add GET to methods",
                code="conflicting_settings",
            )
        # Within one operation: a pattern another one already covers is dead weight for reviewers.
        for i, first in enumerate(patterns):
            for j in range(i + 1, len(patterns)):
                second = patterns[j]
                if first is None or second is None:
                    continue
                if first.covers(second) or second.covers(first):
                    wide, narrow = (first, second) if first.covers(second) else (second, first)
                    yield doc.problem(
                        (*op_path, "paths", j),
                        f"{str(narrow)!r} is already covered by {str(wide)!r}",
                        code="redundant_path",
                        hint="remove the narrower pattern",
                    )
    yield from _check_overlaps(base, target, parsed, doc)


def _check_overlaps(
    base: JsonPath,
    target: Target,
    parsed: list[list[PathPattern | None]],
    doc: Located,
) -> Iterator[Problem]:
    """Two operations that both match some request make the decision's 'matched operation'
    ambiguous, and hide one grant inside another; report each pair once."""
    operations = target.operations
    for i, first in enumerate(operations):
        for j in range(i + 1, len(operations)):
            second = operations[j]
            shared = [m for m in first.methods if m in second.methods]
            if not shared:
                continue
            clash = _first_overlap(parsed[i], parsed[j])
            if clash is None:
                continue
            a, b = clash
            if a.covers(b):
                message = (
                    f"operation {second.name!r} is shadowed by {first.name!r}: "
                    f"{str(a)!r} already allows {', '.join(shared)} on {str(b)!r}"
                )
                code = "shadowed_operation"
            elif b.covers(a):
                message = (
                    f"operation {second.name!r} shadows {first.name!r}: {str(b)!r} already "
                    f"allows {', '.join(shared)} on {str(a)!r}"
                )
                code = "shadowed_operation"
            else:
                message = (
                    f"operations {first.name!r} and {second.name!r} overlap: {str(a)!r} and "
                    f"{str(b)!r} both match some paths for {', '.join(shared)}"
                )
                code = "overlapping_operations"
            yield doc.problem(
                (*base, "operations", j),
                message,
                code=code,
                hint="each request should match exactly one operation; narrow or merge them",
            )


def _first_overlap(
    first: list[PathPattern | None], second: list[PathPattern | None]
) -> tuple[PathPattern, PathPattern] | None:
    for a in first:
        for b in second:
            if a is not None and b is not None and a.overlaps(b):
                return a, b
    return None


# What a SaaS could use to authenticate as someone: refused when the gateway injects a credential.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


def _check_credentials(config: GatewayConfig, doc: Located) -> Iterator[Problem]:
    for name, credential in config.credentials.items():
        base = ("credentials", name)
        kinds = [kind for kind in CREDENTIAL_KINDS if getattr(credential, kind) is not None]
        if len(kinds) != 1:
            yield doc.problem(
                base,
                "a credential needs exactly one of: " + ", ".join(CREDENTIAL_KINDS),
                code="invalid_credential",
                hint="one credential per name; declare another name for another kind",
            )
            continue
        if credential.header is not None:
            lowered = credential.header.name.lower()
            if lowered in NEVER_FORWARDED or lowered.startswith(NEVER_FORWARDED_PREFIXES):
                yield doc.problem(
                    (*base, "header", "name"),
                    f"{credential.header.name!r} is set or stripped by the gateway itself",
                    code="forbidden_header",
                )
        oauth = credential.oauth2_client_credentials
        if oauth is None:
            continue
        oauth_base = (*base, "oauth2_client_credentials")
        try:
            endpoint = oauth.endpoint()
        except ValueError:
            yield doc.problem(
                (*oauth_base, "token_url"),
                f"{oauth.token_url!r} does not name a usable host and port",
                code="invalid_url",
                hint="https://HOST[:PORT]/PATH with a port from 1 to 65535",
            )
            continue
        if endpoint.scheme == "http" and not _is_loopback(endpoint.host):
            yield doc.problem(
                (*oauth_base, "token_url"),
                "an http:// token endpoint would send the client secret in clear; accepted on "
                "loopback only",
                code="insecure_endpoint",
                hint="use https://",
            )
        if oauth.tls is not None and endpoint.scheme != "https":
            yield doc.problem(
                (*oauth_base, "tls"), "'tls' applies to https only", code="unused_setting"
            )
        for problem in _check_addresses(oauth_base, endpoint, doc):
            # The endpoint's host lives in token_url: point there rather than at a missing key.
            if problem.path.endswith(".host"):
                located = doc.problem(
                    (*oauth_base, "token_url"),
                    problem.message,
                    code=problem.code,
                    hint=problem.hint,
                )
                yield located
            else:
                yield problem


def _check_target_credentials(
    base: JsonPath, target: Target, config: GatewayConfig, doc: Located
) -> Iterator[Problem]:
    if target.credential is not None and target.scheme == "tcp":
        yield doc.problem(
            (*base, "credential"),
            "a tcp target carries raw streams; the gateway injects credentials into http(s) only",
            code="unused_setting",
        )
        return
    default = _credential(target.credential, (*base, "credential"), config, doc)
    problems: list[Problem] = list(default[1])
    for index, operation in enumerate(target.operations):
        op_path = (*base, "operations", index)
        if operation.credential is None:
            credential = default[0]
        else:
            credential, found = _credential(
                operation.credential, (*op_path, "credential"), config, doc
            )
            problems.extend(found)
        if credential is None:
            continue
        for problem in _check_token_time(
            op_path, operation.credential, credential, target, config, doc
        ):
            # A target's credential is shared by its operations: report it once.
            if all(p.path != problem.path for p in problems):
                problems.append(problem)
        refused = CREDENTIAL_HEADERS | {credential.header_name}
        for header_index, header in enumerate(operation.headers):
            if header.lower() in refused:
                problems.append(
                    doc.problem(
                        (*op_path, "headers", header_index),
                        f"{header!r} would let the SaaS send its own credential where the "
                        "gateway injects one",
                        code="conflicting_settings",
                        hint="remove it: requests carrying it are refused with 400",
                    )
                )
    yield from problems


# The relay gives up on a request after 60 s; limits.request_timeout_seconds stays under it (55).
MAX_REQUEST_SECONDS = 55.0


def _check_token_time(
    op_path: JsonPath,
    own: str | None,
    credential: Credential,
    target: Target,
    config: GatewayConfig,
    doc: Located,
) -> Iterator[Problem]:
    """A token fetched for a request is waited for before the request is sent: both together must
    fit in the time the relay waits for an answer."""
    oauth = credential.oauth2_client_credentials
    if oauth is None:
        return
    total = target.limits.request_timeout_seconds or config.limits.request_timeout_seconds
    if oauth.timeout_seconds + total > MAX_REQUEST_SECONDS:
        path = (*op_path, "credential") if own is not None else (*op_path[:2], "credential")
        yield doc.problem(
            path,
            f"the token request ({oauth.timeout_seconds:g} s) and the request itself "
            f"({total:g} s) could take longer than the {MAX_REQUEST_SECONDS:g} s a relayed "
            "request may take",
            code="conflicting_settings",
            hint="lower timeout_seconds of the credential or the target's request timeout",
        )


def _credential(
    name: str | None, path: JsonPath, config: GatewayConfig, doc: Located
) -> tuple[Credential | None, list[Problem]]:
    if name is None:
        return None, []
    found = config.credentials.get(name)
    if found is not None:
        return found, []
    close = closest(name, config.credentials)
    hint = f"did you mean {close!r}?" if close is not None else "declare it under 'credentials'"
    return None, [
        doc.problem(path, f"no credential named {name!r}", code="unknown_credential", hint=hint)
    ]
