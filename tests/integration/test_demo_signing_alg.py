"""``gateway demo --signing-alg rsa-pss-sha512``: the scripted demo with EmpowerID signing as a
key held in Azure Key Vault or Managed HSM does (RFC 9421 rsa-pss-sha512), every step as
expected, through real subprocesses (register, run) and the relay emulator."""

from __future__ import annotations

import subprocess
import sys


def demo(alg: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--signing-alg", alg],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_the_demo_passes_with_rsa_pss_signatures() -> None:
    done = demo("rsa-pss-sha512")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "EmpowerID signs with rsa-pss-sha512" in done.stdout
    # The signed steps were answered by the gateway (not refused as unsigned or unknown).
    assert "demo passed" in done.stdout
    assert "unknown_key" not in done.stdout
    assert "bad_signature" not in done.stdout


def test_an_unknown_signing_algorithm_is_a_usage_error() -> None:
    done = demo("rsa-v1_5-sha256")
    assert done.returncode == 2
    assert "rsa-v1_5-sha256" in done.stderr
