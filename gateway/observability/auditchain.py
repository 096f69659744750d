"""The decision log's hash chain: signed heads, and verification of a log or a set of rotated logs.

Every line of the decision log is one JSON object carrying ``seq`` (0, 1, 2, ... across the whole
log, continued across rotations and restarts) and ``prev``, the SHA-256 of the previous line's
bytes (without its newline; 64 zeros before the first record ever). Editing, removing, inserting
or reordering a line therefore breaks the link to the next one.

What a chain alone cannot show is a cut at the end, or a rewrite of the whole chain by someone who
recomputes every hash. Both are caught by *checkpoints*: records of ``kind`` ``checkpoint`` (written
periodically and at shutdown) or ``seal`` (the last record of a file before it is rotated) whose
signature, by the gateway's identity key or an HMAC key, covers the checkpoint's own position and
the hash of everything before it. The newest checkpoint is also sent to EmpowerID in the
heartbeat, so a log cut back to before it can be shown to be incomplete
(``gateway audit verify --expect-head SEQ:HASH``).

The signed message is ``gateway-audit-head/2`` followed by the gateway id, kind, seq, prev and
time, each on its own line (UTF-8), so a signature cannot be moved to another gateway, position
or time. A worker of a gateway that runs several (each writes its own chain, ``NAME.wN``) signs
``gateway-audit-head/3`` with its index on a last line and records it as ``worker``, so one
worker's file cannot be passed off as another's: the other domain keeps a checkpoint from
losing or gaining its worker without breaking its signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from gateway.identity.keys import PrivateKey
from gateway.policy.decision_log import RECORD_VERSION

__all__ = [
    "CHECKPOINT_KINDS",
    "GENESIS",
    "MIN_HMAC_KEY_BYTES",
    "HeadSigner",
    "HeadVerifier",
    "HmacSigner",
    "KeySigner",
    "Problem",
    "SignedHead",
    "VerifyReport",
    "line_hash",
    "order_files",
    "verify_files",
]

GENESIS = "0" * 64
CHECKPOINT_KINDS = frozenset({"checkpoint", "seal"})
MIN_HMAC_KEY_BYTES = 32
_DOMAIN = "gateway-audit-head/2"
_WORKER_DOMAIN = "gateway-audit-head/3"
# Fields of a checkpoint, exactly: any other field could be edited without touching the
# signature, so verification refuses a checkpoint that carries more or fewer.
_CHECKPOINT_FIELDS = frozenset(
    {"seq", "prev", "v", "kind", "time", "gateway", "alg", "key_id", "signature"}
)
_WORKER_CHECKPOINT_FIELDS = _CHECKPOINT_FIELDS | {"worker"}
# The live name of a worker's chain (gateway.observability.audit.worker_file).
_WORKER_NAME = re.compile(r"\.w([1-9][0-9]*)\Z")
# Bounds for reading a log that may have been tampered with: a line longer than any record the
# gateway writes is damage, not something to hold in memory.
MAX_LINE_BYTES = 1 << 20


def line_hash(line: bytes) -> str:
    """The chain hash of one line (its bytes without the newline), lower-case hex SHA-256."""
    return hashlib.sha256(line).hexdigest()


def signed_message(
    *, gateway: str, kind: str, seq: int, prev: str, time: str, worker: int | None = None
) -> bytes:
    """The bytes a checkpoint's signature covers (``worker``: the index of the worker process
    whose chain it is, ``None`` for a gateway that runs one process)."""
    parts = [_DOMAIN, gateway, kind, str(seq), prev, time]
    if worker is not None:
        parts[0] = _WORKER_DOMAIN
        parts.append(str(worker))
    return "\n".join(parts).encode()


class HeadSigner(Protocol):
    """Signs checkpoints: an HMAC key or the gateway's identity key."""

    @property
    def alg(self) -> str:
        """Algorithm name recorded in the checkpoint."""
        ...

    @property
    def key_id(self) -> str:
        """Short public name of the key (never the key)."""
        ...

    def sign(self, message: bytes) -> bytes:
        """The signature of ``message``."""
        ...


def _key_id(material: bytes) -> str:
    return hashlib.sha256(material).hexdigest()[:16]


