"""The typed configuration model: the single source of truth for gateway.yaml.

``schemas/gateway.schema.json`` is generated from these classes (``gateway schema``) and a test
fails when the committed file drifts. The JSON Schema is what users' editors and CI see; rules it
cannot express (overlapping operations, special address ranges, cross-field requirements) live in
:mod:`gateway.config.semantics` and are reported in the same ``FILE:LINE:COL`` form.

Every model is strict (no type coercion: ``verify: "off"`` is an error, never ``False``), frozen and
forbids unknown keys.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from gateway.config.secrets import SecretRef
from gateway.eventloop import Choice as EventLoopChoice

SCHEMA_ID = "https://gateway.example/schemas/gateway.schema.json"

# Methods an operation may allow. TRACE and CONNECT are never relayed (RFC 9110 sections 9.3.6
# and 9.3.8: tunnels and request reflection have no place in an allow-list); raw streams use tcp
# targets instead.
Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
METHODS: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

# Lower-case LDH host names (RFC 1123 section 2.1) or dotted-quad IPv4 without leading zeros.
# No wildcards, trailing dots, userinfo or ports: a target names exactly one host.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
HOST_PATTERN = rf"^(?:{_LABEL}(?:\.{_LABEL})*|{_OCTET}(?:\.{_OCTET}){{3}}|[0-9a-f:.]*:[0-9a-f:.]*)$"
NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?$"
GATEWAY_ID_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
# RFC 9110 section 5.1 field-name token.
HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$"
CIDR_PATTERN = r"^[0-9a-fA-F:.]+/[0-9]{1,3}$"
LISTEN_PATTERN = r"^(?:[a-z0-9.-]+|\[[0-9a-f:]+\]):[0-9]{1,5}$"

Seconds = Annotated[float, Field(gt=0, le=3600)]
_UNIQUE: dict[str, Any] = {"uniqueItems": True}
# Worker processes per gateway: far more than the relay's listener limit allows anyway.
MAX_WORKERS = 24
# A JSON Schema "format" the gateway's validator checks with gateway.config.patterns, so pattern
# mistakes are reported together with every other schema problem (editors ignore unknown formats).
PATH_PATTERN_FORMAT = "gateway-path-pattern"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class GatewaySection(_Model):
    """Who this gateway is and where it keeps its state."""

    id: str = Field(
        pattern=GATEWAY_ID_PATTERN,
        description="Gateway id as registered with EmpowerID (lower-case letters, digits, '-').",
    )
    state_dir: str = Field(
        default="/var/lib/gateway",
        min_length=1,
        max_length=4096,
        description="Directory for key, certificates, pinned keys and replay cache (mode 0700).",
    )
    key_passphrase: SecretRef | None = Field(
        default=None,
        description="Encrypts the private key at rest, by reference: {env: NAME} or {file: PATH}.",
    )


class EmpowerIdSection(_Model):
    """The EmpowerID tenant the gateway registers with and reports to."""

    url: str = Field(
        pattern=r"^https://[^/?#@\s]+/?$",
        max_length=2048,
        description="Tenant base URL, https only, without path, query or credentials.",
    )
    ca_file: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "PEM file of the EmpowerID CA to pin for registration. Without it the system trust "
            "store verifies registration, and the CA EmpowerID returns is pinned afterwards."
        ),
    )


class RelaySection(_Model):
    """Azure Relay listener settings. Connection details come from EmpowerID at start."""

    connections: int = Field(
        default=2,
        ge=1,
        le=25,
        description=(
            "Listener control channels each worker process keeps open (Azure allows 25 per HC, "
            "shared by every gateway and worker on it)."
        ),
    )
    gateways: int = Field(
        default=1,
        ge=1,
        le=25,
        description=(
            "How many gateways (hosts) listen on this Hybrid Connection, this one included; "
            "validate and check hold gateways x workers x connections within the relay's "
            "listener limit."
        ),
    )
    endpoint: str | None = Field(
        default=None,
        pattern=r"^(?:wss|ws)://[^/?#@\s]+/?$",
        description=(
            "Override of the relay endpoint, for a local relay emulator. ws:// is accepted for "
            "loopback hosts only."
        ),
    )
    # Protocol notes section 7: Azure drops a connection that carries nothing for about 4
    # minutes; the pings keep idle control channels and streams up, so at most the .NET SDK's
    # own keepalive default (3.5 minutes).
    ping_interval_seconds: Annotated[float, Field(gt=0, le=210)] = Field(
        default=30,
        description=(
            "WebSocket ping interval for half-open detection; accepted streams are pinged as"
            " often, so the relay never drops them as idle (it does after about 4 minutes)."
        ),
    )
    rendezvous_domain: str | None = Field(
        default=None,
        pattern=r"^\.?[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})+$",
        description=(
            "DNS domain the relay's rendezvous hosts must be in (wss, port 443). Default: the "
            "parent domain of the namespace EmpowerID hands out, for example "
            "servicebus.usgovcloudapi.net for contoso.servicebus.usgovcloudapi.net."
        ),
    )
    rendezvous_endpoint: str | None = Field(
        default=None,
        pattern=r"^(?:wss|ws)://[^/?#@\s]+/?$",
        description=(
            "For a local relay emulator that hands out rendezvous addresses on another host "
            "than its endpoint: that exact scheme://host:port is trusted too. Needs endpoint; "
            "ws:// on loopback only."
        ),
    )


class ProxySection(_Model):
    """Outbound HTTP proxy for relay and EmpowerID traffic. On-prem targets never use it."""

    url: str = Field(
        pattern=r"^http://[^/?#@\s]+/?$",
        description="Proxy URL, http://host:port, without credentials.",
    )
    username: str | None = Field(
        default=None,
        pattern=r"^[^:\s]{1,256}$",
        description="Basic authentication user (RFC 7617: no ':').",
    )
    password: SecretRef | None = Field(
        default=None, description="Proxy password, by reference: {env: NAME} or {file: PATH}."
    )
    no_proxy: list[str] = Field(
        default_factory=list,
        max_length=256,
        description="Hosts, domain suffixes (.corp.local) or CIDRs reached without the proxy.",
    )
    ca_file: str | None = Field(
        default=None, min_length=1, description="Extra CA bundle for a TLS-inspecting proxy."
    )


class PolicySection(_Model):
    """How every relayed request is decided."""

    engine: Literal["embedded", "opa"] = Field(
        default="embedded", description="embedded: Rego evaluated in-process; opa: an OPA server."
    )
    opa_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^?#@\s]+$",
        description="OPA server base URL; required when engine is opa.",
    )
    directories: list[str] = Field(
        default_factory=lambda: ["policies"],
        max_length=32,
        description="Directories of your extension Rego modules, relative to this file. The "
        "built-in decision policy ships with the gateway; a missing or empty directory adds "
        "nothing.",
    )
    mode: Literal["enforce", "monitor"] = Field(
        default="enforce",
        description="monitor logs 'would deny' and forwards anyway; for trials only.",
    )
    decision_timeout_seconds: Annotated[float, Field(gt=0, le=10)] = Field(
        default=0.25, description="A decision not made in time is a deny."
    )


class TargetTls(_Model):
    """TLS the gateway originates: to an https target, or to a directory (ldaps, and ldap after
    StartTLS)."""

    ca_file: str | None = Field(
        default=None, min_length=1, description="CA bundle to verify the target with."
    )
    server_name: str | None = Field(
        default=None,
        pattern=HOST_PATTERN,
        description="Name to verify in the target's certificate, when it differs from host.",
    )
    insecure_skip_verify: bool = Field(
        default=False,
        description="Do not verify the target's certificate. Logged loudly; never the default.",
    )


class TargetLimits(_Model):
    """Per-target limits; unset values inherit the global limits and may not exceed them."""

    max_concurrent_requests: int | None = Field(default=None, ge=1, le=100_000)
    max_concurrent_streams: int | None = Field(default=None, ge=1, le=100_000)
    connect_timeout_seconds: Seconds | None = None
    request_timeout_seconds: Seconds | None = None
    read_timeout_seconds: Seconds | None = None
    max_request_body_bytes: int | None = Field(default=None, ge=0, le=1 << 30)
    max_response_body_bytes: int | None = Field(default=None, ge=0, le=1 << 30)


class Operation(_Model):
    """One thing the SaaS may do on a target: methods on segment-aware path patterns."""

    name: str = Field(pattern=NAME_PATTERN, description="Name shown in decisions and audit logs.")
    description: str | None = Field(default=None, max_length=1000)
    methods: list[Method] = Field(min_length=1, max_length=7, json_schema_extra=_UNIQUE)
    paths: list[Annotated[str, Field(json_schema_extra={"format": PATH_PATTERN_FORMAT})]] = Field(
        min_length=1,
        max_length=64,
        json_schema_extra=_UNIQUE,
        description="Path patterns: literals, '*' (one segment), final '**' (one or more).",
    )
    headers: list[Annotated[str, Field(pattern=HEADER_NAME_PATTERN)]] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra=_UNIQUE,
        description="Extra request headers passed through (e.g. Authorization).",
    )
    websocket: bool = Field(
        default=False, description="Also allow WebSocket streams opened on these paths."
    )
    credential: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="Credential (from 'credentials') injected for this operation instead of the "
        "target's.",
    )


# LDAP targets (docs/ldap.md). A dotted-decimal OID (RFC 4512 section 1.4, numericoid).
OID_PATTERN = r"^(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))+$"
# An attribute type as rules name it: a descriptor or an OID (RFC 4512 section 1.4), without
# options; "*" stands for any attribute where a list allows it.
LDAP_ATTRIBUTE_PATTERN = (
    r"^(?:[A-Za-z][A-Za-z0-9-]{0,127}|(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))+)$"
)
LDAP_ATTRIBUTE_OR_ANY_PATTERN = (
    r"^(?:\*|\+|[A-Za-z][A-Za-z0-9-]{0,127}|(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))+)$"
)
# A DN as written in gateway.yaml (RFC 4514); parsed and checked by the semantic checks. The
# empty string is the root: the whole directory.
LdapDn = Annotated[str, Field(max_length=8192)]
LdapKind = Literal["bind", "search", "compare", "add", "delete", "modify", "modify_dn", "extended"]
LdapScope = Literal["base", "one", "sub"]
LdapChangeType = Literal["add", "delete", "replace", "increment"]

# RFC 2696 Simple Paged Results: allowed on every LDAP target without being listed.
PAGED_RESULTS_OID = "1.2.840.113556.1.4.319"
# RFC 4511 section 4.14: the gateway owns TLS; the SaaS may never start it inside the stream.
STARTTLS_OID = "1.3.6.1.4.1.1466.20037"
# SASL mechanisms that never negotiate a security layer (RFC 4422 section 3.7), so the stream
# stays readable after the bind: EXTERNAL (RFC 4422 appendix A), PLAIN (RFC 4616) and
# ANONYMOUS (RFC 4505). GSSAPI, DIGEST-MD5, GSS-SPNEGO and the like may wrap the stream.
SASL_WITHOUT_LAYER: tuple[str, ...] = ("EXTERNAL", "PLAIN", "ANONYMOUS")
# Secrets and password material a directory may hold (ldap-notes: Active Directory and LAPS,
# RFC 4519 userPassword). Lower-case, as the policy compares attribute types.
DEFAULT_NEVER_RETURNED: tuple[str, ...] = (
    "ms-mcs-admpwd",
    "mslaps-password",
    "mslaps-encryptedpassword",
    "mslaps-encryptedpasswordhistory",
    "mslaps-encrypteddsrmpassword",
    "mslaps-encrypteddsrmpasswordhistory",
    "unicodepwd",
    "userpassword",
    "supplementalcredentials",
    "dbcspwd",
    "lmpwdhistory",
    "ntpwdhistory",
)


class LdapBindIdentity(_Model):
    """A directory account the gateway binds with for the SaaS (credential injection)."""

    dn: LdapDn = Field(
        min_length=1, description="The account's DN (or UPN for Active Directory) at the directory."
    )
    password: SecretRef = Field(
        description="Its password, by reference: {env: NAME}, {file: PATH} or {credential: NAME}."
    )


class LdapOperation(_Model):
    """One grant on an LDAP target: operation kinds on DN subtrees, with their attributes.

    Deny by default: an LDAP request is allowed only when a rule lists its kind, its entry lies
    in one of the rule's subtrees, and every attribute, change, scope, limit and identity it
    involves is within the rule.
    """

    name: str = Field(pattern=NAME_PATTERN, description="Name shown in decisions and audit logs.")
    description: str | None = Field(default=None, max_length=1000)
    kinds: list[LdapKind] = Field(
        min_length=1,
        max_length=8,
        json_schema_extra=_UNIQUE,
        description="LDAP operations this rule grants: bind, search, compare, add, delete, "
        "modify, modify_dn, extended.",
    )
    subtrees: list[LdapDn] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra=_UNIQUE,
        description="DNs of the subtrees the entry must lie in (the DN itself or below it, by "
        "RDN sequence). '' is the whole directory. Required for every kind but bind and "
        "extended.",
    )
    scopes: list[LdapScope] = Field(
        default_factory=lambda: list[LdapScope](("base", "one", "sub")),
        min_length=1,
        max_length=3,
        json_schema_extra=_UNIQUE,
        description="Search scopes allowed (RFC 4511 section 4.5.1.2). Default: all three.",
    )
    attributes: list[Annotated[str, Field(pattern=LDAP_ATTRIBUTE_OR_ANY_PATTERN)]] = Field(
        default_factory=list,
        max_length=256,
        json_schema_extra=_UNIQUE,
        description="Attribute types the request may name: requested by a search, compared, "
        "set by an add, or changed by a modify. '*' allows any attribute (for a search: also "
        "the '*' selector and an empty list); '+' allows the '+' selector (all operational "
        "attributes). Required for search, compare, add and modify.",
    )
    filter_attributes: list[Annotated[str, Field(pattern=LDAP_ATTRIBUTE_PATTERN)]] | None = Field(
        default=None,
        max_length=256,
        json_schema_extra=_UNIQUE,
        description="If set, a search filter may test only these attribute types. Filters on "
        "never_returned attributes are refused whatever this says.",
    )
    change_types: list[LdapChangeType] = Field(
        default_factory=lambda: list[LdapChangeType](("add", "delete", "replace")),
        min_length=1,
        max_length=4,
        json_schema_extra=_UNIQUE,
        description="Modify change types allowed (RFC 4511 section 4.6, RFC 4525 increment). "
        "Default: add, delete, replace.",
    )
    new_superiors: list[LdapDn] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra=_UNIQUE,
        description="For modify_dn: subtrees the entry may be moved or renamed into. Default: "
        "the rule's own subtrees.",
    )
    bind_as: list[Annotated[str, Field(min_length=1, max_length=8192)]] = Field(
        default_factory=list,
        max_length=256,
        json_schema_extra=_UNIQUE,
        description="For bind: the bind identities (names from ldap.bind_identities), DNs or "
        "user principal names that may bind. For other kinds: the rule applies only to a "
        "connection bound as one of them; empty means any bound identity.",
    )
    max_size_limit: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="A search must ask for at most this many entries (its sizeLimit; 0, no "
        "limit, is over any cap).",
    )
    max_time_limit: int | None = Field(
        default=None,
        ge=1,
        le=3600,
        description="A search must ask for at most this many seconds (its timeLimit; 0, no "
        "limit, is over any cap).",
    )


class LdapTarget(_Model):
    """How the gateway speaks LDAP to a directory, and what the SaaS may do there."""

    cleartext: bool = Field(
        default=False,
        description="scheme ldap only: talk to the directory without StartTLS. Directory "
        "passwords and data then cross the network in clear; logged loudly.",
    )
    case_insensitive_values: bool = Field(
        default=True,
        description="Compare DN values case-insensitively (Active Directory, and the naming "
        "attributes of most directories).",
    )
    allow_extended_dn: bool = Field(
        default=False,
        description="Accept Active Directory's <GUID=...>/<SID=...> DN forms. They name no "
        "place, so only a rule on the whole directory ('') can allow them, and never while "
        "never_reachable lists a subtree.",
    )
    bind_identities: dict[Annotated[str, Field(pattern=NAME_PATTERN)], LdapBindIdentity] = Field(
        default_factory=dict,
        max_length=64,
        description="Directory accounts by name: a simple bind by the SaaS with such a name is "
        "made by the gateway with the stored credential, which never leaves this network.",
    )
    allow_anonymous: bool = Field(
        default=False,
        description="Allow anonymous binds and requests on a connection that has not bound.",
    )
    sasl_mechanisms: list[Annotated[str, Field(pattern=r"^[A-Z0-9_-]{1,20}$")]] = Field(
        default_factory=list,
        max_length=8,
        json_schema_extra=_UNIQUE,
        description="SASL mechanisms the SaaS may bind with; only mechanisms without a security "
        "layer (EXTERNAL, PLAIN, ANONYMOUS), which would hide the stream from inspection.",
    )
    controls: list[Annotated[str, Field(pattern=OID_PATTERN)]] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra=_UNIQUE,
        description="Request control OIDs allowed besides paged results "
        "(1.2.840.113556.1.4.319, always allowed). Any other control is refused.",
    )
    extended_operations: list[Annotated[str, Field(pattern=OID_PATTERN)]] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra=_UNIQUE,
        description="Extended operation OIDs a rule of kind extended may allow. StartTLS can "
        "never be listed: the gateway owns TLS.",
    )
    never_reachable: list[LdapDn] = Field(
        default_factory=list,
        max_length=256,
        json_schema_extra=_UNIQUE,
        description="Subtrees no operation may touch, whatever a rule allows (deny wins); "
        "search results never include their entries.",
    )
    never_returned: list[Annotated[str, Field(pattern=LDAP_ATTRIBUTE_PATTERN)]] = Field(
        default_factory=lambda: list(DEFAULT_NEVER_RETURNED),
        max_length=256,
        json_schema_extra=_UNIQUE,
        description="Attribute types removed from every search result entry; searches that "
        "request or filter on them and compares of them are refused. Default: LAPS, "
        "unicodePwd, userPassword and other password material. Listing replaces the default.",
    )
    operations: list[LdapOperation] = Field(
        default_factory=list,
        max_length=256,
        description="The rules; an LDAP request no rule allows is refused.",
    )


class Target(_Model):
    """An on-prem system the SaaS may reach, and exactly what it may do there."""

    description: str | None = Field(default=None, max_length=1000)
    scheme: Literal["https", "http", "tcp", "ldaps", "ldap"]
    host: str = Field(pattern=HOST_PATTERN, max_length=253)
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Default 443 (https), 80 (http), 636 (ldaps) or 389 (ldap); tcp needs one.",
    )
    allowed_cidrs: list[Annotated[str, Field(pattern=CIDR_PATTERN)]] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra=_UNIQUE,
        description="Addresses the host may resolve to. Required unless host is an IP address.",
    )
    allow_special_addresses: bool = Field(
        default=False,
        description="Permit loopback, link-local, metadata and other special address ranges.",
    )
    tls: TargetTls | None = None
    limits: TargetLimits = Field(default_factory=TargetLimits)
    ldap: LdapTarget | None = Field(
        default=None, description="Required for ldap and ldaps targets: the LDAP rules."
    )
    credential: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="Credential (from 'credentials') the gateway adds to every request to this "
        "http(s) target; the SaaS may then send no credential of its own.",
    )
    operations: list[Operation] = Field(
        default_factory=list, max_length=256, description="Required for http(s) targets."
    )

    @property
    def stream_only(self) -> bool:
        """Whether the target carries streams rather than HTTP requests: raw tcp, and LDAP
        (whose operations inside the stream are decided one by one)."""
        return self.scheme in STREAM_SCHEMES

    @property
    def effective_port(self) -> int:
        """The port to dial: explicit, or the scheme's default."""
        if self.port is not None:
            return self.port
        return _DEFAULT_PORTS[self.scheme]


