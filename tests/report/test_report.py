"""`corpus-agents report`: runs grouped by seed (mean and std), the HTML page and its PNGs, clear errors."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import duckdb
import polars as pl
import pytest
from click.testing import CliRunner
from helpers import TINY as HELPER_TINY

from corpus_agents.cli import main
from corpus_agents.config import load_config
from corpus_agents.report import write_report
from corpus_agents.report.aggregate import final_heldout, mean_shares, over_seeds, run_summary
from corpus_agents.report.collect import collect, configuration_of
from corpus_agents.scoring.catalog import Catalog
from corpus_agents.training.runs import static_selection
from corpus_agents.training.trainer import Trainer

TINY = [
    *HELPER_TINY,
    "train.steps=6",
    "train.log_every=2",
]  # the shared tiny run, changed where this test needs it
RUNS = {  # run id -> extra overrides: two seeds of the method, one of random selection
    "method-seed0": ["train.seed=0"],
    "method-seed1": ["train.seed=1"],
    "random-seed0": ["train.seed=0", "console.mode=random"],
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, scored_workspace) -> Path:
    """A scored workspace (domain + kind agents) with three tiny training runs and a static selection."""
    root = tmp_path_factory.mktemp("report")
    ws = scored_workspace(root, 40)
    config = root / "pipeline.yaml"
    config.write_text(
        "references:\n  - {name: docs, path: '{workspace}/reference.parquet', prompt: '{prompt}', answer: '{answer}'}\n"
        "  - {name: docs-b, path: '{workspace}/reference.parquet', prompt: '{answer}', answer: '{prompt}'}\n"
    )
    with Catalog(ws) as cat:
        for run_id, extra in RUNS.items():
            Trainer(cat, load_config(config, [*TINY, *extra]), run_id).train()
        static_selection(cat, "static", 20_000, "topk", {"agents": ["domain", "kind"]}, None)
    return ws


def metrics(ws: Path) -> list[tuple[str, int, int, str, float]]:
    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    try:
        return con.execute("SELECT run_id, step, tokens, task, heldout_loss FROM round_metrics").fetchall()
    finally:
        con.close()


def test_configuration_strips_the_seed_suffix_or_uses_the_group_regex() -> None:
    assert configuration_of("method-seed0") == "method"
    assert configuration_of("method_seed12") == "method"
    assert configuration_of("lr3e-3.seed-2") == "lr3e-3"
    assert configuration_of("random") == "random"
    assert configuration_of("seed3") == "seed3"  # nothing left: the run is its own configuration
    assert configuration_of("a-lr1-s2", r"^(.*)-s\d+$") == "a-lr1"
    assert configuration_of("a-lr1-s2", r"lr\d") == "lr1"
    assert configuration_of("other", r"^(.*)-s\d+$") == "other"


def test_seeds_of_a_configuration_give_mean_and_std_of_their_final_losses(trained: Path) -> None:
    data = collect(trained)
    assert data.runs == [*RUNS, "static"]
    assert data.configs == {
        "method-seed0": "method", "method-seed1": "method", "random-seed0": "random", "static": "static"
    }  # fmt: skip
    rows = metrics(trained)
    last_step = {r: max(s for run, s, *_ in rows if run == r) for r in RUNS}
    final = {(r, task): loss for r, s, _, task, loss in rows if r in last_step and s == last_step[r]}
    assert {task for _, task in final} == {"docs", "docs-b"}
    table = {(r["config"], r["task"]): r for r in final_heldout(data).iter_rows(named=True)}
    for task in ("docs", "docs-b"):
        seeds = [final[("method-seed0", task)], final[("method-seed1", task)]]
        assert seeds[0] != seeds[1]  # the seeds really differ, so the std below is not trivially 0
        method = table[("method", task)]
        assert method["runs"] == 2 and method["tokens_min"] == method["tokens_max"] == 6 * 2 * 64
        assert method["mean"] == pytest.approx(statistics.mean(seeds))
        assert method["std"] == pytest.approx(statistics.stdev(seeds))
        random = table[("random", task)]
        assert random["runs"] == 1 and random["std"] is None
        assert random["mean"] == pytest.approx(final[("random-seed0", task)])
    # Training loss: per token count, the mean and the band of the two seeds' logged losses.
    curve = over_seeds(data.train_loss, data, ["tokens"], "loss").filter(config="method")
    assert curve["tokens"].to_list() == [2 * 128, 4 * 128, 6 * 128] and curve["runs"].to_list() == [2, 2, 2]
    for row in curve.iter_rows(named=True):
        losses = data.train_loss.filter(tokens=row["tokens"], run_id="method-seed0")["loss"].to_list()
        losses += data.train_loss.filter(tokens=row["tokens"], run_id="method-seed1")["loss"].to_list()
        assert row["mean"] == pytest.approx(statistics.mean(losses))
        assert (row["min"], row["max"]) == (min(losses), max(losses))


def test_selection_shares_cover_every_selected_document(trained: Path) -> None:
    data = collect(trained, ["method-seed0", "static"])
    con = duckdb.connect(str(trained / "catalog.duckdb"), read_only=True)
    try:
        selections = con.execute(
            "SELECT run_id, round, num_docs FROM selections WHERE run_id IN ('method-seed0', 'static')"
        ).fetchall()
        domains = dict(
            con.execute(
                "SELECT l.name, count(*) FROM read_parquet(?) s JOIN scores sc ON sc.doc_id = s.doc_id "
                "AND sc.agent = 'domain' JOIN agent_labels l ON l.agent = 'domain' AND l.label_id = sc.label "
                "GROUP BY ALL",
                [str(trained / "runs" / "static" / "selections" / "round-00000.parquet")],
            ).fetchall()
        )
    finally:
        con.close()
    assert len(selections) == 3  # rounds 0 and 1 of the run, round 0 of the static selection
    for run_id, round_, num_docs in selections:
        for agent in ("domain", "kind"):
            part = data.shares.filter(run_id=run_id, round=round_, agent=agent)
            assert part["docs"].sum() == num_docs and part["share"].sum() == pytest.approx(1.0)
    static = data.shares.filter(run_id="static", agent="domain")
    assert dict(zip(static["label"], static["docs"])) == domains
    # Averaged over a configuration's seeds, a round's shares still sum to 1 (absent labels count 0).
    totals = mean_shares(collect(trained)).group_by(["config", "agent", "round"]).agg(pl.col("mean").sum())
    assert totals.height == 2 * (2 + 2 + 1) and all(t == pytest.approx(1.0) for t in totals["mean"])


def test_report_writes_a_page_whose_images_are_valid_pngs(trained: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["report", str(trained), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    index = tmp_path / "out" / "index.html"
    page = index.read_text(encoding="utf-8")
    images = re.findall(r'<img src="([^"]+)"', page)
    assert {"train_loss.png", "heldout_loss.png", "heldout_compute.png", "theta.png"} <= set(images)
    assert {"w-00-method.png", "shares-00-method.png", "shares-02-static.png"} <= set(images)
    assert "<script" not in page
    from PIL import Image

    for name in images:
        path = index.parent / name
        assert path.read_bytes()[:8] == PNG_MAGIC, name
        with Image.open(path) as image:
            image.verify()
            assert image.size[0] > 300 and image.size[1] > 200, name
    # The final-loss table: the method's two seeds, as mean ± std.
    method = final_heldout(collect(trained)).filter(config="method", task="docs").row(0, named=True)
    assert f"{method['mean']:.4f} ± {method['std']:.4f} (2 runs)" in page
    assert "selection only (no training)" in page and "finished" in page
    # The runs table: cost in FLOPs and the share spent on rewards, none for random selection.
    runs = {r["run_id"]: r for r in run_summary(collect(trained)).iter_rows(named=True)}
    assert runs["random-seed0"]["probe_share"] == 0 and 0 < runs["method-seed0"]["probe_share"] < 1
    assert runs["method-seed0"]["compute_flops"] > runs["random-seed0"]["compute_flops"] > 0
    assert f"<td>{runs['method-seed0']['compute_flops']:.3g}</td>" in page
    # Whether each agent carries signal: the method's runs measured it, random selection did not.
    signal = collect(trained).signal
    assert set(signal["run_id"]) == {"method-seed0", "method-seed1"}
    assert set(signal["agent"]) == {"domain", "kind"} and (signal["rounds"] >= 1).all()
    assert "<h2>Signal per agent</h2>" in page


def test_report_of_a_busy_workspace_reads_the_run_logs(trained: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("corpus_agents.scoring.catalog.READ_WAIT_S", 0.2)
    with Catalog(trained) as held:  # as a training run would hold it, longer than a reader waits
        held.parts()
        index = write_report(trained, ["method-seed0", "method-seed1"], tmp_path / "busy")
    page = index.read_text(encoding="utf-8")
    assert "is in use by" in page and "need the catalog" in page
    images = re.findall(r'<img src="([^"]+)"', page)
    assert {
        "train_loss.png",
        "heldout_loss.png",
        "heldout_compute.png",
        "theta.png",
        "w-00-method.png",
    } == set(images)
    with Catalog(trained):  # the logs hold the same held-out losses as round_metrics (to 5 decimals)
        from_logs = final_heldout(collect(trained, ["method-seed0", "method-seed1"]))
        compute_from_logs = collect(trained, ["method-seed0", "method-seed1"]).compute
    from_catalog = final_heldout(collect(trained, ["method-seed0", "method-seed1"]))
    assert compute_from_logs.equals(collect(trained, ["method-seed0", "method-seed1"]).compute)
    assert from_logs["task"].to_list() == from_catalog["task"].to_list()
    for a, b in zip(from_logs["mean"].to_list(), from_catalog["mean"].to_list()):
        assert a == pytest.approx(b, abs=1e-5)


def test_report_errors_on_unknown_runs_and_workspaces_without_runs(trained: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["report", str(trained), "--runs", "method-seed0,nope"])
    assert result.exit_code == 2
    assert "unknown run 'nope'" in result.output and "known runs: method-seed0" in result.output
    result = runner.invoke(main, ["report", str(trained), "--group", "("])
    assert result.exit_code == 2 and "not a valid regular expression" in result.output
    empty = tmp_path / "empty"
    Catalog(empty, create=True).close()
    result = runner.invoke(main, ["report", str(empty)])
    assert result.exit_code == 2 and "has no training runs" in result.output
