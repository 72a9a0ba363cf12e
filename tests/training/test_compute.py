"""Compute accounting: N counted from the model, padding not counted, every round's tokens and FLOPs in the
log and the catalog (cumulative values monotone, no probe compute for random selection), `runs` naming
them, and a log written before compute was counted still read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import TINY as HELPER_TINY
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from corpus_agents.cli import main
from corpus_agents.config import load_config
from corpus_agents.scoring.catalog import Catalog
from corpus_agents.training.compute import COST_KINDS, KINDS, Compute, flop_params
from corpus_agents.training.references import encode_examples
from corpus_agents.training.rewards import gradient_rewards, one_step_rewards
from corpus_agents.training.runs import RoundRecord, RunPaths, list_runs, parse_record, read_run_log
from corpus_agents.training.trainer import Trainer

D, FF, LAYERS, HEADS, KV_HEADS, VOCAB = 32, 64, 2, 4, 2, 300
MAX_LEN = 24


def tiny_model(tied: bool) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=D, intermediate_size=FF, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=64,
        tie_word_embeddings=tied,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def test_flop_params_are_the_matmul_weights_per_token() -> None:
    """N counts attention, MLP, norms and the output head (once when tied), not the embedding lookup."""
    kv = D // HEADS * KV_HEADS
    layer = 2 * D * D + 2 * D * kv + 3 * D * FF + 2 * D  # q, o; k, v; gate, up, down; two RMSNorms
    expected = LAYERS * layer + D + VOCAB * D  # the final norm and the output head
    assert flop_params(tiny_model(tied=False)) == expected
    assert flop_params(tiny_model(tied=True)) == expected
    untied = tiny_model(tied=False)
    assert sum(p.numel() for p in untied.parameters()) == expected + VOCAB * D  # the embedding is left out


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    from pydoc_data.topics import topics

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([topics[name] for name in sorted(topics)][:200], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def test_rewards_count_the_tokens_they_process_without_padding(tokenizer) -> None:
    model = tiny_model(tied=True)
    n = flop_params(model)
    docs = [list(range(5, 5 + k)) for k in (1, 3, 9, 17, 40)]  # 40 > MAX_LEN: cut to its first MAX_LEN
    pairs = [("The quick brown fox jumps over the lazy dog", " and runs away"), ("A", " b")]
    refs = {
        "a": encode_examples(tokenizer, pairs, max_length=64),
        "b": encode_examples(tokenizer, pairs[:1], 64),
    }
    prompt_answer = [len(tokenizer(p)["input_ids"]) + len(tokenizer(a)["input_ids"]) for p, a in pairs]
    ref_tokens = sum(prompt_answer) + prompt_answer[0]
    padded = sum(b["input_ids"].numel() for task in refs.values() for b in task)
    assert padded > ref_tokens  # the batches are padded, and the padding is not counted

    counted = Compute()
    gradient_rewards(model, refs, docs, max_length=MAX_LEN, chunk_size=2, compute=counted)
    doc_tokens = 1 + 3 + 9 + 17 + MAX_LEN
    assert counted.probe_tokens == doc_tokens and counted.probe_flops == 6 * n * doc_tokens
    assert counted.reference_tokens == ref_tokens and counted.reference_flops == 6 * n * ref_tokens
    assert counted.train_flops == counted.eval_flops == 0

    counted = Compute()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    one_step_rewards(model, optimizer, docs, refs, max_length=MAX_LEN, compute=counted)
    stepped = doc_tokens - 1  # the one-token document has no loss: no step, no evaluation after it
    assert counted.probe_tokens == stepped and counted.probe_flops == 6 * n * stepped
    evaluations = 1 + 4  # the reference loss before the steps, and after each of the 4 steps
    assert counted.reference_tokens == evaluations * ref_tokens
    assert counted.reference_flops == 2 * n * evaluations * ref_tokens


TINY = [
    *HELPER_TINY,
    "train.steps=6",
    "rounds.every=2",
    "console.probes_per_label=2",
]  # the shared tiny run, changed where this test needs it


@pytest.fixture(scope="module")
def trained(tmp_path_factory, scored_workspace) -> Path:
    """Two tiny runs of 3 rounds: the method and random selection."""
    root = tmp_path_factory.mktemp("compute")
    ws = scored_workspace(root, 30)
    config = root / "pipeline.yaml"
    config.write_text(
        "references:\n  - {name: docs, path: '{workspace}/reference.parquet', prompt: '{prompt}', answer: '{answer}'}\n"
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with Catalog(ws) as cat:
            for run_id, extra in {"method": [], "random": ["console.mode=random"]}.items():
                Trainer(cat, load_config(config, [*TINY, *extra]), run_id).train()
    finally:
        torch.set_num_threads(threads)
    return ws


def test_every_round_logs_its_compute_and_the_cumulative_compute(trained: Path) -> None:
    tokens_per_step = 2 * 64
    for run_id in ("method", "random"):
        paths = RunPaths.of(trained, run_id)
        n = flop_params(LlamaForCausalLM.from_pretrained(paths.latest_checkpoint() / "model"))
        rounds = read_run_log(paths.log).rounds
        assert [(r.event, r.step) for r in rounds] == [("round", 0), ("round", 2), ("round", 4), ("final", 6)]
        running = Compute()
        for before, record in zip([None, *rounds], rounds):
            spent, total = record.compute, record.compute_total
            running = running + spent
            assert total == running  # the cumulative values are the sums of the rounds'
            assert total.train_tokens == record.tokens == record.step * tokens_per_step
            assert spent.train_flops == 6 * n * spent.train_tokens
            assert spent.eval_tokens > 0 and spent.eval_flops > 0  # every record evaluates the held-out set
            if before is not None:
                for kind in KINDS:
                    assert getattr(total, f"{kind}_flops") >= getattr(before.compute_total, f"{kind}_flops")
                assert total.total_flops > before.compute_total.total_flops
            assert total.total_flops == pytest.approx(sum(getattr(total, f"{k}_flops") for k in COST_KINDS))
        final = rounds[-1].compute_total
        if run_id == "random":  # it measures no rewards: its cost is its training
            assert (
                final.probe_tokens == final.reference_tokens == 0 and final.total_flops == final.train_flops
            )
        else:
            assert rounds[0].compute.probe_tokens == 0  # round 0 is the random warm-up
            assert all(r.compute.probe_tokens > 0 and r.compute.reference_tokens > 0 for r in rounds[1:3])
            assert rounds[-1].compute.probe_tokens == 0  # the final evaluation draws no probes
            assert 0 < final.probe_share < 1
            assert final.eval_flops not in (0, final.total_flops)


def test_the_catalog_holds_the_logged_compute_and_runs_shows_it(trained: Path) -> None:
    with Catalog(trained) as cat:
        rows = cat.execute(
            "SELECT run_id, step, kind, tokens, flops, total_tokens, total_flops FROM round_compute ORDER BY ALL"
        )
    for run_id in ("method", "random"):
        for record in read_run_log(RunPaths.of(trained, run_id).log).rounds:
            for kind in KINDS:
                row = next(r for r in rows if r[:3] == (run_id, record.step, kind))
                assert row[3:] == (
                    getattr(record.compute, f"{kind}_tokens"), getattr(record.compute, f"{kind}_flops"),
                    getattr(record.compute_total, f"{kind}_tokens"), getattr(record.compute_total, f"{kind}_flops"),
                )  # fmt: skip
    result = CliRunner().invoke(main, ["runs", str(trained)])
    assert result.exit_code == 0, result.output
    header = result.output.splitlines()[1]
    assert all(name in header for name in ("train_tokens", "compute_flops", "probe_share"))
    with Catalog(trained) as cat:
        listed = {r["run_id"]: r for r in list_runs(cat).to_pylist()}
    method, random = (
        read_run_log(RunPaths.of(trained, r).log).rounds[-1].compute_total for r in ("method", "random")
    )
    assert listed["random"]["probe_share"] == 0 and listed["random"]["compute_flops"] == random.train_flops
    assert listed["method"]["compute_flops"] == pytest.approx(method.total_flops)
    assert listed["method"]["probe_share"] == pytest.approx(method.probe_share, abs=1e-4)
    assert listed["method"]["train_tokens"] == listed["random"]["train_tokens"] == 6 * 2 * 64


def test_a_log_written_before_compute_was_counted_is_read(tmp_path: Path) -> None:
    old = {
        "run": "old", "time": "2025-01-01T00:00:00", "event": "round", "step": 3, "round": 1, "tokens": 384,
        "heldout_loss": {"a": 5.5}, "heldout_loss_mean": 5.5, "theta": {"x": 1.0}, "w": {"x": {"p": 0.1}},
    }  # fmt: skip
    record = parse_record(json.dumps(old))
    assert isinstance(record, RoundRecord) and record.compute is None and record.compute_total is None
    assert record.heldout_loss == {"a": 5.5}
    path = tmp_path / "log.jsonl"
    path.write_text(json.dumps(old) + "\n" + json.dumps({**old, "event": "final", "step": 6}) + "\n")
    log = read_run_log(path)
    assert log.finished and log.skipped == 0 and [r.step for r in log.rounds] == [3, 6]
    assert parse_record(json.dumps({k: v for k, v in old.items() if k != "tokens"})) is None  # still required
