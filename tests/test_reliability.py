"""Reliability and bad input (docs/architecture.md#guarantees): kill -9 and re-run, bad shards, odd
documents, a busy workspace, changed agents, idempotent registration. Everything goes through the real CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from corpus_agents.cli import main

CLI = [sys.executable, "-m", "corpus_agents.cli"]


def cli_env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("CORPUS_AGENTS_DEBUG", None)  # it prints tracebacks on purpose
    return env


def run_cli(*args: Any, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The real command in its own process."""
    return subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=cli_env()
    )


def invoke(*args: Any, expect: int | None = 0) -> Any:
    """The CLI in this process (fast); `expect` is the exit status it must end with (None: any)."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    if expect is not None:
        assert result.exit_code == expect, f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    return result


def setup_workspace(ws: Path, corpus: Path, model: Path) -> None:
    """A workspace over `corpus/*.parquet` with a fastText agent (P(code), binned) and a metadata agent."""
    invoke("init", ws, "--corpus", corpus / "*.parquet")
    invoke("agent", "add", ws, "quality", "--kind", "fasttext", "--model", model, "--label", "code")
    invoke("agent", "add", ws, "domain", "--kind", "metadata", "--column", "source")


def query(ws: Path, sql: str, params: list[Any] | None = None) -> list[tuple]:
    """Read the catalog of a workspace no process holds."""
    with duckdb.connect(str(ws / "catalog.duckdb"), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def catalog_state(ws: Path) -> dict[str, list[tuple]]:
    return {
        "scores": query(ws, "SELECT agent, doc_id, label, score FROM scores ORDER BY ALL"),
        "parts": query(
            ws, "SELECT agent, shard_id, fingerprint, num_rows, complete FROM score_parts ORDER BY ALL"
        ),
        "failures": query(ws, "SELECT agent, shard_id, error FROM part_failures ORDER BY ALL"),
    }


def assert_fully_scored(ws: Path) -> None:
    """Every document has exactly one row per agent, every part is committed complete, nothing failed."""
    total, distinct = query(ws, "SELECT count(*), count(DISTINCT (agent, doc_id)) FROM scores")[0]
    assert total == distinct, f"{total - distinct} duplicate score rows"
    missing = query(
        ws,
        "SELECT count(*) FROM docs d CROSS JOIN agents a "
        "WHERE NOT EXISTS (SELECT 1 FROM scores s WHERE s.agent = a.name AND s.doc_id = d.doc_id)",
    )[0][0]
    assert missing == 0, f"{missing} (agent, doc) pairs without a score"
    expected = query(ws, "SELECT (SELECT count(*) FROM docs) * (SELECT count(*) FROM agents)")[0][0]
    assert total == expected
    bad_parts = query(
        ws,
        "SELECT count(*) FROM (SELECT a.name, s.shard_id FROM agents a CROSS JOIN shards s) x "
        "LEFT JOIN score_parts p ON p.agent = x.name AND p.shard_id = x.shard_id "
        "WHERE p.agent IS NULL OR NOT p.complete",
    )[0][0]
    assert bad_parts == 0
    assert query(ws, "SELECT count(*) FROM part_failures")[0][0] == 0


def part_files(ws: Path) -> set[str]:
    """Files under the workspace's parts/ (os.walk: a running `score` may remove directories meanwhile)."""
    return {os.path.join(d, f) for d, _, files in os.walk(ws / "parts") for f in files}


def no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text


# ----- 1. kill -9 at random moments, then re-run ------------------------------------------------------


def group_alive(pgid: int) -> bool:
    """Whether a process (not a zombie) of this process group still runs."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def wait_group_gone(pgid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while group_alive(pgid):
        if time.monotonic() > deadline:
            os.killpg(pgid, signal.SIGKILL)
            raise AssertionError(f"worker processes of a killed run still alive after {timeout}s")
        time.sleep(0.1)


def start_score(ws: Path, log: Path, *extra: str) -> subprocess.Popen:
    """`score --workers 2` in its own process group (output to a file: orphaned workers keep it open)."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [*CLI, "score", str(ws), "--workers", "2", "--quiet", "--batch-rows", "128", *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=cli_env(),
            start_new_session=True,
        )


