"""Benchmark: the paper's ablation table (Bai et al. 2024, Table 2) at small scale on a real multi-domain corpus.

One command rebuilds the corpus (`benchmarks/corpus/build.py`, Debian packages fetched at run time), scores
it with three agents, trains the same small Llama at one token budget under every configuration and seed, and
writes the table (mean ± std over seeds) to `benchmarks/results/selection_quality.{json,md}` and the HTML
report (`corpus-agents report`) to `benchmarks/results/selection_quality/`:

- random: uniform random selection every round (the baseline);
- quality / domain / topic: a single agent with its memory learnt from the rewards;
- fixed: all agents, the collaboration weights theta fixed at uniform (eta_theta = 0; the agents still learn
  their memories) -- the paper's "fixed weights", what its released code does in effect;
- method: all agents with the dynamic console;
- random-2x: random selection with twice the tokens;
- variants of the method, compared on the probe halves only: method-gumbel (Gumbel-top-k instead of top-k),
  fixed-gumbel (fixed theta, Gumbel-top-k), method-gumbel-cosine (and cosine rewards).

Reference tasks (LAMBADA, SQuAD, Jeopardy; `reference_dir` says where they are read) are split once, seeded,
into a probe half (rewards) and a held-out half (evaluation): the runs never see a held-out item. Metrics per run:
held-out reference loss per task at every round; at the end, LAMBADA last-word accuracy (every answer token
the greedy choice) and multiple-choice accuracy by log-likelihood on SQuAD and Jeopardy held-out items, with
three distractor answers taken from other held-out items of the same article (SQuAD) or category
(Jeopardy) -- the reference sets have no choices of their own, so the choices are built here, seeded. Tokens
to reach random's final held-out loss are read off each configuration's mean curve (linear between rounds).

Runs go in `--lanes` parallel lanes (one CPU thread each, one workspace copy each: a workspace has one
owner at a time), are resumed with `--resume` if killed, skipped when finished, and merged into the scored
workspace at the end so one `corpus-agents report` sees them all.

    python benchmarks/selection_quality.py                # build/reuse corpus, score, train all, report
    python benchmarks/selection_quality.py --seeds 0 --configs random method --steps 60   # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from environment import REPO, command_line, machine, versions  # noqa: E402

#: The paper's full reference sets when a `shared/data/reference` directory sits beside the checkout (the
#: figures in the README were measured on them); without it the sets are built (`reference_dir`).
SHARED_REFERENCE = REPO.parent / "shared" / "data" / "reference"
DEFAULT_WORK = Path(os.environ.get("CORPUS_AGENTS_BENCH_CACHE", "~/.cache/corpus-agents-bench")).expanduser()
CONFIG_ORDER = ["random", "quality", "domain", "topic", "fixed", "method", "random-2x"]
#: Variants of the method (less greedy selection, less reward noise), chosen between on the probe half only.
VARIANTS = ["method-gumbel", "fixed-gumbel", "method-gumbel-cosine"]
RUN_TABLES = [
    "runs",
    "agent_memory",
    "collab_weights",
    "probes",
    "selections",
    "seen_counts",
    "consumed_rounds",
    "round_metrics",
]


def config_overrides(name: str, steps: int) -> list[str]:
    """`--set` overrides of a configuration over the base config."""
    return {
        "random": ["console.mode=random"],
        "quality": ["console.agents=[quality]"],
        "domain": ["console.agents=[domain]"],
        "topic": ["console.agents=[topic]"],
        "fixed": ["console.eta_theta=0"],
        "method": [],
        "method-gumbel": ["console.mode=gumbel"],
        "fixed-gumbel": ["console.eta_theta=0", "console.mode=gumbel"],
        "method-gumbel-cosine": ["console.mode=gumbel", "rewards.cosine=true"],
        "random-2x": ["console.mode=random", f"train.steps={2 * steps}"],
    }[name]


def reference_dir(work: Path) -> Path:
    """Where the reference tasks are read: $CORPUS_AGENTS_REFERENCE_DIR, else the full sets beside the
    checkout when present, else `corpus-agents references build WORK/references` (the public sets online or
    from the datasets cache, the shipped LAMBADA/SQuAD samples offline; Jeopardy only from the hub)."""
    if os.environ.get("CORPUS_AGENTS_REFERENCE_DIR"):
        return Path(os.environ["CORPUS_AGENTS_REFERENCE_DIR"]).expanduser()
    if SHARED_REFERENCE.is_dir():
        return SHARED_REFERENCE
    built = work / "references"
    if not (built / "lambada.parquet").is_file() or not (built / "squad.parquet").is_file():
        sh(cli("references", "build", str(built), "--tasks", "lambada,squad"))
    if not (built / "jeopardy.parquet").is_file():
        got = subprocess.run(cli("references", "build", str(built), "--tasks", "jeopardy", "--source", "hub"))
        if got.returncode:
            print("jeopardy: not available here; the benchmark runs on lambada and squad", flush=True)
    return built


def references(ref: Path, max_examples: int) -> list[dict[str, Any]]:
    """The paper's reference tasks found in `ref`, probe/held-out split seeded once (seed 0) for every run."""
    from corpus_agents.training.reference_sets import TASKS

    return [
        {"name": name, "path": str(ref / f"{name}.parquet"), "prompt": TASKS[name].prompt,
         "answer": TASKS[name].answer, "max_examples": max_examples}
        for name in ("lambada", "squad", "jeopardy")
        if (ref / f"{name}.parquet").is_file()
    ]  # fmt: skip


