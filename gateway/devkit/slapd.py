"""A real OpenLDAP ``slapd`` for the demo, the LDAP tests and the benchmark, when it is installed.

Each instance gets a temporary directory with a generated ``slapd.conf`` (core, cosine and
inetOrgPerson schemas plus the legacy LAPS attribute ``ms-Mcs-AdmPwd`` with Microsoft's OID, so
stripping can be shown on a real entry), one ``mdb`` database for ``dc=example,dc=com`` loaded
offline with ``slapadd``, an ``ldapi://`` socket and, when asked, TLS listeners on loopback:
``ldap://`` (StartTLS) and ``ldaps://`` with a server certificate from a throw-away CA. The TCP
ports are ones the kernel handed out for port 0 (slapd itself reads port 0 as "the default"),
with a new start on other ports if one was taken meanwhile (:mod:`gateway.devkit.ports`). slapd
runs in the foreground as a child process with the ``stats`` log level: every connection and
operation it receives is a line of :attr:`Slapd.log_path`, which the tests read to show that
what the gateway refused never reached the directory.

Debian: ``apt-get install slapd ldap-utils`` (``.ci/run`` installs them). Nothing else here is
needed: the demo says the LDAP steps were skipped, and why, when :func:`unavailable_reason` is
not None.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.devkit.ports import start_on_free_ports, stop_process, wait_started

SLAPD = shutil.which("slapd") or "/usr/sbin/slapd"
SLAPADD = shutil.which("slapadd") or "/usr/sbin/slapadd"
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")
SUFFIX = "dc=example,dc=com"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PASSWORD = "slapd-test-secret"  # noqa: S105 - a throwaway test directory's root password
# The directory account EmpowerID works as: may write everywhere, as a service account would.
SERVICE_DN = f"cn=empowerid,ou=Service,{SUFFIX}"
SERVICE_PASSWORD = "directory-service-password"  # noqa: S105 - throwaway test account
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# slapd's "stats" log level (slapd.conf(5), loglevel 256): connections and operations.
STATS_LOG_LEVEL = "256"
# Microsoft's OID for the legacy LAPS password attribute (ms-Mcs-AdmPwd).
LAPS_OID = "1.2.840.113556.1.8000.2554.50051.45980.28112.18903.35903.6685103.1224907.2.1"

_LAPS_SCHEMA = f"""attributetype ( {LAPS_OID} NAME 'ms-Mcs-AdmPwd'
  EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )
objectclass ( {LAPS_OID}.100 NAME 'lapsComputer' AUXILIARY MAY ( ms-Mcs-AdmPwd ) )
"""


@dataclass(frozen=True)
class SlapdTls:
    """TLS material for slapd's loopback listeners (PEM files) and the CA that issued them."""

    cert_file: Path
    key_file: Path
    ca_file: Path


@dataclass(frozen=True)
class Slapd:
    """A running slapd: its Unix socket, TLS ports (0 without TLS) and stats log."""

    socket_path: Path
    workdir: Path
    ldap_port: int = 0
    ldaps_port: int = 0

    @property
    def log_path(self) -> Path:
        """slapd's log: one ``conn=N op=M VERB ...`` line per operation it received."""
        return self.workdir / "slapd.log"

    def operations(self) -> list[str]:
        """One line per operation received so far, e.g. ``MOD dn="cn=x,dc=example,dc=com"``
        (slapd logs an operation over several lines: the first one, which names it, is kept)."""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        seen: dict[tuple[str, str], str] = {}
        for line in text.splitlines():
            found = _OPERATION.search(line)
            if found is not None:
                seen.setdefault((found["conn"], found["op"]), line[found.start("verb") :])
        return list(seen.values())


_OPERATION = re.compile(
    r"conn=(?P<conn>\d+) op=(?P<op>\d+) "
    r"(?P<verb>BIND|SRCH|MOD|ADD|DEL|MODRDN|CMP|EXT|ABANDON|UNBIND)\b"
)


def unavailable_reason() -> str | None:
    """Why slapd cannot run here, or ``None`` when it can."""
    for tool in (SLAPD, SLAPADD):
        if not Path(tool).exists():
            return (
                f"{Path(tool).name} is not installed (Debian: `apt-get install slapd ldap-utils`)"
            )
    if not (MODULE_DIR / "back_mdb.la").exists() and not list(MODULE_DIR.glob("back_mdb*.so*")):
        return f"the mdb backend is missing from {MODULE_DIR}"
    return None


