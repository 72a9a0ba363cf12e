"""The catalog's cell statistics (sql/schema.sql cell_stats) and every document's cell (doc_cells): kept up to
date, in the same transaction, by every commit, drop and agent change, they always equal a from-scratch
recount."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from helpers import cli_env, make_workspace, metadata_agent

from corpus_agents.scoring.catalog import Catalog

ROWS = 40


def stats(cat: Catalog) -> list[tuple]:
    return cat.execute("SELECT shard_id, cell, num_docs, tokens FROM cell_stats ORDER BY ALL")


def current(cat: Catalog) -> tuple[list[tuple], list[tuple]]:
    """The cell statistics and every document's cell (`doc_cells`), as stored."""
    docs = cat.execute("SELECT doc_id, row_group, text_bytes, cell FROM doc_cells ORDER BY doc_id")
    return stats(cat), docs


def recounted(cat: Catalog) -> tuple[list[tuple], list[tuple]]:
    """What a from-scratch recount gives (rolled back: the stored statistics stay as they were)."""
    cat.execute("BEGIN TRANSACTION")
    try:
        cat._recount_cells(None)
        return current(cat)
    finally:
        cat.execute("ROLLBACK")


def decoded(cat: Catalog) -> dict[tuple[int, str], int]:
    """Each document's label under each agent, unpacked from its `doc_cells` cell (-1: unlabelled)."""
    agents = cat.execute("SELECT agent, num_labels, stride FROM cell_agents")
    rows = cat.execute("SELECT doc_id, cell FROM doc_cells")
    return {(d, a): int(c // s % (n + 1)) - 1 for d, c in rows for a, n, s in agents}


def labelled(cat: Catalog) -> dict[tuple[int, str], int]:
    """The same from `scores` and `docs` directly (a label out of the agent's range counts as unlabelled)."""
    agents = cat.execute("SELECT agent, num_labels FROM cell_agents")
    docs = cat.execute("SELECT doc_id FROM docs WHERE NOT text_null AND text_bytes > 0")
    scores = {(d, a): lab for a, d, lab in cat.execute("SELECT agent, doc_id, label FROM scores")}
    out = {}
    for (d,) in docs:
        for a, n in agents:
            lab = scores.get((d, a))
            out[d, a] = lab if lab is not None and 0 <= lab < n else -1
    return out


def commit(cat: Catalog, tmp: Path, agent: str, shard_id: int, salt: int) -> None:
    """Commit a part of `agent` for a shard with labels varying by `salt` (some NULL, one out of range)."""
    labels = [None if i % 7 == salt % 7 else (i * (salt + 3)) % 4 for i in range(ROWS)]
    table = pa.table(
        {
            "doc_id": pa.array([(shard_id << 32) | i for i in range(ROWS)], pa.int64()),
            "label": pa.array(labels, pa.int16()),
            "score": pa.array([0.5] * ROWS, pa.float32()),
        }
    )
    path = tmp / f"{agent}-{shard_id}-{salt}.parquet"
    pq.write_table(table, path)
    cat.commit_part(
        agent, shard_id, f"fp{salt}", str(path), ROWS, True, read_s=0, decode_s=0, score_s=0, write_s=0
    )


def test_cells_follow_commits_drops_and_agent_changes(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, shards=3, rows=ROWS, agents=["domain", "topic"])
    with Catalog(ws) as cat:
        # registered, nothing scored: every selectable document in the all-unlabelled cell
        assert current(cat) == recounted(cat)
        assert {cell for _, cell, _, _ in stats(cat)} == {0}
        for shard in range(3):
            commit(cat, tmp_path, "domain", shard, salt=shard)
            assert current(cat) == recounted(cat)
            commit(cat, tmp_path, "topic", shard, salt=10 + shard)
            assert current(cat) == recounted(cat)
        scored = stats(cat)
        assert len({cell for _, cell, _, _ in scored}) > 5
        assert decoded(cat) == labelled(cat)
        commit(cat, tmp_path, "topic", 1, salt=20)  # rescored: the part is replaced
        assert current(cat) == recounted(cat) and stats(cat) != scored
        assert decoded(cat) == labelled(cat)
        cat.drop_parts([("domain", 0), ("topic", 2)])
        assert current(cat) == recounted(cat)
        cat.add_agent(metadata_agent("third"))  # a new agent: packed cells stay as they are
        assert current(cat) == recounted(cat)
        cat.add_agent(metadata_agent("domain"), replace=True)  # replaced: its scores and cells go
        assert current(cat) == recounted(cat)
        cat.remove_agent("topic")
        assert current(cat) == recounted(cat)
        assert {cell for _, cell, _, _ in stats(cat)} == {0}
        total = cat.execute("SELECT count(*) FROM docs WHERE NOT text_null AND text_bytes > 0")[0][0]
        assert sum(n for _, _, n, _ in stats(cat)) == total == len(current(cat)[1])


def test_stale_statistics_are_recounted(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, shards=2, rows=ROWS, agents=["domain"])
    with Catalog(ws) as cat:
        commit(cat, tmp_path, "domain", 0, salt=1)
        cat.execute("DELETE FROM scores WHERE agent = 'domain'")  # behind the catalog's back
        assert current(cat) != recounted(cat)
        cat.ensure_cells()
        assert current(cat) == recounted(cat)


# A process that commits parts forever: each (agent, shard) in turn, its labels varying with every commit.
COMMIT_LOOP = """
import sys
from pathlib import Path
import pyarrow as pa, pyarrow.parquet as pq
from corpus_agents.scoring.catalog import Catalog
ws, parts, rows = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
with Catalog(ws) as cat:
    print("open", flush=True)
    i = int(sys.argv[4])
    while True:
        agent, shard = ("domain", "topic")[i % 2], (i // 2) % 2
        labels = [None if (r + i) % 11 == 0 else (r * (i + 3)) % 4 for r in range(rows)]
        path = parts / f"{agent}-{shard}-{i}.parquet"
        pq.write_table(pa.table({"doc_id": pa.array([(shard << 32) | r for r in range(rows)], pa.int64()),
                                 "label": pa.array(labels, pa.int16()),
                                 "score": pa.array([0.5] * rows, pa.float32())}), path)
        cat.commit_part(agent, shard, f"fp{i}", str(path), rows, True, read_s=0, decode_s=0, score_s=0, write_s=0)
        print("committed", flush=True)
        i += 1
"""


def test_cells_survive_kill_9_mid_commit(tmp_path: Path) -> None:
    """kill -9 at random moments of a loop of commits (most of its time is inside commit_part: loading the
    part, recounting the shard's cells): the reopened catalog's cell statistics are never stale and equal a
    from-scratch recount, and match the parts that did commit."""
    rows = 3000
    ws = make_workspace(tmp_path, shards=2, rows=rows, agents=["domain", "topic"])
    parts = tmp_path / "parts"
    parts.mkdir()
    rng = np.random.default_rng(11)
    committed = 0
    for kill in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", COMMIT_LOOP, str(ws), str(parts), str(rows), str(kill * 1000)],
            stdout=subprocess.PIPE,
            env=cli_env(),
            start_new_session=True,
        )
        assert proc.stdout is not None and proc.stdout.readline() == b"open\n"
        if kill % 2 == 0:  # half the kills after a first commit (however slow the machine), half at start
            assert proc.stdout.readline() == b"committed\n"
        time.sleep(float(rng.uniform(0.0, 0.5)))
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        with Catalog(ws) as cat:
            key = cat.run("catalog.sql", "cells_key")[0][0]
            assert cat.get_meta("cells_key") == key  # committed with its part, or not at all
            assert current(cat) == recounted(cat)
            committed = cat.execute("SELECT count(*) FROM score_parts")[0][0]
    assert committed > 0
