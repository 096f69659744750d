"""``gateway diff`` on real file pairs: every category of change, its effect and the exit code."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.cli import main
from gateway.config import load
from gateway.config.model import GatewayConfig
from gateway.config.patterns import PathPattern
from gateway.gitops.diff import Effect, PermissionDiff, _md_code, diff_configs
from tests.unit.gitops.conftest import BASE, WriteConfig


def diff_of(write_config: WriteConfig, old: str, new: str) -> PermissionDiff:
    a = load(write_config(old, "old.yaml"), env={}, check_host=False)
    b = load(write_config(new, "new.yaml"), env={}, check_host=False)
    return diff_configs(a.config, b.config)


def messages(diff: PermissionDiff, effect: Effect) -> list[str]:
    return [c.message for c in diff.changes if c.effect is effect]


def test_reformatting_and_spelled_out_defaults_are_no_change(write_config: WriteConfig) -> None:
    spelled = BASE.replace("  state_dir: state\n", "  state_dir: state\nrelay:\n  connections: 2\n")
    spelled = spelled.replace("port: 8443", "port: 8443\n    allow_special_addresses: false")
    spelled = "# reviewed\n" + spelled.replace("[GET, HEAD]", "\n          - GET\n          - HEAD")
    diff = diff_of(write_config, BASE, spelled)
    assert diff.changes == ()
    assert diff.exit_code == 0


def test_default_port_equals_explicit_port(write_config: WriteConfig) -> None:
    diff = diff_of(write_config, BASE, BASE.replace("    port: 8443\n", "    port: 8443\n", 1))
    assert diff.exit_code == 0
    explicit = BASE.replace("port: 8443", "port: 443")
    implicit = BASE.replace("    port: 8443\n", "")
    assert diff_of(write_config, explicit, implicit).changes == ()


def test_method_added_is_widened_in_plain_words(write_config: WriteConfig) -> None:
    diff = diff_of(write_config, BASE, BASE.replace("[PATCH]", "[PATCH, DELETE]"))
    assert messages(diff, Effect.WIDENED) == [
        "erp: operation update-account now also allows DELETE on /api/accounts/*"
    ]
    assert diff.exit_code == 10
    [change] = diff.changes
    assert (change.kind, change.target, change.operation) == (
        "methods_added",
        "erp",
        "update-account",
    )


def test_method_removed_is_narrowed(write_config: WriteConfig) -> None:
    diff = diff_of(write_config, BASE, BASE.replace("[GET, HEAD]", "[GET]"))
    assert messages(diff, Effect.NARROWED) == ["erp: operation list-accounts no longer allows HEAD"]
    assert diff.exit_code == 11


def test_path_widened_and_narrowed_use_coverage(write_config: WriteConfig) -> None:
    wider = BASE.replace("paths: [/api/accounts/*]", "paths: [/api/accounts/**]")
    diff = diff_of(write_config, BASE, wider)
    assert messages(diff, Effect.WIDENED) == [
        "erp: operation update-account now also allows PATCH on /api/accounts/** "
        "(widened from /api/accounts/*)"
    ]
    back = diff_of(write_config, wider, BASE)
    assert messages(back, Effect.NARROWED) == [
        "erp: operation update-account no longer allows PATCH on /api/accounts/** "
        "(narrowed to /api/accounts/*)"
    ]
    assert back.exit_code == 11


def test_path_added_and_removed(write_config: WriteConfig) -> None:
    added = BASE.replace("paths: [/api/events/**]", "paths: [/api/events/**, /api/audit]")
    assert messages(diff_of(write_config, BASE, added), Effect.WIDENED) == [
        "erp: operation account-events now also allows GET on /api/audit"
    ]
    assert messages(diff_of(write_config, added, BASE), Effect.NARROWED) == [
        "erp: operation account-events no longer allows GET on /api/audit"
    ]


def test_headers_and_websocket(write_config: WriteConfig) -> None:
    new = BASE.replace("headers: [Authorization]", "headers: [authorization, X-Tenant]")
    new = new.replace("paths: [/api/events/**]", "paths: [/api/events/**]\n        websocket: true")
    diff = diff_of(write_config, BASE, new)
    assert messages(diff, Effect.WIDENED) == [
        "erp: operation account-events now also allows WebSocket streams on /api/events/**",
        "erp: operation update-account now also passes headers X-Tenant",
    ]
    back = diff_of(write_config, new, BASE)
    assert messages(back, Effect.NARROWED) == [
        "erp: operation account-events no longer allows WebSocket streams",
        "erp: operation update-account no longer passes headers X-Tenant",
    ]


def test_operation_added_removed_and_renamed(write_config: WriteConfig) -> None:
    extra = BASE.replace(
        "  directory:\n",
        "      - name: delete-account\n        methods: [DELETE]\n"
        "        paths: [/api/accounts/*]\n  directory:\n",
    )
    added = diff_of(write_config, BASE, extra)
    assert messages(added, Effect.WIDENED) == [
        "erp: new operation delete-account allows DELETE on /api/accounts/*"
    ]
    removed = diff_of(write_config, extra, BASE)
    assert messages(removed, Effect.NARROWED) == [
        "erp: operation delete-account removed: no longer allows DELETE on /api/accounts/*"
    ]
    renamed = diff_of(write_config, BASE, BASE.replace("name: account-events", "name: events"))
    assert renamed.exit_code == 11
    assert messages(renamed, Effect.NEUTRAL) == [
        "erp: operation account-events removed; still allowed by events",
        "erp: new operation events was already allowed by account-events",
    ]


def test_renamed_operation_that_gains_a_header_is_widened(write_config: WriteConfig) -> None:
    new = BASE.replace("name: account-events", "name: events").replace(
        "paths: [/api/events/**]", "paths: [/api/events/**]\n        headers: [Cookie]"
    )
    diff = diff_of(write_config, BASE, new)
    assert messages(diff, Effect.WIDENED) == [
        "erp: new operation events allows GET on /api/events/** with headers Cookie"
    ]


def test_targets_added_and_removed(write_config: WriteConfig) -> None:
    without = BASE[: BASE.index("  directory:")]
    removed = diff_of(write_config, BASE, without)
    assert messages(removed, Effect.NARROWED) == [
        "directory: target removed; tcp://dc01.corp.local:636 is no longer reachable"
    ]
    assert removed.exit_code == 11
    added = diff_of(write_config, without, BASE)
    assert messages(added, Effect.WIDENED) == [
        "directory: new target reaches tcp://dc01.corp.local:636 (addresses in 10.1.3.10/32)"
    ]
    assert added.exit_code == 10


def test_target_endpoint_changes(write_config: WriteConfig) -> None:
    new = BASE.replace("host: erp.corp.local", "host: erp2.corp.local").replace("8443", "9443")
    diff = diff_of(write_config, BASE, new)
    assert messages(diff, Effect.WIDENED) == [
        "erp: now points at host erp2.corp.local (was erp.corp.local)",
        "erp: now connects to port 9443 (was 8443)",
    ]
    to_http = diff_of(write_config, BASE, BASE.replace("scheme: https", "scheme: http", 1))
    assert messages(to_http, Effect.WIDENED) == ["erp: scheme changed from https to http"]
    to_https = diff_of(write_config, BASE.replace("scheme: https", "scheme: http", 1), BASE)
    assert messages(to_https, Effect.NARROWED) == ["erp: scheme changed from http to https"]


def test_cidrs_widened_narrowed_and_special_addresses(write_config: WriteConfig) -> None:
    wide = BASE.replace("[10.1.2.0/24]", "[10.1.0.0/16]")
    diff = diff_of(write_config, BASE, wide)
    assert messages(diff, Effect.WIDENED) == ["erp: may now resolve to addresses in 10.1.0.0/16"]
    narrow = diff_of(write_config, BASE, BASE.replace("[10.1.2.0/24]", "[10.1.2.0/25]"))
    assert messages(narrow, Effect.NARROWED) == [
        "erp: may no longer resolve to addresses in 10.1.2.0/24"
    ]
    assert narrow.exit_code == 11
    special = BASE.replace("port: 636", "port: 636\n    allow_special_addresses: true")
    assert messages(diff_of(write_config, BASE, special), Effect.WIDENED) == [
        "directory: may now reach loopback, link-local and metadata addresses"
    ]


def test_tls_verification_and_trust(write_config: WriteConfig) -> None:
    insecure = BASE.replace("port: 8443", "port: 8443\n    tls:\n      insecure_skip_verify: true")
    diff = diff_of(write_config, BASE, insecure)
    assert messages(diff, Effect.WIDENED) == [
        "erp: the target's TLS certificate is no longer verified"
    ]
    ca = BASE.replace("port: 8443", "port: 8443\n    tls:\n      ca_file: erp-ca.pem")
    assert messages(diff_of(write_config, BASE, ca), Effect.WIDENED) == [
        "erp: TLS CA bundle changed from default to erp-ca.pem"
    ]
    assert messages(diff_of(write_config, insecure, BASE), Effect.NARROWED) == [
        "erp: the target's TLS certificate is now verified"
    ]


def test_limits_global_and_per_target(write_config: WriteConfig) -> None:
    raised = BASE + "limits:\n  max_request_body_bytes: 33554432\n"
    diff = diff_of(write_config, BASE, raised)
    assert messages(diff, Effect.WIDENED) == [
        "limits.max_request_body_bytes raised from 16777216 to 33554432"
    ]
    lowered = diff_of(
        write_config,
        BASE,
        BASE.replace("max_concurrent_requests: 32", "max_concurrent_requests: 8"),
    )
    assert messages(lowered, Effect.NARROWED) == [
        "erp: limits.max_concurrent_requests lowered from 32 to 8"
    ]
    # Dropping a per-target limit means inheriting the global one (256): raised.
    inherit = BASE.replace("    limits:\n      max_concurrent_requests: 32\n", "")
    assert messages(diff_of(write_config, BASE, inherit), Effect.WIDENED) == [
        "erp: limits.max_concurrent_requests raised from 32 to 256"
    ]


@pytest.mark.parametrize(
    ("addition", "effect", "message"),
    [
        (
            "policy:\n  mode: monitor\n",
            Effect.WIDENED,
            "policy.mode changed from enforce to monitor: denied requests are forwarded anyway",
        ),
        (
            "signatures:\n  max_age_seconds: 300\n",
            Effect.WIDENED,
            "signatures.max_age_seconds changed from 60 to 300: older request signatures are "
            "accepted",
        ),
        (
            "signatures:\n  clock_skew_seconds: 5\n",
            Effect.NARROWED,
            "signatures.clock_skew_seconds changed from 30 to 5: less clock difference is "
            "tolerated",
        ),
        (
            "policy:\n  engine: opa\n  opa_url: http://127.0.0.1:8181\n",
            Effect.WIDENED,
            "policy.engine changed from embedded to opa: decisions come from elsewhere",
        ),
        ("logging:\n  level: debug\n", Effect.NEUTRAL, "logging.level changed from info to debug"),
    ],
)
def test_security_and_other_settings(
    write_config: WriteConfig, addition: str, effect: Effect, message: str
) -> None:
    diff = diff_of(write_config, BASE, BASE + addition)
    assert message in messages(diff, effect)
    assert diff.exit_code == (10 if effect is Effect.WIDENED else 11)


def test_config_signature_settings(write_config: WriteConfig) -> None:
    signed = BASE + "config_signature:\n  required: true\n  public_keys: [a.pub, b.pub]\n"
    off = diff_of(write_config, signed, BASE)
    assert messages(off, Effect.WIDENED) == [
        "config_signature.required changed from true to false: unsigned configuration is accepted"
    ]
    more = signed.replace("[a.pub, b.pub]", "[a.pub, b.pub, c.pub]")
    assert messages(diff_of(write_config, signed, more), Effect.WIDENED) == [
        "config_signature.public_keys: now also trusts c.pub"
    ]


def test_secret_reference_removed_is_weakening(write_config: WriteConfig) -> None:
    encrypted = BASE.replace("state_dir: state", "state_dir: state\n  key_passphrase: {env: PW}")
    diff = diff_of(write_config, encrypted, BASE)
    assert messages(diff, Effect.WIDENED) == [
        "gateway.key_passphrase changed from env: PW to unset: the private key is no longer "
        "encrypted at rest"
    ]


# --- the verb ------------------------------------------------------------------------------------


def test_cli_exit_codes_and_text(
    write_config: WriteConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    old = write_config(BASE, "old.yaml")
    same = write_config(BASE, "same.yaml")
    wide = write_config(BASE.replace("[PATCH]", "[PATCH, DELETE]"), "wide.yaml")
    narrow = write_config(BASE.replace("[GET, HEAD]", "[GET]"), "narrow.yaml")
    assert main(["diff", str(old), str(same)]) == 0
    assert "no change in permissions" in capsys.readouterr().out
    assert main(["diff", str(old), str(wide)]) == 10
    out = capsys.readouterr().out
    assert "widened   erp: operation update-account now also allows DELETE" in out
    assert main(["diff", str(old), str(narrow)]) == 11
    assert "narrowed  erp: operation list-accounts no longer allows HEAD" in capsys.readouterr().out


def test_cli_json(write_config: WriteConfig, capsys: pytest.CaptureFixture[str]) -> None:
    old = write_config(BASE, "old.yaml")
    new = write_config(BASE.replace("[PATCH]", "[PATCH, DELETE]"), "new.yaml")
    assert main(["diff", str(old), str(new), "--format", "json"]) == 10
    report = json.loads(capsys.readouterr().out)
    assert report["result"] == "widened"
    assert report["exit_code"] == 10
    assert report["counts"] == {"widened": 1, "narrowed": 0, "neutral": 0}
    [change] = report["changes"]
    assert change["kind"] == "methods_added"
    assert change["path"] == "targets.erp.operations[update-account].methods"
    assert change["old"] == ["PATCH"]
    assert change["new"] == ["PATCH", "DELETE"]


def test_cli_markdown(write_config: WriteConfig, capsys: pytest.CaptureFixture[str]) -> None:
    old = write_config(BASE, "old.yaml")
    new = write_config(
        BASE.replace("[PATCH]", "[PATCH, DELETE]").replace("[GET, HEAD]", "[GET]"), "new.yaml"
    )
    assert main(["diff", str(old), str(new), "--format", "markdown"]) == 10
    out = capsys.readouterr().out
    assert "**Permissions widened: this change needs a security review.**" in out
    assert "#### Widened (needs security review) (1)" in out
    assert "- erp: operation `update-account` now also allows `DELETE` on `/api/accounts/*`" in out
    assert "#### Narrowed (1)" in out


def test_cli_reports_invalid_sides_with_locations(
    write_config: WriteConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    bad_old = write_config(BASE.replace("port: 8443", "port: 0"), "old.yaml")
    bad_new = write_config(BASE.replace("[PATCH]", "[patch]"), "new.yaml")
    assert main(["diff", str(bad_old), str(bad_new)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{bad_old}:11:11: targets.erp.port: ")
    assert err[1].startswith(f"{bad_new}:")
    assert "targets.erp.operations[1].methods[0]" in err[1]
    assert "nothing compared" in err[-1]


def test_cli_missing_file(write_config: WriteConfig, capsys: pytest.CaptureFixture[str]) -> None:
    old = write_config(BASE, "old.yaml")
    assert main(["diff", str(old), str(old.with_name("absent.yaml"))]) == 1
    assert "absent.yaml: <root>: file not found" in capsys.readouterr().err


# --- properties ----------------------------------------------------------------------------------

_SEGMENT = st.sampled_from(["a", "b", "*"])


@st.composite
def patterns(draw: st.DrawFn) -> str:
    segments = draw(st.lists(_SEGMENT, min_size=1, max_size=3))
    if draw(st.booleans()):
        segments.append("**")
    text = "/" + "/".join(segments)
    if segments[-1] != "**" and draw(st.booleans()):
        text += "/"
    return text


_REQUEST = st.tuples(
    st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=5).map(tuple), st.booleans()
)


def _config(paths: list[str], methods: list[str]) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "version": 1,
            "gateway": {"id": "agent-1"},
            "empowerid": {"url": "https://tenant.empowerid.example"},
            "targets": {
                "erp": {
                    "scheme": "https",
                    "host": "10.0.0.1",
                    "operations": [{"name": "op", "methods": methods, "paths": paths}],
                }
            },
        }
    )


@settings(max_examples=300, deadline=None)
@given(
    old=st.lists(patterns(), min_size=1, max_size=3, unique=True),
    new=st.lists(patterns(), min_size=1, max_size=3, unique=True),
    old_methods=st.lists(st.sampled_from(["GET", "POST"]), min_size=1, unique=True),
    new_methods=st.lists(st.sampled_from(["GET", "POST"]), min_size=1, unique=True),
    requests=st.lists(_REQUEST, min_size=1, max_size=20),
)
def test_any_newly_allowed_request_is_reported_as_widened(
    old: list[str],
    new: list[str],
    old_methods: list[str],
    new_methods: list[str],
    requests: list[tuple[tuple[str, ...], bool]],
) -> None:
    """Soundness: if some request is allowed by NEW and not by OLD, the diff says widened."""
    diff = diff_configs(_config(old, old_methods), _config(new, new_methods))

    def allowed(paths: list[str], methods: list[str], method: str, req: tuple[Any, bool]) -> bool:
        return method in methods and any(PathPattern.parse(p).matches(*req) for p in paths)

    for method in ("GET", "POST"):
        for request in requests:
            if allowed(new, new_methods, method, request) and not allowed(
                old, old_methods, method, request
            ):
                assert diff.widened, (old, new, method, request)
    if diff.changes == ():
        assert set(old_methods) == set(new_methods)


@given(st.text(max_size=40))
def test_markdown_code_span_cannot_be_escaped(text: str) -> None:
    span = _md_code(text)
    fence = len(span) - len(span.lstrip("`"))
    inner = span[fence:-fence]
    assert "\n" not in span
    assert "\r" not in span
    # CommonMark section 6.1: a code span ends only at a backtick run as long as its fence.
    runs = "".join(c if c == "`" else " " for c in inner).split()
    assert all(len(run) < fence for run in runs)
    assert span.endswith("`" * fence)


# --- injected credentials ------------------------------------------------------------------------

CREDENTIALS = """\
credentials:
  erp-key:
    header:
      name: X-API-Key
      value: {file: /run/secrets/erp-key}
  erp-oauth:
    oauth2_client_credentials:
      token_url: https://idp.corp.local/oauth2/token
      allowed_cidrs: [10.1.5.0/24]
      client_id: gateway
      client_secret: {env: ERP_CLIENT_SECRET}
