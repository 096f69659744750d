"""gateway.yaml loading: every bad input is reported with its location and a specific message."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from gateway.config import load
from gateway.errors import ConfigError, Problem
from tests.unit.config.conftest import BASE, WriteConfig

NO_ENV: dict[str, str] = {}


def problems_of(path: Path, env: dict[str, str] | None = None) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        load(path, env=NO_ENV if env is None else env)
    return caught.value.problems


def only_problem(path: Path, env: dict[str, str] | None = None) -> Problem:
    problems = problems_of(path, env)
    assert len(problems) == 1, [p.render() for p in problems]
    return problems[0]


def refused_with_peak(path: Path) -> tuple[Problem, int]:
    """The one problem ``path`` has, and the peak Python memory (bytes) the load added.

    tracemalloc measures this load alone: the process's peak RSS (ru_maxrss) only moves when a
    load exceeds everything the process ever held before, so an earlier test could hide growth.
    """
    assert not tracemalloc.is_tracing()
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        problem = only_problem(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return problem, peak - baseline


def test_base_config_loads(write_config: WriteConfig) -> None:
    loaded = load(write_config(BASE), env=NO_ENV)
    target = loaded.config.targets["erp"]
    assert target.effective_port == 8443
    assert target.operations[0].methods == ["GET", "POST"]
    assert loaded.revision.startswith("sha256:")
    assert loaded.resolve_path("state") == loaded.file.parent / "state"


EXAMPLE = Path(__file__).parents[3] / "gateway.yaml.example"


def test_example_file_is_valid(tmp_path: Path) -> None:
    # With its one secret reference resolved, as systemd's LoadCredential= provides it: the
    # directory's bind identity password.
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    (credentials / "empowerid-ldap").write_text("sample-password\n", encoding="utf-8")
    (credentials / "empowerid-ldap").chmod(0o400)
    loaded = load(EXAMPLE, env={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert set(loaded.config.targets) == {"erp", "directory"}
    secret = loaded.secrets["targets.directory.ldap.bind_identities.empowerid.password"]
    assert secret.get_secret_value() == "sample-password"
    with pytest.raises(ConfigError) as caught:
        load(EXAMPLE, env={})
    assert [p.path for p in caught.value.problems] == [
        "targets.directory.ldap.bind_identities.empowerid.password"
    ]


def test_commented_credentials_of_the_example_are_valid(tmp_path: Path) -> None:
    # Uncommented, the credentials section and the erp target's credential load with every host
    # check: each kind's secret reference resolves.
    text = EXAMPLE.read_text(encoding="utf-8")
    start = text.index("# credentials:")
    end = text.index("\n\n", start)
    block = "\n".join(line.replace("# ", "", 1) for line in text[start:end].splitlines())
    text = text[:start] + block + text[end:]
    text = text.replace("    # credential: erp-api\n", "    credential: erp-api\n")
    path = tmp_path / "gateway.yaml"
    path.write_text(text, encoding="utf-8")
    (tmp_path / "policies").symlink_to(EXAMPLE.parent / "policies")
    systemd = tmp_path / "credentials"
    systemd.mkdir()
    (tmp_path / "secrets").mkdir()
    for secret in (
        systemd / "erp-client-secret",
        systemd / "hr-password",
        systemd / "empowerid-ldap",
    ):
        secret.write_text("sample\n")
        secret.chmod(0o400)
    (tmp_path / "secrets" / "legacy-api-key").write_text("sample-key\n")
    (tmp_path / "secrets" / "legacy-api-key").chmod(0o600)
    env = {"CREDENTIALS_DIRECTORY": str(systemd), "REPORTS_API_TOKEN": "sample-token"}
    loaded = load(path, env=env)
    kinds = {name: c.kind for name, c in loaded.config.credentials.items()}
    assert kinds == {
        "erp-api": "oauth2_client_credentials",
        "legacy-key": "header",
        "reports-token": "bearer",
        "hr-service": "basic",
    }
    assert loaded.config.targets["erp"].credential == "erp-api"
    assert len(loaded.secrets) == 5  # and the directory's bind identity


def test_commented_proxy_section_of_the_example_is_valid(tmp_path: Path) -> None:
    # The example documents the proxy section in comments; uncommented, it must load too.
    text = EXAMPLE.read_text(encoding="utf-8")
    start = text.index("# proxy:")
    end = text.index("\n\n", start)
    block = "\n".join(line.replace("# ", "", 1) for line in text[start:end].splitlines())
    path = tmp_path / "gateway.yaml"
    path.write_text(text[:start] + block + text[end:], encoding="utf-8")
    (tmp_path / "policies").symlink_to(EXAMPLE.parent / "policies")
    loaded = load(path, env={"GATEWAY_PROXY_PASSWORD": "s3cret"}, check_host=False)
    assert loaded.config.proxy is not None
    assert loaded.config.proxy.no_proxy == [".corp.example"]
    assert loaded.config.proxy.password is not None
    assert loaded.config.proxy.password.env == "GATEWAY_PROXY_PASSWORD"


def test_revision_changes_with_content_only(write_config: WriteConfig) -> None:
    first = load(write_config(BASE), env=NO_ENV).revision
    again = load(write_config("# a comment\n" + BASE), env=NO_ENV).revision
    changed = load(write_config(BASE.replace("GET, POST", "GET")), env=NO_ENV).revision
    assert first == again
    assert first != changed


@pytest.mark.parametrize(
    ("anchor", "insert", "path"),
    [
        ("version: 1\n", "colour: blue\n", "colour"),
        ("  id: agent-1\n", "  name: x\n", "gateway.name"),
        ("  url: https://tenant.empowerid.example\n", "  verify: true\n", "empowerid.verify"),
        ("policy:\n", "  engin: opa\n", "policy.engin"),
        ("    port: 8443\n", "    alow: [x]\n", "targets.erp.alow"),
        (
            "        methods: [GET, POST]\n",
            "        verfiy_tls: true\n",
            "targets.erp.operations[0].verfiy_tls",
        ),
    ],
)
def test_unknown_key_at_every_level(
    write_config: WriteConfig, anchor: str, insert: str, path: str
) -> None:
    text = BASE.replace(anchor, anchor + insert)
    problem = only_problem(write_config(text))
    assert problem.code == "unknown_key"
    assert problem.path == path
    expected_line = text[: text.index(anchor + insert)].count("\n") + anchor.count("\n") + 1
    assert problem.line == expected_line
    assert problem.render().startswith(f"{problem.file}:{expected_line}:")


def test_misspelt_key_gets_a_suggestion(write_config: WriteConfig) -> None:
    problem = only_problem(write_config(BASE.replace("allowed_cidrs", "alowed_cidrs")))
    assert problem.code == "unknown_key"
    assert "did you mean 'allowed_cidrs'?" in problem.hint


def test_missing_required_key(write_config: WriteConfig) -> None:
    problem = only_problem(write_config(BASE.replace("  id: agent-1\n", "")))
    assert (problem.code, problem.path) == ("missing_key", "gateway")
    assert "'id'" in problem.message


def test_every_missing_key_is_named_once(write_config: WriteConfig) -> None:
    # jsonschema reports each absent key as its own error; each must name its own key.
    problems = problems_of(write_config("version: 1\n"))
    assert [p.message for p in problems] == [
        "missing required key 'gateway'",
        "missing required key 'empowerid'",
        "missing required key 'targets'",
    ]


def test_a_mistyped_constant_is_reported_once(write_config: WriteConfig) -> None:
    problem = only_problem(write_config(BASE.replace("version: 1", 'version: "1"')))
    assert (problem.code, problem.path) == ("wrong_type", "version")
    assert "did you mean" not in problem.hint


@pytest.mark.parametrize(
    ("value", "code", "message"),
    [
        ("0", "out_of_range", "must be at least 1, got 0"),
        ("99", "out_of_range", "must be at most 24, got 99"),
        ("many", "wrong_type", "expected 'auto' or an integer, got the string 'many'"),
        ("'4'", "wrong_type", "expected 'auto' or an integer, got the string '4'"),
    ],
)
def test_a_value_fitting_no_alternative_says_what_fits(
    write_config: WriteConfig, value: str, code: str, message: str
) -> None:
    # workers is 'auto' or an integer from 1: the message must speak of the alternative the
    # value was meant for, not only of 'auto'.
    problem = only_problem(write_config(BASE + f"workers: {value}\n"))
    assert (problem.code, problem.path, problem.message) == (code, "workers", message)


@pytest.mark.parametrize(
    ("port", "code"),
    [
        ("0", "out_of_range"),
        ("65536", "out_of_range"),
        ("-1", "out_of_range"),
        ('"0443"', "wrong_type"),
        ("0443", "wrong_type"),  # YAML 1.1 would read octal 291
        ("0x20fb", "wrong_type"),
        ("8_443", "wrong_type"),
        ("8443.0", "wrong_type"),
        ("true", "wrong_type"),
    ],
)
def test_bad_ports(write_config: WriteConfig, port: str, code: str) -> None:
    problem = only_problem(write_config(BASE.replace("port: 8443", f"port: {port}")))
    assert (problem.code, problem.path, problem.line) == (code, "targets.erp.port", 13)


@pytest.mark.parametrize("value", ['"off"', "off", "no", '"false"', "0"])
def test_security_booleans_are_never_coerced(write_config: WriteConfig, value: str) -> None:
    text = BASE.replace(
        "    port: 8443\n", f"    port: 8443\n    tls:\n      insecure_skip_verify: {value}\n"
    )
    problem = only_problem(write_config(text))
    assert problem.code == "wrong_type"
    assert problem.path == "targets.erp.tls.insecure_skip_verify"
    assert "true or false" in problem.message


@pytest.mark.parametrize(
    ("methods", "code", "fragment"),
    [
        ("[get]", "invalid_choice", "write 'GET'"),
        ("[Get]", "invalid_choice", "write 'GET'"),
        ("[TRACE]", "forbidden_method", "TRACE is never relayed"),
        ("[CONNECT]", "forbidden_method", "tcp target"),
        ("[GET, GET]", "duplicate_entry", "listed twice"),
        ("[]", "empty_value", "must not be empty"),
    ],
)
def test_bad_methods(write_config: WriteConfig, methods: str, code: str, fragment: str) -> None:
    problem = only_problem(write_config(BASE.replace("[GET, POST]", methods)))
    assert problem.code == code
    assert fragment in problem.render()
    assert problem.line == 17


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("api/x", "not_absolute"),
        ("/api/../admin", "dot_segment"),
        ("/api/%2Fadmin", "forbidden_encoding"),
        ("/api/%2fadmin", "lowercase_percent_encoding"),
        ("/api//x", "empty_segment"),
        ('"/api\\\\x"', "backslash"),
        ("/api*", "partial_wildcard"),
        ("/api/**/x", "many_not_last"),
        ("/api/x;jsessionid=1", "matrix_parameter"),
        ("/api/%41", "non_canonical_encoding"),
        ("/api/%00", "forbidden_encoding"),
        ("/api/100%25", "forbidden_encoding"),
        ("/api/a%3Bb", "forbidden_encoding"),
        ("/api/a%3Fb", "forbidden_encoding"),
        ("/api/a%23b", "forbidden_encoding"),
    ],
)
def test_bad_path_patterns(write_config: WriteConfig, path: str, code: str) -> None:
    problem = only_problem(write_config(BASE.replace("[/api/*]", f"[{path}]")))
    assert (problem.code, problem.path, problem.line) == (
        code,
        "targets.erp.operations[0].paths[0]",
        18,
    )


@pytest.mark.parametrize(
    ("host", "hint"),
    [
        ('"*"', "wildcards"),
        ('"*.corp.local"', "wildcards"),
        ("erp.corp.local.", "trailing dot"),
        ("user@erp.corp.local", "user information"),
        ("erp.corp.local@evil.example", "user information"),
        ("ERP.corp.local", "lower case"),
        ("erp.corp.local:8443", "'port'"),
        ("https://erp.corp.local", "scheme"),
        ("erp%2ecorp.local", "percent-encoding"),
    ],
)
def test_bad_hosts(write_config: WriteConfig, host: str, hint: str) -> None:
    problem = only_problem(write_config(BASE.replace("host: erp.corp.local", f"host: {host}")))
    assert (problem.code, problem.path, problem.line) == ("invalid_host", "targets.erp.host", 12)
    assert hint in problem.hint


def test_ipv6_zone_id_is_refused(write_config: WriteConfig) -> None:
    text = BASE.replace("host: erp.corp.local", 'host: "fe80::1%eth0"')
    problem = only_problem(write_config(text))
    assert problem.code == "invalid_host"


def test_duplicate_yaml_keys(write_config: WriteConfig) -> None:
    text = BASE.replace("    port: 8443\n", "    port: 8443\n    port: 9443\n")
    problem = only_problem(write_config(text))
    assert (problem.code, problem.line, problem.column) == ("duplicate_key", 14, 5)
    assert "first defined on line 13" in problem.message


def test_duplicate_target_names(write_config: WriteConfig) -> None:
    target = BASE[BASE.index("  erp:\n") :]
    problem = only_problem(write_config(BASE + target))
    assert problem.code == "duplicate_key"
    assert problem.path == "targets.erp"


def test_yaml_syntax_error_reports_the_line(write_config: WriteConfig) -> None:
    problem = only_problem(write_config(BASE.replace("[GET, POST]", "[GET, POST")))
    assert problem.code == "yaml_syntax"
    assert problem.line == 18


def test_alias_bomb_is_rejected_with_bounded_memory(write_config: WriteConfig) -> None:
    bomb = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for index in range(1, 9):
        previous = chr(ord("a") + index - 1)
        name = chr(ord("a") + index)
        bomb.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
    path = write_config("\n".join(bomb) + "\n")
    problem, peak = refused_with_peak(path)
    # Refused, and refused before the expansion took memory (time is a benchmark's business):
    # the loader builds at most MAX_VALUES values (about 22 MB traced) before it refuses, where
    # the 9**9 references expanded would take tens of gigabytes.
    assert problem.code == "alias_expansion"
    assert peak < 64 * 1024 * 1024, peak


def test_recursive_alias(write_config: WriteConfig) -> None:
    problem = only_problem(write_config("a: &x [1, *x]\n"))
    assert problem.code == "recursive_alias"


@pytest.mark.parametrize(
    ("content", "code", "line"),
    [
        (b"", "empty_document", 1),
        (b"   \n\n", "empty_document", 1),
        (b"# only a comment\n", "empty_document", 1),
        (b"- a\n- b\n", "not_a_mapping", 1),
        (b"just text\n", "not_a_mapping", 1),
        (b"\xef\xbb\xbfversion: 1\n", "byte_order_mark", 1),
        (b"version: 1\nname: caf\xe9\n", "invalid_utf8", 2),
        (b"version: 1\n---\nversion: 1\n", "yaml_syntax", 2),
        (b"a: !!python/object/apply:os.system [id]\n", "explicit_tag", 1),
        (b"<<: {a: 1}\n", "merge_key", 1),
        (b"1: one\n", "non_string_key", 1),
        (b"version: 1\nname: a\x1fb\n", "invalid_character", 2),
        (b"? [a, b]\n: c\n", "non_string_key", 1),
    ],
)
def test_unusable_files(tmp_path: Path, content: bytes, code: str, line: int) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_bytes(content)
    problem = only_problem(path)
    assert (problem.code, problem.line) == (code, line)


def test_ten_megabyte_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_bytes(b"# padding\n" * 1_000_000)
    problem, peak = refused_with_peak(path)
    assert problem.code == "file_too_large"
    assert "10.0 MB" in problem.message
    # Not read: reading (and decoding) 10 MB would raise the peak memory by far more.
    assert peak < 1024 * 1024, peak


def test_missing_file(tmp_path: Path) -> None:
    problem = only_problem(tmp_path / "nope.yaml")
    assert problem.code == "unreadable"
    assert "GATEWAY_CONFIG" in problem.hint


def test_every_problem_is_reported_at_once(write_config: WriteConfig) -> None:
    text = BASE.replace("port: 8443", "port: 0").replace("[GET, POST]", "[get]")
    text = text.replace("version: 1\n", "version: 1\nextra: 1\n").replace("/api/*", "/api/../x")
    problems = problems_of(write_config(text))
    assert [p.code for p in problems] == [
        "unknown_key",
        "out_of_range",
        "invalid_choice",
        "dot_segment",
    ]
    assert [p.line for p in problems] == sorted(p.line for p in problems)


# --- semantic checks ---------------------------------------------------------------------------

SECOND_OPERATION = """\
      - name: {name}
        methods: [{methods}]
        paths: [{path}]
