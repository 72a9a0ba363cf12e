"""Looking while working: `query` is read-only, and query/status/runs read the catalog while `score` or
`train` runs in another process, each within a bounded wait."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from corpus_agents.errors import WorkspaceBusyError
from corpus_agents.scoring.catalog import Catalog
from tests.helpers import CLI, cli_env, invoke, make_workspace, no_traceback, run_cli


def scores_count(ws: Path) -> int:
    with Catalog(ws, read_only=True) as cat:
        return cat.execute("SELECT count(*) FROM scores")[0][0]


@pytest.mark.parametrize(
    ("sql", "refused"),
    [
        ("DELETE FROM scores WHERE agent = 'domain'", "DELETE"),
        ("DROP TABLE scores", "DROP"),
        ("COPY scores TO '{ws}/parts/stolen.csv'", "COPY"),
        ("ATTACH '{ws}/other.duckdb' AS other", "ATTACH"),
        ("INSTALL httpfs", "INSTALL"),
        ("UPDATE scores SET label = NULL", "UPDATE"),
    ],
)
def test_query_refuses_statements_that_change_anything(tmp_path: Path, sql: str, refused: str) -> None:
    ws = make_workspace(tmp_path, shards=1, rows=20, agents=["domain"])
    invoke("score", ws, "--workers", "1", "--quiet")
    before = scores_count(ws)
    result = invoke("query", ws, sql.format(ws=ws), expect=2)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: query is read-only: "), result.output
    assert refused in lines[0]
    no_traceback(result.output)
    assert scores_count(ws) == before
    assert not (ws / "parts" / "stolen.csv").exists() and not (ws / "other.duckdb").exists()


def test_the_sandbox_stops_file_access_that_a_select_tries(tmp_path: Path) -> None:
    """Beyond the statement check: DuckDB's own settings refuse files outside the shards and parts, and
    the settings are locked."""
    ws = make_workspace(tmp_path, shards=1, rows=20, agents=["domain"])
    outside = tmp_path / "secret.csv"
    outside.write_text("a\n1\n")
    result = invoke("query", ws, f"SELECT * FROM read_csv('{outside}')", expect=2)
    assert "disabled by configuration" in result.output
    # Reading the shards still works: the documents view reads them.
    assert "document 0" in invoke("query", ws, "SELECT text FROM documents WHERE row_idx = 0").output


def test_query_writable_repairs_and_status_names_the_damage(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, shards=2, rows=20, agents=["domain"])
    invoke("score", ws, "--workers", "1", "--quiet")
    invoke("query", ws, "DELETE FROM scores WHERE doc_id < (1::BIGINT << 32)", "--writable")
    assert scores_count(ws) == 20
    with Catalog(ws):  # a writer holds the workspace: --writable is refused at once
        result = invoke("query", ws, "SELECT 1", "--writable", expect=2)
    assert "in use by" in result.output
    status = invoke("status", ws).output
    assert "inconsistent domain shard 0: 0 rows of scores for a part of 20 documents" in status
    assert "inconsistent domain shard 1" not in status
    assert "committed 1 parts, 1 already done" in invoke("score", ws, "--workers", "1", "--quiet").output
    assert scores_count(ws) == 40 and "inconsistent" not in invoke("status", ws).output


def test_status_names_a_deleted_part_file_and_score_rescores_it(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, shards=2, rows=20, agents=["domain"])
    invoke("score", ws, "--workers", "1", "--quiet")
    with Catalog(ws, read_only=True) as cat:
        path = Path(cat.parts()["domain", 1].path)
    path.unlink()
    shown = "".join(invoke("status", ws).output.split())  # a long path may wrap
    assert "".join(f"inconsistent domain shard 1: its part file is missing ({path})".split()) in shown
    assert "committed 1 parts, 1 already done" in invoke("score", ws, "--workers", "1", "--quiet").output
    assert path.exists() and scores_count(ws) == 40 and "inconsistent" not in invoke("status", ws).output


def test_a_reader_waits_for_the_writer_then_gives_up_with_one_line(tmp_path: Path, monkeypatch) -> None:
    ws = make_workspace(tmp_path, shards=1, rows=10, agents=["domain"])
    holder = subprocess.Popen(
        [
            *CLI[:1],
            "-c",
            "import sys, time; from corpus_agents.scoring.catalog import Catalog\n"
            "c = Catalog(sys.argv[1], command='holder'); c.parts(); print('held', flush=True); time.sleep(60)",
            str(ws),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr("corpus_agents.scoring.catalog.READ_WAIT_S", 0.3)
        started = time.monotonic()
        with pytest.raises(WorkspaceBusyError, match=r"in use by pid \d+ \(holder"):
            Catalog(ws, read_only=True)
        assert time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.wait()


def _read_all(ws: Path) -> float:
    """Open the catalog read-only, read what `status` and `runs` read, close; the wall seconds it took."""
    started = time.perf_counter()
    with Catalog(ws, read_only=True) as cat:
        cat.run("catalog.sql", "status_agents")
        cat.query("SELECT count(*) FROM doc_labels")
    return time.perf_counter() - started


def _reads_while_running(proc: subprocess.Popen, ws: Path, commands: list[tuple[str, ...]]) -> dict:
    """Read the catalog (in this process, and through the CLI) until `proc` ends; the wall seconds taken."""
    waits, cli, scored = [], {}, []
    while proc.poll() is None:
        try:
            waits.append(_read_all(ws))
            scored.append(scores_count(ws))
        except WorkspaceBusyError:  # the run is still creating its catalog
            pass
        for args in commands:
            if args[0] not in cli and proc.poll() is None:
                started = time.perf_counter()
                result = run_cli(*args, timeout=120)
                cli[args[0]] = (
                    result.returncode,
                    time.perf_counter() - started,
                    result.stdout + result.stderr,
                )
        time.sleep(0.05)
    return {"waits": waits, "cli": cli, "scored": scored}


@pytest.mark.slow
def test_query_status_and_runs_work_while_score_runs(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, shards=300, rows=30, agents=["domain", "origin"])
    proc = subprocess.Popen(
        [*CLI, "score", str(ws), "--workers", "1", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cli_env(),
    )
    seen = _reads_while_running(proc, ws, [("status", ws), ("query", ws, "SELECT count(*) FROM scores")])
    assert proc.returncode == 0, proc.stdout.read()
    for name, (code, _, output) in seen["cli"].items():
        assert code == 0, (name, output)
    assert len(seen["waits"]) >= 3 and max(seen["waits"]) < 5, seen["waits"]
    # The reads saw the run's commits arrive, and the last one everything.
    assert any(0 < n < 300 * 30 * 2 for n in seen["scored"]), seen["scored"]
    assert scores_count(ws) == 300 * 30 * 2
    print(f"score: {len(seen['waits'])} reads, max {max(seen['waits']):.3f}s, cli {seen['cli']}")


def _part_scores(ws: Path) -> list[tuple]:
    """Every committed part's rows as a part-file reader sees them: from its file, the rows of its shard."""
    import pyarrow.parquet as pq

    with Catalog(ws, read_only=True) as cat:
        parts = cat.parts()
    rows = []
    for (agent, shard_id), part in sorted(parts.items()):
        table = pq.read_table(part.path).to_pylist()
        rows += [(agent, r["doc_id"], r["label"], r["score"]) for r in table if r["doc_id"] >> 32 == shard_id]
    return rows


