"""Selection snapshots: the Parquet file of document ids a round selected, read by the streaming reader.

Data-loader workers never open DuckDB: a snapshot is self-contained. Its rows are the selected documents
(`doc_id`, `shard_id`, `row_idx`, `row_group`, `priority`) and its file metadata names every shard they
come from (uri and text column), so a reader needs nothing else.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from corpus_agents.storage import atomic_path

SNAPSHOT_SCHEMA = pa.schema(
    [
        ("doc_id", pa.int64()),
        ("shard_id", pa.int32()),
        ("row_idx", pa.int32()),
        ("row_group", pa.int32()),
        ("priority", pa.float64()),
    ]
)
_SHARDS_KEY = b"corpus_agents.shards"


@dataclass(frozen=True)
class ShardRef:
    uri: str
    text_column: str


def write_snapshot(path: str | os.PathLike, rows: pa.Table, shards: dict[int, ShardRef]) -> Path:
    """Write `rows` (SNAPSHOT_SCHEMA columns) atomically with the shard map in the file metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = rows.select(SNAPSHOT_SCHEMA.names).cast(SNAPSHOT_SCHEMA)
    used = set(pc.unique(table["shard_id"]).to_pylist()) if table.num_rows else set()
    shard_map = {str(s): {"uri": shards[s].uri, "text_column": shards[s].text_column} for s in sorted(used)}
    table = table.replace_schema_metadata({_SHARDS_KEY: json.dumps(shard_map).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_snapshot(path: str | os.PathLike) -> tuple[pa.Table, dict[int, ShardRef]]:
    """The snapshot's rows and its shard map."""
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    if _SHARDS_KEY not in meta:
        raise ValueError(f"{path} is not a corpus-agents selection snapshot (no shard map)")
    shard_map = {int(k): ShardRef(**v) for k, v in json.loads(meta[_SHARDS_KEY]).items()}
    return table, shard_map
