"""Benchmark, experiment v3: does the noise-aware console (v2) beat random selection and fixed weights at equal
training tokens and at equal total compute, over paired seeds, with controls?

Experiment v3 is experiment v2 with the `sample` sampler that has no length preference (docs/algorithm.md,
"Selection: sample"). v2's results, made with the per-cell prefix sampler that preferred short documents, stay
as they were in `benchmarks/results/selection_quality_v2{,.json,.md}`. The configurations that never select by
`sample` (UNSAMPLED: random, random-2x, random-eqc, method-paper) are the same runs in both, so v3 carries
their results over from v2 (marked `carried_from`; random-eqc only when the v3 method run of its seed spends the
same compute) rather than training them again, and compares every sampled configuration with its v2 run of
the same seed (the sampler's effect).

One command builds (or reuses) the corpus (`benchmarks/corpus/build.py`), scores it with the real agents
(quality, domain, topic) and two control agents (`noise1`, `noise2`: seeded random labels, 5 each), trains
one byte-level BPE, then trains the same Llama at one token budget under every configuration and seed:

- main configurations (10 paired seeds, every comparison the README states):
  random (uniform selection every round), random-2x (twice the tokens), random-eqc (random at the method's
  total compute: its training steps are the method's of the same seed times the method's compute over its
  training FLOPs, so both finish their LR schedule at equal cost), best-single (the best single real
  agent, chosen as below), fixed (all real agents, theta fixed: `eta_theta = 0`, memories still learnt),
  method (console v2 defaults), method-paper (`console.preset: paper`), method-noise and fixed-noise (the
  real agents plus the two noise agents);
- secondary configurations (3 seeds, marked as such): single-quality, single-domain, single-topic.

Choosing without looking at the held-out halves: the reference tasks are split once, seeded, into probe
halves (rewards) and held-out halves (every reported metric). The single agents run on their own selection
seeds (100, 101, 102), disjoint from the main seeds; the one with the lowest mean probe-half loss there
becomes best-single, which then runs on the main seeds. No choice reads a held-out loss.

Paired seeds: a run of seed s sets `train.seed = console.seed = s`. The trainer seeds the model's
initialisation (`torch.manual_seed(train.seed)` and `build_model(..., seed=train.seed)`) and the data order
from `train.seed`, and the warm-up (round 0, `mode: random`) orders documents by `hash(doc_id, console.seed,
round)`, which does not depend on the agents; so every configuration of seed s starts from the same weights
and trains its first round on the same documents (pinned by tests/benchmarks/test_selection_quality.py).

Held-out loss is evaluated at every round boundary (`rounds.every = steps / 10`: rounds 0..9, then the
final point), with the compute spent so far (training + probes + reference gradients; evaluation is
logged, not charged). Statistics (benchmarks/stats.py), per seed against random of the same seed: tokens and
compute to reach random's final loss (first point after which the curve stays below, linear between
points); paired differences of held-out loss at equal training tokens and at equal total compute (the
other curve interpolated at the budget the shorter one spent), with seeded bootstrap 95% CIs (10,000
resamples), the mean, SD and effect size (mean / SD). A difference whose CI includes 0 is written "not
distinguishable". Two frequency-only baselines are shown next to the losses: the held-out answer tokens'
cross-entropy under the corpus's unigram frequencies (what a model that knows only token frequencies
reaches) and their in-sample unigram entropy (a lower bound no such model reaches).

Each run's result is written, atomically, as it finishes: `benchmarks/results/selection_quality_v3/runs/
<config>-seed<s>.json`. A killed experiment resumes from them (and from the lanes' checkpoints), across
sittings; the table `benchmarks/results/selection_quality_v3.{json,md}` is regenerated from whatever runs
exist, with the seed count of every configuration. The first ablation's results
(`selection_quality.{json,md}`) are kept as they are.

Sizing, preset `cpu` (the default), for a 2-core machine, two lanes of one thread: SIZING below (about 4.2
hours of lanes for the whole table). Preset `gpu` (~22M parameters, 20 tokens per parameter, bf16):
GPU_SIZING below, which also says why the whole table cannot fit 10 minutes of one H200 at that scale. `--tiny` shrinks either preset to seconds (tests).

    python benchmarks/selection_quality.py --out DIR                # the whole table at this checkout, resumable
    python benchmarks/selection_quality.py --out DIR --seeds 0 1 --configs random method     # a part of it
    python benchmarks/selection_quality.py --summary-only           # the committed table from its runs

The committed runs were trained from a frozen copy of the training code (benchmarks/README.md says which);
a run trained by another checkout is not paired with them, so train a table of your own into `--out DIR`.
    python benchmarks/selection_quality.py --preset gpu             # the GPU scale
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
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

from corpus_agents.storage import atomic_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from environment import REPO, command_line, machine, versions  # noqa: E402
from stats import (  # noqa: E402
    NOT_DISTINGUISHABLE,
    bootstrap_ci,
    describe,
    loss_at,
    paired,
    reach,
    unigram_cross_entropy,
    unigram_entropy,
)

#: The paper's full reference sets when a `shared/data/reference` directory sits beside the checkout; without
#: it the sets are built (`reference_dir`).
SHARED_REFERENCE = REPO.parent / "shared" / "data" / "reference"
DEFAULT_WORK = Path(os.environ.get("CORPUS_AGENTS_BENCH_CACHE", "~/.cache/corpus-agents-bench")).expanduser()
RESULTS = REPO / "benchmarks" / "results"
NAME = "selection_quality_v3"
#: Experiment v2 (the prefix sampler): where v3 carries the unsampled runs from and what it compares with.
PREVIOUS = RESULTS / "selection_quality_v2"
#: The configurations that never select by `sample`: their runs are the same in v2 and v3.
UNSAMPLED = ["random", "random-2x", "random-eqc", "method-paper"]
REAL_AGENTS = ["quality", "domain", "topic"]
NOISE_AGENTS = ["noise1", "noise2"]
MAIN_CONFIGS = ["random", "random-2x", "random-eqc", "best-single", "fixed", "method", "method-paper",
                "method-noise", "fixed-noise"]  # fmt: skip
MAIN_SEEDS = list(range(10))
SELECTION_SEEDS = [100, 101, 102]  # the single agents' (secondary) seeds: best-single is chosen on these
MIN_MAIN_SEEDS = 10  # a configuration with fewer seeds is marked secondary in the table

#: Sizing of the `cpu` preset, from one measured run (benchmarks/README.md has the measurement).
SIZING = """Measured on the shared 2-core AMD EPYC (load average 2.5-2.9 from other jobs, i.e. as busy as two
lanes make it): the `tiny` Llama (2048-token vocabulary, seq 128, batch 8) trains at ~6,500 tokens/s on one
thread; a run has ~8 s of start-up, ~0.5 s per held-out evaluation (11 per run) and ~0.037 s per probe of
128 tokens (8 probes per label: ~184 probes a round for the real agents' ~23 labels, ~264 with the controls;
9 probe rounds). With T training tokens per run (random-2x: 2T), the table is
  10 random + 10 random-2x (2T) + 10 best-single + 30 (fixed, method, method-paper) + 20 (+noise)
  + 9 secondary single-agent runs = 99 T-units of training,
  plus fixed costs 10*13.5 + 10*13.5 + 10*36 + 30*76.5 + 20*103.5 + 9*36 = 5,300 lane-seconds.
