"""Run Debian's real OpenLDAP ``slapd`` for the LDAP tests, on a Unix socket in a temp directory.

Each instance gets its own directory with a generated ``slapd.conf`` (core, cosine and
inetOrgPerson schemas, one ``mdb`` database for ``dc=example,dc=com`` with a root DN and
password), its database and its ``ldapi://`` socket. A Unix socket instead of a TCP port means no
port has to be guessed free: the tests reach slapd through their own loopback listeners, which do
bind port 0. slapd runs in the foreground (``-d 0``) as a child of the test and is stopped with
it.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SLAPD = shutil.which("slapd") or "/usr/sbin/slapd"
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")
SUFFIX = "dc=example,dc=com"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PASSWORD = "slapd-test-secret"  # a throwaway test directory's root password
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Slapd:
    """A running slapd: the Unix socket it listens on."""

    socket_path: Path
    workdir: Path


def slapd_unavailable_reason() -> str | None:
    """Why slapd tests cannot run here, or ``None`` when they can."""
    if not Path(SLAPD).exists():
        return "slapd is not installed (CI installs it with `apt-get install -y slapd ldap-utils`)"
    if not (MODULE_DIR / "back_mdb.la").exists() and not list(MODULE_DIR.glob("back_mdb*.so*")):
        return f"the mdb backend is missing from {MODULE_DIR}"
    return None


def _config(workdir: Path) -> str:
    schemas = "\n".join(
        f"include {SCHEMA_DIR / name}.schema" for name in ("core", "cosine", "inetorgperson")
    )
    return f"""{schemas}
pidfile {workdir / "slapd.pid"}
modulepath {MODULE_DIR}
moduleload back_mdb
sizelimit unlimited
database mdb
maxsize 104857600
suffix "{SUFFIX}"
rootdn "{ROOT_DN}"
rootpw {ROOT_PASSWORD}
directory {workdir / "db"}
index objectClass eq
"""


def _ready(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def running_slapd() -> Iterator[Slapd]:
    """Start slapd in a fresh temporary directory; stop it and remove everything afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="slapd-"))
    try:
        (workdir / "db").mkdir()
        (workdir / "slapd.conf").write_text(_config(workdir))
        socket_path = workdir / "ldapi"
        url = "ldapi://" + urllib.parse.quote(str(socket_path), safe="")
        log = (workdir / "slapd.log").open("wb")
        process = subprocess.Popen(
            [SLAPD, "-f", str(workdir / "slapd.conf"), "-h", url, "-d", "0"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not _ready(socket_path):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    raise RuntimeError(
                        "slapd did not start: " + (workdir / "slapd.log").read_text()[-2000:]
                    )
                time.sleep(0.05)
            yield Slapd(socket_path=socket_path, workdir=workdir)
        finally:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
            log.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
