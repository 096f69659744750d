"""Outbound proxy settings validation, no-proxy matching, routes and the TLS client context."""

from __future__ import annotations

import base64
import ipaddress
import ssl
from pathlib import Path

import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from gateway.outbound.proxy import (
    NoProxyList,
    OutboundProxy,
    ProxyConfigError,
    ProxySettings,
    basic_credentials,
    client_ssl_context,
)

LABEL = st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?\Z")
TLD = st.from_regex(r"\A[a-z]{2,6}\Z")
DOMAIN = st.builds(lambda labels, tld: ".".join([*labels, tld]), st.lists(LABEL, max_size=3), TLD)


@pytest.mark.parametrize(
    ("entry", "host", "expected"),
    [
        ("example.com", "example.com", True),
        ("example.com", "api.example.com", True),
        ("example.com", "EXAMPLE.COM.", True),
        ("example.com", "badexample.com", False),
        ("example.com", "example.com.evil.test", False),
        (".example.com", "example.com", False),
        (".example.com", "a.b.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "x.example.com", True),
        ("*", "anything.test", True),
        ("10.0.0.0/8", "10.20.30.40", True),
        ("10.0.0.0/8", "11.0.0.1", False),
        ("10.0.0.0/8", "ten.example", False),
        ("127.0.0.1", "127.0.0.1", True),
        ("127.0.0.1", "127.0.0.2", False),
        ("::1", "0:0::1", True),
        ("[::1]", "::1", True),
        ("fd00::/8", "fd12::5", True),
        ("fd00::/8", "10.0.0.1", False),
        ("localhost", "", False),
    ],
)
def test_no_proxy_semantics(entry: str, host: str, expected: bool) -> None:
    assert NoProxyList([entry]).matches(host) is expected


@pytest.mark.parametrize(
    "entry",
    ["proxy.local:8080", "a b", "", "user@host", "10.0.0.0/33", "exa*mple.com", "a..b", "10.1.2"],
)
def test_malformed_no_proxy_entries_are_rejected(entry: str) -> None:
    with pytest.raises(ProxyConfigError):
        NoProxyList([entry])


@given(domain=DOMAIN, prefix=st.lists(LABEL, min_size=1, max_size=3).map(".".join))
def test_domain_entry_matches_itself_and_subdomains(domain: str, prefix: str) -> None:
    rules = NoProxyList([domain])
    assert rules.matches(domain)
    assert rules.matches(f"{prefix}.{domain}".upper())
    assert not NoProxyList(["." + domain]).matches(domain)


@given(domain=DOMAIN, glued=st.text(alphabet="abcxyz019-", min_size=1, max_size=8))
def test_domain_entry_only_matches_on_a_label_boundary(domain: str, glued: str) -> None:
    assert not NoProxyList([domain]).matches(glued + domain)


@given(
    network=st.ip_addresses(v=4).flatmap(
        lambda a: st.integers(0, 32).map(lambda p: ipaddress.ip_network(f"{a}/{p}", strict=False))
    ),
    address=st.ip_addresses(v=4),
)
def test_cidr_entry_agrees_with_ipaddress(
    network: ipaddress.IPv4Network, address: ipaddress.IPv4Address
) -> None:
    assert NoProxyList([str(network)]).matches(str(address)) is (address in network)


@given(entry=st.text(max_size=40), host=st.text(max_size=40))
def test_arbitrary_entries_either_parse_or_raise_config_error(entry: str, host: str) -> None:
    try:
        rules = NoProxyList([entry])
    except ProxyConfigError:
        return
    assert isinstance(rules.matches(host), bool)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"url": "https://proxy.corp:3128"}, "http://"),
        ({"url": "http://user:pw@proxy.corp:3128"}, "credentials"),
        ({"url": "http://proxy.corp"}, "port"),
        ({"url": "http://proxy.corp:3128/path"}, "no path"),
        ({"url": "http://proxy.corp:3128", "username": "u"}, "together"),
        ({"username": "u", "password": SecretStr("p")}, "no proxy URL"),
        ({"url": "http://p:1", "username": "a:b", "password": SecretStr("p")}, "':'"),
        ({"no_proxy": ("host:80",)}, "host name"),
    ],
)
def test_invalid_settings_are_rejected(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ProxyConfigError) as caught:
        ProxySettings(**kwargs)  # type: ignore[arg-type]
    assert fragment in str(caught.value)