"""


@pytest.mark.parametrize(
    ("methods", "path", "code"),
    [
        ("GET", "/api/orders", "shadowed_operation"),
        ("DELETE, GET", "/api/**", "shadowed_operation"),
        ("GET", "/*/orders", "overlapping_operations"),
    ],
)
def test_overlapping_operations(
    write_config: WriteConfig, methods: str, path: str, code: str
) -> None:
    text = BASE + SECOND_OPERATION.format(name="second", methods=methods, path=path)
    problem = only_problem(write_config(text))
    assert (problem.code, problem.path) == (code, "targets.erp.operations[1]")
    assert problem.line == 19


def test_disjoint_operations_are_fine(write_config: WriteConfig) -> None:
    text = BASE + SECOND_OPERATION.format(name="delete", methods="DELETE", path="/api/*")
    text += SECOND_OPERATION.format(name="admin", methods="GET", path="/apiadmin/*")
    load(write_config(text), env=NO_ENV)


def test_duplicate_operation_name(write_config: WriteConfig) -> None:
    text = BASE + SECOND_OPERATION.format(name="read-orders", methods="DELETE", path="/api/*")
    problem = only_problem(write_config(text))
    assert (problem.code, problem.path) == ("duplicate_operation", "targets.erp.operations[1].name")


def test_redundant_path_inside_operation(write_config: WriteConfig) -> None:
    problem = only_problem(write_config(BASE.replace("[/api/*]", "[/api/**, /api/x]")))
    assert problem.code == "redundant_path"
    assert problem.path == "targets.erp.operations[0].paths[1]"


@pytest.mark.parametrize(
    ("cidr", "code", "hint"),
    [
        ("0.0.0.0/0", "special_range", "allow_special_addresses"),
        ("127.0.0.0/8", "special_range", "allow_special_addresses"),
        ("169.254.169.254/32", "special_range", "allow_special_addresses"),
        ("168.63.129.16/32", "special_range", "allow_special_addresses"),
        ("::/0", "special_range", "allow_special_addresses"),
        ("10.1.2.3/24", "invalid_cidr", "did you mean 10.1.2.0/24?"),
        ("10.1.2.0/33", "invalid_cidr", ""),
    ],
)
def test_bad_cidrs(write_config: WriteConfig, cidr: str, code: str, hint: str) -> None:
    problem = only_problem(write_config(BASE.replace("[10.1.2.0/24]", f'["{cidr}"]')))
    assert (problem.code, problem.path) == (code, "targets.erp.allowed_cidrs[0]")
    assert hint in problem.hint


def test_special_range_allowed_with_the_explicit_flag(write_config: WriteConfig) -> None:
    text = BASE.replace("[10.1.2.0/24]", "[127.0.0.1/32]\n    allow_special_addresses: true")
    load(write_config(text), env=NO_ENV)


def test_hostname_target_needs_cidrs_but_ip_literal_does_not(write_config: WriteConfig) -> None:
    text = BASE.replace("    allowed_cidrs: [10.1.2.0/24]\n", "")
    assert only_problem(write_config(text)).code == "missing_key"
    load(write_config(text.replace("host: erp.corp.local", "host: 10.1.2.3")), env=NO_ENV)
    outside = BASE.replace("host: erp.corp.local", "host: 10.9.9.9")
    assert only_problem(write_config(outside)).code == "host_outside_cidrs"


def test_two_targets_with_the_same_host_and_port(write_config: WriteConfig) -> None:
    twin = BASE[BASE.index("  erp:\n") :].replace("  erp:", "  erp2:")
    problem = only_problem(write_config(BASE + twin))
    assert (problem.code, problem.path) == ("duplicate_target", "targets.erp2.host")


def test_forbidden_header_in_allow_list(write_config: WriteConfig) -> None:
    text = BASE.replace(
        "        paths: [/api/*]\n",
        "        paths: [/api/*]\n        headers: [Authorization, X-Forwarded-For]\n",
    )
    problem = only_problem(write_config(text))
    assert (problem.code, problem.path) == (
        "forbidden_header",
        "targets.erp.operations[0].headers[1]",
    )


def test_tcp_target_rules(write_config: WriteConfig) -> None:
    text = BASE.replace("scheme: https", "scheme: tcp")
    problem = only_problem(write_config(text))
    assert (problem.code, problem.path) == ("unused_setting", "targets.erp.operations")
    no_port = text.replace("    port: 8443\n", "")
    codes = {p.code for p in problems_of(write_config(no_port))}
    assert "missing_key" in codes


def test_target_limit_above_global(write_config: WriteConfig) -> None:
    text = BASE.replace(
        "    port: 8443\n", "    port: 8443\n    limits:\n      max_concurrent_requests: 100000\n"
    )
    problem = only_problem(write_config(text))
    assert (problem.code, problem.path) == (
        "exceeds_global_limit",
        "targets.erp.limits.max_concurrent_requests",
    )


def test_insecure_relay_endpoint_only_on_loopback(write_config: WriteConfig) -> None:
    ok = BASE.replace("policy:\n", "relay:\n  endpoint: ws://127.0.0.1:9400\npolicy:\n")
    load(write_config(ok), env=NO_ENV)
    bad = ok.replace("127.0.0.1", "relay.example")
    assert only_problem(write_config(bad)).code == "insecure_endpoint"


def test_rendezvous_settings_of_the_relay(write_config: WriteConfig) -> None:
    dev = "relay:\n  endpoint: ws://127.0.0.1:9400\n  rendezvous_endpoint: ws://127.0.0.2:9401\n"
    load(write_config(BASE.replace("policy:\n", dev + "policy:\n")), env=NO_ENV)
    remote = dev.replace("127.0.0.2", "relay.example")
    problem = only_problem(write_config(BASE.replace("policy:\n", remote + "policy:\n")))
    assert (problem.code, problem.path) == ("insecure_endpoint", "relay.rendezvous_endpoint")
    alone = "relay:\n  rendezvous_endpoint: wss://127.0.0.2:9401\n"
    problem = only_problem(write_config(BASE.replace("policy:\n", alone + "policy:\n")))
    assert problem.code == "conflicting_settings"
    cloud = "relay:\n  rendezvous_domain: servicebus.usgovcloudapi.net\n"
    loaded = load(write_config(BASE.replace("policy:\n", cloud + "policy:\n")), env=NO_ENV)
    assert loaded.config.relay.rendezvous_domain == "servicebus.usgovcloudapi.net"


def test_relay_pings_must_come_before_azure_drops_an_idle_socket(
    write_config: WriteConfig,
) -> None:
    # Protocol notes section 7: Azure drops a connection idle for about 4 minutes.
    within = "relay:\n  ping_interval_seconds: 210\n"
    load(write_config(BASE.replace("policy:\n", within + "policy:\n")), env=NO_ENV)
    beyond = within.replace("210", "211")
    problem = only_problem(write_config(BASE.replace("policy:\n", beyond + "policy:\n")))
    assert problem.path == "relay.ping_interval_seconds"


# --- secrets ------------------------------------------------------------------------------------

PROXY = """\
proxy:
  url: http://127.0.0.1:3128
  username: svc
  password: {password}