LDAP_SCHEMES = frozenset({"ldap", "ldaps"})
STREAM_SCHEMES = frozenset({"tcp", *LDAP_SCHEMES})
_DEFAULT_PORTS = {"https": 443, "http": 80, "ldaps": 636, "ldap": 389, "tcp": 80}


class HeaderCredential(_Model):
    """A static header, such as an API key: ``name: <secret>``."""

    name: str = Field(pattern=HEADER_NAME_PATTERN, description="Header name, e.g. X-API-Key.")
    value: SecretRef = Field(
        description="The header's value, by reference: {env: ...}, {file: ...} or "
        "{credential: ...}."
    )


class BearerCredential(_Model):
    """A static bearer token: ``Authorization: Bearer <secret>`` (RFC 6750 section 2.1)."""

    token: SecretRef = Field(description="The token, by reference.")


class BasicCredential(_Model):
    """HTTP Basic authentication (RFC 7617): a user name and a password by reference."""

    username: str = Field(
        pattern=r"^[^:\x00-\x1f\x7f]{1,256}$",
        description="User name (RFC 7617 section 2: no ':' and no control characters).",
    )
    password: SecretRef = Field(description="The password, by reference.")


# RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
SCOPE_PATTERN = r"^[\x21\x23-\x5b\x5d-\x7e]{1,256}$"
# RFC 6749 section 2.3.1 / appendix A.1: client_id is VSCHAR (printable ASCII).
CLIENT_ID_PATTERN = r"^[\x20-\x7e]{1,256}$"


