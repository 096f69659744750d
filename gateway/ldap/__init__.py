"""LDAP-aware targets: a sans-IO core for LDAPv3 (RFC 4511) PDUs and DNs (RFC 4514/4518).

Modules
    ``asn1``     the RFC 4511 ASN.1 module as pyasn1 types (why pyasn1: see its docstring).
    ``ber``      pyasn1's BER decoder held to RFC 4511 section 5.1 (definite lengths, primitive
                 OCTET STRINGs).
    ``codec``    ``pdu_length`` (framing with a size bound), ``decode_request`` ->
                 ``Request``, ``decode_response`` -> ``Response``, ``strip_entry_attributes``,
                 ``encode_result`` (the response matching a request), Notice of Disconnection,
                 ``encode_simple_bind``; ``Limits`` holds every bound.
    ``dn``       ``Dn.parse(text, MatchingRules)``, ``Dn.within(base)`` (subtree test by RDN
                 sequence), ``normalise_attribute`` (type of an attribute description).
    ``session``  ``LdapSession``: framing in both directions, message ids and outstanding
                 operations of one connection.
    ``errors``   ``LdapProtocolError`` (close with a Notice of Disconnection), ``LdapRefusedError``
                 (answer resultCode 50, keep the connection), ``DnError``.

No module here does I/O; the proxy that does is built on them.
"""
