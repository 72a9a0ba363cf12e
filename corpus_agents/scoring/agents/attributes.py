"""Attributes agent: labels or scores that already exist in side files keyed by a document id (Dolma
attribute files, datatrove metadata, NeMo Curator classifier output), joined to the corpus by an id column
of the shards, which are never rewritten.

The side files are Parquet or JSON lines (`.jsonl`, `.json`, optionally `.gz`/`.zst`/`.bz2`), matched by a
glob when the agent is added; their contents are part of its fingerprint, so changing them rescores it.
`field` names the value, dots addressing struct fields (`attributes.quality`, `metadata.fasttext_score`):

- a string (or boolean: `false`, `true`) value is the label; the label set is discovered over the side files, and a value
  that appears only later gets the catch-all `(other)`, as for the metadata agent;
- a number is binned as by the column agent (`bins`, or `quantiles`, default 5, taken over the side files),
  the number being the raw score;
- a list of Dolma spans `[[start, end, value], ...]` gives the value of its longest span: the document-level
  value for a document-level attribute, which has one span covering the document.

A document whose id is not in the side files, or whose value is null, has no label (it counts as
unscored). Every side file is read into memory by each worker once: an id and one value per document.
"""

from __future__ import annotations

import glob
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq

from corpus_agents.config import ConfigError, bounded, key_path
from corpus_agents.scoring.agents.base import (
    Agent,
    AgentContext,
    AgentError,
    AgentOptions,
    ScoreResult,
    bin_labels,
    check_binning,
    digitize,
    quantile_edges,
)
from corpus_agents.scoring.agents.column import DEFAULT_QUANTILES, MAX_BINS, is_numeric, numeric_values
from corpus_agents.scoring.agents.metadata import MAX_LABELS, other_label
from corpus_agents.scoring.corpus import DocBatch, resolve_column

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSED = ("", ".gz", ".zst", ".bz2")


