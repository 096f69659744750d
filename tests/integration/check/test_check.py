"""``gateway check`` against the devkit: real relay emulator, control-plane simulator, squid.

Each failure case breaks one real thing (control plane stopped, a TLS-intercepting proxy, wrong
proxy credentials, a relay refusing listeners, a deleted Hybrid Connection, a shifted clock, a
loose state directory) and asserts the line an operator would read: the failing check, its
message and its hint, and that the checks depending on it were skipped rather than run.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import re
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import redis
import trustme

from gateway import eventloop
from gateway.auth.redisstore import marker_key
from gateway.auth.sqlitestore import SqliteReplayStore
from gateway.devkit.opa_server import OpaServer
from gateway.devkit.relay_emulator import QUOTA_TEXT
from gateway.devkit.stack import demo_config
from gateway.diagnostics import (
    CHECK_NAMES,
    CheckResult,
    DiagnosticsOptions,
    all_passed,
    render_text,
    run_checks,
)
from gateway.forward.dial import IPAddress

from ...redisserver import PASSWORD as REDIS_PASSWORD
from ...redisserver import RedisServer
from ..squid import PASSWORD as PROXY_PASSWORD
from ..squid import USERNAME as PROXY_USERNAME
from ..squid import Squid
from .conftest import Registered

pytestmark = pytest.mark.asyncio

GATEWAY = [sys.executable, "-m", "gateway"]


async def _check(
    config: Path,
    *,
    env: dict[str, str] | None = None,
    clock_offset: float = 0.0,
    per_check: float = 5.0,
    resolver: dict[str, list[str]] | None = None,
) -> dict[str, CheckResult]:
    async def table(host: str, port: int) -> Sequence[IPAddress]:
        assert resolver is not None
        if host not in resolver:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ipaddress.ip_address(a) for a in resolver[host]]

    options = DiagnosticsOptions(
        config_path=str(config),
        env=env or {},
        clock=lambda: time.time() + clock_offset,
        timeout=per_check,
    )
    if resolver is not None:
        options.resolver = table
    results = await run_checks(options)
    assert [r.name for r in results] == list(CHECK_NAMES)
    return {r.name: r for r in results}


def _statuses(results: dict[str, CheckResult]) -> dict[str, str]:
    return {name: r.status for name, r in results.items()}


async def test_every_check_passes_against_a_healthy_devkit(registered: Registered) -> None:
    results = await _check(registered.config)
    assert _statuses(results) == {
        "config": "ok",
        "event_loop": "ok",
        "credentials": "ok",
        "state_dir": "ok",
        "identity": "ok",
        "dns": "ok",
        "proxy": "skip",
        "tls": "ok",
        "relay_info": "ok",
        "relay": "ok",
        "clock": "ok",
        "replay_store": "ok",
        "policy_engine": "ok",
        "targets": "ok",
    }, render_text(list(results.values()))
    assert all_passed(list(results.values()))
    assert results["targets"].detail.startswith("2 reachable: erp (http), directory ")
    assert "the CA pinned at registration" in results["tls"].detail
    # The loop `gateway run` would pick here: uvloop wherever it is installed (a dependency).
    expected = eventloop.pick("auto").describe()
    assert results["event_loop"].detail.startswith(f"gateway run serves on {expected} "), results
    assert registered.stack.hc in results["relay"].detail
    # The budget every gateway on the HC shares (one gateway, one worker, 2 connections).
    assert "listeners: 1 gateway(s) x 1 worker(s) x 2 = 2 of 25" in results["relay"].detail
    # The check's listener is gone again: it must not hold one of the 25 listener slots.
    assert registered.stack.relay.listener_count(registered.stack.hc) == 0
    # relay-info went over mTLS with the registered certificate.
    calls = [r for r in registered.stack.controlplane.requests if r.path.endswith("relay-info")]
    assert [c.client_gateway_id for c in calls] == [registered.stack.gateway_id]


async def test_control_plane_down_fails_tls_and_skips_what_needs_it(
    registered: Registered,
) -> None:
    await registered.stack.controlplane.close()
    results = await _check(registered.config)
    assert results["tls"].status == "fail"
    assert "cannot connect" in results["tls"].detail
    assert "firewall" in results["tls"].hint
    for dependent in ("relay_info", "relay", "clock"):
        assert results[dependent].status == "skip", dependent
    assert results["identity"].status == "ok"
    assert not all_passed(list(results.values()))


async def _intercepting_proxy(
    ca: trustme.CA,
) -> tuple[asyncio.Server, list[bytes]]:
    """A CONNECT proxy that terminates TLS itself with a certificate from its own CA, as a
    TLS-inspecting corporate proxy does."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
            seen.append(head.split(b"\r\n", 1)[0])
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await asyncio.wait_for(writer.start_tls(server_context), 60)
            await asyncio.wait_for(reader.read(65536), 60)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, seen


