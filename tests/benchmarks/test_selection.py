"""The selection-quality benchmark's own arithmetic: tokens-to-target and distractor choices."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
_spec = importlib.util.spec_from_file_location("selection_quality", BENCH / "selection_quality.py")
sq = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sq)


def test_tokens_to_reach_interpolates_between_rounds() -> None:
    from stats import reach

    tokens, losses = [0, 100, 200], [9.0, 8.0, 7.0]
    assert reach(tokens, losses, 7.5) == pytest.approx(150.0)
    assert reach(tokens, losses, 8.0) == pytest.approx(100.0)
    assert reach(tokens, losses, 6.9) is None


def test_choices_put_the_answer_first_and_prefer_same_group_distractors() -> None:
    answers = ["Paris", "Lyon", "Nice", "Rome", "Milan", "Turin", "paris "]
    groups = ["fr", "fr", "fr", "it", "it", "it", "fr"]
    options = sq.choices_for(answers, groups, seed=0)
    assert [o[0] for o in options] == answers
    for i, opts in enumerate(options):
        assert len(opts) == 4 and len(set(opts)) == 4
        assert all(o.strip().lower() != answers[i].strip().lower() for o in opts[1:])  # no answer twice
    # "Paris": the only other distinct French answers are Lyon and Nice, then one from anywhere.
    assert set(options[0][1:3]) == {"Lyon", "Nice"}
    assert sq.choices_for(answers, groups, seed=0) == options  # seeded
