"""``gateway demo``: the whole product on one machine in well under a minute.

Starts the relay emulator, the control-plane simulator and two sample on-prem targets on
loopback; registers a gateway with ``gateway register`` and runs it with ``gateway run`` (real
subprocesses, real mTLS, real Rego); plays a scripted session as EmpowerID would; hot-reloads a
configuration change; prints what happened; stops the gateway with SIGTERM and cleans up. Exit 0
only if every step got the expected answer.

When OpenLDAP's ``slapd`` and the ``ldap3`` client are installed, a sample directory joins as an
LDAP target and the session adds LDAP steps over the inner TLS: an allowed paged search, a denied
modify of a protected group, and a search whose LAPS password attribute is stripped. Without
them the demo says the LDAP steps were skipped and why; everything else runs on Python alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from gateway.devkit import slapd as devkit_slapd
from gateway.devkit.controlplane import SigningAlgorithm
from gateway.devkit.saas import SaaSResponse
from gateway.devkit.stack import PERSON, PERSON_PASSWORD, DevStack, operator_port
from gateway.observability.auditchain import verify_files
from gateway.outbound.sessions import client_session

READY_TIMEOUT = 20.0
LDAP_TARGET = "corp-directory"
LDAP_TIMEOUT = 20  # an int: ldap3 packs its receive timeout into SO_RCVTIMEO


@dataclass
class Row:
    """One line of the demo's result table."""

    step: str
    expected: str
    got: str
    reason: str

    @property
    def ok(self) -> bool:
        return self.expected == self.got


def _gateway_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


async def _readyz(port: int) -> dict[str, object]:
    url = f"http://127.0.0.1:{port}/readyz"
    timeout = aiohttp.ClientTimeout(total=2)
    async with client_session(timeout=timeout) as session, session.get(url) as response:
        result: dict[str, object] = await response.json()
        return result


async def _poll(check: Callable[[], Awaitable[bool]], limit: float, what: str) -> None:
    # The gateway is another process: its state can only be observed by asking it.
    deadline = time.monotonic() + limit
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def _wait_ready(port: int, process: asyncio.subprocess.Process) -> None:
    async def ready() -> bool:
        if process.returncode is not None:
            raise RuntimeError(f"gateway exited with {process.returncode} before becoming ready")
        with contextlib.suppress(aiohttp.ClientError, OSError, ValueError):
            return bool((await _readyz(port)).get("ready"))
        return False

    await _poll(ready, READY_TIMEOUT, "the gateway to become ready")


def _row(step: str, expected: str, response: SaaSResponse) -> Row:
    got = str(response.status)
    return Row(step, expected, got, response.reason_code or "forwarded")


def _ldap_unavailable() -> str | None:
    """Why the LDAP steps cannot run here, or None."""
    reason = devkit_slapd.unavailable_reason()
    if reason is not None:
        return reason
    try:
        importlib.import_module("ldap3")
    except ImportError:
        return "the ldap3 client is not installed (pip install ldap3)"
    return None


