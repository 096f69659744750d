"""RFC 4511 (LDAPv3) ASN.1 module, declared as pyasn1 types.

Why pyasn1, and why the module is declared here rather than imported:

* The BER encoding and decoding is pyasn1's (``pyasn1.codec.ber``), a maintained library that
  already bounds what a hostile peer can make it do: nesting depth (``MAX_NESTING_DEPTH``), tag
  and length octets, OID arc sizes. No byte of an LDAP PDU is interpreted by gateway code.
* pyasn1-modules ships only ``rfc2251`` (the LDAPv3 text RFC 4511 replaced), and that module
  cannot be used to enforce anything: it declares ``DelRequest`` and ``AbandonRequest`` as
  ``LDAPResult`` sequences (RFC 4511 section 4.8 and 4.11 make them a bare LDAPDN and MessageID),
  unrolls the recursive ``Filter`` to three fixed levels and lacks ``IntermediateResponse``.
* ldap3's ``protocol.rfc4511`` is correct but would bring a whole client library, without type
  information and without a release since 2021, into the runtime for 300 lines of declarations.
  (ldap3 is still used in the tests as the independent client on the SaaS side.)

The declarations follow RFC 4511 appendix B (module ``Lightweight-Directory-Access-Protocol-V3``,
``IMPLICIT TAGS``). Extensible ``ENUMERATED`` types (result codes, scope, change operation) are
declared without named values so that values added by later RFCs decode; the model layer
(``gateway.ldap.messages``) decides what it accepts.

``Filter`` is recursive (``and``/``or``/``not`` contain filters). pyasn1 copies a type's
components into each instance when it is built, so a self-referencing type cannot be expressed;
the grammar is unrolled instead to ``FILTER_DEPTH`` levels. That unrolling is also the filter
nesting bound: a filter nested deeper does not match the grammar and the PDU is rejected as
malformed before any policy sees it.
"""

from __future__ import annotations

from pyasn1.type import namedtype, tag, univ

# RFC 4511 section 4.1.1: MessageID ::= INTEGER (0 .. maxInt), maxInt ::= 2147483647.
MAX_INT = 2_147_483_647

# How deep and/or/not may nest in a search filter (see the module docstring). Real clients stay
# far below: AD tools' deepest filters nest 4-5 levels.
FILTER_DEPTH = 12


def _ctx(number: int, *, constructed: bool = False) -> tag.Tag:
    form = tag.tagFormatConstructed if constructed else tag.tagFormatSimple
    return tag.Tag(tag.tagClassContext, form, number)


def _app(number: int, *, constructed: bool = True) -> tag.Tag:
    form = tag.tagFormatConstructed if constructed else tag.tagFormatSimple
    return tag.Tag(tag.tagClassApplication, form, number)


def _octets(number: int) -> univ.OctetString:
    """``[number] OCTET STRING`` (implicitly tagged, primitive)."""
    tagged: univ.OctetString = univ.OctetString().subtype(implicitTag=_ctx(number))
    return tagged


def _attribute_value_assertion() -> univ.Sequence:
    # AttributeValueAssertion ::= SEQUENCE { attributeDesc, assertionValue } (4.1.8)
    return univ.Sequence(
        componentType=namedtype.NamedTypes(
            namedtype.NamedType("attributeDesc", univ.OctetString()),
            namedtype.NamedType("assertionValue", univ.OctetString()),
        )
    )


def _partial_attribute() -> univ.Sequence:
    # PartialAttribute ::= SEQUENCE { type AttributeDescription, vals SET OF AttributeValue }
    # (4.1.7); Attribute only adds SIZE(1..MAX) on vals, checked in the model layer.
    return univ.Sequence(
        componentType=namedtype.NamedTypes(
            namedtype.NamedType("type", univ.OctetString()),
            namedtype.NamedType("vals", univ.SetOf(componentType=univ.OctetString())),
        )
    )


def _named_entry(app_number: int, name_field: str) -> univ.Sequence:
    # SearchResultEntry (4.5.2) and AddRequest (4.7): an LDAPDN and a list of attributes.
    return univ.Sequence(
        componentType=namedtype.NamedTypes(
            namedtype.NamedType(name_field, univ.OctetString()),
            namedtype.NamedType("attributes", univ.SequenceOf(componentType=_partial_attribute())),
        ),
        tagSet=univ.Sequence.tagSet.tagImplicitly(_app(app_number)),
    )


