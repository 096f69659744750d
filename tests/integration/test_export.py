"""Decision log export: RFC 5424 over TLS to a real rsyslogd, JSON lines on standard output, and
a bounded queue that never blocks and counts what it drops."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from gateway import config as gwconfig
from gateway.errors import ConfigError
from gateway.observability.audit import AuditLog
from gateway.observability.auditchain import HmacSigner
from gateway.observability.export import (
    Exporter,
    SyslogSettings,
    SyslogSink,
    build_exporters,
    syslog_context,
    syslog_message,
)
from gateway.observability.metrics import Metrics
from tests.integration.rsyslog import Rsyslog, rsyslog_for_fixture
from tests.integration.test_decision_log import TRAFFIC, record_run
from tests.unit.config.conftest import BASE

RECORDS = [
    {"decision_id": "a", "time": "2026-12-07T06:00:00Z", "result": "allowed", "path": "/api/x"},
    {"decision_id": "b", "time": "2026-12-07T06:00:01Z", "result": "denied", "path": "/api/ü"},
    {"decision_id": "c", "time": "2026-12-07T06:00:02Z", "result": "would_deny", "path": "/y"},
]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def collector(ca: trustme.CA) -> Iterator[Rsyslog]:
    yield from rsyslog_for_fixture(ca, require_client_certificate=True)


def _client_files(ca: trustme.CA, directory: Path) -> tuple[Path, Path, Path]:
    ca_file, certificate, key = (directory / n for n in ("ca.pem", "client.pem", "client.key"))
    ca.cert_pem.write_to_path(str(ca_file))
    client = ca.issue_cert("gateway-client.example")
    client.cert_chain_pems[0].write_to_path(str(certificate))
    client.private_key_pem.write_to_path(str(key))
    return ca_file, certificate, key


def _sink(ca: trustme.CA, collector: Rsyslog, directory: Path, **overrides: object) -> SyslogSink:
    ca_file, certificate, key = _client_files(ca, directory)
    settings = SyslogSettings(
        host="127.0.0.1",
        port=collector.port,
        context=syslog_context(ca_file, certificate, key),
        server_name="localhost",
        hostname="gw-host",
        timeout=10,
    )
    return SyslogSink(SyslogSettings(**{**settings.__dict__, **overrides}))


def test_every_record_reaches_rsyslog_over_mutual_tls_as_rfc5424(
    ca: trustme.CA, collector: Rsyslog, tmp_path: Path
) -> None:
    before = len(collector.messages())
    exporter = Exporter(_sink(ca, collector, tmp_path))
    exporter.start()
    path = tmp_path / "decisions.jsonl"
    audit = AuditLog(
        path, signer=HmacSigner(b"k" * 32), gateway_id="gw", observers=[exporter.offer]
    )
    for record in RECORDS:
        audit.write(dict(record))
    audit.close()  # a signed checkpoint, exported like any other line
    exporter.stop(timeout=30)
    lines = path.read_text(encoding="utf-8").splitlines()
    received = collector.wait_for(before + len(lines))[before:]
    # The very lines of the chained log, in order: a SIEM record can be matched to the chain.
    assert [m["msg"] for m in received] == lines
    assert [m["msgid"] for m in received] == ["decision"] * 3 + ["checkpoint"]
    # Facility 13 (log audit): info for allowed, notice for denied, warning for would_deny.
    assert [int(m["pri"]) for m in received] == [13 * 8 + 6, 13 * 8 + 5, 13 * 8 + 4, 13 * 8 + 6]
    assert {m["version"] for m in received} == {"1"}
    assert {m["app"] for m in received} == {"gateway"}
    assert {m["hostname"] for m in received} == {"gw-host"}
    assert received[0]["timestamp"].startswith("2026-12-07T06:00:00")
    assert exporter.sent == len(lines)
    assert exporter.dropped == 0


def test_a_collector_with_an_untrusted_certificate_gets_nothing(
    ca: trustme.CA, collector: Rsyslog, tmp_path: Path
) -> None:
    before = len(collector.messages())
    other = trustme.CA()  # the gateway trusts another CA: the handshake must fail
    other.cert_pem.write_to_path(str(tmp_path / "other.pem"))
    sink = _sink(ca, collector, tmp_path, context=syslog_context(tmp_path / "other.pem"))
    with pytest.raises(ssl.SSLCertVerificationError):
        sink.send([json.dumps(RECORDS[0]).encode()])
    sink.close()
    # And a sink with the right CA but the wrong name for the collector is refused as well.
    wrong_name = _sink(ca, collector, tmp_path, server_name="collector.invalid")
    with pytest.raises(ssl.SSLCertVerificationError):
        wrong_name.send([json.dumps(RECORDS[0]).encode()])
    wrong_name.close()
    assert len(collector.messages()) == before


def test_the_queue_never_blocks_and_counts_what_it_drops(tmp_path: Path) -> None:
    # A collector that accepts the connection and never answers the TLS handshake: the worker
    # is stuck in it, and the request path must not notice.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        metrics = Metrics()
        sink = SyslogSink(
            SyslogSettings(
                host="127.0.0.1",
                port=silent.getsockname()[1],
                context=syslog_context(None),
                server_name="localhost",
                timeout=30,
            )
        )
        exporter = Exporter(
            sink, capacity=5, on_drop=lambda s: metrics.export_dropped.labels(sink=s).inc()
        )
        for n in range(100):  # not started: nothing leaves the queue
            exporter.offer(b'{"n":%d}' % n)
        assert exporter.dropped == 95
        assert b'gateway_decision_export_dropped_total{sink="syslog"} 95.0' in metrics.render()
        exporter.stop(timeout=1)


def test_configured_exports_are_built_from_gateway_yaml(
    ca: trustme.CA, collector: Rsyslog, tmp_path: Path
) -> None:
    _client_files(ca, tmp_path)
    (tmp_path / "policies").mkdir()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        BASE
        + f"""logging:
  audit_file: decisions.jsonl
  export:
    queue_size: 50
    stdout: true
    syslog:
      host: 127.0.0.1
      port: {collector.port}
      server_name: localhost
      ca_file: ca.pem
      client_certificate_file: client.pem
      client_key_file: client.key
