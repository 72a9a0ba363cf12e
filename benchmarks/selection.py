"""Benchmark: console selection time and peak memory at 1M, 10M and 100M documents, topk and gumbel.

A real catalog on disk per size: synthetic documents (0.1% null texts) in shards of --shard-rows, scored by
three agents (5, 7 and 13 labels; skewed label frequencies, 1% unlabelled by two of them) as real score
parts, one Parquet file per (agent, shard) committed through `Catalog.commit_part`, so that the catalog's
cell statistics are kept as `score` keeps them. Every figure is measured in a fresh process that opens the
catalog and runs one console through two rounds:

1. `console`: a console opened on the catalog (nothing is cached between processes or rounds);
2. `select 1`: quotas over the cell statistics, one streaming pass over `doc_cells`, the snapshot written as
   Parquet, round 1 (first round = console + select 1);
3. record_consumed (the round-1 selection), draw_probes, update with synthetic rewards;
4. `select 2`: round 2, now with seen counts (decay) and learnt weights: what every later round costs.

The budget is 10% of the corpus tokens. DuckDB runs with `SET threads = N` (2 by default, the target's
"2 cores") and its default memory_limit (recorded; the console lowers it to 1 GiB during its calls). Wall
and CPU seconds are both recorded (on a shared machine the wall time moves with the other load), and the
peak RSS of the process (getrusage) after the first round and at the end. Targets (issue 11): 10M first round < 2 s and < 500 MB; 100M first round < 20 s
and later rounds < 10 s, < 2 GB.

    python benchmarks/selection.py [--sizes 1000000,10000000,100000000] [--modes topk,gumbel] [--threads 2]

With `--work DIR --keep` the catalogs stay in DIR and a later run reuses them (restored to their state as
built); `--build-only` builds them and times nothing, so that a timed run can be started on quiet CPUs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from environment import REPO, command_line, cpu_idle, loadavg, machine, versions  # noqa: E402

AGENTS = {"quality": 5, "domain": 7, "topic": 13}
SHARD_ROWS = 100_000


# ----- measurement helpers ---------------------------------------------------------------------------
def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_quiet(max_wait_s: float) -> float:
    """Wait (up to max_wait_s) until the cores are 90% idle, so a timed run has them; the last idle fraction."""
    started = time.perf_counter()
    idle = cpu_idle()
    while idle < 0.9 and time.perf_counter() - started < max_wait_s:
        idle = cpu_idle()
    return idle


class Timer:
    """Wall and CPU seconds of named steps, in order."""

    def __init__(self) -> None:
        self.steps: dict[str, dict[str, float]] = {}

    def __call__(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        wall0, cpu0 = time.perf_counter(), cpu_seconds()
        result = fn(*args, **kwargs)
        self.steps[name] = {"wall_s": time.perf_counter() - wall0, "cpu_s": cpu_seconds() - cpu0}
        return result


# ----- the synthetic catalog ----------------------------------------------------------------------------
def build_catalog(workspace: Path, num_docs: int, shard_rows: int) -> dict[str, Any]:
    """A workspace whose catalog holds `num_docs` documents in shards of `shard_rows`, scored by AGENTS as
    real score parts: one Parquet file per (agent, shard) under parts/, committed with `commit_part` (which
    loads it and recounts the shard's cell statistics in the same transaction), as `score` does. Only the
    shards themselves are synthetic: their documents' rows are inserted, no text is written."""
    from corpus_agents.scoring.catalog import Catalog
    from corpus_agents.scoring.parts import part_path

    started = time.perf_counter()
    commit_s = 0.0
    with Catalog(workspace, create=True, command="benchmarks/selection.py") as cat:
        cat.execute("SET enable_progress_bar = false")
        num_shards = -(-num_docs // shard_rows)
        cat.execute(
            "INSERT INTO shards SELECT s, 'synthetic/shard-' || s || '.parquet', ?, 0, 'synthetic', "
            "?, [8192], 'text', current_timestamp, NULL FROM range(?) t(s)",
            [shard_rows, -(-shard_rows // 8192), num_shards],
        )
        # text_bytes: 200 to ~16,000 (skewed short); 0.1% null texts.
        cat.execute(
            f"""INSERT INTO docs
            SELECT (CAST(i // {shard_rows} AS BIGINT) << 32) | (i % {shard_rows}), i // {shard_rows},
                   i % {shard_rows}, (i % {shard_rows}) // 8192,
                   CAST(200 + 16000 * pow((hash(i, 'len') % 1000003) / 1000003.0, 3) AS INTEGER),
                   hash(i, 'null') % 1000 = 0
            FROM range(?) t(i)""",
            [num_docs],
        )
        for agent, labels in AGENTS.items():
            cat.execute("INSERT INTO agents (name, kind, config) VALUES (?, 'synthetic', '{}')", [agent])
            cat.execute(
                "INSERT INTO agent_labels SELECT ?, i, ? || '_' || i FROM range(?) t(i)",
                [agent, agent, labels],
            )
        cat.execute("CHECKPOINT")
        for shard in range(num_shards):
            rows = min(shard_rows, num_docs - shard * shard_rows)
            for agent, labels in AGENTS.items():
                path = Path(part_path(workspace / "parts", agent, "synthetic0000000", shard))
                path.parent.mkdir(parents=True, exist_ok=True)
                # Skewed labels (label j has frequency ~ sqrt(j+1) - sqrt(j)); 1% unlabelled except `domain`.
                unlabelled = 0 if agent == "domain" else 100
                cat.execute(
                    f"""COPY (
                        SELECT doc_id,
                               CASE WHEN {unlabelled} > 0 AND hash(doc_id, '{agent}', 'null') % {max(unlabelled, 1)} = 0
                                    THEN NULL
                                    ELSE CAST(floor({labels} * pow((hash(doc_id, '{agent}') % 1000003) / 1000003.0, 2))
                                              AS SMALLINT) END AS label,
                               CAST((hash(doc_id, '{agent}', 'score') % 1000003) / 1000003.0 AS FLOAT) AS score
                        FROM (SELECT (CAST({shard} AS BIGINT) << 32) | i AS doc_id FROM range({rows}) t(i))
                    ) TO '{path}' (FORMAT parquet)"""
                )
                t0 = time.perf_counter()
                cat.commit_part(
                    agent,
                    shard,
                    "synthetic",
                    str(path),
                    rows,
                    True,
                    read_s=0,
                    decode_s=0,
                    score_s=0,
                    write_s=0,
                )
                commit_s += time.perf_counter() - t0
        cat.execute("CHECKPOINT")
        tokens = cat.execute("SELECT sum(tokens) FROM cell_stats")
        total_tokens = int(tokens[0][0])
    size = (workspace / "catalog.duckdb").stat().st_size
    parts = sum(f.stat().st_size for f in (workspace / "parts").rglob("*.parquet"))
    return {
        "docs": num_docs,
        "shards": num_shards,
        "shard_rows": shard_rows,
        "tokens": total_tokens,
        "catalog_mb": round(size / 1e6, 1),
        "parts_mb": round(parts / 1e6, 1),
        "build_s": round(time.perf_counter() - started, 1),
        "commit_s_per_part": round(commit_s / (num_shards * len(AGENTS)), 3),
    }


def keep_catalog(workspace: Path, catalog: dict[str, Any]) -> None:
    """Keep a pristine copy of a freshly built catalog file and its build figures beside it, for reuse."""
    shutil.copyfile(workspace / "catalog.duckdb", workspace / "catalog.built.duckdb")
    (workspace / "catalog.built.json").write_text(json.dumps(catalog) + "\n")


def reuse_catalog(workspace: Path, num_docs: int, shard_rows: int) -> dict[str, Any] | None:
    """A catalog kept by `keep_catalog` for this size, restored to its state as built (the runs of an earlier
    benchmark and their snapshots removed); its build figures, or None when there is none to reuse."""
    info = workspace / "catalog.built.json"
    if not info.exists():
        return None
    catalog = json.loads(info.read_text())
    if (catalog["docs"], catalog["shard_rows"]) != (num_docs, shard_rows):
        return None
    for stale in ("catalog.duckdb", "catalog.duckdb.wal"):
        (workspace / stale).unlink(missing_ok=True)
    shutil.copyfile(workspace / "catalog.built.duckdb", workspace / "catalog.duckdb")
    shutil.rmtree(workspace / "selections", ignore_errors=True)
    return {**catalog, "reused": True}


# ----- child: one console through two rounds, in a fresh process ------------------------------------------
def child(workspace: str, mode: str, threads: int, budget: int, run_id: str) -> dict[str, Any]:
    import numpy as np

    from corpus_agents.scoring.catalog import Catalog
    from corpus_agents.training.console import Console, ConsoleConfig
    from corpus_agents.training.selection import read_snapshot

    timer = Timer()
    load0 = loadavg()
    with Catalog(workspace, command="benchmarks/selection.py") as cat:
        cat.execute(f"SET threads = {threads}")
        cat.execute("SET enable_progress_bar = false")
        rss_open = current_rss_mb()
        memory_limit = cat.execute("SELECT current_setting('memory_limit')")[0][0]
        console = timer("console", Console, cat, run_id, ConsoleConfig(mode=mode))
        timer("start", console.start)
        out = Path(workspace) / "selections" / run_id
        first = timer("select 1", console.select, 1, budget, out / "round-1.parquet")
        rss_first_round = peak_rss_mb()
        rows, _ = read_snapshot(first)
        timer("record_consumed", console.record_consumed, rows["doc_id"])
        probes = timer("draw_probes", console.draw_probes, 1)
        ids = probes["doc_id"].to_numpy()
        rewards = np.random.default_rng(0).standard_normal(len(ids)) + (ids % 7 == 0)  # some structure
        timer("update", console.update, 1, dict(zip(ids.tolist(), rewards.tolist())))
        timer("select 2", console.select, 2, budget, out / "round-2.parquet")
        selected = cat.execute(
            "SELECT round, num_docs, tokens FROM selections WHERE run_id = ? ORDER BY round", [run_id]
        )
        console.close()
    return {
        "steps": timer.steps,
        "selected": [{"round": r, "docs": n, "tokens": t} for r, n, t in selected],
        "probes": len(ids),
        "rss_after_open_mb": round(rss_open, 1),
        "duckdb_memory_limit": memory_limit,
        "peak_rss_first_round_mb": round(rss_first_round, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "loadavg_before": load0,
        "loadavg_after": loadavg(),
    }


def run_child(
    workspace: Path, mode: str, threads: int, budget: int, run_id: str, quiet_wait: float
) -> dict[str, Any]:
    idle = wait_quiet(quiet_wait)
    cmd = [sys.executable, __file__, "--child", str(workspace), "--mode", mode, "--threads", str(threads)]
    cmd += ["--budget", str(budget), "--run-id", run_id]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} on {workspace} failed:\n{proc.stdout}{proc.stderr}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "idle_before": round(idle, 3)}


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest run (by its first round: console + select 1, wall), with every run's figures beside it."""
    fastest = min(runs, key=lambda r: r["steps"]["console"]["wall_s"] + r["steps"]["select 1"]["wall_s"])
    return {**fastest, "repeats": runs}


# ----- report -------------------------------------------------------------------------------------------
def markdown(res: dict[str, Any]) -> str:
    m, v = res["machine"], res["versions"]
    lines = [
        "# Console fusion + selection",
        "",
        f"- date: {res['date']}",
        f"- command: `{res['command']}`",
        f"- machine: {m['cpu_model']}, {m['cores']} cores, {m['ram_gb']} GB RAM; DuckDB threads = {res['threads']};"
        f" load average at start {res['loadavg_start']:.2f}, end {res['loadavg_end']:.2f}",
        "- versions: " + ", ".join(f"{k} {x}" for k, x in v.items()),
        "- data: synthetic labels and raw scores of 3 agents (5, 7, 13 labels) in a real catalog file; "
        f"shards of {res['catalogs'][0]['shard_rows']:,} documents, scores committed as real parts; budget {res['budget_fraction']:.0%} of the corpus tokens; "
        f"fastest of {res['repeat']} fresh processes per row",
        "",
        "`console` = opening a console on the catalog (a fresh process: nothing cached); `select` = quotas over"
        " the catalog's cell statistics, one streaming pass over `doc_cells`, the snapshot Parquet written;"
        " first round = console + select 1; round 2 has seen counts and learnt weights. Seconds are wall (CPU"
        " in parentheses).",
        "",
        "| docs | mode | console s | select 1 s | first round s | select 2 s | selected docs "
        "| peak RSS MB (first round / all) "
        "| cores idle before | load before |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in res["results"]:
        s = row["steps"]

        def fmt(*names: str, s: dict[str, Any] = s) -> str:
            wall = sum(s[n]["wall_s"] for n in names)
            cpu = sum(s[n]["cpu_s"] for n in names)
            return f"{wall:.2f} ({cpu:.2f})"

        lines.append(
            f"| {row['docs']:,} | {row['mode']} | {fmt('console')} | {fmt('select 1')} | "
            f"{fmt('console', 'select 1')} | {fmt('select 2')} | {row['selected'][0]['docs']:,} | "
            f"{row.get('peak_rss_first_round_mb', float('nan')):,.0f} / {row['peak_rss_mb']:,.0f} | "
            f"{row['idle_before']:.0%} | {row['loadavg_before']:.2f} |"
        )
    lines += [
        "",
        "Other steps (wall s): "
        + "; ".join(
            f"{row['docs']:,} {row['mode']}: start {row['steps']['start']['wall_s']:.2f}, record_consumed "
            f"{row['steps']['record_consumed']['wall_s']:.2f}, draw_probes {row['steps']['draw_probes']['wall_s']:.2f}"
            f" ({row['probes']} probes), update {row['steps']['update']['wall_s']:.2f}"
            for row in res["results"]
        ),
    ]
    lines += [
        "",
        "Catalogs: "
        + "; ".join(
            f"{c['docs']:,} docs: {c['catalog_mb']} MB + {c['parts_mb']} MB of parts, built in {c['build_s']} s"
            f" ({c['commit_s_per_part']} s per commit of a {c['shard_rows']:,}-document part; not timed above"
            + ("; kept from an earlier build with --keep" if c.get("reused") else "")
            + ")"
            for c in res["catalogs"]
        ),
    ]
    targets = target_lines(res)
    if targets:
        lines += ["", "Targets (issue 11): " + "; ".join(targets)]
    if res.get("scaling"):
        lines += [
            "",
            f"Scaling {res['scaling_sizes']} (time ratio, wall / CPU; the size ratio is linear): "
            + ", ".join(f"{k} {x['wall']:.1f} / {x['cpu']:.1f}" for k, x in res["scaling"].items()),
        ]
    if res.get("extrapolated_1b"):
        lines += [
            "",
            "Extrapolated to 1,000,000,000 documents (linear from the two largest sizes): "
            + "; ".join(
                f"{mode}: first round {x['first_round_s']} s, later round {x['later_round_s']} s, "
                f"peak RSS {x['peak_rss_mb']:,} MB"
                for mode, x in res["extrapolated_1b"].items()
            ),
        ]
    return "\n".join(lines) + "\n"


# (docs, what, limit): the targets of issue 11 (seconds are wall; "all" = the whole child, both rounds).
TARGETS = [
    (10_000_000, "first round s", 2.0),
    (10_000_000, "peak RSS MB (first round)", 500.0),
    (100_000_000, "first round s", 20.0),
    (100_000_000, "later round s", 10.0),
    (100_000_000, "peak RSS MB (first round)", 2000.0),
    (100_000_000, "peak RSS MB (all)", 2000.0),
]


def target_lines(res: dict[str, Any]) -> list[str]:
    """Each target of TARGETS against each mode's row: met, or missed by how much."""
    out = []
    for row in res["results"]:
        s = row["steps"]
        value = {
            "first round s": s["console"]["wall_s"] + s["select 1"]["wall_s"],
            "later round s": s["select 2"]["wall_s"],
            "peak RSS MB (first round)": row["peak_rss_first_round_mb"],
            "peak RSS MB (all)": row["peak_rss_mb"],
        }
        for docs, what, limit in TARGETS:
            if docs == row["docs"]:
                got = value[what]
                verdict = "met" if got < limit else f"missed by {got - limit:,.2f}"
                out.append(f"{docs:,} {row['mode']} {what} {got:,.2f} < {limit:,g}: {verdict}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000000,10000000,100000000")
    parser.add_argument("--shard-rows", type=int, default=SHARD_ROWS)
    parser.add_argument("--modes", default="topk,gumbel")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--budget-fraction", type=float, default=0.1)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--work", default=None, help="where the catalogs go (default: a temporary directory)")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the catalogs in --work, and reuse those kept there by an earlier run (same size and shard rows)",
    )
    parser.add_argument(
        "--build-only", action="store_true", help="build the catalogs (with --keep), time nothing"
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=30.0, help="seconds to wait for idle cores per run"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--run-id", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.mode, args.threads, args.budget, args.run_id)))
        return

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-selection-"))
    res: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command_line(__file__),
        "machine": machine(),
        "versions": versions("duckdb", "pyarrow", "numpy", "corpus-agents"),
        "threads": args.threads,
        "repeat": args.repeat,
        "budget_fraction": args.budget_fraction,
        "loadavg_start": loadavg(),
        "catalogs": [],
        "results": [],
    }
    try:
        for size in [int(s) for s in args.sizes.split(",")]:
            workspace = work / f"ws-{size}"
            catalog = reuse_catalog(workspace, size, args.shard_rows) if args.keep else None
            if catalog is None:
                if workspace.exists():
                    shutil.rmtree(workspace)
                catalog = build_catalog(workspace, size, args.shard_rows)
                if args.keep:
                    keep_catalog(workspace, catalog)
            res["catalogs"].append(catalog)
            if args.build_only:
                continue
            budget = int(catalog["tokens"] * args.budget_fraction)
            for mode in args.modes.split(","):
                runs = [
                    run_child(workspace, mode, args.threads, budget, f"{mode}-{i}", args.quiet_wait)
                    for i in range(args.repeat)
                ]
                row = {"docs": size, "mode": mode, "budget_tokens": budget, **best(runs)}
                res["results"].append(row)
                s = row["steps"]
                print(
                    f"{size:>11,} {mode:6} console {s['console']['wall_s']:.2f}s select1 {s['select 1']['wall_s']:.2f}s"
                    f" select2 {s['select 2']['wall_s']:.2f}s peak RSS {row['peak_rss_first_round_mb']:.0f} / {row['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.build_only:
        print(json.dumps(res["catalogs"]))
        return
    res["loadavg_end"] = loadavg()
    by = {(r["docs"], r["mode"]): r["steps"] for r in res["results"]}
    sizes = sorted({r["docs"] for r in res["results"]})
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        res["scaling_sizes"] = f"{small:,} → {large:,} documents (x{large / small:g})"
        for mode in args.modes.split(","):
            for step in ("console", "select 1", "select 2"):
                res.setdefault("scaling", {})[f"{mode} {step}"] = {
                    clock: by[(large, mode)][step][f"{clock}_s"] / by[(small, mode)][step][f"{clock}_s"]
                    for clock in ("wall", "cpu")
                }
        # The curve, extrapolated to 1B documents: linear in documents from the two largest sizes.
        mid = sizes[-2]
        for mode in args.modes.split(","):
            first = {
                n: by[(n, mode)]["console"]["wall_s"] + by[(n, mode)]["select 1"]["wall_s"]
                for n in (mid, large)
            }
            rss = {
                n: next(r["peak_rss_mb"] for r in res["results"] if (r["docs"], r["mode"]) == (n, mode))
                for n in (mid, large)
            }
            slope = lambda v: (v[large] - v[mid]) / (large - mid)  # noqa: E731
            res.setdefault("extrapolated_1b", {})[mode] = {
                "first_round_s": round(first[large] + slope(first) * (1e9 - large), 1),
                "later_round_s": round(by[(large, mode)]["select 2"]["wall_s"] * 1e9 / large, 1),
                "peak_rss_mb": round(rss[large] + slope(rss) * (1e9 - large)),
            }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "selection.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "selection.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
