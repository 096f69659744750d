"""The gateway's exception tree.

Lower layers (YAML, jsonschema, pydantic, sockets, TLS) raise their own exceptions; each boundary
translates them into one of these so that callers handle a small, stable set and every message is
fit to show an operator. Messages never contain secrets.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration cannot be used; ``problems`` lists every reason found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        first = problems[0].render() if problems else "invalid configuration"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(first + more)


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
        self.message = message
        self.code = code
        self.path = path
        self.file = file
        self.line = line
        self.column = column
        self.hint = hint

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
