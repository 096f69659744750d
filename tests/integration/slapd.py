"""The real OpenLDAP ``slapd`` for the LDAP tests: :mod:`gateway.devkit.slapd` under the names
the tests use (the demo and the benchmark run the same directory)."""

from __future__ import annotations

from gateway.devkit.slapd import (
    ROOT_DN,
    ROOT_PASSWORD,
    SERVICE_DN,
    SERVICE_PASSWORD,
    SUFFIX,
    Slapd,
    SlapdTls,
    running_slapd,
    sample_ldif,
    unavailable_reason,
)

__all__ = [
    "ROOT_DN",
    "ROOT_PASSWORD",
    "SERVICE_DN",
    "SERVICE_PASSWORD",
    "SUFFIX",
    "Slapd",
    "SlapdTls",
    "running_slapd",
    "sample_ldif",
    "slapd_unavailable_reason",
]


def slapd_unavailable_reason() -> str | None:
    """Why slapd tests cannot run here, or ``None`` when they can."""
    return unavailable_reason()
