"""benchmarks/selection_quality.py (experiment v3) end to end at a tiny size: the demo corpus, the shipped
LAMBADA sample, two paired seeds, three configurations (one with the noise controls), run twice to check
that a finished run is not trained again."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
import selection_quality as sq  # noqa: E402


def test_presets_and_overrides() -> None:
    gpu = sq.settings("gpu", False, [])
    assert gpu["device"] == "cuda" and gpu["dtype"] == "bf16" and gpu["every"] * 10 == gpu["steps"]
    tiny_gpu = sq.settings("gpu", True, ["steps=30"])
    assert tiny_gpu["device"] == "cpu" and tiny_gpu["dtype"] == "bf16" and tiny_gpu["every"] == 3
    with pytest.raises(SystemExit):
        sq.settings("cpu", False, ["no_such=1"])
    real = ["quality", "domain", "topic"]
    assert sq.config_overrides("method-noise", 100, real) == [
        "console.agents=[quality,domain,topic,noise1,noise2]"
    ]
    assert "train.steps=200" in sq.config_overrides("random-2x", 100, real)
    assert sq.config_overrides("single-topic", 100, real) == ["console.agents=[topic]"]


def test_gpu_preset_scale() -> None:
    """The GPU preset's model has 20-50M parameters (N of 6*N*D) and trains >= 20 tokens per parameter."""
    from corpus_agents.training.compute import flop_params
    from corpus_agents.training.models import build_model

    s = sq.settings("gpu", False, [])
    model = build_model(s["model"], s["vocab_size"], s["seq_len"], 0, **s["model_overrides"])
    n = flop_params(model)
    assert 20e6 <= n <= 50e6, n
    assert s["steps"] * s["batch_size"] * s["seq_len"] >= 20 * n


def test_best_single_is_chosen_on_probe_halves_only() -> None:
    def run(probe: float, heldout: float) -> dict:
        return {"probe_loss": probe, "curve": [{"mean": heldout}]}

    results = {
        "single-a": {s: run(5.0, 9.0) for s in sq.SELECTION_SEEDS},  # best probe half, worst held-out half
        "single-b": {s: run(6.0, 1.0) for s in sq.SELECTION_SEEDS},
    }
    assert sq.best_single(results, ["a", "b"]) == "a"
    del results["single-b"][sq.SELECTION_SEEDS[0]]
    assert sq.best_single(results, ["a", "b"]) is None  # not chosen before every single agent has its seeds
    assert sq.best_single(results, ["a", "b"], seeds=sq.SELECTION_SEEDS[1:]) == "a"


def test_console_summary() -> None:
    """Per agent: final theta, mean reliability and the share of rounds 2 se from 0, over rounds after the
    warm-up; configurations without a learning console get none."""

    def run(rows: list[tuple[int, str, float, float | None, float | None, float | None]]) -> dict:
        console = [{"round": r, "agent": a, "theta": t, "advantage": adv, "advantage_se": se, "reliability": rel}
                   for r, a, t, adv, se, rel in rows]  # fmt: skip
        return {"console": console, "selection": [{"cell_entropy": 9.0}, {"cell_entropy": 1.0},
                                                  {"cell_entropy": 2.0}]}  # fmt: skip

    a = run([(0, "x", 0.5, None, None, None), (1, "x", 0.6, 0.3, 0.1, 0.9), (2, "x", 0.7, 0.1, 0.1, None),
             (3, "x", 0.8, 0.2, 0.1, 0.5)])  # fmt: skip
    b = run([(0, "x", 0.5, None, None, None), (1, "x", 0.2, -0.5, 0.1, 0.1), (2, "x", 0.3, 0.0, 0.1, 0.2)])
    got = sq.console_summary([a, b])
    assert got["n"] == 2 and got["cell_entropy"] == pytest.approx(1.5)  # the warm-up's selection left out
    x = got["agents"]["x"]
    assert x["final_theta"] == pytest.approx(0.55) and x["rounds"] == 5
    assert x["reliability"] == pytest.approx(0.425)  # (0.9 + 0.5 + 0.1 + 0.2) / 4: a missing one is left out
    assert x["share_z2"] == pytest.approx(0.6)  # |z| = 3, 1, 2, 5, 0
    t = 0.2 / (0.1 / math.sqrt(3))  # run a's advantages 0.3, 0.1, 0.2; run b has too few rounds for a t
    assert x["t"] == pytest.approx({"mean": t, "min": t, "max": t})
    assert sq.console_summary([run([(0, "x", 1.0, None, None, None)]), {"curve": []}]) is None


