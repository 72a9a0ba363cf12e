"""The documentation corpus of the scoring and HF inference benchmarks: the Debian documentation packages of
`sources.DEBIAN_DOCS`, each file's prose (reStructuredText, plain text, POD, man pages, HTML with tags
stripped) cut into documents at paragraph breaks, shuffled with a fixed seed, as Parquet shards with columns
`text` and `source` (the package). Documents and built corpora are cached under the cache directory.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from corpus.extract import file_text, source_rng, split_documents
from corpus.fetch import DEFAULT_CACHE, fetch_debian
from corpus.shards import cache_key, write_shards
from corpus.sources import DEBIAN_DOCS, Source
from corpus_agents.storage import atomic_path

CORPUS_VERSION = 1  # bump when the extraction or splitting changes, so cached corpora are rebuilt


def package_documents(source: Source, cache: Path, seed: int) -> list[str]:
    """The documents of one package's matching files, in file order."""
    root, _version = fetch_debian(source.package, cache)
    pattern = re.compile(source.include)
    rng = source_rng(source.package, seed)
    docs: list[str] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and pattern.search(str(p))):
        try:
            text = file_text(path)
        except (OSError, EOFError, gzip.BadGzipFile):
            continue
        docs.extend(split_documents(text, rng))
    return docs


def documents(cache: Path = DEFAULT_CACHE, seed: int = 0, log: bool = True) -> tuple[list[str], list[str]]:
    """Every document of every package, in package order: (texts, packages); cached as one Parquet file."""
    key = cache_key([CORPUS_VERSION, [(s.package, s.include) for s in DEBIAN_DOCS], seed])
    path = cache / "documents" / f"{key}.parquet"
    if path.exists():
        table = pq.read_table(path)
        return table.column("text").to_pylist(), table.column("source").to_pylist()
    texts: list[str] = []
    sources: list[str] = []
    for source in DEBIAN_DOCS:
        docs = package_documents(source, cache, seed)
        if log:
            print(f"  {source.package}: {len(docs):,} documents, {sum(map(len, docs)) / 1e6:,.1f} M chars")
        texts.extend(docs)
        sources.extend([source.package] * len(docs))
    with atomic_path(path) as tmp:
        pq.write_table(pa.table({"text": texts, "source": sources}), tmp, compression="zstd")
    return texts, sources


@dataclass
class CorpusInfo:
    """A built corpus: its shard paths, sizes (in all and per package) and how it was written."""

    shards: list[str]
    documents: int
    text_bytes: int
    parquet_bytes: int
    per_source: dict[str, dict[str, int]]
    sources: list[str]
    row_group_rows: int
    compression: str
    directory: str


def build(
    cache: Path = DEFAULT_CACHE,
    *,
    docs: int | None = None,
    shards: int = 16,
    row_group_rows: int = 8192,
    compression: str = "snappy",
    seed: int = 0,
    log: bool = True,
) -> CorpusInfo:
    """Fetch the packages (once), cut documents, write `shards` Parquet shards of a seeded shuffle of them
    (the first `docs` of it; all by default); cached by its parameters."""
    packages = [s.package for s in DEBIAN_DOCS]
    out = (
        cache
        / "corpus"
        / cache_key([CORPUS_VERSION, packages, docs, shards, row_group_rows, compression, seed])
    )
    manifest = out / "corpus.json"
    if manifest.exists():
        return CorpusInfo(**json.loads(manifest.read_text()))
    texts, sources = documents(cache, seed, log)
    order = np.random.default_rng(seed).permutation(len(texts))[:docs]
    table = pa.table(
        {
            "text": pa.array([texts[i] for i in order], pa.string()),
            "source": pa.array([sources[i] for i in order]),
        }
    )
    per_source: dict[str, dict[str, int]] = {}
    for src, text in zip(table.column("source").to_pylist(), table.column("text").to_pylist()):
        entry = per_source.setdefault(src, {"documents": 0, "text_bytes": 0})
        entry["documents"] += 1
        entry["text_bytes"] += len(text.encode())
    with atomic_path(out) as tmp:
        tmp.mkdir()
        written = write_shards(table, tmp, shards, row_group_rows=row_group_rows, compression=compression)
        info = CorpusInfo(
            shards=[str(out / s["file"]) for s in written],
            documents=len(table),
            text_bytes=sum(e["text_bytes"] for e in per_source.values()),
            parquet_bytes=sum(s["bytes"] for s in written),
            per_source=per_source,
            sources=[f"debian:{s.package} ({s.include})" for s in DEBIAN_DOCS],
            row_group_rows=row_group_rows,
            compression=compression,
            directory=str(out),
        )
        (tmp / "corpus.json").write_text(json.dumps(info.__dict__, indent=1))
    return info