async def test_tls_interception_is_detected_on_tls_and_relay_info(registered: Registered) -> None:
    server, seen = await _intercepting_proxy(trustme.CA())
    try:
        port = server.sockets[0].getsockname()[1]
        registered.rewrite(proxy={"url": f"http://127.0.0.1:{port}"})
        results = await _check(registered.config)
    finally:
        server.close()
        await server.wait_closed()
    assert results["proxy"].status == "ok"
    assert results["tls"].status == "fail"
    assert "TLS interception" in results["tls"].detail
    assert "exempt the EmpowerID host from TLS inspection" in results["tls"].hint
    assert results["relay_info"].status == "skip"
    assert any(line.startswith(b"CONNECT 127.0.0.1:") for line in seen)


async def test_proxy_with_wrong_credentials_reports_407(
    registered: Registered, squid_auth_proxy: Squid
) -> None:
    registered.rewrite(
        proxy={
            "url": squid_auth_proxy.url,
            "username": PROXY_USERNAME,
            "password": {"env": "GW_PROXY_PASSWORD"},
            "no_proxy": ["localhost"],
        },
        relay={"connections": 1, "endpoint": registered.stack.relay.ws_base},
    )
    results = await _check(registered.config, env={"GW_PROXY_PASSWORD": "not-the-password"})
    assert results["proxy"].status == "fail"
    assert "407" in results["proxy"].detail
    assert "rejected the credentials" in results["proxy"].detail
    assert "proxy.username" in results["proxy"].hint
    assert results["tls"].status == "fail"
    assert "407" in results["tls"].detail
    assert "not-the-password" not in render_text(list(results.values()))


async def test_everything_passes_through_an_authenticating_squid(
    registered: Registered, squid_auth_proxy: Squid
) -> None:
    # EmpowerID goes through squid; the plain-text emulator endpoint is exempted by name.
    relay_port = registered.stack.relay.port
    registered.rewrite(
        proxy={
            "url": squid_auth_proxy.url,
            "username": PROXY_USERNAME,
            "password": {"env": "GW_PROXY_PASSWORD"},
            "no_proxy": ["localhost"],
        },
        relay={"connections": 1, "endpoint": f"ws://localhost:{relay_port}"},
    )
    results = await _check(
        registered.config,
        env={"GW_PROXY_PASSWORD": PROXY_PASSWORD},
        resolver={"localhost": ["127.0.0.1"]},
    )
    assert all_passed(list(results.values())), render_text(list(results.values()))
    assert results["proxy"].status == "ok"
    cp_port = registered.stack.controlplane.base_url.rstrip("/").rsplit(":", 1)[1]
    assert f"CONNECT 127.0.0.1:{cp_port} allowed" in results["proxy"].detail
    assert "localhost" in results["proxy"].detail
    assert "direct (no_proxy)" in results["proxy"].detail
    log = await squid_auth_proxy.wait_for_log(f"CONNECT 127.0.0.1:{cp_port}")
    assert f"CONNECT 127.0.0.1:{cp_port}" in log


async def test_unreachable_proxy(registered: Registered, refused_port: int) -> None:
    closed = refused_port
    registered.rewrite(proxy={"url": f"http://127.0.0.1:{closed}"})
    results = await _check(registered.config)
    assert results["proxy"].status == "fail"
    assert f"cannot connect to proxy 127.0.0.1:{closed}" in results["proxy"].detail
    assert results["tls"].status == "fail"


async def test_unresolvable_proxy_is_named_not_empowerid(registered: Registered) -> None:
    # RFC 6761 section 6.4: names under .invalid never resolve.
    registered.rewrite(proxy={"url": "http://proxy.gateway-test.invalid:3128"})
    results = await _check(registered.config)
    assert results["tls"].status == "fail"
    assert "proxy proxy.gateway-test.invalid:3128" in results["tls"].detail
    assert "127.0.0.1" not in results["tls"].detail
    assert "proxy check" in results["tls"].hint


