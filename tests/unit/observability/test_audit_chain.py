"""The decision log's hash chain, signed checkpoints, rotation, and ``gateway audit verify``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import config as gwconfig
from gateway.cli import main
from gateway.errors import ConfigError
from gateway.observability.audit import (
    AuditLog,
    Rotation,
    decision_log,
    rotated_files,
    worker_file,
)
from gateway.observability.auditchain import (
    GENESIS,
    HeadVerifier,
    HmacSigner,
    KeySigner,
    VerifyReport,
    line_hash,
    order_files,
    verify_files,
)
from gateway.pipeline import AuditRecord
from tests.unit.config.conftest import BASE

KEY = b"k" * 32
# Each example writes a small log to its own directory; no example may depend on timing.
FUZZ: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}
SCHEMA = Path(__file__).parents[3] / "schemas" / "decision-log.schema.json"


class Clock:
    """A clock the test moves by hand (rotation by age, checkpoint intervals)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _keys(key: bytes = KEY) -> HeadVerifier:
    keys = HeadVerifier()
    keys.add_hmac_key(key)
    return keys


def _write_log(path: Path, count: int = 6, **kwargs: object) -> AuditLog:
    audit = AuditLog(path, signer=HmacSigner(KEY), gateway_id="gw-1", **kwargs)  # type: ignore[arg-type]
    for n in range(count):
        audit.write({"decision_id": f"d{n}", "result": "allowed"})
    audit.close()
    return audit


def _verify(
    *paths: Path, expect: tuple[int, str] | None = None, from_start: bool = False
) -> VerifyReport:
    return verify_files(
        order_files(paths), keys=_keys(), expect_head=expect, from_genesis=from_start
    )


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_every_line_links_to_the_one_before_and_the_log_ends_signed(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    _write_log(path)
    lines = path.read_bytes().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["seq"] for r in records] == list(range(7))
    assert records[0]["prev"] == GENESIS
    for before, record in zip(lines, records[1:], strict=False):
        assert record["prev"] == line_hash(before)
    assert records[-1]["kind"] == "checkpoint"
    assert records[-1]["alg"] == "hmac-sha256"
    report = _verify(path)
    assert report.problem is None
    assert (report.records, report.checkpoints, report.signatures_checked) == (7, 1, 1)
    assert report.unsigned_tail == 0


def test_a_restart_continues_the_chain_in_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    _write_log(path, 3)
    _write_log(path, 3)  # a new process: reads the tail and carries on
    records = [json.loads(line) for line in path.read_bytes().splitlines()]
    assert [r["seq"] for r in records] == list(range(8))
    assert _verify(path).problem is None


