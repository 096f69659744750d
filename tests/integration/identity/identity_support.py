"""Constants shared by the identity integration tests."""

from __future__ import annotations

from gateway.identity import Timeouts

PASSWORD = "Pa55-w0rd-for-alice"
# Short enough that no test can hang on a network wait.
TEST_TIMEOUTS = Timeouts(connect=5.0, read=5.0, total=10.0)
