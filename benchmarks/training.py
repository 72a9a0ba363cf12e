"""Benchmark: trainer token rate, streaming reader rate, and the cost of reward probing per round (CPU).

Measures, in one run, on real text of this machine (the reader benchmark's corpus: Python standard-library
sources, man pages, /usr/share/doc), for each model preset:

1. trainer: tokens/s of the training step exactly as `Trainer.train` runs it (`model(input_ids=...,
   labels=...)`, backward, clip, AdamW step, scheduler step), batch 8 x seq_len 256, on packed batches
   from the streaming reader, optimizer built by `Trainer._model_and_optimizer`;
2. reader: `SelectionReader` over a snapshot, one process, same tokenizer and seq_len; ratio reader/trainer;
3. probing: `gradient_rewards` (exact, and with `projection_dim=8192`) and `one_step_rewards` against two
   reference tasks of 60 probe examples each, for a round of N probe documents (max 256 tokens). The cost
   is measured as a fixed part (reference gradients or losses, once per round) plus a per-document part
   timed on a random subset of the N documents, and extrapolated linearly to N (160: the demo's 8 x 20
   labels; 1600: 64 per label x 25 labels); it is then divided by U training steps for U in {50, 200, 1500}.

CPU seconds (`time.process_time`) are the primary figures: the machine is shared. Torch runs one thread by
default (`--threads`), since waiting OpenMP threads spin and inflate CPU time when other processes hold the
cores; the probe/training ratios do not depend on the thread count. Wall seconds are reported beside them.

    python benchmarks/training.py [--preset tiny|small] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from corpus_agents.config import PipelineConfig, RewardsConfig, RoundsConfig
from corpus_agents.training.models import PRESETS, train_tokenizer
from corpus_agents.training.reader import SelectionReader
from corpus_agents.training.references import encode_examples, reference_loss
from corpus_agents.training.rewards import encode_documents, gradient_rewards, one_step_rewards
from corpus_agents.training.trainer import Trainer, _autocast

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import installed  # noqa: E402
from corpus.fetch import DEFAULT_CACHE  # noqa: E402
from environment import REPO, command_line, machine, versions  # noqa: E402
from reader import select  # noqa: E402

US = (50, 200, 1500)
PROBE_COUNTS = {"demo, 8 x 20 labels": 160, "64 x 25 labels": 1600}
TARGET_SHARE = 0.10


def clock(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """fn()'s result, CPU seconds (all threads of this process) and wall seconds."""
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - cpu, time.perf_counter() - wall


def per_doc_cost(fixed: Callable[[], Any], subset: Callable[[], Any], docs: int) -> dict[str, float]:
    """The cost of `subset()` (a method run on `docs` documents) split into a fixed part, the best of two runs
    of `fixed()` (the same on no documents: noise would skew the per-document figure), and a per-document
    one."""
    fixed_cpu, fixed_wall = min(clock(fixed)[1:] for _ in range(2))
    _, cpu, wall = clock(subset)
    return {
        "subset_docs": docs,
        "fixed_cpu_s": fixed_cpu,
        "fixed_wall_s": fixed_wall,
        "per_doc_cpu_s": max(cpu - fixed_cpu, 0.0) / docs,
        "per_doc_wall_s": max(wall - fixed_wall, 0.0) / docs,
        "subset_cpu_s": cpu,
        "subset_wall_s": wall,
    }


# ----- data ------------------------------------------------------------------------------------------------
def reference_pairs(texts: list[str], sources: list[str], n: int, rng: np.random.Generator) -> dict:
    """Two offline reference tasks of `n` (prompt, answer) pairs each, cut from held-out documents.

    prose-last-word: a man-page passage of ~400 characters, answer its next word (LAMBADA-like);
    code-next-line: up to 8 lines of standard-library Python, answer the next line.
    """
    prose, code = [], []
    for i in rng.permutation(len(texts)):
        text = texts[i]
        if sources[i] == "man-pages" and len(prose) < n:
            words = text[:600].split()
            if len(words) > 40:
                prose.append((" ".join(words[:-1])[-400:], " " + words[-1]))
        elif sources[i] == "python-stdlib" and len(code) < n:
            lines = [ln for ln in text.splitlines() if ln.strip()]
            if len(lines) > 9:
                k = int(rng.integers(8, len(lines)))
                code.append(("\n".join(lines[k - 8 : k]) + "\n", lines[k]))
        if len(prose) >= n and len(code) >= n:
            break
    return {"prose-last-word": prose, "code-next-line": code}