Five hours on two lanes is 36,000 lane-seconds: 5,300 + 99 * T / 6,500 <= 36,000 gives T <= 2.0M. The default
is 1,600 steps * 1,024 = 1.64M tokens (~18% margin for evaluation and scoring): about 4.2 h of lanes.
random-eqc (added after seeds 0-2 of the rest had landed) trains 1.36 T (the method's compute over its
training FLOPs): 10 * 1.36 T more, about 1 h of lanes."""
#: Sizing of the `gpu` preset (not measured: no GPU was available when it was written).
GPU_SIZING = """~22M parameters (hidden 384, 10 layers, 6 heads, MLP 1152, 8192-token tied vocabulary; N of the
6*N*D rule ~22M), 13,700 steps * 64 * 512 = 449M tokens = 20 tokens per parameter, bf16, probes on the GPU
(the trainer probes with the training model). One run is 6 * 22M * 449M = 6.0e16 FLOPs; the table's ~99
run-units plus ~20% for probes is ~7.2e18 FLOPs: ~2 h at the H200's 989 TFLOPS bf16 dense peak, ~5 h at a
realistic 40% utilisation for a model this small. So the issue's "whole table under 10 minutes on one H200"
cannot hold together with >= 20M parameters and >= 20 tokens per parameter: 10 minutes at 40% is 2.4e17 FLOPs,
four runs. The preset keeps the scale (the point of a GPU run); `--set steps=...` or fewer `--seeds` trade it
for time, and the table says how many tokens per parameter it ran."""

#: Each preset's settings (a `--set key=value` overrides one). `model_overrides` are LlamaConfig fields.
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "model": "tiny", "model_overrides": {}, "seq_len": 128, "batch_size": 8, "steps": 1600, "lr": 3e-3,
        "vocab_size": 2048, "probes_per_label": 8, "probe_tokens": 128, "max_examples": 300, "topics": 8,
        "device": "cpu", "dtype": "fp32", "lanes": 2, "oversample": 1.0,
    },
    "gpu": {
        "model": "small", "lr": 1.5e-3, "seq_len": 512, "batch_size": 64, "steps": 13_700, "vocab_size": 8192,
        "model_overrides": {"hidden_size": 384, "num_hidden_layers": 10, "num_attention_heads": 6,
                            "num_key_value_heads": 6, "intermediate_size": 1152},
        "probes_per_label": 16, "probe_tokens": 256, "max_examples": 1000, "topics": 16,
        "device": "cuda", "dtype": "bf16", "lanes": 4, "oversample": 1.0,
    },
}  # fmt: skip
#: What `--tiny` changes in either preset: a model and budget that run in seconds on a CPU (tests).
TINY = {
    "model": "tiny", "seq_len": 64, "batch_size": 4, "steps": 20, "oversample": 16.0, "vocab_size": 512, "probes_per_label": 2,
    "probe_tokens": 32, "max_examples": 24, "topics": 3, "device": "cpu", "lanes": 2,
    "model_overrides": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                        "num_key_value_heads": 1, "intermediate_size": 64},
}  # fmt: skip


def settings(preset: str, tiny: bool, sets: list[str]) -> dict[str, Any]:
    """A preset's settings, shrunk by `--tiny`, then `--set key=value` (YAML values) applied."""
    import yaml

    out = {**PRESETS[preset], **(TINY if tiny else {})}
    for item in sets:
        key, _, value = item.partition("=")
        if key not in out:
            raise SystemExit(f"--set {key}: not a setting ({', '.join(out)})")
        out[key] = yaml.safe_load(value)
    out["every"] = max(1, out["steps"] // 10)  # 10 rounds, held-out loss at each
    return out


def config_overrides(name: str, steps: int, real: list[str]) -> list[str]:
    """`--set` overrides of a configuration over the base config (`single-<agent>`: that agent alone)."""
    agents = lambda names: f"console.agents=[{','.join(names)}]"  # noqa: E731
    if name.startswith("single-"):
        return [agents([name.removeprefix("single-")])]
    return {
        "random": ["console.mode=random", agents(real)],
        "random-2x": ["console.mode=random", agents(real), f"train.steps={2 * steps}"],
        # `steps` here is equal_compute_steps of the seed's method run
        "random-eqc": ["console.mode=random", agents(real), f"train.steps={steps}"],
        "fixed": [agents(real), "console.eta_theta=0"],
        "method": [agents(real)],
        "method-paper": [agents(real), "console.preset=paper"],
        "method-noise": [agents(real + NOISE_AGENTS)],
        "fixed-noise": [agents(real + NOISE_AGENTS), "console.eta_theta=0"],
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


def references(args: argparse.Namespace, s: dict[str, Any]) -> list[dict[str, Any]]:
    """The reference tasks, probe/held-out split seeded once (seed 0) for every run; `--tiny`: the shipped
    LAMBADA sample only."""
    from corpus_agents.training.reference_sets import TASKS

    if args.tiny:
        return [{"task": "lambada", "max_examples": s["max_examples"]}]
    ref = reference_dir(args.work)
    return [
        {"name": name, "path": str(ref / f"{name}.parquet"), "prompt": TASKS[name].prompt,
         "answer": TASKS[name].answer, "max_examples": s["max_examples"]}
        for name in ("lambada", "squad", "jeopardy")
        if (ref / f"{name}.parquet").is_file()
    ]  # fmt: skip


def base_config(s: dict[str, Any], tokenizer: Path, refs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model": {"preset": s["model"], "seq_len": s["seq_len"], "overrides": s["model_overrides"]},
        "tokenizer": {"path": str(tokenizer)},
        "train": {
            "steps": s["steps"], "batch_size": s["batch_size"], "lr": s["lr"], "warmup_steps": s["steps"] // 10,
            "schedule": "cosine", "log_every": max(1, s["every"] // 2), "seed": 0, "device": s["device"],
            "dtype": s["dtype"],
        },
        "rounds": {"every": s["every"], "oversample": s["oversample"]},
        "rewards": {"method": "gradient", "max_tokens": s["probe_tokens"]},
        "console": {"probes_per_label": s["probes_per_label"]},
        "references": refs,
    }  # fmt: skip


def sh(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    print("+", shlex.join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kwargs)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "corpus_agents.cli", *args]


# ----- corpus, agents, tokenizer -------------------------------------------------------------------------
def prepare(args: argparse.Namespace, s: dict[str, Any]) -> tuple[Path, list[str]]:
    """The scored workspace and its real agents. Agents missing from it are added and scored, so a
    workspace scored before the controls existed gains them. `--tiny`: the demo corpus (a few hundred
    documents of this machine's text) with domain (its `source`) and topic agents."""
    ws = args.work / "workspace"
    corpus = args.corpus
    if args.tiny:
        real = ["domain", "topic"]
        if not (corpus / "manifest.json").is_file():
            from corpus_agents.demo.corpus import build_demo_corpus

            shards = build_demo_corpus(corpus, num_shards=2, max_docs_per_source=60)
            (corpus / "manifest.json").write_text(json.dumps({"documents": "demo", "shards": len(shards)}))
    else:
        real = list(REAL_AGENTS)
        if not (corpus / "manifest.json").is_file():
            sh([sys.executable, str(REPO / "benchmarks" / "corpus" / "build.py"), "--out", str(corpus)])
    if not (ws / "catalog.duckdb").is_file():
        sh(cli("init", str(ws), "--corpus", str(corpus / "*.parquet"), "--text-column", "text"))
    from corpus_agents.scoring.catalog import Catalog

    with Catalog(ws) as cat:
        agents = {a.name for a in cat.agents()}
    added = False
    for name in [*real, *NOISE_AGENTS]:
        if name in agents:
            continue
        added = True
        if name == "domain":
            sh(cli("agent", "add", str(ws), "domain", "--kind", "metadata",
                   "--column", "source" if args.tiny else "domain"))  # fmt: skip
        elif name == "quality":
            positives, negatives = quality_examples(corpus, args.work)
            sh(cli("agent", "add", str(ws), "quality", "--kind", "fasttext", "--fit-positive", str(positives),
                   "--fit-negative", str(negatives), "--label", "hq", "--bins", "0,0.2,0.4,0.6,0.8,1"))  # fmt: skip
        elif name == "topic":
            sample = ["--sample", "400"] if args.tiny else []
            sh(
                cli(
                    "agent", "add", str(ws), "topic", "--kind", "topic", "--topics", str(s["topics"]), *sample
                )
            )
        else:  # the controls: seeded random labels
            seed = NOISE_AGENTS.index(name) + 1
            sh(cli("agent", "add", str(ws), name, "--kind", "noise", "--labels", "5", "--seed", str(seed)))
    if added or not (ws / ".scored").is_file():
        sh(cli("score", str(ws), "--quiet"))
        (ws / ".scored").write_text(datetime.datetime.now().isoformat())
    return ws, real


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
    """A copy of the scored workspace's catalog for one lane (runs train on their lane's copy). The catalog
    stores paths relative to its workspace, so the lane sees the fitted models and score parts through links
    to the scored workspace's (training only reads them)."""
    if not (lane / "catalog.duckdb").is_file():
        lane.mkdir(parents=True, exist_ok=True)
        with atomic_path(lane / "catalog.duckdb") as tmp:
            shutil.copyfile(ws / "catalog.duckdb", tmp)
    for shared in ("models", "parts"):
        if (ws / shared).is_dir() and not (lane / shared).exists():
            (lane / shared).symlink_to((ws / shared).resolve(), target_is_directory=True)
    return lane


def run_name(config: str, seed: int, best: str | None = None) -> str:
    """The run id of a (configuration, seed) job; best-single is its chosen agent's single-agent run."""
    if config == "best-single":
        assert best is not None
        config = f"single-{best}"
    return f"{config}-seed{seed}"


def atomic_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def run_jobs(
    args: argparse.Namespace, ws: Path, config_file: Path, jobs: list[tuple[str, int]], real: list[str]
) -> None:
    """Train every (run configuration, seed) job whose result file is missing, `lanes` at a time (one thread
    each), and write each run's result as it finishes (`collect`)."""
    lanes = [lane_workspace(ws, args.work / f"lane-{i}") for i in range(args.s["lanes"])]
    todo = [(c, s) for c, s in jobs if not result_path(args, f"{c}-seed{s}").is_file()]
    orphans = [f"random-eqc-seed{s}" for c, s in todo if c == "random-eqc" and ("method", s) not in todo
               and not result_path(args, f"method-seed{s}").is_file()]  # fmt: skip
    if orphans:
        raise SystemExit(
            f"{', '.join(orphans)} need the method's run of their seed: add `method` to --configs"
        )
    # seed by seed (a sitting leaves whole seeds behind), the longest run of a seed first, random-eqc last (it
    # needs the method's run of its seed)
    todo.sort(key=lambda job: (job[1], job[0] == "random-eqc", -(2 if job[0] == "random-2x" else 1)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    running: dict[int, tuple[subprocess.Popen, str, int, float]] = {}
    logs = args.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    failed = []
    while todo or running:
        for i, lane in enumerate(lanes):
            # the first job this lane can start: a killed run resumes in the lane that holds its checkpoints,
            # and random-eqc waits for the method's result of its seed
            if i in running:
                continue
            pick = next((k for k, job in enumerate(todo) if ready(args, job, lane, lanes)), None)
            if pick is None:
                continue
            config, seed = todo.pop(pick)
            run = f"{config}-seed{seed}"
            if config == "random-eqc":  # v2's run, now that the method's run of the seed is written
                carry_over(args, [seed])
                if result_path(args, run).is_file():
                    continue
            if run_finished(lane / "runs" / run):  # trained before a kill, not yet collected
                collect(args, lane / "runs" / run, lane, config, seed)
                continue
            started = (lane / "runs" / run / "checkpoints").is_dir()
            steps = args.s["steps"]
            if config == "random-eqc":
                steps = equal_compute_steps(json.loads(result_path(args, f"method-seed{seed}").read_text()))
            cmd = cli("train", str(lane), "--pipeline", str(config_file), "--run", run,
                      "--set", f"train.seed={seed}", "--set", f"console.seed={seed}",
                      *[a for o in config_overrides(config, steps, real) for a in ("--set", o)])  # fmt: skip
            if started:
                cmd.append("--resume")
            print(f"[lane {i}] {shlex.join(cmd[3:])}", flush=True)
            out = open(logs / f"{run}.log", "a")  # noqa: SIM115 - closed when the process ends
            running[i] = (subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env), config, seed,
                          time.time())  # fmt: skip
        if running:
            time.sleep(1)  # polls the lanes; each run ends by itself or fails
        for i, (proc, config, seed, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[i]
            run = f"{config}-seed{seed}"
            status = "done" if proc.returncode == 0 else f"FAILED rc={proc.returncode} (see {logs / run}.log)"
            print(f"[lane {i}] {run} {status} in {time.time() - t0:.0f} s", flush=True)
            if proc.returncode != 0:
                failed.append(run)
                if config == "method":  # its random-eqc cannot be sized
                    todo = [job for job in todo if job != ("random-eqc", seed)]
                    failed.append(f"random-eqc-seed{seed}")
            else:
                collect(args, lanes[i] / "runs" / run, lanes[i], config, seed, wall_s=time.time() - t0)
    if failed:
        raise SystemExit(f"runs failed: {', '.join(failed)}")


def ready(args: argparse.Namespace, job: tuple[str, int], lane: Path, lanes: list[Path]) -> bool:
    """Whether `lane` can start `job` now: no other lane holds its checkpoints, and for random-eqc the method's
    result of its seed is written."""
    config, seed = job
    run = f"{config}-seed{seed}"
    if any(ln != lane and (ln / "runs" / run / "checkpoints").is_dir() for ln in lanes):
        return False
    return config != "random-eqc" or result_path(args, f"method-seed{seed}").is_file()


def equal_compute_steps(method: dict[str, Any]) -> int:
    """random-eqc's training steps: the method's steps times its total compute (training, probes, reference
    gradients) over its training FLOPs, so random trains at the method's cost and finishes its schedule."""
    final, compute = method["curve"][-1], method.get("final_compute") or {}
    if not compute.get("train_flops"):
        raise SystemExit(f"{method['run']} has no compute record, so random-eqc cannot be sized: rerun it")
    return round(final["step"] * final["compute_flops"] / compute["train_flops"])


def result_path(args: argparse.Namespace, run: str) -> Path:
    return args.results / "runs" / f"{run}.json"


def carry_over(args: argparse.Namespace, seeds: list[int] | None = None) -> int:
    """Copy v2's results of the UNSAMPLED configurations (of `seeds`; default: all) that v3 does not have yet,
    marked `carried_from`; random-eqc only once v3's method run of its seed is written and spends the same
    compute (same training steps for random-eqc), else it is trained. Only for the default preset and
    results directory. Returns how many were copied."""
    if args.preset != "cpu" or args.tiny or args.results.resolve() != (RESULTS / NAME).resolve():
        return 0
    copied = 0
    for config in UNSAMPLED:
        for seed, result in sorted(load_results(PREVIOUS).get(config, {}).items()):
            if (seeds is not None and seed not in seeds) or result_path(args, result["run"]).is_file():
                continue
            if config == "random-eqc":
                method = result_path(args, f"method-seed{seed}")
                if (
                    not method.is_file()
                    or equal_compute_steps(json.loads(method.read_text())) != result["curve"][-1]["step"]
                ):
                    continue
            atomic_json(result_path(args, result["run"]), {**result, "carried_from": PREVIOUS.name})
            copied += 1
    return copied


def collect(
    args: argparse.Namespace, run_dir: Path, lane: Path, config: str, seed: int, wall_s: float | None = None
) -> dict[str, Any]:
    """One finished run's result (curve per round with tokens and compute, theta per round, the selection's
    spread per round, probe-half loss and downstream accuracies), written atomically to its result file."""
    from corpus_agents.scoring.catalog import Catalog

    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    rounds = [r for r in records if r.get("event") in ("round", "final")]
    curve = [
        {"round": r["round"], "step": r["step"], "tokens": r["tokens"],
         "compute_flops": (r.get("compute_total") or {}).get("train_flops", 0.0)
         + (r.get("compute_total") or {}).get("probe_flops", 0.0)
         + (r.get("compute_total") or {}).get("reference_flops", 0.0),
         "heldout": r["heldout_loss"], "mean": r["heldout_loss_mean"], "theta": r.get("theta", {})}
        for r in rounds
    ]  # fmt: skip
    with Catalog(lane) as cat:
        spread = selection_spread(cat, run_dir.name)
        console = console_diagnostics(cat, run_dir.name)
    result = {
        "run": run_dir.name, "config": config, "seed": seed, "curve": curve,
        "selection": spread, "console": console,
        "final_compute": rounds[-1].get("compute_total"), "wall_s": None if wall_s is None else round(wall_s),
        "git": args.git, **evaluate_run(run_dir, args.tasks),
    }  # fmt: skip
    atomic_json(result_path(args, run_dir.name), result)
    return result


def selection_spread(cat: Any, run: str) -> list[dict[str, Any]]:
    """Per round, the selection's entropy over cells, its largest cell's share, and how many documents and
    (estimated) tokens it took: tokens per document show which lengths a selection favours."""
    rows = cat.execute(
        "SELECT round, cell_entropy, top_cell_share, num_docs, tokens FROM selections WHERE run_id = ? "
        "ORDER BY round",
        [run],
    )
    return [
        {"round": r, "cell_entropy": e, "top_cell_share": t, "num_docs": n, "tokens": k}
        for r, e, t, n, k in rows
    ]


def console_diagnostics(cat: Any, run: str) -> list[dict[str, Any]]:
    """Per round and agent, what the console measured: theta after the round, the agent's advantage over
    random selection with its standard error, and the split-half reliability of its label effects (console v2;
    the paper's preset records theta and its reward only, random none of them)."""
    rows = cat.execute(
        "SELECT round, agent, theta, reward, reward_se, reliability FROM collab_weights WHERE run_id = ? "
        "ORDER BY round, agent",
        [run],
    )
    return [
        {"round": r, "agent": a, "theta": t, "advantage": adv, "advantage_se": se, "reliability": rel}
        for r, a, t, adv, se, rel in rows
    ]


def backfill(args: argparse.Namespace) -> None:
    """Add the console diagnostics and the selections' document counts to run results written before they
    were recorded, from the lane that trained each run. A lane whose catalog a training run holds is left
    for a later call."""
    from corpus_agents.errors import WorkspaceBusyError
    from corpus_agents.scoring.catalog import Catalog

    added, busy = 0, set()
    for path in sorted((args.results / "runs").glob("*.json")):
        result = json.loads(path.read_text())
        if "console" in result and all("num_docs" in x for x in result["selection"]):
            continue
        # the lane that finished the run (a run killed before its first checkpoint may have a folder in another)
        lanes = [p.parents[1] for p in args.work.glob(f"lane-*/runs/{result['run']}") if run_finished(p)]
        if len(lanes) != 1 or lanes[0] in busy:
            continue
        try:
            with Catalog(lanes[0], read_only=True) as cat:
                result["console"] = console_diagnostics(cat, result["run"])
                result["selection"] = selection_spread(cat, result["run"])
        except WorkspaceBusyError:
            busy.add(lanes[0])
            continue
        atomic_json(path, result)
        added += 1
    if added or busy:
        print(f"console diagnostics and document counts added to {added} run results"
              + (f"; {len(busy)} busy lane(s) left for a later --summary-only" if busy else ""))  # fmt: skip


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
        name = spec.get("name") or spec["task"]
        group_column = {"squad": "title", "jeopardy": "category"}.get(name)
        groups: dict[tuple[str, str], str] = {}
        if group_column and "path" in spec:
            for row in pq.read_table(spec["path"]).to_pylist():
                pair = (spec["prompt"].format(**row), spec["answer"].format(**row))
                groups.setdefault(pair, str(row[group_column]))
        tasks.append(
            {
                "name": name,
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
def load_results(results: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """Every run result written so far: run configuration -> seed -> result."""
    out: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for path in sorted((results / "runs").glob("*.json")):
        r = json.loads(path.read_text())
        out[r["config"]][r["seed"]] = r
    return out


def best_single(
    results: dict[str, dict[int, dict[str, Any]]], real: list[str], seeds: list[int] = SELECTION_SEEDS
) -> str | None:
    """The real agent whose single-agent runs on the selection seeds have the lowest mean probe-half loss
    (never a held-out loss); None until every single agent has a run there."""
    means = {}
    for agent in real:
        runs = [results.get(f"single-{agent}", {}).get(s) for s in seeds]
        if any(r is None for r in runs):
            return None
        means[agent] = float(np.mean([r["probe_loss"] for r in runs]))  # type: ignore[index]
    return min(means, key=means.__getitem__) if means else None


def curve(result: dict[str, Any], x: str) -> tuple[list[float], list[float]]:
    return [p[x] for p in result["curve"]], [p["mean"] for p in result["curve"]]


def doc_tokens(result: dict[str, Any]) -> float:
    """Tokens per selected document over a run's rounds after the warm-up (NaN for a result without counts)."""
    rounds = result["selection"][1:]
    if not rounds or not all(x.get("num_docs") for x in rounds):
        return float("nan")
    return sum(x["tokens"] for x in rounds) / sum(x["num_docs"] for x in rounds)


def summarize(
    results: dict[str, dict[int, dict[str, Any]]],
    real: list[str],
    selection_seeds: list[int] = SELECTION_SEEDS,
) -> dict[str, Any]:
    """Rows per configuration (mean ± SD over seeds, seed counts, secondary marks), per-seed tokens and
    compute to reach random's final loss, the paired comparisons, and where theta put the controls."""
    best = best_single(results, real, selection_seeds)
    rows: dict[str, dict[int, dict[str, Any]]] = {}
    for config in MAIN_CONFIGS:
        key = f"single-{best}" if config == "best-single" and best else config
        got = {s: r for s, r in results.get(key, {}).items() if s not in selection_seeds}
        if got:
            rows[config] = got
    for agent in real:
        got = {s: r for s, r in results.get(f"single-{agent}", {}).items() if s in selection_seeds}
        if got:
            rows[f"single-{agent}"] = got

    def stat(values: list[float]) -> dict[str, float]:
        arr = np.asarray(values, dtype=float)
        return {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if len(arr) > 1 else float("nan")}

    random = rows.get("random", {})
    table: dict[str, Any] = {}
    for config, runs in rows.items():
        finals = [r["curve"][-1] for r in runs.values()]
        row: dict[str, Any] = {
            "seeds": sorted(runs), "n": len(runs), "secondary": len(runs) < MIN_MAIN_SEEDS,
            "tokens": stat([f["tokens"] for f in finals]), "compute_flops": stat([f["compute_flops"] for f in finals]),
            "mean_loss": stat([f["mean"] for f in finals]),
            "task_loss": {t: stat([f["heldout"][t] for f in finals]) for t in finals[0]["heldout"]},
            "probe_loss": stat([r["probe_loss"] for r in runs.values()]),
            "accuracy": {k: stat([r[k] for r in runs.values() if k in r])
                         for k in ("lambada_acc", "squad_mc_acc", "jeopardy_mc_acc") if all(k in r for r in runs.values())},
            "top_cell_share": stat([np.mean([x["top_cell_share"] for x in r["selection"][1:]] or [np.nan])
                                    for r in runs.values()]),
            "doc_tokens": stat([doc_tokens(r) for r in runs.values()]),
        }  # fmt: skip
        if config == "best-single":
            row["agent"] = best
        reach_tokens, reach_compute = {}, {}
        for seed, r in runs.items():
            if seed not in random:
                continue
            target = random[seed]["curve"][-1]
            at_t = reach(*curve(r, "tokens"), target["mean"])
            at_c = reach(*curve(r, "compute_flops"), target["mean"])
            reach_tokens[seed] = None if at_t is None else at_t / target["tokens"]
            reach_compute[seed] = None if at_c is None else at_c / target["compute_flops"]
        if reach_tokens:
            row["to_random_final"] = {"tokens_ratio": reach_tokens, "compute_ratio": reach_compute}
            for name, per_seed in (("tokens_ratio", reach_tokens), ("compute_ratio", reach_compute)):
                got = [v for v in per_seed.values() if v is not None]
                row["to_random_final"][f"{name}_mean"] = float(np.mean(got)) if got else None
                row["to_random_final"][f"{name}_ci95"] = list(bootstrap_ci(got)) if len(got) > 1 else None
                row["to_random_final"][f"{name}_not_reached"] = len(per_seed) - len(got)
        measured = console_summary(list(runs.values()))
        if measured:
            row["console"] = measured
        noise = [a for a in NOISE_AGENTS if all(a in p["theta"] for r in runs.values() for p in r["curve"])]
        if noise:
            rounds = min(len(r["curve"]) for r in runs.values())
            row["noise_theta"] = {
                a: [float(np.mean([r["curve"][i]["theta"][a] for r in runs.values()])) for i in range(rounds)]
                for a in noise
            }
        table[config] = row
    comparisons = []
    for a, b in COMPARISONS:
        if a in rows and b in rows:
            comparisons.append({"a": a, "b": b, **compare(rows[a], rows[b])})
    carried: dict[str, list[int]] = {}  # configuration -> the seeds whose runs were carried over
    for config, runs in rows.items():
        for seed, r in sorted(runs.items()):
            if r.get("carried_from"):
                carried.setdefault(config, []).append(seed)
    return {
        "best_single": best,
        "selection_seeds": selection_seeds,
        "table": table,
        "comparisons": comparisons,
        "carried": carried,
    }


def against(
    results: dict[str, dict[int, dict[str, Any]]],
    previous: dict[str, dict[int, dict[str, Any]]],
    real: list[str],
    selection_seeds: list[int] = SELECTION_SEEDS,
) -> list[dict[str, Any]]:
    """Each sampled configuration against its run of the previous experiment (v2's prefix sampler) on the same
    seeds: the sampler's effect, with the tokens per selected document of both."""
    best = best_single(results, real, selection_seeds)
    out = []
    for config in MAIN_CONFIGS:
        if config in UNSAMPLED:
            continue
        key = f"single-{best}" if config == "best-single" and best else config
        now = {s: r for s, r in results.get(key, {}).items() if s not in selection_seeds}
        then = {s: r for s, r in previous.get(key, {}).items() if s in now}
        if then:
            seeds = sorted(then)
            out.append({"config": config, "seeds": seeds, **compare({s: now[s] for s in seeds}, then),
                        "doc_tokens": float(np.mean([doc_tokens(now[s]) for s in seeds])),
                        "doc_tokens_previous": float(np.mean([doc_tokens(then[s]) for s in seeds]))})  # fmt: skip
    return out


def console_summary(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Per agent, over the runs that recorded console diagnostics: mean theta after the last round, each run's
    t of its advantage over random across rounds (mean, min, max over runs), mean split-half reliability and
    the share of rounds whose advantage is at least 2 of the round's standard errors from 0 (rounds after the
    warm-up); and the selection's mean cell entropy over those rounds. None when no run measured an advantage
    (random and the paper's preset do not; nor results from before the diagnostics)."""
    runs = [r for r in runs if any(measured(c) for c in r.get("console", []))]
    if not runs:
        return None
    agents: dict[str, dict[str, Any]] = {}
    for agent in sorted({c["agent"] for r in runs for c in r["console"]}):
        rows = [[c for c in r["console"] if c["agent"] == agent] for r in runs]
        later = [c for rs in rows for c in rs if c["round"] > 0]
        rel = [c["reliability"] for c in later if c["reliability"] is not None]
        z = [abs(c["advantage"]) / c["advantage_se"] for c in later if measured(c)]
        t = [x for x in (advantage_t(rs) for rs in rows) if x is not None]
        agents[agent] = {
            "final_theta": float(np.mean([rs[-1]["theta"] for rs in rows if rs])),
            "t": {"mean": float(np.mean(t)), "min": float(min(t)), "max": float(max(t))} if t else None,
            "reliability": float(np.mean(rel)) if rel else None,
            "share_z2": float(np.mean([v >= 2 for v in z])) if z else None,
            "rounds": len(later),
        }
    entropy = [
        x["cell_entropy"] for r in runs for x in r["selection"][1:] if x.get("cell_entropy") is not None
    ]
    return {"n": len(runs), "agents": agents, "cell_entropy": float(np.mean(entropy)) if entropy else None}


def measured(row: dict[str, Any]) -> bool:
    """Whether a console diagnostics row measured an advantage (agent_signal's `reward_se > 0`)."""
    return row["advantage"] is not None and (row["advantage_se"] or 0) > 0


def advantage_t(rows: list[dict[str, Any]]) -> float | None:
    """One run's t of an agent's advantage over random across its measured rounds (runs.sql's agent_signal)."""
    adv = np.array([c["advantage"] for c in rows if measured(c)], dtype=float)
    if len(adv) < 3 or adv.std(ddof=1) == 0:
        return None
    return float(adv.mean() / (adv.std(ddof=1) / math.sqrt(len(adv))))


#: The comparisons the README states, (a, b): a - b in held-out loss (negative: a is better).
COMPARISONS = [
    ("method", "random"), ("method", "random-eqc"), ("method", "random-2x"), ("method", "method-paper"),
    ("method", "fixed"),
    ("method-noise", "fixed-noise"), ("method", "best-single"), ("best-single", "random"), ("fixed", "random"),
    ("method-paper", "random"), ("random-2x", "random"),
    ("method-noise", "method"), ("fixed-noise", "fixed"), ("method-noise", "random"), ("fixed-noise", "random"),
]  # fmt: skip


def compare(a: dict[int, dict[str, Any]], b: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Paired differences a - b of the mean held-out loss: at the end of each run, at equal training tokens
    and at equal total compute (both curves read at the budget the shorter of the two spent)."""
    out: dict[str, Any] = {}
    for x, name in (("tokens", "equal_tokens"), ("compute_flops", "equal_compute")):
        la, lb = {}, {}
        for seed in set(a) & set(b):
            xa, ya = curve(a[seed], x)
            xb, yb = curve(b[seed], x)
            budget = min(xa[-1], xb[-1])
            la[seed], lb[seed] = loss_at(xa, ya, budget), loss_at(xb, yb, budget)
        out[name] = paired(la, lb)
    out["final"] = paired({s: r["curve"][-1]["mean"] for s, r in a.items()},
                          {s: r["curve"][-1]["mean"] for s, r in b.items()})  # fmt: skip
    return out


def baseline_entropy(
    refs: list[dict[str, Any]], tokenizer: Path, ws: Path, corpus_docs: int = 5000
) -> tuple[dict[str, float], dict[str, float]]:
    """Per task and pooled, two unigram baselines (nats) of the held-out answers' tokens under the runs'
    tokenizer: the entropy of those tokens' own distribution (an in-sample lower bound: on a few hundred
    answers it sits far below what any frequency-only model reaches), and their cross-entropy under the token
    frequencies of a seeded sample of `corpus_docs` corpus documents (add-one smoothed): the loss of a model
    that knows only how often each token occurs in its training text. A model past the second has learnt
    more than token frequencies."""
    import corpus_agents
    from corpus_agents.config import ReferenceSpec
    from corpus_agents.training.models import load_tokenizer
    from corpus_agents.training.references import load_reference

    tok = load_tokenizer(str(tokenizer))
    with corpus_agents.open(ws) as workspace:
        texts = workspace.sql(
            f"SELECT {workspace.text_column} AS text FROM documents WHERE {workspace.text_column} IS NOT NULL "
            f"USING SAMPLE {int(corpus_docs)} ROWS (reservoir, 0)"
        ).arrow()
        texts = (texts.read_all() if hasattr(texts, "read_all") else texts)["text"].to_pylist()
    train_ids = [i for ids in tok(texts, add_special_tokens=False)["input_ids"] for i in ids]
    entropy, corpus, pooled = {}, {}, []
    for spec in refs:
        reference = load_reference(ReferenceSpec.from_dict(spec))
        ids = [
            i for _, answer in reference.heldout for i in tok(answer, add_special_tokens=False)["input_ids"]
        ]
        name = spec.get("name") or spec["task"]
        entropy[name] = unigram_entropy(ids)
        corpus[name] = unigram_cross_entropy(train_ids, ids, len(tok))
        pooled += ids
    entropy["pooled"] = unigram_entropy(pooled)
    corpus["pooled"] = unigram_cross_entropy(train_ids, pooled, len(tok))
    return entropy, corpus


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    def ms(s: dict[str, float], digits: int = 3) -> str:
        if np.isnan(s["mean"]):
            return "-"
        return f"{s['mean']:.{digits}f}" + ("" if np.isnan(s["sd"]) else f" ± {s['sd']:.{digits}f}")

    table = summary["table"]
    base = meta["unigram_entropy"]
    lines = [
        "# Selection quality v3: console v2 vs random and fixed weights, paired seeds, controls, the unbiased sampler",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}; machine: {meta['machine']['cpu_model']}, {meta['machine']['cores']} cores, "
        f"{meta['machine']['ram_gb']} GB; preset {meta['preset']}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}",
        f"- setup: {json.dumps(meta['settings'])}",
        "- frequency-only baseline, the held-out answer tokens' cross-entropy under the corpus's unigram "
        "frequencies (nats; a model below it has learnt more than token frequencies): "
        + ", ".join(f"{k} {v:.3f}" for k, v in meta.get("unigram_corpus", {}).items()),
        "- in-sample unigram entropy of the held-out answer tokens (nats; a lower bound that no frequency-only "
        "model reaches on a few hundred answers): " + ", ".join(f"{k} {v:.3f}" for k, v in base.items()),
        f"- best single agent (lowest probe-half loss on seeds {summary['selection_seeds']}): {summary['best_single']}",
        f"- configurations with fewer than {MIN_MAIN_SEEDS} seeds are marked *secondary*; mean ± SD over seeds",
        "- tokens per selected doc: the selections' estimated tokens ÷ their documents, rounds after the "
        "warm-up; random's is what a selection without a length preference takes",
        *(
            [
                f"- carried over from {PREVIOUS.name} (they never select by `sample`, so they are the same runs): "
                + "; ".join(
                    f"{c} seeds {', '.join(map(str, seeds))}" for c, seeds in summary["carried"].items()
                )
            ]
            if summary.get("carried")
            else []
        ),
        "",
    ]
    tasks = next(iter(table.values()))["task_loss"] if table else {}
    head = ["config", "seeds", "tokens", "compute (FLOPs)", *[f"{t} loss" for t in tasks], "mean loss",
            "probe-half loss", "top cell share", "tokens per selected doc"]  # fmt: skip
    lines += ["| " + " | ".join(head) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(head) - 1)) + " |"]
    for config, row in table.items():
        name = (
            config
            + (f" ({row['agent']})" if row.get("agent") else "")
            + (" *secondary*" if row["secondary"] else "")
        )
        cells = [name, str(row["n"]), f"{row['tokens']['mean']:,.0f}", f"{row['compute_flops']['mean']:.3g}",
                 *[ms(row["task_loss"][t]) for t in tasks], ms(row["mean_loss"]), ms(row["probe_loss"]),
                 ms(row["top_cell_share"], 2), ms(row["doc_tokens"], 0)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Paired differences of mean held-out loss (a - b; negative: a is better), bootstrap 95% CI over seeds",
        "",
        f'A difference whose CI includes 0 reads "{NOT_DISTINGUISHABLE}". d = mean / SD of the paired differences.',
        "",
        "| a | b | at equal training tokens | at equal total compute | final (each at its own budget) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c in summary["comparisons"]:
        lines.append(f"| {c['a']} | {c['b']} | {describe(c['equal_tokens'])} | {describe(c['equal_compute'])} "
                     f"| {describe(c['final'])} |")  # fmt: skip
    lines += ["", "## Tokens and compute to reach random's final loss (per seed, ÷ random's budget)", ""]
    lines += ["| config | tokens: mean [95% CI] | compute: mean [95% CI] | not reached | per seed (tokens / compute) |",
              "| --- | --- | --- | ---: | --- |"]  # fmt: skip
    for config, row in table.items():
        r = row.get("to_random_final")
        if not r or config == "random":
            continue

        def ci(name: str, r: dict[str, Any] = r) -> str:
            if r[f"{name}_mean"] is None:
                return "not reached"
            bounds = r[f"{name}_ci95"]
            return f"{r[f'{name}_mean']:.2f}" + (f" [{bounds[0]:.2f}, {bounds[1]:.2f}]" if bounds else "")

        per_seed = ", ".join(
            f"{s}: " + ("-" if t is None else f"{t:.2f}") + " / " + ("-" if r["compute_ratio"][s] is None
                                                                    else f"{r['compute_ratio'][s]:.2f}")
            for s, t in sorted(r["tokens_ratio"].items())
        )  # fmt: skip
        lines.append(f"| {config} | {ci('tokens_ratio')} | {ci('compute_ratio')} | "
                     f"{r['tokens_ratio_not_reached']} | {per_seed} |")  # fmt: skip
    if summary.get("against_previous"):
        lines += [
            "",
            f"## The sampler's effect: each sampled configuration against its {PREVIOUS.name} run (prefix sampler), "
            "same seeds (a - b: this experiment's run minus the previous one's)",
            "",
            "| config | seeds | at equal training tokens | final | tokens per selected doc (now / then) |",
            "| --- | --- | --- | --- | ---: |",
        ]
        for c in summary["against_previous"]:
            lines.append(f"| {c['config']} | {', '.join(map(str, c['seeds']))} | {describe(c['equal_tokens'])} "
                         f"| {describe(c['final'])} | {c['doc_tokens']:.0f} / {c['doc_tokens_previous']:.0f} |")  # fmt: skip
    measured = {c: row["console"] for c, row in table.items() if "console" in row}
    if measured:
        lines += [
            "",
            "## What the console measured (rounds after the warm-up, over the seeds that recorded it)",
            "",
            "t: per run, the agent's mean advantage over random selection divided by its standard error across "
            "the run's rounds (|t| below 2: no signal shown), mean [min, max] over seeds; reliability: split-half "
            "reliability of its label effects, mean over rounds and seeds; |adv| ≥ 2 se: share of rounds whose "
            "advantage is at least two of that round's standard errors from 0 (0.05 if those were calibrated); "
            "cell entropy: the selection's entropy over cells (nats).",
            "",
            "| config | seeds | cell entropy | agent | final theta | t | reliability | \\|adv\\| ≥ 2 se |",
            "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
        ]

        def num(v: float | None, digits: int = 2) -> str:
            return "-" if v is None else f"{v:.{digits}f}"

        for config, m in measured.items():
            for agent, a in m["agents"].items():
                t = (
                    "-"
                    if a["t"] is None
                    else f"{a['t']['mean']:+.1f} [{a['t']['min']:+.1f}, {a['t']['max']:+.1f}]"
                )
                lines.append(f"| {config} | {m['n']} | {num(m['cell_entropy'])} | {agent} | {a['final_theta']:.3f} "
                             f"| {t} | {num(a['reliability'])} | {num(a['share_z2'])} |")  # fmt: skip
    noise = {c: row["noise_theta"] for c, row in table.items() if "noise_theta" in row}
    if noise:
        lines += ["", "## Where theta put the controls (mean over seeds, per round)", ""]
        for config, agents in noise.items():
            for agent, values in agents.items():
                lines.append(f"- {config}, {agent}: " + " → ".join(f"{v:.3f}" for v in values))
    return "\n".join(lines) + "\n"


def write_table(args: argparse.Namespace, real: list[str], meta: dict[str, Any]) -> str:
    """Regenerate the table (selection_quality_v3{,_gpu}.{json,md}) from every run result written so far, with
    each sampled configuration against its v2 run of the same seed when v2's results are there."""
    results = load_results(args.results)
    summary = summarize(results, real, args.selection_seeds)
    if (
        args.preset == "cpu"
        and not args.tiny
        and PREVIOUS.resolve() != args.results.resolve()
        and PREVIOUS.is_dir()
    ):
        summary["against_previous"] = against(results, load_results(PREVIOUS), real, args.selection_seeds)
    text = markdown(summary, meta)
    atomic_json(args.out / f"{args.results.name}.json", {"meta": meta, **summary})
    (args.out / f"{args.results.name}.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--tiny", action="store_true", help="seconds-sized runs on the demo corpus (tests)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a preset setting ({', '.join(PRESETS['cpu'])})")  # fmt: skip
    parser.add_argument(
        "--work", type=Path, default=None, help="default: the cache's selection-quality-v3-PRESET"
    )
    parser.add_argument("--corpus", type=Path, default=None, help="default: the cache's multidomain corpus")
    parser.add_argument("--configs", nargs="+", default=MAIN_CONFIGS, choices=MAIN_CONFIGS)
    parser.add_argument("--seeds", nargs="+", type=int, default=MAIN_SEEDS)
    parser.add_argument("--selection-seeds", nargs="+", type=int, default=SELECTION_SEEDS)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the table and the run results go")
    parser.add_argument("--summary-only", action="store_true", help="regenerate the table; train nothing")
    args = parser.parse_args(argv)
    if set(args.seeds) & set(args.selection_seeds):
        parser.error("--seeds and --selection-seeds must not share a seed (choices are made on the latter)")
    args.s = settings(args.preset, args.tiny, args.sets)
    tag = args.preset + ("-tiny" if args.tiny else "")
    args.work = (args.work or DEFAULT_WORK / f"selection-quality-v3-{tag}").expanduser().resolve()
    args.corpus = args.corpus or (
        args.work / "corpus" if args.tiny else DEFAULT_WORK / "multidomain" / "corpus"
    )
    args.corpus = args.corpus.expanduser().resolve()
    args.out = args.out.expanduser().resolve()
    args.results = args.out / NAME if args.preset == "cpu" else args.out / f"{NAME}_{args.preset}"
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.time()

    carry_over(args)
    ws, real = prepare(args, args.s)
    tokenizer = train_tokenizer(ws, args.work / "tokenizer", args.s["vocab_size"])
    refs = references(args, args.s)
    config = base_config(args.s, tokenizer, refs)
    config_file = args.work / "base.yaml"
    import yaml

    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    meta = {
        "command": command_line(__file__),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "versions": versions("torch", "transformers", "duckdb", "corpus-agents"),
        "preset": tag,
        "settings": args.s,
    }
    meta["unigram_entropy"], meta["unigram_corpus"] = baseline_entropy(refs, tokenizer, ws)
    if not args.summary_only:
        args.tasks = load_tasks(refs)
        args.git = meta["versions"]["git"]  # the code each run was made with, recorded in its result
        # Selection first: the single agents on their own seeds; best-single then runs on the main seeds.
        singles = [(f"single-{a}", s) for a in real for s in args.selection_seeds]
        if "best-single" in args.configs:
            run_jobs(args, ws, config_file, singles, real)
        best = best_single(load_results(args.results), real, args.selection_seeds)
        jobs = [(c if c != "best-single" else f"single-{best}", s) for s in args.seeds for c in args.configs
                if c != "best-single" or best]  # fmt: skip
        run_jobs(args, ws, config_file, jobs, real)
    backfill(args)
    meta["wall_s"] = round(time.time() - started)
    print(write_table(args, real, meta))


if __name__ == "__main__":
    main()
