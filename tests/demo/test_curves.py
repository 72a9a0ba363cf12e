"""The demo's per-round curves: the swing it reports between consecutive rounds."""

from __future__ import annotations

import pytest

from corpus_agents.demo.run import max_swing


def test_max_swing_skips_the_first_drop_and_counts_both_directions() -> None:
    assert max_swing([9.0, 7.0, 6.4, 7.3, 6.6]) == pytest.approx(0.9)  # 6.4 -> 7.3; 9 -> 7 is learning
    assert max_swing([9.0, 7.0, 6.8, 6.7]) == pytest.approx(0.2)
    assert max_swing([9.0, 7.0]) == 0.0