def test_tokens_per_selected_document() -> None:
    """Over the rounds after the warm-up; a result recorded without document counts has none."""
    sel = [{"num_docs": 1, "tokens": 999}, {"num_docs": 10, "tokens": 3000}, {"num_docs": 30, "tokens": 5000}]
    assert sq.doc_tokens({"selection": sel}) == pytest.approx(8000 / 40)
    assert math.isnan(sq.doc_tokens({"selection": [{"cell_entropy": 1.0}, {"cell_entropy": 2.0}]}))


def test_a_lane_starts_only_runs_it_can(tmp_path: Path) -> None:
    """A killed run resumes only in the lane holding its checkpoints; random-eqc waits for its seed's method
    result, whose compute fixes its steps."""
    import argparse

    args = argparse.Namespace(results=tmp_path / "results")
    lanes = [tmp_path / "lane-0", tmp_path / "lane-1"]
    (lanes[1] / "runs" / "method-seed0" / "checkpoints").mkdir(parents=True)
    assert not sq.ready(args, ("method", 0), lanes[0], lanes)
    assert sq.ready(args, ("method", 0), lanes[1], lanes) and sq.ready(args, ("fixed", 0), lanes[0], lanes)
    assert not sq.ready(args, ("random-eqc", 0), lanes[0], lanes)
    method = {"curve": [{"step": 1600, "compute_flops": 1.357e13}], "final_compute": {"train_flops": 1.0e13}}
    sq.atomic_json(sq.result_path(args, "method-seed0"), method)
    assert sq.ready(args, ("random-eqc", 0), lanes[0], lanes) and not sq.ready(
        args, ("random-eqc", 1), lanes[0], lanes
    )
    assert sq.equal_compute_steps(method) == 2171


def result(config: str, seed: int, step: int = 100, loss: float = 6.0, doc_tokens: int = 400) -> dict:
    """A run result as collect writes it, with what the table reads (a two-point curve)."""
    return {
        "run": f"{config}-seed{seed}", "config": config, "seed": seed, "probe_loss": loss,
        "curve": [{"round": 0, "step": 0, "tokens": 0, "compute_flops": 0.0, "heldout": {"t": 7.0}, "mean": 7.0,
                   "theta": {}},
                  {"round": 1, "step": step, "tokens": 1000 * step, "compute_flops": 1.36e9 * step,
                   "heldout": {"t": loss}, "mean": loss, "theta": {}}],
        "final_compute": {"train_flops": 1e9 * step},
        "selection": [{"num_docs": 1, "tokens": 1, "top_cell_share": 0.1},
                      {"num_docs": 10, "tokens": 10 * doc_tokens, "top_cell_share": 0.1}],
    }  # fmt: skip


