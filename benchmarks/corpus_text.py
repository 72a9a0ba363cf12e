"""A benchmark corpus of real text: Debian documentation packages fetched at run time, cut into documents.

Packages are fetched with `apt-get download` and unpacked with `dpkg-deb -x` into a cache directory
(`~/.cache/corpus-agents-bench` by default), so re-runs download nothing; nothing fetched is committed. Each
package contributes its prose sources (reStructuredText, plain text, POD, man pages, HTML with tags
stripped), split into documents of a few hundred to a few thousand characters at paragraph boundaries,
shuffled with a fixed seed and written as Parquet shards with columns `text` and `source` (the package).
"""

from __future__ import annotations

import gzip
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DEFAULT_CACHE = Path(os.environ.get("CORPUS_AGENTS_BENCH_CACHE", "~/.cache/corpus-agents-bench")).expanduser()
CORPUS_VERSION = 1  # bump when the extraction or splitting changes, so cached corpora are rebuilt


@dataclass(frozen=True)
class Source:
    """A Debian package and the files of it that hold prose (a regex on the path inside the package)."""

    package: str
    include: str


# Sources chosen so no text is taken twice (e.g. linux-doc's HTML duplicates its .rst files).
SOURCES = [
    Source("linux-doc-6.1", r"/Documentation/.+\.(rst|txt)(\.gz)?$"),
    Source("python3.11-doc", r"/_sources/.+\.txt$"),
    Source("perl-doc", r"/pod/.+\.pod$"),
    Source("postgresql-doc-15", r"/html/.+\.html$"),
    Source(
        "python-django-doc", r"/html/(?!_modules/|_static/|_images/|genindex|py-modindex|search).+\.html$"
    ),
    Source("debian-handbook", r"/html/[a-zA-Z-]+/.+\.html$"),
    Source("glibc-doc", r"/ChangeLog[^/]*\.gz$"),
    Source("manpages", r"/man/man\d/.+\.\d\w*\.gz$"),
    Source("git-doc", r"/git-doc/.+\.txt$"),
    Source("docutils-doc", r"\.txt$"),
    Source("debian-policy", r"/_sources/.+\.txt$"),
    Source("developers-reference", r"\.txt$"),
    Source("debian-reference-en", r"\.html$"),
    Source("gnu-standards", r"\.html$"),
]


def fetch_package(package: str, cache: Path) -> Path:
    """Download and unpack a Debian package once; returns the directory it was unpacked into."""
    target = cache / "extracted" / package
    if (target / ".done").exists():
        return target
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        subprocess.run(["apt-get", "download", package], cwd=debs, check=True, capture_output=True)
        found = sorted(debs.glob(f"{package}_*.deb"))
        if not found:
            raise RuntimeError(f"apt-get download {package} produced no .deb in {debs}")
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    subprocess.run(["dpkg-deb", "-x", str(found[-1]), str(target)], check=True)
    (target / ".done").write_text(found[-1].name)
    return target


class _HTMLText(HTMLParser):
    """Crude HTML to text: drops script/style/navigation, puts blank lines between block elements."""

    BLOCKS = {
        "p",
        "div",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "li",
        "pre",
        "tr",
        "table",
        "dd",
        "dt",
        "section",
    }
    SKIP = {"script", "style", "head", "nav", "footer"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0
        self.pre = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.SKIP:
            self.skip += 1
        elif tag in self.BLOCKS:
            self.out.append("\n\n")
            self.pre += tag == "pre"
        elif tag == "br":
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCKS:
            self.out.append("\n\n")
            self.pre -= tag == "pre" and self.pre > 0

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.out.append(data if self.pre else re.sub(r"\s+", " ", data))


def html_to_text(markup: str) -> str:
    parser = _HTMLText()
    parser.feed(markup)
    parser.close()
    return html.unescape("".join(parser.out))


_GROFF_ESCAPES = re.compile(r"\\f(\[[^\]]*\]|\(..|.)|\\\(..|\\\*(\(..|\[[^\]]*\]|.)|\\[&|^%]")
_GROFF_TEXT_MACROS = {".SH", ".SS", ".B", ".I", ".BR", ".BI", ".IR", ".IB", ".RB", ".RI", ".IP", ".TP", ".TH"}


def groff_to_text(source: str) -> str:
    """Crude man page to text: keeps text lines and the arguments of font/heading macros."""
    lines = []
    for line in source.splitlines():
        if line.startswith(('.\\"', "'\\\"")):
            continue
        if line.startswith((".", "'")):
            macro, _, args = line.partition(" ")
            if macro in (".PP", ".LP", ".P", ".sp", ".SH", ".SS"):
                lines.append("")
            if macro not in _GROFF_TEXT_MACROS:
                continue
            line = args.replace('"', "")
        line = _GROFF_ESCAPES.sub("", line).replace("\\-", "-").replace("\\e", "\\")
        lines.append(line)
    return "\n".join(lines)


def file_text(path: Path) -> str:
    """The prose of one packaged file, decoded as UTF-8 (invalid bytes replaced)."""
    data = path.read_bytes()
    name = path.name
    if name.endswith(".gz"):
        data = gzip.decompress(data)
        name = name[:-3]
    text = data.decode("utf-8", errors="replace")
    if name.endswith(".html"):
        return html_to_text(text)
    if "/man/man" in str(path):
        return groff_to_text(text)
    return text


def split_documents(text: str, rng: np.random.Generator, max_chars: int = 8000) -> Iterator[str]:
    """Cut text into documents at paragraph breaks, each aiming at a length drawn from 200..5000 chars."""
    paragraphs = [p.strip("\n") for p in re.split(r"\n[ \t]*\n", text)]
    paragraphs = [p for p in paragraphs if p.strip()]
    target = _target_length(rng)
    current: list[str] = []
    size = 0
    for para in paragraphs:
        while len(para) > max_chars:  # very long paragraphs (logs, tables) are cut at whitespace
            cut = para.rfind(" ", 0, max_chars)
            cut = cut if cut > max_chars // 2 else max_chars
            yield para[:cut]
            para = para[cut:].lstrip()
        current.append(para)
        size += len(para) + 2
        if size >= target:
            yield "\n\n".join(current)
            current, size, target = [], 0, _target_length(rng)
    if current and size >= 100:
        yield "\n\n".join(current)


def _target_length(rng: np.random.Generator) -> int:
    return int(np.clip(rng.lognormal(np.log(1200), 0.8), 200, 5000))


def _package_documents(source: Source, cache: Path, seed: int) -> list[str]:
    root = fetch_package(source.package, cache)
    pattern = re.compile(source.include)
    rng = np.random.default_rng([seed, int(hashlib.md5(source.package.encode()).hexdigest()[:8], 16)])
    docs: list[str] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and pattern.search(str(p))):
        try:
            text = file_text(path)
        except (OSError, EOFError, gzip.BadGzipFile):
            continue
        docs.extend(d for d in split_documents(text, rng) if len(d.strip()) >= 100)
    return docs


