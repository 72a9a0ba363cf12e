"""The CLI end to end on a small real-text corpus: init, agent add/list/remove, score, status, query."""

from __future__ import annotations

import json
import pydoc_data.topics
import sysconfig
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from corpus_agents.cli import main

PROSE = [t for t in pydoc_data.topics.topics.values() if len(t) > 300]
CODE = [
    p.read_text(errors="replace")[:3000]
    for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:120]
]


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, (result.output, result.stderr if result.stderr_bytes else "")
    return result.output


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """Three shards mixing Python docs prose and stdlib code, with small row groups."""
    docs = [(t, "docs") for t in PROSE] + [(t, "code") for t in CODE]
    for i in range(3):
        part = docs[i::3]
        table = pa.table({"text": [d[0] for d in part], "source": [d[1] for d in part]})
        pq.write_table(table, tmp_path / f"shard-{i}.parquet", row_group_size=20)
    return tmp_path


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    path = tmp_path / "ref" / "reference.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"context": PROSE[::2]}), path)
    return path


def scalar(ws: Path, sql: str) -> object:
    out = run("query", str(ws), sql, "--format", "json")
    return next(iter(json.loads(out.splitlines()[0]).values()))


def test_full_flow(corpus: Path, reference: Path) -> None:
    ws = corpus / "ws"
    out = run("init", str(ws), "--corpus", str(corpus / "shard-*.parquet"))
    assert "registered 3 new shards" in out
    assert "0 new shards (3 already known)" in run(
        "init", str(ws), "--corpus", str(corpus / "shard-*.parquet")
    )
    n_docs = len(PROSE) + len(CODE)
    assert scalar(ws, "SELECT count(*) FROM docs") == n_docs
    assert scalar(ws, "SELECT count(*) FROM docs WHERE doc_id <> (shard_id::BIGINT << 32 | row_idx)") == 0

    run("agent", "add", str(ws), "domain", "--kind", "metadata", "--column", "source")
    out = run(
        "agent", "add", str(ws), "quality", "--kind", "fasttext", "--fit-positive", str(reference),
        "--positive-columns", "context", "--bins", "0,0.5,1",
    )  # fmt: skip
    assert "labels: 0-0.5, 0.5-1" in out
    assert "quality\tfasttext\t2 labels" in run("agent", "list", str(ws))

    out = run("score", str(ws), "--workers", "1", "--quiet")
    assert "committed 6 parts, 0 already done, 0 failed" in out
    assert "committed 0 parts, 6 already done" in run("score", str(ws), "--workers", "1", "--quiet")

    rows = run(
        "query",
        str(ws),
        "SELECT domain, quality, count(*) AS n FROM doc_labels GROUP BY ALL",
        "--format",
        "csv",
    )
    assert rows.splitlines()[0] == '"domain","quality","n"'
    assert scalar(ws, "SELECT count(*) FROM doc_labels WHERE domain IS NULL OR quality IS NULL") == 0
    # The fitted classifier scores reference-like prose above code.
    prose = scalar(ws, "SELECT avg(quality_score) FROM doc_labels WHERE domain = 'docs'")
    code = scalar(ws, "SELECT avg(quality_score) FROM doc_labels WHERE domain = 'code'")
    assert prose > code + 0.1  # weak on 35 positives: the negatives are a corpus sample, prose included

    # Texts are one join away: the `documents` view reads them from the shards.
    assert (
        scalar(
            ws, "SELECT count(*) FROM documents d JOIN docs USING (doc_id) WHERE strlen(d.text) = text_bytes"
        )
        == n_docs
    )

    out = run("status", str(ws))
    assert "3 shards" in out and "quality" in out and "domain" in out

    parquet = corpus / "out.parquet"
    run("query", str(ws), "SELECT * FROM doc_labels", "--format", "parquet", "--output", str(parquet))
    assert pq.read_table(parquet).num_rows == n_docs
    assert set(pq.read_table(parquet).column_names) >= {
        "doc_id",
        "domain",
        "domain_score",
        "quality",
        "quality_score",
    }

    run("agent", "remove", str(ws), "quality")
    assert scalar(ws, "SELECT count(*) FROM scores WHERE agent = 'quality'") == 0
    assert "quality" not in run("query", str(ws), "SELECT * FROM doc_labels LIMIT 1", "--format", "csv")


def test_limit_and_sample_make_partial_parts_that_a_full_run_completes(corpus: Path) -> None:
    ws = corpus / "ws"
    run("init", str(ws), "--corpus", str(corpus / "*.parquet"))
    run("agent", "add", str(ws), "domain", "--kind", "metadata", "--column", "source")
    run("score", str(ws), "--limit", "30", "--quiet")
    assert scalar(ws, "SELECT count(*) FROM scores") == 30
    assert scalar(ws, "SELECT bool_and(NOT complete) FROM score_parts") is True
    run("score", str(ws), "--sample", "0.5", "--quiet")
    sampled = scalar(ws, "SELECT count(*) FROM scores")
    assert 0 < sampled < len(PROSE) + len(CODE)
    run("score", str(ws), "--quiet")
    assert scalar(ws, "SELECT count(*) FROM scores") == len(PROSE) + len(CODE)
    assert scalar(ws, "SELECT count(*) - count(DISTINCT doc_id) FROM scores") == 0
    assert scalar(ws, "SELECT bool_and(complete) FROM score_parts") is True


def test_readable_errors(corpus: Path) -> None:
    ws = corpus / "ws"
    out = run("status", str(corpus / "nope"), code=2)
    assert "does not exist" in out
    run("init", str(ws), "--corpus", str(corpus / "shard-0.parquet"))
    out = run("query", str(ws), "SELEC 1", code=2)
    assert out.startswith("error: SQL error:") and len(out.strip().splitlines()) == 1
    out = run("agent", "add", str(ws), "x", "--kind", "nope", code=2)
    assert "unknown agent kind 'nope'" in out
    out = run("agent", "add", str(ws), "bad-name", "--kind", "metadata", "--column", "source", code=2)
    assert "must be an identifier" in out
    out = run("agent", "add", str(ws), "domain", "--kind", "metadata", "--column", "missing", code=2)
    assert "no column 'missing'" in out
    out = run("score", str(ws), "--agents", "ghost", code=2)
    assert "no agent named 'ghost'" in out
    out = run("init", str(ws), "--corpus", str(corpus / "none-*.parquet"), code=2)
    assert "no files match" in out
    out = run("query", str(ws), "SELECT 1", "--format", "parquet", code=2)
    assert "--output" in out


def test_text_column_option_and_nested_metadata(tmp_path: Path) -> None:
    table = pa.table(
        {
            "content": PROSE[:40],
            "meta": pa.array([{"set": "a" if i % 2 else "b", "n": i} for i in range(40)]),
        }
    )
    pq.write_table(table, tmp_path / "s.parquet")
    ws = tmp_path / "ws"
    out = run("init", str(ws), "--corpus", str(tmp_path / "s.parquet"), code=1)  # no `text` column
    assert "no column 'text'" in out
    run("init", str(ws), "--corpus", str(tmp_path / "s.parquet"), "--text-column", "content")
    out = run("init", str(ws), "--corpus", str(tmp_path / "s.parquet"), code=2)
    assert "uses text column 'content'" in out
    run("agent", "add", str(ws), "subset", "--kind", "metadata", "--column", "meta.set")
    run("score", str(ws), "--quiet")
    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    assert con.sql("SELECT subset, count(*) FROM doc_labels GROUP BY ALL ORDER BY 1").fetchall() == [
        ("a", 20),
        ("b", 20),
    ]