class OAuth2ClientCredentials(_Model):
    """OAuth 2.0 client credentials grant (RFC 6749 section 4.4) against an on-prem token
    endpoint. The endpoint is dialled like a target: its host must resolve inside
    ``allowed_cidrs``."""

    token_url: str = Field(
        pattern=rf"^https?://(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9a-f:]+\])(?::[0-9]{{1,5}})?/[^?#@\s]*$",
        max_length=2048,
        description="Token endpoint URL (lower-case host, no query, fragment or credentials). "
        "http:// only for a loopback host.",
    )
    allowed_cidrs: list[Annotated[str, Field(pattern=CIDR_PATTERN)]] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra=_UNIQUE,
        description="Addresses the token endpoint's host may resolve to. Required unless the "
        "host is an IP address.",
    )
    allow_special_addresses: bool = Field(
        default=False,
        description="Permit loopback, link-local and other special ranges for the token endpoint.",
    )
    tls: TargetTls | None = None
    client_id: str = Field(pattern=CLIENT_ID_PATTERN, description="The gateway's client id.")
    client_secret: SecretRef = Field(description="The client secret, by reference.")
    client_auth: Literal["client_secret_basic", "client_secret_post"] = Field(
        default="client_secret_basic",
        description="How the client authenticates (RFC 6749 section 2.3.1): HTTP Basic "
        "(default) or in the request body.",
    )
    scopes: list[Annotated[str, Field(pattern=SCOPE_PATTERN)]] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra=_UNIQUE,
        description="Scopes to request; none: the endpoint's default.",
    )
    refresh_before_seconds: Annotated[float, Field(ge=0, le=3600)] = Field(
        default=60,
        description="Fetch a new token this long before the current one expires.",
    )
    timeout_seconds: Annotated[float, Field(gt=0, le=30)] = Field(
        default=5, description="Bound on one token request (connect, send and read)."
    )

    def endpoint(self) -> Target:
        """The token endpoint as a target, so it is dialled through the same checked step
        (allowed_cidrs, special ranges, pinned addresses, TLS settings) as every target.

        Raises ValueError for a URL whose host or port no target could have (the semantic
        checks report it)."""
        parts = urlsplit(self.token_url)
        if parts.port == 0:
            raise ValueError("port 0")
        return Target.model_validate(
            {
                "scheme": parts.scheme,
                "host": (parts.hostname or "").lower(),
                "port": parts.port or (443 if parts.scheme == "https" else 80),
                "allowed_cidrs": list(self.allowed_cidrs),
                "allow_special_addresses": self.allow_special_addresses,
                **({"tls": self.tls} if self.tls is not None else {}),
            },
            strict=False,
        )

    @property
    def path(self) -> str:
        """The token endpoint's path."""
        return urlsplit(self.token_url).path or "/"