def base_config(args: argparse.Namespace, tokenizer: Path) -> dict[str, Any]:
    return {
        "model": {"preset": args.preset, "seq_len": args.seq_len},
        "tokenizer": {"path": str(tokenizer)},
        "train": {
            "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "warmup_steps": args.steps // 10,
            "schedule": "cosine", "log_every": 10, "seed": 0,
        },
        "rounds": {"every": args.every},
        "rewards": {"method": "gradient", "max_tokens": args.probe_tokens},
        "console": {"agents": ["quality", "domain", "topic"], "probes_per_label": args.probes_per_label},
        "references": references(reference_dir(args.work), args.max_examples),
    }  # fmt: skip


def sh(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    print("+", shlex.join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kwargs)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "corpus_agents.cli", *args]


# ----- corpus, agents, tokenizer -------------------------------------------------------------------------
def prepare(args: argparse.Namespace) -> Path:
    """The scored workspace (built once; later calls find it complete and return)."""
    ws = args.work / "workspace"
    done = ws / ".prepared"
    if done.is_file():
        return ws
    corpus = args.corpus
    if not (corpus / "manifest.json").is_file():
        sh([sys.executable, str(REPO / "benchmarks" / "corpus" / "build.py"), "--out", str(corpus)])
    sh(cli("init", str(ws), "--corpus", str(corpus / "*.parquet"), "--text-column", "text"))
    from corpus_agents.scoring.catalog import Catalog

    with Catalog(ws) as cat:
        agents = {a.name for a in cat.agents()}
    if "domain" not in agents:
        sh(cli("agent", "add", str(ws), "domain", "--kind", "metadata", "--column", "domain"))
    if "quality" not in agents:
        positives, negatives = quality_examples(corpus, args.work)
        sh(cli("agent", "add", str(ws), "quality", "--kind", "fasttext", "--fit-positive", str(positives),
               "--fit-negative", str(negatives), "--label", "hq", "--bins", "0,0.2,0.4,0.6,0.8,1"))  # fmt: skip
    if "topic" not in agents:
        sh(cli("agent", "add", str(ws), "topic", "--kind", "topic", "--topics", str(args.topics)))
    sh(cli("score", str(ws), "--quiet"))
    done.write_text(datetime.datetime.now().isoformat())
    return ws


