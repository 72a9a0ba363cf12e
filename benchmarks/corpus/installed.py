"""The corpus of the reader and training benchmarks, built offline from text installed on this machine: Python
standard-library sources, man pages and /usr/share/doc files, cut into documents at paragraph breaks, up to a
byte budget per source, as Parquet shards with columns `text` and `source`. Cached under the cache directory.
"""

from __future__ import annotations

import json
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pyarrow as pa

from corpus.extract import installed_file_text, split_documents
from corpus.fetch import DEFAULT_CACHE
from corpus.shards import cache_key, write_shards
from corpus_agents.storage import atomic_path

CORPUS_VERSION = 1  # bump when the corpus recipe changes, so cached corpora are rebuilt


def source_files() -> dict[str, list[Path]]:
    """Files of real text on this machine, by source, in a fixed order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    python = sorted(p for p in stdlib.rglob("*.py") if "site-packages" not in p.parts)
    man = sorted(p for p in Path("/usr/share/man").rglob("*") if p.is_file() and "/man" in str(p.parent))
    doc = sorted(p for p in Path("/usr/share/doc").rglob("*") if p.is_file() and not p.is_symlink())
    return {"python-stdlib": python, "man-pages": man, "usr-share-doc": doc}


def build(
    cache: Path = DEFAULT_CACHE, *, mb: float = 15, shards: int = 8, row_group_rows: int = 1024
) -> Path:
    """Cut each source's files (in a seeded order) into documents until `mb` MB of them are cut, shuffle
    them and write shards; returns the corpus directory (with `corpus.json`: documents per source)."""
    key = [CORPUS_VERSION, mb, shards, row_group_rows, sys.version_info[:2]]
    out = cache / "reader" / cache_key(key)
    if (out / "corpus.json").exists():
        return out
    rng = np.random.default_rng(0)
    texts: list[str] = []
    sources: list[str] = []
    for name, files in source_files().items():
        size = 0
        for i in rng.permutation(len(files)):
            docs = split_documents(installed_file_text(files[i]), rng)
            texts += docs
            sources += [name] * len(docs)
            size += sum(len(d.encode()) for d in docs)
            if size >= mb * 1e6:
                break
    order = np.random.default_rng(1).permutation(len(texts))
    table = pa.table({"text": [texts[i] for i in order], "source": [sources[i] for i in order]})
    counts = {src: sources.count(src) for src in dict.fromkeys(sources)}
    text_bytes = sum(len(t.encode()) for t in texts)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        write_shards(table, tmp, shards, row_group_rows=row_group_rows, compression="snappy")
        (tmp / "corpus.json").write_text(
            json.dumps({"documents": len(texts), "text_bytes": text_bytes, **counts})
        )
    return out
