"""`init --from-hub` on local stand-ins of hub datasets (a directory of JSON Lines files with SlimPajama's nested
`meta` struct, a Parquet data file): shards, registration, the nested column in a metadata agent, kill/resume."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from corpus_agents.cli import main
from corpus_agents.scoring import hub

SETS = ["RedPajamaC4", "RedPajamaGithub", "RedPajamaWikipedia", "RedPajamaArXiv"]


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, (result.output, result.exception)
    return result.output


@pytest.fixture
def hub_rows(real_docs) -> list[dict]:
    """600 SlimPajama-like rows: real text and a nested `meta` struct (set name and a row number)."""
    return [
        {"text": text, "meta": {"redpajama_set_name": SETS[(i * 7) % 5 % 4], "row": i}}
        for i, (text, _) in enumerate(real_docs[:600])
    ]


@pytest.fixture
def dataset_dir(tmp_path: Path, hub_rows: list[dict]) -> Path:
    """A local dataset directory of two JSON Lines files, the way `datasets` reads a hub repo offline."""
    directory = tmp_path / "slimpajama-sample"
    directory.mkdir()
    for name, rows in (("part-0.jsonl", hub_rows[:350]), ("part-1.jsonl", hub_rows[350:])):
        (directory / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return directory


def shard_files(ws: Path) -> list[Path]:
    return sorted((ws / "corpus").glob("*/shard-*.parquet"))


def test_from_hub_writes_shards_registers_them_and_the_nested_column_labels(tmp_path, dataset_dir, hub_rows):
    ws = tmp_path / "ws"
    out = run("init", str(ws), "--from-hub", str(dataset_dir), "--max-rows", "500", "--shard-rows", "120")
    assert "registered 5 new shards" in out and "500 documents" in out

    files = shard_files(ws)
    assert [f.name for f in files] == [f"shard-{i:05d}.parquet" for i in range(5)]
    assert files[0].parent == ws / "corpus" / "slimpajama-sample"
    assert [pq.read_metadata(f).num_rows for f in files] == [120, 120, 120, 120, 20]
    meta = pq.read_metadata(files[0])
    assert meta.row_group(0).column(0).compression == "ZSTD"
    table = pa.concat_tables(pq.read_table(f) for f in files)
    assert pa.types.is_struct(table.schema.field("meta").type)  # kept nested, not flattened or JSON
    assert table.column("text").to_pylist() == [r["text"] for r in hub_rows[:500]]
    assert table.column("meta").to_pylist() == [r["meta"] for r in hub_rows[:500]]

    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    assert con.execute("SELECT count(*), sum(num_rows) FROM shards").fetchone() == (5, 500)
    assert json.loads(con.execute("SELECT value FROM meta WHERE key = 'hub_source'").fetchone()[0]) == {
        "name": str(dataset_dir),
        "config": None,
        "split": "train",
        "max_rows": 500,
        "shard_rows": 120,
        "shard_mb": None,
    }
    con.close()

    out = run("agent", "add", str(ws), "domain", "--kind", "metadata", "--column", "meta.redpajama_set_name")
    assert "RedPajamaArXiv, RedPajamaC4, RedPajamaGithub, RedPajamaWikipedia" in out
    run("score", str(ws), "--workers", "1", "--quiet")
    out = run(
        "query", str(ws), "SELECT domain, count(*) AS n FROM doc_labels GROUP BY ALL", "--format", "json"
    )
    counts = {r["domain"]: r["n"] for r in map(json.loads, out.splitlines())}
    assert counts == dict(Counter(r["meta"]["redpajama_set_name"] for r in hub_rows[:500]))

    # The same arguments again: nothing streamed, nothing re-registered.
    out = run("init", str(ws), "--from-hub", str(dataset_dir), "--max-rows", "500", "--shard-rows", "120")
    assert "0 written now" in out and "registered 0 new shards (5 already known)" in out


def test_a_crash_mid_stream_resumes_after_the_last_complete_shard(tmp_path, dataset_dir, monkeypatch):
    args = ["--from-hub", str(dataset_dir), "--max-rows", "530", "--shard-rows", "100"]
    run("init", str(tmp_path / "clean"), *args)
    expected = [f.read_bytes() for f in shard_files(tmp_path / "clean")]
    assert len(expected) == 6

    commit = hub.commit_shard
    calls = []

    def crash_after_two(tmp: Path, final: Path) -> None:
        if len(calls) == 2:  # like kill -9 while the third shard is being written: its temp file stays
            raise SystemExit(137)
        calls.append(final)
        commit(tmp, final)

    monkeypatch.setattr(hub, "commit_shard", crash_after_two)
    ws = tmp_path / "ws"
    CliRunner().invoke(main, ["init", str(ws), *args])
    assert [f.name for f in shard_files(ws)] == ["shard-00000.parquet", "shard-00001.parquet"]
    assert list((ws / "corpus" / "slimpajama-sample").glob("*.tmp-*")), "the crashed shard's temp file"
    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM shards").fetchone() == (0,)  # registered only when complete
    con.close()

    monkeypatch.setattr(hub, "commit_shard", commit)
    rows_read = []
    skip = hub._arrow_batches

    def counting(stream, source):
        for table in skip(stream, source):
            rows_read.append(table.num_rows)
            yield table

    monkeypatch.setattr(hub, "_arrow_batches", counting)
    out = run("init", str(ws), *args)
    assert "330 written now, 2 shards from an earlier run" in out
    assert sum(rows_read) == 330  # the 200 rows of the complete shards were skipped, not rewritten
    assert [f.read_bytes() for f in shard_files(ws)] == expected
    assert not list((ws / "corpus").glob("*/*.tmp-*"))
    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    assert con.execute("SELECT count(*), sum(num_rows) FROM shards").fetchone() == (6, 530)
    assert con.execute("SELECT count(DISTINCT doc_id) FROM docs").fetchone() == (530,)
    con.close()


def test_shards_sized_in_megabytes(tmp_path, dataset_dir, monkeypatch):
    monkeypatch.setattr(hub, "ROW_GROUP_ROWS", 25)
    ws = tmp_path / "ws"
    run("init", str(ws), "--from-hub", str(dataset_dir), "--shard-mb", "0.04", "--quiet")
    files = shard_files(ws)
    sizes = [f.stat().st_size for f in files]
    assert len(files) > 2 and all(s >= 40_000 for s in sizes[:-1])
    assert all(s < 40_000 + 20_000 for s in sizes)  # closed at the first row group past the target
    assert sum(pq.read_metadata(f).num_rows for f in files) == 600
    assert {pq.read_metadata(f).row_group(0).num_rows for f in files} == {25}


def test_data_files_and_a_config_of_a_builder(tmp_path, hub_rows):
    data = tmp_path / "sample.parquet"
    pq.write_table(pa.Table.from_pylist(hub_rows[:90]), data)
    ws = tmp_path / "ws"
    out = run("init", str(ws), "--from-hub", str(data), "--shard-rows", "40", "--quiet")
    assert "registered 3 new shards" in out and "90 documents" in out
    assert (ws / "corpus" / "sample.parquet" / "shard-00002.parquet").exists()


def test_user_errors_are_one_line_and_do_not_pin_the_workspace(tmp_path, dataset_dir, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    ws = str(tmp_path / "ws")
    out = run("init", ws, "--from-hub", "nobody/no-such-dataset", code=2)
    assert "HF_DATASETS_OFFLINE" in out and "nobody/no-such-dataset" in out and len(out.splitlines()) == 1
    out = run("init", ws, "--from-hub", str(dataset_dir), "--split", "validation", code=2)
    assert "Bad split: validation" in out and "train" in out
    out = run("init", ws, "--from-hub", str(dataset_dir), "--text-column", "content", code=2)
    assert "no text column 'content'" in out and "text, meta" in out
    out = run("init", ws, "--from-hub", str(dataset_dir), "--corpus", "x.parquet", code=2)
    assert "either --corpus" in out
    out = run("init", ws, "--from-hub", str(dataset_dir), "--shard-rows", "5", "--shard-mb", "1", code=2)
    assert "not both" in out

    run("init", ws, "--from-hub", str(dataset_dir), "--max-rows", "50", "--shard-rows", "50", "--quiet")
    out = run("init", ws, "--from-hub", str(dataset_dir), "--max-rows", "60", "--shard-rows", "50", code=2)
    assert "was initialised from" in out and "--max-rows 50" in out


@pytest.mark.slow
def test_kill_9_while_streaming_then_rerun_gives_the_shards_of_an_uninterrupted_run(tmp_path, real_docs):
    import os
    import signal
    import subprocess
    import sys
    import time

    data = tmp_path / "big"
    data.mkdir()
    with (data / "train.jsonl").open("w", encoding="utf-8") as fh:
        for i in range(30_000):
            text, source = real_docs[i % len(real_docs)]
            fh.write(json.dumps({"text": text, "meta": {"redpajama_set_name": source, "row": i}}) + "\n")
    args = ["--from-hub", str(data), "--shard-rows", "1000", "--quiet"]
    run("init", str(tmp_path / "clean"), *args)
    expected = [f.read_bytes() for f in shard_files(tmp_path / "clean")]
    assert len(expected) == 30

    # The child commits five shards, then stalls inside the stream until it is killed: the kill lands
    # mid-stream on any machine, however fast, instead of racing the writer.
    child = (
        "import sys, time\n"
        "import corpus_agents.scoring.hub as hub\n"
        "from corpus_agents.cli import main\n"
        "commit, done = hub.commit_shard, []\n"
        "def commit_then_stall(tmp, final):\n"
        "    commit(tmp, final)\n"
        "    done.append(final)\n"
        "    if len(done) == 5:\n"
        "        time.sleep(3600)\n"
        "hub.commit_shard = commit_then_stall\n"
        "main(sys.argv[1:])\n"
    )
    ws = tmp_path / "ws"
    cmd = [sys.executable, "-c", child, "init", str(ws), *args]
    proc = subprocess.Popen(cmd, env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 120
    while len(shard_files(ws)) < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(shard_files(ws))
    assert written == 5, "the child stalls after its fifth shard and is killed there"
    out = run("init", str(ws), *args)
    assert f"{written} shards from an earlier run" in out
    assert [f.read_bytes() for f in shard_files(ws)] == expected
