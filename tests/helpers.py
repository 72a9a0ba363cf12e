"""Helpers shared by test modules (fixtures live in conftest.py): small shards, workspaces and scoring tasks,
and work functions that executors can pickle to their workers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from corpus_agents.scoring.agents.metadata import OTHER, MetadataAgent
from corpus_agents.scoring.corpus import register_corpus, row_group_hashes, shard_fingerprint
from corpus_agents.scoring.parts import PartSpec, Shard, ShardTask, part_path, score_shard

SOURCES = ["web", "code", "books"]


def write_shard(path: Path, rows: int, row_group_rows: int = 16) -> Path:
    """A Parquet shard of `rows` documents: a `text` column (one null) and a `source` column cycling SOURCES."""
    texts = [None if i == 3 else f"document {i}\nline two of {i}" for i in range(rows)]
    table = pa.table({"text": texts, "source": [SOURCES[i % len(SOURCES)] for i in range(rows)]})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_rows)
    return path


def metadata_agent(name: str = "domain") -> MetadataAgent:
    """A metadata agent over the `source` column of `write_shard`'s shards (cheap: no model)."""
    return MetadataAgent(name, {"column": "source", "labels": [*sorted(SOURCES[:2]), OTHER]})


def make_workspace(root: Path, shards: int, rows: int, agents: list[str]) -> Path:
    """root/ws over `shards` shards of `rows` documents (root/corpus) with a metadata agent per name."""
    # Imported here: pool workers import this module for its work functions, and must not import DuckDB.
    from corpus_agents.scoring.catalog import Catalog

    for s in range(shards):
        write_shard(root / "corpus" / f"shard-{s}.parquet", rows)
    with Catalog(root / "ws", create=True) as cat:
        report = register_corpus(cat, [str(root / "corpus" / "*.parquet")], "text")
        assert len(report.added) == shards and not report.errors, report.errors
        for name in agents:
            cat.add_agent(metadata_agent(name))
    return root / "ws"


def shard_task(
    shard_path: Path, parts_dir: Path, agents: list[Any], shard_id: int = 0, batch_rows: int = 8
) -> ShardTask:
    """A task scoring a registered-looking shard for `agents` (as `plan_tasks` builds it, without a catalog)."""
    fingerprint, size = shard_fingerprint(str(shard_path))
    meta = pq.ParquetFile(shard_path).metadata
    hashes = tuple(row_group_hashes(str(shard_path), meta))
    shard = Shard(
        shard_id, str(shard_path), meta.num_rows, size, fingerprint, meta.num_row_groups, "text", hashes
    )
    specs = [
        PartSpec(a, a.fingerprint(), part_path(parts_dir, a.name, a.fingerprint(), shard_id)) for a in agents
    ]
    return ShardTask(shard, specs, batch_rows=batch_rows)


def score_and_report_duckdb(task: ShardTask, progress: Any = None) -> list[Any]:
    """Work function: score the task for real, then report whether this process has imported DuckDB."""
    results = score_shard(task, progress)
    return [{"duckdb": "duckdb" in sys.modules, "results": results}]


def fail_odd_shards(task: ShardTask, progress: Any = None) -> list[Any]:
    """Work function that raises for tasks of odd shards and scores the others."""
    if task.shard.shard_id % 2:
        raise ValueError(f"odd shard {task.shard.shard_id}")
    return score_shard(task, progress)
