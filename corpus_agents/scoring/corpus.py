"""Corpus registration and reading: Parquet shards on local paths, globs or fsspec/pyarrow URLs.

A shard is never rewritten. Registration records its size, a fingerprint (size + Parquet footer hash), a
hash of each row group's bytes, its row-group layout and one row per document (its doc_id, see
`pack_doc_ids`, and text length in bytes). Whatever reads text back checks the footer once and each row
group's hash when it reads that row group (`ShardCheck`), so a shard edited or replaced after registration is
refused instead of served beside the old one's scores. Reading yields `DocBatch`es: a batch's text, decoded
once and shared by every agent that scores it.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from corpus_agents.errors import CorpusError, one_line

_STRING_TYPES = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)


def pack_doc_ids(shard_id: int | np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Document ids (int64) from shard ids and row indices: `shard_id << 32 | row` (`sql/` writes the same)."""
    return (np.asarray(shard_id, dtype=np.int64) << 32) | np.asarray(rows, dtype=np.int64)


def unpack_doc_ids(doc_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shard ids, row indices) of document ids: the inverse of `pack_doc_ids`."""
    doc_ids = np.asarray(doc_ids, dtype=np.int64)
    return doc_ids >> 32, doc_ids & 0xFFFFFFFF


class DocBatch:
    """A batch of documents read once and shared by every agent scoring the same shard.

    `texts` are Python strings (null -> "", invalid UTF-8 decoded with replacement characters); derived
    forms (`single_line_texts` for fastText) are computed once on first use and cached. Decoding is lazy (an
    agent that reads only metadata columns never pays for it); `decode_s` counts the seconds it took, so
    the scoring loop can tell the shared decode from an agent's own work. `doc_ids` are the documents' ids
    where the reader knows them (the scoring loop sets them), for agents whose label depends on the id.
    """

    def __init__(
        self, text: pa.Array, columns: dict[str, pa.Array] | None = None, doc_ids: np.ndarray | None = None
    ):
        self.text_array = text
        self.columns = columns or {}
        self.doc_ids = doc_ids
        self.decode_s = 0.0
        self._texts: list[str] | None = None
        self._single_line: list[str] | None = None

    def __len__(self) -> int:
        return len(self.text_array)

    @property
    def texts(self) -> list[str]:
        if self._texts is None:
            started = time.perf_counter()
            self._texts = decode_texts(self.text_array)
            self.decode_s += time.perf_counter() - started
        return self._texts

    @property
    def single_line_texts(self) -> list[str]:
        """Texts with line breaks replaced by spaces (fastText predicts one line per document)."""
        if self._single_line is None:
            texts = self.texts
            started = time.perf_counter()
            self._single_line = [t.replace("\n", " ").replace("\r", " ") for t in texts]
            self.decode_s += time.perf_counter() - started
        return self._single_line

    @property
    def null_mask(self) -> np.ndarray:
        return np.asarray(self.text_array.is_null().to_numpy(zero_copy_only=False), dtype=bool)

    def column(self, name: str) -> pa.Array:
        return self.columns[name]


def numeric_array(values: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    """A numeric Arrow array of a NumPy array (null where `mask`), built from its buffers: `pa.array` and
    `to_numpy` import pandas on their first call (a third of a second per worker process) to check for
    pandas inputs, and a scoring worker needs neither."""
    values = np.ascontiguousarray(values)
    validity, nulls = None, 0
    if mask is not None and (nulls := int(np.count_nonzero(mask))):
        validity = pa.py_buffer(np.packbits(~np.asarray(mask, bool), bitorder="little"))
    return pa.Array.from_buffers(
        pa.from_numpy_dtype(values.dtype), len(values), [validity, pa.py_buffer(values)], null_count=nulls
    )


def decode_texts(arr: pa.Array) -> list[str]:
    """Arrow string array -> list of str; nulls become "" and invalid UTF-8 is decoded with U+FFFD."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_large_string(arr.type) or pa.types.is_string_view(arr.type):
        arr = arr.cast(pa.string())
    try:
        arr.validate(full=True)
        valid = True
    except pa.ArrowInvalid:
        valid = False
    if valid:
        texts = arr.to_pylist()
        # nulls in Python: pc.fill_null builds a scalar, and pyarrow imports pandas to build one
        return [t if t is not None else "" for t in texts] if arr.null_count else texts
    raw = arr.view(pa.binary()).to_pylist()
    return ["" if b is None else b.decode("utf-8", errors="replace") for b in raw]