def _config(workdir: Path, tls: SlapdTls | None) -> str:
    schemas = "\n".join(
        f"include {SCHEMA_DIR / name}.schema" for name in ("core", "cosine", "inetorgperson")
    )
    tls_lines = ""
    if tls is not None:
        tls_lines = (
            f"TLSCertificateFile {tls.cert_file}\n"
            f"TLSCertificateKeyFile {tls.key_file}\n"
            f"TLSCACertificateFile {tls.ca_file}\n"
        )
    return f"""{schemas}
{_LAPS_SCHEMA}
pidfile {workdir / "slapd.pid"}
modulepath {MODULE_DIR}
moduleload back_mdb
sizelimit unlimited
{tls_lines}
database mdb
maxsize 104857600
suffix "{SUFFIX}"
rootdn "{ROOT_DN}"
rootpw {ROOT_PASSWORD}
directory {workdir / "db"}
index objectClass eq
access to attrs=userPassword by anonymous auth by * none
access to * by dn.exact="{SERVICE_DN}" write by * read
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


def _load(workdir: Path, ldif: str) -> None:
    (workdir / "data.ldif").write_text(ldif, encoding="utf-8")
    subprocess.run(  # noqa: S603 - fixed tool, arguments built here
        [SLAPADD, "-q", "-f", str(workdir / "slapd.conf"), "-l", str(workdir / "data.ldif")],
        check=True,
        capture_output=True,
        timeout=START_TIMEOUT,
    )


def _launch(workdir: Path, urls: list[str]) -> subprocess.Popen[bytes]:
    """slapd on ``urls``, once its Unix socket answers (it binds every listener before it
    listens on any: see :mod:`gateway.devkit.ports` for a TCP port another process took)."""
    log_path = workdir / "slapd.log"
    with log_path.open("wb") as log:  # an earlier attempt's log is not this one's
        process = subprocess.Popen(  # noqa: S603 - fixed tool, arguments built here
            [SLAPD, "-f", str(workdir / "slapd.conf"), "-h", " ".join(urls), "-d", STATS_LOG_LEVEL],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    wait_started(
        process,
        lambda: _ready(workdir / "ldapi"),
        lambda: log_path.read_text(errors="replace"),
        name="slapd",
        timeout=START_TIMEOUT,
        stop=lambda: _stop(process),
    )
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    stop_process(process, STOP_TIMEOUT, graceful=True)


@contextlib.contextmanager
def running_slapd(
    *,
    tls: SlapdTls | None = None,
    ldif: str | None = None,
    first_ports: Sequence[int] | None = None,
) -> Iterator[Slapd]:
    """Start slapd in a fresh temporary directory; stop it and remove everything afterwards.

    ``tls``: also listen on loopback with ldap:// (StartTLS) and ldaps://, on two ports the
    kernel just handed out (``first_ports`` first, when given; others while one is taken).
    ``ldif``: entries to load before it starts (the suffix entry must be among them).
    """
    workdir = Path(tempfile.mkdtemp(prefix="slapd-"))
    try:
        (workdir / "db").mkdir()
        (workdir / "slapd.conf").write_text(_config(workdir, tls))
        if ldif is not None:
            _load(workdir, ldif)
        socket_path = workdir / "ldapi"

        def launch(ports: list[int]) -> tuple[subprocess.Popen[bytes], list[int]]:
            urls = ["ldapi://" + urllib.parse.quote(str(socket_path), safe="")]
            if tls is not None:
                urls += [f"ldap://127.0.0.1:{ports[0]}/", f"ldaps://127.0.0.1:{ports[1]}/"]
            return _launch(workdir, urls), ports

        if tls is None:
            process, ports = launch([0, 0])  # a Unix socket only: no port anyone could take
        else:
            process, ports = start_on_free_ports(launch, name="slapd", count=2, first=first_ports)
        try:
            yield Slapd(socket_path, workdir, ldap_port=ports[0], ldaps_port=ports[1])
        finally:
            _stop(process)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def sample_ldif(*, people: int = 3, extra: Sequence[str] = ()) -> str:
    """A small directory: people, groups (one of them protected) and a computer with LAPS."""
    entries = [
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example",
        f"dn: ou=People,{SUFFIX}\nobjectClass: organizationalUnit\nou: People",
        f"dn: ou=Groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: Groups",
        f"dn: ou=Managed Groups,ou=Groups,{SUFFIX}\nobjectClass: organizationalUnit\n"
        "ou: Managed Groups",
        f"dn: ou=Computers,{SUFFIX}\nobjectClass: organizationalUnit\nou: Computers",
        f"dn: ou=Service,{SUFFIX}\nobjectClass: organizationalUnit\nou: Service",
        f"dn: {SERVICE_DN}\nobjectClass: inetOrgPerson\ncn: empowerid\n"
        f"sn: Service\nuserPassword: {SERVICE_PASSWORD}",
    ]
    for index in range(people):
        entries.append(
            f"dn: uid=user{index},ou=People,{SUFFIX}\nobjectClass: inetOrgPerson\n"
            f"uid: user{index}\ncn: User {index}\nsn: Number{index}\n"
            f"mail: user{index}@example.com"
        )
    entries += [
        f"dn: cn=Domain Admins,ou=Groups,{SUFFIX}\nobjectClass: groupOfNames\n"
        f"cn: Domain Admins\nmember: uid=user0,ou=People,{SUFFIX}",
        f"dn: cn=Helpdesk,ou=Managed Groups,ou=Groups,{SUFFIX}\nobjectClass: groupOfNames\n"
        f"cn: Helpdesk\nmember: uid=user0,ou=People,{SUFFIX}",
        f"dn: cn=ws01,ou=Computers,{SUFFIX}\nobjectClass: device\nobjectClass: lapsComputer\n"
        "cn: ws01\nms-Mcs-AdmPwd: laps-secret-ws01",
    ]
    entries += list(extra)
    return "\n\n".join(entries) + "\n"


@contextlib.contextmanager
def sample_directory(
    workdir: Path, *, people: int = 3, first_ports: Sequence[int] | None = None
) -> Iterator[Slapd]:
    """slapd with the :func:`sample_ldif` directory and TLS listeners whose certificate (for
    ``localhost`` and 127.0.0.1) comes from a throw-away CA written to ``workdir/ca.pem``
    (``first_ports``: as for :func:`running_slapd`)."""
    # Imported here: the control-plane simulator's CA is the devkit's only certificate factory.
    from gateway.devkit.controlplane import DevCA

    workdir.mkdir(parents=True, exist_ok=True)
    ca = DevCA("Directory Devkit CA")
    chain, key = ca.issue_server(["localhost", "127.0.0.1"])
    (workdir / "cert.pem").write_bytes(chain)
    (workdir / "key.pem").write_bytes(key)
    (workdir / "key.pem").chmod(0o600)
    (workdir / "ca.pem").write_bytes(ca.pem)
    tls = SlapdTls(workdir / "cert.pem", workdir / "key.pem", workdir / "ca.pem")
    ldif = sample_ldif(people=people)
    with running_slapd(tls=tls, ldif=ldif, first_ports=first_ports) as slapd:
        yield slapd


PROTECTED_GROUP = f"cn=Domain Admins,ou=Groups,{SUFFIX}"
MANAGED_GROUPS = f"ou=Managed Groups,ou=Groups,{SUFFIX}"
MANAGED_GROUP = f"cn=Helpdesk,{MANAGED_GROUPS}"
LAPS_COMPUTER = f"cn=ws01,ou=Computers,{SUFFIX}"
BIND_IDENTITY = "inventory"
WHO_AM_I = "1.3.6.1.4.1.4203.1.11.3"


def directory_target(
    slapd: Slapd, *, ca_file: str, password_file: str, scheme: str = "ldaps"
) -> dict[str, object]:
    """A gateway.yaml LDAP target for the sample directory, least privilege for the demo's
    work: bind only as the ``inventory`` identity (credential injection), ask who it is (RFC
    4532), search the whole directory, change ``member`` and ``description`` of groups under
    ``ou=Managed Groups``, never touch ``cn=Domain Admins``; LAPS and password attributes are
    never returned (the default ``never_returned``)."""
    return {
        "description": "the sample OpenLDAP directory",
        "scheme": scheme,
        "host": "127.0.0.1",
        "port": slapd.ldaps_port if scheme == "ldaps" else slapd.ldap_port,
        "allow_special_addresses": True,
        "tls": {"ca_file": ca_file, "server_name": "localhost"},
        "ldap": {
            "bind_identities": {
                BIND_IDENTITY: {"dn": SERVICE_DN, "password": {"file": password_file}}
            },
            "never_reachable": [PROTECTED_GROUP],
            # Who am I (RFC 4532): lets the SaaS see which account it works as.
            "extended_operations": [WHO_AM_I],
            "operations": [
                {
                    "name": "who-am-i",
                    "kinds": ["extended"],
                    "bind_as": [BIND_IDENTITY],
                },
                {"name": "bind-inventory", "kinds": ["bind"], "bind_as": [BIND_IDENTITY]},
                {
                    "name": "inventory-search",
                    "kinds": ["search"],
                    "subtrees": [SUFFIX],
                    "attributes": ["*"],
                    "bind_as": [BIND_IDENTITY],
                },
                {
                    "name": "manage-groups",
                    "kinds": ["modify"],
                    "subtrees": [MANAGED_GROUPS],
                    "attributes": ["member", "description"],
                    "bind_as": [BIND_IDENTITY],
                },
            ],
        },
    }
