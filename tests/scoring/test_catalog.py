"""The catalog (corpus_agents/scoring/catalog.py): a busy workspace names the process that holds it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from helpers import CLI, assert_fully_scored, cli_env, invoke, no_traceback, run_cli, setup_workspace

HOLDER = """
import sys, time
from corpus_agents.scoring.catalog import Catalog
cat = Catalog(sys.argv[1], command="holder-test --sleeping")
print("holding", flush=True)
time.sleep(120)
"""


def assert_busy_message(result: subprocess.CompletedProcess[str], pid: int, command: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    no_traceback(result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: workspace ") and "in use" in lines[0], lines[0]
    assert f"pid {pid} " in lines[0] and command in lines[0], lines[0]


def test_busy_workspace_names_the_holder(tmp_path, make_corpus):
    corpus = tmp_path / "corpus"
    make_corpus(corpus, num_shards=1, rows_per_shard=20)
    ws = tmp_path / "ws"
    invoke("init", ws, "--corpus", corpus / "*.parquet")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(ws)], stdout=subprocess.PIPE, text=True, env=cli_env()
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
    """A `score` stuck reading a shard (here: a FIFO nobody writes) holds the workspace; others are told so."""
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
        assert_busy_message(run_cli("status", ws), proc.pid, f"corpus-agents score {ws}")
    finally:
        proc.kill()
        proc.wait()
    shard.unlink()
    shard.write_bytes(saved)
    result = invoke("score", ws, "--workers", "1", "--quiet")
    assert "committed 2 parts, 0 already done, 0 failed" in result.stdout
    assert_fully_scored(ws)
