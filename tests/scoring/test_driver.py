"""The scoring driver on a real catalog: which parts `plan_tasks` plans (done, stale, partial with --limit or
--sample-fraction), the order a pool takes them in, and what committing parts records (its per-stage times;
several parts per transaction, all or none)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers import commit_tasks, make_workspace

from corpus_agents.scoring.catalog import Catalog
from corpus_agents.scoring.driver import (
    CommitPace,
    RunSummary,
    balanced,
    commit_batch,
    plan_tasks,
    run_scoring,
)
from corpus_agents.scoring.parts import part_path, score_shard

SHARDS, ROWS = 3, 40
STAGES = ("read_s", "decode_s", "score_s", "write_s")


@pytest.fixture
def catalog(tmp_path):
    """A workspace over 3 shards of 40 documents with two metadata agents, `a` and `b`."""
    with Catalog(make_workspace(tmp_path, SHARDS, ROWS, ["a", "b"])) as cat:
        yield cat


def planned(tasks) -> dict[int, list[str]]:
    return {t.shard.shard_id: [s.agent.name for s in t.parts] for t in tasks}


def test_a_fresh_workspace_plans_every_part(catalog):
    tasks, skipped = plan_tasks(catalog, catalog.agents(), batch_rows=16)
    assert skipped == 0 and planned(tasks) == {s: ["a", "b"] for s in range(SHARDS)}
    for task in tasks:
        assert task.rows is None and task.complete and task.num_docs == ROWS and task.batch_rows == 16
        for spec in task.parts:
            fp = spec.agent.fingerprint()
            assert spec.fingerprint == fp
            assert spec.path == part_path(catalog.parts_url, spec.agent.name, fp, task.shard.shard_id)


def test_done_parts_are_skipped_and_stale_ones_planned_again(catalog):
    a, b = catalog.agents()
    tasks, _ = plan_tasks(catalog, [a])
    commit_tasks(catalog, tasks[:2])  # agent a on shards 0 and 1
    tasks, skipped = plan_tasks(catalog, [a, b])
    assert skipped == 2 and planned(tasks) == {0: ["b"], 1: ["b"], 2: ["a", "b"]}
    # Agent a changed (a new fingerprint): its committed parts are stale.
    tasks, skipped = plan_tasks(catalog, [a, b], fingerprints={"a": "0" * 32, "b": b.fingerprint()})
    assert skipped == 0 and planned(tasks) == {s: ["a", "b"] for s in range(SHARDS)}
    assert {s.fingerprint for t in tasks for s in t.parts if s.agent.name == "a"} == {"0" * 32}


def test_limit_takes_the_first_rows_of_the_first_shards_and_its_parts_are_partial(catalog):
    agents = catalog.agents(["a"])
    tasks, skipped = plan_tasks(catalog, agents, limit=50)
    assert skipped == 0 and [t.shard.shard_id for t in tasks] == [0, 1]
    assert [t.rows.tolist() for t in tasks] == [list(range(40)), list(range(10))]
    assert [t.parts[0].path.rsplit("/", 1)[1] for t in tasks] == [
        "shard-000000-limit40.parquet",
        "shard-000001-limit10.parquet",
    ]
    commit_tasks(catalog, tasks)
    parts = catalog.parts()
    assert {k: (p.num_rows, p.complete) for k, p in parts.items()} == {
        ("a", 0): (40, False),
        ("a", 1): (10, False),
    }
    # Partial parts are done for another partial run, not for a full run, which rescores them.
    assert plan_tasks(catalog, agents, limit=50) == ([], 2)
    tasks, skipped = plan_tasks(catalog, agents)
    assert skipped == 0 and [t.shard.shard_id for t in tasks] == [0, 1, 2] and all(t.complete for t in tasks)


def test_sample_is_seeded_per_shard(catalog):
    agents = catalog.agents(["b"])
    first, _ = plan_tasks(catalog, agents, sample=0.5, seed=7)
    again, _ = plan_tasks(catalog, agents, sample=0.5, seed=7)
    other, _ = plan_tasks(catalog, agents, sample=0.5, seed=8)
    rows = [t.rows.tolist() for t in first]
    assert rows == [t.rows.tolist() for t in again] and rows != [t.rows.tolist() for t in other]
    assert len({tuple(r) for r in rows}) == SHARDS  # each shard its own draw
    for task in first:
        assert 0 < task.num_docs < ROWS and np.all(np.diff(task.rows) > 0) and not task.complete
        assert task.parts[0].path.endswith(f"shard-{task.shard.shard_id:06d}-sample0.5-seed7.parquet")


def test_each_part_records_its_own_stage_times(catalog):
    summary = run_scoring(catalog, ["a", "b"], show_progress=False, batch_rows=8)
    assert len(summary.committed) == 2 * SHARDS and not summary.failed
    parts = catalog.parts()
    assert len(parts) == 2 * SHARDS
    for result in summary.committed:
        part = parts[(result.agent, result.shard_id)]
        assert [getattr(part, s) for s in STAGES] == pytest.approx([getattr(result, s) for s in STAGES])
        assert all(getattr(part, s) >= 0 for s in STAGES) and part.score_s > 0 and part.write_s > 0


def test_a_pool_takes_the_largest_tasks_first_and_equal_ones_in_plan_order(catalog):
    tasks, _ = plan_tasks(catalog, catalog.agents(), batch_rows=16)
    rows = np.arange(10, dtype=np.int64)
    small = dataclasses.replace(tasks[0], rows=rows)  # 10 of the 40 rows of shard 0
    order = balanced([small, tasks[1], tasks[2]])
    assert [t.shard.shard_id for t in order] == [1, 2, 0] and order[-1] is small
    big = dataclasses.replace(tasks[2], shard=dataclasses.replace(tasks[2].shard, num_bytes=10**9))
    assert [t.shard.shard_id for t in balanced([tasks[0], tasks[1], big])] == [2, 0, 1]


def test_a_batch_commits_several_parts_per_transaction_within_its_time(catalog, monkeypatch):
    tasks, _ = plan_tasks(catalog, catalog.agents(), batch_rows=16)
    results = [r for task in tasks for r in score_shard(task)]
    transactions = []
    commit_parts = Catalog.commit_parts
    monkeypatch.setattr(
        Catalog,
        "commit_parts",
        lambda cat, parts: (transactions.append(len(parts)), commit_parts(cat, parts)),
    )
    summary, pace = RunSummary(), CommitPace()
    left = commit_batch(catalog, results, summary, None, max_s=0.0, pace=pace)
    # no time at all: one part (which measures the pace), then the connection goes back to readers
    assert transactions == [1] and len(left) == len(results) - 1 and not catalog.connected
    assert pace.s_per_doc is not None and pace.s_per_doc > 0
    pace.s_per_doc = 1e-12  # the rest fits in one transaction
    left = commit_batch(catalog, left, summary, None, max_s=60.0, pace=pace)
    assert transactions == [1, len(results) - 1] and left == []
    assert sorted((r.agent, r.shard_id) for r in summary.committed) == sorted(catalog.parts())
    assert len(catalog.parts()) == 2 * SHARDS and catalog.execute("SELECT count(*) FROM scores")[0][0] == (
        2 * SHARDS * ROWS
    )


def test_a_transaction_of_parts_commits_all_or_none(catalog, tmp_path):
    tasks, _ = plan_tasks(catalog, catalog.agents(), batch_rows=16)
    good = [r for task in tasks[:2] for r in score_shard(task)]
    bad = score_shard(tasks[2])
    (tmp_path / "not-parquet.parquet").write_text("no")
    bad[0].path = str(tmp_path / "not-parquet.parquet")
    cells = catalog.execute("SELECT * FROM cell_stats ORDER BY ALL")
    summary = RunSummary()
    with pytest.raises(Exception, match="(?i)parquet"):
        commit_batch(catalog, good + bad, summary, None, max_s=60.0, pace=CommitPace(1e-12))
    assert catalog.parts() == {} and catalog.execute("SELECT count(*) FROM scores")[0][0] == 0
    assert catalog.execute("SELECT * FROM cell_stats ORDER BY ALL") == cells
