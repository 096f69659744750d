"""A faster reader for the directory's answers: asn1crypto instead of pyasn1 on the hot path.

Why: a search answer is one PDU per entry, and the proxy must read each one (its message id and
kind, for the operation bookkeeping; an entry's DN, for never-reachable subtrees; its attribute
types, for stripping). pyasn1 builds an object per TLV, about 380 us per typical entry on the
build machine (benchmarks/ldap-codec-report.md), which made a large search cost seconds of
gateway CPU. asn1crypto (maintained by the author of Package Control, pure Python, no
dependencies) parses lazily: it reads a SEQUENCE's components only when asked, so the attribute
*values* of an entry, the bulk of its bytes, are never touched. benchmarks/ldap-proxy-report.md
has the figures.

What it reads, it reads exactly as pyasn1 does (``tests/unit/ldap/test_fastread.py`` holds the
differential property test against :func:`gateway.ldap.codec.decode_response`): definite and
indefinite lengths alike are BER, and a client reads the same TLV boundaries, so the attribute
types the gateway strips by are the ones the SaaS would see. What it does not read, it does not
judge: the values inside an entry's attribute sets pass as the directory encoded them. The URIs of
continuation references and referrals are read (the proxy passes only those that stay within
the operation's grant, :mod:`gateway.ldap.disclosure`). Requests from the SaaS, where a
reading that differs from the directory's would matter, are still decoded by pyasn1 in full.

Only the directory's side uses this reader; anything it refuses is a protocol error, as with
``decode_response``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from asn1crypto import core

from gateway.ldap.asn1 import MAX_INT
from gateway.ldap.codec import DEFAULT_LIMITS, Control, Limits, Response, check_response_controls
from gateway.ldap.errors import LdapProtocolError


class _ResultCode(core.Integer):  # type: ignore[misc]
    # ENUMERATED (universal tag 10) read as its number: extensible, as result codes are.
    tag = 10


class _Referral(core.SequenceOf):  # type: ignore[misc]
    _child_spec = core.OctetString


_Fields = list[tuple[str, Any, dict[str, Any]]]


def _result(*extra: tuple[str, Any, dict[str, Any]]) -> _Fields:
    # LDAPResult (RFC 4511 section 4.1.9): resultCode ENUMERATED, matchedDN, diagnosticMessage,
    # referral [3] OPTIONAL, then the operation's own components.
    return [
        ("resultCode", _ResultCode, {}),
        ("matchedDN", core.OctetString, {}),
        ("diagnosticMessage", core.OctetString, {}),
        ("referral", _Referral, {"implicit": 3, "optional": True}),
        *extra,
    ]


class _Result(core.Sequence):  # type: ignore[misc]
    _fields: ClassVar[_Fields] = _result()


class _BindResponse(core.Sequence):  # type: ignore[misc]
    _fields: ClassVar[_Fields] = _result(
        ("serverSaslCreds", core.OctetString, {"implicit": 7, "optional": True})
    )


class _ExtendedResponse(core.Sequence):  # type: ignore[misc]
    _fields: ClassVar[_Fields] = _result(
        ("responseName", core.OctetString, {"implicit": 10, "optional": True}),
        ("responseValue", core.OctetString, {"implicit": 11, "optional": True}),
    )


class _IntermediateResponse(core.Sequence):  # type: ignore[misc]
    _fields: ClassVar[_Fields] = [
        ("responseName", core.OctetString, {"implicit": 0, "optional": True}),
        ("responseValue", core.OctetString, {"implicit": 1, "optional": True}),
    ]


class _Values(core.SetOf):  # type: ignore[misc]
    _child_spec = core.OctetString


class _PartialAttribute(core.Sequence):  # type: ignore[misc]
    _fields: ClassVar[_Fields] = [("type", core.OctetString, {}), ("vals", _Values, {})]


class _Attributes(core.SequenceOf):  # type: ignore[misc]
    _child_spec = _PartialAttribute


class _Entry(core.Sequence):  # type: ignore[misc]
    _fields: ClassVar[_Fields] = [
        ("objectName", core.OctetString, {}),
        ("attributes", _Attributes, {}),
    ]


class _References(core.SequenceOf):  # type: ignore[misc]
    _child_spec = core.OctetString


def _app(number: int) -> dict[str, Any]:
    return {"implicit": ("application", number)}


class _ProtocolOp(core.Choice):  # type: ignore[misc]
    # Only the alternatives a directory may send (RFC 4511 section 4.2-4.13).
    _alternatives: ClassVar[_Fields] = [
        ("bindResponse", _BindResponse, _app(1)),
        ("searchResEntry", _Entry, _app(4)),
        ("searchResDone", _Result, _app(5)),
        ("searchResRef", _References, _app(19)),
        ("modifyResponse", _Result, _app(7)),
        ("addResponse", _Result, _app(9)),
        ("delResponse", _Result, _app(11)),
        ("modDNResponse", _Result, _app(13)),
        ("compareResponse", _Result, _app(15)),
        ("extendedResp", _ExtendedResponse, _app(24)),
        ("intermediateResponse", _IntermediateResponse, _app(25)),
    ]


class _Control(core.Sequence):  # type: ignore[misc]
    _fields: ClassVar[_Fields] = [
        ("controlType", core.OctetString, {}),
        ("criticality", core.Boolean, {"default": False}),
        ("controlValue", core.OctetString, {"optional": True}),
    ]


class _Controls(core.SequenceOf):  # type: ignore[misc]
    _child_spec = _Control


class _Message(core.Sequence):  # type: ignore[misc]
    _fields: ClassVar[_Fields] = [
        ("messageID", core.Integer, {}),
        ("protocolOp", _ProtocolOp, {}),
        ("controls", _Controls, {"implicit": 0, "optional": True}),
    ]


def _text(value: Any) -> str:
    # LDAPString is UTF-8 (section 4.1.2); anything else is a malformed PDU.
    try:
        return bytes(value.native).decode("utf-8")
    except UnicodeDecodeError:
        raise LdapProtocolError("ldap-malformed-pdu", "an LDAPString is not UTF-8") from None


def read_response(pdu: bytes, limits: Limits | None = None) -> Response:
    """The :class:`Response` of one directory PDU, as ``decode_response`` gives it.

    Raises ``LdapProtocolError`` for anything that is not a well-formed response.
    """
    limits = limits or DEFAULT_LIMITS
    if len(pdu) > limits.max_response_bytes:
        raise LdapProtocolError("ldap-pdu-too-large", f"a PDU of {len(pdu)} bytes")
    try:
        return _read(pdu)
    except LdapProtocolError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError) as exc:
        # asn1crypto reports grammar and length errors as ValueError (and, for some malformed
        # input, the others): none of them may escape as anything but a protocol error.
        raise LdapProtocolError("ldap-malformed-pdu", f"not an RFC 4511 response: {exc}") from None


def _read(pdu: bytes) -> Response:
    message = _Message.load(pdu, strict=True)
    message_id = message["messageID"].native
    if not 0 <= message_id <= MAX_INT:
        raise LdapProtocolError("ldap-bad-message-id", f"message id {message_id} (section 4.1.1)")
    op = message["protocolOp"]
    kind = op.name
    chosen = op.chosen
    controls = _controls(message["controls"])
    if kind == "searchResEntry":
        attributes = tuple(_text(item["type"]) for item in chosen["attributes"])
        return Response(
            message_id,
            kind,
            dn=_text(chosen["objectName"]),
            attributes=attributes,
            controls=controls,
        )
    if kind == "searchResRef":
        referrals = tuple(_text(uri) for uri in chosen)
        return Response(message_id, kind, controls=controls, referrals=referrals)
    if kind == "intermediateResponse":
        return Response(message_id, kind, controls=controls)
    name = ""
    if kind == "extendedResp" and chosen["responseName"].native is not None:
        name = _text(chosen["responseName"])
    referral = chosen["referral"]
    return Response(
        message_id,
        kind,
        result_code=chosen["resultCode"].native,
        diagnostic=_text(chosen["diagnosticMessage"]),
        dn=_text(chosen["matchedDN"]),
        response_name=name,
        controls=controls,
        referrals=() if referral.native is None else tuple(_text(uri) for uri in referral),
    )


def _controls(controls: Any) -> tuple[Control, ...]:
    if controls.native is None:
        return ()
    check_response_controls(len(controls))
    return tuple(
        Control(
            oid=_text(item["controlType"]),
            critical=bool(item["criticality"].native),
            value=None if item["controlValue"].native is None else item["controlValue"].native,
        )
        for item in controls
    )