"""


def _with_credential(credential: str | None) -> str:
    text = BASE + CREDENTIALS
    if credential is None:
        return text
    return text.replace(
        "        paths: [/api/accounts, /api/accounts/*]\n",
        f"        paths: [/api/accounts, /api/accounts/*]\n        credential: {credential}\n",
    )


def test_injected_credential_changes_are_reported_by_name(write_config: WriteConfig) -> None:
    added = diff_of(write_config, _with_credential(None), _with_credential("erp-key"))
    assert messages(added, Effect.WIDENED) == [
        "erp: operation list-accounts: requests now get credential erp-key from the gateway"
    ]
    moved = diff_of(write_config, _with_credential("erp-key"), _with_credential("erp-oauth"))
    assert messages(moved, Effect.WIDENED) == [
        "erp: operation list-accounts: requests now get credential erp-oauth from the gateway "
        "(was erp-key)"
    ]
    removed = diff_of(write_config, _with_credential("erp-key"), _with_credential(None))
    assert messages(removed, Effect.NARROWED) == [
        "erp: operation list-accounts: the gateway no longer injects credential erp-key"
    ]


def test_a_moved_secret_reference_is_shown_as_the_reference(write_config: WriteConfig) -> None:
    before = _with_credential("erp-key")
    after = before.replace("{file: /run/secrets/erp-key}", "{credential: erp-key}")
    after = after.replace("https://idp.corp.local/", "https://idp2.corp.local/")
    diff = diff_of(write_config, before, after)
    found = messages(diff, Effect.WIDENED)
    assert len(found) == 2
    assert found[0].startswith(
        "credentials.erp-key.header.value changed from file: /run/secrets/erp-key to "
        "credential: erp-key: review"
    )
    assert "credentials.erp-oauth.oauth2_client_credentials.token_url changed" in found[1]