class Credential(_Model):
    """A credential the gateway adds to requests: exactly one of the kinds below."""

    description: str | None = Field(default=None, max_length=1000)
    header: HeaderCredential | None = None
    bearer: BearerCredential | None = None
    basic: BasicCredential | None = None
    oauth2_client_credentials: OAuth2ClientCredentials | None = None

    @property
    def kind(self) -> str:
        """Which kind is set (``header``, ``bearer``, ``basic``, ``oauth2_client_credentials``)."""
        for name in CREDENTIAL_KINDS:
            if getattr(self, name) is not None:
                return name
        return "none"

    @property
    def header_name(self) -> str:
        """The request header this credential sets, lower-case."""
        return self.header.name.lower() if self.header is not None else "authorization"


CREDENTIAL_KINDS = ("header", "bearer", "basic", "oauth2_client_credentials")


class RedisReplayStore(_Model):
    """A Redis (or Valkey) server holding the nonces of every gateway of a Hybrid Connection."""

    host: str = Field(pattern=HOST_PATTERN, max_length=253)
    port: int = Field(default=6379, ge=1, le=65535)
    database: int = Field(default=0, ge=0, le=15)
    tls: bool = Field(default=True, description="TLS to the server (Redis 'tls-port').")
    ca_file: str | None = Field(
        default=None, description="CA bundle the server's certificate must chain to."
    )
    username: str | None = Field(default=None, min_length=1, max_length=128)
    password: SecretRef = Field(description="The server's password (AUTH), by reference.")
    key_prefix: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9:._{}-]{1,128}$",
        description="Prefix of every key. Default: 'gateway:replay:{<hybrid connection>}:'.",
    )
    timeout_seconds: Annotated[float, Field(gt=0, le=10)] = Field(
        default=1.0, description="Longest wait for the server; past it the request is a 503."
    )