async def test_unresolvable_relay_host(registered: Registered) -> None:
    registered.rewrite(
        relay={"connections": 1, "endpoint": f"ws://localhost:{registered.stack.relay.port}"}
    )
    results = await _check(registered.config, resolver={})
    assert results["dns"].status == "fail"
    assert "relay localhost" in results["dns"].detail
    assert "resolv.conf" in results["dns"].hint


@pytest.mark.parametrize(
    ("status", "expected"),
    [(403, "refused the listener token (HTTP 403)"), (401, "(HTTP 401)"), (500, "HTTP 500")],
)
async def test_relay_refusing_listeners(registered: Registered, status: int, expected: str) -> None:
    registered.stack.relay.refuse_listens(status)
    results = await _check(registered.config)
    assert results["relay_info"].status == "ok"
    assert results["relay"].status == "fail"
    assert expected in results["relay"].detail


async def test_listener_quota_has_its_own_hint(registered: Registered) -> None:
    registered.stack.relay.refuse_listens(403, QUOTA_TEXT)
    results = await _check(registered.config)
    assert results["relay"].status == "fail"
    assert "listener quota reached" in results["relay"].detail
    assert "relay.connections" in results["relay"].hint
    assert "workers" in results["relay"].hint


async def test_deleted_hybrid_connection_is_named(registered: Registered) -> None:
    registered.stack.controlplane.hybrid_connection = "hc-deleted"
    results = await _check(registered.config)
    assert results["relay"].status == "fail"
    assert "no Hybrid Connection 'hc-deleted' (HTTP 404)" in results["relay"].detail
    assert "recreate" in results["relay"].hint


# -45 s stays inside the minute the simulator back-dates certificates by, so only the clock fails.
@pytest.mark.parametrize("offset", [120.0, -45.0])
async def test_clock_skew_beyond_the_signature_tolerance_fails(
    registered: Registered, offset: float
) -> None:
    results = await _check(registered.config, clock_offset=offset)
    assert results["clock"].status == "fail"
    measured = re.search(r"local clock is ([+-][0-9]+) s from EmpowerID", results["clock"].detail)
    assert measured is not None
    # The Date header has a resolution of one second.
    assert abs(int(measured.group(1)) - offset) <= 1
    assert "tolerated: 30 s" in results["clock"].detail
    assert "NTP" in results["clock"].hint
    assert results["identity"].status == "ok"


async def test_loose_state_directory_permissions(registered: Registered) -> None:
    state = registered.directory / "state"
    state.chmod(0o755)
    results = await _check(registered.config)
    assert results["state_dir"].status == "fail"
    assert "mode 0755" in results["state_dir"].detail
    assert results["state_dir"].hint == f"chmod 700 {state}"
    assert results["identity"].status == "skip"
    assert results["relay_info"].status == "skip"


async def test_unregistered_gateway(registered: Registered, tmp_path: Path) -> None:
    fresh = registered.stack.write_gateway_dir(tmp_path / "fresh")
    (tmp_path / "fresh" / "state").mkdir(mode=0o700)
    results = await _check(fresh)
    assert results["identity"].status == "fail"
    assert results["identity"].detail.startswith("not_registered: ")
    # The code once: the error's own text already starts with it.
    assert results["identity"].detail.count("not_registered") == 1
    assert "gateway register" in results["identity"].hint
    # Without an identity TLS is still checked, against empowerid.ca_file.
    assert results["tls"].status == "ok"
    assert "empowerid.ca_file" in results["tls"].detail


