"""DN parsing and comparison (RFC 4514 syntax, RFC 4518 preparation, subtree by RDN sequence)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ldap.dn import Dn, MatchingRules, normalise_attribute
from gateway.ldap.errors import DnError
from tests.unit.ldap.dn_strategies import dns, render

TIER0 = Dn.parse("OU=Tier0,DC=corp,DC=example")


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


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("cn=a;dc=b", "ldap-dn-syntax"),
        ("cn", "ldap-dn-syntax"),
        ("cn=a\\", "ldap-dn-syntax"),
        ("cn=a\\zz", "ldap-dn-syntax"),
        ("cn=a,b", "ldap-dn-syntax"),
        ("cn=a\\ff", "ldap-dn-syntax"),  # hex pair that is not UTF-8
        ("cn=a<b", "ldap-dn-syntax"),
        ("oid.2.5.4.3=a", "ldap-dn-syntax"),
        ("1.2.3.4=a", "ldap-dn-unsupported"),  # an OID that might alias a protected type
        ("cn=#0201ff", "ldap-dn-unsupported"),  # BER INTEGER, not a string
        ("cn=#zz", "ldap-dn-syntax"),
        ("cn=a\ue000", "ldap-dn-unsupported"),  # private use (RFC 4518 2.4)
        ("<GUID=f0e1d2c3-0000-0000-0000-000000000000>", "ldap-dn-extended-refused"),
        ("<SID=S-1-5-21-1-2-3-512>", "ldap-dn-extended-refused"),
        (" <WKGUID=a9d1ca15768811d1aded00c04fd8d5cd,DC=corp>", "ldap-dn-extended-refused"),
        ("cn=" + "a" * 9000, "ldap-dn-too-long"),
        (",".join(["dc=a"] * 65), "ldap-dn-too-long"),
    ],
)
def test_refused(text: str, reason: str) -> None:
    with pytest.raises(DnError) as raised:
        Dn.parse(text)
    assert raised.value.reason == reason


def test_allowed_extended_forms_are_only_under_the_root() -> None:
    rules = MatchingRules(allow_extended=True)
    guid = Dn.parse("<GUID=f0e1d2c3-0000-0000-0000-000000000000>", rules)
    assert guid.within(Dn.parse(""))
    assert not guid.within(TIER0)
    assert not TIER0.within(guid)


def test_root_parent_child() -> None:
    root = Dn.parse("")
    assert root.is_root
    assert TIER0.within(root)
    assert not root.within(TIER0)
    assert Dn.parse("cn=x,OU=Tier0,DC=corp,DC=example").parent() == TIER0
    moved = Dn.parse("OU=Staff,DC=corp,DC=example").child(Dn.parse("CN=New"))
    assert moved == Dn.parse("cn=new,ou=staff,dc=corp,dc=example")
    with pytest.raises(DnError):
        TIER0.child(Dn.parse("cn=a,cn=b"))


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("member;range=0-1499", "member"),
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