def _ldap_steps(port: int) -> list[Row]:
    """The LDAP part of the session, as EmpowerID's directory connector would do it (ldap3,
    blocking: run in a thread)."""
    ldap3 = importlib.import_module("ldap3")
    server = ldap3.Server("127.0.0.1", port=port, get_info=ldap3.NONE)
    # The SaaS binds with the name of a bind identity; the gateway binds with the stored
    # password, which never leaves this machine (ldap3 insists on sending some password).
    connection = ldap3.Connection(
        server,
        user=devkit_slapd.BIND_IDENTITY,
        password="not-the-password",  # noqa: S106 - a placeholder the gateway discards
        receive_timeout=LDAP_TIMEOUT,
        raise_exceptions=False,
    )
    rows: list[Row] = []
    try:
        connection.open()
        connection.bind()
        entries = connection.extend.standard.paged_search(
            f"ou=People,{devkit_slapd.SUFFIX}",
            "(objectClass=inetOrgPerson)",
            attributes=["uid", "mail"],
            paged_size=2,
            generator=False,
        )
        result = connection.result
        rows.append(
            Row(
                "LDAP paged search ou=People (2 per page)",
                "0",
                str(result["result"]),
                f"{len(entries)} entries",
            )
        )
        change = {"member": [(ldap3.MODIFY_ADD, [f"uid=user1,ou=People,{devkit_slapd.SUFFIX}"])]}
        connection.modify(devkit_slapd.PROTECTED_GROUP, change)
        result = connection.result
        rows.append(
            Row(
                "LDAP modify cn=Domain Admins member (protected)",
                "50",
                str(result["result"]),
                str(result["message"]),
            )
        )
        connection.modify(devkit_slapd.MANAGED_GROUP, change)
        result = connection.result
        rows.append(
            Row(
                "LDAP modify cn=Helpdesk member (same connection)",
                "0",
                str(result["result"]),
                "forwarded",
            )
        )
        connection.search(devkit_slapd.LAPS_COMPUTER, "(objectClass=*)", attributes=["*"])
        returned = {name.lower() for entry in connection.response for name in entry["attributes"]}
        got = "returned" if "ms-mcs-admpwd" in returned else "stripped"
        rows.append(
            Row("LDAP search cn=ws01: ms-Mcs-AdmPwd (LAPS)", "stripped", got, "never_returned")
        )
    finally:
        connection.unbind()
    return rows


async def _session(
    stack: DevStack, config: Path, health_port: int, ldap: dict[str, object] | None = None
) -> list[Row]:
    rows: list[Row] = []
    async with stack.saas() as saas, stack.saas(signed=False) as unsigned:
        response, _ = await saas.request("GET", "erp", "/api/accounts")
        rows.append(_row("GET erp /api/accounts (allowed read)", "200", response))
        response, _ = await saas.request("GET", "erp", "/api/accounts/17", query="expand=groups")
        rows.append(_row("GET erp /api/accounts/17?expand=groups", "200", response))
        response, _ = await saas.request("DELETE", "erp", "/api/accounts/17")
        rows.append(_row("DELETE erp /api/accounts/17 (write)", "403", response))
        response, _ = await saas.request("GET", "erp", "/api/%2e%2e/admin")
        rows.append(_row("GET erp /api/%2e%2e/admin (traversal)", "400", response))
        response, _ = await saas.request("GET", "payroll", "/api/salaries")
        rows.append(_row("GET payroll /api/salaries (unknown target)", "403", response))
        response, _ = await unsigned.request("GET", "erp", "/api/accounts")
        rows.append(_row("GET erp /api/accounts unsigned", "401", response))
        _, sent = await saas.request("GET", "erp", "/api/accounts/1")
        replay, _ = await saas.request("GET", "erp", "/api/accounts/1", signed_headers=sent)
        rows.append(_row("same signed request replayed", "401", replay))
        response, _ = await saas.request("GET", "erp", "/api/blob", query="size=300000")
        size_ok = response.status == 200 and len(response.body) == 300000
        rows.append(
            Row(
                "GET erp /api/blob (300 kB over rendezvous)",
                "200",
                str(response.status)
                if size_ok
                else f"{response.status} ({len(response.body)} bytes)",
                "forwarded",
            )
        )
        stream = await saas.stream("directory")
        try:
            await stream.send_bytes(b"bind cn=demo")
            message = await asyncio.wait_for(stream.receive(), 5)
            echoed = message.data == b"echo:bind cn=demo"
        finally:
            await stream.close()
        rows.append(
            Row("TCP stream to directory", "echo", "echo" if echoed else "no echo", "spliced")
        )
        if ldap is not None:
            async with saas.ldap_endpoint(LDAP_TARGET) as port:
                rows += await asyncio.to_thread(_ldap_steps, port)
        before, _ = await saas.request("GET", "erp", "/api/groups")
        rows.append(_row("GET erp /api/groups (not yet granted)", "403", before))
        revision = (await _readyz(health_port)).get("revision")
        stack.write_gateway_dir(
            config.parent,
            extra_operations=[
                {"name": "read-groups", "methods": ["GET"], "paths": ["/api/groups"]}
            ],
            extra_targets={LDAP_TARGET: ldap} if ldap is not None else None,
        )

        async def reloaded() -> bool:
            return (await _readyz(health_port)).get("revision") != revision

        await _poll(reloaded, 10, "the gateway to reload")
        after, _ = await saas.request("GET", "erp", "/api/groups")
        rows.append(_row("hot reload grants read-groups; GET /api/groups", "200", after))
    return rows