#: The quality agent's fit (DCLM-style fastText): positives are curated prose of several domains, negatives the
#: corpus's machine-made or boilerplate kinds, so it learns quality rather than one domain. Reference items are
#: never used; the corpus is `benchmarks/corpus/build.py`'s (`meta.kind` is the file type, `source` the package).
QUALITY_POSITIVE = """meta.kind IN ('novel', 'scripture', 'fortune')
    OR source IN ('gcide', 'devils-dictionary', 'jargon')
    OR (meta.kind IN ('restructuredtext', 'html') AND source IN ('python3.11-doc', 'postgresql-doc-15', 'gnu-standards'))"""
QUALITY_NEGATIVE = """meta.kind IN ('javascript-minified', 'emacs-lisp-compiled', 'gettext-catalog', 'database',
    'html-index', 'changelog', 'debian-changelog', 'copyright', 'license', 'man-page', 'css')"""


def quality_examples(corpus: Path, work: Path, n: int = 5000) -> tuple[Path, Path]:
    """Seeded samples of positive and negative documents for the quality agent, as Parquet files."""
    import duckdb

    out = []
    for name, where in (("positive", QUALITY_POSITIVE), ("negative", QUALITY_NEGATIVE)):
        path = work / f"quality-{name}.parquet"
        duckdb.sql(
            f"COPY (SELECT text FROM read_parquet('{corpus}/*.parquet') WHERE {where} "
            f"ORDER BY hash(text) LIMIT {n}) TO '{path}' (FORMAT parquet)"
        )
        out.append(path)
    return out[0], out[1]


def train_tokenizer(ws: Path, out: Path, vocab_size: int) -> Path:
    """One byte-level BPE for every run (trained on a seeded corpus sample), so losses compare."""
    if (out / "tokenizer.json").is_file():
        return out
    from corpus_agents.scoring.catalog import Catalog
    from corpus_agents.scoring.corpus import sample_texts
    from corpus_agents.training.models import train_tokenizer as train

    with Catalog(ws) as cat:
        texts = sample_texts(cat, 20_000, seed=0)
    train(texts, vocab_size, out)
    return out


# ----- runs ----------------------------------------------------------------------------------------------
def run_finished(run_dir: Path) -> bool:
    log = run_dir / "log.jsonl"
    return log.is_file() and any('"event": "final"' in line for line in log.read_text().splitlines())


def lane_workspace(ws: Path, lane: Path) -> Path:
    """A copy of the scored workspace's catalog for one lane (runs train on their lane's copy)."""
    if not (lane / "catalog.duckdb").is_file():
        lane.mkdir(parents=True, exist_ok=True)
        tmp = lane / "catalog.duckdb.tmp"
        shutil.copyfile(ws / "catalog.duckdb", tmp)
        os.replace(tmp, lane / "catalog.duckdb")
    return lane