@dataclass
class AttributesOptions(AgentOptions):
    files: list[str]  # side files: paths or globs of Parquet or JSON-lines files (comma-separated)
    field: str  # the label or score in them; dots address struct fields (attributes.quality)
    id_column: str = "id"  # the document id in the side files
    doc_id_column: str | None = None  # the document id in the shards (default: id_column)
    bins: list[float] | None = None  # for a numeric field: bin edges
    quantiles: int | None = bounded(None, ge=2, le=MAX_BINS)  # for a numeric field (default 5)

    def validate(self, where: str) -> None:
        if not self.files or not all(f.strip() for f in self.files):
            raise ConfigError(f"{key_path(where, 'files')} names no file")
        for name in ("field", "id_column", "doc_id_column"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise ConfigError(f"{key_path(where, name)} is empty")
        check_binning(self.bins, self.quantiles, where)


def side_files(patterns: list[str]) -> list[str]:
    """The local side files that paths and globs name (absolute, sorted)."""
    files: list[str] = []
    for pattern in patterns:
        if "://" in pattern:
            raise AgentError(f"side file {pattern}: only local files are supported")
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise AgentError(f"no side files match {pattern}")
        for m in matches:
            if not Path(m).is_file():
                raise AgentError(f"side file {m} does not exist or is not a file")
            files.append(str(Path(m).resolve()))
    return sorted(dict.fromkeys(files))


def read_side_file(path: str, columns: list[str]) -> pa.Table:
    """The top-level `columns` of one Parquet or JSON-lines side file."""
    name = path.lower()
    try:
        if name.endswith(".parquet"):
            return pq.read_table(path, columns=columns)
        if any(name.endswith(s + c) for s in JSON_SUFFIXES for c in COMPRESSED):
            with pa.input_stream(path, compression="detect") as stream:
                table = pajson.read_json(stream)
            missing = [c for c in columns if c not in table.column_names]
            if missing:
                raise AgentError(f"side file {path} has no column {missing[0]!r}")
            return table.select(columns)
    except (OSError, pa.ArrowException) as exc:
        raise AgentError(f"cannot read side file {path}: {str(exc).splitlines()[0]}") from None
    raise AgentError(f"side file {path}: not .parquet or .jsonl/.json (optionally .gz, .zst, .bz2)")


def span_values(spans: pa.Array) -> pa.Array:
    """Dolma spans `[[start, end, value], ...]` per document -> the value of each document's longest span
    (the first of equal ones); null for a document without spans."""
    n = len(spans)
    flat = pc.list_flatten(spans)  # one [start, end, value] per span
    parents = np.asarray(pc.list_parent_indices(spans).to_numpy(zero_copy_only=False))
    if len(flat) == 0:
        return pa.nulls(n, pa.float64())
    start = numeric_values(pc.list_element(flat, 0))
    end = numeric_values(pc.list_element(flat, 1))
    value = numeric_values(pc.list_element(flat, 2))
    order = np.lexsort((-(end - start), parents))  # by document, longest span first
    first = np.unique(parents[order], return_index=True)
    out = np.full(n, np.nan)
    out[first[0]] = value[order[first[1]]]
    return pa.array(out, pa.float64(), mask=np.isnan(out))


def side_values(files: list[str], id_column: str, field: str) -> tuple[pa.Array, pa.Array]:
    """(ids, values) over all side files; span lists become document-level values."""
    columns = list(dict.fromkeys([id_column.split(".")[0], field.split(".")[0]]))
    ids, values = [], []
    for path in files:
        table = read_side_file(path, columns)
        try:
            doc_ids, value = resolve_column(table, id_column), resolve_column(table, field)
        except (KeyError, pa.ArrowException) as exc:
            raise AgentError(f"side file {path}: no field {field!r} or {id_column!r} ({exc})") from None
        if pa.types.is_list(value.type) or pa.types.is_large_list(value.type):
            value = span_values(value)
        elif pa.types.is_boolean(value.type):
            value = pc.cast(value, pa.string())  # labels "false" and "true"
        ids.append(doc_ids)
        values.append(value)
    try:
        return pa.concat_arrays(ids), pa.concat_arrays(values)
    except pa.ArrowException as exc:
        raise AgentError(f"the side files' {id_column!r} or {field!r} types differ: {exc}") from None


def id_keys(ids: pa.Array, integer: bool) -> np.ndarray:
    """Ids as a sortable numpy array: int64 for integer ids, else Python strings; nulls -> a placeholder
    (callers mask them)."""
    if integer:
        return np.asarray(
            pc.cast(ids, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64
        )
    return np.asarray(pc.cast(ids, pa.string()).fill_null("").to_numpy(zero_copy_only=False), dtype=object)


class SideIndex:
    """Side-file rows sorted by id, with each row's label and score: a batch of ids is looked up with one
    binary search (no hash table rebuilt per batch)."""

    def __init__(self, ids: pa.Array, labels: np.ndarray, scores: np.ndarray):
        self.integer = pa.types.is_integer(ids.type)
        keys = id_keys(ids, self.integer)
        valid = ~np.asarray(ids.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        keys, labels, scores = keys[valid], labels[valid], scores[valid]
        order = np.argsort(keys, kind="stable")
        self.keys, self.labels, self.scores = keys[order], labels[order], scores[order]
        repeated = np.flatnonzero(self.keys[1:] == self.keys[:-1])
        if len(repeated):
            raise AgentError(f"document id {self.keys[repeated[0]]!r} appears twice in the side files")

    def lookup(self, ids: pa.Array) -> ScoreResult:
        n = len(ids)
        if not self.integer and not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
            ids = pc.cast(ids, pa.string())
        try:
            keys = id_keys(ids, self.integer)
        except pa.ArrowException as exc:
            raise AgentError(f"the shards' ids do not match the side files' integer ids: {exc}") from None
        null = np.asarray(ids.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        labels, scores = np.full(n, -1, np.int32), np.full(n, np.nan, np.float32)
        if len(self.keys) == 0 or n == 0:
            return ScoreResult(labels, scores)
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        found = np.asarray(self.keys[pos] == keys, dtype=bool) & ~null
        labels[found], scores[found] = self.labels[pos[found]], self.scores[pos[found]]
        return ScoreResult(labels, scores)


class AttributesAgent(Agent):
    kind = "attributes"
    options_type = AttributesOptions

    @classmethod
    def create(
        cls, name: str, options: AttributesOptions | Mapping[str, Any], context: AgentContext
    ) -> AttributesAgent:
        options = AttributesOptions.of(options)
        files = side_files(options.files)
        ids, values = side_values(files, options.id_column, options.field)
        SideIndex(ids, np.zeros(len(ids), np.int32), np.zeros(len(ids), np.float32))  # ids are unique
        config: dict[str, Any] = {
            "files": files,
            "field": options.field,
            "id_column": options.id_column,
            "doc_id_column": options.doc_id_column or options.id_column,
            "bins": None,
            "quantiles": None,
        }
        if is_numeric(values.type) or pa.types.is_null(values.type):
            edges = options.bins
            if edges is None:
                config["quantiles"] = options.quantiles or DEFAULT_QUANTILES
                numbers = numeric_values(values)
                numbers = numbers[~np.isnan(numbers)]
                if not len(numbers):
                    raise AgentError(
                        f"field {options.field!r} has no values to take quantiles of; give --bins"
                    )
                fractions = [i / config["quantiles"] for i in range(config["quantiles"] + 1)]
                edges = quantile_edges(np.quantile(numbers, fractions).tolist(), f"field {options.field!r}")
            config["bins"], config["labels"] = edges, bin_labels(edges)
        elif pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            if options.bins is not None or options.quantiles is not None:
                raise ConfigError(
                    f"field {options.field!r} holds labels ({values.type}); bins apply to numbers"
                )
            labels = sorted({str(v) for v in values.to_pylist() if v is not None})
            if len(labels) > MAX_LABELS:
                raise AgentError(
                    f"field {options.field!r} has {len(labels):,} distinct values; at most {MAX_LABELS:,} "
                    f"labels (a numeric field is binned)"
                )
            config["labels"] = labels + [other_label(labels)]
        else:
            raise AgentError(
                f"field {options.field!r} is {values.type}; expected a string, a number or Dolma spans"
            )
        return cls(name, config)

    @property
    def columns(self) -> list[str]:
        return [self.config["doc_id_column"]]

    def model_files(self) -> list[str]:
        return list(self.config["files"])

    def load_model(self) -> SideIndex:
        ids, values = side_values(self.config["files"], self.config["id_column"], self.config["field"])
        if self.config["bins"] is not None:
            numbers = numeric_values(values)
            return SideIndex(ids, digitize(numbers, self.config["bins"]), numbers.astype(np.float32))
        known = pa.array(self.labels[:-1], pa.string())
        index = pc.index_in(pc.cast(values, pa.string()), value_set=known)
        labels = np.array(index.fill_null(len(known)).to_numpy(zero_copy_only=False), dtype=np.int32)
        labels[np.asarray(values.is_null().to_numpy(zero_copy_only=False), dtype=bool)] = -1
        return SideIndex(ids, labels, np.full(len(labels), np.nan, np.float32))

    def score(self, batch: DocBatch) -> ScoreResult:
        return self.model.lookup(batch.column(self.config["doc_id_column"]))


__all__ = ["AttributesAgent", "AttributesOptions", "span_values"]
