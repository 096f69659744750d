"""Which referral URLs and matchedDNs an allowed operation's answers may carry (disclosure.py),
and the codec's rewriting of the PDUs that carry them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ldap import codec
from gateway.ldap.codec import Operation, Response
from gateway.ldap.disclosure import LdapUrl, Reach, parse_ldap_url, screen
from gateway.ldap.dn import DEFAULT_RULES
from gateway.ldap.fastread import read_response
from gateway.ldap.policy_input import subtree_path

from .test_codec_contract import message, octets, tlv


def _path(text: str) -> tuple[str, ...]:
    return tuple(subtree_path(text, DEFAULT_RULES))


REACH = Reach(
    host="dc01.corp.example",
    port=636,
    granted=(_path("OU=Managed Groups,DC=corp,DC=example"),),
    forbidden=(_path("CN=Secret,OU=Managed Groups,DC=corp,DC=example"),),
    named=(_path("CN=x,OU=Missing,OU=Managed Groups,DC=corp,DC=example"),),
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "ldap://DC01.corp.example:389/ou=a,dc=x??sub",
            LdapUrl("ldap", "dc01.corp.example", 389, "ou=a,dc=x", False),
        ),
        ("LDAPS://[::1]/ou=a%20b", LdapUrl("ldaps", "::1", None, "ou=a b", False)),
        ("ldap:///dc=x", LdapUrl("ldap", "", None, "dc=x", False)),
        ("ldap://h/dc=x??sub?(cn=a)", LdapUrl("ldap", "h", None, "dc=x", True)),
        ("ldap://h/dc=x????e=1", LdapUrl("ldap", "h", None, "dc=x", True)),
        ("ldap://h", None),  # no DN part
        ("http://h/dc=x", None),
        ("ldap://user@h/dc=x", None),
        ("ldap://h:0/dc=x", None),
        ("ldap://h:99999/dc=x", None),
        ("ldap://h:1a/dc=x", None),
        ("ldap://[::1/dc=x", None),
        ("ldap://h/dc=%ff", None),  # not UTF-8
        ("ldap://h/dc=x?a?b?c?d?e", None),
    ],
)
def test_ldap_urls_parse_by_rfc_4516(url: str, expected: LdapUrl | None) -> None:
    assert parse_ldap_url(url) == expected


@pytest.mark.parametrize(
    ("url", "passes"),
    [
        ("ldaps://dc01.corp.example/CN=Helpdesk,OU=Managed%20Groups,DC=corp,DC=example", True),
        ("ldap://DC01.CORP.EXAMPLE.:636/cn=helpdesk,ou=managed%20groups,dc=corp,dc=example", True),
        ("ldap:///ou=Managed%20Groups,dc=corp,dc=example??sub", True),
        # the same place spelled otherwise: compared as the directory compares DNs
        ("ldaps://dc01.corp.example/2.5.4.11=MANAGED%20GROUPS,dc=corp,dc=example", True),
        ("ldaps://dc01.corp.example/cn=a,ou = MANAGED GROUPS ,dc=corp,dc=example", True),
        # another server, another port of the same one, a port on a host-less URL
        ("ldaps://dc02.corp.example/ou=Managed%20Groups,dc=corp,dc=example", False),
        ("ldap://dc01.corp.example/ou=Managed%20Groups,dc=corp,dc=example", False),
        ("ldap://:636/ou=Managed%20Groups,dc=corp,dc=example", False),
        # outside the grant, in a never-reachable subtree (any spelling), no place at all
        ("ldaps://dc01.corp.example/ou=People,dc=corp,dc=example", False),
        ("ldaps://dc01.corp.example/dc=corp,dc=example", False),
        ("ldaps://dc01.corp.example/cn=a,CN=SECRET,ou=Managed%20Groups,dc=corp,dc=example", False),
        ("ldaps://dc01.corp.example/<GUID=0123>", False),
        ("ldaps://dc01.corp.example/not a dn", False),
        # text the gateway does not judge: a filter could name anything
        ("ldaps://dc01.corp.example/ou=Managed%20Groups,dc=corp,dc=example??sub?(cn=x)", False),
    ],
)
def test_a_url_passes_only_to_the_target_within_the_grant(url: str, passes: bool) -> None:
    assert REACH.passes(url) is passes


def test_an_ip_address_target_matches_any_spelling_of_it() -> None:
    reach = Reach(host="::1", port=389, granted=None)
    assert reach.passes("ldap://[0:0::1]/dc=x")
    assert not reach.passes("ldap://127.0.0.1/dc=x")


@pytest.mark.parametrize(
    ("matched", "shows"),
    [
        ("", True),
        ("OU=Missing,OU=Managed Groups,DC=corp,DC=example", True),  # the request's own superior
        ("DC=corp,DC=example", True),  # a superior the client wrote itself
        ("cn=other,OU=Managed Groups,DC=corp,DC=example", True),  # within the grant
        ("ou=People,DC=corp,DC=example", False),  # where an alias led
        ("CN=Secret,OU=Managed Groups,DC=corp,DC=example", False),
        ("bad", False),
    ],
)
def test_a_matched_dn_shows_what_the_request_named_or_the_grant_covers(
    matched: str, shows: bool
) -> None:
    assert REACH.shows_matched(matched) is shows


def test_without_a_reach_nothing_passes() -> None:
    assert screen(None, ("ldap:///dc=x", "ldap://h/dc=y")) == ((), 2)
    kept = "ldaps://dc01.corp.example/ou=Managed%20Groups,dc=corp,dc=example"
    assert screen(REACH, (kept, "ldap://h/dc=y")) == ((kept,), 1)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_text_is_judged_without_an_error(text: str) -> None:
    for candidate in (text, "ldap://" + text, "ldaps://dc01.corp.example/" + text):
        parse_ldap_url(candidate)
        REACH.passes(candidate)
        REACH.shows_matched(candidate)


def test_a_result_is_rewritten_field_by_field() -> None:
    original = message(
        7,
        tlv(
            0x67,  # ModifyResponse
            tlv(0x0A, b"\x0a")
            + octets("ou=a,dc=x")
            + octets("RefErr: ref 1: 'other.example'")
            + tlv(0xA3, octets("ldap://other/ou=a") + octets("ldap:///ou=a")),
        ),
        controls=tlv(0x30, octets("1.2.3")),
    )
    for kept, expected in ((("ldap:///ou=a",), ("ldap:///ou=a",)), ((), ())):
        rewritten = codec.rewrite_result(
            original, result_code=50, matched_dn="", diagnostic="why", referrals=kept
        )
        response = codec.decode_response(rewritten)
        assert response == Response(
            7,
            "modifyResponse",
            result_code=50,
            diagnostic="why",
            controls=(codec.Control("1.2.3", False),),
            referrals=expected,
        )
        assert read_response(rewritten) == response


def test_a_reference_is_rewritten_to_the_urls_kept() -> None:
    original = message(3, tlv(0x73, octets("ldap://a/dc=x") + octets("ldap:///dc=y")))
    rewritten = codec.rewrite_reference(original, ("ldap:///dc=y",))
    assert codec.decode_response(rewritten).referrals == ("ldap:///dc=y",)
    with pytest.raises(ValueError, match="at least one"):
        codec.rewrite_reference(original, ())
    done = codec.encode_result(3, Operation.SEARCH, 0, "")
    with pytest.raises(ValueError, match="not a SearchResultReference"):
        codec.rewrite_reference(done, ("ldap:///dc=y",))
