"""The selection-quality experiment's statistics (benchmarks/stats.py)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from stats import (  # noqa: E402
    NOT_DISTINGUISHABLE,
    bootstrap_ci,
    describe,
    loss_at,
    paired,
    reach,
    unigram_cross_entropy,
    unigram_entropy,
)


def test_reach_ignores_a_dip_that_recovers() -> None:
    xs = [0, 10, 20, 30, 40]
    losses = [9.0, 7.0, 8.0, 7.5, 6.5]  # dips below 7.2 at 10, back above at 20 and 30
    # Stays below from the segment 30 -> 40: 7.5 -> 6.5 crosses 7.2 at 30 + 10 * 0.3 = 33.
    assert reach(xs, losses, 7.2) == pytest.approx(33.0)
    assert reach(xs, [9.0, 7.0, 8.0], 7.2) is None  # ends above: never reached
    assert reach(xs[:3], [7.0, 6.0, 5.0], 7.2) == 0.0  # below from the start
    assert reach([0, 10], [8.0, 6.0], 7.0) == pytest.approx(5.0)


def test_loss_at_interpolates_inside_the_curve_only() -> None:
    assert loss_at([0, 10, 20], [9.0, 7.0, 6.0], 15) == pytest.approx(6.5)
    assert loss_at([0, 10, 20], [9.0, 7.0, 6.0], 25) is None


def test_bootstrap_ci_covers_a_known_mean_and_is_seeded() -> None:
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(100):
        low, high = bootstrap_ci(rng.normal(2.0, 1.0, size=30), resamples=2000, seed=3)
        covered += low <= 2.0 <= high
    assert 85 <= covered <= 100  # nominal 95%; the percentile bootstrap runs a little short at n = 30
    values = rng.normal(0.0, 1.0, size=10)
    assert bootstrap_ci(values, seed=5) == bootstrap_ci(values, seed=5)
    low, high = bootstrap_ci(values)
    assert low < values.mean() < high


def test_paired_differences_use_shared_seeds_only() -> None:
    a = {0: 5.0, 1: 5.2, 2: 4.9, 3: 5.1, 4: 5.0, 9: 1.0}
    b = {0: 5.5, 1: 5.6, 2: 5.5, 3: 5.4, 4: 5.6, 7: 9.0}
    d = paired(a, b)
    assert d is not None and d["seeds"] == [0, 1, 2, 3, 4]
    diffs = np.array([-0.5, -0.4, -0.6, -0.3, -0.6])
    assert d["mean"] == pytest.approx(diffs.mean())
    assert d["sd"] == pytest.approx(diffs.std(ddof=1))
    assert d["effect_size"] == pytest.approx(diffs.mean() / diffs.std(ddof=1))
    assert d["distinguishable"] and d["ci95"][1] < 0
    assert describe(d).startswith("-0.480")
    assert paired({0: 1.0}, {1: 1.0}) is None
    assert paired({0: 1.0, 1: None}, {0: 2.0, 1: 2.0})["n"] == 1  # type: ignore[index]


def test_a_difference_whose_ci_includes_zero_is_not_stated() -> None:
    a = {s: v for s, v in enumerate([5.0, 5.3, 4.8, 5.2, 4.9, 5.1])}
    b = {s: v for s, v in enumerate([5.1, 5.0, 5.0, 5.0, 5.0, 5.05])}
    d = paired(a, b)
    assert d is not None and not d["distinguishable"] and d["ci95"][0] < 0 < d["ci95"][1]
    assert describe(d).startswith(NOT_DISTINGUISHABLE)
    assert not paired({0: 1.0}, {0: 3.0})["distinguishable"]  # type: ignore[index]  # one seed: no CI
    assert not paired({0: 1.0, 1: 1.1}, {0: 3.0, 1: 3.2})["distinguishable"]  # type: ignore[index]  # two


def test_unigram_entropy() -> None:
    assert unigram_entropy([1, 2, 3, 4]) == pytest.approx(math.log(4))
    assert unigram_entropy([7, 7, 7]) == pytest.approx(0.0)
    assert unigram_entropy([1, 1, 2, 2]) == pytest.approx(math.log(2))


def test_unigram_cross_entropy_is_add_one_smoothed_corpus_frequencies() -> None:
    # train counts 3,1,0,0 over a vocabulary of 4: p = (4, 2, 1, 1) / 8
    assert unigram_cross_entropy([0, 0, 0, 1], [0, 1], 4) == pytest.approx(
        -(math.log(0.5) + math.log(0.25)) / 2
    )
    assert unigram_cross_entropy([0, 0, 0, 1], [3], 4) == pytest.approx(math.log(8))
    # never below the evaluated tokens' own entropy
    train, held = [0, 1, 2, 2, 3, 3, 3], [2, 3, 3, 1]
    assert unigram_cross_entropy(train, held, 4) >= unigram_entropy(held)