def _ldap_result_components() -> list[namedtype.NamedType]:
    # LDAPResult ::= SEQUENCE { resultCode ENUMERATED, matchedDN, diagnosticMessage,
    #                           referral [3] Referral OPTIONAL } (4.1.9)
    return [
        namedtype.NamedType("resultCode", univ.Enumerated()),
        namedtype.NamedType("matchedDN", univ.OctetString()),
        namedtype.NamedType("diagnosticMessage", univ.OctetString()),
        namedtype.OptionalNamedType(
            "referral",
            univ.SequenceOf(componentType=univ.OctetString()).subtype(
                implicitTag=_ctx(3, constructed=True)
            ),
        ),
    ]


def _result(app_number: int, *extra: namedtype.NamedType) -> univ.Sequence:
    return univ.Sequence(
        componentType=namedtype.NamedTypes(*_ldap_result_components(), *extra),
        tagSet=univ.Sequence.tagSet.tagImplicitly(_app(app_number)),
    )


class _Filter(univ.Choice):
    """The ``Filter`` CHOICE, with a short ``repr``.

    pyasn1 formats the ``repr`` of a whole SEQUENCE specification while building it (for an error
    message it may never raise); the unrolled filter's full ``repr`` grows as 3^FILTER_DEPTH.
    """

    def __repr__(self) -> str:
        return "<Filter>"


def _filter(depth: int) -> univ.Choice:
    """``Filter`` (4.5.1.7) allowing ``depth`` more levels of and/or/not below this one."""
    items: list[namedtype.NamedType] = []
    if depth > 0:
        inner = _filter(depth - 1)
        items += [
            namedtype.NamedType(
                "and",
                univ.SetOf(
                    componentType=inner,
                    tagSet=univ.SetOf.tagSet.tagImplicitly(_ctx(0, constructed=True)),
                ),
            ),
            namedtype.NamedType(
                "or",
                univ.SetOf(
                    componentType=inner,
                    tagSet=univ.SetOf.tagSet.tagImplicitly(_ctx(1, constructed=True)),
                ),
            ),
            # ``not [2] Filter``: a CHOICE cannot be tagged implicitly (X.680 31.2.7), so the tag
            # is explicit, a constructed [2] around the inner filter.
            namedtype.NamedType("not", inner.subtype(explicitTag=_ctx(2, constructed=True))),
        ]
    substring = univ.Choice(
        componentType=namedtype.NamedTypes(
            namedtype.NamedType("initial", _octets(0)),
            namedtype.NamedType("any", _octets(1)),
            namedtype.NamedType("final", _octets(2)),
        )
    )
    items += [
        namedtype.NamedType(
            "equalityMatch",
            _attribute_value_assertion().subtype(implicitTag=_ctx(3, constructed=True)),
        ),
        namedtype.NamedType(
            "substrings",
            univ.Sequence(
                componentType=namedtype.NamedTypes(
                    namedtype.NamedType("type", univ.OctetString()),
                    namedtype.NamedType("substrings", univ.SequenceOf(componentType=substring)),
                ),
                tagSet=univ.Sequence.tagSet.tagImplicitly(_ctx(4, constructed=True)),
            ),
        ),
        namedtype.NamedType(
            "greaterOrEqual",
            _attribute_value_assertion().subtype(implicitTag=_ctx(5, constructed=True)),
        ),
        namedtype.NamedType(
            "lessOrEqual",
            _attribute_value_assertion().subtype(implicitTag=_ctx(6, constructed=True)),
        ),
        namedtype.NamedType("present", _octets(7)),
        namedtype.NamedType(
            "approxMatch",
            _attribute_value_assertion().subtype(implicitTag=_ctx(8, constructed=True)),
        ),
        namedtype.NamedType(
            "extensibleMatch",
            # MatchingRuleAssertion (4.5.1.7.7)
            univ.Sequence(
                componentType=namedtype.NamedTypes(
                    namedtype.OptionalNamedType("matchingRule", _octets(1)),
                    namedtype.OptionalNamedType("type", _octets(2)),
                    namedtype.NamedType("matchValue", _octets(3)),
                    namedtype.DefaultedNamedType(
                        "dnAttributes",
                        univ.Boolean(False).subtype(implicitTag=_ctx(4)),
                    ),
                ),
                tagSet=univ.Sequence.tagSet.tagImplicitly(_ctx(9, constructed=True)),
            ),
        ),
    ]
    return _Filter(componentType=namedtype.NamedTypes(*items))


