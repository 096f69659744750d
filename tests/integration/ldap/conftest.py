"""Fixtures for the LDAP suites: a real slapd with TLS on loopback and the sample directory."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.devkit.slapd import sample_directory

from ..slapd import Slapd, slapd_unavailable_reason


@dataclass(frozen=True)
class TlsDirectory:
    """A running slapd with TLS listeners, and the CA its certificate chains to."""

    slapd: Slapd
    ca_file: Path
    ca_pem: bytes


@pytest.fixture(scope="module")
def tls_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsDirectory]:
    """slapd serving the sample directory, with ldap:// (StartTLS) and ldaps:// on loopback
    under a certificate for ``localhost`` and 127.0.0.1 from a throw-away CA."""
    reason = slapd_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("directory-tls")
    with sample_directory(directory) as slapd:
        yield TlsDirectory(slapd, directory / "ca.pem", (directory / "ca.pem").read_bytes())
