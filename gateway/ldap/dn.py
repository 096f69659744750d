"""Distinguished names: RFC 4514 parsing and comparison the way a directory compares them.

A gateway that allows ``OU=Managed Groups,DC=corp,DC=example`` and forbids ``OU=Tier0,...`` must
decide on the entry the directory will act on, not on the spelling the client chose. So:

* Parsing follows RFC 4514 section 3 (``\\,`` and the other escapes, ``\\2C`` hex pairs decoded as
  UTF-8, ``#`` BER-encoded values, multi-valued RDNs joined by ``+``, names or dotted OIDs as
  attribute types), also accepting the spaces around ``,`` ``+`` ``=`` that Active Directory and
  OpenLDAP accept. ``;`` as a separator (RFC 2253 legacy) and the ``OID.`` prefix are refused.
* Attribute types compare case-insensitively (RFC 4512 section 2.5), and a well-known name and its
  OID are the same type (``2.5.4.3`` is ``cn``). A dotted OID the gateway cannot name is refused:
  it could be an alias of a protected type.
* Values are prepared as RFC 4518 prescribes for the caseIgnoreMatch / caseExactMatch rules that
  naming attributes use: characters mapped to nothing or to a space (section 2.2), Unicode NFKC
  (2.3), case folding when the directory compares values case-insensitively (the default, and
  always so for Active Directory), prohibited characters refused (2.4), and insignificant spaces
  removed (2.6.1). A full-width ``U+FF2F U+FF35`` value therefore equals ``OU``, as it does on
  the server.
* Subtree tests compare RDN sequences from the root, never string suffixes, and a multi-valued RDN
  is a set of (type, value) pairs.
* Active Directory's ``<GUID=...>``, ``<SID=...>`` and ``<WKGUID=...>`` forms name an entry without
  saying where it is; they are refused unless the caller allows them, and an allowed one is within
  no subtree but the root.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

from pyasn1 import error as asn1_error
from pyasn1.type import char, univ

from gateway.ldap import ber
from gateway.ldap.errors import DnError

MAX_DN_LENGTH = 8192
MAX_RDNS = 64
MAX_AVAS_PER_RDN = 16

# RFC 4519 / RFC 4524 / RFC 2247 names of the attribute types that appear in DNs, with their OIDs.
# A type in a DN is normalised to its OID when it is listed here, so either spelling matches.
KNOWN_TYPES: dict[str, str] = {
    "cn": "2.5.4.3",
    "commonname": "2.5.4.3",
    "sn": "2.5.4.4",
    "surname": "2.5.4.4",
    "serialnumber": "2.5.4.5",
    "c": "2.5.4.6",
    "countryname": "2.5.4.6",
    "l": "2.5.4.7",
    "localityname": "2.5.4.7",
    "st": "2.5.4.8",
    "stateorprovincename": "2.5.4.8",
    "street": "2.5.4.9",
    "streetaddress": "2.5.4.9",
    "o": "2.5.4.10",
    "organizationname": "2.5.4.10",
    "ou": "2.5.4.11",
    "organizationalunitname": "2.5.4.11",
    "title": "2.5.4.12",
    "description": "2.5.4.13",
    "name": "2.5.4.41",
    "givenname": "2.5.4.42",
    "gn": "2.5.4.42",
    "initials": "2.5.4.43",
    "dnqualifier": "2.5.4.46",
    "uid": "0.9.2342.19200300.100.1.1",
    "userid": "0.9.2342.19200300.100.1.1",
    "mail": "0.9.2342.19200300.100.1.3",
    "rfc822mailbox": "0.9.2342.19200300.100.1.3",
    "dc": "0.9.2342.19200300.100.1.25",
    "domaincomponent": "0.9.2342.19200300.100.1.25",
}
_KNOWN_OIDS = frozenset(KNOWN_TYPES.values())
# The short name of each OID: the first name listed for it above.
_SHORT_NAMES: dict[str, str] = {}
for _name, _oid in KNOWN_TYPES.items():
    _SHORT_NAMES.setdefault(_oid, _name)

_DESCR = re.compile(r"[A-Za-z][A-Za-z0-9-]*\Z")
_NUMERICOID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+\Z")
_EXTENDED_FORMS = ("<guid=", "<sid=", "<wkguid=")

# RFC 4514 section 2.4 / 3: characters that must be escaped in a value (or may be).
_SPECIAL = frozenset(',+"\\<>;=# ')
_HEX = frozenset("0123456789abcdefABCDEF")

# RFC 4518 section 2.2 mapping. To SPACE: these white-space controls and every separator
# character (categories Zs, Zl, Zp). To nothing: every other control (Cc) and format character
# (Cf), and the few others the section names (soft hyphens, combining grapheme joiner, variation
# selectors, object replacement character).
_MAP_TO_SPACE = frozenset([0x0009, 0x000A, 0x000B, 0x000C, 0x000D, 0x0085])
_SEPARATORS = frozenset({"Zs", "Zl", "Zp"})
_CONTROLS = frozenset({"Cc", "Cf"})
_MAP_TO_NOTHING = frozenset(
    [0x00AD, 0x1806, 0x034F, 0xFFFC, *range(0x180B, 0x180E), *range(0xFE00, 0xFE10)]
)


@dataclass(frozen=True)
class MatchingRules:
    """How the directory compares DN values: the per-directory setting behind ``Dn.parse``.

    ``case_insensitive`` is true for Active Directory and for the usual naming attributes of any
    LDAPv3 server (cn, ou, dc, o use caseIgnoreMatch); ``allow_extended`` lets AD's
    ``<GUID=...>``-style forms through (they still fall within no subtree but the root).
    """

    case_insensitive: bool = True
    allow_extended: bool = False


DEFAULT_RULES = MatchingRules()


def _prepare(value: str, rules: MatchingRules) -> str:
    """RFC 4518 string preparation of one attribute value (section 2.1-2.6)."""
    mapped = []
    for ch in value:
        point = ord(ch)
        category = unicodedata.category(ch)
        # 2.2: the white-space controls and every separator (space, line or paragraph: Zs, Zl,
        # Zp) become SPACE; every other control (Cc) or format character (Cf: bidirectional
        # overrides, zero-width marks, tags) is mapped to nothing, as are the listed others. A
        # directory that prepares 'Tier0<U+202E>' as 'Tier0' must not see another name here.
        if point in _MAP_TO_SPACE or category in _SEPARATORS:
            mapped.append(" ")
        elif point in _MAP_TO_NOTHING or category in _CONTROLS:
            continue
        else:
            mapped.append(ch)
    text = unicodedata.normalize("NFKC", "".join(mapped))
    if rules.case_insensitive:
        # RFC 4518 2.3 folds with RFC 3454 table B.2, which is case folding followed by NFKC.
        text = unicodedata.normalize("NFKC", text.casefold())
    for ch in text:
        category = unicodedata.category(ch)
        # 2.4: unassigned, private use, surrogates and U+FFFD are prohibited.
        if category in ("Cn", "Co", "Cs") or ch == "\ufffd":
            raise DnError("ldap-dn-unsupported", f"a DN value contains U+{ord(ch):04X}")
    # 2.6.1: leading and trailing spaces are insignificant; inner runs compare as one space.
    return " ".join(part for part in text.split(" ") if part) if " " in text else text


def _attribute_type(raw: str) -> str:
    name = raw.strip()
    if _DESCR.match(name):
        lowered = name.lower()
        if lowered == "oid":
            raise DnError("ldap-dn-syntax", "an attribute type named OID")
        return KNOWN_TYPES.get(lowered, lowered)
    if _NUMERICOID.match(name):
        if name not in _KNOWN_OIDS:
            raise DnError(
                "ldap-dn-unsupported",
                f"attribute type {name} is an OID the gateway cannot compare with a name",
            )
        return name
    raise DnError("ldap-dn-syntax", f"{raw!r} is not an attribute type")


def _ber_value(hexdigits: str) -> str:
    # RFC 4514 section 2.4 / 3: '#' followed by the BER encoding of the value. Decode it with
    # pyasn1 and keep it only if it is a string; anything else cannot be compared as text.
    if not hexdigits or len(hexdigits) % 2 or not set(hexdigits) <= _HEX:
        raise DnError("ldap-dn-syntax", "a '#' value must be an even number of hex digits")
    try:
        value, rest = ber.decode(bytes.fromhex(hexdigits))
    except (asn1_error.PyAsn1Error, ValueError) as exc:
        raise DnError("ldap-dn-syntax", f"a '#' value is not BER: {exc}") from None
    if rest or not isinstance(value, univ.OctetString | char.AbstractCharacterString):
        raise DnError("ldap-dn-unsupported", "a '#' value that is not a string")
    try:
        return bytes(value.asOctets()).decode("utf-8")
    except UnicodeDecodeError:
        raise DnError("ldap-dn-unsupported", "a '#' value that is not UTF-8") from None


def _split(text: str, separators: str) -> list[tuple[str, int]]:
    """Split at unescaped separators; returns (piece, offset) pairs. Escapes stay in pieces."""
    pieces: list[tuple[str, int]] = []
    start = 0
    index = 0
    while index < len(text):
        ch = text[index]
        if ch == "\\":
            index += 2
            continue
        if ch in separators:
            pieces.append((text[start:index], start))
            start = index + 1
        index += 1
    pieces.append((text[start:], start))
    return pieces


def is_utf8_text(text: str) -> bool:
    """Whether ``text`` has a UTF-8 encoding (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unescape(raw: str) -> str:
    """The value of an RFC 4514 ``string`` (section 3), unescaped; raises on a bad escape.

    Unescaped leading and trailing spaces are dropped (they are what a client adds around
    separators); escaped ones are part of the value.
    """
    out = bytearray()
    significant = 0  # length of ``out`` up to the last escaped or non-space character
    index = 0
    while index < len(raw) and raw[index] == " ":
        index += 1
    while index < len(raw):
        ch = raw[index]
        if ch == "\\":
            pair = raw[index + 1 : index + 3]
            if len(pair) == 2 and set(pair) <= _HEX:
                out += bytes.fromhex(pair)
                index += 3
            elif pair[:1] and pair[0] in _SPECIAL:
                out += pair[0].encode("utf-8")
                index += 2
            else:
                raise DnError("ldap-dn-syntax", "a backslash not followed by a special or hex pair")
            significant = len(out)
            continue
        if ch in ',+"<>;' or ch == "\x00":
            # RFC 4514 section 3: these must be escaped in a value.
            raise DnError("ldap-dn-syntax", f"an unescaped {ch!r} in a DN value")
        out += ch.encode("utf-8")
        if ch != " ":
            significant = len(out)
        index += 1
    try:
        return out[:significant].decode("utf-8")
    except UnicodeDecodeError:
        raise DnError("ldap-dn-syntax", "hex-escaped bytes that are not UTF-8") from None


def _ava(raw: str, rules: MatchingRules) -> tuple[str, str]:
    # The entries of one search share their upper RDNs (ou=People,dc=example,dc=com under every
    # person), and the proxy parses every entry's DN when a subtree is hidden: remembering short
    # AVAs spares the RFC 4518 preparation of the repeated ones. A pure function of its
    # arguments; a refused AVA raises every time (lru_cache keeps no exceptions).
    if len(raw) <= _MEMO_AVA_CHARS:
        return _memo_ava(raw, rules)
    return _parse_ava(raw, rules)


def _parse_ava(raw: str, rules: MatchingRules) -> tuple[str, str]:
    if "=" not in raw:
        raise DnError("ldap-dn-syntax", f"{raw.strip()!r} has no '='")
    type_part, value_part = raw.split("=", 1)
    attribute = _attribute_type(type_part)
    value = value_part.strip(" ")
    text = _ber_value(value[1:]) if value.startswith("#") else _unescape(value_part)
    return attribute, _prepare(text, rules)


# Bounds the memo at about _MEMO_AVAS * _MEMO_AVA_CHARS characters (1 Mi).
_MEMO_AVAS = 4096
_MEMO_AVA_CHARS = 256
_memo_ava = functools.lru_cache(maxsize=_MEMO_AVAS)(_parse_ava)


@dataclass(frozen=True)
class Dn:
    """A parsed DN: ``rdns`` from the leaf to the root, each a sorted tuple of (type, value).

    Types are OIDs where known, lower-case names otherwise; values are RFC 4518-prepared, so two
    ``Dn`` objects are equal exactly when the directory would consider them the same name.
    ``extended`` holds an allowed Active Directory ``<GUID=...>`` form, verbatim.
    """

    rdns: tuple[tuple[tuple[str, str], ...], ...]
    extended: str = ""

    @classmethod
    def parse(cls, text: str, rules: MatchingRules = DEFAULT_RULES) -> Dn:
        """Parse an RFC 4514 string; raises ``DnError`` (syntax, or cannot compare) otherwise."""
        if len(text) > MAX_DN_LENGTH:
            raise DnError("ldap-dn-too-long", f"a DN of {len(text)} characters")
        if not is_utf8_text(text):
            # A lone surrogate (a command-line argument that was not UTF-8, decoded with
            # surrogateescape) is no character of any DN (RFC 4514 section 3: UTF-8 strings).
            raise DnError("ldap-dn-syntax", "a DN that is not valid UTF-8 text")
        if text.lstrip(" ").lower().startswith(_EXTENDED_FORMS):
            if not rules.allow_extended:
                raise DnError(
                    "ldap-dn-extended-refused",
                    "an Active Directory <GUID=>/<SID=> DN names no place to check",
                )
            return cls((), extended=text.strip())
        if not text.strip(" "):
            return cls(())
        pieces = _split(text, ",")
        if len(pieces) > MAX_RDNS:
            raise DnError("ldap-dn-too-long", f"more than {MAX_RDNS} RDNs")
        rdns = []
        for piece, _ in pieces:
            avas = _split(piece, "+")
            if len(avas) > MAX_AVAS_PER_RDN:
                raise DnError("ldap-dn-too-long", f"more than {MAX_AVAS_PER_RDN} values in an RDN")
            parsed = tuple(sorted(_ava(ava, rules) for ava, _ in avas))
            if len({attribute for attribute, _ in parsed}) != len(parsed):
                raise DnError("ldap-dn-syntax", "an RDN names the same attribute twice")
            rdns.append(parsed)
        return cls(tuple(rdns))

    @property
    def is_root(self) -> bool:
        """The empty DN (the root DSE, or the whole directory as a subtree)."""
        return not self.rdns and not self.extended

    def within(self, base: Dn) -> bool:
        """True if this entry is ``base`` or below it (RDN sequence comparison from the root)."""
        if base.is_root:
            return True
        if self.extended or base.extended:
            return False
        depth = len(base.rdns)
        return len(self.rdns) >= depth and self.rdns[len(self.rdns) - depth :] == base.rdns

    def parent(self) -> Dn:
        """The DN one level up (the root's parent is the root)."""
        return Dn(self.rdns[1:])

    def child(self, rdn: Dn) -> Dn:
        """``rdn`` (a one-RDN DN) placed under this DN, as modify DN does (section 4.9)."""
        if len(rdn.rdns) != 1:
            raise DnError("ldap-dn-syntax", "a new RDN must be exactly one RDN")
        return Dn(rdn.rdns + self.rdns)

    def __str__(self) -> str:
        if self.extended:
            return self.extended
        return ",".join(
            "+".join(
                f"{_SHORT_NAMES.get(attribute, attribute)}={escape_value(value)}"
                for attribute, value in rdn
            )
            for rdn in self.rdns
        )


def escape_value(value: str) -> str:
    """RFC 4514 section 2.4 escaping of one value (used for display and in tests)."""
    out = []
    for index, ch in enumerate(value):
        if ch in ',+"\\<>;=' or (
            (ch == " " and index in (0, len(value) - 1)) or (ch == "#" and index == 0)
        ):
            out.append("\\" + ch)
        elif ch == "\x00":
            out.append("\\00")
        else:
            out.append(ch)
    return "".join(out)


def normalise_attribute(description: str) -> str:
    """The attribute type of a description, lower-cased, without options (RFC 4512 2.5).

    ``member;range=0-1499`` and ``Member`` are both ``member``: a rule names the type, and a
    client must not escape it by adding an option. OIDs map to names where known so a rule that
    names ``cn`` also covers ``2.5.4.3``.
    """
    base = description.split(";", 1)[0].strip().lower()
    oid = base if _NUMERICOID.match(base) else KNOWN_TYPES.get(base)
    return _SHORT_NAMES.get(oid, base) if oid else base
