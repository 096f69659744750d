"""gateway: a declarative, policy-enforcing on-premises agent for Azure Relay Hybrid Connections.

The agent connects outbound only, enforces an allow-list policy on every relayed request and
forwards what is allowed to the on-premises targets declared in ``gateway.yaml``.
"""

from importlib.metadata import PackageNotFoundError, version

# rego-cpp's library must be loaded before any C++ extension (aiohttp's frozenlist) loads the C++
# runtime, or every policy decision leaks memory: see gateway/policy/native.py.
from gateway.policy import native as _native  # noqa: F401  (imported to load the library first)

try:
    __version__ = version("gateway")
except PackageNotFoundError:  # pragma: no cover - only when run from a bare source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