"""


def test_inline_proxy_password_is_refused(write_config: WriteConfig) -> None:
    problem = only_problem(write_config(BASE + PROXY.format(password="hunter2")))
    assert (problem.code, problem.path) == ("inline_secret", "proxy.password")
    assert "hunter2" not in problem.render()


def test_secret_from_env_and_file(write_config: WriteConfig, tmp_path: Path) -> None:
    path = write_config(BASE + PROXY.format(password="{env: PROXY_PW}"))
    assert load(path, env={"PROXY_PW": "pw1"}).secrets["proxy.password"].get_secret_value() == "pw1"
    (tmp_path / "pw").write_text("pw2\n")
    (tmp_path / "pw").chmod(0o600)
    path = write_config(BASE + PROXY.format(password="{file: pw}"))
    assert load(path, env=NO_ENV).secrets["proxy.password"].get_secret_value() == "pw2"


def test_missing_secret_env_var(write_config: WriteConfig) -> None:
    path = write_config(BASE + PROXY.format(password="{env: PROXY_PW}"))
    problem = only_problem(path)
    assert (problem.code, problem.path, problem.line) == ("missing_secret", "proxy.password", 22)
    assert "PROXY_PW" in problem.message
    load(path, env=NO_ENV, check_host=False)


def test_secret_reference_needs_exactly_one_source(write_config: WriteConfig) -> None:
    path = write_config(BASE + PROXY.format(password="{env: A, file: b}"))
    assert only_problem(path, env={"A": "x"}).code == "invalid_secret_ref"


# --- environment overrides ----------------------------------------------------------------------


def test_environment_override_is_applied_and_reported(write_config: WriteConfig) -> None:
    loaded = load(write_config(BASE), env={"GATEWAY_RELAY__CONNECTIONS": "4"})
    assert loaded.config.relay.connections == 4
    assert [(o.path, o.variable) for o in loaded.overrides] == [
        ("relay.connections", "GATEWAY_RELAY__CONNECTIONS")
    ]


def test_environment_override_is_checked_like_the_file(write_config: WriteConfig) -> None:
    problem = only_problem(write_config(BASE), env={"GATEWAY_RELAY__CONNECTIONS": "0443"})
    assert problem.code == "wrong_type"
    assert problem.file == "environment GATEWAY_RELAY__CONNECTIONS"


@pytest.mark.parametrize(
    "variable",
    ["GATEWAY_TARGETS__ERP__PORT", "GATEWAY_POLICY__MODE", "GATEWAY_LIMITS__MAX_PATH_BYTES"],
)
def test_security_settings_cannot_be_overridden(write_config: WriteConfig, variable: str) -> None:
    problem = only_problem(write_config(BASE), env={variable: "1"})
    assert problem.code == "override_refused"


def test_unknown_top_level_override_is_a_warning(write_config: WriteConfig) -> None:
    # Platforms add variables of their own: Kubernetes sets GATEWAY_PORT for a service "gateway".
    loaded = load(
        write_config(BASE), env={"GATEWAY_PORT": "tcp://10.0.0.1:80", "GATEWAY_RELAYS": "1"}
    )
    hints = {w.file: w.hint for w in loaded.warnings}
    assert set(hints) == {"environment GATEWAY_PORT", "environment GATEWAY_RELAYS"}
    # Never a wrong guess: GATEWAY_PORT is not a misspelt GATEWAY_PROXY.
    assert "Kubernetes" in hints["environment GATEWAY_PORT"]
    assert "did you mean" not in hints["environment GATEWAY_PORT"]
    assert hints["environment GATEWAY_RELAYS"] == ""


@pytest.mark.parametrize(
    "variable",
    ["GATEWAY_SERVICE_HOST", "GATEWAY_SERVICE_PORT", "GATEWAY_PORT_9464_TCP_ADDR"],
)
def test_kubernetes_service_links_are_explained(write_config: WriteConfig, variable: str) -> None:
    [warning] = load(write_config(BASE), env={variable: "10.0.0.1"}).warnings
    assert "Kubernetes" in warning.hint


def test_single_underscore_for_nesting_gets_the_right_name(write_config: WriteConfig) -> None:
    [warning] = load(write_config(BASE), env={"GATEWAY_LOGGING_LEVEL": "debug"}).warnings
    assert warning.hint == "did you mean GATEWAY_LOGGING__LEVEL? nested keys are joined by '__'"


def test_misspelt_nested_override_is_an_error_with_suggestion(write_config: WriteConfig) -> None:
    problem = only_problem(write_config(BASE), env={"GATEWAY_RELAY__CONECTIONS": "3"})
    assert (problem.code, problem.file) == ("unknown_key", "environment GATEWAY_RELAY__CONECTIONS")
    assert problem.hint == "did you mean 'connections'?"


def test_replay_store_settings(write_config: WriteConfig) -> None:
    redis = (
        "signatures:\n  replay_store:\n    kind: redis\n    redis:\n      host: 127.0.0.1\n"
        "      tls: false\n      password: {env: REDIS_PASSWORD}\npolicy:\n"
    )
    loaded = load(write_config(BASE.replace("policy:\n", redis)), env={"REDIS_PASSWORD": "x"})
    assert loaded.config.signatures.replay_store.kind == "redis"
    # The password and every nonce would cross the network in clear text.
    remote = redis.replace("127.0.0.1", "redis.corp.local")
    problem = only_problem(write_config(BASE.replace("policy:\n", remote)), {"REDIS_PASSWORD": "x"})
    assert (problem.code, problem.path) == (
        "insecure_endpoint",
        "signatures.replay_store.redis.tls",
    )
    bare = "signatures:\n  replay_store:\n    kind: redis\npolicy:\n"
    problem = only_problem(write_config(BASE.replace("policy:\n", bare)))
    assert (problem.code, problem.path) == ("missing_key", "signatures.replay_store")
    unused = "signatures:\n  replay_store:\n    kind: memory\n    sqlite_path: r.db\npolicy:\n"
    problem = only_problem(write_config(BASE.replace("policy:\n", unused)))
    assert problem.code == "unused_setting"
    # A password is never written inline.
    inline = redis.replace("{env: REDIS_PASSWORD}", "hunter2")
    assert problems_of(write_config(BASE.replace("policy:\n", inline)))


@pytest.mark.parametrize(
    ("section", "path", "message"),
    [
        (
            "empowerid:\n  url: https://tenant.empowerid.example:99999\n",
            "empowerid.url",
            "port 99999 in 'https://tenant.empowerid.example:99999' is out of range",
        ),
        (
            "relay:\n  endpoint: wss://relay.example:70000/\n",
            "relay.endpoint",
            "port 70000 in 'wss://relay.example:70000/' is out of range",
        ),
        (
            "proxy:\n  url: http://proxy.corp.local:3128x\n",
            "proxy.url",
            "'3128x' in 'http://proxy.corp.local:3128x' is not a port",
        ),
        (
            "observability:\n  listen: 127.0.0.1:99999\n",
            "observability.listen",
            "port 99999 in '127.0.0.1:99999' is out of range",
        ),
    ],
)
def test_a_port_out_of_range_is_refused_where_it_is_written(
    write_config: WriteConfig, section: str, path: str, message: str
) -> None:
    # The patterns take any digits; register and check then died in a traceback, and a health
    # port of 99999 was bound as 34463 while status looked at 99999.
    text = BASE.replace("empowerid:\n  url: https://tenant.empowerid.example\n", "")
    if not section.startswith("empowerid"):
        text += "empowerid:\n  url: https://tenant.empowerid.example\n"
    problem = only_problem(write_config(text + section))
    assert (problem.code, problem.path, problem.message) == ("invalid_port", path, message)
    assert problem.line == text.count("\n") + 2


def test_the_health_endpoint_may_take_any_free_port(write_config: WriteConfig) -> None:
    loaded = load(write_config(BASE + "observability:\n  listen: 127.0.0.1:0\n"), env=NO_ENV)
    assert loaded.config.observability.listen == "127.0.0.1:0"


def test_the_decision_log_must_be_writable_where_it_is_written(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    def audit(value: str) -> Path:
        return write_config(BASE + f"logging:\n  audit_file: {value}\n")

    load(audit("decisions.jsonl"), env=NO_ENV)
    load(audit("/dev/stdout"), env=NO_ENV)  # a device is written, never created or rotated
    missing = only_problem(audit("logs/decisions.jsonl"))
    assert (missing.code, missing.path) == ("unwritable_file", "logging.audit_file")
    assert f"directory '{tmp_path / 'logs'}' of the decision log does not exist" in missing.message
    assert "LogsDirectory=" in missing.hint
    folder = only_problem(audit(str(tmp_path)))
    assert folder.message == f"'{tmp_path}' is a directory"
    # Away from the host (CI), the directory is not looked at.
    load(audit("logs/decisions.jsonl"), env=NO_ENV, check_host=False)


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("ERP", "write it in lower case: 'erp'"),
        ("'erp api'", "names use lower-case letters, digits, '-' and '_' (at most 64)"),
    ],
)
def test_a_target_name_outside_the_pattern_is_named_with_what_to_write(
    write_config: WriteConfig, name: str, hint: str
) -> None:
    # The schema let any name through; the model then refused it in its own words, at
    # "targets.ERP['[key]']".
    problem = only_problem(write_config(BASE.replace("\n  erp:\n", f"\n  {name}:\n")))
    written = name.strip("'")
    assert (problem.code, problem.message, problem.hint) == (
        "invalid_name",
        f"name {written!r} is not allowed",
        hint,
    )
    assert (problem.line, problem.column) == (10, 3)
