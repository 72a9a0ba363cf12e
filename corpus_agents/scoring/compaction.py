"""Part compaction: many tiny score parts of an agent (a corpus of thousands of small shards) rewritten as
a few files, so that readers of part files open a few files, not one per shard.

A compacted file holds the complete parts of consecutive shards of one agent and fingerprint, in shard
order. Every manifest row (`score_parts`) of those shards then names that file: the manifest stays one row
per (agent, shard) and the scores table is untouched. A reader of part files takes, from each file, the
rows of the shards whose manifest row names it (a shard dropped since, e.g. by `init --refresh`, leaves
rows in the file that no manifest row claims).

kill -9 safe: the compacted file is written under a temporary name and renamed, the manifest rows are
repointed in one transaction, and only then are the old files removed. A kill before the transaction
leaves an unreferenced file (the next compaction writes it again, the next full `score` removes it); a kill
after it leaves old files that no part names (the next compaction removes them: a shard whose manifest row
names a compacted file has no use for its own file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from corpus_agents import storage
from corpus_agents.errors import CorpusAgentsError
from corpus_agents.scoring.catalog import Catalog, Part
from corpus_agents.scoring.parts import PART_SCHEMA

#: A part of fewer documents than this is tiny; a compacted file holds up to this many documents.
TARGET_ROWS = 1_000_000


@dataclass
class CompactionSummary:
    files_written: int = 0
    parts_compacted: int = 0
    files_removed: int = 0
    groups: list[tuple[str, int, int, str]] = field(default_factory=list)  # agent, first, last shard, path


def compaction_groups(parts: list[Part], target_rows: int = TARGET_ROWS) -> list[list[Part]]:
    """Runs of tiny parts (complete, each in its own file) of one agent and fingerprint, in shard order,
    each run at most `target_rows` documents and at least two parts."""
    by_path: dict[str, int] = {}
    for p in parts:
        by_path[p.path] = by_path.get(p.path, 0) + 1
    tiny = sorted(
        (p for p in parts if p.complete and p.num_rows < target_rows and by_path[p.path] == 1),
        key=lambda p: (p.agent, p.fingerprint, p.shard_id),
    )
    groups: list[list[Part]] = []
    current: list[Part] = []
    for p in tiny:
        same = current and (current[0].agent, current[0].fingerprint) == (p.agent, p.fingerprint)
        if not same or sum(q.num_rows for q in current) + p.num_rows > target_rows:
            groups.append(current)
            current = []
        current.append(p)
    groups.append(current)
    return [g for g in groups if len(g) >= 2]


def compact_parts(
    catalog: Catalog, agents: list[str] | None = None, *, target_rows: int = TARGET_ROWS
) -> CompactionSummary:
    """Compact the tiny parts of the named agents (default: all); see the module's docstring."""
    from corpus_agents.scoring.driver import remove_stale_files

    if storage.is_url(catalog.parts_url):
        raise CorpusAgentsError(f"compaction works on local parts; {catalog.parts_url} is object storage")
    names = set(agents) if agents is not None else None
    if names is not None:
        catalog.agents(list(names))  # unknown names are an error
    remove_stale_files(catalog, keep_uncommitted=True)
    summary = CompactionSummary()
    parts = [p for p in catalog.parts().values() if names is None or p.agent in names]
    for p in parts:  # files a compaction killed after its transaction left behind
        if Path(p.path).name.startswith("compact-"):
            leftover = Path(p.path).parent / f"shard-{p.shard_id:06d}.parquet"
            if leftover.exists():
                leftover.unlink()
                summary.files_removed += 1
    for group in compaction_groups(parts, target_rows):
        first, last = group[0], group[-1]
        final = Path(first.path).parent / f"compact-{first.shard_id:06d}-{last.shard_id:06d}.parquet"
        with storage.atomic_path(final, fsync=True) as tmp:
            with pq.ParquetWriter(tmp, PART_SCHEMA) as writer:
                for part in group:
                    table = pq.read_table(part.path, schema=PART_SCHEMA)
                    if table.num_rows != part.num_rows:
                        raise CorpusAgentsError(
                            f"part {part.path} has {table.num_rows} rows, not {part.num_rows}; "
                            "`corpus-agents status` names the parts that `score` must repair first"
                        )
                    writer.write_table(table.cast(PART_SCHEMA) if table.schema != PART_SCHEMA else table)
        catalog.repoint_parts(first.agent, [p.shard_id for p in group], str(final))
        for part in group:
            storage.remove_if_exists(part.path)
        summary.files_written += 1
        summary.parts_compacted += len(group)
        summary.files_removed += len(group)
        summary.groups.append((first.agent, first.shard_id, last.shard_id, str(final)))
    catalog.release()
    return summary