class ReplayStoreSection(_Model):
    """Where accepted nonces are remembered: see docs/high-availability.md."""

    kind: Literal["memory", "sqlite", "redis"] = Field(
        default="memory",
        description="memory: this gateway process only (weaker with several gateways); sqlite: "
        "every process of this host; redis: every gateway of the Hybrid Connection.",
    )
    sqlite_path: str | None = Field(
        default=None, description="SQLite file. Default: 'replay.sqlite3' in gateway.state_dir."
    )
    redis: RedisReplayStore | None = None


class SignatureSection(_Model):
    """RFC 9421 request signatures from EmpowerID (verification cannot be switched off)."""

    max_age_seconds: Annotated[float, Field(gt=0, le=600)] = 60
    clock_skew_seconds: Annotated[float, Field(ge=0, le=300)] = 30
    replay_cache_entries: int = Field(default=100_000, ge=1_000, le=10_000_000)
    replay_store: ReplayStoreSection = Field(default_factory=ReplayStoreSection)
    hmac_sha256: bool = Field(
        default=False,
        description="Also accept RFC 9421 hmac-sha256 signatures made with this gateway's own "
        "symmetric key, which EmpowerID hands out and rotates over the mTLS control plane and "
        "the gateway keeps 0600 in gateway.state_dir. Cheaper to verify than Ed25519 or "
        "P-256, but a secret at rest on this host: see docs/security.md before turning it on.",
    )