""",
        encoding="utf-8",
    )
    loaded = gwconfig.load(config)  # with the host checks: the TLS files are all there
    exporters = build_exporters(loaded)
    assert [e.sink.name for e in exporters] == ["stdout", "syslog"]
    syslog = exporters[1]
    before = len(collector.messages())
    syslog.start()
    syslog.offer(json.dumps(RECORDS[1]).encode())
    syslog.stop(timeout=30)
    [message] = collector.wait_for(before + 1)[before:]
    assert json.loads(message["msg"])["decision_id"] == "b"
    # The decision log on standard output already: no second copy there.
    config.write_text(config.read_text().replace("  audit_file: decisions.jsonl\n", ""))
    names = [e.sink.name for e in build_exporters(gwconfig.load(config, check_host=False))]
    assert names == ["syslog"]
    # A missing TLS file is a configuration problem at load time, not a failure at first send.
    (tmp_path / "client.key").unlink()
    with pytest.raises(ConfigError) as caught:
        gwconfig.load(config)
    [problem] = caught.value.problems
    assert problem.path == "logging.export.syslog.client_key_file"


def test_a_running_gateway_exports_its_decision_log_to_rsyslog(
    ca: trustme.CA, collector: Rsyslog, tmp_path: Path
) -> None:
    directory = tmp_path / "gw"
    directory.mkdir()
    _client_files(ca, directory)
    syslog = {
        "host": "127.0.0.1",
        "port": collector.port,
        "server_name": "localhost",
        "ca_file": "ca.pem",
        "client_certificate_file": "client.pem",
        "client_key_file": "client.key",
    }
    before = len(collector.messages())
    recorded = asyncio.run(
        record_run(directory, TRAFFIC[:3], logging={"export": {"syslog": syslog}})
    )
    lines = recorded.log.read_text(encoding="utf-8").splitlines()
    received = collector.wait_for(before + len(lines))[before:]
    assert [m["msg"] for m in received] == lines


def test_json_lines_on_standard_output_are_the_log_lines(tmp_path: Path) -> None:
    # In a child process, so the worker thread writes to a real stdout pipe.
    path = tmp_path / "decisions.jsonl"
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from gateway.observability.audit import AuditLog\n"
        "from gateway.observability.export import Exporter, StdoutSink\n"
        "exporter = Exporter(StdoutSink())\n"
        "exporter.start()\n"
        "audit = AuditLog(Path(sys.argv[1]), observers=[exporter.offer])\n"
        "for n in range(50):\n"
        "    audit.write({'decision_id': str(n), 'result': 'allowed'})\n"
        "exporter.stop(timeout=30)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        timeout=60,
        check=True,
        text=True,
    )
    assert done.stdout.splitlines() == path.read_text(encoding="utf-8").splitlines()
    assert len(done.stdout.splitlines()) == 50


def test_messages_outside_the_record_format_are_still_valid_rfc5424() -> None:
    message = syslog_message(b"not json", facility=13, hostname="h", procid=7)
    assert message == b"<108>1 - h gateway 7 decision - not json"
    seal = syslog_message(
        b'{"kind":"seal","time":"2026-12-07T06:00:00.123456Z"}', facility=1, hostname="h", procid=7
    )
    assert seal.startswith(b"<14>1 2026-12-07T06:00:00.123456Z h gateway 7 seal - ")