async def test_invalid_configuration_skips_everything_else(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("version: 1\ngateway: {id: Bad_Id}\n", encoding="utf-8")
    results = await _check(config)
    assert results["config"].status == "fail"
    assert "gateway validate" in results["config"].hint
    assert {r.status for name, r in results.items() if name != "config"} == {"skip"}


@contextlib.asynccontextmanager
async def _silent_server() -> AsyncIterator[int]:
    """Accepts TCP connections and never says a word (a filtering middlebox)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_every_check_is_bounded_by_the_timeout(registered: Registered) -> None:
    async with _silent_server() as port:
        registered.rewrite(relay={"connections": 1, "endpoint": f"ws://127.0.0.1:{port}"})
        # The server accepts and stays silent for ever: the check ends only by its own bound.
        results = await _check(registered.config, per_check=0.5)
    assert results["relay"].status == "fail"
    assert "did not finish within 0.5 s" in results["relay"].detail
    assert "firewall" in results["relay"].hint


async def test_registered_url_differing_from_the_configuration_is_a_warning(
    registered: Registered,
) -> None:
    registered.rewrite(empowerid={"url": "https://127.0.0.1:9", "ca_file": "empowerid-ca.pem"})
    results = await _check(registered.config)
    assert results["identity"].status == "warn"
    assert "registered with" in results["identity"].detail
    assert "https://127.0.0.1:9" in results["identity"].detail
    # The agent talks to the URL it registered with, and so does the check.
    assert results["tls"].status == "ok"
    assert all_passed(list(results.values()))


async def _cli(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *GATEWAY,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode()


async def test_cli_json_and_text_output_and_exit_codes(registered: Registered) -> None:
    code, out = await _cli("check", "-c", str(registered.config), "--format", "json")
    assert code == 0, out
    report = json.loads(out)
    assert report["ok"] is True
    assert [c["name"] for c in report["checks"]] == list(CHECK_NAMES)

    registered.stack.relay.refuse_listens(403)
    code, out = await _cli("check", "-c", str(registered.config), "--timeout", "5")
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith("ok    config")
    failed = [line for line in lines if line.startswith("FAIL")]
    assert failed == [line for line in lines if line.startswith("FAIL  relay ")]
    assert lines[-1] == f"{len(CHECK_NAMES)} checks: 1 failed, 0 warnings"


async def test_replay_store_check_probes_a_real_redis(
    registered: Registered, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis-data")
    server.directory.mkdir()
    server.start()
    try:
        document = demo_config(registered.stack)
        store = server.replay_store({"env": "REDIS_PASSWORD"})
        signatures = {**document.get("signatures", {}), "replay_store": store}
        registered.rewrite(signatures=signatures)
        results = await _check(registered.config, env={"REDIS_PASSWORD": REDIS_PASSWORD})
        # A store never used before answers with its start barrier: a warning that says so.
        assert results["replay_store"].status == "warn", results["replay_store"]
        assert "new or lost its memory" in results["replay_store"].detail
        results = await _check(registered.config, env={"REDIS_PASSWORD": REDIS_PASSWORD})
        assert results["replay_store"].status == "warn"
        wrong = await _check(registered.config, env={"REDIS_PASSWORD": "not-the-password-x9"})
        assert wrong["replay_store"].status == "fail"
        assert "probe answered unavailable" in wrong["replay_store"].detail
        # The error, as the unit tests of the store see it (redis-py may still be retrying).
        assert re.search(r"\((?:AuthenticationError: |TimeoutError)", wrong["replay_store"].detail)
        assert "not-the-password-x9" not in wrong["replay_store"].detail
        # Another gateway of this Hybrid Connection keeps its nonces under another key_prefix:
        # the nonce memory is split, which the check names; the check itself claims nothing.
        marker = marker_key(registered.stack.hc)
        with redis.Redis(host="127.0.0.1", port=server.port, password=REDIS_PASSWORD) as raw:
            assert raw.get(marker) is None
            raw.set(marker, "other:", px=60_000)
        split = await _check(registered.config, env={"REDIS_PASSWORD": REDIS_PASSWORD})
        assert split["replay_store"].status == "fail"
        assert "under key prefix 'other:', this one under 'gateway:replay:{" in (
            split["replay_store"].detail
        )
        with redis.Redis(host="127.0.0.1", port=server.port, password=REDIS_PASSWORD) as raw:
            raw.delete(marker)
        # A server that may evict nonces (a managed-service default) is named with its fix.
        with redis.Redis(host="127.0.0.1", port=server.port, password=REDIS_PASSWORD) as raw:
            raw.config_set("maxmemory", "64mb")
            raw.config_set("maxmemory-policy", "volatile-lru")
        evicting = await _check(registered.config, env={"REDIS_PASSWORD": REDIS_PASSWORD})
        assert evicting["replay_store"].status == "fail"
        assert (
            "(maxmemory 67108864 with maxmemory-policy volatile-lru evicts nonces; "
            in evicting["replay_store"].detail
        )
        assert "maxmemory-policy noeviction" in evicting["replay_store"].detail
        server.stop()
        down = await _check(registered.config, env={"REDIS_PASSWORD": REDIS_PASSWORD})
        assert down["replay_store"].status == "fail"
    finally:
        server.stop()


async def test_replay_store_check_probes_sqlite(registered: Registered) -> None:
    signatures = {"replay_store": {"kind": "sqlite", "sqlite_path": "nonces.sqlite3"}}
    registered.rewrite(signatures=signatures)
    results = await _check(registered.config)
    assert results["replay_store"].status == "warn"
    assert "does not exist yet" in results["replay_store"].detail
    SqliteReplayStore.initialise(registered.directory / "nonces.sqlite3")
    results = await _check(registered.config)
    assert results["replay_store"].status == "ok", results["replay_store"]
    assert "admits a nonce once" in results["replay_store"].detail


async def test_a_target_outside_its_networks_or_without_tls_is_a_warning(
    registered: Registered,
) -> None:
    # Dialled by the dial step gateway run uses: the name resolves (here by a table) to an
    # address outside allowed_cidrs, which every request would be refused for.
    document = demo_config(registered.stack)
    targets = document["targets"]
    erp = {**targets["erp"], "host": "erp.corp.test", "allowed_cidrs": ["10.1.2.0/24"]}
    erp.pop("allow_special_addresses")
    registered.rewrite(targets={**targets, "erp": erp})
    table = {
        "erp.corp.test": ["127.0.0.1"],
        "127.0.0.1": ["127.0.0.1"],
        # The control plane and relay of the devkit listen on loopback addresses.
        "localhost": ["127.0.0.1"],
    }
    results = await _check(registered.config, resolver=table)
    assert results["targets"].status == "warn", render_text(list(results.values()))
    assert results["targets"].detail == (
        "erp: resolved_address_not_allowed: erp.corp.test resolved to 127.0.0.1, none inside "
        "allowed_cidrs"
    )
    assert all_passed(list(results.values()))
    # An https target that answers in plain HTTP: the handshake the forward would make fails.
    registered.rewrite(targets={**targets, "erp": {**targets["erp"], "scheme": "https"}})
    results = await _check(registered.config)
    assert results["targets"].status == "warn"
    assert results["targets"].detail.startswith("erp: upstream_tls: ")


async def test_many_targets_that_never_answer_are_each_named_not_a_failed_line(
    registered: Registered,
) -> None:
    # 40 https targets whose server takes the connection and never answers the TLS handshake (a
    # stalled middlebox): 16 probes at a time, each waiting its 30 s connect timeout, would take
    # minutes; the line used to fail "did not finish". Each is now named, as a warning.
    silent: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)

    servers = [await asyncio.start_server(hold, "127.0.0.1", 0) for _ in range(40)]
    try:
        document = demo_config(registered.stack)
        erp = document["targets"]["erp"]
        stalled = {
            f"stalled-{index:02d}": {
                **erp,
                "scheme": "https",
                "port": server.sockets[0].getsockname()[1],
            }
            for index, server in enumerate(servers)
        }
        registered.rewrite(
            targets={**document["targets"], **stalled},
            limits={**document.get("limits", {}), "connect_timeout_seconds": 30},
        )
        results = await _check(registered.config, per_check=2.0)
        assert results["config"].status == "ok", results["config"]
    finally:
        for server in servers:
            server.close()
        for writer in silent:
            writer.close()
        for server in servers:
            await server.wait_closed()
    result = results["targets"]
    assert result.status == "warn", result
    assert result.detail.startswith("stalled-00: "), result.detail
    assert result.detail.endswith("(and 39 more)")
    # Every probe the check's time stopped is named as not answering.
    assert result.detail == (
        "stalled-00: no answer within 2 s (gateway check --timeout) (and 39 more)"
    )


async def test_an_opa_server_that_does_not_answer_fails_the_policy_engine_line(
    registered: Registered,
) -> None:
    # gateway run starts with OPA down, but is not ready and answers every request 503: check
    # said all was well.
    async with OpaServer() as opa:
        document = demo_config(registered.stack)
        registered.rewrite(policy={**document["policy"], "engine": "opa", "opa_url": opa.url})
        results = await _check(registered.config)
        assert results["policy_engine"].status == "ok", results["policy_engine"]
        assert results["policy_engine"].detail.startswith(f"OPA at {opa.url} answers; ")
        # Asked, never loaded: the check changes nothing on the server.
        assert opa.policies == {}
        await opa.go_down()
        results = await _check(registered.config)
    assert results["policy_engine"].status == "fail"
    assert results["policy_engine"].detail.startswith(f"OPA at {opa.url}: loading OPA failed")
    assert "every request 503" in results["policy_engine"].hint
