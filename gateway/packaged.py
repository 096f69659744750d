"""The files that ship inside the package and that the installed gateway reads from there.

An operator who installs only the wheel has everything the agent needs: the built-in decision
policy and its tests (``data/policies/gateway``), an example extension with its test
(``data/policies/examples``), the published schemas and the control-plane OpenAPI contract
(``data/schemas``) and the commented starter configuration (``data/gateway.yaml.example``).

The repository keeps human-facing copies of the same files at its top level (``policies/``,
``schemas/``, ``gateway.yaml.example``); a test keeps each byte-identical to the packaged one.
The files are read from the installed package directory: the gateway loads a native library
(regopy) and so is never imported from a zip archive, where these would not be plain files.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "BUILTIN_POLICIES",
    "DATA",
    "EXAMPLE_EXTENSIONS",
    "SCHEMAS",
    "STARTER_CONFIG",
    "schema_text",
    "starter_config",
]

DATA = Path(__file__).resolve().parent / "data"
POLICY_ROOT = DATA / "policies"
BUILTIN_POLICIES = POLICY_ROOT / "gateway"
"""The decision policy (``package gateway.authz``) and its tests."""
EXAMPLE_EXTENSIONS = POLICY_ROOT / "examples"
"""Example extensions and their tests (never loaded where they lie)."""
SCHEMAS = DATA / "schemas"
STARTER_CONFIG = DATA / "gateway.yaml.example"


def starter_config() -> str:
    """The commented starter gateway.yaml (the same text as the repository's example)."""
    return STARTER_CONFIG.read_text(encoding="utf-8")


def schema_text(name: str) -> str:
    """A packaged schema or contract by file name (``controlplane.openapi.yaml``)."""
    if "/" in name or name.startswith("."):
        raise ValueError(f"not a schema file name: {name!r}")
    return (SCHEMAS / name).read_text(encoding="utf-8")
