"""Bad shards (docs/architecture.md#guarantees): unreadable, truncated, missing or changed shards and
text columns that are missing or not strings fail alone with one line each. Through the real CLI."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import (
    assert_fully_scored,
    corrupt_overwrite,
    invoke,
    no_traceback,
    query,
    run_cli,
    setup_workspace,
)


def one_error_line_per_shard(stderr: str, prefix: str, bad: dict[Path, str]) -> None:
    """Each bad shard is named on exactly one `prefix` line of stderr, with its expected reason."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert all(line.startswith(prefix) for line in lines), stderr
    for path, reason in bad.items():
        naming = [line for line in lines if str(path) in line]
        assert len(naming) == 1, f"{path} named on {len(naming)} lines:\n{stderr}"
        assert re.search(reason, naming[0]), naming[0]


def test_register_reports_bad_shards_and_registers_the_rest(tmp_path, make_corpus):
    corpus = tmp_path / "corpus"
    good = make_corpus(corpus, num_shards=4, rows_per_shard=40)
    data = good[1].read_bytes()
    truncated = corpus / "shard-001-truncated.parquet"
    truncated.write_bytes(data[: len(data) // 2])
    footer_cut = corpus / "shard-001-footer-cut.parquet"  # ends in PAR1 but the footer is cut away
    footer_cut.write_bytes(data[:8] + data[-8:])
    garbage = corpus / "shard-002-garbage.parquet"
    garbage.write_bytes(b"this is not a parquet file\n" * 100)
    empty = corpus / "shard-002-empty.parquet"
    empty.write_bytes(b"")
    missing = tmp_path / "elsewhere" / "missing.parquet"
    bad = {
        truncated: "truncated|not a Parquet file",
        footer_cut: "truncated",
        garbage: "not a Parquet file",
        empty: "not a Parquet file",
        missing: "No such file",
    }

    ws = tmp_path / "ws"
    result = run_cli("init", ws, "--corpus", corpus / "*.parquet", "--corpus", missing)
    assert result.returncode == 1, result.stdout + result.stderr
    no_traceback(result.stdout, result.stderr)
    assert "registered 4 new shards (0 already known)" in result.stdout
    one_error_line_per_shard(result.stderr, "error: shard ", bad)
    shards = query(ws, "SELECT shard_id, uri FROM shards ORDER BY shard_id")
    assert shards == [(i, str(p)) for i, p in enumerate(good)]

    # The bad shards are reported again by the next run; the good ones are not registered twice.
    again = invoke("init", ws, "--corpus", corpus / "*.parquet", "--corpus", missing, expect=1)
    assert "registered 0 new shards (4 already known)" in again.stdout
    one_error_line_per_shard(again.stderr, "error: shard ", bad)

    # Once repaired, a bad shard is registered with the next shard id.
    shutil.copyfile(good[3], truncated)
    for path in (footer_cut, garbage, empty):
        path.unlink()
    fixed = invoke("init", ws, "--corpus", corpus / "*.parquet")
    assert "registered 1 new shards (4 already known)" in fixed.stdout
    assert query(ws, "SELECT shard_id FROM shards WHERE uri = ?", [str(truncated)]) == [(4,)]


def corrupt_truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])


def corrupt_rewrite(path: Path) -> None:
    """Another valid Parquet file under the same name."""
    table = pq.read_table(path)
    pq.write_table(table.slice(1), path)