class Limits(_Model):
    """Global bounds; every relayed request and stream lives within them."""

    max_concurrent_requests: int = Field(default=256, ge=1, le=100_000)
    max_concurrent_streams: int = Field(default=1024, ge=1, le=100_000)
    connect_timeout_seconds: Seconds = 5
    request_timeout_seconds: Annotated[float, Field(gt=0, le=55)] = Field(
        default=50, description="Must stay under the relay's 60 s deadline."
    )
    read_timeout_seconds: Annotated[float, Field(gt=0, le=55)] = Field(
        default=15,
        description=(
            "Longest wait for the next bytes of a target's answer (headers or body); a target "
            "that goes quiet for this long is a 504. At most the request timeout."
        ),
    )
    stream_idle_timeout_seconds: Seconds = 300
    max_request_body_bytes: int = Field(default=16 << 20, ge=0, le=1 << 30)
    max_response_body_bytes: int = Field(default=64 << 20, ge=0, le=1 << 30)
    max_header_count: int = Field(default=100, ge=8, le=1000)
    max_header_bytes: int = Field(default=32 << 10, ge=1024, le=1 << 20)
    max_path_bytes: int = Field(default=4096, ge=64, le=65536)


class DecisionLogSection(_Model):
    """The decision log's signed checkpoints, rotation and retention (docs/audit.md)."""

    rotate_bytes: int = Field(
        default=100 << 20,
        ge=0,
        le=1 << 40,
        description="Rotate the file when it reaches this size; 0: never by size.",
    )
    rotate_seconds: int = Field(
        default=86400,
        ge=0,
        le=366 * 86400,
        description="Rotate the file when its first record is this old; 0: never by age.",
    )
    keep: int = Field(
        default=30, ge=1, le=100_000, description="Rotated files kept; older ones are deleted."
    )
    checkpoint_seconds: float = Field(
        default=60,
        ge=1,
        le=86400,
        description="Sign the chain head at most this often while records arrive.",
    )
    hmac_key: SecretRef | None = Field(
        default=None,
        description=(
            "Sign checkpoints with HMAC-SHA256 and this key (at least 32 bytes; a secret "
            "reference) instead of the gateway's identity key."
        ),
    )


