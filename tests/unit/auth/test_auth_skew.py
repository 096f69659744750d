"""Clock-skew estimate: robust to outliers, needs several samples, forgets old ones."""

from __future__ import annotations

import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.auth.skew import SkewEstimator, median


def test_no_samples_no_estimate() -> None:
    assert SkewEstimator(threshold=30).estimate(0.0) is None


def test_systematic_only_with_enough_consistent_samples() -> None:
    estimator = SkewEstimator(threshold=30, min_samples=3)
    estimator.record(180.0, 0.0)
    estimator.record(181.0, 1.0)
    first = estimator.estimate(1.0)
    assert first is not None
    assert not first.systematic
    assert first.samples == 2
    estimator.record(179.5, 2.0)
    estimate = estimator.estimate(2.0)
    assert estimate is not None
    assert estimate.systematic
    assert estimate.offset == pytest.approx(180.0)


def test_median_ignores_a_single_outlier() -> None:
    estimator = SkewEstimator(threshold=30)
    for now, offset in enumerate([0.2, 0.3, 900.0, 0.1, 0.25]):
        estimator.record(offset, float(now))
    estimate = estimator.estimate(5.0)
    assert estimate is not None
    assert not estimate.systematic
    assert estimate.offset < 1


def test_behind_is_negative_and_old_samples_expire() -> None:
    estimator = SkewEstimator(threshold=30, window=300)
    for now in range(3):
        estimator.record(-120.0, float(now))
    estimate = estimator.estimate(3.0)
    assert estimate is not None
    assert estimate.systematic
    assert estimate.offset == -120.0
    assert estimator.estimate(1000.0) is None


def test_rejects_inconsistent_settings() -> None:
    with pytest.raises(ValueError, match="min_samples"):
        SkewEstimator(threshold=1, min_samples=5, max_samples=3)


# Offsets as the verifier records them: finite seconds, any sign, up to the estimator's 9 samples.
OFFSETS = st.lists(
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e9),
    min_size=1,
    max_size=9,
)


@given(OFFSETS)
def test_the_median_is_the_standard_librarys_to_the_bit(values: list[float]) -> None:
    # The estimator no longer imports statistics (idle memory); its answer must not move.
    assert median(values).hex() == float(statistics.median(values)).hex()


@given(OFFSETS)
def test_the_estimate_is_the_median_of_the_recent_samples(values: list[float]) -> None:
    estimator = SkewEstimator(threshold=30, max_samples=9)
    for now, offset in enumerate(values):
        estimator.record(offset, float(now))
    estimate = estimator.estimate(float(len(values)))
    assert estimate is not None
    assert estimate.offset == statistics.median(values)
