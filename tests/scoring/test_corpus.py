"""Corpus registration (corpus_agents/scoring/corpus.py): registering twice is a no-op, new shards get the
next ids."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from helpers import invoke, query


def test_register_twice_is_a_no_op_and_new_shards_get_next_ids(tmp_path, make_corpus):
    corpus = tmp_path / "corpus"
    shards = make_corpus(corpus, num_shards=4, rows_per_shard=50, row_group_rows=20)
    (corpus / "sub").mkdir()
    ws = tmp_path / "ws"
    first = invoke("init", ws, "--corpus", corpus / "*.parquet")
    assert "registered 4 new shards (0 already known); workspace has 4 shards, 200 documents" in first.stdout
    everything = "SELECT * EXCLUDE (registered_at) FROM shards ORDER BY shard_id"
    docs = "SELECT * FROM docs ORDER BY doc_id"
    shards_before, docs_before = query(ws, everything), query(ws, docs)

    # The same shards again, by glob, by explicit (non-normalised) paths, and by their directory.
    for patterns in (
        ["--corpus", corpus / "*.parquet"],
        [a for s in shards for a in ("--corpus", corpus / "sub" / ".." / s.name)],
        ["--corpus", corpus],
    ):
        again = invoke("init", ws, *patterns)
        assert "registered 0 new shards (4 already known); workspace has 4 shards" in again.stdout
        assert query(ws, everything) == shards_before and query(ws, docs) == docs_before

    # A new file sorting between the others gets the next id; the known ones keep theirs.
    new = corpus / "shard-001a.parquet"
    pq.write_table(pa.table({"text": ["x" * i for i in range(7)], "source": ["docs"] * 7}), new)
    added = invoke("init", ws, "--corpus", corpus / "*.parquet")
    assert "registered 1 new shards (4 already known); workspace has 5 shards, 207 documents" in added.stdout
    assert query(ws, "SELECT shard_id, uri FROM shards ORDER BY shard_id") == [
        *[(i, str(p)) for i, p in enumerate(shards)],
        (4, str(new)),
    ]
    assert query(ws, docs)[: len(docs_before)] == docs_before
    assert query(ws, "SELECT doc_id, row_idx, text_bytes FROM docs WHERE shard_id = 4 ORDER BY doc_id") == [
        ((4 << 32) | i, i, i) for i in range(7)
    ]
    bad_ids = "SELECT count(*) FROM docs WHERE doc_id <> (CAST(shard_id AS BIGINT) << 32 | row_idx)"
    assert query(ws, bad_ids)[0][0] == 0
    per_shard = query(
        ws,
        "SELECT s.shard_id, s.num_rows, count(d.doc_id), min(d.row_idx), max(d.row_idx) "
        "FROM shards s JOIN docs d USING (shard_id) GROUP BY ALL ORDER BY 1",
    )
    assert per_shard == [(i, n, n, 0, n - 1) for i, n in enumerate([50, 50, 50, 50, 7])]