def _decision_log_row(path: Path) -> Row:
    """The decision log as an auditor first sees it, as a demo step: the hash chain checked by
    the same code as ``gateway audit verify`` (a broken chain fails the demo), and one refused
    request with its reason."""
    report = verify_files([path], from_genesis=True)
    got = "intact" if report.problem is None else "broken"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    refused = next((r for r in records if r.get("kind") == "http" and r.get("reasons")), None)
    detail = f"{report.records} records"
    if report.problem is not None:
        detail = report.problem.render()
    elif refused is not None:
        detail += f", e.g. {refused['method']} {refused['path']}: {', '.join(refused['reasons'])}"
    return Row("decision log hash chain (audit verify)", "intact", got, detail)


def _print_table(rows: list[Row]) -> None:
    width = max(len(r.step) for r in rows)
    print(f"\n{'request'.ljust(width)}  expected  got      reason")
    print(f"{'-' * width}  --------  -------  ------")
    for row in rows:
        mark = "" if row.ok else "   <-- MISMATCH"
        print(f"{row.step.ljust(width)}  {row.expected:8}  {row.got:7}  {row.reason}{mark}")


async def _metrics(port: int) -> list[str]:
    url = f"http://127.0.0.1:{port}/metrics"
    timeout = aiohttp.ClientTimeout(total=2)
    async with client_session(timeout=timeout) as session, session.get(url) as response:
        text = await response.text()
    wanted = (
        "gateway_requests_total{",
        "gateway_listeners_online ",
        "gateway_config_reloads_total{",
        "gateway_ldap_operations_total{",
    )
    return [line for line in text.splitlines() if line.startswith(wanted)]


async def run_demo(keep: bool = False, signing_alg: SigningAlgorithm = "ed25519") -> int:
    """Run the demo, EmpowerID signing with a key of ``signing_alg``; returns the exit code (the
    working directory is kept when a step failed)."""
    workdir = Path(tempfile.mkdtemp(prefix="gateway-demo-"))
    code = 1
    try:
        unavailable = _ldap_unavailable()
        with contextlib.ExitStack() as directories:
            directory = None
            if unavailable is None:
                directory = directories.enter_context(
                    devkit_slapd.sample_directory(workdir / "slapd")
                )
            code = await _run(workdir, directory, unavailable, signing_alg)
            return code
    finally:
        if not keep and code == 0:
            shutil.rmtree(workdir, ignore_errors=True)