def training_batches(snapshot: Path, tokenizer: Any, seq_len: int, batch: int, n: int) -> list[torch.Tensor]:
    """`n` batches of packed sequences from the reader, in memory (reading is not part of the step time)."""
    reader = SelectionReader(snapshot, tokenizer, seq_len, tokenizer.eos_token_id, seed=0)
    seqs: list[np.ndarray] = []
    for item in reader:
        seqs.append(np.asarray(item["input_ids"]))
        if len(seqs) == batch * n:
            break
    return [torch.as_tensor(np.stack(seqs[i : i + batch])) for i in range(0, len(seqs), batch)]


# ----- measurements ----------------------------------------------------------------------------------------
def measure_reader(snapshot: Path, tokenizer: Any, seq_len: int, repeat: int) -> dict[str, float]:
    """Packed tokens per CPU second and per wall second of one in-process pass (best CPU of `repeat`)."""
    runs = []
    for _ in range(repeat):
        reader = SelectionReader(snapshot, tokenizer, seq_len, tokenizer.eos_token_id, seed=0)
        tokens, cpu, wall = clock(lambda r=reader: sum(len(item["input_ids"]) for item in r))
        runs.append({"tokens": tokens, "cpu_s": cpu, "wall_s": wall})
    best = min(runs, key=lambda r: r["cpu_s"])
    return {
        **best,
        "tok_per_cpu_s": best["tokens"] / best["cpu_s"],
        "tok_per_s": best["tokens"] / best["wall_s"],
    }