def _filesystem(uri: str) -> tuple[Any, str]:
    """fsspec filesystem and path for a local path or URL (s3://, gs://, file://, memory://, ...)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def expand_patterns(patterns: list[str]) -> list[str]:
    """Expand paths and globs into a sorted list of shard URIs (absolute paths for local files)."""
    uris: list[str] = []
    for pattern in patterns:
        fs, path = _filesystem(pattern)
        matches = sorted(fs.glob(path)) if any(c in path for c in "*?[") else [path]
        if any(c in path for c in "*?[") and not matches:
            raise CorpusError(f"no files match {pattern}")
        for m in matches:
            if fs.isdir(m):
                matches_in_dir = sorted(p for p in fs.find(m) if p.endswith(".parquet"))
                if not matches_in_dir:
                    raise CorpusError(f"directory {pattern} holds no .parquet files")
                uris.extend(_unstrip(pattern, p) for p in matches_in_dir)
            else:
                uris.append(_unstrip(pattern, m))
    return sorted(dict.fromkeys(uris))


def _unstrip(pattern: str, path: str) -> str:
    """fsspec strips the protocol; put it back for remote filesystems, make local paths absolute."""
    if _is_local(pattern):
        return str(Path(path).resolve())
    return f"{pattern.split('://', 1)[0]}://{path}"


def open_parquet(uri: str) -> pq.ParquetFile:
    """Open a shard for reading; local files through pyarrow's native reader, others through fsspec."""
    if _is_local(uri):
        return pq.ParquetFile(uri.removeprefix("file://"), memory_map=False)
    fs, path = _filesystem(uri)
    return pq.ParquetFile(fs.open(path, "rb"))


def shard_fingerprint(uri: str) -> tuple[str, int]:
    """(fingerprint, size): a hash of the file size and its Parquet footer, read without the data pages."""
    fs, path = _filesystem(uri)
    with fs.open(path, "rb") as fh:
        return _footer_fingerprint(uri, fh)


def _footer_fingerprint(uri: str, fh: Any) -> tuple[str, int]:
    size = fh.seek(0, 2)
    if size < 12:
        raise CorpusError(f"shard {uri}: not a Parquet file ({size} bytes)")
    fh.seek(size - 8)
    tail = fh.read(8)
    if tail[4:] != b"PAR1":
        raise CorpusError(f"shard {uri}: not a Parquet file or truncated (no footer magic)")
    footer_len = struct.unpack("<I", tail[:4])[0]
    if footer_len + 12 > size:
        raise CorpusError(f"shard {uri}: truncated (footer of {footer_len} bytes in a {size}-byte file)")
    fh.seek(size - 8 - footer_len)
    footer = fh.read(footer_len)
    h = hashlib.blake2b(digest_size=16)
    h.update(str(size).encode())
    h.update(footer)
    return h.hexdigest(), size


def row_group_range(meta: pq.FileMetaData, group: int) -> tuple[int, int]:
    """(offset, length) of a row group's bytes: from its first column chunk's first page (dictionary page
    included) to the end of its last chunk, per the footer's offsets and compressed sizes."""
    rg = meta.row_group(group)
    lo, hi = None, 0
    for c in range(rg.num_columns):
        col = rg.column(c)
        start = col.data_page_offset
        if col.has_dictionary_page and col.dictionary_page_offset:
            start = min(start, col.dictionary_page_offset)
        lo = start if lo is None else min(lo, start)
        hi = max(hi, start + col.total_compressed_size)
    return (lo or 0), hi - (lo or 0)


_HASH_CHUNK = 8 << 20


def _hash_range(fh: Any, offset: int, length: int) -> str:
    h = hashlib.blake2b(digest_size=8)
    fh.seek(offset)
    while length > 0:
        chunk = fh.read(min(length, _HASH_CHUNK))
        if not chunk:
            break
        h.update(chunk)
        length -= len(chunk)
    return h.hexdigest()


def row_group_hashes(uri: str, meta: pq.FileMetaData) -> list[str]:
    """A hash of each row group's bytes (16 hex digits each), read once at registration."""
    fs, path = _filesystem(uri)
    with fs.open(path, "rb") as fh:
        return [_hash_range(fh, *row_group_range(meta, g)) for g in range(meta.num_row_groups)]


class ShardChangedError(CorpusError):
    """A registered shard whose bytes are no longer those it was registered with."""