class HmacSigner:
    """HMAC-SHA256 (RFC 2104) with a shared key of at least 32 bytes."""

    alg = "hmac-sha256"

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_HMAC_KEY_BYTES:
            raise ValueError(f"an HMAC key needs at least {MIN_HMAC_KEY_BYTES} bytes")
        self._key = key
        # Derived so the id names the key without revealing anything about it.
        self.key_id = _key_id(b"gateway-audit-hmac\n" + key)

    def sign(self, message: bytes) -> bytes:
        """HMAC-SHA256 of ``message``."""
        return hmac.new(self._key, message, hashlib.sha256).digest()


PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def _public_id(public: PublicKey) -> str:
    return _key_id(
        public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


class KeySigner:
    """The gateway's identity key: ECDSA with SHA-256, or RSA-PSS with SHA-256."""

    def __init__(self, private_key: PrivateKey) -> None:
        self._key = private_key
        self.alg = (
            "ecdsa-sha256"
            if isinstance(private_key, ec.EllipticCurvePrivateKey)
            else ("rsa-pss-sha256")
        )
        self.key_id = _public_id(private_key.public_key())

    def sign(self, message: bytes) -> bytes:
        """A DER ECDSA signature or an RSA-PSS signature of ``message``."""
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            return self._key.sign(message, ec.ECDSA(hashes.SHA256()))
        return self._key.sign(message, _pss(), hashes.SHA256())


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


class HeadVerifier:
    """The keys checkpoints may be verified with, by key id."""

    def __init__(self) -> None:
        self._hmac: dict[str, bytes] = {}
        self._public: dict[str, PublicKey] = {}

    def __bool__(self) -> bool:
        return bool(self._hmac or self._public)

    def add_hmac_key(self, key: bytes) -> None:
        """Trust checkpoints signed with this HMAC key."""
        self._hmac[HmacSigner(key).key_id] = key

    def add_pem(self, pem: bytes) -> None:
        """Trust the public key in ``pem``: a certificate (the gateway's) or a public key."""
        if b"CERTIFICATE" in pem:
            public: Any = x509.load_pem_x509_certificate(pem).public_key()
        else:
            public = serialization.load_pem_public_key(pem)
        if not isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise ValueError("only ECDSA and RSA keys sign decision log checkpoints")
        self._public[_public_id(public)] = public

    def verify(self, alg: str, key_id: str, signature: bytes, message: bytes) -> str | None:
        """None when the signature is good, else why not."""
        if alg == HmacSigner.alg and key_id in self._hmac:
            expected = hmac.new(self._hmac[key_id], message, hashlib.sha256).digest()
            return None if hmac.compare_digest(expected, signature) else "bad signature"
        public = self._public.get(key_id)
        if public is None:
            return f"signed with key {key_id}, which is not among the keys given"
        try:
            if alg == "ecdsa-sha256" and isinstance(public, ec.EllipticCurvePublicKey):
                public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
            elif alg == "rsa-pss-sha256" and isinstance(public, rsa.RSAPublicKey):
                public.verify(signature, message, _pss(), hashes.SHA256())
            else:
                return f"algorithm {alg} does not match key {key_id}"
        except InvalidSignature:
            return "bad signature"
        return None


@dataclass(frozen=True)
class SignedHead:
    """A signed checkpoint, as sent in the heartbeat: everything before ``seq`` hashes to
    ``prev``."""

    seq: int
    prev: str
    time: str
    alg: str
    key_id: str
    signature: str

    def as_dict(self) -> dict[str, Any]:
        """The heartbeat form."""
        return {
            "seq": self.seq,
            "hash": self.prev,
            "time": self.time,
            "alg": self.alg,
            "key_id": self.key_id,
            "signature": self.signature,
        }


ProblemKind = Literal["broken", "missing", "reordered", "truncated", "signature", "unreadable"]


@dataclass(frozen=True)
class Problem:
    """The first thing wrong with a log."""

    kind: ProblemKind
    file: str
    line: int
    seq: int | None
    message: str

    def render(self) -> str:
        """One line for people."""
        where = f"{self.file}:{self.line}" if self.line else self.file
        at = f" (record {self.seq})" if self.seq is not None else ""
        return f"{where}{at}: {self.kind}: {self.message}"


@dataclass
class VerifyReport:
    """What ``verify_files`` found."""

    files: list[str] = field(default_factory=list)
    records: int = 0
    first_seq: int | None = None
    head_seq: int | None = None
    head_prev: str = GENESIS
    head_hash: str = GENESIS
    anchored: bool = True
    checkpoints: int = 0
    signatures_checked: int = 0
    unsigned_tail: int = 0
    worker: int | None = None
    problem: Problem | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "ok": self.problem is None,
            "files": self.files,
            "records": self.records,
            "first_seq": self.first_seq,
            "head": {"seq": self.head_seq, "prev": self.head_prev, "hash": self.head_hash},
            "anchored_at_genesis": self.anchored,
            "checkpoints": self.checkpoints,
            "signatures_checked": self.signatures_checked,
            "records_after_last_checkpoint": self.unsigned_tail,
            "worker": self.worker,
            "problem": None
            if self.problem is None
            else {
                "kind": self.problem.kind,
                "file": self.problem.file,
                "line": self.problem.line,
                "seq": self.problem.seq,
                "message": self.problem.message,
            },
        }


