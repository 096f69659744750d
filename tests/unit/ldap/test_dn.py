"""DN parsing and comparison (RFC 4514 syntax, RFC 4518 preparation, subtree by RDN sequence)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ldap.dn import Dn, MatchingRules, escape_value, normalise_attribute
from gateway.ldap.errors import DnError
from tests.unit.ldap.dn_strategies import dns, render

TIER0 = Dn.parse("OU=Tier0,DC=corp,DC=example")
KNOWN_CN = "2.5.4.3"


@pytest.mark.parametrize(
    "spelling",
    [
        "OU=Tier0,DC=corp,DC=example",
        "ou=tier0,dc=CORP,dc=Example",
        "ou = Tier0 , dc=corp ,  dc=example",
        "2.5.4.11=Tier0,0.9.2342.19200300.100.1.25=corp,domainComponent=example",
        "organizationalUnitName=Tier0,DC=corp,DC=example",
        "OU=\uff34\uff49\uff45\uff52\uff10,DC=corp,DC=example",  # full-width letters (NFKC)
        "OU=Tier\\30,DC=corp,DC=example",  # hex pair
        "OU=T\\69er0,DC=corp,DC=example",
        "OU=#130554696572\\30,DC=corp,DC=example".replace("\\30", "30"),  # BER PrintableString
        "OU=Tier\u00ad0,DC=corp,DC=example",  # soft hyphen maps to nothing (RFC 4518 2.2)
        "OU=Tier0\u200b,DC=corp,DC=example",  # zero width space maps to nothing
        "OU=\u00a0Tier0 ,DC=corp,DC=example",  # no-break space is insignificant at the edges
        # RFC 4518 2.2: every format character (Cf) maps to nothing, not only the zero widths:
        # bidirectional overrides, marks and isolates, tag characters, Arabic end of ayah.
        "OU=Tier0\u202e,DC=corp,DC=example",
        "OU=Tier\u200e0,DC=corp,DC=example",
        "OU=\u2066Tier0\u2069,DC=corp,DC=example",
        "OU=Tier0\U000e0041,DC=corp,DC=example",
        "OU=\u06ddTier0,DC=corp,DC=example",
        "OU=Tier0\\E2\\80\\AE,DC=corp,DC=example",  # the same override, hex-escaped
    ],
)
def test_spellings_of_the_same_entry_are_equal(spelling: str) -> None:
    assert Dn.parse(spelling) == TIER0
    assert Dn.parse("CN=admin," + spelling).within(TIER0)


@pytest.mark.parametrize(
    "other",
    [
        "OU=Tier0x,DC=corp,DC=example",
        "OU=xTier0,DC=corp,DC=example",
        "OU=Tier 0,DC=corp,DC=example",
        "CN=Tier0,DC=corp,DC=example",
        "OU=Tier0,DC=corp",
        "OU=Tier0\\,,DC=corp,DC=example",
        # A string-suffix check would take this as inside OU=Tier0; by RDN it is one RDN above.
        "CN=a\\,OU=Tier0,DC=corp,DC=example",
        "OU=Tier0+CN=x,DC=corp,DC=example",
    ],
)
def test_different_entries_are_not_within(other: str) -> None:
    assert not Dn.parse(other).within(TIER0)


def test_multi_valued_rdns_are_sets() -> None:
    assert Dn.parse("cn=a+sn=b,dc=x") == Dn.parse("SN=b + CN=a,dc=x")
    assert Dn.parse("cn=a+sn=b,dc=x") != Dn.parse("cn=a,dc=x")
    with pytest.raises(DnError, match="same attribute twice"):
        Dn.parse("cn=a+cn=b")


def test_case_sensitive_directories_keep_case() -> None:
    exact = MatchingRules(case_insensitive=False)
    assert Dn.parse("ou=Tier0,dc=x", exact) != Dn.parse("ou=tier0,dc=x", exact)
    assert Dn.parse("OU=Tier0,dc=x", exact) == Dn.parse("ou=Tier0,dc=x", exact)  # types still


def test_spaces_compare_as_the_directory_compares_them() -> None:
    # RFC 4518 2.6.1: leading/trailing spaces are insignificant, escaped or not, and inner runs
    # compare as one space; an escaped inner space is an ordinary space.
    assert Dn.parse("cn=\\ a\\ ") == Dn.parse("cn=a")
    assert Dn.parse("cn=a\\ b") == Dn.parse("cn=a b") == Dn.parse("cn=a   b")
    assert Dn.parse("cn=a b") != Dn.parse("cn=ab")
    assert Dn.parse("cn=   a") == Dn.parse("cn=a") == Dn.parse("cn=\\   a")
    # 2.2: white-space controls and every separator (space, line, paragraph) are SPACE.
    for separator in ("\t", "\u1680", "\u3000", "\u2028", "\u2029"):
        assert Dn.parse(f"cn=a{separator}b") == Dn.parse("cn=a b"), repr(separator)


# (text, reason, detail): the reason is what an LDAP client is answered with (a refused request,
# resultCode 50), the detail what `gateway validate` says of a DN written in gateway.yaml
# (gateway/config/ldap_semantics.py: "... is not a DN the gateway can compare: <detail>").
REFUSED = [
    ("cn=a;dc=b", "ldap-dn-syntax", "an unescaped ';' in a DN value"),
    ("cn", "ldap-dn-syntax", "'cn' has no '='"),
    ("X", "ldap-dn-syntax", "'X' has no '='"),
    # Only spaces make the root DN; any other white space is not nothing.
    ("\t", "ldap-dn-syntax", "'' has no '='"),
    # Only leading spaces may come before an Active Directory extended form.
    ("\t<GUID=x>", "ldap-dn-syntax", "'\\t<GUID' is not an attribute type"),
    ("X<GUID=x>", "ldap-dn-syntax", "'X<GUID' is not an attribute type"),
    (",cn=a", "ldap-dn-syntax", "'' has no '='"),
    ("+cn=a", "ldap-dn-syntax", "'' has no '='"),
    ("cn=a,b", "ldap-dn-syntax", "'b' has no '='"),
    ("cn=a\\", "ldap-dn-syntax", "a backslash not followed by a special or hex pair"),
    ("cn=a\\zz", "ldap-dn-syntax", "a backslash not followed by a special or hex pair"),
    ("cn=a\\ff", "ldap-dn-syntax", "hex-escaped bytes that are not UTF-8"),
    ("cn=a<b", "ldap-dn-syntax", "an unescaped '<' in a DN value"),
    ("cn=a\x00", "ldap-dn-syntax", "an unescaped '\\x00' in a DN value"),
    ("oid.2.5.4.3=a", "ldap-dn-syntax", "'oid.2.5.4.3' is not an attribute type"),
    ("OID=a", "ldap-dn-syntax", "an attribute type named OID"),
    # An OID that might alias a protected type.
    (
        "1.2.3.4=a",
        "ldap-dn-unsupported",
        "attribute type 1.2.3.4 is an OID the gateway cannot compare with a name",
    ),
    ("cn=#0201ff", "ldap-dn-unsupported", "a '#' value that is not a string"),  # BER INTEGER
    ("cn=#zz", "ldap-dn-syntax", "a '#' value must be an even number of hex digits"),
    ("cn=#", "ldap-dn-syntax", "a '#' value must be an even number of hex digits"),
    ("cn=#abc", "ldap-dn-syntax", "a '#' value must be an even number of hex digits"),
    ("cn=#04016e\t", "ldap-dn-syntax", "a '#' value must be an even number of hex digits"),
    ("cn=#0401ff", "ldap-dn-unsupported", "a '#' value that is not UTF-8"),
    # Every hex digit in both cases is still hex (an OCTET STRING of 11 octets, not UTF-8).
    ("cn=#040b0123456789abcdefABCDEF", "ldap-dn-unsupported", "a '#' value that is not UTF-8"),
    ("cn=a\ue000", "ldap-dn-unsupported", "a DN value contains U+E000"),  # private use (2.4)
    ("cn=a\u0378", "ldap-dn-unsupported", "a DN value contains U+0378"),  # unassigned (2.4)
    ("cn=a\ufffd", "ldap-dn-unsupported", "a DN value contains U+FFFD"),  # replacement (2.4)
    (
        "<GUID=f0e1d2c3-0000-0000-0000-000000000000>",
        "ldap-dn-extended-refused",
        "an Active Directory <GUID=>/<SID=> DN names no place to check",
    ),
    (
        "<SID=S-1-5-21-1-2-3-512>",
        "ldap-dn-extended-refused",
        "an Active Directory <GUID=>/<SID=> DN names no place to check",
    ),
    (
        " <WKGUID=a9d1ca15768811d1aded00c04fd8d5cd,DC=corp>",
        "ldap-dn-extended-refused",
        "an Active Directory <GUID=>/<SID=> DN names no place to check",
    ),
    ("cn=" + "a" * 9000, "ldap-dn-too-long", "a DN of 9003 characters"),
    (",".join(["dc=a"] * 65), "ldap-dn-too-long", "more than 64 RDNs"),
    ("+".join(f"x{i}=a" for i in range(17)), "ldap-dn-too-long", "more than 16 values in an RDN"),
    ("cn=a+cn=b", "ldap-dn-syntax", "an RDN names the same attribute twice"),
]


@pytest.mark.parametrize(("text", "reason", "detail"), REFUSED)
def test_refused(text: str, reason: str, detail: str) -> None:
    with pytest.raises(DnError) as raised:
        Dn.parse(text)
    assert (raised.value.reason, raised.value.detail) == (reason, detail)


def test_a_hash_value_that_is_not_ber_says_so() -> None:
    with pytest.raises(DnError) as raised:
        Dn.parse("cn=#04")  # an OCTET STRING header without its length
    assert raised.value.reason == "ldap-dn-syntax"
    assert raised.value.detail.startswith("a '#' value is not BER: ")


def test_the_bounds_themselves_pass() -> None:
    assert len(Dn.parse(",".join(["dc=a"] * 64)).rdns) == 64
    assert len(Dn.parse("+".join(f"x{i}=a" for i in range(16))).rdns[0]) == 16
    assert Dn.parse("cn=" + "a" * (8192 - 3)).rdns == (((KNOWN_CN, "a" * 8189),),)


def test_allowed_extended_forms_are_only_under_the_root() -> None:
    rules = MatchingRules(allow_extended=True)
    guid = Dn.parse("<GUID=f0e1d2c3-0000-0000-0000-000000000000>", rules)
    assert guid == Dn((), extended="<GUID=f0e1d2c3-0000-0000-0000-000000000000>")
    assert Dn.parse("  ", rules) == Dn(())
    assert guid.within(Dn.parse(""))
    assert not guid.within(TIER0)
    assert not TIER0.within(guid)


def test_a_value_is_ber_only_when_it_starts_with_a_hash() -> None:
    assert str(Dn.parse("cn=X#41")) == "cn=x#41"
    assert str(Dn.parse("cn= #0402c3a9")) == "cn=\u00e9"  # OCTET STRING 'é', after a space


def test_a_dn_is_shown_with_short_type_names_and_escapes() -> None:
    shown = str(Dn.parse("2.5.4.3=A\\2C B+sn=x,OU=Tier0,0.9.2342.19200300.100.1.25=corp,x-a=1"))
    assert shown == "cn=a\\, b+sn=x,ou=tier0,dc=corp,x-a=1"


def test_root_parent_child() -> None:
    root = Dn.parse("")
    assert root.is_root
    assert TIER0.within(root)
    assert not root.within(TIER0)
    assert Dn.parse("cn=x,OU=Tier0,DC=corp,DC=example").parent() == TIER0
    moved = Dn.parse("OU=Staff,DC=corp,DC=example").child(Dn.parse("CN=New"))
    assert moved == Dn.parse("cn=new,ou=staff,dc=corp,dc=example")
    with pytest.raises(DnError) as raised:
        TIER0.child(Dn.parse("cn=a,cn=b"))
    assert (raised.value.reason, raised.value.detail) == (
        "ldap-dn-syntax",
        "a new RDN must be exactly one RDN",
    )


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("member;range=0-1499", "member"),
        ("member;range=0-1499;binary", "member"),
        ("userCertificate;binary", "usercertificate"),
        ("CN", "cn"),
        ("commonName", "cn"),
        ("2.5.4.3", "cn"),
        ("ms-Mcs-AdmPwd", "ms-mcs-admpwd"),
        ("1.2.840.113556.1.4.90", "1.2.840.113556.1.4.90"),
    ],
)
def test_normalise_attribute(description: str, expected: str) -> None:
    assert normalise_attribute(description) == expected


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        (" a b ", "\\ a b\\ "),  # RFC 4514 2.4: a space is escaped only first or last
        ("a b", "a b"),
        ("#a#", "\\#a#"),  # and '#' only first
        ('a,b+c"d\\e<f>g;h=i', 'a\\,b\\+c\\"d\\\\e\\<f\\>g\\;h\\=i'),
        ("a\x00b", "a\\00b"),
    ],
)
def test_escape_value(value: str, escaped: str) -> None:
    assert escape_value(value) == escaped


# --- properties -----------------------------------------------------------------------------


def _parse_or_none(text: str) -> Dn | None:
    try:
        return Dn.parse(text)
    except DnError:
        return None


@settings(max_examples=300, deadline=None)
@given(dns, st.booleans(), st.booleans(), st.booleans())
def test_every_spelling_parses_to_the_same_dn(
    rdns: list[list[tuple[str, str]]], spaced: bool, upper: bool, hexed: bool
) -> None:
    plain = _parse_or_none(render(rdns, False, False, False))
    if plain is None:  # a value with a prohibited character: every spelling is refused
        assert _parse_or_none(render(rdns, spaced, upper, hexed)) is None
        return
    assert Dn.parse(render(rdns, spaced, upper, hexed)) == plain
    # Its string form parses back to the same DN.
    assert Dn.parse(str(plain)) == plain
    # Every suffix is an ancestor, and the DN is within each of them.
    for cut in range(len(rdns) + 1):
        ancestor = Dn.parse(render(rdns[cut:], False, False, False))
        assert plain.within(ancestor)
        if cut:
            assert not ancestor.within(plain)


@settings(max_examples=300, deadline=None)
@given(dns, dns)
def test_within_agrees_with_rdn_suffixes(
    left: list[list[tuple[str, str]]], right: list[list[tuple[str, str]]]
) -> None:
    a = _parse_or_none(render(left, False, False, False))
    b = _parse_or_none(render(right, False, False, False))
    if a is None or b is None:
        return
    expected = len(a.rdns) >= len(b.rdns) and a.rdns[len(a.rdns) - len(b.rdns) :] == b.rdns
    assert a.within(b) is expected
    joined = Dn.parse(render(left + right, False, False, False))
    assert joined.within(b)


def _round_trips_or_refuses(text: str) -> None:
    try:
        parsed = Dn.parse(text)
    except DnError:
        return
    assert Dn.parse(str(parsed)) == parsed


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_parses_or_raises_dn_error(text: str) -> None:
    _round_trips_or_refuses(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=',+=\\#"<>; abcAB0123', max_size=60))
def test_separator_soup_parses_or_raises_dn_error(text: str) -> None:
    _round_trips_or_refuses(text)


def test_a_dn_with_a_lone_surrogate_is_a_syntax_error_not_a_crash() -> None:
    # RFC 4514 section 3: a DN string is UTF-8; a lone surrogate has no UTF-8 form.
    with pytest.raises(DnError) as caught:
        Dn.parse("CN=\udcff,DC=corp,DC=example")
    # The detail is what `gateway explain --ldap` prints for such an argument.
    assert (caught.value.reason, caught.value.detail) == (
        "ldap-dn-syntax",
        "a DN that is not valid UTF-8 text",
    )