@dataclass
class ShardCheck:
    """What a shard's bytes were at registration, checked where its text is read: the footer once (size and
    footer hash), then each row group's hash the first time it is read (a row group that is never read is
    never hashed). `row_group_hashes` is None for shards registered before they were recorded: the footer
    alone is checked until `init` fills them in."""

    uri: str
    fingerprint: str
    row_group_hashes: tuple[str, ...] | None = None
    _footer_ok: bool = field(default=False, repr=False, compare=False)
    _groups_ok: set[int] = field(default_factory=set, repr=False, compare=False)

    def changed(self, what: str) -> ShardChangedError:
        return ShardChangedError(
            f"shard {self.uri}: changed since it was registered ({what}); "
            "run `corpus-agents init WORKSPACE --refresh` to re-register it"
        )

    def check_footer(self) -> None:
        if self._footer_ok:
            return
        fingerprint, _ = shard_fingerprint(self.uri)
        if fingerprint != self.fingerprint:
            raise self.changed("size or footer differs")
        self._footer_ok = True

    def check_row_group(self, meta: pq.FileMetaData, group: int) -> None:
        """Check the footer (once) and row group `group`'s hash (once per ShardCheck)."""
        self.check_footer()
        if self.row_group_hashes is None or group in self._groups_ok:
            return
        fs, path = _filesystem(self.uri)
        with fs.open(path, "rb") as fh:
            if _hash_range(fh, *row_group_range(meta, group)) != self.row_group_hashes[group]:
                raise self.changed(f"row group {group} differs")
        self._groups_ok.add(group)

    def check_all(self) -> None:
        """Check the footer and every row group (what `init --refresh` does for each known shard)."""
        self.check_footer()
        if self.row_group_hashes is not None:
            meta = open_parquet(self.uri).metadata
            for g in range(meta.num_row_groups):
                self.check_row_group(meta, g)


def resolve_column(table_or_batch: pa.Table | pa.RecordBatch, path: str) -> pa.Array:
    """Column by name, or a nested struct field by dotted path (`meta.redpajama_set_name`)."""
    top, *rest = path.split(".")
    arr = table_or_batch.column(top)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    for name in rest:
        arr = pc.struct_field(arr, name)
    return arr


def check_column(schema: pa.Schema, path: str, uri: str) -> pa.DataType:
    """The Arrow type at a (possibly dotted) column path, or a CorpusError naming the shard."""
    top, *rest = path.split(".")
    if top not in schema.names:
        raise CorpusError(f"shard {uri}: no column {top!r} (columns: {', '.join(schema.names)})")
    dtype = schema.field(top).type
    for name in rest:
        if not pa.types.is_struct(dtype) or dtype.get_field_index(name) < 0:
            raise CorpusError(f"shard {uri}: column {path!r} does not exist ({top!r} is {dtype})")
        dtype = dtype.field(name).type
    return dtype


def inspect_shard(uri: str, text_column: str) -> tuple[dict[str, Any], pa.Table]:
    """Read a shard's footer and text lengths: (shard info, per-document table) or a CorpusError."""
    fingerprint, size = shard_fingerprint(uri)
    try:
        pf = open_parquet(uri)
        schema = pf.schema_arrow
    except (OSError, pa.ArrowException) as exc:
        raise CorpusError(f"shard {uri}: cannot read Parquet metadata: {exc}") from None
    dtype = check_column(schema, text_column, uri)
    if not any(is_type(dtype) for is_type in _STRING_TYPES):
        raise CorpusError(f"shard {uri}: text column {text_column!r} is {dtype}, expected a string column")
    meta = pf.metadata
    row_group_rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    if sum(row_group_rows) >= 2**31:
        raise CorpusError(f"shard {uri}: {sum(row_group_rows):,} rows; split shards above 2^31 rows")
    lengths, nulls, groups = [], [], []
    try:
        for g in range(meta.num_row_groups):
            col = resolve_column(pf.read_row_group(g, columns=[text_column.split(".")[0]]), text_column)
            if pa.types.is_string_view(col.type):
                col = col.cast(pa.large_string())
            lengths.append(pc.binary_length(col).fill_null(0).cast(pa.int32()))
            nulls.append(col.is_null())
            groups.append(pa.array(np.full(len(col), g, dtype=np.int32)))
    except (OSError, pa.ArrowException) as exc:
        raise CorpusError(f"shard {uri}: cannot read row group {g}: {exc}") from None
    num_rows = sum(row_group_rows)
    docs = pa.table(
        {
            "row_idx": pa.array(np.arange(num_rows, dtype=np.int32)),
            "row_group": pa.concat_arrays(groups) if groups else pa.array([], pa.int32()),
            "text_bytes": pa.concat_arrays(lengths) if lengths else pa.array([], pa.int32()),
            "text_null": pa.concat_arrays(nulls) if nulls else pa.array([], pa.bool_()),
        }
    )
    info = {
        "uri": uri,
        "num_rows": num_rows,
        "num_bytes": size,
        "fingerprint": fingerprint,
        "num_row_groups": meta.num_row_groups,
        "row_group_rows": row_group_rows,
        "row_group_hashes": row_group_hashes(uri, meta),
        "text_column": text_column,
    }
    return info, docs