def measure_training(config: PipelineConfig, tokenizer: Any, batches: list[torch.Tensor], warmup: int) -> Any:
    """Per-step CPU and wall seconds of `Trainer.train`'s step on `batches` (after `warmup` steps)."""
    owner = SimpleNamespace(config=config, tokenizer=tokenizer, device=torch.device("cpu"))
    model, optimizer, scheduler = Trainer._model_and_optimizer(owner)  # the trainer's own construction
    model.train()
    clip, dtype = config.train.clip, config.train.dtype

    def step(input_ids: torch.Tensor) -> float:
        with _autocast(owner.device, dtype):
            loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    cpu, wall = [], []
    for i, input_ids in enumerate(batches):
        _, c, w = clock(lambda x=input_ids: step(x))
        if i >= warmup:
            cpu.append(c)
            wall.append(w)
    tokens = batches[0].numel()
    stats = {
        "steps_timed": len(cpu),
        "tokens_per_step": tokens,
        "step_cpu_s": float(np.median(cpu)),
        "step_wall_s": float(np.median(wall)),
        "step_cpu_s_all": [round(c, 3) for c in cpu],
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    stats["tok_per_cpu_s"] = tokens / stats["step_cpu_s"]
    stats["tok_per_s"] = tokens / stats["step_wall_s"]
    return stats, model, optimizer


def measure_probes(
    model: Any, optimizer: Any, refs: dict, docs: list[list[int]], rewards: RewardsConfig, sub: dict[str, int]
) -> dict[str, dict[str, float]]:
    """Fixed (once per round) and per-document CPU/wall seconds of each reward method, on doc subsets."""
    rng = np.random.default_rng(3)
    gradient_rewards(model, refs, docs[:2], max_length=rewards.max_tokens)  # warm-up, untimed
    out = {}
    for name, projection in (("gradient", None), ("gradient, projection_dim=8192", 8192)):
        subset = [docs[i] for i in rng.choice(len(docs), sub["gradient"], replace=False)]

        def run(d: list[list[int]], p: int | None = projection) -> Any:
            return gradient_rewards(
                model, refs, d, max_length=rewards.max_tokens, cosine=rewards.cosine, projection_dim=p,
                seed=0, chunk_size=rewards.chunk_size,
            )  # fmt: skip

        out[name] = per_doc_cost(lambda r=run: r([]), lambda r=run, s=subset: r(s), len(subset))
        print(
            f"    {name}: fixed {out[name]['fixed_cpu_s']:.1f} CPU-s, {out[name]['per_doc_cpu_s']:.3f} CPU-s/doc"
        )
    subset = [docs[i] for i in rng.choice(len(docs), sub["one_step"], replace=False)]
    out["one_step"] = per_doc_cost(
        lambda: [reference_loss(model, b) for b in refs.values()],
        lambda: one_step_rewards(model, optimizer, subset, refs, max_length=rewards.max_tokens),
        len(subset),
    )
    print(f"    one_step: {out['one_step']['per_doc_cpu_s']:.3f} CPU-s/doc")
    return out


def shares(train: dict, probes: dict) -> dict[str, Any]:
    """Probe time / (U x step time) for each method, probe count and U; and the U where it reaches 10%."""
    table = {}
    for method, p in probes.items():
        for label, n in PROBE_COUNTS.items():
            cpu = p["fixed_cpu_s"] + n * p["per_doc_cpu_s"]
            wall = p["fixed_wall_s"] + n * p["per_doc_wall_s"]
            table[f"{method} | {n}"] = {
                "method": method,
                "probes": n,
                "probe_label": label,
                "round_cpu_s": cpu,
                "round_wall_s": wall,
                "share_cpu": {u: cpu / (u * train["step_cpu_s"]) for u in US},
                "share_wall": {u: wall / (u * train["step_wall_s"]) for u in US},
                "min_u_for_10pct": int(np.ceil(cpu / (TARGET_SHARE * train["step_cpu_s"]))),
            }
    return table


# ----- report ----------------------------------------------------------------------------------------------
def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Trainer, reader and reward-probe costs (CPU)",
        "",
        f"- date: {result['date']}",
        f"- command: `{result['command']}`",
        f"- machine: {m['cpu_model']}, {m['cores']} cores, {m['ram_gb']} GB RAM; load average at start "
        f"{m['loadavg']:.2f}, end {result['loadavg_end']:.2f} (shared machine: CPU-s figures are primary); "
        f"torch threads {result['torch_threads']}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in result['versions'].items())}",
        f"- data: {result['data']}",
        f"- rewards config: {result['rewards_config']}; default rounds.every = {result['default_every']}",
        "",
        "## Trainer vs streaming reader (batch 8 x seq_len 256, fp32)",
        "",
        "| preset | params | step CPU s | step wall s | trainer tok/CPU-s | trainer tok/s | "
        "reader tok/CPU-s | reader tok/s | reader/trainer (CPU) | reader/trainer (wall) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    r = result["reader"]
    for preset, p in result["presets"].items():
        t = p["train"]
        lines.append(
            f"| {preset} | {t['parameters'] / 1e6:.2f}M | {t['step_cpu_s']:.2f} | {t['step_wall_s']:.2f} | "
            f"{t['tok_per_cpu_s']:,.0f} | {t['tok_per_s']:,.0f} | {r['tok_per_cpu_s']:,.0f} | "
            f"{r['tok_per_s']:,.0f} | {r['tok_per_cpu_s'] / t['tok_per_cpu_s']:,.0f}x | "
            f"{r['tok_per_s'] / t['tok_per_s']:,.0f}x |"
        )
    lines += [
        "",
        "Step: median over the timed steps (forward + backward + clip + AdamW + scheduler, as `Trainer.train`). "
        f"Reader: one process, {r['tokens']:,} packed tokens, best of {result['reader_repeat']}.",
        "",
        "## Probing cost per round",
        "",
        "Round cost = fixed (reference gradients or losses, once per round) + N x per-document cost, the "
        "per-document cost measured on a random subset of the probe documents and extrapolated linearly "
        "to N (not a full N-document run). Share = round cost / (U x step time), CPU seconds.",
        "",
    ]
    for preset, p in result["presets"].items():
        lines += [
            f"### {preset}",
            "",
            "| method | subset docs | fixed CPU s (wall) | = training steps | per doc CPU s (wall) | "
            "= training sequences |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        step, seq = p["train"]["step_cpu_s"], p["train"]["step_cpu_s"] / result["batch_size"]
        for method, q in p["probes"].items():
            lines.append(
                f"| {method} | {q['subset_docs']} | {q['fixed_cpu_s']:.2f} ({q['fixed_wall_s']:.2f}) | "
                f"{q['fixed_cpu_s'] / step:.1f} | {q['per_doc_cpu_s']:.3f} ({q['per_doc_wall_s']:.3f}) | "
                f"{q['per_doc_cpu_s'] / seq:.1f} |"
            )
        lines += [
            "",
            "| method | probes N | round CPU s | "
            + " | ".join(f"share U={u}" for u in US)
            + " | U for <= 10% |",
            "| --- | ---: | ---: | " + " | ".join("---:" for _ in US) + " | ---: |",
        ]
        for row in p["shares"].values():
            lines.append(
                f"| {row['method']} | {row['probes']} | {row['round_cpu_s']:,.1f} | "
                + " | ".join(f"{row['share_cpu'][u]:.1%}" for u in US)
                + f" | {row['min_u_for_10pct']:,} |"
            )
        lines.append("")
    lines += ["## Against the targets", "", *result["verdict"], ""]
    return "\n".join(lines)


def verdict(result: dict[str, Any]) -> list[str]:
    out = []
    r = result["reader"]
    for preset, p in result["presets"].items():
        t = p["train"]
        ratio = r["tok_per_cpu_s"] / t["tok_per_cpu_s"]
        out.append(
            f"- {preset}: reader/trainer = {ratio:,.0f}x per CPU second "
            f"({'meets' if ratio >= 10 else 'misses'} the >= 10x target on this CPU)."
        )
        g, n = p["probes"]["gradient"], max(PROBE_COUNTS.values())
        per_doc = n * g["per_doc_cpu_s"]
        share = per_doc / (per_doc + g["fixed_cpu_s"])
        per_token = g["per_doc_cpu_s"] / result["probe_doc_mean_tokens"]
        train_token = t["step_cpu_s"] / t["tokens_per_step"]
        out.append(
            f"  - gradient mode, N = {n}: per-document gradients are {share:.0%} of the round's probe time "
            f"(a probe token costs {per_token / train_token:.1f}x a training token); reference gradients the rest."
        )
        for row in p["shares"].values():
            if not row["method"].startswith("gradient"):
                continue
            ok = [u for u in US if row["share_cpu"][u] <= TARGET_SHARE]
            held = f"holds for U in {ok}" if ok else f"holds for none of U in {list(US)}"
            out.append(
                f"  - {row['method']}, N = {row['probes']}: the 10% target {held}; it needs U >= "
                f"{row['min_u_for_10pct']:,} (default U = {result['default_every']}: "
                f"{row['round_cpu_s'] / (result['default_every'] * t['step_cpu_s']):.0%})."
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", action="append", choices=["tiny", "small"], help="default: both")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per preset")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--grad-subset", type=int, default=32, help="probe docs timed in gradient mode")
    parser.add_argument("--one-step-subset", type=int, default=4, help="probe docs timed in one_step mode")
    parser.add_argument("--ref-examples", type=int, default=60, help="probe examples per reference task")
    parser.add_argument("--tokenizer-docs", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time = one core's)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    presets = args.preset or ["tiny", "small"]
    torch.set_num_threads(args.threads)  # idle OpenMP threads spin and inflate CPU time on a busy machine
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    started = time.perf_counter()
    start_machine = machine()

    corpus = installed.build(args.cache)  # the reader benchmark's corpus (cached)
    table = pq.read_table(sorted(corpus.glob("shard-*.parquet"))[-1], columns=["text", "source"])
    held_texts, held_sources = table.column("text").to_pylist(), table.column("source").to_pylist()
    snapshot, texts = select(corpus, 0.1, corpus / "selection-training-0.1")
    rng = np.random.default_rng(0)
    sample = [texts[i] for i in rng.permutation(len(texts))[: args.tokenizer_docs]]
    tmp = Path(tempfile.mkdtemp(prefix="bench-training-"))
    vocab = PipelineConfig().tokenizer.vocab_size
    tokenizer, tok_cpu, _ = clock(lambda: train_tokenizer(sample, vocab, tmp / "tokenizer"))
    print(f"corpus {corpus}; selection {len(texts):,} docs; tokenizer {vocab} in {tok_cpu:.1f} CPU-s")

    reader = measure_reader(snapshot, tokenizer, args.seq_len, repeat=2)
    print(f"reader: {reader['tok_per_cpu_s']:,.0f} tokens/CPU-s, {reader['tok_per_s']:,.0f} tokens/s")
    batches = training_batches(snapshot, tokenizer, args.seq_len, args.batch_size, args.steps + args.warmup)

    pairs = reference_pairs(held_texts, held_sources, args.ref_examples, np.random.default_rng(1))
    refs = {name: encode_examples(tokenizer, p, max_length=args.seq_len) for name, p in pairs.items()}
    ref_tokens = {name: int(sum(b["attention_mask"].sum() for b in bs)) for name, bs in refs.items()}
    rewards = RewardsConfig()
    probe_texts = [held_texts[i] for i in rng.permutation(len(held_texts))[: max(PROBE_COUNTS.values())]]
    docs = encode_documents(tokenizer, probe_texts, max_length=rewards.max_tokens)
    doc_tokens = float(np.mean([len(d) for d in docs]))

    result: dict[str, Any] = {"presets": {}}
    for preset in presets:
        print(f"{preset}:")
        config = PipelineConfig()
        config.model.preset, config.model.seq_len = preset, args.seq_len
        config.train.batch_size = args.batch_size
        train, model, optimizer = measure_training(config, tokenizer, batches, args.warmup)
        print(f"  step {train['step_cpu_s']:.2f} CPU-s ({train['tok_per_cpu_s']:,.0f} tokens/CPU-s)")
        probes = measure_probes(
            model,
            optimizer,
            refs,
            docs,
            rewards,
            {"gradient": args.grad_subset, "one_step": args.one_step_subset},
        )
        result["presets"][preset] = {"train": train, "probes": probes, "shares": shares(train, probes)}

    result.update(
        {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": command_line(__file__),
            "machine": start_machine,
            "loadavg_end": machine()["loadavg"],
            "torch_threads": torch.get_num_threads(),
            "versions": versions("tokenizers", "torch", "transformers", "pyarrow", "numpy", "corpus-agents"),
            "data": (
                f"reader-benchmark corpus {corpus.name} (stdlib sources, man pages, /usr/share/doc); "
                f"selection {len(texts):,} docs; byte-level BPE {vocab} trained on {len(sample):,} of them; "
                f"{len(docs):,} probe docs from shard-007, mean {doc_tokens:.0f} tokens (max "
                f"{rewards.max_tokens}); references {', '.join(f'{k}: {len(v)} pairs, {ref_tokens[k]:,} tokens' for k, v in pairs.items())}"
            ),
            "rewards_config": {k: getattr(rewards, k) for k in ("chunk_size", "cosine", "max_tokens")},
            "default_every": RoundsConfig().every,
            "presets_shapes": {p: PRESETS[p] for p in presets},
            "reader": reader,
            "reader_repeat": 2,
            "batch_size": args.batch_size,
            "probe_doc_mean_tokens": doc_tokens,
            "total_wall_s": time.perf_counter() - started,
        }
    )
    result["verdict"] = verdict(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "training.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out / "training.md").write_text(markdown(result))
    print("\n".join(result["verdict"]))
    print(f"total {result['total_wall_s']:.0f} s wall")


if __name__ == "__main__":
    main()
