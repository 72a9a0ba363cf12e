"""training/runs.py: the run directory's paths, the log.jsonl writer and reader (including a log torn by a
kill -9), and what users ask of a run's selection (summary, label shares, export, the runs table)."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from corpus_agents.errors import CorpusAgentsError
from corpus_agents.scoring.catalog import Catalog
from corpus_agents.training.runs import (
    STATE_FILE,
    LogWriter,
    ResumeRecord,
    RoundRecord,
    RunPaths,
    StepRecord,
    label_shares,
    list_runs,
    logged_runs,
    read_run_log,
    selection_path,
    static_selection,
    summarize_selection,
    summary_line,
)
from corpus_agents.training.selection import read_snapshot


def records() -> list:
    """A short run: round 0, two logged steps, round 1, the final evaluation."""
    return [
        RoundRecord.measured("round", 0, 0, 0, {"a": 6.0, "b": 5.0}, {"x": 0.5, "y": 0.5}, {"x": {"p": 0.0}}),
        StepRecord(step=3, round=0, loss=6.2, lr=1e-3, tokens=384, tokens_per_s=5000),
        RoundRecord.measured(
            "round", 3, 1, 384, {"a": 5.5, "b": 4.5}, {"x": 0.6, "y": 0.4}, {"x": {"p": 0.2}}
        ),
        StepRecord(step=6, round=1, loss=5.9, lr=5e-4, tokens=768, tokens_per_s=4000),
        RoundRecord.measured(
            "final", 6, 1, 768, {"a": 5.2, "b": 4.2}, {"x": 0.6, "y": 0.4}, {"x": {"p": 0.2}}
        ),
    ]


def test_run_paths_name_the_files_of_a_run(tmp_path: Path) -> None:
    paths = RunPaths.of(tmp_path, "demo")
    assert paths.root == tmp_path / "runs" / "demo"
    assert paths.log == paths.root / "log.jsonl"
    assert paths.tokenizer == paths.root / "tokenizer"
    assert paths.selection(3) == paths.root / "selections" / "round-00003.parquet"
    assert paths.checkpoint(12) == paths.root / "checkpoints" / "step-00000012"
    assert paths.latest_checkpoint() is None
    for step in (3, 12, 30):
        paths.checkpoint(step).mkdir(parents=True)
    for step in (3, 12):  # step 30's save was interrupted before its state file: not a checkpoint
        (paths.checkpoint(step) / STATE_FILE).touch()
    assert paths.latest_checkpoint() == paths.checkpoint(12)


def test_logged_runs_are_the_runs_with_a_log(tmp_path: Path) -> None:
    assert logged_runs(tmp_path) == []
    for run in ("b", "a"):
        paths = RunPaths.of(tmp_path, run)
        paths.root.mkdir(parents=True)
        LogWriter(paths.log, run).write(records()[1])
    RunPaths.of(tmp_path, "selection-only").selections.mkdir(parents=True)
    assert logged_runs(tmp_path) == ["a", "b"]


def test_log_round_trip_in_order_with_run_and_time(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    writer = LogWriter(path, "demo")
    written = [writer.write(r) for r in records()]
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == written
    assert [list(line)[:4] for line in lines] == [["run", "time", "event", "step"]] * 5
    assert lines[0]["heldout_loss_mean"] == 5.5 and lines[1]["tokens_per_s"] == 5000
    log = read_run_log(path)
    assert log.exists and log.finished and log.skipped == 0 and log.resumes == []
    assert log.steps == [r for r in records() if isinstance(r, StepRecord)]
    assert log.rounds == [r for r in records() if isinstance(r, RoundRecord)]
    assert not read_run_log(tmp_path / "none.jsonl").exists


def test_measured_round_records_are_rounded_as_logged() -> None:
    record = RoundRecord.measured(
        "round", 3, 1, 384, {"a": 1 / 3, "b": 2 / 3}, {"x": 1 / 7}, {"x": {"p": -1 / 9}}
    )
    assert record.heldout_loss == {"a": 0.33333, "b": 0.66667} and record.heldout_loss_mean == 0.5
    assert record.theta == {"x": 0.1429} and record.w == {"x": {"p": -0.1111}}


def test_records_logged_again_after_a_resume_replace_the_earlier_ones(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    killed_round = RoundRecord.measured("round", 6, 2, 768, {"a": 5.3}, {"x": 0.7}, {"x": {"p": 0.3}})
    first = [*records()[:4], killed_round]  # killed after round 2's record, before its checkpoint
    for r in first:
        LogWriter(path, "demo").write(r)
    again = LogWriter(path, "demo")  # resumed from the step-3 checkpoint: step 6 and round 2 come again
    again.write(ResumeRecord(step=3, round=1, checkpoint="step-00000003"))
    redone_step = StepRecord(step=6, round=1, loss=5.8, lr=5e-4, tokens=768, tokens_per_s=4100)
    redone_round = RoundRecord.measured("round", 6, 2, 768, {"a": 5.25}, {"x": 0.7}, {"x": {"p": 0.3}})
    again.write(redone_step)
    again.write(redone_round)
    log = read_run_log(path)
    assert log.steps == [first[1], redone_step] and log.rounds == [first[0], first[2], redone_round]
    assert log.resumes == [ResumeRecord(step=3, round=1, checkpoint="step-00000003")] and not log.finished
    again.clear()
    assert not path.exists()


def test_a_log_cut_anywhere_in_its_last_line_reads_as_the_lines_before(tmp_path: Path) -> None:
    """kill -9 in the middle of writing a line leaves a prefix of it: every prefix is skipped (a prefix that
    lacks only the newline is the whole record), and the next writer does not glue its record onto it."""
    path = tmp_path / "log.jsonl"
    writer = LogWriter(path, "demo")
    for r in records()[:4]:
        writer.write(r)
    whole = path.read_bytes()
    last_start = whole.rindex(b"\n", 0, len(whole) - 1) + 1
    for cut in range(last_start + 1, len(whole)):
        path.write_bytes(whole[:cut])
        log = read_run_log(path)
        complete = cut == len(whole) - 1
        assert log.steps == ([records()[1], records()[3]] if complete else [records()[1]]), cut
        assert log.rounds == [records()[0], records()[2]] and log.skipped == (0 if complete else 1), cut
    path.write_bytes(whole[: last_start + 20])
    LogWriter(path, "demo").write(records()[4])  # the resumed run's first record
    log = read_run_log(path)
    assert log.skipped == 1 and log.finished and log.rounds[-1] == records()[4]
    assert log.steps == [records()[1]]


def test_lines_that_are_not_records_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    LogWriter(path, "demo").write(records()[1])
    with open(path, "ab") as fh:
        fh.write(b'{"event": "step", "step": 9}\n')  # fields missing
        fh.write(b'{"event": "from-the-future", "step": 9}\n')
        fh.write(b"\n[1, 2]\n\xff\xfe\n")  # a blank line is not counted; not an object; not UTF-8
    log = read_run_log(path)
    assert log.steps == [records()[1]] and log.skipped == 4


def test_summary_lines() -> None:
    step, round_ = records()[1], records()[2]
    assert summary_line("demo", step) == "[demo] step   step      3  loss 6.2000  lr 1.00e-03  5,000 tokens/s"
    assert summary_line("demo", round_) == (
        "[demo] round  step      3  round 1  held-out loss: a 5.5000 b 4.5000  theta: x 0.600 y 0.400"
    )
    resume = ResumeRecord(step=3, round=1, checkpoint="step-00000003")
    assert summary_line("demo", resume) == "[demo] resume step      3  round=1 checkpoint=step-00000003"


@pytest.fixture(scope="module")
def static_run(tmp_path_factory, scored_workspace) -> tuple[Path, Path]:
    """A scored workspace with a static (round-0, no training) selection `static`, and its snapshot."""
    ws = scored_workspace(tmp_path_factory.mktemp("runs"), 10)
    with Catalog(ws) as cat:
        path = static_selection(cat, "static", 20_000, "topk", {"agents": ["domain", "kind"]}, None)
    return ws, path


def test_a_static_selection_is_listed_summarised_and_shared_by_label(static_run: tuple[Path, Path]) -> None:
    ws, path = static_run
    assert path == RunPaths.of(ws.resolve(), "static").selection(0)
    doc_ids = read_snapshot(path)[0]["doc_id"]
    with Catalog(ws) as cat:
        assert selection_path(cat, "static", None) == selection_path(cat, "static", 0) == (0, path)
        with pytest.raises(CorpusAgentsError, match="'static' has no selection at round 1"):
            selection_path(cat, "static", 1)
        with pytest.raises(CorpusAgentsError, match="'nope' has no selection at any round"):
            selection_path(cat, "nope", None)
        runs = list_runs(cat).to_pylist()
        shares = label_shares(cat, doc_ids)
        summary = summarize_selection(cat, "static", None)
    assert [(r["run_id"], r["rounds"], r["steps"]) for r in runs] == [("static", 0, None)]
    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    try:
        with_ids = pa.table({"doc_id": doc_ids})
        con.register("sel", with_ids)
        expected = {
            agent: dict(
                con.execute(
                    f"SELECT coalesce({agent}, '(none)'), count(*) FROM doc_labels JOIN sel USING (doc_id) GROUP BY 1"
                ).fetchall()
            )
            for agent in ("domain", "kind")
        }
    finally:
        con.close()
    for agent in ("domain", "kind"):
        rows = [(label, docs, share) for a, label, docs, share in shares if a == agent]
        assert {label: docs for label, docs, _ in rows} == expected[agent]
        assert [s for *_, s in rows] == sorted((s for *_, s in rows), reverse=True)
        assert sum(s for *_, s in rows) == pytest.approx(1.0)
        assert f"  {agent}: " + ", ".join(f"{label} {share:.0%}" for label, _, share in rows) in summary
    assert summary.startswith(f"run static round 0: {len(doc_ids):,} documents in {path}")