@dataclass
class RegisterReport:
    added: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    refreshed: list[str] = field(default_factory=list)  # changed shards re-registered by `refresh`


def register_corpus(
    catalog: Any, patterns: list[str], text_column: str, threads: int = 4, *, refresh: bool = False
) -> RegisterReport:
    """Register new shards (idempotent: known unchanged shards are skipped, changed ones are an error).

    A known shard is compared by its footer; registered before row-group hashes were recorded, it gets them
    now. With `refresh` every known shard's row groups are hashed too, and a changed shard is re-registered
    under its shard id, its committed parts dropped so the next `score` rescores that shard alone.
    """
    report = RegisterReport()
    known = {s.uri: s for s in catalog.shards()}
    uris = expand_patterns(patterns)
    new: list[str] = []
    changed: list[str] = []
    unhashed: list[str] = []
    for uri in uris:
        if uri not in known:
            new.append(uri)
            continue
        shard = known[uri]
        check = ShardCheck(uri, shard.fingerprint, shard.row_group_hashes)
        try:
            if refresh:
                check.check_all()
            else:
                check.check_footer()
        except ShardChangedError as exc:
            if refresh:
                changed.append(uri)
            else:
                report.errors.append(str(exc))
            continue
        except (CorpusError, OSError, pa.ArrowException) as exc:
            report.errors.append(str(exc) if isinstance(exc, CorpusError) else f"shard {uri}: {exc}")
            continue
        if shard.row_group_hashes is None:
            unhashed.append(uri)  # a shard of an older workspace: its row groups are hashed once, here
        else:
            report.unchanged.append(uri)

    def inspect(uri: str) -> tuple[str, Any]:
        try:
            if uri in unhashed:
                return uri, row_group_hashes(uri, open_parquet(uri).metadata)
            return uri, inspect_shard(uri, text_column)
        except CorpusError as exc:
            return uri, exc
        except (OSError, pa.ArrowException) as exc:
            return uri, CorpusError(f"shard {uri}: {exc}")

    with ThreadPoolExecutor(max(1, threads)) as pool:
        for uri, result in pool.map(inspect, [*new, *changed, *unhashed]):  # ordered: stable shard ids
            if isinstance(result, CorpusError):
                report.errors.append(str(result))
            elif uri in changed:
                catalog.replace_shard(known[uri].shard_id, *result)
                report.refreshed.append(uri)
            elif uri in unhashed:  # same footer: the documents stand, only the hashes are added
                catalog.set_row_group_hashes(known[uri].shard_id, result)
                report.unchanged.append(uri)
            else:
                catalog.add_shard(*result)
                report.added.append(uri)
    if report.added or report.refreshed:
        catalog.refresh_views()
    return report


def iter_doc_batches(
    uri: str,
    text_column: str,
    columns: list[str],
    batch_rows: int,
    rows: np.ndarray | None = None,
    check: ShardCheck | None = None,
) -> Iterator[tuple[np.ndarray, DocBatch]]:
    """Yield (row indices, DocBatch) over a shard, reading the text and extra columns once.

    `rows` (sorted row indices) restricts reading to those rows; None reads every row. With `check`, the
    footer and each row group read are checked against the registration first (ShardChangedError).
    """
    if check is not None:
        check.check_footer()
    pf = open_parquet(uri)
    needed = list(dict.fromkeys(c.split(".")[0] for c in [text_column, *columns]))
    meta = pf.metadata
    start = 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if rows is not None:
            lo, hi = np.searchsorted(rows, [start, start + n])
            if lo == hi:
                start += n
                continue
        if check is not None:
            check.check_row_group(meta, g)
        table = pf.read_row_group(g, columns=needed)
        if rows is not None:
            table = table.take(numeric_array(rows[lo:hi] - start))
            row_idx = rows[lo:hi]
        else:
            row_idx = np.arange(start, start + n)
        for off in range(0, len(table), batch_rows):
            part = table.slice(off, batch_rows)
            text = resolve_column(part, text_column)
            extra = {c: resolve_column(part, c) for c in columns}
            yield row_idx[off : off + batch_rows], DocBatch(text, extra)
        start += n