def corrupt_delete(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize(
    "corrupt, reason",
    [
        (corrupt_overwrite, r"changed since it was registered \(row group \d+ differs\)"),
        (corrupt_truncate, r"not a Parquet file or truncated"),
        (corrupt_rewrite, r"changed since it was registered"),
        (corrupt_delete, r"No such file"),
    ],
)
def test_shard_broken_after_registration_fails_alone_and_is_retried(
    tmp_path, make_corpus, fasttext_model, corrupt, reason
):
    corpus = tmp_path / "corpus"
    shards = make_corpus(corpus, num_shards=4, rows_per_shard=200, row_group_rows=25)
    ws = tmp_path / "ws"
    setup_workspace(ws, corpus, fasttext_model)
    original = shards[2].read_bytes()
    corrupt(shards[2])

    result = invoke("score", ws, "--workers", "1", "--quiet", expect=1)
    no_traceback(result.stdout, result.stderr)
    assert "committed 6 parts, 0 already done, 2 failed" in result.stdout
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 2 and len(result.stderr.strip().splitlines()) == 2, result.stderr
    for line in failed:
        assert line.startswith(f"failed: shard {shards[2]}: ") and re.search(reason, line), line
        assert line.count(f"shard {shards[2]}") == 1, line
    assert query(ws, "SELECT agent, shard_id FROM score_parts ORDER BY ALL") == [
        (agent, s) for agent in ("domain", "quality") for s in (0, 1, 3)
    ]
    assert query(ws, "SELECT agent, shard_id FROM part_failures ORDER BY ALL") == [
        ("domain", 2),
        ("quality", 2),
    ]
    assert query(ws, "SELECT count(*) FROM scores WHERE doc_id >> 32 = 2")[0][0] == 0

    status = invoke("status", ws)
    flat = " ".join(status.stdout.split())
    for agent in ("quality", "domain"):
        assert f"failed {agent} shard 2:" in flat, status.stdout

    # Still broken: the next run retries it (and only it), and fails again.
    retry = invoke("score", ws, "--workers", "1", "--quiet", expect=1)
    assert "committed 0 parts, 6 already done, 2 failed" in retry.stdout

    shards[2].write_bytes(original)
    fixed = invoke("score", ws, "--workers", "1", "--quiet")
    assert "committed 2 parts, 6 already done, 0 failed" in fixed.stdout
    assert_fully_scored(ws)
    flat = " ".join(invoke("status", ws).stdout.split())
    assert "failed quality" not in flat and "failed domain" not in flat


def test_agent_add_with_an_unreadable_shard(tmp_path, make_corpus, real_docs, fasttext_model):
    """Agents that read the corpus when added name the bad shard; others are added; `documents` says why."""
    corpus = tmp_path / "corpus"
    shards = make_corpus(corpus, num_shards=3, rows_per_shard=200, row_group_rows=25)
    reference = tmp_path / "reference.parquet"
    pq.write_table(pa.table({"text": [t for t, s in real_docs[:200] if s == "docs"]}), reference)
    ws = tmp_path / "ws"
    invoke("init", ws, "--corpus", corpus / "*.parquet")
    original = shards[1].read_bytes()
    corrupt_overwrite(shards[1])

    for args in [
        ["domain", "--kind", "metadata", "--column", "source"],
        ["quality", "--kind", "fasttext", "--fit-positive", reference],
    ]:
        result = invoke("agent", "add", ws, *args, expect=2)
        lines = result.stderr.strip().splitlines()
        changed = f"error: shard {shards[1]}: changed since it was registered (row group"  # same footer
        assert len(lines) == 1 and lines[0].startswith(changed), lines
    assert query(ws, "SELECT count(*) FROM agents")[0][0] == 0

    shards[1].unlink()
    added = invoke("agent", "add", ws, "quality", "--kind", "fasttext", "--model", fasttext_model)
    assert "added agent quality" in added.stdout and not added.stderr
    missing = invoke("query", ws, "SELECT count(*) AS n FROM documents", expect=2)
    assert len(missing.stderr.strip().splitlines()) == 1 and str(shards[1]) in missing.stderr

    shards[1].write_bytes(original)
    invoke("agent", "add", ws, "domain", "--kind", "metadata", "--column", "source")
    counted = invoke("query", ws, "SELECT count(*) AS n FROM documents", "--format", "csv")
    assert counted.stdout.split()[-1] == "600"


# ----- no text column, or a text column that is not a string -----------------------------------------


def test_missing_or_non_string_text_column_is_a_one_line_error(tmp_path, make_corpus):
    corpus = tmp_path / "corpus"
    good = make_corpus(corpus, num_shards=2, rows_per_shard=30)
    no_text = corpus / "shard-000-no-text.parquet"
    pq.write_table(pa.table({"body": ["a document"] * 3, "source": ["x"] * 3}), no_text)
    int_text = corpus / "shard-001-int-text.parquet"
    pq.write_table(pa.table({"text": pa.array([1, 2, 3], pa.int64()), "source": ["x"] * 3}), int_text)
    binary_text = corpus / "shard-001-binary-text.parquet"
    pq.write_table(pa.table({"text": pa.array([b"a", b"b"], pa.binary()), "source": ["x"] * 2}), binary_text)
    bad = {
        no_text: r"no column 'text'.*body",
        int_text: r"text column 'text' is int64",
        binary_text: r"text column 'text' is binary",
    }
    ws = tmp_path / "ws"
    result = run_cli("init", ws, "--corpus", corpus / "*.parquet")
    assert result.returncode == 1, result.stdout + result.stderr
    no_traceback(result.stdout, result.stderr)
    one_error_line_per_shard(result.stderr, "error: shard ", bad)
    assert query(ws, "SELECT uri FROM shards ORDER BY shard_id") == [(str(p),) for p in good]

    # A workspace with another text column name reports the column it looks for.
    other = invoke("init", tmp_path / "ws2", "--corpus", good[0], "--text-column", "body", expect=1)
    one_error_line_per_shard(other.stderr, "error: shard ", {good[0]: r"no column 'body'"})