def test_v3_carries_the_unsampled_runs_over_and_compares_the_sampled_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """random, random-2x and method-paper come from v2 as they are (marked); random-eqc only once v3's method
    run of its seed spends the compute the v2 random-eqc was sized for; a sampled configuration is trained
    again and compared with its v2 run of the same seed."""
    import argparse

    previous, results = tmp_path / "selection_quality_v2", tmp_path / sq.NAME
    monkeypatch.setattr(sq, "PREVIOUS", previous)
    monkeypatch.setattr(sq, "RESULTS", tmp_path)
    for run in (result("random", 0), result("method-paper", 0), result("method", 0, loss=5.9, doc_tokens=300),
                result("random-eqc", 0, step=136), result("random-eqc", 1, step=136)):  # fmt: skip
        sq.atomic_json(previous / "runs" / f"{run['run']}.json", run)
    args = argparse.Namespace(preset="cpu", tiny=False, results=results)
    assert sq.carry_over(args) == 2  # random and method-paper; never the method, random-eqc not yet
    carried = json.loads(sq.result_path(args, "random-seed0").read_text())
    assert carried == {**result("random", 0), "carried_from": "selection_quality_v2"}
    assert not sq.result_path(args, "method-seed0").is_file()
    sq.atomic_json(sq.result_path(args, "method-seed0"), result("method", 0, loss=6.1, doc_tokens=420))
    sq.atomic_json(sq.result_path(args, "method-seed1"), result("method", 1, step=90))  # another compute
    assert sq.carry_over(args, [0, 1]) == 1 and sq.result_path(args, "random-eqc-seed0").is_file()
    assert not sq.result_path(args, "random-eqc-seed1").is_file()
    assert sq.carry_over(argparse.Namespace(preset="gpu", tiny=False, results=results)) == 0

    summary = sq.summarize(sq.load_results(results), ["domain"])
    assert summary["carried"] == {"random": [0], "random-eqc": [0], "method-paper": [0]}
    (row,) = sq.against(sq.load_results(results), sq.load_results(previous), ["domain"])
    assert row["config"] == "method" and row["seeds"] == [0]
    assert row["final"]["mean"] == pytest.approx(0.2)  # 6.1 now - 5.9 with the prefix sampler
    assert (row["doc_tokens"], row["doc_tokens_previous"]) == (420, 300)
    text = sq.markdown({**summary, "against_previous": [row]}, {
        "command": "c", "date": "d", "machine": {"cpu_model": "m", "cores": 2, "ram_gb": 1}, "preset": "cpu",
        "versions": {}, "settings": {}, "unigram_entropy": {}})  # fmt: skip
    assert "carried over from selection_quality_v2" in text and "| method | 0 |" in text


