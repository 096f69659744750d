"""The gateway's own TLS to a real slapd: ldaps, StartTLS on ldap, pinning and host names."""

from __future__ import annotations

import ssl

import pytest

from gateway.config.model import Target
from gateway.forward.dial import system_resolver
from gateway.forward.streams import open_tcp
from gateway.ldap.codec import ResultCode, decode_response, encode_simple_bind, pdu_length
from gateway.ldap.directory import DirectoryConnection, DirectoryError, DirectoryTls, secure

from ..slapd import SERVICE_DN, SERVICE_PASSWORD
from .conftest import TlsDirectory

TIMEOUT = 10.0


def _target(port: int) -> Target:
    return Target.model_validate(
        {"scheme": "tcp", "host": "127.0.0.1", "port": port, "allow_special_addresses": True}
    )


def _context(ca_pem: bytes) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def _open(port: int, tls: DirectoryTls) -> DirectoryConnection:
    reader, writer = await open_tcp(
        _target(port), resolver=system_resolver, connect_timeout=TIMEOUT
    )
    return await secure(reader, writer, tls, within=TIMEOUT)


async def _bind(connection: DirectoryConnection) -> int | None:
    await connection.write(encode_simple_bind(7, SERVICE_DN, SERVICE_PASSWORD.encode()))
    data = b""
    while (length := pdu_length(data, 1 << 20)) is None or len(data) < length:
        chunk = await connection.read()
        assert chunk
        data += chunk
    response = decode_response(data)
    assert response.message_id == 7
    return response.result_code


@pytest.mark.parametrize("kind", ["ldaps", "starttls"])
async def test_tls_to_the_directory(tls_directory: TlsDirectory, kind: str) -> None:
    slapd = tls_directory.slapd
    port = slapd.ldaps_port if kind == "ldaps" else slapd.ldap_port
    connection = await _open(
        port, DirectoryTls(_context(tls_directory.ca_pem), "localhost", kind == "starttls")
    )
    try:
        assert connection.tls_version in ("TLSv1.2", "TLSv1.3")
        assert await _bind(connection) == ResultCode.SUCCESS
    finally:
        await connection.close()


async def test_a_directory_under_another_ca_is_refused(tls_directory: TlsDirectory) -> None:
    context = ssl.create_default_context()  # the system CAs: not the directory's
    with pytest.raises(DirectoryError) as caught:
        await _open(tls_directory.slapd.ldaps_port, DirectoryTls(context, "localhost", False))
    assert caught.value.code == "directory_tls_failed"


async def test_a_directory_under_another_name_is_refused(tls_directory: TlsDirectory) -> None:
    context = _context(tls_directory.ca_pem)
    with pytest.raises(DirectoryError) as caught:
        await _open(tls_directory.slapd.ldap_port, DirectoryTls(context, "dc1.corp.example", True))
    assert caught.value.code == "directory_tls_failed"
    assert "hostname" in str(caught.value).lower() or "mismatch" in str(caught.value).lower()


async def test_starttls_against_an_ldaps_port_fails_closed(tls_directory: TlsDirectory) -> None:
    # The server expects a TLS ClientHello and gets an LDAP PDU: it drops the connection.
    with pytest.raises(DirectoryError):
        await _open(
            tls_directory.slapd.ldaps_port,
            DirectoryTls(_context(tls_directory.ca_pem), "localhost", True),
        )


async def test_cleartext_only_when_asked(tls_directory: TlsDirectory) -> None:
    connection = await _open(tls_directory.slapd.ldap_port, DirectoryTls(None, "localhost", False))
    try:
        assert connection.tls_version is None
        assert await _bind(connection) == ResultCode.SUCCESS
    finally:
        await connection.close()
