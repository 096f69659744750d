"""``gateway check`` and a real ``gateway run`` give the same answer for one mistake.

Each case makes one mistake an operator makes with a registered gateway, asks ``gateway check``
as a process, then starts ``gateway run`` as a process: a check that fails must be a run that
refuses to start (with the exit code docs/operations.md gives it), and the reason must be the
same words. A reload that brings the mistake into a running gateway is refused and keeps the
running revision.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from gateway.devkit.stack import demo_config
from gateway.service import EXIT_CONFIG, EXIT_IDENTITY, EXIT_START

from ..gatewayrun import child_environment, gateway_run
from .conftest import Registered

pytestmark = pytest.mark.asyncio

GATEWAY = [sys.executable, "-m", "gateway"]
# Bounds a process that should have ended; reaching it fails the test, it is not a measure.
PROCESS_DEADLINE = 90


async def _cli(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *GATEWAY,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**child_environment(), "PYTHONWARNINGS": "ignore"},
    )
    try:
        stdout, _ = await asyncio.wait_for(process.communicate(), PROCESS_DEADLINE)
    except TimeoutError:
        process.send_signal(signal.SIGTERM)
        stdout, _ = await process.communicate()
        pytest.fail(f"gateway {args[0]} did not end:\n{stdout.decode()}")
    assert process.returncode is not None
    return process.returncode, stdout.decode()


async def _wait_for_line(log: Path, text: str) -> str:
    """The first line of ``log`` holding ``text``, once the process has written it."""
    async with asyncio.timeout(PROCESS_DEADLINE):
        while True:
            text_now = await asyncio.to_thread(log.read_text, encoding="utf-8", errors="replace")
            lines = text_now.splitlines()
            found = [line for line in lines if text in line]
            if found:
                return found[0]
            await asyncio.sleep(0.1)


async def test_a_gateway_id_the_state_directory_does_not_hold(registered: Registered) -> None:
    document = demo_config(registered.stack)
    document["gateway"] = {**document["gateway"], "id": "another-gateway"}
    registered.rewrite(gateway=document["gateway"])
    expected = (
        f"the state directory holds gateway {registered.stack.gateway_id!r}, "
        "the configuration names 'another-gateway'"
    )
    code, out = await _cli("check", "-c", str(registered.config), "--timeout", "5")
    assert code == 1
    assert f"FAIL  identity    {expected}" in out, out
    # run used to serve under the configured id, refusing every request EmpowerID signed for
    # the registered one.
    code, out = await _cli("run", "-c", str(registered.config), "--allow-root")
    assert code == EXIT_IDENTITY, out
    assert expected in out
    # status said "registered yes" and nothing else.
    code, out = await _cli("status", "-c", str(registered.config))
    assert code == 1
    assert f"problem     identity_mismatch: {expected}" in out, out


async def test_status_does_not_call_an_unusable_identity_unregistered(
    registered: Registered,
) -> None:
    key = registered.directory / "state" / "client-1.key"
    key.chmod(0o644)
    code, out = await _cli("status", "-c", str(registered.config))
    assert code == 1
    assert "registered  unknown: the state directory cannot be used (problem below)" in out, out
    assert f"problem     unsafe_permissions: {key} has mode 0644" in out


async def test_a_reload_to_another_gateway_id_is_refused(
    registered: Registered, tmp_path: Path
) -> None:
    log = tmp_path / "run.log"
    async with gateway_run(registered.stack, registered.config, log=log) as process:
        document = demo_config(registered.stack)
        registered.rewrite(gateway={**document["gateway"], "id": "another-gateway"})
        os.kill(process.pid, signal.SIGHUP)
        line = await _wait_for_line(log, "event=reload_failed")
        assert "the configuration names 'another-gateway'" in line
        assert "keeping revision" in line
        assert process.returncode is None


async def test_a_decision_log_in_a_missing_directory(registered: Registered) -> None:
    document = demo_config(registered.stack)
    logging = {**document["logging"], "audit_file": "logs/decisions.jsonl"}
    registered.rewrite(logging=logging)
    missing = registered.directory / "logs"
    expected = f"logging.audit_file: directory '{missing}' of the decision log does not exist"
    code, out = await _cli("check", "-c", str(registered.config), "--timeout", "5")
    assert code == 1
    assert "FAIL  config" in out, out
    assert expected in out
    # run used to start and serve, losing every decision record (audit_write_failed).
    code, out = await _cli("run", "-c", str(registered.config), "--allow-root")
    assert code == EXIT_CONFIG, out
    assert expected in out
    code, out = await _cli("validate", "-c", str(registered.config))
    assert code == 1
    assert f"{registered.config}:" in out
    assert expected in out


async def test_a_second_gateway_on_the_same_state_directory_refuses_to_start(
    registered: Registered, tmp_path: Path
) -> None:
    # Both used to run: two renewers replacing each other's key pair, two replay memories for
    # the same requests.
    async with gateway_run(
        registered.stack, registered.config, log=tmp_path / "first.log"
    ) as first:
        code, out = await _cli("run", "-c", str(registered.config), "--allow-root")
        assert code == EXIT_START, out
        state = registered.directory / "state"
        assert f"another gateway (process {first.pid}) runs with state directory {state}" in out
        assert first.returncode is None
        assert registered.stack.relay.listener_count(registered.stack.hc) == 2
    # Once the first has stopped, the directory is free again.
    async with gateway_run(registered.stack, registered.config, log=tmp_path / "second.log"):
        pass


async def test_a_registration_beside_a_running_gateway_is_refused(
    registered: Registered, tmp_path: Path
) -> None:
    # --force would have replaced the key and certificate under the running gateway.
    key = (registered.directory / "state" / "client-1.key").read_bytes()
    async with gateway_run(registered.stack, registered.config, log=tmp_path / "run.log") as first:
        process = await asyncio.create_subprocess_exec(
            *GATEWAY,
            *("register", "-c", str(registered.config), "--person", "anyone", "--force"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=child_environment({"GATEWAY_REGISTER_PASSWORD": "unused"}),
        )
        out, _ = await asyncio.wait_for(process.communicate(), PROCESS_DEADLINE)
        assert process.returncode == 1, out
        assert f"another gateway (process {first.pid}) runs" in out.decode()
    assert (registered.directory / "state" / "client-1.key").read_bytes() == key


async def test_a_target_ca_file_that_holds_no_certificate(registered: Registered) -> None:
    (registered.directory / "erp-ca.pem").write_text("not a certificate\n", encoding="utf-8")
    document = demo_config(registered.stack)
    targets = document["targets"]
    targets["erp"] = {**targets["erp"], "scheme": "https", "tls": {"ca_file": "erp-ca.pem"}}
    registered.rewrite(targets=targets)
    expected = (
        f"targets.erp.tls.ca_file: file '{registered.directory / 'erp-ca.pem'}' holds no usable "
        "CA certificate"
    )
    code, out = await _cli("check", "-c", str(registered.config), "--timeout", "5")
    assert code == 1
    assert expected in out, out
    # run used to pass every check and die in a traceback building the target's TLS settings.
    code, out = await _cli("run", "-c", str(registered.config), "--allow-root")
    assert code == EXIT_CONFIG, out
    assert expected in out
    assert "Traceback" not in out


async def test_a_reload_of_a_file_others_can_write_says_which_and_how_to_fix_it(
    registered: Registered, tmp_path: Path
) -> None:
    log = tmp_path / "run.log"
    async with gateway_run(registered.stack, registered.config, log=log) as process:
        registered.config.chmod(0o664)
        os.kill(process.pid, signal.SIGHUP)
        line = await _wait_for_line(log, "event=reload_failed")
        # The reason /readyz and status show: it used to be "the configuration file is not
        # protected" alone.
        assert (
            f"the configuration file is not protected: {registered.config} is writable by group"
            in line
        )
        assert f"chmod go-w {registered.config}" in line
