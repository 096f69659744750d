"""Run the coverage-guided fuzz targets for a fixed time: ``python fuzz/run.py --seconds N``.

Each target in ``fuzz/targets.py`` runs in its own process under libFuzzer (through atheris) for
``--seconds`` seconds, starting from seed inputs plus whatever corpus earlier runs left in
``--corpus`` (default: ``fuzz/corpus/<target>``, created on demand). libFuzzer stops a run on the
first failed invariant, on any input that takes longer than ``--timeout`` seconds (a hang) and when
the process grows past ``--rss-limit-mb`` (unbounded memory), and writes the input that did it to
``--artifacts``. The exit status is 0 only if every target ran its time without a finding.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from pyasn1.codec.ber import encoder  # noqa: E402

from gateway.hybridconnection.messages import (  # noqa: E402 - after the path set-up above
    AcceptCommand,
    Command,
    RequestCommand,
    ResponseCommand,
    encode_command,
)
from gateway.ldap.asn1 import LDAP_MESSAGE  # noqa: E402
from gateway.ldap.codec import encode_simple_bind  # noqa: E402

TARGETS = ("control", "canonical", "ldap")


def _search_request(message_id: int, base: str) -> bytes:
    """A SearchRequest seed with a nested filter, built from the RFC 4511 specification."""
    message = LDAP_MESSAGE.clone()
    message["messageID"] = message_id
    search = message["protocolOp"]["searchRequest"]
    search["baseObject"] = base.encode()
    search["scope"] = 2
    search["derefAliases"] = 0
    search["sizeLimit"] = 10
    search["timeLimit"] = 0
    search["typesOnly"] = False
    search["filter"]["and"][0]["present"] = b"objectClass"
    search["filter"]["and"][1]["not"]["equalityMatch"]["attributeDesc"] = b"cn"
    search["filter"]["and"][1]["not"]["equalityMatch"]["assertionValue"] = b"x"
    search["attributes"][0] = b"cn"
    return bytes(encoder.encode(message))


def seeds(target: str) -> list[bytes]:
    """Valid starting points, so libFuzzer mutates real messages rather than finding JSON."""
    if target == "control":
        address = "wss://ns.servicebus.windows.net/$hc/hc-1?sb-hc-action=request&sb-hc-id=1"
        commands: list[Command] = [
            RequestCommand(
                id="1",
                request_target="/hc-1/erp/api/x?y=1",
                method="GET",
                request_headers={"Accept": "text/plain", "Signature": "eid=:AA==:"},
                body=False,
                address=address,
            ),
            AcceptCommand(address=address.replace("request", "accept"), id="2", connect_headers={}),
            ResponseCommand(request_id="3", status_code=200, body=True),
        ]
        return [encode_command(command).encode() for command in commands]
    if target == "ldap":
        return [
            encode_simple_bind(1, "CN=svc,OU=Service,DC=corp,DC=example", b"pw")
            + _search_request(2, "OU=Staff,DC=corp,DC=example"),
            _search_request(3, "CN=a\\2C+SN=b,OU=\\ Tier0 ,DC=corp"),
        ]
    return [
        b"\x00\x00\x00\x00/api/orders",
        b"\x01\x02\x01\x00/api/%2e%2e/admin?x=1",
        b"\x00\x00\x00\x01/api/%C3%A9/",
    ]


def run_target(
    name: str, seconds: int, corpus: Path, artifacts: Path, timeout: int, rss_limit_mb: int
) -> int:
    """Fuzz ``name`` for ``seconds``; returns libFuzzer's exit status (0: nothing found)."""
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"fuzz-seeds-{name}-") as seed_dir:
        for index, seed in enumerate(seeds(name)):
            (Path(seed_dir) / f"seed-{index}").write_bytes(seed)
        command = [
            sys.executable,
            str(HERE / "targets.py"),
            name,
            f"-max_total_time={seconds}",
            f"-timeout={timeout}",
            f"-rss_limit_mb={rss_limit_mb}",
            "-max_len=4096",
            f"-artifact_prefix={artifacts}/{name}-",
            "-print_final_stats=1",
            str(corpus),
            seed_dir,
        ]
        started = time.monotonic()
        # A fixed argument list of our own files; no shell, no user input in the command.
        result = subprocess.run(command, check=False, capture_output=True, text=True)  # noqa: S603
    stats = [line for line in result.stderr.splitlines() if line.startswith("stat::")]
    runs = next(
        (line.split(":")[-1].strip() for line in stats if "number_of_executed" in line), "?"
    )
    verdict = "ok" if result.returncode == 0 else f"FAILED (exit {result.returncode})"
    print(f"{name}: {runs} inputs in {time.monotonic() - started:.1f} s: {verdict}")
    if result.returncode != 0:
        print(result.stderr[-4000:], file=sys.stderr)
    return result.returncode


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run every selected target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="per target (default 60)")
    parser.add_argument("--target", choices=TARGETS, action="append", dest="targets")
    parser.add_argument("--corpus", type=Path, default=HERE / "corpus")
    parser.add_argument("--artifacts", type=Path, default=HERE / "artifacts")
    parser.add_argument("--timeout", type=int, default=5, help="seconds per input (hang)")
    parser.add_argument("--rss-limit-mb", type=int, default=1024)
    args = parser.parse_args(argv)
    failures = 0
    for name in args.targets or TARGETS:
        status = run_target(
            name,
            args.seconds,
            args.corpus / name,
            args.artifacts,
            args.timeout,
            args.rss_limit_mb,
        )
        failures += status != 0
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
