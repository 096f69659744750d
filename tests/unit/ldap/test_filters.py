"""RFC 4515 filter strings parse to the same tree as the PDU a real client (ldap3) sends."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ldap import codec
from gateway.ldap.asn1 import FILTER_DEPTH
from gateway.ldap.errors import LdapRefusedError
from gateway.ldap.filters import FilterSyntaxError, parse_filter
from tests.unit.ldap import pdus


def _from_the_wire(text: str) -> codec.FilterNode:
    request = codec.decode_request(pdus.search(1, search_filter=text))
    assert request.filter is not None
    return request.filter


@pytest.mark.parametrize(
    "text",
    [
        "(objectClass=*)",
        "(cn=Babs Jensen)",
        "(!(cn=Tim Howes))",
        "(&(objectClass=Person)(|(sn=Jensen)(cn=Babs J*)))",
        "(o=univ*of*mich*)",
        "(seeAlso=)",
        "(cn:caseExactMatch:=Fred Flintstone)",
        "(cn:=Betty Rubble)",
        "(sn:dn:2.4.6.8.10:=Barney Rubble)",
        "(o:dn:=Ace Industry)",
        "(o=Parens R Us \\28for all your parenthetical needs\\29)",
        "(cn=*\\2A*)",
        "(filename=C:\\5cMyFile)",
        "(sn>=m)",
        "(sn<=m)",
        "(sn~=jensn)",
        "(memberOf:1.2.840.113556.1.4.1941:=CN=Admins,DC=corp)",
        "(userAccountControl:1.2.840.113556.1.4.803:=2)",
        "(cn=*a)",
        "(cn=a*)",
        "(cn=*a*b*)",
    ],
)
def test_rfc4515_examples_match_the_wire(text: str) -> None:
    assert parse_filter(text) == _from_the_wire(text)


@pytest.mark.parametrize("text", ["(:1.2.3:=Wilma Flintstone)", "(:DN:2.4.6.8.10:=Dino)"])
def test_rfc4515_untyped_extensible_matches_are_refused_on_the_wire_and_in_questions(
    text: str,
) -> None:
    # RFC 4511 4.5.1.7.7: without a type the match tests every attribute of the entry, so the
    # decoder refuses the PDU; a question about the same filter must not be answered otherwise.
    with pytest.raises(LdapRefusedError, match="ldap-filter-without-type"):
        _from_the_wire(text)
    with pytest.raises(FilterSyntaxError, match="without an attribute type"):
        parse_filter(text)


@pytest.mark.parametrize(
    "text",
    ["", "(", "()", "(cn)", "(=x)", "(&)", "(!(a=b)(c=d))", "(cn=a(b)", "(cn=\\zz)", "(a=b))"],
)
def test_syntax_errors(text: str) -> None:
    with pytest.raises(FilterSyntaxError):
        parse_filter(text)


def test_bounds_match_the_pdu_grammar() -> None:
    deepest = "(a=b)"
    for _ in range(FILTER_DEPTH):
        deepest = f"(!{deepest})"
    assert parse_filter(deepest).depth() == FILTER_DEPTH + 1
    with pytest.raises(FilterSyntaxError, match="nested"):
        parse_filter(f"(!{deepest})")
    with pytest.raises(FilterSyntaxError, match="too many"):
        parse_filter("(|" + "(a=b)" * 300 + ")")


def test_unparenthesised_filters_are_accepted() -> None:
    assert parse_filter("objectClass=user") == parse_filter("(objectClass=user)")


_attribute = st.sampled_from(["cn", "sn", "objectClass", "member", "ms-Mcs-AdmPwd", "2.5.4.3"])
# ldap3 strips white space around a value before encoding it (RFC 4515 keeps it), so generated
# values have none at their edges: the comparison is with what ldap3 really sends.
_value = (
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8)
    .filter(lambda text: text == text.strip())
    .map(lambda text: "".join(f"\\{ord(ch):02x}" if ch in "()*\\" else ch for ch in text))
)
_leaf = st.one_of(
    st.builds(lambda a, v: f"({a}={v})", _attribute, _value),
    st.builds(lambda a, v: f"({a}>={v})", _attribute, _value),
    st.builds(lambda a, v: f"({a}~={v})", _attribute, _value),
    st.builds(lambda a: f"({a}=*)", _attribute),
    st.builds(lambda a, v, w: f"({a}={v}*{w})", _attribute, _value, _value).filter(
        lambda text: text[text.index("=") + 1 : -1] != "*"
    ),
    st.builds(lambda a, v: f"({a}:dn:2.5.13.2:={v})", _attribute, _value),
)
_filters = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda items: "(&" + "".join(items) + ")"),
        st.lists(inner, min_size=1, max_size=3).map(lambda items: "(|" + "".join(items) + ")"),
        inner.map(lambda item: f"(!{item})"),
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_filters)
def test_generated_filters_match_the_wire(text: str) -> None:
    assert parse_filter(text) == _from_the_wire(text)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="()&|!=*<>~:\\abc01 ", max_size=40))
def test_arbitrary_text_parses_or_raises_filter_syntax_error(text: str) -> None:
    with contextlib.suppress(FilterSyntaxError):
        parse_filter(text)


def test_a_filter_with_a_lone_surrogate_is_a_syntax_error_not_a_crash() -> None:
    # RFC 4515 section 3: the filter string is UTF-8; a lone surrogate has no UTF-8 form.
    with pytest.raises(FilterSyntaxError, match="not valid UTF-8"):
        parse_filter("(cn=\udcff)")
