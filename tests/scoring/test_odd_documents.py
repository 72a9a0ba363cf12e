"""Odd documents (docs/architecture.md#guarantees): null, empty, non-UTF-8, binary-looking and huge
documents are registered and scored. Through the real CLI."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from helpers import assert_fully_scored, invoke, no_traceback, query, run_cli, setup_workspace


def test_odd_documents_are_registered_and_scored(tmp_path, real_docs, fasttext_model):
    some_text = "".join(t for t, _ in real_docs[:2000])
    huge = (some_text * (10_500_000 // len(some_text) + 1))[:10_500_000]  # 10.5 MB, one document
    invalid = b"ok \xff\xfe bad \xc3\x28 bytes \xed\xa0\x80 def main(): return 1"
    binary_looking = "".join(chr(i) for i in range(32)) * 20 + "\x00\x00\x7f"
    texts = [
        real_docs[0][0].encode(),
        None,
        b"",
        invalid,
        huge.encode(),
        binary_looking.encode(),
        b" \n\t\r\n ",
        real_docs[1][0].encode(),
    ]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    table = pa.table(
        {
            "text": pa.array(texts, pa.binary()).view(pa.string()),  # raw bytes, not validated as UTF-8
            "source": pa.array(
                [b"code", b"docs", b"code", b"docs", b"code", None, b"docs \xff\xfe", b"docs"], pa.binary()
            ).view(pa.string()),
        }
    )
    pq.write_table(table, corpus / "odd.parquet", row_group_size=3)
    ws = tmp_path / "ws"
    setup_workspace(ws, corpus, fasttext_model)
    invoke("agent", "add", ws, "klass", "--kind", "fasttext", "--model", fasttext_model)  # predicted class

    docs = query(ws, "SELECT row_idx, text_bytes, text_null FROM docs ORDER BY row_idx")
    assert [d[1] for d in docs] == [0 if t is None else len(t) for t in texts]
    assert [d[2] for d in docs] == [t is None for t in texts]
    assert docs[4][1] > 10_000_000

    result = run_cli("score", ws, "--workers", "2", "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    no_traceback(result.stdout, result.stderr)
    assert_fully_scored(ws)

    rows = query(ws, "SELECT doc_id, quality, quality_score, klass, domain FROM doc_labels ORDER BY doc_id")
    assert [r[0] for r in rows] == list(range(len(texts)))
    labels = ["0-0.2", "0.2-0.4", "0.4-0.6", "0.6-0.8", "0.8-1"]
    blank = {1, 2, 6}  # null, empty, whitespace only
    for doc_id, quality, quality_score, klass, domain in rows:
        if doc_id in blank:  # a row each, labelled as such: no fastText label or score (not the class prior)
            assert (quality, quality_score, klass) == (None, None, None), (
                doc_id,
                quality,
                quality_score,
                klass,
            )
        else:  # everything else, binary-looking and non-UTF-8 included, gets a probability, its bin, a class
            assert quality in labels and 0.0 <= quality_score <= 1.0, (doc_id, quality, quality_score)
            assert klass in ("code", "docs"), (doc_id, klass)
        if doc_id == 6:  # a metadata value that is not UTF-8: labelled, readable
            assert domain in ("docs \ufffd\ufffd", "(other)"), domain
        else:
            assert domain == (table["source"][doc_id].as_py() or "(other)")
    assert rows[0][3] == "code" and rows[7][3] == "docs"  # real text is labelled sensibly
