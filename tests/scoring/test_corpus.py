"""Corpus registration and reading (corpus_agents/scoring/corpus.py) on real Parquet files and a real
catalog: shard fingerprints, text column checks, the documents registered, row ranges of `iter_doc_batches`,
doc_id packing (Python and sql/ alike) and text decoding; registering twice is a no-op."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import invoke, query

from corpus_agents.errors import CorpusError
from corpus_agents.scoring.catalog import Catalog
from corpus_agents.scoring.corpus import (
    decode_texts,
    iter_doc_batches,
    pack_doc_ids,
    register_corpus,
    shard_fingerprint,
    unpack_doc_ids,
)


def texts_table(texts: list, **columns) -> pa.Table:
    return pa.table({"text": texts, **columns})


def test_a_fingerprint_follows_the_footer_and_the_size(tmp_path):
    """Same bytes elsewhere: same fingerprint. Other rows: another. A data page overwritten in place (same
    size, same footer) keeps it: fingerprints read only the footer, by design."""
    path = tmp_path / "a.parquet"
    pq.write_table(texts_table([f"document {i}" for i in range(100)]), path, row_group_size=25)
    fingerprint, size = shard_fingerprint(str(path))
    assert size == path.stat().st_size and len(fingerprint) == 32
    assert shard_fingerprint(str(path)) == (fingerprint, size)
    shutil.copyfile(path, tmp_path / "copy.parquet")
    assert shard_fingerprint(str(tmp_path / "copy.parquet")) == (fingerprint, size)
    pq.write_table(
        texts_table([f"document {i}" for i in range(1, 101)]), tmp_path / "b.parquet", row_group_size=25
    )
    assert shard_fingerprint(str(tmp_path / "b.parquet"))[0] != fingerprint
    data = bytearray(path.read_bytes())
    data[4:20] = bytes(16)  # the start of the first data page, just after the leading magic
    path.write_bytes(bytes(data))
    assert shard_fingerprint(str(path)) == (fingerprint, size)


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"PAR1", r"not a Parquet file \(4 bytes\)"),
        (b"PAR1" + b"\0" * 100, r"not a Parquet file or truncated \(no footer magic\)"),
        (
            b"PAR1" + b"\0" * 8 + (10_000).to_bytes(4, "little") + b"PAR1",
            r"truncated \(footer of 10000 bytes",
        ),
    ],
)
def test_a_file_without_a_whole_footer_has_no_fingerprint(tmp_path, content, reason):
    path = tmp_path / "bad.parquet"
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=f"shard {path}: {reason}"):
        shard_fingerprint(str(path))


def test_registration_records_each_document_and_checks_the_text_column(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = ["plain", None, "", "été", "x" * 1000, "two\nlines", "last"]
    pq.write_table(texts_table(texts, source=["s"] * 7), corpus / "a.parquet", row_group_size=3)
    large = pa.table({"text": pa.array(["a", "bb"], pa.large_string())})
    pq.write_table(large, corpus / "b-large.parquet")
    nested = pa.table({"meta": pa.array([{"body": "x", "n": 1}]), "text": pa.array([None], pa.string())})
    pq.write_table(nested, corpus / "c-nested.parquet")
    pq.write_table(pa.table({"text": pa.array([1, 2], pa.int32())}), corpus / "d-int.parquet")
    pq.write_table(pa.table({"body": ["no text column"]}), corpus / "e-none.parquet")

    with Catalog(tmp_path / "ws", create=True) as cat:
        report = register_corpus(cat, [str(corpus / "*.parquet")], "text")
        assert report.added == [str(corpus / n) for n in ("a.parquet", "b-large.parquet", "c-nested.parquet")]
        assert report.unchanged == []
        assert report.errors == [
            f"shard {corpus / 'd-int.parquet'}: text column 'text' is int32, expected a string column",
            f"shard {corpus / 'e-none.parquet'}: no column 'text' (columns: body)",
        ]
        shards = cat.shards()
        assert [(s.shard_id, s.num_rows, s.num_row_groups, s.text_column) for s in shards] == [
            (0, 7, 3, "text"),
            (1, 2, 1, "text"),
            (2, 1, 1, "text"),
        ]
        for s in shards:
            assert (s.fingerprint, s.num_bytes) == shard_fingerprint(s.uri)
        docs = cat.execute(
            "SELECT doc_id, row_idx, row_group, text_bytes, text_null FROM docs WHERE shard_id = 0"
        )
        assert docs == [
            (i, i, i // 3, 0 if t is None else len(t.encode()), t is None) for i, t in enumerate(texts)
        ]  # text_bytes counts UTF-8 bytes: "été" is 5
        assert cat.execute("SELECT row_group_rows FROM shards WHERE shard_id = 0") == [([3, 3, 1],)]

        # The same files again: the good ones are unchanged, the bad ones reported again.
        again = register_corpus(cat, [str(corpus / "*.parquet")], "text")
        assert again.added == [] and again.unchanged == report.added and again.errors == report.errors
    with Catalog(tmp_path / "nested", create=True) as cat:  # a dotted text column names a struct field
        report = register_corpus(cat, [str(corpus / "c-nested.parquet")], "meta.body")
        assert report.added == [str(corpus / "c-nested.parquet")] and not report.errors
        assert cat.execute("SELECT text_bytes, text_null FROM docs") == [(1, False)]
        assert register_corpus(cat, [str(corpus / "a.parquet")], "meta.body").errors == [
            f"shard {corpus / 'a.parquet'}: no column 'meta' (columns: text, source)"
        ]


def test_iter_doc_batches_reads_whole_row_groups_or_just_the_rows_asked(tmp_path):
    """Batches never span row groups; `rows` restricts reading to those rows (groups without any are
    skipped), and extra columns stay aligned with the texts."""
    path = tmp_path / "s.parquet"
    pq.write_table(
        texts_table([f"doc {i}" for i in range(10)], n=list(range(10))), path, row_group_size=4
    )  # row groups: 0-3, 4-7, 8-9

    def read(rows=None, batch_rows=3):
        out = []
        for row_idx, batch in iter_doc_batches(str(path), "text", ["n"], batch_rows, rows):
            assert batch.texts == [f"doc {i}" for i in row_idx]
            assert batch.column("n").to_pylist() == row_idx.tolist()
            out.append(row_idx.tolist())
        return out

    assert read() == [[0, 1, 2], [3], [4, 5, 6], [7], [8, 9]]
    assert read(batch_rows=100) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert read(np.array([1, 2, 5, 9])) == [[1, 2], [5], [9]]
    assert read(np.array([4, 5, 6, 7])) == [[4, 5, 6], [7]]
    assert read(np.array([], dtype=np.int64)) == []


def test_doc_ids_pack_and_unpack():
    shards, rows = np.array([0, 1, 7, 2**31 - 1]), np.array([0, 5, 2**32 - 1, 123])
    ids = pack_doc_ids(shards, rows)
    assert ids.dtype == np.int64 and ids.tolist() == [
        0,
        (1 << 32) | 5,
        (7 << 32) | (2**32 - 1),
        ((2**31 - 1) << 32) | 123,
    ]
    back_shards, back_rows = unpack_doc_ids(pa.array(ids).to_numpy())
    assert back_shards.tolist() == shards.tolist() and back_rows.tolist() == rows.tolist()


def test_sql_packs_doc_ids_as_python_does_at_the_32_bit_boundaries(tmp_path):
    """The catalog's docs table (written by sql/catalog.sql) and `pack_doc_ids` agree, ids stay positive and
    sort as (shard, row) does."""
    top = 2**31 - 1  # the largest shard id and row index the catalog's INTEGER columns hold
    pairs = [(s, r) for s in (0, 1, 2**31 - 2, top) for r in (0, 1, 2**31 - 2, top)]
    shard_ids = np.array([s for s, _ in pairs], dtype=np.int32)
    rows = np.array([r for _, r in pairs], dtype=np.int32)
    new_docs = pa.table(
        {
            "row_idx": rows,
            "row_group": np.zeros(len(pairs), np.int32),
            "text_bytes": np.zeros(len(pairs), np.int32),
            "text_null": np.zeros(len(pairs), bool),
            "shard_id": shard_ids,
        }
    )
    with Catalog(tmp_path / "ws", create=True) as cat:
        with cat.transaction(), cat.registered("new_docs", new_docs):
            cat.run("catalog.sql", "insert_docs")
        stored = cat.execute("SELECT doc_id, shard_id, row_idx FROM docs")
    ids = pack_doc_ids(shard_ids, rows)
    assert sorted(stored) == sorted(zip(ids.tolist(), shard_ids.tolist(), rows.tolist()))
    assert (ids >= 0).all() and sorted(ids.tolist()) == pack_doc_ids(*zip(*sorted(pairs))).tolist()
    back_shards, back_rows = unpack_doc_ids(ids)
    assert list(zip(back_shards.tolist(), back_rows.tolist())) == pairs


def test_decode_texts_turns_nulls_into_empty_strings_and_bad_utf8_into_replacement_characters():
    raw = [b"ok", None, b"", b"bad \xff\xfe end", "\u00e9t\u00e9 \U0001f600".encode(), b"\xed\xa0\x80"]
    unchecked = pa.array(raw, pa.binary()).view(pa.string())  # as a Parquet reader returns unvalidated bytes
    expected = ["ok", "", "", "bad \ufffd\ufffd end", "\u00e9t\u00e9 \U0001f600", "\ufffd\ufffd\ufffd"]
    assert decode_texts(unchecked) == expected
    assert decode_texts(pa.chunked_array([unchecked.slice(0, 3), unchecked.slice(3)])) == expected
    valid = pa.array(["a", None, "", "\u00e9"], pa.large_string())
    assert decode_texts(valid) == ["a", "", "", "\u00e9"]
    assert decode_texts(pa.array([], pa.string())) == []


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
