"""Build a small multi-domain demo corpus (Parquet shards) from real text found offline on a Debian machine."""

from __future__ import annotations

import email
import gzip
import hashlib
import logging
import re
import sysconfig
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.message import Message
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from corpus_agents.errors import CorpusAgentsError
from corpus_agents.storage import atomic_path

__all__ = ["SCHEMA", "DemoCorpusError", "build_demo_corpus", "describe_demo_corpus"]

_log = logging.getLogger(__name__)

SCHEMA = pa.schema([("text", pa.string()), ("source", pa.string()), ("path", pa.string())])

_MAX_CHARS = 6000  # longer texts are split into several documents
_MIN_CHUNK = _MAX_CHARS // 4  # a split never makes a chunk shorter than this (except the last)
_MIN_CHARS = 200  # shorter documents are dropped
_ROW_GROUP_SIZE = 1000
_MIN_SOURCES = 3
_UNIT_OVERSAMPLE = 2  # a source with more units (files) than this times the cap reads only a sample of them
_SHARD_NAME = re.compile(r"shard-\d{5}\.parquet")

# A top-level def/class, with the decorators and comments right above it.
_CODE_BOUNDARY = re.compile(r"^(?:[#@][^\n]*\n)*(?:async[ \t]+def|def|class)\b", re.MULTILINE)
# A Debian changelog entry header: "package (version) distribution; urgency=...".
_CHANGELOG_BOUNDARY = re.compile(r"^[a-z0-9][a-z0-9+.~-]* \(", re.MULTILINE)
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\r?\n)+")

# Crude troff handling, in order: keep the text of headings and font macros, turn paragraph macros into
# blank lines, drop every other request line, then spell out a few named characters and drop other escapes.
# Patterns start with a literal newline (the text gets one prepended) rather than `^`: much faster in `re`.
_TROFF_RULES = (
    (re.compile(r'\n[.\'][ \t]*S[HS][ \t]*"?([^"\n]*)"?[ \t]*(?=\n)'), r"\n\n\1"),
    (re.compile(r"\n[.'][ \t]*(?:[BI]|[BIR][BIR]|S[BM])[ \t]+([^\n]*)"), r"\n\1"),
    (re.compile(r"\n[.'][ \t]*(?:PP|LP|P|TP|IP|sp)\b[^\n]*"), "\n"),
    (re.compile(r"\n[.'][^\n]*"), ""),
)
_TROFF_CHARS = (
    (r"\(aq", "'"),
    (r"\(dq", '"'),
    (r"\(lq", '"'),
    (r"\(rq", '"'),
    (r"\(oq", "'"),
    (r"\(cq", "'"),
    (r"\(em", "--"),
    (r"\(en", "-"),
    (r"\(bu", "*"),
    (r"\(co", "(c)"),
    (r"\-", "-"),
    (r"\ ", " "),
)
_TROFF_ESCAPE = re.compile(r"\\f(?:\[[^]\n]*\]|\(..|.)|\\\*?\(..|\\\*.|\\s[-+]?\d|\\[&|^%:c]")
_EXTRA_BLANK_LINES = re.compile(r"\n{3,}")

# (label for the `path` column, loader returning the unit's full text); a unit may yield several documents.
_Unit = tuple[str, Callable[[], str]]
_T = TypeVar("_T")


class DemoCorpusError(CorpusAgentsError):
    """Too few text sources exist on this machine to build a meaningful demo corpus (one-line message)."""


@dataclass(frozen=True)
class _Source:
    """A demo domain: `units` lists its texts in sorted order; `boundary` marks preferred split points."""

    name: str
    units: Callable[[], list[_Unit]]
    boundary: re.Pattern[str] | None = None


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _read_gzip(path: Path) -> str:
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        return f.read()


def _strip_troff(source: str) -> str:
    """Turn a man page's troff source into plain-ish text (crude: most requests and escapes are dropped)."""
    text = "\n" + source
    for pattern, replacement in _TROFF_RULES:
        text = pattern.sub(replacement, text)
    for escape, char in _TROFF_CHARS:
        text = text.replace(escape, char)
    text = _TROFF_ESCAPE.sub("", text).replace("\\e", "\\")
    return _EXTRA_BLANK_LINES.sub("\n\n", text)


def _read_man_page(path: Path) -> str:
    return _strip_troff(_read_gzip(path))


def _files(pattern: str, root: str, read: Callable[[Path], str]) -> Callable[[], list[_Unit]]:
    """A unit lister for the files matching `root/pattern`, sorted by path (as strings: much faster)."""

    def units() -> list[_Unit]:
        return [
            (name, partial(read, Path(name))) for name in sorted(str(f) for f in Path(root).glob(pattern))
        ]

    return units