def _protocol_op() -> univ.Choice:
    bind_request = univ.Sequence(  # 4.2
        componentType=namedtype.NamedTypes(
            namedtype.NamedType("version", univ.Integer()),
            namedtype.NamedType("name", univ.OctetString()),
            namedtype.NamedType(
                "authentication",
                univ.Choice(
                    componentType=namedtype.NamedTypes(
                        namedtype.NamedType("simple", _octets(0)),
                        namedtype.NamedType(
                            "sasl",
                            univ.Sequence(
                                componentType=namedtype.NamedTypes(
                                    namedtype.NamedType("mechanism", univ.OctetString()),
                                    namedtype.OptionalNamedType("credentials", univ.OctetString()),
                                ),
                                tagSet=univ.Sequence.tagSet.tagImplicitly(
                                    _ctx(3, constructed=True)
                                ),
                            ),
                        ),
                    )
                ),
            ),
        ),
        tagSet=univ.Sequence.tagSet.tagImplicitly(_app(0)),
    )
    search_request = univ.Sequence(  # 4.5.1
        componentType=namedtype.NamedTypes(
            namedtype.NamedType("baseObject", univ.OctetString()),
            namedtype.NamedType("scope", univ.Enumerated()),
            namedtype.NamedType("derefAliases", univ.Enumerated()),
            namedtype.NamedType("sizeLimit", univ.Integer()),
            namedtype.NamedType("timeLimit", univ.Integer()),
            namedtype.NamedType("typesOnly", univ.Boolean()),
            namedtype.NamedType("filter", _filter(FILTER_DEPTH)),
            namedtype.NamedType("attributes", univ.SequenceOf(componentType=univ.OctetString())),
        ),
        tagSet=univ.Sequence.tagSet.tagImplicitly(_app(3)),
    )
    search_result_entry = _named_entry(4, "objectName")  # 4.5.2
    modify_request = univ.Sequence(  # 4.6
        componentType=namedtype.NamedTypes(
            namedtype.NamedType("object", univ.OctetString()),
            namedtype.NamedType(
                "changes",
                univ.SequenceOf(
                    componentType=univ.Sequence(
                        componentType=namedtype.NamedTypes(
                            namedtype.NamedType("operation", univ.Enumerated()),
                            namedtype.NamedType("modification", _partial_attribute()),
                        )
                    )
                ),
            ),
        ),
        tagSet=univ.Sequence.tagSet.tagImplicitly(_app(6)),
    )
    add_request = _named_entry(8, "entry")  # 4.7
    modify_dn_request = univ.Sequence(  # 4.9
        componentType=namedtype.NamedTypes(
            namedtype.NamedType("entry", univ.OctetString()),
            namedtype.NamedType("newrdn", univ.OctetString()),
            namedtype.NamedType("deleteoldrdn", univ.Boolean()),
            namedtype.OptionalNamedType("newSuperior", _octets(0)),
        ),
        tagSet=univ.Sequence.tagSet.tagImplicitly(_app(12)),
    )
    compare_request = univ.Sequence(  # 4.10
        componentType=namedtype.NamedTypes(
            namedtype.NamedType("entry", univ.OctetString()),
            namedtype.NamedType("ava", _attribute_value_assertion()),
        ),
        tagSet=univ.Sequence.tagSet.tagImplicitly(_app(14)),
    )
    extended_request = univ.Sequence(  # 4.12
        componentType=namedtype.NamedTypes(
            namedtype.NamedType("requestName", _octets(0)),
            namedtype.OptionalNamedType("requestValue", _octets(1)),
        ),
        tagSet=univ.Sequence.tagSet.tagImplicitly(_app(23)),
    )
    intermediate_response = univ.Sequence(  # 4.13
        componentType=namedtype.NamedTypes(
            namedtype.OptionalNamedType("responseName", _octets(0)),
            namedtype.OptionalNamedType("responseValue", _octets(1)),
        ),
        tagSet=univ.Sequence.tagSet.tagImplicitly(_app(25)),
    )
    return univ.Choice(
        componentType=namedtype.NamedTypes(
            namedtype.NamedType("bindRequest", bind_request),
            namedtype.NamedType(
                "bindResponse",
                _result(1, namedtype.OptionalNamedType("serverSaslCreds", _octets(7))),
            ),
            namedtype.NamedType(
                "unbindRequest", univ.Null().subtype(implicitTag=_app(2, constructed=False))
            ),
            namedtype.NamedType("searchRequest", search_request),
            namedtype.NamedType("searchResEntry", search_result_entry),
            namedtype.NamedType("searchResDone", _result(5)),
            namedtype.NamedType(
                "searchResRef",
                univ.SequenceOf(
                    componentType=univ.OctetString(),
                    tagSet=univ.SequenceOf.tagSet.tagImplicitly(_app(19)),
                ),
            ),
            namedtype.NamedType("modifyRequest", modify_request),
            namedtype.NamedType("modifyResponse", _result(7)),
            namedtype.NamedType("addRequest", add_request),
            namedtype.NamedType("addResponse", _result(9)),
            namedtype.NamedType(
                "delRequest", univ.OctetString().subtype(implicitTag=_app(10, constructed=False))
            ),
            namedtype.NamedType("delResponse", _result(11)),
            namedtype.NamedType("modDNRequest", modify_dn_request),
            namedtype.NamedType("modDNResponse", _result(13)),
            namedtype.NamedType("compareRequest", compare_request),
            namedtype.NamedType("compareResponse", _result(15)),
            namedtype.NamedType(
                "abandonRequest", univ.Integer().subtype(implicitTag=_app(16, constructed=False))
            ),
            namedtype.NamedType("extendedReq", extended_request),
            namedtype.NamedType(
                "extendedResp",
                _result(
                    24,
                    namedtype.OptionalNamedType("responseName", _octets(10)),
                    namedtype.OptionalNamedType("responseValue", _octets(11)),
                ),
            ),
            namedtype.NamedType("intermediateResponse", intermediate_response),
        )
    )


