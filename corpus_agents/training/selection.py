"""Selection snapshots: the Parquet file of document ids a round selected, read by the streaming reader.

Data-loader workers never open DuckDB: a snapshot is self-contained. Its rows are the selected documents
(`doc_id`, `shard_id`, `row_idx`, `row_group`, `priority`) and its file metadata names every shard they
come from (uri, text column, and the fingerprint and row-group hashes its reads are checked against), so a
reader needs nothing else. A shard inside the workspace is named relative to the snapshot's directory, so a
copied workspace's snapshots read its own shards.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from corpus_agents.scoring.corpus import ShardCheck
from corpus_agents.storage import atomic_path

if TYPE_CHECKING:
    from corpus_agents.scoring.parts import Shard

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
# Rows per row group of a snapshot (pq.write_table's default).
SNAPSHOT_ROW_GROUP = 1024 * 1024


@dataclass(frozen=True)
class ShardRef:
    uri: str
    text_column: str
    fingerprint: str | None = None  # None in snapshots written before reads were checked
    row_group_hashes: tuple[str, ...] | None = None

    @classmethod
    def of(cls, shard: Shard) -> ShardRef:
        return cls(shard.uri, shard.text_column, shard.fingerprint, shard.row_group_hashes)

    def check(self) -> ShardCheck | None:
        """A check of the shard's bytes against its registration (None if the snapshot records none)."""
        return (
            None
            if self.fingerprint is None
            else ShardCheck(self.uri, self.fingerprint, self.row_group_hashes)
        )


def write_snapshot(
    path: str | os.PathLike, rows: pa.Table, shards: dict[int, ShardRef], *, root: Path | None = None
) -> Path:
    """Write `rows` (SNAPSHOT_SCHEMA columns) atomically with the shard map in the file metadata; shards
    under `root` (the workspace) are named relative to the snapshot's directory."""
    table = rows.select(SNAPSHOT_SCHEMA.names).cast(SNAPSHOT_SCHEMA)
    used = pc.unique(table["shard_id"]).to_pylist() if table.num_rows else []
    return write_snapshot_parts(path, [table], used, shards, root=root)


def write_snapshot_parts(
    path: str | os.PathLike,
    parts: Iterable[pa.Table],
    shard_ids: Iterable[int],
    shards: dict[int, ShardRef],
    *,
    root: Path | None = None,
) -> Path:
    """`write_snapshot` of rows that come part by part (SNAPSHOT_SCHEMA tables, in order), so that only one
    part is in memory: `shard_ids` are the shards their rows come from. Row groups are cut as
    `pq.write_table` cuts them (SNAPSHOT_ROW_GROUP rows) when every part but the last has that many rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shard_map = {}
    for s in sorted(set(shard_ids)):
        ref = shards[s]
        entry = {k: v for k, v in asdict(ref).items() if v is not None}
        local = (
            Path(ref.uri.removeprefix("file://"))
            if "://" not in ref.uri or ref.uri.startswith("file://")
            else None
        )
        if root is not None and local is not None and local.is_relative_to(root):
            entry["uri"] = os.path.relpath(local, path.parent.resolve())
            entry["relative"] = True
        shard_map[str(s)] = entry
    schema = SNAPSHOT_SCHEMA.with_metadata({_SHARDS_KEY: json.dumps(shard_map).encode()})
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for part in parts:
            writer.write_table(part.cast(schema), row_group_size=SNAPSHOT_ROW_GROUP)
    return path


def read_snapshot(path: str | os.PathLike) -> tuple[pa.Table, dict[int, ShardRef]]:
    """The snapshot's rows and its shard map (relative shard paths resolved against its directory)."""
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    if _SHARDS_KEY not in meta:
        raise ValueError(f"{path} is not a corpus-agents selection snapshot (no shard map)")
    shard_map = {}
    for k, v in json.loads(meta[_SHARDS_KEY]).items():
        if v.pop("relative", False):
            v["uri"] = os.path.normpath(Path(path).resolve().parent / v["uri"])
        if v.get("row_group_hashes") is not None:
            v["row_group_hashes"] = tuple(v["row_group_hashes"])
        shard_map[int(k)] = ShardRef(**v)
    return table, shard_map
