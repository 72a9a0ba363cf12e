"""Trainer-ready exports of a run's selection: Parquet (text, labels, scores), pre-tokenised token files in
datatrove's format, or a `datasets` dataset on disk.

Token files (`--format tokens`) follow datatrove's tokenizer output, which its own
`datatrove.utils.dataset.DatatroveFolderDataset` reads directly: `part-NNNNN.ds` holds the
documents' tokens back to back (little-endian uint16 when the vocabulary has at most 65,536 entries, else
uint32), each document followed by the EOS token; `part-NNNNN.ds.index` the end of each document in tokens
(uint64, exclusive, EOS included); `part-NNNNN.ds.metadata` three lines: `tokenizer|token bytes`, the token
count and the count with an SI prefix. `part-NNNNN.ds.doc_ids` (int64, one per document, in file order) is ours:
datatrove ignores it, and it joins a document back to the catalog. Megatron's indexed dataset (.bin/.idx)
was the other candidate; it is read through megatron-core's compiled helpers, while datatrove's format is
plain arrays that numpy writes and any trainer memory-maps.

Documents are tokenised as the built-in trainer reads them (`reader.encode_texts`: no special tokens, then
EOS), through the workspace's token cache (`WS/cache/tokens`, which training fills: what a run read is not
tokenised again), in doc_id order, cut into files of about `shard_tokens` tokens (a document is never split; a file
ends with the first document that reaches the count), and shuffled inside each file with (seed, file
number), as datatrove's tokenizer does by default: its readers read a file sequentially.

Every format survives a kill -9 at any moment: the settings go to OUT/export.json first (a re-run with
other settings is refused), each file is written under a temporary name and published by a rename, a
re-run keeps the files already published and writes the rest (identical to an uninterrupted run), and
export.json records the totals last. A `datasets` dataset is built beside OUT and published in one rename.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from corpus_agents.errors import CorpusAgentsError
from corpus_agents.scoring.catalog import Catalog
from corpus_agents.scoring.corpus import iter_doc_batches, open_parquet, pack_doc_ids, unpack_doc_ids
from corpus_agents.storage import atomic_path, remove_path, temp_path
from corpus_agents.training.models import load_tokenizer
from corpus_agents.training.reader import encode_texts, flatten
from corpus_agents.training.runs import RunPaths, selection_path
from corpus_agents.training.selection import ShardRef, read_snapshot
from corpus_agents.training.selector import read_run_record
from corpus_agents.training.token_cache import TokenCache, token_cache_dir

FORMATS = ("parquet", "tokens", "hf")
MANIFEST = "export.json"  # in OUT: the export's settings, then its totals once complete
DOC_IDS_SUFFIX = ".doc_ids"  # beside each .ds file: the doc_id of each document, in file order
TEXT_BATCH = 8192  # documents read (and tokenised) at a time
UINT16_VOCAB = 1 << 16  # datatrove: 2-byte tokens up to this vocabulary size, 4-byte beyond


@dataclass(frozen=True)
class ExportSummary:
    format: str
    out: Path
    files: int
    documents: int
    tokens: int | None  # tokens of the tokenizer, each document's EOS included; None without a tokenizer
    tokenizer: str | None

    def line(self) -> str:
        counted = (
            f" ({self.tokens:,} tokens of {self.tokenizer}, EOS included)"
            if self.tokens is not None
            else " (tokens not counted: the run has no tokenizer; pass --tokenizer)"
        )
        return (
            f"wrote {self.documents:,} documents{counted} to {self.files} {self.format} files in {self.out}"
        )


@dataclass(frozen=True)
class ExportTokenizer:
    """The tokenizer an export counts and writes tokens with, and what identifies it."""

    tokenizer: Any
    name: str
    eos_id: int
    vocab_size: int
    fingerprint: str
    cache: TokenCache | None = None  # the workspace's token cache (`document_tokens`)

    @classmethod
    def load(cls, name: str, cache_root: str | Path | None = None) -> ExportTokenizer:
        """`name` (a directory or hub name), with the token cache under `cache_root` if given."""
        tok = load_tokenizer(name)
        digest = hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()[:16]
        cache = None if cache_root is None else TokenCache(cache_root, tok)
        return cls(tok, name, int(tok.eos_token_id), len(tok), digest, cache)

    @property
    def token_bytes(self) -> int:
        return 2 if self.vocab_size <= UINT16_VOCAB else 4


def run_tokenizer(workspace: str | Path, run_id: str, name: str | None) -> ExportTokenizer | None:
    """`name` if given, else the tokenizer the run trained with (its config's `tokenizer.path`, or the one
    it trained and saved in its directory); None for a run that has none (a static selection)."""
    if name is None:
        paths = RunPaths.of(workspace, run_id)
        record = read_run_record(paths.root) or {}
        name = record.get("config", {}).get("tokenizer", {}).get("path")
        if name is None and (paths.tokenizer / "tokenizer.json").is_file():
            name = str(paths.tokenizer)
    return None if name is None else ExportTokenizer.load(name, token_cache_dir(workspace))


def document_tokens(
    tok: ExportTokenizer, ref: ShardRef, rows: np.ndarray, texts: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(token ids of the documents back to back, each followed by EOS; tokens per document, EOS included)
    for rows `rows` (sorted, as `Selection.texts` gives them) of shard `ref`, whose `texts` are read, as
    the trainer reads them.

    Every token an export writes or counts comes from here. With `tok.cache` (the workspace's token cache,
    which training filled with the same documents), rows it holds are not tokenised again and those it
    lacks are added to it; the tokens are the same either way.
    """
    if tok.cache is None or tok.cache.path(ref, 0) is None:
        lengths, flat = flatten(encode_texts(tok.tokenizer, texts))
    else:
        groups = np.searchsorted(_group_starts(ref.uri, ref.fingerprint), rows, side="right") - 1
        parts = []
        for g in np.unique(groups).tolist():
            at = np.flatnonzero(groups == g)
            parts.append(
                tok.cache.tokens(
                    ref,
                    g,
                    rows[at],
                    lambda missing, at=at: flatten(
                        encode_texts(
                            tok.tokenizer, [texts[i] for i in at[np.searchsorted(rows[at], missing)]]
                        )
                    ),
                )
            )
        lengths = np.concatenate([p[0] for p in parts])
        flat = np.concatenate([p[1] for p in parts]).astype(np.int64)
    return np.insert(flat, np.cumsum(lengths), tok.eos_id), lengths + 1


