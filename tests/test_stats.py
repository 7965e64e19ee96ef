"""The statistics the experiments report: paired permutation test, bootstrap interval, Holm."""

import pytest

from soft_lightning.signals import stats


def test_paired_statistics_by_hand():
    # 3 items better, 1 worse: of the 16 sign patterns, those with |sum| >= 2 are 10.
    assert stats.paired_permutation([1, 1, 1, -1, 0]) == 10 / 16
    assert stats.paired_permutation([0, 0]) == 1.0
    assert stats.paired_permutation([1.0] * 30) < 1e-4  # Monte Carlo: (0 + 1) / (samples + 1) at most a few hits
    low, high = stats.bootstrap_interval([1, 0, 0, 1, 1, 0, 1, 1])
    assert 0.25 <= low < 0.625 < high <= 1.0
    assert stats.holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})
