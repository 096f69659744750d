"""Coverage-guided fuzz targets (atheris + libFuzzer) for the two parsers that see attacker bytes
first: the relay control-message parser, the request canonicaliser and the LDAP PDU reader.

Run through ``fuzz/run.py``; directly: ``python fuzz/targets.py control|canonical|ldap [libFuzzer
flags] [corpus dirs]``. A target fails (libFuzzer writes a ``crash-*`` file and exits non-zero)
when its invariant breaks:

``control``
    :func:`gateway.hybridconnection.messages.parse_command` raises only ``ProtocolError``; a
    control channel fed the same bytes as a text message, a binary message and two fragments never
    raises, and never reports a request whose id, method, target or headers hold CR, LF or NUL.
``canonical``
    :func:`gateway.forward.canonical.canonicalise` raises only ``RequestRejected``; an accepted
    path is a fixed point (canonicalising it again gives the same path and segments), holds no dot
    segment, encoded slash, backslash or NUL, and ``/api/*`` matches it only if its first segment is
    exactly ``api``,
    it has exactly two segments and no trailing slash.

``ldap``
    :class:`gateway.ldap.session.LdapSession` fed the bytes whole and in two pieces raises only
    ``LdapError``; the policy input of every decoded request raises only ``LdapRefusedError``;
    a DN that parses is a fixed point of parsing its string form.

Hangs and memory blow-ups are caught by libFuzzer's ``-timeout`` and ``-rss_limit_mb``.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable, Sequence

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports(include=["gateway"]):
    from gateway.config.model import GatewayConfig
    from gateway.config.patterns import PathPattern
    from gateway.forward.canonical import RequestRejected, canonicalise
    from gateway.hybridconnection.addresses import RendezvousPolicy
    from gateway.hybridconnection.errors import ProtocolError
    from gateway.hybridconnection.framing import (
        ListenerChannel,
        Opcode,
        RequestReceived,
        SocketKind,
    )
    from gateway.hybridconnection.messages import parse_command
    from gateway.ldap.dn import Dn, MatchingRules
    from gateway.ldap.errors import DnError, LdapError, LdapRefusedError
    from gateway.ldap.policy_input import ldap_input
    from gateway.ldap.session import LdapSession

_WIRE_UNSAFE = re.compile(r"[\x00\r\n]")
_POLICY = RendezvousPolicy(entity_path="hc-1")
_API = PathPattern.parse("/api/*")
_CONFIG = GatewayConfig.model_validate(
    {
        "version": 1,
        "gateway": {"id": "agent-1"},
        "empowerid": {"url": "https://tenant.empowerid.example"},
        "targets": {
            "erp": {
                "scheme": "https",
                "host": "erp.corp.local",
                "port": 8443,
                "allowed_cidrs": ["10.1.2.0/24"],
                "operations": [{"name": "read", "methods": ["GET", "POST"], "paths": ["/api/*"]}],
            },
            "ldap": {
                "scheme": "tcp",
                "host": "dc01.corp.local",
                "port": 636,
                "allowed_cidrs": ["10.1.3.0/24"],
            },
        },
    }
)
_METHODS = ["GET", "POST", "DELETE", "get", "TRACE", "CONNECT", "G\x00T", ""]
_SELECTORS = ["erp", "ldap", "erp.corp.local:8443", "ERP.CORP.LOCAL:8443", "erp.corp.local.:8443"]


def _check_channel_events(events: Sequence[object]) -> None:
    for event in events:
        if isinstance(event, RequestReceived):
            command = event.command
            fields = [command.id, command.method, command.request_target]
            fields += [name + value for name, value in command.request_headers.items()]
            if any(_WIRE_UNSAFE.search(text) for text in fields):
                raise AssertionError("a wire-unsafe request passed the control channel")


def control(data: bytes) -> None:
    """Invariant check for one control-channel input."""
    with contextlib.suppress(ProtocolError):
        parse_command(data)
    try:
        text: str | bytes = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data
    for message in (text, data):
        channel = ListenerChannel(SocketKind.CONTROL, check_address=_POLICY.check)
        _check_channel_events(channel.receive_message(message))
    half = len(data) // 2
    channel = ListenerChannel(SocketKind.RENDEZVOUS, check_address=_POLICY.check)
    _check_channel_events(channel.receive_frame(Opcode.TEXT, data[:half], fin=False))
    if not channel.closed:
        _check_channel_events(channel.receive_frame(Opcode.CONTINUATION, data[half:], fin=True))


def canonical(data: bytes) -> None:
    """Invariant check for one relayed request's method, selector, target and headers."""
    provider = atheris.FuzzedDataProvider(data)
    method = provider.PickValueInList(_METHODS)
    selector = provider.PickValueInList(_SELECTORS)
    headers = [
        (provider.ConsumeUnicodeNoSurrogates(12), provider.ConsumeUnicodeNoSurrogates(24))
        for _ in range(provider.ConsumeIntInRange(0, 4))
    ]
    websocket = provider.ConsumeBool()
    request_target = provider.ConsumeUnicodeNoSurrogates(provider.remaining_bytes())
    try:
        request = canonicalise(
            _CONFIG,
            method=method,
            target=selector,
            request_target=request_target,
            headers=headers,
            websocket=websocket,
        )
    except RequestRejected:
        return
    again = canonicalise(
        _CONFIG,
        method=method,
        target=request.target,
        request_target=request.path,
        headers=[],
        websocket=websocket,
    )
    if (again.path, again.segments) != (request.path, request.segments):
        raise AssertionError("an accepted path is not a fixed point of canonicalisation")
    for segment in request.segments:
        if segment in ("", ".", "..") or "%2F" in segment or "%5C" in segment:
            raise AssertionError(f"a refused form was accepted: {request.path!r}")
    if "\\" in request.path or "\x00" in request.path or "%00" in request.path:
        raise AssertionError(f"a refused character was accepted: {request.path!r}")
    matched = _API.matches(request.segments, request.trailing_slash)
    expected = len(request.segments) == 2 and request.segments[0] == "api"
    if matched != (expected and not request.trailing_slash):
        raise AssertionError(f"/api/* disagrees with the segments of {request.path!r}")


_LDAP_RULES = (MatchingRules(), MatchingRules(case_insensitive=False, allow_extended=True))


def ldap(data: bytes) -> None:
    """Invariant check for bytes a SaaS-side LDAP client sends, whole and in two pieces."""
    for pieces in ((data,), (data[: len(data) // 2], data[len(data) // 2 :])):
        session = LdapSession()
        try:
            decoded = [pdu for piece in pieces for pdu in session.receive_from_client(piece)]
        except LdapError:
            continue
        for pdu in decoded:
            if pdu.request is None:
                continue
            for rules in _LDAP_RULES:
                with contextlib.suppress(LdapRefusedError):
                    ldap_input(pdu.request, rules)
            try:
                dn = Dn.parse(pdu.request.dn)
            except DnError:
                continue
            if Dn.parse(str(dn)) != dn:
                raise AssertionError(f"a DN is not a fixed point: {pdu.request.dn!r}")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "control": control,
    "canonical": canonical,
    "ldap": ldap,
}


def main(argv: list[str]) -> None:
    """``targets.py NAME [libFuzzer arguments]``: fuzz one target until libFuzzer stops."""
    if len(argv) < 2 or argv[1] not in TARGETS:
        raise SystemExit(f"usage: {argv[0]} {{{'|'.join(TARGETS)}}} [libFuzzer flags]")
    atheris.Setup([argv[0], *argv[2:]], TARGETS[argv[1]])
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
