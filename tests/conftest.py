"""Settings for the whole test suite.

No test may depend on how fast the machine is: the suite runs on busy 2-core machines, and CI
runs the security and pipeline suites a second time beside a CPU hog (``make test-loaded``).
Hypothesis therefore never fails an example for taking long (``deadline=None``) and never
refuses to run because data generation was slow (``HealthCheck.too_slow``); a test that hangs is
still stopped by pytest-timeout. Timings belong in benchmarks/.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "gateway",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("gateway")