def _python_docs() -> list[_Unit]:
    """Sections of the Python language and library reference bundled with CPython for `help()`."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return []
    return [(f"pydoc_data.topics:{key}", partial(topics.__getitem__, key)) for key in sorted(topics)]


def _python_code() -> list[_Unit]:
    """Top-level modules of the standard library."""
    return _files("*.py", sysconfig.get_paths()["stdlib"], _read_text)()


def _metadata(dist: metadata.Distribution) -> tuple[Message, str]:
    """A distribution's metadata headers and body, split by hand (`email` parses long bodies slowly)."""
    raw = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    head, _, body = raw.partition("\n\n")
    return email.message_from_string(head), body


def _description(dist: metadata.Distribution) -> str:
    """A distribution's long description: the metadata body, or the older `Description` header."""
    headers, body = _metadata(dist)
    return body if body.strip() else headers.get("Description", "")


def _package_docs() -> list[_Unit]:
    """Long descriptions (READMEs) of the installed distributions, one per normalized name, sorted by it."""
    by_name: dict[str, _Unit] = {}
    for dist in metadata.distributions():
        headers = _metadata(dist)[0]
        name = headers.get("Name")
        key = re.sub(r"[-_.]+", "-", name or "").lower()
        if key and key not in by_name:
            by_name[key] = (
                f"importlib.metadata:{name}=={headers.get('Version')}",
                partial(_description, dist),
            )
    return [unit for _, unit in sorted(by_name.items())]


_SOURCES: tuple[_Source, ...] = (
    _Source("python-docs", _python_docs),
    _Source("python-code", _python_code, _CODE_BOUNDARY),
    _Source("package-docs", _package_docs),
    _Source("debian-copyright", _files("*/copyright", "/usr/share/doc", _read_text)),
    _Source(
        "debian-changelog", _files("*/changelog.Debian.gz", "/usr/share/doc", _read_gzip), _CHANGELOG_BOUNDARY
    ),
    _Source("man-pages", _files("*.1.gz", "/usr/share/man/man1", _read_man_page)),
)


def _cut(text: str, start: int, boundary: re.Pattern[str] | None) -> int:
    """End of the chunk that starts at `start`: the last `boundary`, else blank line, else line break that
    keeps the chunk between _MIN_CHUNK and _MAX_CHARS characters long, else a hard cut at _MAX_CHARS."""
    lo, hi = start + _MIN_CHUNK, start + _MAX_CHARS
    if boundary is not None:
        starts = [m.start() for m in boundary.finditer(text, lo, hi)]
        if starts:
            return starts[-1]
    for separator in ("\n\n", "\n"):
        i = text.rfind(separator, lo - len(separator), hi)
        if i >= 0:
            return i + len(separator)
    return hi


def _spans(text: str, boundary: re.Pattern[str] | None) -> list[tuple[int, int]]:
    """Split `text` into (start, end) spans of at most _MAX_CHARS characters."""
    spans: list[tuple[int, int]] = []
    start = 0
    while len(text) - start > _MAX_CHARS:
        end = _cut(text, start, boundary)
        spans.append((start, end))
        start = end
    spans.append((start, len(text)))
    return spans


def _documents(label: str, text: str, boundary: re.Pattern[str] | None) -> list[tuple[str, str]]:
    """(path, text) for each document of one unit; parts of a split text get a `#Lstart-Lend` suffix."""
    spans = _spans(text, boundary)
    if len(spans) == 1:
        return [(label, _trim(text))]
    docs: list[tuple[str, str]] = []
    line, pos = 1, 0
    for start, end in spans:
        line += text.count("\n", pos, start)
        last = line + text.count("\n", start, end - 1)
        docs.append((f"{label}#L{line}-L{last}", _trim(text[start:end])))
        pos = start
    return docs


def _trim(text: str) -> str:
    """Drop leading blank lines and trailing whitespace (keeping the first line's indentation)."""
    return _LEADING_BLANK_LINES.sub("", text).rstrip()


def _load(unit: _Unit, boundary: re.Pattern[str] | None) -> list[tuple[str, str]]:
    label, read = unit
    try:
        text = read()
    except (OSError, EOFError, zlib.error) as e:  # unreadable or corrupt file: skip it
        _log.debug("demo corpus: skipping %s: %s", label, e)
        return []
    return _documents(label, text, boundary)


def _candidates(source: _Source, units: list[_Unit], seen: set[bytes]) -> list[tuple[int, int]]:
    """(unit index, document index) of the source's usable documents, in sorted order.

    Only digests are kept (in `seen`, shared across sources so the first copy of a text wins), so memory
    stays small however much text a source has.
    """
    found: list[tuple[int, int]] = []
    for u, unit in enumerate(units):
        for d, (_, text) in enumerate(_load(unit, source.boundary)):
            if len(text) < _MIN_CHARS:
                continue
            digest = hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=16).digest()
            if digest not in seen:
                seen.add(digest)
                found.append((u, d))
    return found


