"""The credentials section: references only, each kind well-formed, targets wired consistently."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import load
from gateway.config.model import OAuth2ClientCredentials
from gateway.errors import ConfigError, Problem
from tests.unit.config.conftest import BASE, WriteConfig

OAUTH = """\
credentials:
  erp-oauth:
    oauth2_client_credentials:
      token_url: https://idp.corp.local/oauth2/token
      allowed_cidrs: [10.1.5.0/24]
      client_id: gateway
      client_secret: {env: ERP_CLIENT_SECRET}
      scopes: [accounts.read]
  erp-key:
    header:
      name: X-API-Key
      value: {file: erp-key}
  erp-basic:
    basic:
      username: svc-gateway
      password: {credential: erp-password}
"""


def with_credentials(extra: str, target_credential: str = "erp-oauth") -> str:
    text = BASE.replace(
        "    port: 8443\n", f"    port: 8443\n    credential: {target_credential}\n"
    )
    return text + extra


def problems(path: Path) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        load(path, env={}, check_host=False)
    return caught.value.problems


def test_each_kind_loads_and_the_endpoint_is_a_checked_target(write_config: WriteConfig) -> None:
    loaded = load(write_config(with_credentials(OAUTH)), env={}, check_host=False)
    credentials = loaded.config.credentials
    assert [c.kind for c in credentials.values()] == [
        "oauth2_client_credentials",
        "header",
        "basic",
    ]
    oauth = credentials["erp-oauth"].oauth2_client_credentials
    assert oauth is not None
    endpoint = oauth.endpoint()
    assert (endpoint.scheme, endpoint.host, endpoint.effective_port) == (
        "https",
        "idp.corp.local",
        443,
    )
    assert endpoint.allowed_cidrs == ["10.1.5.0/24"]
    assert oauth.path == "/oauth2/token"
    assert credentials["erp-key"].header_name == "x-api-key"
    assert loaded.config.targets["erp"].credential == "erp-oauth"


@pytest.mark.parametrize(
    ("replace", "code", "path"),
    [
        ("      client_secret: {env: ERP_CLIENT_SECRET}", "inline_secret", "client_secret"),
        ("      value: {file: erp-key}", "inline_secret", "value"),
        ("      password: {credential: erp-password}", "inline_secret", "password"),
    ],
)
def test_inline_secrets_are_refused_at_their_line(
    write_config: WriteConfig, replace: str, code: str, path: str
) -> None:
    key = replace.strip().split(":", 1)[0]
    text = with_credentials(OAUTH.replace(replace, f"      {key}: very-secret-inline"))
    [problem] = problems(write_config(text))
    assert problem.code == code
    assert problem.path.endswith(path)
    assert problem.line > 0
    assert "very-secret-inline" not in problem.render()


def test_unknown_credential_name_gets_a_suggestion(write_config: WriteConfig) -> None:
    [problem] = problems(write_config(with_credentials(OAUTH, "erp-oath")))
    assert (problem.code, problem.path) == ("unknown_credential", "targets.erp.credential")
    assert "erp-oauth" in problem.hint


def test_a_credential_has_exactly_one_kind(write_config: WriteConfig) -> None:
    text = with_credentials(OAUTH + "  empty:\n    description: nothing\n")
    [problem] = problems(write_config(text))
    assert (problem.code, problem.path) == ("invalid_credential", "credentials.empty")


def test_operation_may_not_pass_through_a_credential_header(write_config: WriteConfig) -> None:
    text = with_credentials(OAUTH).replace(
        "        paths: [/api/*]\n", "        paths: [/api/*]\n        headers: [Authorization]\n"
    )
    [problem] = problems(write_config(text))
    assert (problem.code, problem.path) == (
        "conflicting_settings",
        "targets.erp.operations[0].headers[0]",
    )
    # The same for the injected header name of a header credential, chosen per operation.
    text = with_credentials(OAUTH).replace(
        "        paths: [/api/*]\n",
        "        paths: [/api/*]\n        credential: erp-key\n        headers: [x-api-key]\n",
    )
    [problem] = problems(write_config(text))
    assert problem.code == "conflicting_settings"


def test_token_endpoint_goes_through_the_address_checks(write_config: WriteConfig) -> None:
    outside = with_credentials(OAUTH.replace("[10.1.5.0/24]", "[169.254.169.254/32]"))
    [problem] = problems(write_config(outside))
    assert problem.code == "special_range"
    assert problem.path.startswith("credentials.erp-oauth.oauth2_client_credentials")
    missing = with_credentials(OAUTH.replace("      allowed_cidrs: [10.1.5.0/24]\n", ""))
    [problem] = problems(write_config(missing))
    assert problem.code == "missing_key"


def test_plain_http_token_endpoint_only_on_loopback(write_config: WriteConfig) -> None:
    text = with_credentials(OAUTH.replace("https://idp.corp.local", "http://idp.corp.local"))
    [problem] = problems(write_config(text))
    assert (problem.code, problem.path) == (
        "insecure_endpoint",
        "credentials.erp-oauth.oauth2_client_credentials.token_url",
    )
    loopback = with_credentials(
        OAUTH.replace("https://idp.corp.local", "http://127.0.0.1:9000").replace(
            "[10.1.5.0/24]", "[127.0.0.1/32]\n      allow_special_addresses: true"
        )
    )
    load(write_config(loopback), env={}, check_host=False)


def test_credential_on_tcp_target_is_unused(write_config: WriteConfig) -> None:
    ldap = "  ldap:\n    scheme: tcp\n    host: 10.1.4.5\n    port: 636\n    credential: erp-key\n"
    [problem] = problems(write_config(BASE + ldap + OAUTH))
    assert (problem.code, problem.path) == ("unused_setting", "targets.ldap.credential")


def test_secret_references_resolve_with_host_checks(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    path = write_config(with_credentials(OAUTH))
    found = {p.path: p.code for p in problems_with_host(path)}
    assert found == {
        "credentials.erp-oauth.oauth2_client_credentials.client_secret": "missing_secret",
        "credentials.erp-key.header.value": "missing_secret",
        "credentials.erp-basic.basic.password": "missing_secret",
    }


def problems_with_host(path: Path) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        load(path, env={})
    return caught.value.problems


def test_token_request_and_request_must_fit_the_relay_deadline(write_config: WriteConfig) -> None:
    slow = with_credentials(
        OAUTH.replace("      scopes:", "      timeout_seconds: 10\n      scopes:")
    )
    # Two operations share the target's credential: one problem, at the target.
    slow = slow.replace(
        "        paths: [/api/*]\n",
        "        paths: [/api/*]\n      - name: other\n        methods: [GET]\n"
        "        paths: [/other]\n",
    )
    [problem] = problems(write_config(slow))
    assert (problem.code, problem.path) == ("conflicting_settings", "targets.erp.credential")
    assert "55 s" in problem.message
    fits = slow.replace("policy:\n", "limits:\n  request_timeout_seconds: 45\npolicy:\n")
    load(write_config(fits), env={}, check_host=False)


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("https://idp.corp.local:99999/oauth2/token", "invalid_url"),
        ("https://idp.corp.local:0/oauth2/token", "invalid_url"),
        ("https://idp..corp.local/oauth2/token", "invalid_url"),
        ("https://IDP.corp.local/oauth2/token", "invalid_url"),
        ("https://idp.corp.local/oauth2/token?x=1", "invalid_url"),
        ("https://user@idp.corp.local/oauth2/token", "invalid_url"),
        ("https://[::zz]/oauth2/token", "invalid_url"),
    ],
)
def test_unusable_token_urls_are_reported_not_raised(
    write_config: WriteConfig, url: str, code: str
) -> None:
    text = with_credentials(OAUTH.replace("https://idp.corp.local/oauth2/token", url))
    [problem] = problems(write_config(text))
    assert (problem.code, problem.path) == (
        code,
        "credentials.erp-oauth.oauth2_client_credentials.token_url",
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    url=st.from_regex(
        OAuth2ClientCredentials.model_json_schema()["properties"]["token_url"]["pattern"],
        fullmatch=True,
    ),
    cidr=st.sampled_from(["10.1.5.0/24", "127.0.0.0/8", "::1/128", "0.0.0.0/0"]),
)
def test_any_schema_valid_token_endpoint_loads_or_is_a_located_problem(
    write_config: WriteConfig, url: str, cidr: str
) -> None:
    text = with_credentials(
        OAUTH.replace("https://idp.corp.local/oauth2/token", url).replace("10.1.5.0/24", cidr)
    )
    path = write_config(text)
    found: list[Problem] = []
    try:
        load(path, env={}, check_host=False)
    except ConfigError as exc:
        found = exc.problems
    assert all(p.line > 0 and p.code for p in found)
