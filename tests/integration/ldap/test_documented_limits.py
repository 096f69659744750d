"""The limits docs/ldap.md states ("Limits of hiding"), shown true against a real slapd, and the
sort-key oracle it no longer has to state.

Hiding a never-reachable entry keeps its contents from the SaaS, not the facts that it exists
and matched: the directory counts it against the size limit before the gateway drops it, and
other entries' DN-valued attributes still name it. These tests pin that behaviour so the
documentation cannot drift from it: if one fails, the gateway got better (or the directory
changed) and the page must say so. A server-side sort (RFC 2891) by a never-returned attribute
orders the answer by its secret values; the gateway reads the sort keys and refuses that.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from ldap3 import DEREF_NEVER, NONE, Connection, Server

from ..slapd import SUFFIX
from .conftest import TlsDirectory
from .real_policy import RealPolicy, inventory, real_policy
from .test_proxy import IO_TIMEOUT, serving

PEOPLE = f"ou=People,{SUFFIX}"
HIDDEN = f"uid=user0,{PEOPLE}"
HELPDESK = f"cn=Helpdesk,ou=Managed Groups,ou=Groups,{SUFFIX}"
SORT = "1.2.840.113556.1.4.473"  # RFC 2891 server-side sort request

LDAP = f"""\
      never_reachable: ["{HIDDEN}"]
      controls: ["{SORT}"]
"""
RULES = f"""\
        - name: people-and-groups
          kinds: [search]
          subtrees: ["{PEOPLE}", "ou=Groups,{SUFFIX}"]
          scopes: [base, one, sub]
          attributes: [uid, cn, member, objectClass]
          bind_as: [inventory]
"""


def _policy(directory: TlsDirectory, tmp_path: Path) -> RealPolicy:
    return real_policy(directory, tmp_path, rules=RULES, ldap=LDAP)


async def test_hidden_entries_count_toward_the_size_limit_and_name_themselves_in_values(
    tls_directory: TlsDirectory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    identity = inventory(monkeypatch)
    async with serving(tls_directory, _policy(tls_directory, tmp_path), identity) as proxy:

        def work() -> tuple[list[tuple[int, int]], list[str]]:
            server = Server("127.0.0.1", port=proxy.port, get_info=NONE)
            connection = Connection(
                server, "inventory", "-", auto_bind=True, receive_timeout=IO_TIMEOUT
            )
            answers = []
            # The same question about user1, with user0 (hidden) or a name that does not exist
            # beside it, and room for one entry.
            for other in ("user0", "nobody"):
                connection.search(
                    PEOPLE,
                    f"(|(uid={other})(uid=user1))",
                    attributes=["uid"],
                    size_limit=1,
                    dereference_aliases=DEREF_NEVER,
                )
                answers.append((connection.result["result"], len(connection.entries)))
            connection.search(
                HELPDESK, "(objectClass=*)", attributes=["member"], dereference_aliases=DEREF_NEVER
            )
            members = [str(value) for value in connection.entries[0]["member"].values]
            connection.unbind()
            return answers, members

        answers, members = await asyncio.to_thread(work)
    # slapd counted the hidden user0 against sizeLimit 1 before the gateway dropped it: the
    # SaaS sees no entry and sizeLimitExceeded (4), where without user0 it sees user1 and
    # success. The difference says that user0 exists and matches the filter.
    with_hidden, without = answers
    assert with_hidden == (4, 0)
    assert without == (0, 1)
    # A group's member values still name the hidden entry: values are not read.
    assert [name.lower() for name in members] == [HIDDEN.lower()]


def _sort_by(attribute: str) -> bytes:
    """An RFC 2891 SortKeyList with one key (DER, as any client writes it)."""
    key = b"\x04" + bytes([len(attribute)]) + attribute.encode("ascii")
    item = b"\x30" + bytes([len(key)]) + key
    return b"\x30" + bytes([len(item)]) + item


@pytest.mark.parametrize(
    ("key", "allowed"),
    [("cn", True), ("ms-Mcs-AdmPwd", False), ("userPassword", False)],
)
async def test_a_sort_by_a_never_returned_attribute_never_reaches_the_directory(
    tls_directory: TlsDirectory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    key: str,
    allowed: bool,
) -> None:
    identity = inventory(monkeypatch)
    async with serving(tls_directory, _policy(tls_directory, tmp_path), identity) as proxy:

        def work() -> dict[str, object]:
            server = Server("127.0.0.1", port=proxy.port, get_info=NONE)
            connection = Connection(
                server, "inventory", "-", auto_bind=True, receive_timeout=IO_TIMEOUT
            )
            # Not critical: a slapd without the sssvlv overlay answers unsorted, which is all
            # an allowed sort needs to show here (the gateway forwarded it).
            connection.search(
                PEOPLE,
                "(objectClass=*)",
                attributes=["cn"],
                controls=[(SORT, False, _sort_by(key))],
                dereference_aliases=DEREF_NEVER,
            )
            result = dict(connection.result)
            connection.unbind()
            return result

        result = await asyncio.to_thread(work)
    search = next(o for o in proxy.outcomes if o.request.dn == PEOPLE)
    assert search.request.sort_keys == (key,)
    if allowed:
        assert (result["result"], search.result) == (0, "allowed")
        assert search.entries > 0
    else:
        # Refused like a filter on it: the directory never saw the search.
        assert (result["result"], result["message"]) == (50, "ldap_filter_never_returned")
        assert (search.result, search.entries) == ("denied", 0)