def timed_score(ws: Path, log: Path) -> tuple[float, float]:
    """Run `score` to the end: (seconds until its first part file appeared, seconds in all)."""
    started = time.monotonic()
    proc = start_score(ws, log)
    first = None
    while proc.poll() is None:
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
    """Pool worker processes of a `score` process (its children started by multiprocessing's spawn_main)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"spawn_main" in cmdline:
            pids.append(int(stat.parent.name))
    return sorted(pids)


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
    def hook(event, args):
        if event == "open" and args and str(args[0]) == crash_on and "spawn_main" in " ".join(sys.orig_argv):
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


# ----- 2. unreadable, truncated and missing shards -----------------------------------------------------


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


def corrupt_overwrite(path: Path) -> None:
    """Overwrite a third of the file in the middle: same size, same footer; the row-group hashes differ."""
    data = bytearray(path.read_bytes())
    n = len(data)
    data[n // 3 : 2 * n // 3] = b"\0" * (2 * n // 3 - n // 3)
    path.write_bytes(bytes(data))


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


# ----- 3. no text column, or a text column that is not a string -----------------------------------------


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


# ----- 4. null, empty, non-UTF-8, binary-looking and huge documents ---------------------------------------


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


# ----- 5. a second process on a busy workspace ----------------------------------------------------------

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


# ----- 6. a changed model file or config rescored that agent only -----------------------------------------


def parts_by_agent(ws: Path) -> dict[str, dict[int, tuple]]:
    out: dict[str, dict[int, tuple]] = {}
    for agent, shard_id, fingerprint, committed_at in query(
        ws, "SELECT agent, shard_id, fingerprint, committed_at FROM score_parts"
    ):
        out.setdefault(agent, {})[shard_id] = (fingerprint, committed_at)
    return out


def expected_code_probability(model_path: Path, shards: list[Path]) -> np.ndarray:
    """P(code) per document straight from the fastText library, in doc_id order (fastText's values can
    exceed 1 by 1e-5, which the agent clips: compare with atol 2e-5)."""
    from corpus_agents.scoring.agents.fasttext import load_fasttext

    model = load_fasttext(str(model_path))
    probs = []
    for shard in shards:
        texts = pq.read_table(shard, columns=["text"]).column("text").to_pylist()
        labels, p = model.predict([t.replace("\n", " ").replace("\r", " ") for t in texts], k=2)
        probs += [dict(zip(lab, pp))["__label__code"] for lab, pp in zip(labels, p)]
    return np.array(probs, dtype=np.float32)


def test_changed_model_or_config_rescores_that_agent_only(tmp_path, make_corpus, real_docs, fit_fasttext):
    corpus = tmp_path / "corpus"
    shards = make_corpus(corpus, num_shards=4, rows_per_shard=100)
    model = fit_fasttext(tmp_path / "models" / "ft.bin", real_docs[:1500])
    ws = tmp_path / "ws"
    setup_workspace(ws, corpus, model)
    first = invoke("score", ws, "--workers", "1", "--quiet")
    assert "committed 8 parts, 0 already done" in first.stdout
    before = parts_by_agent(ws)
    old_scores = np.array(query(ws, "SELECT score FROM scores WHERE agent = 'quality' ORDER BY doc_id"))[:, 0]
    np.testing.assert_allclose(old_scores, expected_code_probability(model, shards), atol=2e-5)

    # Same path, new content: a model that learnt the opposite (labels swapped).
    swap = {"code": "docs", "docs": "code"}
    fit_fasttext(model, [(t, swap[s]) for t, s in real_docs[:1500]])
    domain_only = invoke("score", ws, "--agents", "domain", "--workers", "1", "--quiet")
    assert "committed 0 parts, 4 already done, 0 failed" in domain_only.stdout
    assert parts_by_agent(ws) == before  # a run without the changed agent leaves its scores alone

    # A rescore that fails half-way (shard 2 unreadable) leaves no old score beside the new ones.
    original = shards[2].read_bytes()
    corrupt_overwrite(shards[2])
    broken = invoke("score", ws, "--workers", "1", "--quiet", expect=1)
    assert "committed 3 parts, 4 already done, 1 failed" in broken.stdout
    partly = query(ws, "SELECT doc_id, score FROM scores WHERE agent = 'quality' ORDER BY doc_id")
    assert [d for d, _ in partly] == [(s << 32) | r for s in (0, 1, 3) for r in range(100)]
    expected = expected_code_probability(model, [shards[0], shards[1], shards[3]])
    np.testing.assert_allclose(np.array([x for _, x in partly]), expected, atol=2e-5)
    assert query(ws, "SELECT count(*) FROM doc_labels WHERE shard_id = 2 AND quality IS NULL")[0][0] == 100
    shards[2].write_bytes(original)

    second = invoke("score", ws, "--workers", "1", "--quiet")
    assert "committed 1 parts, 7 already done, 0 failed" in second.stdout
    after = parts_by_agent(ws)
    assert after["domain"] == before["domain"]
    for s in range(4):
        assert after["quality"][s][0] != before["quality"][s][0]
        assert after["quality"][s][1] > before["quality"][s][1]
    assert_fully_scored(ws)
    new_scores = np.array(query(ws, "SELECT score FROM scores WHERE agent = 'quality' ORDER BY doc_id"))[:, 0]
    np.testing.assert_allclose(new_scores, expected_code_probability(model, shards), atol=2e-5)
    assert np.mean(np.abs(new_scores - old_scores)) > 0.3
    assert "committed 0 parts, 8 already done" in invoke("score", ws, "--workers", "1", "--quiet").stdout

    # Same model, new config: other bins.
    invoke(
        "agent", "add", ws, "quality", "--kind", "fasttext", "--model", model, "--label", "code",
        "--bins", "0,0.5,1", "--replace",
    )  # fmt: skip
    third = invoke("score", ws, "--workers", "1", "--quiet")
    assert "committed 4 parts, 4 already done, 0 failed" in third.stdout
    latest = parts_by_agent(ws)
    assert latest["domain"] == before["domain"]
    assert all(latest["quality"][s][0] != after["quality"][s][0] for s in range(4))
    assert_fully_scored(ws)
    assert query(ws, "SELECT label_id, name FROM agent_labels WHERE agent = 'quality' ORDER BY 1") == [
        (0, "0-0.5"),
        (1, "0.5-1"),
    ]
    wrong_bin = "SELECT count(*) FROM scores WHERE agent = 'quality' AND label <> (score >= 0.5)::INT"
    assert query(ws, wrong_bin)[0][0] == 0
    rescored = np.array(query(ws, "SELECT score FROM scores WHERE agent = 'quality' ORDER BY doc_id"))[:, 0]
    np.testing.assert_array_equal(rescored, new_scores)


# ----- 7. registration is idempotent; new shards get the next ids -------------------------------------------


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
