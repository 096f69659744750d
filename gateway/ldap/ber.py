"""pyasn1's BER decoder held to the encoding rules of RFC 4511 section 5.1.

LDAP restricts BER: (1) only definite lengths, (2) OCTET STRING only in the primitive form,
(3) BOOLEAN true sent as 0xFF. A gateway that accepts what the directory would refuse, or reads
an encoding differently than the directory does, invites a parser differential between the
decision and the action. Rules 1 and 2 are enforced. Rule 3 binds senders only: real clients
break it (ldap3 encodes TRUE as 0x01 through pyasn1's BER encoder) and every reader takes any
non-zero octet as TRUE, so there is no second reading to guard against.

pyasn1's own DER decoder does not serve here: it refuses indefinite lengths, but in pyasn1 0.6 it
registers its primitive-only OCTET STRING rule for lookups by tag only, so a constructed string
decoded against a specification with an implicit tag (as every LDAP string is) still passes; the
tests pin that this decoder refuses it. Long-form lengths, which OpenLDAP's liblber writes
(``0x84`` and four octets) and LDAP allows, are accepted.

So this module composes a decoder the way pyasn1's DER module does, from pyasn1's public payload
decoders: the BER maps with pyasn1 DER's primitive-only OCTET STRING payload decoder registered
for both tag and type lookups, and indefinite lengths refused.
"""

from __future__ import annotations

from pyasn1.codec.ber import decoder as ber_decoder
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.type import univ

_OCTET_STRING = der_decoder.OctetStringPayloadDecoder()  # primitive form only (rule 2)

TAG_MAP = ber_decoder.TAG_MAP.copy()
TAG_MAP.update({univ.OctetString.tagSet: _OCTET_STRING})

TYPE_MAP = ber_decoder.TYPE_MAP.copy()
TYPE_MAP.update({univ.OctetString.typeId: _OCTET_STRING})


class SingleItemDecoder(ber_decoder.SingleItemDecoder):
    """One TLV at a time, with the LDAP maps and no indefinite lengths (rule 1)."""

    TAG_MAP = TAG_MAP
    TYPE_MAP = TYPE_MAP
    supportIndefLength = False  # noqa: N815 - pyasn1's attribute name


class StreamingDecoder(ber_decoder.StreamingDecoder):
    """pyasn1's streaming decoder over ``SingleItemDecoder``."""

    SINGLE_ITEM_DECODER = SingleItemDecoder


class Decoder(ber_decoder.Decoder):
    """``decode(substrate, asn1Spec=...) -> (value, rest)``, as pyasn1's decoders."""

    STREAMING_DECODER = StreamingDecoder


decode = Decoder()
