"""The third-party servers of the tests and the demo start on another port when the one they
were given is taken: each test listens on that port itself, then starts the real server on it
first and requires it to come up elsewhere and answer there (gateway.devkit.ports)."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
import redis

from gateway.devkit.ports import ADDRESS_IN_USE, ServerStartError, loopback_ports
from gateway.devkit.slapd import sample_directory
from tests.redisserver import PASSWORD, RedisServer

from .slapd import slapd_unavailable_reason
from .squid import run_squid, squid_unavailable_reason


def test_redis_server_comes_up_on_another_port(tmp_path: Path, taken_port: int) -> None:
    server = RedisServer(tmp_path, ports=[taken_port])
    server.start()
    try:
        assert server.port != taken_port
        with redis.Redis(host="127.0.0.1", port=server.port, password=PASSWORD) as client:
            assert client.ping()
    finally:
        server.stop()
    assert "Address already in use" not in (tmp_path / "redis.log").read_text()


def test_redis_server_restart_needs_its_port_back(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    server.stop()
    # Another process takes the port while the server is down: the restart says so.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", server.port))
        holder.listen()
        with pytest.raises(ServerStartError, match=f"could not get port {server.port} back") as e:
            server.start()
    assert ADDRESS_IN_USE in str(e.value)
    assert server.process is None


def test_squid_comes_up_on_another_port(taken_port: int) -> None:
    reason = squid_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with run_squid(with_auth=False, first_port=taken_port) as proxy:
        assert proxy.port != taken_port
        # squid's own answer: a destination it refuses by configuration.
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as client:
            client.sendall(b"GET http://127.0.0.2/ HTTP/1.1\r\nHost: 127.0.0.2\r\n\r\n")
            head = client.recv(200)
        assert head.startswith(b"HTTP/1.1 403"), head


def test_slapd_comes_up_on_other_ports(tmp_path: Path, taken_port: int) -> None:
    reason = slapd_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    first = [taken_port, loopback_ports(1)[0]]
    with sample_directory(tmp_path, first_ports=first) as slapd:
        assert taken_port not in (slapd.ldap_port, slapd.ldaps_port)
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        with (
            socket.create_connection(("127.0.0.1", slapd.ldaps_port), timeout=30) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            assert tls.version() is not None
