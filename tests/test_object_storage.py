"""Shards and score parts on fsspec URLs: file:// end to end, and S3 through a local moto server where moto and
s3fs are installed (init, agent add, score, query; parts written, published, reused and cleaned on the store)."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from corpus_agents.cli import main


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, (result.output, result.exception)
    return result.output


def rows(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def test_file_urls_for_shards_and_parts_end_to_end(tmp_path, make_corpus):
    make_corpus(tmp_path / "store" / "shards", 3, 40)
    parts = tmp_path / "store" / "parts"
    ws = str(tmp_path / "ws")
    out = run(
        "init", ws, "--corpus", f"file://{tmp_path}/store/shards/*.parquet", "--parts-url", f"file://{parts}/"
    )
    assert "workspace has 3 shards, 120 documents" in out
    run("agent", "add", ws, "domain", "--kind", "metadata", "--column", "source")
    run("agent", "add", ws, "topic", "--kind", "topic", "--topics", "3", "--sample", "100")
    out = run("score", ws, "--workers", "1", "--quiet")
    assert "committed 6 parts" in out

    written = sorted(p.relative_to(parts).as_posix() for p in parts.rglob("*.parquet"))
    assert (
        len(written) == 6 and written[0].startswith("domain/") and written[0].endswith("shard-000000.parquet")
    )
    assert not list((Path(ws) / "parts").rglob("*.parquet"))  # nothing in the workspace's own parts dir
    out = run("query", ws, "SELECT path FROM score_parts ORDER BY ALL", "--format", "json")
    assert all(r["path"].startswith(f"file://{parts}/") for r in rows(out))
    out = run(
        "query",
        ws,
        "SELECT domain, count(*) AS n, count(topic) AS t FROM doc_labels GROUP BY ALL ORDER BY ALL",
        "--format",
        "json",
    )
    assert rows(out) == [{"domain": "code", "n": 60, "t": 60}, {"domain": "docs", "n": 60, "t": 60}]
    out = run("query", ws, "SELECT count(*) AS n FROM documents WHERE length(text) > 0", "--format", "json")
    assert rows(out) == [{"n": 120}]

    # A crashed run's temp file and an orphan part are removed by the next run; committed parts are kept.
    stale = parts / "domain" / "stale.parquet.tmp-999"
    stale.write_bytes(b"partial")
    orphan = parts / "domain" / "orphan.parquet"
    orphan.write_bytes(b"PAR1")
    out = run("score", ws, "--workers", "1", "--quiet")
    assert "committed 0 parts, 6 already done" in out
    assert not stale.exists() and not orphan.exists() and len(list(parts.rglob("*.parquet"))) == 6

    # Removing an agent deletes its parts on the store; moving the parts elsewhere is refused once committed.
    run("agent", "remove", ws, "topic")
    assert len(list(parts.rglob("*.parquet"))) == 3
    out = run(
        "init", ws, "--corpus", f"file://{tmp_path}/store/shards", "--parts-url", str(tmp_path / "x"), code=2
    )
    assert "has committed parts under" in out


def test_a_part_left_renamed_but_uncommitted_is_reused(tmp_path, make_corpus, monkeypatch):
    """A crash between publishing a part on the store and committing it: the next run commits that object."""
    from corpus_agents.scoring import catalog

    make_corpus(tmp_path / "shards", 2, 30)
    parts = tmp_path / "parts"
    ws = str(tmp_path / "ws")
    run("init", ws, "--corpus", str(tmp_path / "shards"), "--parts-url", f"file://{parts}")
    run("agent", "add", ws, "domain", "--kind", "metadata", "--column", "source")

    def crash(*args, **kwargs):
        raise SystemExit(137)

    monkeypatch.setattr(catalog.Catalog, "commit_parts", crash)
    CliRunner().invoke(main, ["score", ws, "--workers", "1", "--quiet"])
    published = sorted(parts.rglob("*.parquet"))  # commits come in batches: both parts may be published
    assert len(published) >= 1
    before = [p.stat().st_mtime_ns for p in published]
    monkeypatch.undo()
    out = run("score", ws, "--workers", "1", "--quiet")
    assert "committed 2 parts" in out
    assert [p.stat().st_mtime_ns for p in published] == before  # committed as they were, not rescored
    out = run("query", ws, "SELECT count(domain) AS n FROM doc_labels", "--format", "json")
    assert rows(out) == [{"n": 60}]


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on a free local port (skipped where moto[server] or s3fs is not installed)."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """An s3fs filesystem on the moto server, with the environment set so that every client (ours, DuckDB's
    registered fsspec filesystem, spawned workers) reaches it."""
    import fsspec
    import s3fs

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": s3_endpoint,
        "FSSPEC_S3_ENDPOINT_URL": s3_endpoint,
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3_endpoint})
    s3fs.S3FileSystem.clear_instance_cache()
    fs = fsspec.filesystem("s3")
    if not fs.exists("bucket"):
        fs.mkdir("bucket")
    yield fs
    fs.rm("bucket", recursive=True)
    s3fs.S3FileSystem.clear_instance_cache()


def test_s3_shards_and_parts_through_a_local_moto_server(tmp_path, make_corpus, s3):
    for path in make_corpus(tmp_path / "shards", 2, 40):
        s3.put(str(path), f"bucket/corpus/{path.name}")
    ws = str(tmp_path / "ws")
    out = run("init", ws, "--corpus", "s3://bucket/corpus/*.parquet", "--parts-url", "s3://bucket/parts")
    assert "workspace has 2 shards, 80 documents" in out
    run("agent", "add", ws, "domain", "--kind", "metadata", "--column", "source")
    out = run("score", ws, "--workers", "1", "--quiet")
    assert "committed 2 parts, 0 already done, 0 failed" in out

    s3.invalidate_cache()
    keys = sorted(s3.find("bucket/parts"))
    assert len(keys) == 2 and all(k.endswith(".parquet") for k in keys)  # published, no temp keys left
    out = run("query", ws, "SELECT path FROM score_parts ORDER BY ALL", "--format", "json")
    assert [r["path"] for r in rows(out)] == [f"s3://{k}" for k in keys]
    out = run(
        "query",
        ws,
        "SELECT domain, count(*) AS n FROM doc_labels GROUP BY ALL ORDER BY ALL",
        "--format",
        "json",
    )
    assert rows(out) == [{"domain": "code", "n": 40}, {"domain": "docs", "n": 40}]
    out = run("query", ws, "SELECT count(*) AS n FROM documents WHERE length(text) > 0", "--format", "json")
    assert rows(out) == [{"n": 80}]

    s3.pipe("bucket/parts/domain/x.parquet.tmp-1", b"partial")  # a crashed worker's temp key
    out = run("score", ws, "--workers", "1", "--quiet")
    assert "committed 0 parts, 2 already done" in out
    s3.invalidate_cache()
    assert sorted(s3.find("bucket/parts")) == keys

    # Worker processes (spawned, so they build their own S3 clients) write parts to the store as well.
    run("agent", "add", ws, "domain2", "--kind", "metadata", "--column", "source")
    out = run("score", ws, "--workers", "2", "--quiet")
    assert "committed 2 parts, 2 already done, 0 failed" in out
    s3.invalidate_cache()
    assert len(s3.find("bucket/parts/domain2")) == 2
    con = duckdb.connect(str(Path(ws) / "catalog.duckdb"), read_only=True)
    assert con.execute("SELECT agent, count(*) FROM scores GROUP BY ALL ORDER BY ALL").fetchall() == [
        ("domain", 80),
        ("domain2", 80),
    ]
    con.close()
