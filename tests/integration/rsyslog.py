"""Run Debian's real ``rsyslogd`` on 127.0.0.1 as a syslog-over-TLS collector (RFC 5425).

Each instance gets its own temporary directory with a generated configuration: only ``imtcp``
with the OpenSSL network stream driver (package rsyslog-openssl, ``lmnsd_ossl``) on a port the
kernel picks (``listenPortFileName`` tells it), and one ``omfile`` action writing every message
as ``PRI|VERSION|TIMESTAMP|HOSTNAME|APP|PROCID|MSGID|MSG`` to a file the tests read. It runs in the
foreground (``-n``) as the test's own user with no privileged port, socket or file, and is killed
at the end.

With ``require_client_certificate`` the listener demands a client certificate signed by the CA
(``x509/certvalid``).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
# The OpenSSL stream driver, under the multiarch library directory.
DRIVERS = sorted(Path("/usr/lib").glob("*/rsyslog/lmnsd_ossl.so"))
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
FIELDS = ("pri", "version", "timestamp", "hostname", "app", "procid", "msgid", "msg")


@dataclass(frozen=True)
class Rsyslog:
    """A running rsyslogd: its port and the file it writes messages to."""

    port: int
    workdir: Path

    def messages(self) -> list[dict[str, str]]:
        """The messages received so far, split into their RFC 5424 fields."""
        path = self.workdir / "received.log"
        if not path.exists():
            return []
        lines = path.read_text(encoding="utf-8").splitlines()
        return [dict(zip(FIELDS, line.split("|", 7), strict=True)) for line in lines]

    def wait_for(self, count: int, within: float = 30.0) -> list[dict[str, str]]:
        """The messages once at least ``count`` have arrived (fails after ``within`` seconds)."""
        deadline = time.monotonic() + within
        while True:
            found = self.messages()
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"rsyslogd received {len(found)} of {count} messages")
            time.sleep(0.05)


def rsyslog_unavailable_reason() -> str | None:
    """Why rsyslog tests cannot run here, or ``None`` when they can."""
    if not Path(RSYSLOGD).exists():
        return "rsyslogd is not installed (CI installs the rsyslog package)"
    if not DRIVERS:
        return "lmnsd_ossl.so is missing (CI installs the rsyslog-openssl package)"
    return None


def _write_config(workdir: Path, *, require_client_certificate: bool) -> Path:
    auth = "x509/certvalid" if require_client_certificate else "anon"
    config = workdir / "rsyslog.conf"
    config.write_text(
        f"""
global(
  workDirectory="{workdir}"
  DefaultNetstreamDriver="ossl"
  DefaultNetstreamDriverCAFile="{workdir / "ca.pem"}"
  DefaultNetstreamDriverCertFile="{workdir / "server.pem"}"
  DefaultNetstreamDriverKeyFile="{workdir / "server.key"}"
)
module(load="imtcp" StreamDriver.Name="ossl" StreamDriver.Mode="1"
       StreamDriver.AuthMode="{auth}")
input(type="imtcp" port="0" listenPortFileName="{workdir / "port"}")
template(name="fields" type="string"
         string="%pri%|%protocol-version%|%timereported:::date-rfc3339%|%hostname%|%app-name%|%procid%|%msgid%|%msg%\\n")
action(type="omfile" file="{workdir / "received.log"}" template="fields")
""",
        encoding="utf-8",
    )
    return config


def _wait_ready(proc: subprocess.Popen[bytes], workdir: Path) -> int:
    deadline = time.monotonic() + START_TIMEOUT
    port_file = workdir / "port"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = (workdir / "rsyslogd.out").read_text(errors="replace")
            raise RuntimeError(f"rsyslogd exited with {proc.returncode}:\n{output[-2000:]}")
        with contextlib.suppress(OSError, ValueError):
            return int(port_file.read_text().strip())
        time.sleep(0.05)
    raise RuntimeError(f"rsyslogd did not listen within {START_TIMEOUT} s")


@contextlib.contextmanager
def run_rsyslog(ca: trustme.CA, *, require_client_certificate: bool = False) -> Iterator[Rsyslog]:
    """Start rsyslogd in the foreground with a certificate from ``ca``, yield it, stop it."""
    workdir = Path(tempfile.mkdtemp(prefix="gw-rsyslog-"))
    try:
        ca.cert_pem.write_to_path(str(workdir / "ca.pem"))
        server = ca.issue_cert("127.0.0.1", "localhost")
        server.cert_chain_pems[0].write_to_path(str(workdir / "server.pem"))
        server.private_key_pem.write_to_path(str(workdir / "server.key"))
        config = _write_config(workdir, require_client_certificate=require_client_certificate)
        with (workdir / "rsyslogd.out").open("wb") as output:
            proc = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", str(config), "-i", str(workdir / "rsyslogd.pid")],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            port = _wait_ready(proc, workdir)
            yield Rsyslog(port=port, workdir=workdir)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(STOP_TIMEOUT)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def rsyslog_for_fixture(ca: trustme.CA, **options: bool) -> Iterator[Rsyslog]:
    """Body of an rsyslog fixture: skip the requesting test if rsyslogd cannot run here."""
    reason = rsyslog_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with run_rsyslog(ca, **options) as collector:
        yield collector
