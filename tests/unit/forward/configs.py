"""Configurations shared by the canonicaliser, header policy and catalogue tests.

The baseline is the catalogue's fixture: target ``erp`` = https erp.corp.local:8443, GET and POST
on ``/api/*``. A few more targets cover the other shapes a request can name: an http target on
its default port whose operation lets credentials through, an IPv6-literal target, and a raw tcp
target.
"""

from __future__ import annotations

from typing import Any

from gateway.config.model import GatewayConfig, Operation, Target


def document(**limits: int) -> dict[str, Any]:
    """The baseline configuration as the parsed gateway.yaml document."""
    return {
        "version": 1,
        "gateway": {"id": "agent-1"},
        "empowerid": {"url": "https://tenant.empowerid.example"},
        "limits": dict(limits),
        "targets": {
            "erp": {
                "scheme": "https",
                "host": "erp.corp.local",
                "port": 8443,
                "allowed_cidrs": ["10.1.2.0/24"],
                "operations": [
                    {"name": "read-orders", "methods": ["GET", "POST"], "paths": ["/api/*"]}
                ],
            },
            "intranet": {
                "scheme": "http",
                "host": "intranet.corp.local",
                "allowed_cidrs": ["10.1.3.0/24"],
                "operations": [
                    {
                        "name": "session-api",
                        "methods": ["GET", "POST", "DELETE"],
                        "paths": ["/api/**"],
                        "headers": ["Authorization", "Cookie", "X-Tenant"],
                        "websocket": True,
                    }
                ],
            },
            "v6": {
                "scheme": "https",
                "host": "fd00::5",
                "port": 9443,
                "operations": [{"name": "status", "methods": ["GET"], "paths": ["/status"]}],
            },
            "ldap": {
                "scheme": "tcp",
                "host": "dc1.corp.local",
                "port": 636,
                "allowed_cidrs": ["10.1.4.0/24"],
            },
        },
    }


def make_config(**limits: int) -> GatewayConfig:
    """The baseline configuration, with ``limits`` overriding global limits."""
    return GatewayConfig.model_validate(document(**limits))


def target(name: str) -> Target:
    """A target of the baseline configuration."""
    return make_config().targets[name]


def operation(target_name: str) -> Operation:
    """The first operation of a baseline target."""
    return target(target_name).operations[0]
