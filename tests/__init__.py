"""The gateway's test suite."""

# Load rego-cpp before aiohttp's C++ extension (see gateway/policy/native.py): test modules import
# aiohttp before gateway, which would otherwise make every policy evaluation leak memory.
import gateway  # noqa: F401