@functools.lru_cache(maxsize=64)
def _group_starts(uri: str, fingerprint: str | None) -> np.ndarray:
    """The first row of each row group of a shard (and its row count last), per registered version."""
    meta = open_parquet(uri).metadata
    rows = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    return np.concatenate([[0], np.cumsum(rows, dtype=np.int64)])


@dataclass(frozen=True)
class Selection:
    """A run's selection at one round: its doc_ids, sorted, and the shards they are read from."""

    run_id: str
    round: int
    doc_ids: np.ndarray
    shards: dict[int, ShardRef]

    @classmethod
    def of(cls, catalog: Catalog, run_id: str, round_: int | None) -> Selection:
        round_, path = selection_path(catalog, run_id, round_)
        table, shards = read_snapshot(path)
        return cls(run_id, round_, np.sort(table["doc_id"].to_numpy().astype(np.int64)), shards)

    def texts(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, np.ndarray, list[str]]]:
        """(shard id, rows, texts) of the documents [start, stop) in doc_id order, in batches."""
        shard_ids, rows = unpack_doc_ids(self.doc_ids[start:stop])
        for shard_id in np.unique(shard_ids).tolist():
            ref = self.shards[shard_id]
            wanted = rows[shard_ids == shard_id]
            for batch_rows, batch in iter_doc_batches(
                ref.uri, ref.text_column, [], TEXT_BATCH, wanted, ref.check()
            ):
                yield shard_id, batch_rows, batch.texts

    def settings(self) -> dict[str, Any]:
        digest = hashlib.sha256(self.doc_ids.tobytes()).hexdigest()[:16]
        return {"run": self.run_id, "round": self.round, "documents": len(self.doc_ids), "selection": digest}