def all_documents(cache: Path, seed: int, log: bool = True) -> tuple[list[str], list[str]]:
    """Every document of every source, in source order: (texts, sources); cached as one Parquet file."""
    key = json.dumps([CORPUS_VERSION, [(s.package, s.include) for s in SOURCES], seed])
    path = cache / "documents" / f"{hashlib.sha1(key.encode()).hexdigest()[:12]}.parquet"
    if path.exists():
        table = pq.read_table(path)
        return table.column("text").to_pylist(), table.column("source").to_pylist()
    texts: list[str] = []
    sources: list[str] = []
    for source in SOURCES:
        docs = _package_documents(source, cache, seed)
        if log:
            print(f"  {source.package}: {len(docs):,} documents, {sum(map(len, docs)) / 1e6:,.1f} M chars")
        texts.extend(docs)
        sources.extend([source.package] * len(docs))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    pq.write_table(pa.table({"text": texts, "source": sources}), tmp, compression="zstd")
    os.replace(tmp, path)
    return texts, sources


@dataclass
class CorpusInfo:
    shards: list[str]
    documents: int
    text_bytes: int
    parquet_bytes: int
    per_source: dict[str, dict[str, int]]
    sources: list[str]
    row_group_rows: int
    compression: str
    directory: str


def build_corpus(
    cache: Path = DEFAULT_CACHE,
    *,
    max_docs: int | None = None,
    num_shards: int = 16,
    row_group_rows: int = 8192,
    compression: str = "snappy",
    seed: int = 0,
    log: bool = True,
) -> CorpusInfo:
    """Fetch the packages (once), cut documents, write `num_shards` Parquet shards; cached by its parameters."""
    key = json.dumps(
        [
            CORPUS_VERSION,
            [s.package for s in SOURCES],
            max_docs,
            num_shards,
            row_group_rows,
            compression,
            seed,
        ]
    )
    out = cache / "corpus" / hashlib.sha1(key.encode()).hexdigest()[:12]
    manifest = out / "corpus.json"
    if manifest.exists():
        return CorpusInfo(**json.loads(manifest.read_text()))
    texts, sources = all_documents(cache, seed, log)
    order = np.random.default_rng(seed).permutation(len(texts))
    if max_docs is not None:
        order = order[:max_docs]
    table = pa.table(
        {
            "text": pa.array([texts[i] for i in order], pa.string()),
            "source": pa.array([sources[i] for i in order]),
        }
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="tmp-", dir=out.parent))
    per_shard = -(-len(table) // num_shards)
    paths = []
    for i in range(num_shards):
        path = tmp / f"shard-{i:05d}.parquet"
        pq.write_table(
            table.slice(i * per_shard, per_shard),
            path,
            row_group_size=row_group_rows,
            compression=compression,
        )
        paths.append(path.name)
    per_source: dict[str, dict[str, int]] = {}
    for src, text in zip(table.column("source").to_pylist(), table.column("text").to_pylist()):
        entry = per_source.setdefault(src, {"documents": 0, "text_bytes": 0})
        entry["documents"] += 1
        entry["text_bytes"] += len(text.encode())
    info = CorpusInfo(
        shards=[str(out / p) for p in paths],
        documents=len(table),
        text_bytes=sum(e["text_bytes"] for e in per_source.values()),
        parquet_bytes=sum((tmp / p).stat().st_size for p in paths),
        per_source=per_source,
        sources=[f"debian:{s.package} ({s.include})" for s in SOURCES],
        row_group_rows=row_group_rows,
        compression=compression,
        directory=str(out),
    )
    (tmp / "corpus.json").write_text(json.dumps(info.__dict__, indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return info


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=None, help="Documents to keep (default: all).")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    info = build_corpus(args.cache, max_docs=args.docs, num_shards=args.shards)
    print(json.dumps({k: v for k, v in info.__dict__.items() if k != "shards"}, indent=1))
