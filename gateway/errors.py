"""The gateway's exception tree.

Lower layers (YAML, jsonschema, pydantic, sockets, TLS) raise their own exceptions; each boundary
translates them into one of these so that callers handle a small, stable set and every message is
fit to show an operator. Messages never contain secrets.
"""

from __future__ import annotations

import re

MASK = "***"

_SECRET_PATTERNS = (
    re.compile(r"(SharedAccessSignature\s+)\S+", re.IGNORECASE),
    re.compile(
        r"((?:sig|signature|password|passwd|token|sb-hc-token|secret)=)[^&\s\"']+", re.IGNORECASE
    ),
    re.compile(
        r"((?:authorization|proxy-authorization|cookie)[\"']?\s*[:=]\s*[\"']?)[^\"'\n]+",
        re.IGNORECASE,
    ),
    re.compile(r"(-----BEGIN [A-Z ]*PRIVATE KEY-----)[\s\S]*?(-----END [A-Z ]*PRIVATE KEY-----)"),
    # RFC 3986 section 3.2.1: user information in a URL ("http://user:password@host") is
    # deprecated precisely because it carries credentials; a URL may be cut short in a message,
    # so anything from the scheme to an '@' without a '/' in between is masked.
    re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s\"']*@"),
)


def redact(text: str) -> str:
    """``text`` with anything that looks like a credential replaced by ``***``: SAS tokens,
    ``sig=``/``password=``-style parameters, ``Authorization``/``Cookie`` values, PEM private
    keys and the user information of URLs. The last line of defence behind code that simply does
    not print or log secrets; used by the log filter and by every :class:`Problem`."""
    for pattern in _SECRET_PATTERNS:
        if pattern.groups == 2:
            text = pattern.sub(lambda m: f"{m.group(1)}{MASK}{m.group(2)}", text)
        elif pattern.pattern.endswith("@"):
            text = pattern.sub(lambda m: f"{m.group(1)}{MASK}@", text)
        else:
            text = pattern.sub(lambda m: f"{m.group(1)}{MASK}", text)
    return text


def one_line(text: str) -> str:
    """``text`` as one line of printable text: every character ``str.isprintable`` refuses
    written as a ``\\xNN``/``\\uNNNN``/``\\UNNNNNNNN`` escape, everything else as it was.

    Values that came from outside (a relayed request's target or ids, a server's error) reach log
    lines and reports. Raw, a line break (LF, CR, NEL, U+2028) would start what a reader, a log
    viewer or a review comment takes for a new line (a forged entry), an ESC would drive the
    terminal, and a bidirectional override (U+202E) would show the text in another order than it
    has. ``isprintable`` refuses all of them (Unicode categories C* and Z* but the space).
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


class GatewayError(Exception):
    """Base class of every error the gateway raises on purpose.

    Its text is masked (:func:`redact`): commands print these messages, and a message built from
    a lower layer's (a URL, a server's answer) could otherwise carry a credential to the screen.
    """

    def __str__(self) -> str:
        return redact(super().__str__())


class ConfigError(GatewayError):
    """The configuration cannot be used; ``problems`` lists every reason found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        first = problems[0].render() if problems else "invalid configuration"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(first + more)


class PolicyError(ConfigError):
    """The policy cannot be used: its modules do not load, compile, or decide.

    A configuration error of its own kind because ``gateway run`` reports it differently (exit
    code 5, "could not start", docs/operations.md); everything that catches ConfigError still
    catches it.
    """


class Problem:
    """One thing wrong with a configuration, located as precisely as the input allows.

    ``path`` is the JSON path of the offending value (``targets.erp.port``), ``line``/``column``
    are 1-based positions in ``file`` (0 when unknown, for example for environment overrides).
    """

    __slots__ = ("code", "column", "file", "hint", "line", "message", "path")

    def __init__(
        self,
        message: str,
        *,
        code: str,
        path: str = "",
        file: str = "",
        line: int = 0,
        column: int = 0,
        hint: str = "",
    ) -> None:
        # Messages quote the offending value; one that holds a credential (a proxy URL with its
        # password) must not be printed by validate, diff, check or the log.
        self.message = redact(message)
        self.code = code
        self.path = path
        self.file = file
        self.line = line
        self.column = column
        self.hint = redact(hint)

    def location(self) -> str:
        """``FILE:LINE:COL`` (or as much of it as is known)."""
        if self.line:
            return f"{self.file}:{self.line}:{self.column}"
        return self.file or "<config>"

    def render(self) -> str:
        """The one-line human form: ``FILE:LINE:COL: json.path: message (hint: ...)``."""
        text = f"{self.location()}: {self.path or '<root>'}: {self.message}"
        if self.hint:
            text += f" (hint: {self.hint})"
        return text

    def as_dict(self) -> dict[str, str | int]:
        """The machine-readable form used by ``--format json``."""
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
        }

    def __repr__(self) -> str:
        return f"Problem({self.render()!r})"