def sample_rows(catalog: Any, n: int, seed: int) -> dict[int, np.ndarray]:
    """A seeded uniform sample of n documents as {shard_id: sorted row indices}."""
    rows = catalog.sample_documents(n, seed)
    by_shard: dict[int, list[int]] = {}
    for shard_id, row in rows:
        by_shard.setdefault(shard_id, []).append(row)
    return {s: np.array(sorted(r), dtype=np.int64) for s, r in by_shard.items()}


def _read_error(uri: str, what: str, exc: BaseException) -> CorpusError:
    return CorpusError(f"shard {uri}: cannot read {what}: {one_line(exc)}")


def sample_texts(catalog: Any, n: int, seed: int = 0) -> list[str]:
    """Texts of a seeded random sample of n documents (for fitting agents), in a seeded random order."""
    shards = {s.shard_id: s for s in catalog.shards()}
    texts: list[str] = []
    for shard_id, rows in sorted(sample_rows(catalog, n, seed).items()):
        shard = shards[shard_id]
        try:
            for _, batch in iter_doc_batches(shard.uri, shard.text_column, [], 8192, rows, shard.check()):
                texts.extend(batch.texts)
        except (OSError, pa.ArrowException) as exc:
            raise _read_error(shard.uri, "a sample of its texts", exc) from None
    order = np.random.default_rng(seed).permutation(len(texts))
    return [texts[i] for i in order]


def distinct_values(catalog: Any, column: str) -> list[Any]:
    """Distinct values of a (possibly dotted) column over every registered shard."""
    values: set[Any] = set()
    for shard in catalog.shards():
        check = shard.check()
        try:
            check.check_footer()
            pf = open_parquet(shard.uri)
            check_column(pf.schema_arrow, column, shard.uri)
            for g in range(pf.metadata.num_row_groups):
                check.check_row_group(pf.metadata, g)
                arr = resolve_column(pf.read_row_group(g, columns=[column.split(".")[0]]), column)
                values.update(_python_values(pc.unique(arr)))
        except (OSError, pa.ArrowException) as exc:
            raise _read_error(shard.uri, f"column {column!r}", exc) from None
    return sorted(values, key=lambda v: (v is None, str(v)))


def column_types(catalog: Any, column: str) -> dict[str, pa.DataType]:
    """The Arrow type of a (possibly dotted) column in each registered shard, from the footers alone."""
    types: dict[str, pa.DataType] = {}
    for shard in catalog.shards():
        shard.check().check_footer()
        try:
            schema = open_parquet(shard.uri).schema_arrow
        except (OSError, pa.ArrowException) as exc:
            raise _read_error(shard.uri, f"column {column!r}", exc) from None
        types[shard.uri] = check_column(schema, column, shard.uri)
    return types


def _python_values(arr: pa.Array) -> list[Any]:
    """Python values of an array; strings that are not valid UTF-8 are decoded with replacement characters."""
    try:
        return arr.to_pylist()
    except UnicodeDecodeError:
        raw = arr.cast(pa.large_binary()).to_pylist()
        return [None if b is None else b.decode("utf-8", errors="replace") for b in raw]


__all__ = [
    "DocBatch",
    "RegisterReport",
    "ShardChangedError",
    "ShardCheck",
    "column_types",
    "decode_texts",
    "distinct_values",
    "expand_patterns",
    "inspect_shard",
    "iter_doc_batches",
    "open_parquet",
    "pack_doc_ids",
    "register_corpus",
    "row_group_hashes",
    "row_group_range",
    "sample_texts",
    "shard_fingerprint",
    "unpack_doc_ids",
]


def read_doc_texts(shards: dict[int, Any], doc_ids: np.ndarray) -> list[str]:
    """Texts of the given documents (in the given order), reading each shard once for its rows."""
    shard_of, row_of = unpack_doc_ids(doc_ids)
    texts: dict[int, str] = {}
    for shard_id in np.unique(shard_of):
        shard = shards[int(shard_id)]
        rows = np.unique(row_of[shard_of == shard_id])
        for batch_rows, batch in iter_doc_batches(
            shard.uri, shard.text_column, [], 8192, rows, shard.check()
        ):
            texts.update(zip(pack_doc_ids(shard_id, batch_rows).tolist(), batch.texts))
    return [texts[int(d)] for d in doc_ids]
