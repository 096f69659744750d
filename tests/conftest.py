"""Settings for the whole test suite.

No test may depend on how fast the machine is: the suite runs on busy 2-core machines, and CI
runs the security and pipeline suites a second time beside a CPU hog (``make test-loaded``).
Hypothesis therefore never fails an example for taking long (``deadline=None``) and never
refuses to run because data generation was slow (``HealthCheck.too_slow``); a test that hangs is
still stopped by pytest-timeout. Timings belong in benchmarks/.

Under the mutation tool (``make mutation``, which sets ``MUTANT_UNDER_TEST`` before any test
module is imported) Hypothesis draws the same examples on every run, so that a mutant is killed or
survives the same way each time and the committed report can be reproduced.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "gateway",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "mutation",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
    database=None,
)
settings.load_profile("mutation" if "MUTANT_UNDER_TEST" in os.environ else "gateway")