def export_run(
    catalog: Catalog,
    run_id: str,
    round_: int | None,
    out: Path,
    format_: str,
    *,
    tokenizer: str | None = None,
    shard_docs: int = 100_000,
    shard_tokens: int = 100_000_000,
    seed: int = 0,
) -> ExportSummary:
    """Export a round's selection to `out` in `format_` (FORMATS); tokens are counted with `tokenizer` or
    the run's own, and `tokens` needs one. A re-run after a kill finishes the same export."""
    if format_ not in FORMATS:
        raise CorpusAgentsError(f"unknown export format {format_!r}; formats: {', '.join(FORMATS)}")
    selection = Selection.of(catalog, run_id, round_)
    tok = run_tokenizer(catalog.dir, run_id, tokenizer)
    if tok is None and format_ == "tokens":
        raise CorpusAgentsError(f"run {run_id!r} has no tokenizer (a static selection?): pass --tokenizer")
    settings = {
        "format": format_,
        **selection.settings(),
        "tokenizer": tok.name if tok else None,
        "tokenizer_fingerprint": tok.fingerprint if tok else None,
        **({"shard_docs": shard_docs} if format_ == "parquet" else {}),
        **({"shard_tokens": shard_tokens, "seed": seed} if format_ == "tokens" else {}),
    }
    done = _existing(out, settings)
    if done is not None and done.get("complete"):
        return _summary(out, done)
    if format_ == "hf":
        return _write_hf(catalog, selection, tok, out, settings)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp-*"):  # left by a killed export
        remove_path(stale)
    _write_manifest(out, {"settings": settings, "complete": False})
    if format_ == "parquet":
        files, tokens = _write_parquet(catalog, selection, tok, out, shard_docs)
    else:
        files, tokens = _write_tokens(selection, tok, out, shard_tokens, seed)
    manifest = {"settings": settings, "complete": True, "files": files, "tokens": tokens}
    _write_manifest(out, manifest)
    return _summary(out, manifest)


