"""What the directory's answers may tell the SaaS about places the operation was not granted.

A rule grants an operation on entries under its subtrees; hiding never-reachable entries and
stripping attributes keeps the *entries* of other places from the SaaS. Three parts of an
answer name places by themselves, and pass the entry filter untouched:

* continuation references (RFC 4511 section 4.5.3): a SearchResultReference carries LDAP URLs
  (RFC 4516) naming a server and a DN where the search goes on;
* referrals (section 4.1.10): any LDAPResult with resultCode referral (10) carries URLs naming
  the server and DN that hold the entry;
* the matchedDN of a result (section 4.1.9): "the last entry used in finding the target", which,
  when an alias is dereferenced on the way, is wherever the alias led (observed with OpenLDAP:
  a base below an alias to ``ou=People`` answers noSuchObject with matchedDN ``ou=People``).

:class:`Reach` judges them for one allowed operation: a URL passes only when it names the target
itself (its host and port, or no host: RFC 4516 section 2, the client's own server) and a DN
within the subtrees of the rule that granted the operation and in no never-reachable subtree,
and carries no filter or extensions (text the gateway does not judge). The SaaS cannot follow a
URL to any other server anyway (the gateway is its only way into the network), so a withheld URL
costs it nothing it could use. A matchedDN passes when it is the DN the request named or one of
its superiors (what the client already wrote), or within the rule's subtrees, and in no
never-reachable subtree. Without a verdict (an unsolicited notification) nothing passes.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import dataclass, field

from gateway.ldap.dn import DEFAULT_RULES, Dn, MatchingRules
from gateway.ldap.errors import DnError
from gateway.ldap.policy_input import dn_path

__all__ = ["LdapUrl", "Reach", "parse_ldap_url", "screen"]

Path = tuple[str, ...]
# RFC 4516 section 2 (ldap) and the ldaps scheme directories use the same way.
_DEFAULT_PORTS = {"ldap": 389, "ldaps": 636}
# Bounds on text the gateway parses from the directory (a URL is an LDAPString, section 4.1.10).
MAX_URL_CHARS = 8192


@dataclass(frozen=True)
class LdapUrl:
    """The parts of an LDAP URL the gateway judges (RFC 4516 section 2)."""

    scheme: str
    host: str
    """Lower case, without IPv6 brackets; empty when the URL names no host."""
    port: int | None
    dn: str
    extra: bool
    """A filter or extensions part is present (the gateway does not read them)."""


def parse_ldap_url(text: str) -> LdapUrl | None:
    """The parts of ``text``, or None when it is not an LDAP URL with a DN (RFC 4516:
    ``scheme://[host[:port]]/dn[?attributes[?scope[?filter[?extensions]]]]``)."""
    if len(text) > MAX_URL_CHARS:
        return None
    scheme, separator, rest = text.partition("://")
    scheme = scheme.lower()
    if not separator or scheme not in _DEFAULT_PORTS:
        return None
    hostport, slash, tail = rest.partition("/")
    if not slash:
        # Section 4.5.3 requires the DN in a continuation reference; a referral without one
        # means "the same name" (4.1.10), which the gateway does not guess at: withheld.
        return None
    host, port = _hostport(hostport)
    if host is None:
        return None
    parts = tail.split("?")
    if len(parts) > 5:
        return None
    try:
        dn = urllib.parse.unquote(parts[0], encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        return None
    extra = any(part for part in parts[3:])
    return LdapUrl(scheme, host, port, dn, extra)


def _hostport(text: str) -> tuple[str | None, int | None]:
    """(host, port) of an RFC 3986 authority without userinfo; (None, None) if malformed."""
    if "@" in text:
        return None, None
    host, port_text = text, ""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            return None, None
        host, after = text[1:close], text[close + 1 :]
        if after and not after.startswith(":"):
            return None, None
        port_text = after[1:]
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
    try:
        host = urllib.parse.unquote(host, errors="strict").lower()
    except UnicodeDecodeError:
        return None, None
    if not port_text:
        return host, None
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None, None
    return host, int(port_text)


def _same_host(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a.rstrip(".") == b.rstrip(".")


@dataclass(frozen=True)
class Reach:
    """The places one allowed operation may learn of (root-first RDN paths, as rules compare).

    ``granted``: the subtrees of the rule that granted it (None: the whole directory).
    ``forbidden``: every never-reachable subtree of the target. ``named``: the DNs the request
    itself named (its entry, a modify DN's destination). ``host``/``port``: the target.
    """

    host: str
    port: int
    granted: tuple[Path, ...] | None
    forbidden: tuple[Path, ...] = ()
    named: tuple[Path, ...] = ()
    matching: MatchingRules = field(default=DEFAULT_RULES, repr=False)

    def _path(self, dn: str) -> Path | None:
        try:
            path = dn_path(Dn.parse(dn, self.matching))
        except DnError:
            return None
        return None if path is None else tuple(path)

    def _open(self, path: Path) -> bool:
        return not any(path[: len(hidden)] == hidden for hidden in self.forbidden)

    def shows(self, dn: str) -> bool:
        """Whether ``dn`` is within the granted subtrees and in no never-reachable one."""
        path = self._path(dn)
        if path is None or not self._open(path):
            return False
        granted = self.granted
        return granted is None or any(path[: len(subtree)] == subtree for subtree in granted)

    def shows_matched(self, dn: str) -> bool:
        """Whether a result's matchedDN may pass (section 4.1.9): empty, or the request's own
        DN or a superior of it, or within the granted subtrees; never a never-reachable one."""
        if not dn:
            return True
        path = self._path(dn)
        if path is None or not self._open(path):
            return False
        if any(named[: len(path)] == path for named in self.named):
            return True
        return self.shows(dn)

    def passes(self, url: str) -> bool:
        """Whether a referral or continuation reference URL may pass (see the module)."""
        parsed = parse_ldap_url(url)
        if parsed is None or parsed.extra:
            return False
        if parsed.host:
            port = parsed.port or _DEFAULT_PORTS[parsed.scheme]
            if not _same_host(parsed.host, self.host) or port != self.port:
                return False
        elif parsed.port is not None:
            return False
        return self.shows(parsed.dn)


def screen(reach: Reach | None, urls: tuple[str, ...]) -> tuple[tuple[str, ...], int]:
    """The URLs that pass, and how many were withheld (all of them without a ``reach``)."""
    if reach is None:
        return (), len(urls)
    kept = tuple(url for url in urls if reach.passes(url))
    return kept, len(urls) - len(kept)
