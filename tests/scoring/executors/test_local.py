"""The local executor with fake work functions: every task's results in any order, progress, a raising task
failing alone, and pool workers that score a real shard without importing DuckDB."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from helpers import metadata_agent, score_and_report_duckdb, shard_task, write_shard

from corpus_agents.scoring.agents.base import AgentContext
from corpus_agents.scoring.agents.fasttext import FastTextAgent
from corpus_agents.scoring.executors.local import run_local


@dataclass
class FakeTask:
    """A task as executors see it: a size and its failed results."""

    name: str
    num_docs: int

    def failed(self, reason: str) -> list[tuple]:
        return [("failed", self.name, reason)]


def count_twice(task: FakeTask, progress) -> list[tuple]:
    """Fake work (module level: pool workers unpickle it by reference): report progress twice, one result."""
    if task.name.startswith("bad"):
        raise ValueError(f"cannot do {task.name}\nsecond line of the message")
    for _ in range(2):
        if progress:
            progress(task.num_docs)
    return [("done", task.name, task.num_docs)]


TASKS = [FakeTask(f"t{i}", i + 1) for i in range(6)]


def read_env(task: FakeTask, progress) -> list[tuple]:
    """Fake work: the worker's value of the environment variable the task names."""
    return [(task.name, os.environ.get(task.name))]


@pytest.mark.parametrize("workers", [1, 3])
def test_every_task_yields_its_results_once_and_progress_adds_up(workers):
    seen: list[int] = []
    results = list(run_local(TASKS, count_twice, seen.append, workers=workers))
    assert sorted(results) == sorted([("done", t.name, t.num_docs)] for t in TASKS)
    assert sorted(seen) == sorted([t.num_docs for t in TASKS] * 2)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_raising_task_becomes_its_failed_results_only(workers):
    tasks = [TASKS[0], FakeTask("bad", 5), TASKS[1]]
    results = list(run_local(tasks, count_twice, lambda n: None, workers=workers))
    assert sorted(results) == [
        [("done", "t0", 1)],
        [("done", "t1", 2)],
        [("failed", "bad", "ValueError: cannot do bad")],
    ]


def test_pool_workers_do_not_import_duckdb(tmp_path):
    tasks = [
        shard_task(
            write_shard(tmp_path / f"shard-{s}.parquet", 24), tmp_path / "parts", [metadata_agent()], s
        )
        for s in range(2)
    ]
    seen: list[int] = []
    reports = [
        r for results in run_local(tasks, score_and_report_duckdb, seen.append, workers=2) for r in results
    ]
    assert sorted(r["results"][0].shard_id for r in reports) == [0, 1]
    assert all(r["results"][0].error is None and r["results"][0].num_rows == 24 for r in reports)
    assert [r["duckdb"] for r in reports] == [False, False]
    assert sum(seen) == 48


def test_pool_workers_scoring_fasttext_import_neither_duckdb_nor_pandas(tmp_path, fasttext_model):
    """Workers are forked from a server that imported the scoring modules; scoring fastText then imports
    neither DuckDB (the catalog is the driver's) nor pandas (a third of a second per worker)."""
    agent = FastTextAgent.create("ft", {"model": str(fasttext_model)}, AgentContext(tmp_path, tmp_path))
    tasks = [
        shard_task(write_shard(tmp_path / f"shard-{s}.parquet", 24), tmp_path / "parts", [agent], s)
        for s in range(2)
    ]
    seen: list[int] = []
    reports = [
        r for results in run_local(tasks, score_and_report_duckdb, seen.append, workers=2) for r in results
    ]
    assert all(r["results"][0].error is None and r["results"][0].num_rows == 24 for r in reports)
    assert [(r["duckdb"], r["pandas"]) for r in reports] == [(False, False)] * 2
    assert {r["start"] for r in reports} <= {"forkserver", "spawn"}
    assert sum(seen) == 48


def test_workers_see_the_environment_of_when_their_pool_starts(monkeypatch):
    # the fork server outlives a pool: a variable set after its start (credentials, an endpoint) must
    # still reach the next pool's workers, as with spawned workers
    task = FakeTask("CORPUS_AGENTS_TEST_ENDPOINT", 1)
    list(run_local([task, task], read_env, lambda n: None, workers=2))  # a server is running now
    monkeypatch.setenv(task.name, "http://127.0.0.1:9")
    results = list(run_local([task, task], read_env, lambda n: None, workers=2))
    assert results == [[(task.name, "http://127.0.0.1:9")]] * 2
