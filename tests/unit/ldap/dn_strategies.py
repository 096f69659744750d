"""Hypothesis strategies for DNs and the ways a client may spell them (RFC 4514)."""

from __future__ import annotations

from hypothesis import strategies as st

from gateway.ldap.dn import KNOWN_TYPES, escape_value

_TYPE_NAMES = sorted(KNOWN_TYPES)
_value_chars = st.characters(
    codec="utf-8", categories=("L", "N", "P", "S", "Zs"), exclude_characters="\x00"
)
_values = st.text(_value_chars, min_size=1, max_size=12).filter(lambda v: v.strip() != "")
_rdn = st.lists(st.tuples(st.sampled_from(_TYPE_NAMES), _values), min_size=1, max_size=3).filter(
    lambda avas: len({KNOWN_TYPES[t] for t, _ in avas}) == len(avas)
)
dns = st.lists(_rdn, min_size=1, max_size=6)


def render(rdns: list[list[tuple[str, str]]], spaced: bool, upper: bool, hexed: bool) -> str:
    """One spelling of ``rdns`` (leaf first): spaces around separators, upper-case types,
    every value byte hex-escaped."""

    def value(text: str) -> str:
        if hexed:
            return "".join(f"\\{byte:02x}" for byte in text.encode("utf-8"))
        return escape_value(text)

    sep = " , " if spaced else ","
    plus = " + " if spaced else "+"
    return sep.join(
        plus.join(f"{name.upper() if upper else name}={value(text)}" for name, text in rdn)
        for rdn in rdns
    )