def test_an_edited_record_is_reported_as_broken(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    _write_log(path)
    lines = _lines(path)
    lines[2] = lines[2].replace(b'"allowed"', b'"denied"')
    path.write_bytes(b"".join(lines))
    problem = _verify(path).problem
    assert problem is not None
    assert (problem.kind, problem.seq, problem.line) == ("broken", 2, 3)


def test_a_removed_record_is_reported_as_missing(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    _write_log(path)
    lines = _lines(path)
    del lines[3]
    path.write_bytes(b"".join(lines))
    problem = _verify(path).problem
    assert problem is not None
    assert (problem.kind, problem.seq) == ("missing", 4)
    assert "record 3 missing" in problem.message


def test_swapped_records_are_reported_as_reordered(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    _write_log(path)
    lines = _lines(path)
    lines[1], lines[2] = lines[2], lines[1]
    path.write_bytes(b"".join(lines))
    problem = _verify(path).problem
    assert problem is not None
    assert (problem.kind, problem.seq) == ("reordered", 2)


def test_a_repeated_record_is_reported_as_reordered(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    _write_log(path)
    lines = _lines(path)
    lines.insert(3, lines[2])
    path.write_bytes(b"".join(lines))
    problem = _verify(path).problem
    assert problem is not None
    assert problem.kind == "reordered"


def test_a_cut_last_line_is_reported_as_truncated(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    _write_log(path)
    data = path.read_bytes()
    path.write_bytes(data[:-20])
    problem = _verify(path).problem
    assert problem is not None
    assert (problem.kind, problem.line) == ("truncated", 7)


def test_records_cut_after_the_reported_head_are_reported_as_truncated(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    _write_log(path)
    last = json.loads(_lines(path)[-1])
    seq, prev = last["seq"], last["prev"]
    # Whole records removed from the end, up to and including the reported checkpoint: the chain
    # that is left is intact, only the heartbeat's head shows the cut.
    path.write_bytes(b"".join(_lines(path)[:4]))
    assert _verify(path).problem is None
    problem = _verify(path, expect=(seq, prev)).problem
    assert problem is not None
    assert problem.kind == "truncated"
    assert _verify(tmp_path / "decisions.jsonl", expect=(3, "0" * 64)).problem is not None


def test_a_checkpoint_turned_into_a_plain_record_is_broken(tmp_path: Path) -> None:
    # Found by the single-byte search below: "kind":"checkpoint" edited to another word made
    # the last line a plain record, and its signature was never checked.
    path = tmp_path / "decisions.jsonl"
    _write_log(path)
    lines = _lines(path)
    lines[-1] = lines[-1].replace(b'"kind":"checkpoint"', b'"kind":"checkpoinT"')
    path.write_bytes(b"".join(lines))
    problem = _verify(path).problem
    assert problem is not None
    assert (problem.kind, problem.line) == ("broken", len(lines))


def test_a_signature_in_another_base64_spelling_is_refused(tmp_path: Path) -> None:
    # Found by trying every byte at every position: the last character of a base64 HMAC
    # carries two unused bits, so three other characters decoded to the same signature.
    path = tmp_path / "decisions.jsonl"
    _write_log(path)
    lines = _lines(path)
    record = json.loads(lines[-1])
    encoded = record["signature"]
    assert encoded.endswith("=")
    last = encoded[-2]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    twin = alphabet[alphabet.index(last) ^ 1]  # differs only in an unused bit
    record["signature"] = encoded[:-2] + twin + "="
    lines[-1] = json.dumps(record, separators=(",", ":")).encode() + b"\n"
    path.write_bytes(b"".join(lines))
    problem = _verify(path).problem
    assert problem is not None
    assert problem.kind == "signature"


def test_a_rewritten_chain_fails_the_checkpoint_signature(tmp_path: Path) -> None:
    # Someone who edits a record and recomputes every later hash still cannot sign.
    path = tmp_path / "decisions.jsonl"
    _write_log(path)
    records = [json.loads(line) for line in path.read_bytes().splitlines()]
    records[1]["result"] = "denied"
    prev = GENESIS
    out = []
    for record in records:
        record["prev"] = prev
        line = json.dumps(record, separators=(",", ":")).encode()
        prev = line_hash(line)
        out.append(line + b"\n")
    path.write_bytes(b"".join(out))
    unsigned = verify_files([path])  # the chain alone is consistent again
    assert unsigned.problem is None
    problem = _verify(path).problem
    assert problem is not None
    assert problem.kind == "signature"
    other = HeadVerifier()
    other.add_hmac_key(b"x" * 32)
    wrong_key = verify_files([path], keys=other).problem
    assert wrong_key is not None
    assert "not among the keys given" in wrong_key.message


@pytest.mark.parametrize("algorithm", ["ec", "rsa"])
def test_checkpoints_signed_with_the_identity_key_verify_with_its_public_key(
    tmp_path: Path, algorithm: str
) -> None:
    key = (
        ec.generate_private_key(ec.SECP256R1())
        if algorithm == "ec"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    path = tmp_path / "decisions.jsonl"
    audit = AuditLog(path, signer=KeySigner(key), gateway_id="gw-1")
    audit.write({"decision_id": "a"})
    audit.close()
    pem = tmp_path / "gateway.pub"
    pem.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert main(["audit", "verify", str(path), "--certificate", str(pem)]) == 0
    lines = _lines(path)
    record = json.loads(lines[-1])
    record["time"] = "2030-01-01T00:00:00.000000Z"  # a signature cannot be moved in time
    lines[-1] = json.dumps(record, separators=(",", ":")).encode() + b"\n"
    path.write_bytes(b"".join(lines))
    assert main(["audit", "verify", str(path), "--certificate", str(pem)]) == 1


def test_rotation_by_size_keeps_the_chain_across_files_and_deletes_old_ones(
    tmp_path: Path,
) -> None:
    path = tmp_path / "decisions.jsonl"
    audit = AuditLog(
        path, rotation=Rotation(max_bytes=600, keep=3), signer=HmacSigner(KEY), gateway_id="gw"
    )
    for n in range(40):
        audit.write({"decision_id": f"d{n:03d}", "result": "allowed", "pad": "x" * 40})
    audit.close()
    rotated = rotated_files(path)
    assert len(rotated) == 3  # retention
    for old in rotated:
        assert json.loads(old.read_bytes().splitlines()[-1])["kind"] == "seal"
        assert old.stat().st_size < 600 + 400
    report = _verify(tmp_path)
    assert report.problem is None, report.problem
    assert not report.anchored  # the oldest files were deleted: anchored on a later record
    assert report.signatures_checked == report.checkpoints >= 3
    # A rotated file taken out of the middle is missing records.
    rotated[1].unlink()
    problem = _verify(tmp_path).problem
    assert problem is not None
    assert problem.kind == "missing"


def test_a_rotated_file_cut_before_its_seal_is_truncated(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    audit = AuditLog(path, rotation=Rotation(max_bytes=300), gateway_id="gw")
    for n in range(8):
        audit.write({"decision_id": f"d{n}"})
    audit.close()
    first = rotated_files(path)[0]
    first.write_bytes(b"".join(_lines(first)[:-1]))
    problem = verify_files(order_files([tmp_path])).problem
    assert problem is not None
    assert problem.kind == "truncated"
    assert "seal" in problem.message


def test_rotation_by_age(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "decisions.jsonl"
    audit = AuditLog(path, rotation=Rotation(max_seconds=3600), clock=clock)
    audit.write({"decision_id": "a"})
    clock.now += 1800
    audit.write({"decision_id": "b"})
    assert rotated_files(path) == []
    clock.now += 1800
    audit.write({"decision_id": "c"})
    assert len(rotated_files(path)) == 1
    audit.write({"decision_id": "d"})
    assert verify_files(order_files([tmp_path])).problem is None
    assert [json.loads(x)["decision_id"] for x in path.read_bytes().splitlines()] == ["d"]


def test_checkpoints_come_at_the_configured_interval(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "decisions.jsonl"
    audit = AuditLog(
        path, rotation=Rotation(checkpoint_seconds=60), signer=HmacSigner(KEY), clock=clock
    )
    for _ in range(5):
        audit.write({"decision_id": "a"})
        clock.now += 20
    kinds = [json.loads(x).get("kind") for x in path.read_bytes().splitlines()]
    assert kinds.count("checkpoint") == 1
    head = audit.checkpoint()
    assert head is not None
    assert audit.checkpoint() == head  # nothing new: the same signed head, no new line
    lines = path.read_bytes().splitlines()
    assert json.loads(lines[-1])["seq"] == head.seq
    assert json.loads(lines[-1])["prev"] == head.prev
    assert _verify(path, expect=(head.seq, head.prev)).problem is None


def test_a_legacy_log_is_set_aside_and_a_new_chain_starts(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    path.write_text('{"decision_id":"old"}\n')
    AuditLog(path).write({"decision_id": "new"})
    assert json.loads(path.read_text())["seq"] == 0
    assert len(rotated_files(path)) == 1


def test_a_partial_line_from_a_crash_is_reported_and_the_chain_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    _write_log(path, 2)
    with path.open("ab") as handle:
        handle.write(b'{"seq":3,"prev":"ab')  # killed mid-write
    _write_log(path, 2)
    lines = path.read_bytes().splitlines()
    assert json.loads(lines[-1])["kind"] == "checkpoint"
    problem = verify_files([path]).problem
    assert problem is not None
    assert (problem.kind, problem.line) == ("broken", 4)


def test_decision_records_match_the_schema_and_hold_no_secret(tmp_path: Path) -> None:
    record = AuditRecord(
        decision_id="3f9a1c0d5e7b2a41-0000002a",
        kind="http",
        revision="sha256:" + "0" * 64,
        started=1_800_000_000.0,
        method="POST",
        relayed="/erp/api/orders?access_token=s3cret&sig=abc&page=2",
        headers=[("Authorization", "Bearer hunter2"), ("Content-Length", "11")],
        body_bytes=11,
        keyid="empowerid-2026",
    )
    path = tmp_path / "decisions.jsonl"
    audit = AuditLog(path, signer=HmacSigner(KEY), gateway_id="gw")
    audit.write(record.as_dict())
    audit.close()
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    lines = path.read_text().splitlines()
    for line in lines:
        validator.validate(json.loads(line))
    written = json.loads(lines[0])
    assert written["v"] == 2
    assert written["input"] == {
        "method": "POST",
        "target": "/erp/api/orders?access_token=***&sig=***&page=2",
        "headers": [["authorization", 14], ["content-length", 2, "11"]],
        "websocket": False,
        "body_bytes": 11,
        "keyid": "empowerid-2026",
    }
    assert "s3cret" not in lines[0]
    assert "hunter2" not in lines[0]


def test_audit_verify_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "decisions.jsonl"
    _write_log(path)
    key = tmp_path / "audit.key"
    key.write_bytes(KEY)
    assert main(["audit", "verify", str(path), "--hmac-key", str(key)]) == 0
    out = capsys.readouterr().out
    assert "intact: 7 records in 1 files" in out
    assert "1 of 1 checkpoint signatures verified" in out
    head = out.strip().splitlines()[-1].removeprefix("head: ")
    assert main(["audit", "verify", str(path), "--expect-head", head]) == 0
    capsys.readouterr()
    lines = _lines(path)
    del lines[1]
    path.write_bytes(b"".join(lines))
    assert main(["audit", "verify", str(path), "--format", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["problem"]["kind"] == "missing"
    assert main(["audit", "verify", str(path), "--expect-head", "nonsense"]) == 2
    first = _lines(path)
    path.write_bytes(b"".join(first[1:]))  # the first record ever, gone
    assert main(["audit", "verify", str(path)]) == 0
    assert main(["audit", "verify", str(path), "--from-start"]) == 1
    assert main(["audit", "verify", str(tmp_path / "absent")]) == 1
    short = tmp_path / "short.key"
    short.write_bytes(b"short")
    assert main(["audit", "verify", str(path), "--hmac-key", str(short)]) == 1


@settings(max_examples=150, **FUZZ)
@given(data=st.data())
def test_any_single_byte_change_is_detected(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    path = tmp_path_factory.mktemp("edit") / "decisions.jsonl"
    _write_log(path, 4)
    original = path.read_bytes()
    position = data.draw(st.integers(0, len(original) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != original[position]))
    path.write_bytes(original[:position] + bytes([byte]) + original[position + 1 :])
    assert _verify(path).problem is not None


@settings(max_examples=100, **FUZZ)
@given(data=st.data())
def test_any_removal_duplication_or_move_of_lines_is_detected(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    path = tmp_path_factory.mktemp("lines") / "decisions.jsonl"
    _write_log(path, 5)
    lines = _lines(path)
    original = list(lines)
    edit = data.draw(st.sampled_from(["remove", "duplicate", "move"]))
    index = data.draw(st.integers(0, len(lines) - 1))
    if edit == "remove":
        del lines[index]
    elif edit == "duplicate":
        lines.insert(data.draw(st.integers(0, len(lines))), lines[index])
    else:
        moved = lines.pop(index)
        lines.insert(data.draw(st.integers(0, len(lines))), moved)
    if lines == original:
        return  # moved to where it was: not an edit
    path.write_bytes(b"".join(lines))
    # Removing whole lines from the end is only visible against the reported head, and from the
    # start only when the log must begin at its first record.
    head = json.loads(original[-1])
    report = _verify(path, expect=(head["seq"], head["prev"]), from_start=True)
    assert report.problem is not None


def test_unwritable_directory_does_not_break_the_chain(tmp_path: Path) -> None:
    directory = tmp_path / "logs"
    audit = AuditLog(directory / "decisions.jsonl")
    audit.write({"decision_id": "lost"})  # the directory is missing: counted, not chained
    assert audit.failures == 1
    directory.mkdir()
    audit.write({"decision_id": "kept"})
    records = [json.loads(x) for x in (directory / "decisions.jsonl").read_bytes().splitlines()]
    assert records[0]["seq"] == 0
    assert records[0]["prev"] == GENESIS


def test_the_configured_hmac_key_is_a_checked_secret_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "policies").mkdir()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        BASE
        + "logging:\n  audit_file: decisions.jsonl\n"
        + "  decision_log:\n    hmac_key: {file: audit.key}\n"
    )
    key = tmp_path / "audit.key"
    key.write_text("k" * 32 + "\n")
    key.chmod(0o644)  # readable by others: refused like every secret file
    with pytest.raises(ConfigError) as refused:
        gwconfig.load(config)
    assert refused.value.problems[0].code == "unsafe_secret_file"
    key.chmod(0o600)
    loaded = gwconfig.load(config)
    audit = decision_log(loaded, ec.generate_private_key(ec.SECP256R1()))
    audit.write({"decision_id": "a"})
    audit.close()
    assert json.loads(_lines(tmp_path / "decisions.jsonl")[-1])["alg"] == "hmac-sha256"
    assert main(["audit", "verify", str(tmp_path), "--hmac-key", str(key)]) == 0
    # A key too short to sign with refuses to start rather than sign weakly.
    key.write_text("short\n")
    with pytest.raises(ValueError, match="32 bytes"):
        decision_log(gwconfig.load(config), ec.generate_private_key(ec.SECP256R1()))


@pytest.mark.parametrize(
    "verb", [["audit", "verify"], ["replay", "-c", "gateway.yaml", "--decisions"]]
)
def test_audit_verify_and_replay_refuse_missing_or_empty_inputs_alike(
    tmp_path: Path, verb: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*verb, str(tmp_path / "absent.jsonl")]) != 0
    assert "no such decision log" in capsys.readouterr().err
    assert main([*verb, str(empty)]) != 0
    assert "no decision log in the files given" in capsys.readouterr().err


def test_each_worker_file_is_its_own_chain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A gateway with workers writes NAME.w1, NAME.w2 (worker_file), each chained on its own and
    # rotated on its own; one directory holds them all.
    base = tmp_path / "decisions.log"
    for worker, count in ((1, 4), (2, 7)):
        path = worker_file(base, worker)
        audit = _write_log(path, count, worker=worker)
        audit.rotate()
        _write_log(path, 2, worker=worker)
    assert worker_file(base, None) == base
    # The rotated files of one chain are never another chain's (retention deletes them).
    assert rotated_files(base) == []
    assert all(
        p.name.startswith("decisions.log.w1.")
        for p in rotated_files(base.parent / "decisions.log.w1")
    )
    key = tmp_path / "hmac.key"
    key.write_bytes(KEY)
    assert main(["audit", "verify", str(tmp_path), "--hmac-key", str(key)]) == 0
    out = capsys.readouterr().out
    assert f"chain {tmp_path / 'decisions.log.w1'}:" in out
    assert f"chain {tmp_path / 'decisions.log.w2'}:" in out
    # One record edited in worker 2's live file: that chain is reported, the verdict is 1.
    live = worker_file(base, 2)
    lines = _lines(live)
    lines[1] = lines[1].replace(b'"allowed"', b'"denied"')
    live.write_bytes(b"".join(lines))
    assert main(["audit", "verify", str(tmp_path), "--hmac-key", str(key)]) == 1
    out = capsys.readouterr().out
    assert out.count("intact:") == 1
    assert "TAMPERED" in out
    # A heartbeat's head belongs to one chain: naming several is a usage error.
    head = "3:" + "0" * 64
    assert main(["audit", "verify", str(tmp_path), "--expect-head", head]) == 2


def test_a_workers_checkpoints_name_it_and_its_files_cannot_pass_as_anothers(
    tmp_path: Path,
) -> None:
    # Each worker signs its index with its checkpoints, so a file of worker 2's chain renamed
    # as worker 1's (NAME.w1) no longer verifies, though every link and signature is intact.
    base = tmp_path / "decisions.log"
    second = worker_file(base, 2)
    _write_log(second, 3, worker=2)
    checkpoint = json.loads(_lines(second)[-1])
    assert (checkpoint["kind"], checkpoint["worker"]) == ("checkpoint", 2)
    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).validate(checkpoint)
    report = _verify(second)
    assert (report.problem, report.worker, report.signatures_checked) == (None, 2, 1)
    assert report.as_dict()["worker"] == 2
    passed_off = worker_file(base, 1)
    second.rename(passed_off)
    problem = _verify(passed_off).problem
    assert problem is not None
    assert (problem.kind, problem.message) == (
        "broken",
        "a checkpoint of worker 2 in the file of worker 1",
    )
    # Under a name that is no worker's (a copy for analysis) the chain verifies as worker 2's.
    copy = tmp_path / "analysis.jsonl"
    copy.write_bytes(passed_off.read_bytes())
    assert _verify(copy).worker == 2


def test_a_checkpoint_cannot_lose_or_gain_its_worker(tmp_path: Path) -> None:
    # The worker is signed: removing it (to pass a worker's chain off as a one-process
    # gateway's) or adding one breaks the signature, as the two forms sign different domains.
    for worker, edit in ((3, "drop"), (None, "add")):
        path = tmp_path / f"{edit}.jsonl"
        _write_log(path, 2, worker=worker)
        lines = _lines(path)
        record = json.loads(lines[-1])
        if edit == "drop":
            del record["worker"]
        else:
            record["worker"] = 3
        lines[-1] = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        path.write_bytes(b"".join(lines))
        problem = _verify(path).problem
        assert problem is not None
        assert problem.kind == "signature", (edit, problem)


def test_one_chain_holds_one_workers_checkpoints(tmp_path: Path) -> None:
    # A worker's chain that goes on with another worker's (or a one-process gateway's)
    # checkpoints is two processes' records spliced together.
    path = tmp_path / "decisions.jsonl"
    _write_log(path, 2, worker=1)
    _write_log(path, 2)
    problem = _verify(path).problem
    assert problem is not None
    assert (problem.kind, problem.message) == (
        "broken",
        "a checkpoint of a one-process gateway in a chain of worker 1",
    )


@pytest.mark.parametrize("worker", [0, -1, True, "1", 1.0])
def test_a_checkpoint_with_a_worker_that_is_no_index_is_malformed(
    tmp_path: Path, worker: object
) -> None:
    path = tmp_path / "decisions.jsonl"
    _write_log(path, 1, worker=1)
    lines = _lines(path)
    record = json.loads(lines[-1])
    record["worker"] = worker
    lines[-1] = json.dumps(record).encode() + b"\n"
    path.write_bytes(b"".join(lines))
    problem = _verify(path).problem
    assert problem is not None
    assert (problem.kind, problem.message) == ("broken", "a malformed checkpoint")
