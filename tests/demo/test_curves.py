"""The demo's per-round curves: how far a curve went back up between rounds."""

from __future__ import annotations

import pytest

from corpus_agents.demo.run import max_rise


def test_max_rise_counts_going_back_up_not_learning() -> None:
    assert max_rise([9.0, 7.0, 6.4, 7.3, 6.6]) == pytest.approx(0.9)  # 6.4 -> 7.3
    assert max_rise([9.0, 7.0, 6.4, 6.9, 7.1]) == pytest.approx(0.7)  # 7.1 is 0.7 above the best so far
    assert max_rise([9.0, 7.0, 6.8, 6.7]) == 0.0  # a curve that only falls never rises
    assert max_rise([8.4, 7.9, 7.1, 6.9]) == max_rise([8.4, 7.9, 7.8, 7.7]) == 0.0  # fast learning is no rise
    assert max_rise([9.0]) == 0.0 and max_rise([]) == 0.0