class SyslogExportSection(_Model):
    """RFC 5424 syslog over TLS (RFC 5425) to a collector; no plain-text transport."""

    host: str = Field(pattern=HOST_PATTERN, max_length=253, description="The collector.")
    port: int = Field(default=6514, ge=1, le=65535)
    ca_file: str | None = Field(
        default=None,
        min_length=1,
        description="CA bundle to verify the collector with; default the system trust store.",
    )
    server_name: str | None = Field(
        default=None,
        pattern=HOST_PATTERN,
        description="Name to verify in the collector's certificate, when it differs from host.",
    )
    client_certificate_file: str | None = Field(
        default=None, min_length=1, description="PEM client certificate, for mutual TLS."
    )
    client_key_file: str | None = Field(
        default=None, min_length=1, description="PEM key of the client certificate."
    )
    facility: int = Field(
        default=13, ge=0, le=23, description="RFC 5424 facility; 13 is 'log audit'."
    )
    timeout_seconds: Seconds = 5


class ExportSection(_Model):
    """Copies of the decision log records for log collectors (docs/audit.md, 'Export')."""

    queue_size: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="Records waiting per destination; beyond it records are dropped and counted.",
    )
    stdout: bool = Field(
        default=False, description="JSON lines on standard output, for container log shippers."
    )
    syslog: SyslogExportSection | None = None


