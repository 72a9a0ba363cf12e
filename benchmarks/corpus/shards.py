"""Writing a corpus: documents split into Parquet shards; and the content keys its cached pieces are named by."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def cache_key(spec: list[Any]) -> str:
    """A short name for whatever `spec` (JSON-able: versions, parameters, seeds) determines."""
    return hashlib.sha1(json.dumps(spec).encode()).hexdigest()[:12]


def text_bytes(table: pa.Table) -> np.ndarray:
    """The UTF-8 size of each document of the `text` column."""
    return pc.binary_length(pc.cast(table.column("text"), pa.binary())).to_numpy(zero_copy_only=False)


def write_shards(
    table: pa.Table, out: Path, shards: int, *, row_group_rows: int, compression: str
) -> list[dict[str, Any]]:
    """Split `table` (already shuffled) into `shards` files `out/shard-000NN.parquet` of consecutive rows;
    returns each file's name, documents and bytes."""
    per_shard = -(-len(table) // shards)
    written = []
    for i in range(shards):
        part = table.slice(i * per_shard, per_shard)
        path = out / f"shard-{i:05d}.parquet"
        pq.write_table(part, path, compression=compression, row_group_size=row_group_rows)
        written.append({"file": path.name, "documents": len(part), "bytes": path.stat().st_size})
    return written