def run_jobs(args: argparse.Namespace, ws: Path, config_file: Path, jobs: list[tuple[str, int]]) -> None:
    """Train every (configuration, seed) job not yet finished, `args.lanes` at a time, one thread each."""
    lanes = [lane_workspace(ws, args.work / f"lane-{i}") for i in range(args.lanes)]
    todo = [
        (c, s) for c, s in jobs if not any(run_finished(lane / "runs" / f"{c}-seed{s}") for lane in lanes)
    ]
    todo.sort(key=lambda job: -(2 if job[0] == "random-2x" else 1))  # longest first
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    running: dict[int, tuple[subprocess.Popen, str, float]] = {}
    logs = args.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    failed = []
    while todo or running:
        for i, lane in enumerate(lanes):
            if i in running or not todo:
                continue
            config, seed = todo.pop(0)
            run = f"{config}-seed{seed}"
            started = (lane / "runs" / run / "checkpoints").is_dir()
            other = [ln for ln in lanes if ln != lane and (ln / "runs" / run / "checkpoints").is_dir()]
            if other:  # a killed run resumes in the lane that holds its checkpoints
                todo.insert(0, (config, seed))
                continue
            cmd = cli("train", str(lane), "--config", str(config_file), "--run", run,
                      "--set", f"train.seed={seed}", "--set", f"console.seed={seed}",
                      *[a for o in config_overrides(config, args.steps) for a in ("--set", o)])  # fmt: skip
            if started:
                cmd.append("--resume")
            print(f"[lane {i}] {shlex.join(cmd[3:])}", flush=True)
            out = open(logs / f"{run}.log", "a")  # noqa: SIM115 - closed when the process ends
            running[i] = (
                subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env),
                run,
                time.time(),
            )
        time.sleep(2)
        for i, (proc, run, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[i]
            status = "done" if proc.returncode == 0 else f"FAILED rc={proc.returncode} (see {logs / run}.log)"
            print(f"[lane {i}] {run} {status} in {time.time() - t0:.0f} s", flush=True)
            if proc.returncode != 0:
                failed.append(run)
    if failed:
        raise SystemExit(f"runs failed: {', '.join(failed)}")


def merge_lanes(args: argparse.Namespace, ws: Path, runs: list[str]) -> None:
    """Copy the lanes' runs (tables and run directories) into the scored workspace, replacing older copies."""
    from corpus_agents.scoring.catalog import Catalog
    from corpus_agents.training.runs import ensure_schema

    with Catalog(ws) as cat:
        ensure_schema(cat)
        for lane in sorted(args.work.glob("lane-*")):
            here = [r for r in runs if run_finished(lane / "runs" / r)]
            if not here:
                continue
            cat.execute(f"ATTACH '{lane / 'catalog.duckdb'}' AS lane (READ_ONLY)")
            try:
                with cat.transaction():
                    for table in RUN_TABLES:
                        cat.execute(f"DELETE FROM {table} WHERE run_id IN (SELECT unnest(?))", [here])
                        columns = "*"
                        if table == "selections":  # snapshots move with their run directories
                            columns = (
                                f"* REPLACE (replace(path, '{lane / 'runs'}/', '{ws / 'runs'}/') AS path)"
                            )
                        cat.execute(
                            f"INSERT INTO {table} SELECT {columns} FROM lane.{table} WHERE run_id IN (SELECT unnest(?))",
                            [here],
                        )
            finally:
                cat.execute("DETACH lane")
            for run in here:
                dst = ws / "runs" / run
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(lane / "runs" / run, dst)


# ----- downstream evaluation -----------------------------------------------------------------------------
def load_tasks(refs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each task's probe and held-out (prompt, answer) pairs, exactly as the trainer splits them, and each
    held-out pair's group (SQuAD article title, Jeopardy category; empty for LAMBADA) for drawing same-group
    distractors. Loaded once and shared by every run's evaluation."""
    import pyarrow.parquet as pq

    from corpus_agents.training.references import ReferenceSpec, load_reference

    tasks = []
    for spec in refs:
        reference = load_reference(ReferenceSpec.from_dict(spec))
        group_column = {"squad": "title", "jeopardy": "category"}.get(spec["name"])
        groups: dict[tuple[str, str], str] = {}
        if group_column:
            for row in pq.read_table(spec["path"]).to_pylist():
                pair = (spec["prompt"].format(**row), spec["answer"].format(**row))
                groups.setdefault(pair, str(row[group_column]))
        tasks.append(
            {
                "name": spec["name"],
                "probe": reference.probe,
                "heldout": reference.heldout,
                "groups": [groups.get(p, "") for p in reference.heldout],
            }
        )
    return tasks


def choices_for(answers: list[str], groups: list[str], seed: int = 0, n: int = 4) -> list[list[str]]:
    """For item i: its answer first, then n-1 distinct other answers, same group first, then any (seeded)."""
    rng = np.random.default_rng(seed)
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        by_group[g].append(i)
    out = []
    for i, answer in enumerate(answers):
        picked: list[str] = []
        for pool in (by_group[groups[i]], range(len(answers))):
            for j in rng.permutation(list(pool)):
                a = answers[int(j)]
                if len(picked) < n - 1 and a.strip().lower() != answer.strip().lower() and a not in picked:
                    picked.append(a)
        out.append([answer, *picked])
    return out


def evaluate_run(run_dir: Path, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """LAMBADA last-word accuracy and SQuAD/Jeopardy multiple-choice accuracy of a run's final model (cached)."""
    cached = run_dir / "eval.json"
    final = max((run_dir / "checkpoints").glob("step-*"))
    if cached.is_file():
        result = json.loads(cached.read_text())
        if result.get("checkpoint") == final.name:
            return result
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from corpus_agents.training.models import load_tokenizer
    from corpus_agents.training.references import encode_examples, lm_inputs, reference_loss, token_loss_sums

    hf_logging.disable_progress_bar()
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(final / "model").eval()
    tokenizer = load_tokenizer(str(final / "model"))
    seq_len = model.config.max_position_embeddings
    # The mean answer loss over the probe halves: the only loss a configuration may be chosen by.
    probe = [reference_loss(model, encode_examples(tokenizer, t["probe"], max_length=seq_len)) for t in tasks]
    result: dict[str, Any] = {"checkpoint": final.name, "probe_loss": float(np.mean(probe))}
    with torch.no_grad():
        for task in tasks:
            pairs, groups = task["heldout"], task["groups"]
            if task["name"] == "lambada":
                correct = []
                for batch in encode_examples(tokenizer, pairs, max_length=seq_len, batch_size=32):
                    logits = model(**lm_inputs(model, batch["input_ids"], batch["attention_mask"])).logits
                    targets, mask = batch["labels"][:, 1:], batch["labels"][:, 1:] != -100
                    hit = (logits[:, :-1].argmax(-1) == targets) | ~mask
                    correct.extend(hit.all(-1).tolist())
                result["lambada_acc"] = float(np.mean(correct))
                continue
            options = choices_for([a for _, a in pairs], groups)
            flat = [(p, c) for (p, _), cs in zip(pairs, options) for c in cs]
            scores = []
            for batch in encode_examples(tokenizer, flat, max_length=seq_len, batch_size=32):
                logits = model(**lm_inputs(model, batch["input_ids"], batch["attention_mask"])).logits
                sums, _ = token_loss_sums(logits, batch["labels"])
                scores.extend((-sums).tolist())
            per_item = np.array(scores).reshape(len(pairs), -1)
            chars = np.array([[max(1, len(c)) for c in cs] for cs in options])
            result[f"{task['name']}_mc_acc"] = float(np.mean((per_item / chars).argmax(1) == 0))
    cached.write_text(json.dumps(result))
    return result


# ----- the table -----------------------------------------------------------------------------------------
def run_records(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(round records in order, the final record) of a run's log."""
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    rounds = [r for r in records if r.get("event") in ("round", "final")]
    return rounds, rounds[-1]


def tokens_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """First token count at which a (tokens, loss) curve reaches `target`, linear between points."""
    for (t0, l0), (t1, l1) in zip(curve, curve[1:]):
        if l1 <= target:
            return float(t1) if l0 == l1 else t0 + (t1 - t0) * (l0 - target) / (l0 - l1)
    return None


def mean_std(values: list[float]) -> dict[str, float]:
    arr = np.array(values, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "n": len(arr)}


def summarize(ws: Path, configs: list[str], seeds: list[int], refs: list[dict[str, Any]]) -> dict[str, Any]:
    tasks = [r["name"] for r in refs]
    table: dict[str, Any] = {}
    curves: dict[str, list[tuple[int, float]]] = {}
    for config in configs:
        per_seed = []
        seed_curves = []
        for seed in seeds:
            run_dir = ws / "runs" / f"{config}-seed{seed}"
            rounds, final = run_records(run_dir)
            metrics = {f"{t}_loss": final["heldout_loss"][t] for t in tasks}
            metrics["mean_loss"] = final["heldout_loss_mean"]
            metrics.update({k: v for k, v in evaluate_cached(run_dir).items() if k != "checkpoint"})
            metrics["tokens"] = final["tokens"]
            per_seed.append(metrics)
            seed_curves.append([(r["tokens"], r["heldout_loss_mean"]) for r in rounds])
        table[config] = {k: mean_std([m[k] for m in per_seed]) for k in per_seed[0]}
        table[config]["seeds"] = per_seed
        curves[config] = [(pts[0][0], float(np.mean([p[1] for p in pts]))) for pts in zip(*seed_curves)]
        table[config]["mean_curve"] = curves[config]
    if "random" in table:
        target = table["random"]["mean_loss"]["mean"]
        budget = table["random"]["tokens"]["mean"]
        for config in configs:
            reached = tokens_to_reach(curves[config], target)
            table[config]["tokens_to_random_final"] = reached
            table[config]["tokens_to_random_final_ratio"] = None if reached is None else reached / budget
    return table


def diagnostics(ws: Path, runs: list[str]) -> dict[str, Any]:
    """Why a configuration wins or loses, from what the runs recorded:

    - reward reliability: per (run, round, agent), the probes of each label split in two halves by doc_id;
      the correlation across labels of the two halves' mean rewards (1 = the label ranking the agent learns
      from is signal, 0 = noise), averaged over rounds and runs;
    - greediness: the share of a round's selected documents in its single most common (domain, quality,
      topic) cell, averaged over the rounds after the warm-up.
    """
    from corpus_agents.scoring.catalog import Catalog

    out: dict[str, Any] = {}
    with Catalog(ws) as cat:
        rows = cat.execute(
            """
            WITH p AS (
                SELECT p.run_id, p.round, s.agent, s.label, p.reward, hash(p.doc_id) % 2 AS half
                FROM probes p JOIN scores s USING (doc_id)
                WHERE p.run_id IN (SELECT unnest(?)) AND s.label IS NOT NULL
            ), halves AS (
                SELECT run_id, round, agent, label,
                       avg(reward) FILTER (WHERE half = 0) AS a, avg(reward) FILTER (WHERE half = 1) AS b
                FROM p GROUP BY ALL HAVING count(*) FILTER (WHERE half = 0) >= 2
                                       AND count(*) FILTER (WHERE half = 1) >= 2
            )
            SELECT agent, avg(r) AS reliability, count(*) AS rounds FROM (
                SELECT run_id, round, agent, corr(a, b) AS r FROM halves GROUP BY ALL HAVING count(*) >= 3
            ) WHERE r IS NOT NULL GROUP BY agent ORDER BY agent
            """,
            [runs],
        )
        out["reward_split_half_correlation"] = {a: {"mean": round(r, 3), "rounds": n} for a, r, n in rows}
        greedy: dict[str, list[float]] = defaultdict(list)
        for run_id, path in cat.execute(
            "SELECT run_id, path FROM selections WHERE run_id IN (SELECT unnest(?)) AND round > 0",
            [runs],
        ):
            top = cat.execute(
                f"""SELECT max(n) / sum(n) FROM (SELECT count(*) AS n FROM read_parquet('{path}')
                    JOIN doc_labels USING (doc_id) GROUP BY domain, quality, topic)"""
            )[0][0]
            greedy[run_id.rsplit("-seed", 1)[0]].append(float(top))
        out["top_cell_share"] = {c: round(float(np.mean(v)), 3) for c, v in greedy.items()}
    return out


def evaluate_cached(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "eval.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def markdown(table: dict[str, Any], meta: dict[str, Any], tasks: list[str], diagnosis: dict[str, Any]) -> str:
    def cell(stat: dict[str, float] | None, digits: int = 3, pct: bool = False) -> str:
        if stat is None:
            return "-"
        scale = 100 if pct else 1
        return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"

    accs = [
        k for k in ("lambada_acc", "squad_mc_acc", "jeopardy_mc_acc") if any(k in v for v in table.values())
    ]
    head = ["config", "tokens", *[f"{t} loss" for t in tasks], "mean loss", "probe-half loss",
            *[f"{a} %" for a in accs],
            "tokens to random's final loss"]  # fmt: skip
    lines = [
        "# Selection quality: the paper's ablation table at small scale",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}; machine: {meta['machine']['cpu_model']}, {meta['machine']['cores']} cores, "
        f"{meta['machine']['ram_gb']} GB, no GPU",
        f"- versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}",
        f"- setup: {json.dumps(meta['setup'])}",
        f"- seeds: {meta['seeds']} (mean ± sample std over seeds); held-out halves of the reference tasks",
        "",
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(head) - 1)) + " |",
    ]
    for config, row in table.items():
        ratio = row.get("tokens_to_random_final_ratio")
        cells = [config, f"{row['tokens']['mean']:,.0f}", *[cell(row[f"{t}_loss"]) for t in tasks],
                 cell(row["mean_loss"]), cell(row.get("probe_loss")), *[cell(row.get(a), 1, pct=True) for a in accs],
                 "not reached" if ratio is None else f"{ratio:.2f} x random's budget"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    reliability = ", ".join(
        f"{a} {v['mean']:.2f} ({v['rounds']} rounds)"
        for a, v in diagnosis["reward_split_half_correlation"].items()
    )
    greedy = ", ".join(f"{c} {v:.2f}" for c, v in diagnosis["top_cell_share"].items())
    lines += [
        "",
        f"- reward reliability (split-half correlation of per-label mean rewards, per agent): {reliability}",
        f"- greediness (share of a round's selection in its most common domain x quality x topic cell): {greedy}",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK / "selection-quality")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_WORK / "multidomain" / "corpus")
    parser.add_argument(
        "--configs", nargs="+", default=CONFIG_ORDER + VARIANTS, choices=CONFIG_ORDER + VARIANTS
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--lanes", type=int, default=2, help="runs trained at once (one thread each)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=160, help="steps of the fixed budget (random-2x: twice)")
    parser.add_argument("--every", type=int, default=40, help="U: steps per round")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--probes-per-label", type=int, default=8)
    parser.add_argument("--probe-tokens", type=int, default=128)
    parser.add_argument("--max-examples", type=int, default=300, help="per reference task, half held out")
    parser.add_argument("--topics", type=int, default=8)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    args.work = args.work.expanduser().resolve()
    args.corpus = args.corpus.expanduser().resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.time()

    ws = prepare(args)
    tokenizer = train_tokenizer(ws, args.work / "tokenizer", args.vocab_size)
    config = base_config(args, tokenizer)
    config_file = args.work / "base.yaml"
    import yaml

    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    jobs = [(c, s) for s in args.seeds for c in args.configs]
    run_jobs(args, ws, config_file, jobs)
    runs = [f"{c}-seed{s}" for c, s in jobs]
    merge_lanes(args, ws, runs)

    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(args.lanes) as pool:
        tasks = load_tasks(config["references"])
        list(pool.map(evaluate_run, [ws / "runs" / r for r in runs], [tasks] * len(runs)))

    table = summarize(ws, args.configs, args.seeds, config["references"])
    diagnosis = diagnostics(ws, runs)
    meta = {
        "command": command_line(__file__),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "versions": versions("torch", "transformers", "duckdb", "corpus-agents"),
        "seeds": args.seeds,
        "setup": {k: getattr(args, k) for k in ("preset", "seq_len", "batch_size", "steps", "every", "lr",
                                                 "probes_per_label", "probe_tokens", "max_examples", "topics")},
        "corpus": {k: v for k, v in json.loads((args.corpus / "manifest.json").read_text()).items()
                   if k in ("key", "documents", "text_mb", "domains", "date")},
        "wall_s": round(time.time() - started),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"meta": meta, "table": table, "diagnostics": diagnosis}
    (args.out / "selection_quality.json").write_text(json.dumps(result, indent=1))
    text = markdown(table, meta, [r["name"] for r in config["references"]], diagnosis)
    (args.out / "selection_quality.md").write_text(text)
    print(text)
    report = args.out / "selection_quality"
    sh(cli("report", str(ws), "--out", str(report), "--runs", ",".join(runs)))


if __name__ == "__main__":
    main()