class LoggingSection(_Model):
    """Log output."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"
    audit_file: str | None = Field(
        default=None, min_length=1, description="Decision log file; default standard output."
    )
    decision_log: DecisionLogSection = Field(default_factory=DecisionLogSection)
    export: ExportSection = Field(default_factory=ExportSection)


class ObservabilitySection(_Model):
    """Metrics (/metrics) and health (/healthz, /readyz) endpoint."""

    enabled: bool = True
    listen: str = Field(
        default="127.0.0.1:9464",
        pattern=LISTEN_PATTERN,
        description=(
            "HOST:PORT of the endpoint (loopback unless it is meant to be reached). Port 0: any "
            "free port; while it runs, the gateway writes the address it got to "
            "'operator-endpoint' in gateway.state_dir, where gateway status finds it."
        ),
    )


class ConfigSignatureSection(_Model):
    """Signed configuration: accept this file and its policies only with a release signature.

    A top-level section rather than a ``gateway.*`` key because ``gateway.*`` may be overridden
    from the environment; whether signatures are required must be settled in the reviewed file.
    """

    required: bool = Field(
        default=False,
        description=(
            "Refuse this file and its policy files unless signed by a trusted key with an epoch "
            "no older than the last accepted one. Once a signed file has been accepted, later "
            "files must be signed too until a signed file sets this to false."
        ),
    )
    public_keys: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra=_UNIQUE,
        description="PEM files of the Ed25519 public keys trusted to sign (relative to this file).",
    )
    signature_file: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="Detached signature file. Default: this file's name + '.signatures.json'.",
    )


class GatewayConfig(_Model):
    """The whole of gateway.yaml."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        title="gateway.yaml",
        json_schema_extra={"$id": SCHEMA_ID},
    )

    version: Literal[1] = Field(description="Configuration format version.")
    gateway: GatewaySection
    empowerid: EmpowerIdSection
    workers: Literal["auto"] | Annotated[int, Field(ge=1, le=MAX_WORKERS)] = Field(
        default=1,
        description=(
            "Worker processes `gateway run` starts, each with its own relay listeners; 'auto': "
            "one per CPU the process may use, within the listener limit. More than one needs a "
            "shared replay store (signatures.replay_store.kind sqlite or redis)."
        ),
    )
    event_loop: EventLoopChoice = Field(
        default="auto",
        description=(
            "The event loop `gateway run` serves on: 'auto' uvloop where it can be imported "
            "(CPython on Linux and macOS), else asyncio's own; 'uvloop' refuses to start "
            "without it; 'asyncio' the standard library's loop. Read at start: a change takes "
            "effect at the next restart. `gateway run --event-loop` overrides it for one run."
        ),
    )
    relay: RelaySection = Field(default_factory=RelaySection)
    proxy: ProxySection | None = None
    policy: PolicySection = Field(default_factory=PolicySection)
    signatures: SignatureSection = Field(default_factory=SignatureSection)
    limits: Limits = Field(default_factory=Limits)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    observability: ObservabilitySection = Field(default_factory=ObservabilitySection)
    config_signature: ConfigSignatureSection = Field(default_factory=ConfigSignatureSection)
    credentials: dict[Annotated[str, Field(pattern=NAME_PATTERN)], Credential] = Field(
        default_factory=dict,
        max_length=1000,
        description="Credentials the gateway injects into target requests, by name; secrets "
        "only by reference.",
    )
    targets: dict[Annotated[str, Field(pattern=NAME_PATTERN)], Target] = Field(
        max_length=1000, description="On-prem targets by name."
    )


class _SchemaGenerator(GenerateJsonSchema):
    """Pydantic's generator with two changes: Draft 2020-12 ``$schema`` and no ``null`` members.

    Optional settings are written by leaving the key out; ``key: null`` (or an empty value in
    YAML) is rejected so that a half-edited line is an error rather than a silent default.
    """

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        result = super().default_schema(schema)
        if result.get("default", 0) is None:
            del result["default"]
        return result

    def dict_schema(self, schema: core_schema.DictSchema) -> JsonSchemaValue:
        # Pydantic writes a dict with a key pattern as patternProperties alone, which lets any
        # other name through the schema (and editors) to be refused by the model later, in its
        # own words. Names outside the pattern are refused by the schema itself now.
        result = super().dict_schema(schema)
        if "patternProperties" in result and "additionalProperties" not in result:
            result["additionalProperties"] = False
        return result

    def generate(self, schema: core_schema.CoreSchema, mode: Any = "validation") -> JsonSchemaValue:
        result = super().generate(schema, mode=mode)
        return {"$schema": self.schema_dialect, **result}


def json_schema() -> dict[str, Any]:
    """The JSON Schema (Draft 2020-12) of gateway.yaml, generated from the model."""
    return GatewayConfig.model_json_schema(schema_generator=_SchemaGenerator)