def test_password_never_appears_in_reprs() -> None:
    settings = ProxySettings(
        url="http://proxy.corp:3128", username="agent", password=SecretStr("hunter2-secret")
    )
    proxy = OutboundProxy(settings)
    route = proxy.route_for("wss://relay.servicebus.windows.net/$hc/x")
    for text in (repr(settings), str(settings), repr(proxy), repr(route)):
        assert "hunter2" not in text
    assert route.proxy_headers["Proxy-Authorization"].startswith("Basic ")
    assert "with credentials" in repr(route)


def test_routes_tunnel_tls_and_put_credentials_on_plain_requests() -> None:
    proxy = OutboundProxy(
        ProxySettings(
            url="http://proxy.corp:3128",
            username="agent",
            password=SecretStr("pw"),
            no_proxy=(".corp.local",),
        )
    )
    tls = proxy.route_for("wss://ns.servicebus.windows.net/$hc/hc")
    assert tls.tunnelled
    assert "Proxy-Authorization" not in tls.request_headers({"A": "1"})
    assert tls.tunnel_headers is not None
    assert tls.tunnel_headers["Proxy-Authorization"].startswith("Basic ")
    plain = proxy.route_for("http://status.example/ping")
    assert not plain.tunnelled
    assert "Proxy-Authorization" in plain.request_headers(None)
    assert plain.tunnel_headers is None
    bypass = proxy.route_for("https://erp.corp.local:8443/api")
    assert bypass.direct
    assert bypass.request_headers({"A": "1"}) == {"A": "1"}
    assert bypass.tunnel_headers is None
    anonymous = OutboundProxy(ProxySettings(url="http://proxy.corp:3128"))
    assert anonymous.route_for("https://cp.example/").tunnel_headers is None
    assert proxy.proxy_label == "proxy.corp:3128"


def test_tls_context_is_strict() -> None:
    context = client_ssl_context()
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.check_hostname
    assert context.verify_mode is ssl.CERT_REQUIRED


def test_unreadable_ca_file_is_a_config_error(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate")
    with pytest.raises(ProxyConfigError):
        client_ssl_context(bogus)
    with pytest.raises(ProxyConfigError):
        client_ssl_context(tmp_path / "missing.pem")


def _subjects(context: ssl.SSLContext) -> list[object]:
    return [cert["subject"] for cert in context.get_ca_certs()]


def test_one_tls_context_per_trust_configuration(tmp_path: Path) -> None:
    # Each context loads the system store (about 0.8 MiB); the agent builds an OutboundProxy per
    # revision and per check, so equal trust must mean one shared context (issue 13).
    first = trustme.CA()
    bundle = tmp_path / "proxy-ca.pem"
    first.cert_pem.write_to_path(str(bundle))
    settings = ProxySettings(url="http://proxy.corp:3128", extra_ca_file=bundle)
    one, two = OutboundProxy(settings), OutboundProxy(settings)
    assert one.ssl_context is two.ssl_context
    assert OutboundProxy(ProxySettings()).ssl_context is client_ssl_context()
    assert OutboundProxy(ProxySettings()).ssl_context is not one.ssl_context
    trusted = _subjects(one.ssl_context)
    # A new bundle in the same file is a new trust configuration, and is the one trusted.
    second = trustme.CA()
    second.cert_pem.write_to_path(str(bundle))
    renewed = OutboundProxy(settings).ssl_context
    assert renewed is not one.ssl_context
    assert len(_subjects(renewed)) == len(trusted)
    assert _subjects(renewed) != trusted
    assert renewed.verify_mode is ssl.CERT_REQUIRED
    assert renewed.check_hostname


@given(st.text().filter(lambda t: ":" not in t), st.text())
def test_basic_credentials_carry_the_user_and_password_as_utf8(user: str, password: str) -> None:
    # RFC 7617 section 2: "Basic" then base64 of user-id ":" password, UTF-8 (section 2.1).
    scheme, _, token = basic_credentials(user, password).partition(" ")
    assert scheme == "Basic"
    decoded = base64.b64decode(token, validate=True).decode("utf-8")
    assert decoded == f"{user}:{password}"


def test_basic_credentials_refuse_a_colon_in_the_user_id_without_naming_either() -> None:
    with pytest.raises(ValueError, match="cannot contain") as info:
        basic_credentials("al:ice", "s3cret-phrase")
    assert "al:ice" not in str(info.value)
    assert "s3cret" not in str(info.value)
    assert basic_credentials("Aladdin", "open sesame") == "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