def _collect(
    source: _Source, units: list[_Unit], chosen: list[tuple[int, int]]
) -> list[tuple[str, str, str]]:
    """Re-read the units holding the chosen documents and return (text, source, path) rows."""
    wanted: dict[int, list[int]] = {}
    for u, d in chosen:
        wanted.setdefault(u, []).append(d)
    rows: list[tuple[str, str, str]] = []
    for u, indices in wanted.items():
        docs = _load(units[u], source.boundary)
        # The bound check only matters if a file shrank since it was first read.
        rows += [(docs[d][1], source.name, docs[d][0]) for d in indices if d < len(docs)]
    return rows


def _sample(items: list[_T], k: int, rng: np.random.Generator) -> list[_T]:
    """At most `k` of `items`, drawn at random without replacement, kept in their original order."""
    if len(items) <= k:
        return items
    return [items[i] for i in np.sort(rng.choice(len(items), size=k, replace=False))]


def _write_atomic(table: pa.Table, path: Path) -> None:
    """Write to a temporary name in the same directory, then rename over `path`."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=_ROW_GROUP_SIZE)


def build_demo_corpus(
    out_dir: Path, num_shards: int = 4, max_docs_per_source: int = 1500, seed: int = 0
) -> list[Path]:
    """Write the demo corpus to `out_dir/shard-00000.parquet` ... and return the shard paths.

    Columns: `text`, `source` (the domain) and `path` (where the text came from). Sources, each skipped when
    absent: Python's own docs and stdlib code, installed packages' READMEs, Debian copyright files and
    changelogs, and man pages. Texts longer than ~6,000 characters are split at the source's natural
    boundaries (top-level def/class, changelog entries, blank lines); documents under 200 characters and
    exact duplicates (the first one in source order, then sorted order, wins) are dropped. Each source keeps
    at most `max_docs_per_source` documents, a seeded sample of its sorted candidates (a source with more
    than twice that many files first samples its files, which keeps builds fast). All documents are then
    shuffled with `seed` and cut into `num_shards` contiguous, near-equal shards, so a build is deterministic
    for a given machine and seed. Stale `shard-NNNNN.parquet` files left in `out_dir` by an earlier build
    with more shards are removed. Raises DemoCorpusError when fewer than three sources have any documents.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1, got {num_shards}")
    if max_docs_per_source < 1:
        raise ValueError(f"max_docs_per_source must be at least 1, got {max_docs_per_source}")
    seen: set[bytes] = set()
    rows: list[tuple[str, str, str]] = []
    counts: dict[str, int] = {}
    for index, source in enumerate(_SOURCES):
        # Seeded per source (by its fixed index) so a missing source does not change the others' samples.
        rng = np.random.default_rng([seed, index])
        units = _sample(source.units(), _UNIT_OVERSAMPLE * max_docs_per_source, rng)
        found = _sample(_candidates(source, units, seen), max_docs_per_source, rng)
        counts[source.name] = len(found)
        _log.info(
            "demo corpus: %s: read %d files/sections, kept %d documents", source.name, len(units), len(found)
        )
        rows += _collect(source, units, found)
    present = [name for name, n in counts.items() if n]
    if len(present) < _MIN_SOURCES:
        summary = ", ".join(f"{name}={n}" for name, n in counts.items())
        raise DemoCorpusError(
            f"only {len(present)} demo text sources found on this machine, need {_MIN_SOURCES} ({summary})"
        )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(rows))
    paths: list[Path] = []
    for shard, indices in enumerate(np.array_split(order, num_shards)):
        columns = list(zip(*(rows[i] for i in indices))) or [(), (), ()]
        path = out_dir / f"shard-{shard:05d}.parquet"
        _write_atomic(pa.Table.from_arrays([pa.array(c, pa.string()) for c in columns], schema=SCHEMA), path)
        paths.append(path)
    for stale in out_dir.glob("shard-*.parquet"):
        if _SHARD_NAME.fullmatch(stale.name) and stale not in paths:
            stale.unlink()
    return paths


def describe_demo_corpus(paths: Iterable[Path]) -> dict[str, dict[str, int]]:
    """Documents and characters per source across the given shards: {source: {"docs": n, "chars": n}}."""
    stats: dict[str, dict[str, int]] = {}
    for path in paths:
        with pq.ParquetFile(path) as f:
            for batch in f.iter_batches(columns=["text", "source"]):
                lengths = pa.table(
                    {"source": batch.column("source"), "chars": pc.utf8_length(batch.column("text"))}
                )
                grouped = lengths.group_by("source").aggregate([("chars", "sum"), ("chars", "count")])
                for source, chars, docs in zip(
                    *(grouped.column(c).to_pylist() for c in ("source", "chars_sum", "chars_count"))
                ):
                    entry = stats.setdefault(source, {"docs": 0, "chars": 0})
                    entry["docs"] += docs
                    entry["chars"] += chars or 0
    return dict(sorted(stats.items()))