async def _run(
    workdir: Path,
    directory: devkit_slapd.Slapd | None,
    unavailable: str | None,
    signing_alg: SigningAlgorithm,
) -> int:
    started = time.monotonic()
    process: asyncio.subprocess.Process | None = None
    try:
        # The gateway's operator endpoint listens on port 0 and publishes the port it got.
        async with DevStack(signing_alg=signing_alg) as stack:
            ldap = _ldap_target(workdir, directory) if directory is not None else None
            config = stack.write_gateway_dir(
                workdir, extra_targets={LDAP_TARGET: ldap} if ldap is not None else None
            )
            print(
                f"demo: relay emulator {stack.relay.ws_base}, control plane "
                f"{stack.controlplane.base_url}, targets 127.0.0.1:{stack.targets.http_port} "
                f"(HTTP) and 127.0.0.1:{stack.targets.tcp_port} (TCP); EmpowerID signs with "
                f"{signing_alg} (key {stack.controlplane.signing_key.keyid})"
            )
            if directory is not None:
                print(
                    f"demo: OpenLDAP slapd on 127.0.0.1:{directory.ldaps_port} (ldaps) as LDAP "
                    f"target {LDAP_TARGET}; the SaaS reaches it over the inner TLS"
                )
            else:
                print(f"demo: LDAP steps SKIPPED: {unavailable}")
            env = {**os.environ, "GATEWAY_REGISTER_PASSWORD": PERSON_PASSWORD}
            env.pop("GATEWAY_CONFIG", None)
            print(f"demo: gateway register -c {config} --person {PERSON}")
            registration = await asyncio.create_subprocess_exec(
                *_gateway_command("register", "-c", str(config), "--person", PERSON),
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            output, _ = await asyncio.wait_for(registration.communicate(), 60)
            print("      " + output.decode(errors="replace").strip())
            if registration.returncode != 0:
                return 1
            run_args = ["run", "-c", str(config), "--shutdown-grace", "5"]
            if hasattr(os, "geteuid") and os.geteuid() == 0:
                run_args.append("--allow-root")
            print(f"demo: gateway {' '.join(run_args)}")
            with (workdir / "gateway.log").open("wb") as log_file:
                process = await asyncio.create_subprocess_exec(
                    *_gateway_command(*run_args), env=env, stdout=log_file, stderr=log_file
                )
            try:
                health_port = await operator_port(workdir, process, within=READY_TIMEOUT)
                print(f"demo: operator endpoint http://127.0.0.1:{health_port}/readyz")
                await _wait_ready(health_port, process)
                rows = await _session(stack, config, health_port, ldap)
            except (RuntimeError, aiohttp.ClientError, TimeoutError) as exc:
                print(f"\ndemo FAILED: {exc}; the gateway's log ends with:")
                log_lines = (workdir / "gateway.log").read_text(errors="replace").splitlines()
                print("\n".join(f"  {line}" for line in log_lines[-15:]))
                return 1
            _print_table(rows)
            print("\nlive metrics:")
            for line in await _metrics(health_port):
                print(f"  {line}")
            process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), 30)
            rows.append(Row("SIGTERM: drain and exit", "0", str(code), "clean stop"))
            process = None
        row = _decision_log_row(workdir / "decisions.jsonl")
        rows.append(row)
        print(f"\ndecision log: {row.got}, {row.reason}")
        failed = [row for row in rows if not row.ok]
        elapsed = time.monotonic() - started
        if failed:
            print(
                f"\ndemo FAILED: {len(failed)} of {len(rows)} steps differ ({elapsed:.1f} s); "
                f"gateway log: {workdir / 'gateway.log'}"
            )
            return 1
        print(f"\ndemo passed: {len(rows)} of {len(rows)} steps as expected in {elapsed:.1f} s")
        if unavailable is not None:
            print(f"demo: the LDAP steps were skipped: {unavailable}")
        return 0
    finally:
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()


def _ldap_target(workdir: Path, directory: devkit_slapd.Slapd) -> dict[str, object]:
    """The sample directory as an LDAP target: its CA and the bind identity's password file
    next to gateway.yaml (mode 0600, as the gateway requires of secret files)."""
    (workdir / "directory-ca.pem").write_bytes((workdir / "slapd" / "ca.pem").read_bytes())
    password = workdir / "directory-password"
    password.write_text(devkit_slapd.SERVICE_PASSWORD + "\n", encoding="utf-8")
    password.chmod(0o600)
    return devkit_slapd.directory_target(
        directory,
        ca_file="directory-ca.pem",
        password_file="directory-password",  # noqa: S106 - a file name, not a password
    )