def _ldap_message() -> univ.Sequence:
    # LDAPMessage ::= SEQUENCE { messageID, protocolOp, controls [0] Controls OPTIONAL } (4.1.1)
    control = univ.Sequence(  # 4.1.11
        componentType=namedtype.NamedTypes(
            namedtype.NamedType("controlType", univ.OctetString()),
            namedtype.DefaultedNamedType("criticality", univ.Boolean(False)),
            namedtype.OptionalNamedType("controlValue", univ.OctetString()),
        )
    )
    return univ.Sequence(
        componentType=namedtype.NamedTypes(
            namedtype.NamedType("messageID", univ.Integer()),
            namedtype.NamedType("protocolOp", _protocol_op()),
            namedtype.OptionalNamedType(
                "controls",
                univ.SequenceOf(componentType=control).subtype(
                    implicitTag=_ctx(0, constructed=True)
                ),
            ),
        )
    )


#: The specification every PDU is decoded against. pyasn1 specification objects are immutable
#: templates, so one shared instance serves every connection.
LDAP_MESSAGE = _ldap_message()


def _sort_key_list() -> univ.SequenceOf:
    # RFC 2891 section 1.1, the server-side sort request control's value:
    # SortKeyList ::= SEQUENCE OF SEQUENCE { attributeType AttributeDescription,
    #     orderingRule [0] MatchingRuleId OPTIONAL, reverseOrder [1] BOOLEAN DEFAULT FALSE }
    return univ.SequenceOf(
        componentType=univ.Sequence(
            componentType=namedtype.NamedTypes(
                namedtype.NamedType("attributeType", univ.OctetString()),
                namedtype.OptionalNamedType("orderingRule", _octets(0)),
                namedtype.DefaultedNamedType(
                    "reverseOrder", univ.Boolean(False).subtype(implicitTag=_ctx(1))
                ),
            )
        )
    )


SORT_KEY_LIST = _sort_key_list()
