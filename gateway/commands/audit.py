"""``gateway audit verify FILE...``: is a decision log complete and unaltered?

FILE may be a log file or a directory of rotated logs; the files are checked in chain order
(by their first sequence number). Files of different names are different chains (a gateway with
several workers writes ``NAME.w1``, ``NAME.w2``, ... each with its rotations), checked each on
its own; the verdict is intact only if every chain is. The first broken, missing, reordered or
truncated record is reported with its file and line. Checkpoint signatures are checked with the
keys given (``--hmac-key`` and/or ``--certificate``, the gateway's certificate or public key);
without a key only the hash chain is checked. ``--expect-head SEQ:HASH`` is the signed head
EmpowerID received in a heartbeat: a log cut back to before it is reported as truncated.

Exit codes: 0 intact; 1 a problem was found, or a file or key could not be read; 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from gateway.observability.auditchain import (
    MIN_HMAC_KEY_BYTES,
    HeadVerifier,
    VerifyReport,
    chain_name,
    files_given,
    split_chains,
    verify_files,
)

EXIT_INTACT = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2
_HEAD = re.compile(r"(\d{1,18}):([0-9a-f]{64})")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``audit`` verb (``audit verify``)."""
    parser = subparsers.add_parser(
        "audit",
        help="check that a decision log is complete and unaltered",
        description="Exit 0: intact; 1: a broken, missing, reordered or truncated record.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    verify = actions.add_parser("verify", help="verify the hash chain and signed checkpoints")
    verify.add_argument("files", nargs="+", metavar="FILE", help="log file or directory")
    verify.add_argument(
        "--hmac-key", metavar="FILE", action="append", default=[], help="HMAC key file"
    )
    verify.add_argument(
        "--certificate",
        metavar="PEM",
        action="append",
        default=[],
        help="gateway certificate or public key that signed checkpoints (repeatable)",
    )
    verify.add_argument(
        "--expect-head",
        metavar="SEQ:HASH",
        help="a signed head reported in a heartbeat; the log must reach it",
    )
    verify.add_argument(
        "--from-start",
        action="store_true",
        help="the files must begin with the first record ever written (nothing rotated away)",
    )
    verify.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text for people (default) or json for scripts",
    )
    verify.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Verify the files and print the report."""
    head = None
    if args.expect_head is not None:
        match = _HEAD.fullmatch(args.expect_head)
        if match is None:
            print("--expect-head expects SEQ:HASH (64 hex digits)", file=sys.stderr)
            return EXIT_USAGE
        head = (int(match[1]), match[2])
    keys = HeadVerifier()
    try:
        for name in args.hmac_key:
            key = Path(name).read_bytes()
            # One trailing line end is not part of the key (as for the gateway's secret files).
            if key.endswith(b"\n"):
                key = key[:-2] if key.endswith(b"\r\n") else key[:-1]
            if len(key) < MIN_HMAC_KEY_BYTES:
                print(f"{name}: an HMAC key needs at least 32 bytes", file=sys.stderr)
                return EXIT_PROBLEM
            keys.add_hmac_key(key)
        for name in args.certificate:
            keys.add_pem(Path(name).read_bytes())
    except (OSError, ValueError) as exc:
        print(f"cannot read a key: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    try:
        files = files_given(args.files)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return EXIT_PROBLEM
    chains = split_chains(files)
    if head is not None and len(chains) > 1:
        # A head belongs to one chain (one worker's heartbeat); which one is for the operator
        # to say, not for us to guess.
        print(
            "--expect-head checks one chain; these files hold "
            f"{len(chains)} ({', '.join(Path(chain_name(c[0])).name for c in chains)}): "
            "name the files of one worker",
            file=sys.stderr,
        )
        return EXIT_USAGE
    reports = [
        verify_files(chain, keys=keys, expect_head=head, from_genesis=args.from_start)
        for chain in chains
    ]
    if args.format == "json":
        if len(reports) == 1:
            print(json.dumps(reports[0].as_dict(), indent=2))
        else:
            intact = all(report.problem is None for report in reports)
            document = {"intact": intact, "chains": [report.as_dict() for report in reports]}
            print(json.dumps(document, indent=2))
    else:
        for chain, report in zip(chains, reports, strict=True):
            if len(chains) > 1:
                print(f"chain {chain_name(chain[0])}:")
            _print_report(report, bool(keys))
    return EXIT_INTACT if all(report.problem is None for report in reports) else EXIT_PROBLEM


def _print_report(report: VerifyReport, keyed: bool) -> None:
    if report.problem is not None:
        print(f"TAMPERED or damaged: {report.problem.render()}")
        print(f"checked {report.records} records before it")
        return
    start = "genesis" if report.anchored else f"record {report.first_seq}"
    print(
        f"intact: {report.records} records in {len(report.files)} files, from {start} "
        f"to record {report.head_seq}"
    )
    signed = (
        f"{report.signatures_checked} of {report.checkpoints} checkpoint signatures verified"
        if keyed
        else f"{report.checkpoints} checkpoints (signatures not checked: no key given)"
    )
    print(signed)
    if report.unsigned_tail:
        print(
            f"{report.unsigned_tail} records after the last checkpoint are covered by the "
            "chain only (compare with the head in the latest heartbeat: --expect-head)"
        )
    # The form heartbeats carry and --expect-head takes: this record's seq and prev.
    print(f"head: {report.head_seq}:{report.head_prev}")
