"""The catalog (corpus_agents/scoring/catalog.py) on real DuckDB files: the workspace lock names its holder
(in this process and across processes through the CLI), creation is atomic, `transaction`, `registered` and
`run` keep their promises, and a catalog made before the per-part stage times gains their columns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import duckdb
import pyarrow as pa
import pytest
from helpers import (
    CLI,
    assert_fully_scored,
    cli_env,
    commit_tasks,
    invoke,
    make_workspace,
    no_traceback,
    run_cli,
    setup_workspace,
)

from corpus_agents.errors import WorkspaceBusyError, WorkspaceError
from corpus_agents.scoring import catalog as catalog_module
from corpus_agents.scoring.catalog import CATALOG_FILE, LOCK_FILE, Catalog
from corpus_agents.scoring.driver import plan_tasks

STAGES = ("read_s", "decode_s", "score_s", "write_s")


def test_a_second_writer_is_told_who_holds_the_workspace(tmp_path):
    ws = tmp_path / "ws"
    holder = Catalog(ws, create=True, command="holder --test")
    try:
        record = json.loads((ws / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["command"] == "holder --test"
        with pytest.raises(
            WorkspaceBusyError
        ) as busy:  # flock: a second open file conflicts, same process too
            Catalog(ws, command="second")
        message = str(busy.value)
        assert message.startswith(
            f"workspace {ws.resolve()} is in use by pid {os.getpid()} (holder --test, since "
        )
    finally:
        holder.close()
    assert (ws / LOCK_FILE).read_text() == ""  # released: the holder's record goes with the lock
    with Catalog(ws, command="second"):
        assert json.loads((ws / LOCK_FILE).read_text())["command"] == "second"


def test_a_directory_that_is_not_a_workspace_is_not_made_one(tmp_path):
    with pytest.raises(WorkspaceError, match="is not a workspace"):
        Catalog(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


def test_creating_the_catalog_file_is_all_or_nothing(tmp_path, monkeypatch):
    """DuckDB failing half-way through writing a new file leaves no catalog.duckdb (a later open would fail
    on it) and no temporary file, and releases the lock; a stale temporary file of a creation killed in
    another process is removed by the next creation."""
    ws = tmp_path / "ws"
    real_connect = duckdb.connect

    def fail_while_creating(path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"DUCK")  # a file started, its headers never finished
        raise duckdb.IOException("disk full")

    monkeypatch.setattr(catalog_module.duckdb, "connect", fail_while_creating)
    with pytest.raises(WorkspaceError, match="cannot open .*catalog.duckdb: .*disk full"):
        Catalog(ws, create=True)
    assert not (ws / CATALOG_FILE).exists()
    assert not list(ws.glob(f".{CATALOG_FILE}.tmp-*"))
    monkeypatch.setattr(catalog_module.duckdb, "connect", real_connect)

    stale = ws / f".{CATALOG_FILE}.tmp-999999"
    stale.write_bytes(b"half a header")
    with Catalog(ws, create=True) as cat:  # the lock was released
        assert cat.get_meta("schema_version") == catalog_module.SCHEMA_VERSION
    assert not list(ws.glob(f".{CATALOG_FILE}.tmp-*"))


def test_transaction_commits_or_rolls_back_the_whole_body(tmp_path):
    ws = tmp_path / "ws"
    with Catalog(ws, create=True) as cat:
        cat.execute("CREATE TABLE t (x INTEGER)")
        with cat.transaction():
            cat.execute("INSERT INTO t VALUES (1)")
            cat.execute("INSERT INTO t VALUES (2)")
        for error in (ValueError("in the body"), KeyboardInterrupt()):
            with pytest.raises(type(error)):
                with cat.transaction():
                    cat.execute("INSERT INTO t VALUES (3)")
                    assert cat.execute("SELECT count(*) FROM t") == [(3,)]  # visible inside
                    raise error
            assert cat.execute("SELECT x FROM t ORDER BY x") == [(1,), (2,)]
        with cat.transaction():  # the connection is not left inside a transaction
            cat.execute("INSERT INTO t VALUES (4)")
    with Catalog(ws) as cat:
        assert cat.execute("SELECT x FROM t ORDER BY x") == [(1,), (2,), (4,)]


def test_a_registered_table_is_visible_only_inside_the_block(tmp_path):
    with Catalog(tmp_path / "ws", create=True) as cat:
        table = pa.table({"x": [1, 2, 3]})
        with cat.registered("incoming", table):
            assert cat.execute("SELECT sum(x) FROM incoming") == [(6,)]
        with pytest.raises(duckdb.CatalogException, match="incoming"):
            cat.execute("SELECT sum(x) FROM incoming")
        with pytest.raises(RuntimeError), cat.registered("incoming", table):
            raise RuntimeError("the body failed")
        with pytest.raises(duckdb.CatalogException, match="incoming"):
            cat.execute("SELECT sum(x) FROM incoming")


def test_run_binds_each_statement_the_parameters_it_uses(tmp_path):
    with Catalog(tmp_path / "ws", create=True) as cat:
        value = "it's; DROP TABLE meta; --"  # bound, never spliced into the SQL
        assert cat.run("catalog.sql", "set_meta", key="note", value=value) == [(1,)]  # rows changed
        assert cat.run("catalog.sql", "get_meta", key="note") == [(value,)]
        # Two statements: `agent` in each, `kind`, `config` and `added_at` in the first, `labels` in the second.
        rows = cat.run(
            "catalog.sql",
            "insert_agent",
            agent="a",
            kind="metadata",
            config="{}",
            labels=["x", "y"],
            added_at=None,
        )
        assert rows == [(2,)]  # the last statement's rows: DuckDB's count of inserted rows
        assert cat.execute("SELECT agent, label_id, name FROM agent_labels ORDER BY 2") == [
            ("a", 0, "x"),
            ("a", 1, "y"),
        ]
        assert cat.run("catalog.sql", "agent_exists", agent="a", unused="ignored") == [(1,)]
        with pytest.raises(KeyError, match="agent"):
            cat.run("catalog.sql", "agent_exists")


def test_a_workspace_made_before_stage_times_opens_and_gains_them(tmp_path):
    with Catalog(make_workspace(tmp_path, 3, 40, ["a"])) as catalog:
        tasks, _ = plan_tasks(catalog, catalog.agents(["a"]))
        commit_tasks(catalog, tasks[:1])
    with duckdb.connect(str(tmp_path / "ws" / CATALOG_FILE)) as con:  # the manifest as it was before
        for stage in STAGES:
            con.execute(f"ALTER TABLE score_parts DROP COLUMN {stage}")
    with Catalog(tmp_path / "ws") as cat:
        old = cat.parts()[("a", 0)]
        assert old.num_rows == 40 and [getattr(old, s) for s in STAGES] == [None] * 4
        commit_tasks(cat, plan_tasks(cat, cat.agents(["a"]))[0])
        assert cat.parts()[("a", 2)].score_s > 0


# ----- a second process on a busy workspace, through the CLI ---------------------------------------------

# Holds the workspace until it is killed (it blocks reading a pipe the test never writes to).
HOLDER = """
import sys
from corpus_agents.scoring.catalog import Catalog
cat = Catalog(sys.argv[1], command="holder-test --sleeping")
print("holding", flush=True)
sys.stdin.read()
"""


def assert_busy_message(result: subprocess.CompletedProcess[str], pid: int, command: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    no_traceback(result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: workspace ") and "in use" in lines[0], lines[0]
    assert f"pid {pid} " in lines[0] and command in lines[0], lines[0]


@pytest.mark.slow  # in .ci/run's slow line; keeps the default run under 5 minutes
def test_busy_workspace_names_the_holder(tmp_path, make_corpus):
    corpus = tmp_path / "corpus"
    make_corpus(corpus, num_shards=1, rows_per_shard=20)
    ws = tmp_path / "ws"
    invoke("init", ws, "--corpus", corpus / "*.parquet")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(ws)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        assert_busy_message(run_cli("status", ws), holder.pid, "holder-test --sleeping")
        assert_busy_message(run_cli("score", ws, "--quiet"), holder.pid, "holder-test --sleeping")
        assert_busy_message(run_cli("init", ws, "--corpus", corpus / "*.parquet"), holder.pid, "holder-test")
    finally:
        holder.kill()
        holder.wait()
    # kill -9 releases the lock with the process
    after = run_cli("status", ws)
    assert after.returncode == 0, after.stderr
    assert "1 shards, 20 documents" in " ".join(after.stdout.split())


def test_busy_workspace_during_a_hung_score(tmp_path, make_corpus, fasttext_model):
    """A `score` stuck reading a shard (here: a FIFO nobody writes) holds the workspace: another writer is
    told so, while `status` reads the catalog (the stuck run does not hold its DuckDB connection)."""
    corpus = tmp_path / "corpus"
    (shard,) = make_corpus(corpus, num_shards=1, rows_per_shard=20)
    ws = tmp_path / "ws"
    setup_workspace(ws, corpus, fasttext_model)
    saved = shard.read_bytes()
    shard.unlink()
    os.mkfifo(shard)
    proc = subprocess.Popen(
        [*CLI, "score", str(ws), "--workers", "1", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cli_env(),
    )
    try:
        lock = ws / "catalog.lock"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = lock.read_text() if lock.exists() else ""
            if text and json.loads(text)["pid"] == proc.pid:
                break
            assert proc.poll() is None, "score exited instead of blocking on the FIFO"
            time.sleep(0.05)
        else:
            raise AssertionError("score never took the workspace lock")
        assert_busy_message(run_cli("score", ws, "--quiet"), proc.pid, f"corpus-agents score {ws}")
        status = run_cli("status", ws)
        assert status.returncode == 0 and "1 shards, 20 documents" in " ".join(status.stdout.split())
    finally:
        proc.kill()
        proc.wait()
    shard.unlink()
    shard.write_bytes(saved)
    result = invoke("score", ws, "--workers", "1", "--quiet")
    assert "committed 2 parts, 0 already done, 0 failed" in result.stdout
    assert_fully_scored(ws)


def test_memory_capped_lowers_duckdbs_limit_for_the_block_only(tmp_path):
    with Catalog(tmp_path / "ws", create=True) as cat:
        before = cat.execute("SELECT current_setting('memory_limit')")[0][0]
        with cat.memory_capped(256 * 2**20):
            assert cat.execute("SELECT current_setting('memory_limit')")[0][0] == "256.0 MiB"
            with cat.memory_capped(2**40):  # never raised
                assert cat.execute("SELECT current_setting('memory_limit')")[0][0] == "256.0 MiB"
        assert cat.execute("SELECT current_setting('memory_limit')")[0][0] == before
        for _ in range(3):  # given back as it was, call after call
            with cat.memory_capped(256 * 2**20):
                pass
        assert cat.execute("SELECT current_setting('memory_limit')")[0][0] == before
