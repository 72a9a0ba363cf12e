"""The worker side of scoring: `score_shard` on a small Parquet shard, its per-stage times, failed results."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import SOURCES, metadata_agent, shard_task, write_shard

from corpus_agents.scoring.corpus import pack_doc_ids
from corpus_agents.scoring.parts import PART_SCHEMA, score_shard

ROWS = 40
STAGES = ("read_s", "decode_s", "score_s", "write_s")


class FailingAgent:
    """Looks like an agent to `score_shard` and fails on its first batch (the first shape of a bug)."""

    name = "broken"
    columns: list[str] = []
    uses_gpu = False

    def fingerprint(self) -> str:
        return "f" * 32

    def score(self, batch):
        _ = batch.texts  # decodes first: that decode is shared, not this agent's
        raise KeyError("no_such_key")


def test_score_shard_writes_each_part_with_per_stage_times(tmp_path):
    shard = write_shard(tmp_path / "shard.parquet", ROWS)
    agents = [metadata_agent("domain"), metadata_agent("domain2")]
    task = shard_task(shard, tmp_path / "parts", agents, shard_id=3)
    seen: list[int] = []

    results = score_shard(task, seen.append)

    assert sum(seen) == ROWS and len(seen) == ROWS // task.batch_rows
    assert [r.agent for r in results] == ["domain", "domain2"]
    # the agents' labels are code, web, (other): books is "other"
    expected = [{"code": 0, "web": 1}.get(SOURCES[i % len(SOURCES)], 2) for i in range(ROWS)]
    for r, spec in zip(results, task.parts):
        assert r.error is None and r.path == spec.path and r.num_rows == ROWS and r.complete
        table = pq.read_table(r.path)
        assert table.schema.equals(PART_SCHEMA)
        assert table.column("doc_id").to_pylist() == pack_doc_ids(3, np.arange(ROWS)).tolist()
        assert table.column("label").to_pylist() == expected
        assert not any(".tmp-" in f for f in os.listdir(os.path.dirname(r.path)))
        times = [getattr(r, s) for s in STAGES]
        assert all(t >= 0 for t in times) and r.score_s > 0 and r.write_s > 0 and r.read_s > 0
        assert r.seconds == pytest.approx(sum(times))
    # The shard is read once for both agents: each part carries half of it.
    assert results[0].read_s == results[1].read_s
    # The metadata agent reads a column, never the text: nothing was decoded.
    assert all(r.decode_s == 0 for r in results)


def test_an_agent_failure_fails_its_part_only_and_its_decode_is_shared(tmp_path):
    shard = write_shard(tmp_path / "shard.parquet", ROWS)
    task = shard_task(shard, tmp_path / "parts", [FailingAgent(), metadata_agent()])
    broken, good = score_shard(task)
    assert broken.agent == "broken" and broken.path is None and broken.num_rows == 0
    assert broken.error == f"shard {shard}: agent broken: KeyError: 'no_such_key'"
    assert good.error is None and good.num_rows == ROWS
    assert good.decode_s > 0  # the text the failing agent decoded is billed to the shared decode stage
    assert not [p for p in (tmp_path / "parts" / "broken").rglob("*") if p.is_file()]


def test_a_changed_shard_fails_every_part_with_the_task_helper(tmp_path):
    shard = write_shard(tmp_path / "shard.parquet", ROWS)
    task = shard_task(shard, tmp_path / "parts", [metadata_agent("a"), metadata_agent("b")])
    write_shard(shard, ROWS + 1)  # rewritten after registration
    results = score_shard(task)
    assert [r.agent for r in results] == ["a", "b"]
    for r in results:
        assert r.path is None and r.seconds == 0 and not (tmp_path / "parts").exists()
        assert r.error.startswith(f"shard {shard}: changed since it was registered (size or footer differs)")
    # The same helper builds the executors' failures: one result per part, the error naming the shard.
    failed = task.failed("worker process died", task.parts[1:])
    assert [(r.agent, r.shard_id, r.path, r.error) for r in failed] == [
        ("b", 0, None, f"shard {shard}: worker process died")
    ]
    assert [r.agent for r in task.failed("gone")] == ["a", "b"]


def test_a_renamed_part_is_reused_and_a_sample_is_partial(tmp_path):
    shard = write_shard(tmp_path / "shard.parquet", ROWS)
    task = shard_task(shard, tmp_path / "parts", [metadata_agent()])
    (first,) = score_shard(task)
    (again,) = score_shard(task)  # as after a crash between the rename and the commit
    assert again.path == first.path and again.num_rows == ROWS and again.seconds == 0
    task.rows = np.array([1, 5, 30], dtype=np.int64)
    task.parts[0].path = str(tmp_path / "parts" / "sample.parquet")
    (part,) = score_shard(task)
    assert not part.complete and part.num_rows == 3
    assert pq.read_table(part.path).column("doc_id").to_pylist() == [1, 5, 30]


def test_tasks_pickle_and_split_by_device(tmp_path):
    shard = write_shard(tmp_path / "shard.parquet", ROWS)
    gpu = metadata_agent("gpu")
    gpu.uses_gpu = True  # an instance attribute: as a GPU agent's class attribute reads
    task = pickle.loads(
        pickle.dumps(shard_task(shard, tmp_path, [metadata_agent("a"), gpu, metadata_agent("b")]))
    )
    pools = {pool: [s.agent.name for s in sub.parts] for pool, sub in task.split_by_device(gpus=True)}
    assert pools == {"cpu": ["a", "b"], "gpu:gpu": ["gpu"]}
    assert [pool for pool, _ in task.split_by_device(gpus=False)] == ["cpu"]
