"""The scoring benchmark reads its per-stage breakdown from the times the pipeline stores per part."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from helpers import make_workspace

from corpus_agents.scoring.catalog import Catalog

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
_spec = importlib.util.spec_from_file_location("bench_scoring", BENCH / "scoring.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)  # puts benchmarks/ on sys.path for its own imports

SHARDS, ROWS = 2, 30


def test_a_pipeline_run_reports_the_stage_times_stored_in_the_catalog(tmp_path):
    ws = make_workspace(tmp_path, SHARDS, ROWS, ["a", "b"])
    run = bench.child_run(str(ws), ["a", "b"], workers=1, profile=None)
    assert run["docs"] == SHARDS * ROWS and run["parts"] == 2 * SHARDS
    assert run["rows_committed"] == {"a": SHARDS * ROWS, "b": SHARDS * ROWS}
    with Catalog(ws) as cat:
        parts = list(cat.parts().values())
    stages = run["stages_s"]
    assert set(stages) == {"read", "decode", "write", "score:a", "score:b"}
    for agent in ("a", "b"):
        assert stages[f"score:{agent}"] == pytest.approx(sum(p.score_s for p in parts if p.agent == agent))
    assert stages["read"] == pytest.approx(sum(p.read_s for p in parts)) and stages["read"] > 0
    assert stages["decode"] == 0  # metadata agents never decode the text

    other = {**run, "stages_s": {k: 3 * v for k, v in stages.items()}}
    breakdown = bench.stage_breakdown([run, other, other])
    assert breakdown["seconds"] == {k: round(3 * v, 3) for k, v in stages.items()}  # the median round
    assert sum(breakdown["share"].values()) == pytest.approx(1, abs=1e-3)
