"""How long a reader waits for the catalog while `corpus-agents score` writes it (issue 11, "looking while
working"; design in docs/architecture.md, "Reading while a run is going").

Builds a workspace of many small shards with two metadata agents (cheap scoring, so commits come fast and
often: the hardest case for readers), starts `corpus-agents score --workers 1` in a child process, and
meanwhile, in this process, opens the catalog read-only, runs what `status` reads plus a query over
`doc_labels`, and closes it, again and again until the run ends. Records each read's wall seconds (open to
close) and the same read on the idle workspace afterwards, and the score run's wall time. The target: every
read within a second. Writes live_read.json and live_read.md to --out.

    python benchmarks/live_read.py                      # 600 shards x 50 documents
    python benchmarks/live_read.py --shards 100         # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from environment import command_line, loadavg, machine, versions  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def build_workspace(root: Path, shards: int, rows: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from corpus_agents.scoring.agents.metadata import MetadataAgent
    from corpus_agents.scoring.catalog import Catalog
    from corpus_agents.scoring.corpus import register_corpus

    sources = ["web", "code", "books"]
    for s in range(shards):
        path = root / "corpus" / f"shard-{s:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        texts = [f"document {s}-{i} " * 8 for i in range(rows)]
        pq.write_table(pa.table({"text": texts, "source": [sources[i % 3] for i in range(rows)]}), path)
    with Catalog(root / "ws", create=True) as cat:
        register_corpus(cat, [str(root / "corpus" / "*.parquet")], "text")
        for name in ("domain", "origin"):
            cat.add_agent(MetadataAgent(name, {"column": "source", "labels": ["books", "code", "other"]}))
    return root / "ws"


def read_once(ws: Path) -> float:
    from corpus_agents.scoring.catalog import Catalog

    started = time.perf_counter()
    with Catalog(ws, read_only=True) as cat:
        cat.run("catalog.sql", "status_agents")
        cat.query("SELECT domain, count(*) FROM doc_labels GROUP BY ALL")
    return time.perf_counter() - started


def summary(waits: list[float]) -> dict[str, float]:
    ordered = sorted(waits)
    return {
        "reads": len(ordered),
        "p50_s": round(statistics.median(ordered), 4),
        "p95_s": round(ordered[int(0.95 * (len(ordered) - 1))], 4),
        "max_s": round(ordered[-1], 4),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards", type=int, default=600)
    parser.add_argument("--rows", type=int, default=50)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory() as tmp:
        ws = build_workspace(Path(tmp), args.shards, args.rows)
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "corpus_agents.cli", "score", str(ws), "--workers", "1", "--quiet"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        live: list[float] = []
        while proc.poll() is None:
            live.append(read_once(ws))
            time.sleep(0.02)
        score_s = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(proc.stdout.read())
        idle = [read_once(ws) for _ in range(20)]
    result = {
        "date": datetime.date.today().isoformat(),
        "command": command_line(__file__, argv),
        "machine": machine(),
        "loadavg": loadavg(),
        "versions": versions("duckdb", "pyarrow"),
        "shards": args.shards,
        "documents": args.shards * args.rows,
        "score_wall_s": round(score_s, 2),
        "during_score": summary(live),
        "idle": summary(idle),
        "target_s": 1.0,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "live_read.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [
        f"| {name} | {s['reads']} | {s['p50_s']:.3f} | {s['p95_s']:.3f} | {s['max_s']:.3f} |"
        for name, s in (("during `score`", result["during_score"]), ("idle", result["idle"]))
    ]
    (args.out / "live_read.md").write_text(
        "\n".join(
            [
                "# Reading the catalog while `score` writes it",
                "",
                f"`{result['command']}` on {result['date']}, load average {result['loadavg']}: "
                f"{result['documents']:,} documents in {args.shards} shards, two metadata agents, "
                f"`score --workers 1` took {score_s:.1f} s. Each read opens the catalog read-only, runs what "
                "`status` reads and a GROUP BY over `doc_labels`, and closes it (seconds, wall).",
                "",
                "| when | reads | p50 | p95 | max |",
                "| --- | --- | --- | --- | --- |",
                *rows,
                "",
                f"Target: every read within {result['target_s']:.0f} s.",
                "",
            ]
        )
    )
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