def _is_index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _whose(worker: int | None) -> str:
    return "a one-process gateway" if worker is None else f"worker {worker}"


class _Stop(Exception):  # noqa: N818 - carries the first problem out of the scan
    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


_LAST = 1 << 62


def _first_seq(path: Path) -> int:
    """The seq of a file's first record, for ordering; files without one sort last."""
    try:
        with path.open("rb") as handle:
            first = handle.readline(MAX_LINE_BYTES)
        seq = json.loads(first).get("seq")
    except (OSError, ValueError, AttributeError):
        return _LAST
    return seq if isinstance(seq, int) else _LAST


# The suffix of a rotated file (gateway.observability.audit names them).
ROTATED_SUFFIX = re.compile(r"\.\d{8}T\d{6}Z-\d{12}$")


def order_files(paths: Iterable[Path]) -> list[Path]:
    """Files, and the decision logs in directories, in chain order (by first seq).

    In a directory, a file is a decision log if it has a rotated file's name or its first line
    is a chained record; other files (the configuration next to the log) are left out. Name
    files to have each of them checked whatever it holds.
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                sorted(
                    p
                    for p in path.iterdir()
                    if p.is_file() and (ROTATED_SUFFIX.search(p.name) or _first_seq(p) < _LAST)
                )
            )
        else:
            files.append(path)
    unique = list(dict.fromkeys(files))
    return sorted(unique, key=lambda p: (_first_seq(p), p.name))


def files_given(names: Iterable[str]) -> list[Path]:
    """The decision logs named on a command line (files or directories), in chain order.

    Raises ``ValueError`` with a message for people when a name does not exist or nothing named
    holds a decision log: ``audit verify`` and ``replay`` answer the same question the same way.
    """
    paths = [Path(name) for name in names]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ValueError(f"no such decision log: {', '.join(missing)}")
    files = order_files(paths)
    if not files:
        raise ValueError("no decision log in the files given")
    return files


def chain_name(path: Path) -> str:
    """The live file name a decision log file belongs to: its own name, or a rotated file's name
    without the rotation suffix. Files of one name form one chain; a gateway with several
    workers writes one chain per worker (``NAME.w1``, ``NAME.w2``, see
    :func:`gateway.observability.audit.worker_file`)."""
    return str(path.parent / ROTATED_SUFFIX.sub("", path.name))


def split_chains(files: Sequence[Path]) -> list[list[Path]]:
    """``files`` (in chain order, :func:`order_files`) grouped into their chains, each still in
    chain order, the chains in name order."""
    chains: dict[str, list[Path]] = {}
    for path in files:
        chains.setdefault(chain_name(path), []).append(path)
    return [chains[name] for name in sorted(chains)]


def verify_files(
    paths: Sequence[Path],
    *,
    keys: HeadVerifier | None = None,
    expect_head: tuple[int, str] | None = None,
    from_genesis: bool = False,
) -> VerifyReport:
    """Check the chain through ``paths`` (already in chain order, see :func:`order_files`).

    ``from_genesis``: the files must start at the first record ever (no rotated file deleted by
    retention or withheld); otherwise the chain is checked from the first record given.
    """
    report = VerifyReport(files=[str(p) for p in paths])
    scan = _Scan(report, keys, from_genesis=from_genesis)
    try:
        for index, path in enumerate(paths):
            scan.file(path, last=index == len(paths) - 1)
        if expect_head is not None:
            scan.expect(expect_head, str(paths[-1]) if paths else "")
    except _Stop as stop:
        report.problem = stop.problem
    return report


def _missing(name: str, number: int, seq: int, expected: int) -> Problem:
    gap = f"{expected}" if seq == expected + 1 else f"{expected}..{seq - 1}"
    return Problem("missing", name, number, seq, f"record {gap} missing")


class _Scan:
    """State carried from record to record and file to file."""

    def __init__(
        self, report: VerifyReport, keys: HeadVerifier | None, *, from_genesis: bool
    ) -> None:
        self.from_genesis = from_genesis
        self.report = report
        self.keys = keys
        self.expected_seq: int | None = None
        self.expected_prev = GENESIS
        self.seen: dict[int, str] = {}  # seq -> prev, for --expect-head
        # The worker the chain's checkpoints name (None: one process); False before the first.
        self.checkpoint_worker: int | Literal[False] | None = False

    def file(self, path: Path, *, last: bool) -> None:
        name = str(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise _Stop(Problem("unreadable", name, 0, None, exc.strerror or str(exc))) from None
        lines = data.split(b"\n")
        tail = lines.pop()  # what follows the last newline: empty in an intact file
        parsed = [self._parse(name, number, line) for number, line in enumerate(lines, 1)]
        if tail:
            raise _Stop(
                Problem(
                    "truncated",
                    name,
                    len(lines) + 1,
                    None,
                    "the last line is cut off (no newline at the end of the file)",
                )
            )
        if not parsed:
            raise _Stop(Problem("truncated", name, 0, None, "the file holds no records"))
        order = [seq for seq, _ in parsed]
        for number, ((seq, record), line) in enumerate(zip(parsed, lines, strict=True), 1):
            self._link(name, number, seq, record, order[number:])
            self._checkpoint(name, number, seq, record)
            self.seen[seq] = record["prev"]
            self.expected_seq = seq + 1
            self.expected_prev = line_hash(line)
            self.report.records += 1
            self.report.head_seq, self.report.head_hash = seq, self.expected_prev
            self.report.head_prev = record["prev"]
            kind = record.get("kind")
            self.report.unsigned_tail = (
                0 if kind in CHECKPOINT_KINDS else (self.report.unsigned_tail + 1)
            )
        if not last and parsed[-1][1].get("kind") != "seal":
            raise _Stop(
                Problem(
                    "truncated",
                    name,
                    len(lines),
                    parsed[-1][0],
                    "a rotated file must end with its seal; records after this one are missing",
                )
            )

    def _parse(self, name: str, number: int, line: bytes) -> tuple[int, dict[str, Any]]:
        try:
            if len(line) > MAX_LINE_BYTES:
                raise ValueError("line too long")
            record = json.loads(line)
        except ValueError:
            raise _Stop(Problem("broken", name, number, None, "not a JSON record")) from None
        seq = record.get("seq") if isinstance(record, dict) else None
        prev = record.get("prev") if isinstance(record, dict) else None
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise _Stop(Problem("broken", name, number, None, "no sequence number"))
        if not isinstance(prev, str) or len(prev) != 64:
            raise _Stop(Problem("broken", name, number, seq, "no hash of the previous record"))
        assert isinstance(record, dict)
        return seq, record

    def _link(
        self, name: str, number: int, seq: int, record: Mapping[str, Any], later: Sequence[int]
    ) -> None:
        if self.expected_seq is None:
            # The first record given: the chain is checked from here on.
            self.report.first_seq = seq
            self.report.anchored = seq == 0
            if self.from_genesis and seq != 0:
                raise _Stop(_missing(name, number, seq, 0))
            if seq == 0 and record["prev"] != GENESIS:
                raise _Stop(Problem("broken", name, number, seq, "the first record has a prev"))
            return
        expected = self.expected_seq
        if seq != expected:
            if expected in later or seq < expected:
                order = "comes before" if expected in later else "repeats or comes after"
                other = expected if expected in later else expected - 1
                message = f"record {seq} {order} record {other}"
                raise _Stop(Problem("reordered", name, number, seq, message))
            raise _Stop(_missing(name, number, seq, expected))
        if record["prev"] != self.expected_prev:
            raise _Stop(
                Problem(
                    "broken",
                    name,
                    max(number - 1, 1),
                    seq - 1,
                    f"record {seq - 1} was altered: its hash is not the prev of record {seq}",
                )
            )

    def _checkpoint(self, name: str, number: int, seq: int, record: Mapping[str, Any]) -> None:
        kind = record.get("kind")
        if kind not in CHECKPOINT_KINDS:
            if "signature" in record:
                # A checkpoint whose kind was changed would otherwise pass as a plain record and
                # escape its signature check.
                raise _Stop(Problem("broken", name, number, seq, "a checkpoint of unknown kind"))
            return
        worker = record.get("worker")
        if (
            set(record) != (_CHECKPOINT_FIELDS if worker is None else _WORKER_CHECKPOINT_FIELDS)
            or not (worker is None or _is_index(worker))
            # The version is not signed: any other value is refused rather than ignored.
            or record["v"] != RECORD_VERSION
            or isinstance(record["v"], bool)
            or not all(
                isinstance(record[k], str) for k in ("kind", "time", "gateway", "alg", "key_id")
            )
        ):
            raise _Stop(Problem("broken", name, number, seq, "a malformed checkpoint"))
        self._same_worker(name, number, seq, worker)
        self.report.checkpoints += 1
        if not self.keys:
            return
        try:
            signature = base64.b64decode(record["signature"], validate=True)
        except (binascii.Error, TypeError):
            signature = b""
        # Only the canonical encoding: unused trailing bits of base64 (RFC 4648 section 3.5)
        # could otherwise be edited without changing the signature.
        if not signature or base64.b64encode(signature).decode() != record["signature"]:
            raise _Stop(Problem("signature", name, number, seq, "the signature is not base64"))
        message = signed_message(
            gateway=record["gateway"],
            kind=kind,
            seq=seq,
            prev=record["prev"],
            time=record["time"],
            worker=worker,
        )
        wrong = self.keys.verify(record["alg"], record["key_id"], signature, message)
        if wrong:
            raise _Stop(Problem("signature", name, number, seq, f"checkpoint {wrong}"))
        self.report.signatures_checked += 1

    def _same_worker(self, name: str, number: int, seq: int, worker: int | None) -> None:
        """One chain is one process's: its checkpoints name one worker (or none), and a file
        named as worker N's chain (``NAME.wN``, rotated or not) holds worker N's checkpoints."""
        if self.checkpoint_worker is False:
            self.checkpoint_worker = worker
            self.report.worker = worker
        named = _WORKER_NAME.search(chain_name(Path(name)))
        wrong = ""
        if worker != self.checkpoint_worker:
            wrong = f"a chain of {_whose(self.checkpoint_worker)}"
        elif named is not None and worker != int(named.group(1)):
            wrong = f"the file of worker {named.group(1)}"
        if wrong:
            message = f"a checkpoint of {_whose(worker)} in {wrong}"
            raise _Stop(Problem("broken", name, number, seq, message))

    def expect(self, head: tuple[int, str], name: str) -> None:
        seq, prev = head
        if seq not in self.seen:
            raise _Stop(
                Problem(
                    "truncated",
                    name,
                    0,
                    seq,
                    f"the log ends at record {self.report.head_seq}, before the expected head",
                )
            )
        if self.seen[seq] != prev:
            raise _Stop(
                Problem("broken", name, 0, seq, "the expected head does not match this log")
            )


def read_tail(path: Path, limit: int = MAX_LINE_BYTES) -> tuple[bytes | None, bool]:
    """The last complete line of ``path`` (None if none) and whether the file ends mid-line."""
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        start = max(0, size - limit)
        handle.seek(start)
        chunk = handle.read(size - start)
    if not chunk:
        return None, False
    partial = not chunk.endswith(b"\n")
    body = chunk if not partial else chunk[: chunk.rfind(b"\n") + 1]
    lines = body.rstrip(b"\n").rsplit(b"\n", 1)
    last = lines[-1] if lines and lines[-1] else None
    if last is not None and start > 0 and len(lines) == 1:
        last = None  # the line began before the window: not known to be complete
    return last, partial