def test_compaction_keeps_every_result_and_finishes_after_a_kill(tmp_path: Path, monkeypatch) -> None:
    from corpus_agents.scoring import compaction

    ws = make_workspace(tmp_path, shards=12, rows=10, agents=["domain", "origin"])
    invoke("score", ws, "--workers", "1", "--quiet")
    sql = "SELECT domain, origin, count(*), sum(domain_score) FROM doc_labels GROUP BY ALL ORDER BY ALL"
    before = invoke("query", ws, sql, "--format", "csv").output
    parts_before = _part_scores(ws)

    # Killed after the compacted file is written, before the catalog names it: nothing changes.
    real = Catalog.repoint_parts
    monkeypatch.setattr(Catalog, "repoint_parts", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt), Catalog(ws) as cat:
        compaction.compact_parts(cat, ["domain"], target_rows=50)
    assert _part_scores(ws) == parts_before
    # Killed after the catalog names it, before the old files go: they are left over, results unchanged.
    monkeypatch.setattr(Catalog, "repoint_parts", real)
    monkeypatch.setattr(compaction.storage, "remove_if_exists", lambda path: None)
    with Catalog(ws) as cat:
        compaction.compact_parts(cat, ["domain"], target_rows=50)
    assert _part_scores(ws) == parts_before
    monkeypatch.undo()

    result = invoke("compact", ws, "--target-rows", "50").output
    assert "removed" in result
    files = sorted(p.name for p in (ws / "parts").rglob("*.parquet"))
    # 12 parts of 10 documents per agent in files of at most 50: 3 files each, nothing else left.
    assert len(files) == 6 and all(f.startswith("compact-") for f in files), files
    assert invoke("query", ws, sql, "--format", "csv").output == before
    assert _part_scores(ws) == parts_before
    assert "inconsistent" not in invoke("status", ws).output
    assert "0 parts into 0 files" in invoke("compact", ws, "--target-rows", "50").output
    assert "committed 0 parts, 24 already done" in invoke("score", ws, "--workers", "1", "--quiet").output