@pytest.mark.slow
def test_tiny_experiment_end_to_end(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    argv = ["--tiny", "--work", str(work), "--out", str(out), "--seeds", "0", "1",
            "--configs", "random", "random-eqc", "method", "fixed-noise"]  # fmt: skip
    sq.main(argv)
    runs = out / sq.NAME / "runs"
    results = {p.stem: json.loads(p.read_text()) for p in runs.glob("*.json")}
    assert sorted(results) == sorted(
        f"{c}-seed{s}" for c in ("random", "random-eqc", "method", "fixed-noise") for s in (0, 1)
    )
    for r in results.values():
        assert len(r["curve"]) >= 11  # rounds 0..9 and the final point, held-out loss at each
        assert [p["tokens"] for p in r["curve"]] == sorted(p["tokens"] for p in r["curve"])
        assert r["curve"][-1]["compute_flops"] > 0 and "probe_loss" in r and "lambada_acc" in r
    # Paired seeds: the step-0 held-out loss (the initial weights) and the warm-up selection are the same
    # across configurations of one seed, and differ between seeds.
    for seed in (0, 1):
        initial = {
            c: results[f"{c}-seed{seed}"]["curve"][0]["mean"] for c in ("random", "method", "fixed-noise")
        }
        assert len(set(initial.values())) == 1, initial
        warmups = {c: warmup(work, f"{c}-seed{seed}") for c in ("random", "method", "fixed-noise")}
        assert warmups["random"] == warmups["method"] == warmups["fixed-noise"]
    assert results["random-seed0"]["curve"][0]["mean"] != results["random-seed1"]["curve"][0]["mean"]
    assert warmup(work, "random-seed0") != warmup(work, "random-seed1")
    # random-eqc trains random selection at the method's total compute of its seed (to within a step)
    for seed in (0, 1):
        method, eqc = results[f"method-seed{seed}"], results[f"random-eqc-seed{seed}"]
        assert eqc["curve"][-1]["step"] == sq.equal_compute_steps(method) > method["curve"][-1]["step"]
        step_flops = eqc["final_compute"]["train_flops"] / eqc["curve"][-1]["step"]
        assert abs(eqc["curve"][-1]["compute_flops"] - method["curve"][-1]["compute_flops"]) <= step_flops
    # Random spends no compute on rewards; the learning configurations do, and it is counted.
    assert (
        results["method-seed0"]["curve"][-1]["compute_flops"]
        > results["random-seed0"]["curve"][-1]["compute_flops"]
    )
    table = json.loads((out / f"{sq.NAME}.json").read_text())
    assert table["table"]["random"]["n"] == 2 and table["table"]["random"]["secondary"]
    assert set(table["table"]["fixed-noise"]["noise_theta"]) == {"noise1", "noise2"}
    assert table["meta"]["unigram_entropy"]["lambada"] > 0
    # the corpus-frequency baseline is above the in-sample entropy (that one is a lower bound)
    assert table["meta"]["unigram_corpus"]["pooled"] > table["meta"]["unigram_entropy"]["pooled"]
    text = (out / f"{sq.NAME}.md").read_text()
    assert "*secondary*" in text and "| method | random |" in text
    assert sq.NOT_DISTINGUISHABLE in text  # two seeds are never enough to state a difference
    # What the console measured is recorded per round and agent; random measures no advantage.
    method = results["method-seed0"]["console"]
    assert {c["agent"] for c in method} == {"domain", "topic"} and max(c["round"] for c in method) >= 9
    assert any(c["advantage"] is not None and c["reliability"] is not None for c in method)
    assert not any(c["advantage_se"] for c in results["random-seed0"]["console"])  # no probes, no measure
    assert set(table["table"]["method"]["console"]["agents"]) == {"domain", "topic"}
    # Each selection records its documents and tokens; the table gives tokens per selected document.
    for r in results.values():
        assert all(x["num_docs"] > 0 and x["tokens"] > 0 for x in r["selection"])
    assert table["table"]["random"]["doc_tokens"]["mean"] > 0
    assert "console" not in table["table"]["random"]
    assert "## What the console measured" in text
    # A second call finds every run's result and trains nothing.
    stamps = {p.name: p.stat().st_mtime_ns for p in runs.glob("*.json")}
    sq.main(argv)
    assert {p.name: p.stat().st_mtime_ns for p in runs.glob("*.json")} == stamps
    # A result written before the diagnostics and document counts existed gains them from its lane,
    # unchanged otherwise.
    path = runs / "method-seed0.json"
    old = json.loads(path.read_text())
    selection = [{k: v for k, v in x.items() if k not in ("num_docs", "tokens")} for x in old["selection"]]
    path.write_text(json.dumps({**{k: v for k, v in old.items() if k != "console"}, "selection": selection}))
    sq.main([*argv, "--summary-only"])
    assert json.loads(path.read_text()) == old


@pytest.mark.slow
def test_tiny_gpu_preset_runs_on_cpu(tmp_path: Path) -> None:
    """The GPU preset's path (bf16 autocast, its own results directory) at the tiny size, on the CPU."""
    out = tmp_path / "out"
    sq.main(["--preset", "gpu", "--tiny", "--work", str(tmp_path / "work"), "--out", str(out), "--seeds", "0",
             "--configs", "random", "method"])  # fmt: skip
    runs = sorted(p.stem for p in (out / f"{sq.NAME}_gpu" / "runs").glob("*.json"))
    assert runs == ["method-seed0", "random-seed0"]
    meta = json.loads((out / f"{sq.NAME}_gpu.json").read_text())["meta"]
    assert meta["preset"] == "gpu-tiny" and meta["settings"]["dtype"] == "bf16"


def warmup(work: Path, run: str) -> list[int]:
    """The doc ids of a run's round-0 (warm-up) selection, from whichever lane trained it."""
    (path,) = work.glob(f"lane-*/runs/{run}/selections/round-00000.parquet")
    return sorted(pq.read_table(path, columns=["doc_id"])["doc_id"].to_pylist())