# ----- the manifest ----------------------------------------------------------------------------------------
def _existing(out: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """OUT's manifest when it holds this export (finished or not); None when OUT is absent or empty. OUT
    holding another export or other files is refused."""
    path = out / MANIFEST
    if path.is_file():
        manifest = json.loads(path.read_text(encoding="utf-8"))
        old = manifest["settings"]
        changed = sorted(k for k in settings.keys() | old.keys() if settings.get(k) != old.get(k))
        if changed:
            raise CorpusAgentsError(
                f"{out} holds an export with other settings ({', '.join(changed)}): choose another --out"
            )
        return manifest
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CorpusAgentsError(f"{out} exists and holds no export: choose another --out")
    return None


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    with atomic_path(out / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")


def _summary(out: Path, manifest: dict[str, Any]) -> ExportSummary:
    settings = manifest["settings"]
    return ExportSummary(
        settings["format"],
        out,
        manifest["files"],
        settings["documents"],
        manifest["tokens"],
        settings["tokenizer"],
    )


# ----- parquet and hf: text, labels and scores -------------------------------------------------------------
def _labelled(
    catalog: Catalog,
    selection: Selection,
    tok: ExportTokenizer | None,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[pa.Table]:
    """Documents [start, stop) with every agent's label and score, their text, and (with a tokenizer) their
    `num_tokens` (EOS included), in batches."""
    for shard_id, rows, texts in selection.texts(start, stop):
        doc_ids = pa.array(pack_doc_ids(shard_id, rows), pa.int64())
        with catalog.registered("exported", pa.table({"doc_id": doc_ids})):
            part = catalog.arrow("runs.sql", "export_labels")
        part = part.append_column("text", pa.array(texts, pa.string()))
        if tok is not None:
            part = part.append_column(
                "num_tokens", pa.array(document_tokens(tok, selection.shards[shard_id], rows, texts)[1])
            )
        yield part


def _write_parquet(
    catalog: Catalog, selection: Selection, tok: ExportTokenizer | None, out: Path, shard_docs: int
) -> tuple[int, int | None]:
    """part-NNNNN.parquet with `shard_docs` documents each (the last fewer); parts already published are kept."""
    parts = math.ceil(len(selection.doc_ids) / shard_docs)
    tokens = 0
    for k in range(parts):
        target = out / f"part-{k:05d}.parquet"
        if not target.is_file():
            table = pa.concat_tables(_labelled(catalog, selection, tok, k * shard_docs, (k + 1) * shard_docs))
            with atomic_path(target) as tmp:
                pq.write_table(table.combine_chunks(), tmp)
        if tok is not None:
            tokens += int(pq.read_table(target, columns=["num_tokens"])["num_tokens"].to_numpy().sum())
    return parts, tokens if tok is not None else None


def _write_hf(
    catalog: Catalog, selection: Selection, tok: ExportTokenizer | None, out: Path, settings: dict[str, Any]
) -> ExportSummary:
    """A `datasets` dataset (what `_labelled` yields, as columns) saved with `save_to_disk`, built beside
    OUT from an Arrow stream and published in one rename."""
    from datasets import Dataset

    staging = temp_path(out.with_name(f"{out.name}.arrow"))
    for pattern in (f".{out.name}.tmp-*", f".{out.name}.arrow.tmp-*"):  # left by a killed export
        for stale in out.parent.glob(glob.escape(pattern[:-1]) + "*"):
            remove_path(stale)
    tokens = 0
    try:
        writer: pa.ipc.RecordBatchStreamWriter | None = None
        with pa.OSFile(str(staging), "wb") as sink:
            for table in _labelled(catalog, selection, tok):
                writer = writer or pa.ipc.new_stream(sink, table.schema)
                writer.write_table(table)
                tokens += int(table["num_tokens"].to_numpy().sum()) if tok is not None else 0
            if writer is None:
                raise CorpusAgentsError(
                    f"run {selection.run_id!r} selected no documents at round {selection.round}"
                )
            writer.close()
        dataset = Dataset.from_file(str(staging))
        manifest = {"settings": settings, "complete": True, "files": 0, "tokens": tokens if tok else None}
        with atomic_path(out) as tmp:
            dataset.save_to_disk(str(tmp))
            manifest["files"] = len(list(tmp.glob("data-*.arrow")))
            _write_manifest(tmp, manifest)
        del dataset
    finally:
        remove_path(staging)
    return _summary(out, manifest)


# ----- tokens: datatrove's format --------------------------------------------------------------------------
def _write_tokens(
    selection: Selection, tok: ExportTokenizer, out: Path, shard_tokens: int, seed: int
) -> tuple[int, int]:
    """part-NNNNN.ds files of about `shard_tokens` tokens (module doc); files already published are kept and
    the documents after them are written."""
    k, start, tokens = 0, 0, 0
    while (out / f"part-{k:05d}.ds").is_file():  # the .ds is published last: its siblings are complete
        ends = np.fromfile(out / f"part-{k:05d}.ds.index", dtype="<u8")
        k, start, tokens = k + 1, start + len(ends), tokens + (int(ends[-1]) if len(ends) else 0)
    dtype = np.dtype("<u2" if tok.token_bytes == 2 else "<u4")
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (tokens, lengths, doc_ids) of this file
    held = 0
    for shard_id, rows, texts in selection.texts(start):
        flat, lengths = document_tokens(tok, selection.shards[shard_id], rows, texts)
        if len(flat) and (flat.min() < 0 or flat.max() > np.iinfo(dtype).max):
            raise CorpusAgentsError(f"tokenizer {tok.name} yields ids beyond {dtype.itemsize}-byte tokens")
        flat, doc_ids = flat.astype(dtype), pack_doc_ids(shard_id, rows)
        ends = np.cumsum(lengths)
        while len(lengths):  # the documents up to the first that fills this file, then the rest
            full = np.flatnonzero(held + ends >= shard_tokens)
            n = int(full[0]) + 1 if len(full) else len(lengths)
            pending.append((flat[: ends[n - 1]], lengths[:n], doc_ids[:n]))
            held += int(ends[n - 1])
            flat, lengths, doc_ids, ends = (
                flat[ends[n - 1] :],
                lengths[n:],
                doc_ids[n:],
                ends[n:] - ends[n - 1],
            )
            if held >= shard_tokens:
                _write_token_file(out, k, pending, tok, seed)
                k, tokens, pending, held = k + 1, tokens + held, [], 0
    if pending:
        _write_token_file(out, k, pending, tok, seed)
        k, tokens = k + 1, tokens + held
    return k, tokens


def _write_token_file(
    out: Path, k: int, docs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], tok: ExportTokenizer, seed: int
) -> None:
    """File k of the export: its documents shuffled with (seed, k); the .ds is published last."""
    flat = np.concatenate([d[0] for d in docs])
    lengths = np.concatenate([d[1] for d in docs])
    doc_ids = np.concatenate([d[2] for d in docs])
    order = np.random.default_rng([seed, k]).permutation(len(lengths))
    starts = np.cumsum(lengths) - lengths
    new_lengths = lengths[order]
    new_ends = np.cumsum(new_lengths)
    # token i of the new file comes from old position i + (old start - new start) of its document
    shift = np.repeat(starts[order] - (new_ends - new_lengths), new_lengths)
    tokens = flat[np.arange(len(flat)) + shift]
    base = out / f"part-{k:05d}.ds"
    count = int(new_ends[-1])
    metadata = f"{tok.name}|{tok.token_bytes}\n{count}\n{_metric(count)}T"
    for path, data in (
        (base.with_name(base.name + ".index"), new_ends.astype("<u8")),
        (base.with_name(base.name + DOC_IDS_SUFFIX), doc_ids[order].astype("<i8")),
        (base.with_name(base.name + ".metadata"), metadata),
        (base, tokens),
    ):
        with atomic_path(path) as tmp:
            if isinstance(data, str):
                tmp.write_text(data, encoding="utf-8")
            else:
                data.tofile(tmp)


def _metric(n: int) -> str:
    """A count in three significant digits and an SI prefix ("1.23 M"), as datatrove's metadata writes it."""
    if n == 0:
        return "0.00 "
    exponent = min(int(math.log10(n)) // 3, 8)
    value = n / 1000**exponent
    return f"{value:.{max(2 - int(math.log10(value)), 0)}f} {' kMGTPEZY'[exponent].strip()}"


def read_token_file(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, document ends, doc_ids) of one exported .ds file: what a user needs to check an export or
    map tokens back to catalog documents."""
    path = Path(path)
    metadata = path.with_name(path.name + ".metadata").read_text(encoding="utf-8").splitlines()
    dtype = "<u2" if metadata[0].rsplit("|", 1)[1] == "2" else "<u4"
    return (
        np.fromfile(path, dtype=dtype),
        np.fromfile(path.with_name(path.name + ".index"), dtype="<u8"),
        np.fromfile(path.with_name(path.name + DOC_IDS_SUFFIX), dtype="<i8"),
    )


__all__ = [
    "FORMATS",
    "ExportSummary",
    "ExportTokenizer",
    "Selection",
    "document_tokens",
    "export_run",
    "read_token_file",
    "run_tokenizer",
]
