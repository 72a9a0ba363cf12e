"""kill -9 (docs/architecture.md#guarantees): `score` killed at random moments then re-run, a killed or
crashing pool worker, `init` killed while it creates the catalog or registers shards. Through the real CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    CLI,
    assert_fully_scored,
    catalog_state,
    cli_env,
    invoke,
    no_traceback,
    part_files,
    query,
    run_cli,
    setup_workspace,
    start_score,
    wait_group_gone,
)


def timed_score(ws: Path, log: Path, timeout: float = 300) -> tuple[float, float]:
    """Run `score` to the end: (seconds until its first part file appeared, seconds in all)."""
    started = time.monotonic()
    proc = start_score(ws, log)
    first = None
    while proc.poll() is None:
        if time.monotonic() > started + timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"score did not finish in {timeout}s:\n{log.read_text()}")
        if first is None and part_files(ws):
            first = time.monotonic() - started
        time.sleep(0.005)
    total = time.monotonic() - started
    assert proc.wait() == 0, log.read_text()
    return (first or total), total


def kill_and_rerun(ws: Path, tmp: Path, rng: np.random.Generator, kills: int, startup: float) -> list[str]:
    """Start `score` and kill -9 it, up to `kills` times; then finish with a run that must succeed.

    Kills 0, 3, 6, ... wait for a random number (1-8) of new part files, then up to 0.3 s more: mid-scoring.
    Kills 1, 4, 7, ... do the same with up to 30 ms: around a part's rename and commit. Kills 2, 5, 8, ...
    land at a random moment of the start-up (before a clean run's first part file: imports, lock, clean-up
    of stale files, planning, pool start). Odd kills hit only the main process (its pool workers are
    orphaned and may still write files while the next run starts); even kills hit the whole process group.
    """
    events, groups = [], []
    try:
        for i in range(kills):
            log = tmp / f"run-{i}.log"
            before = part_files(ws)
            started = time.monotonic()
            proc = start_score(ws, log)
            groups.append(proc.pid)
            if i % 3 == 2:
                delay = float(rng.uniform(0.3, 1.0)) * startup
            else:
                target = int(rng.integers(1, 9))
                deadline = started + 120
                while len(part_files(ws) - before) < target and proc.poll() is None:
                    assert time.monotonic() < deadline, "no progress"
                    time.sleep(0.002)
                delay = time.monotonic() - started + float(rng.uniform(0, 0.3 if i % 3 == 0 else 0.03))
            try:
                rc = proc.wait(timeout=max(0.0, delay - (time.monotonic() - started)))
            except subprocess.TimeoutExpired:
                if i % 2:
                    os.kill(proc.pid, signal.SIGKILL)
                else:
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                events.append(f"killed after {delay:.2f}s")
                continue
            output = log.read_text()
            assert rc == 0, f"run {i} after a kill failed (exit {rc}):\n{output}"
            no_traceback(output)
            events.append("finished before the kill")
            break  # nothing left to interrupt
        while groups:
            wait_group_gone(groups[0])
            groups.pop(0)
        final = run_cli("score", ws, "--workers", "2", "--quiet")
        assert final.returncode == 0, final.stdout + final.stderr
        no_traceback(final.stdout, final.stderr)
        events.append(final.stdout.strip().split(";")[0])
        return events
    finally:
        for pgid in groups:  # only on failure: processes of ours that may still run
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def check_kills(
    tmp_path: Path, make_corpus, fasttext_model: Path, seed: int, kills: int, num_shards: int = 8
) -> None:
    corpus = tmp_path / "corpus"
    make_corpus(corpus, num_shards=num_shards, rows_per_shard=600, row_group_rows=150)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    setup_workspace(clean, corpus, fasttext_model)
    setup_workspace(killed, corpus, fasttext_model)

    first_part, duration = timed_score(clean, tmp_path / "clean.log")
    assert (
        f"committed {2 * num_shards} parts, 0 already done, 0 failed" in (tmp_path / "clean.log").read_text()
    )
    assert_fully_scored(clean)

    rng = np.random.default_rng(seed)
    events = kill_and_rerun(killed, tmp_path, rng, kills, first_part)
    print(f"kill -9 (clean run: first part after {first_part:.2f}s, done after {duration:.2f}s):", events)
    assert events[0].startswith("killed"), events  # the first kill waits for progress: it always lands

    assert_fully_scored(killed)
    want, got = catalog_state(clean), catalog_state(killed)
    assert got["parts"] == want["parts"]
    assert got["scores"] == want["scores"]
    assert got["failures"] == want["failures"] == []
    committed = {str(killed / r[0]) for r in query(killed, "SELECT path FROM score_parts")}  # relative to it
    assert part_files(killed) == committed, "temporary or orphaned part files left behind"
    assert query(killed, "SELECT count(*) FROM docs")[0][0] == num_shards * 600


def test_kill_9_score_then_rerun_matches_clean_run(tmp_path, make_corpus, fasttext_model):
    check_kills(tmp_path, make_corpus, fasttext_model, seed=1, kills=3)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3, 4, 5])
def test_kill_9_score_many_times(tmp_path, make_corpus, fasttext_model, seed):
    check_kills(tmp_path, make_corpus, fasttext_model, seed=seed, kills=12, num_shards=24)


def worker_pids(pid: int) -> list[int]:
    """Pool worker processes of a `score` process: the children of its fork server (or, where workers are
    spawned, its children started by multiprocessing's spawn_main)."""
    procs: dict[int, tuple[int, bytes]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            procs[int(stat.parent.name)] = ppid, (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
    servers = {p for p, (ppid, cmd) in procs.items() if ppid == pid and b"forkserver" in cmd}
    return sorted(
        p for p, (ppid, cmd) in procs.items() if ppid in servers or (ppid == pid and b"spawn_main" in cmd)
    )


def test_a_killed_worker_does_not_fail_the_run(tmp_path, make_corpus, fasttext_model):
    """A worker killed mid-shard (the OOM killer, a user): its shard and those queued are scored anyway."""
    corpus = tmp_path / "corpus"
    make_corpus(corpus, num_shards=8, rows_per_shard=600, row_group_rows=150)
    ws = tmp_path / "ws"
    setup_workspace(ws, corpus, fasttext_model)
    log = tmp_path / "score.log"
    proc = start_score(ws, log)
    try:
        deadline = time.monotonic() + 120
        while not part_files(ws) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        workers = worker_pids(proc.pid)
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = log.read_text()
    no_traceback(output)
    assert rc == 0, output
    assert "committed 16 parts, 0 already done, 0 failed" in output
    assert_fully_scored(ws)


CRASH_ON_OPEN = """
import os, sys
crash_on = os.environ.get("CORPUS_AGENTS_TEST_CRASH_ON")
if crash_on:  # fault injection: die like a segfault when a worker process opens this file
    argv = " ".join(sys.orig_argv)
    worker = "spawn_main" in argv or "forkserver" in argv  # a spawned worker, or the server it forks from
    def hook(event, args):
        if event == "open" and args and str(args[0]) == crash_on and worker:
            os._exit(139)
    sys.addaudithook(hook)
"""


def test_a_shard_that_crashes_its_worker_fails_alone(tmp_path, make_corpus, fasttext_model):
    """A shard whose scoring kills the worker process fails with a one-line reason; the others commit."""
    corpus = tmp_path / "corpus"
    shards = make_corpus(corpus, num_shards=6, rows_per_shard=100)
    ws = tmp_path / "ws"
    setup_workspace(ws, corpus, fasttext_model)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(CRASH_ON_OPEN)
    env = {**cli_env(), "PYTHONPATH": str(hooks), "CORPUS_AGENTS_TEST_CRASH_ON": str(shards[1])}
    result = subprocess.run(
        [*CLI, "score", str(ws), "--workers", "2", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    no_traceback(result.stdout, result.stderr)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "committed 10 parts, 0 already done, 2 failed" in result.stdout
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 2, result.stderr
    for line in failed:
        assert line.startswith(f"failed: shard {shards[1]}: worker process died while scoring this shard")
    assert query(ws, "SELECT DISTINCT shard_id FROM part_failures") == [(1,)]
    rerun = invoke("score", ws, "--workers", "2", "--quiet")
    assert "committed 2 parts, 10 already done, 0 failed" in rerun.stdout
    assert_fully_scored(ws)


DIE_CREATING_CATALOG = """
import os, sys, duckdb
def connect(path, *args, **kwargs):  # as if killed after DuckDB created the file, before its headers
    open(path, "wb").close()
    os.kill(os.getpid(), 9)
duckdb.connect = connect
from corpus_agents.cli import main
main(sys.argv[1:])
"""


def test_kill_9_while_the_catalog_file_is_created(tmp_path, make_corpus):
    corpus = tmp_path / "corpus"
    make_corpus(corpus, num_shards=2, rows_per_shard=20)
    ws = tmp_path / "ws"
    args = ["init", str(ws), "--corpus", str(corpus / "*.parquet")]
    died = subprocess.run(
        [sys.executable, "-c", DIE_CREATING_CATALOG, *args], capture_output=True, env=cli_env()
    )
    assert died.returncode == -signal.SIGKILL
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "registered 2 new shards" in result.stdout
    assert not list(ws.glob("catalog.duckdb.*")), list(ws.iterdir())


@pytest.mark.slow
def test_kill_9_init_then_rerun_registers_every_shard_once(tmp_path, make_corpus):
    corpus = tmp_path / "corpus"
    make_corpus(corpus, num_shards=24, rows_per_shard=400)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    started = time.monotonic()
    result = run_cli("init", clean, "--corpus", corpus / "*.parquet")
    duration = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    rng = np.random.default_rng(5)
    events = []
    for _ in range(8):
        proc = subprocess.Popen(
            [*CLI, "init", str(killed), "--corpus", str(corpus / "*.parquet")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=cli_env(),
        )
        delay = float(rng.uniform(0.1, duration))
        try:
            assert proc.wait(timeout=delay) == 0
            events.append("finished")
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            events.append(f"killed after {delay:.2f}s")
    print("kill -9 init:", events)
    result = run_cli("init", killed, "--corpus", corpus / "*.parquet")
    assert result.returncode == 0, result.stderr
    shards = "SELECT shard_id, uri, num_rows, fingerprint, row_group_rows FROM shards ORDER BY ALL"
    assert query(killed, shards) == query(clean, shards)
    docs = "SELECT doc_id, shard_id, row_idx, row_group, text_bytes, text_null FROM docs ORDER BY ALL"
    assert query(killed, docs) == query(clean, docs)
