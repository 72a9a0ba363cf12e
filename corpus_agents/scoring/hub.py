"""Corpora from the Hugging Face hub: stream a dataset into zstd Parquet shards in the workspace, resumably.

`datasets.load_dataset(name, config, split=..., streaming=True)` is read as Arrow tables, so nested columns
(SlimPajama's `meta.redpajama_set_name`) stay struct columns the metadata agent can address with dots. Each
shard is written under a temporary name and renamed when complete; a run killed at any moment resumes after
its last complete shard by skipping the rows those shards hold. `name` may also be a local dataset directory
or data files (how tests run offline).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from corpus_agents.errors import CorpusError, one_line, require
from corpus_agents.storage import publish

#: Rows of a Parquet row group (fewer when a shard is smaller): the unit scoring reads, a few tens of MB of
#: web text. Row groups are cut at exact row counts so that a resumed run writes the same shards.
ROW_GROUP_ROWS = 8192
#: Rows per batch read from the dataset stream.
READ_BATCH_ROWS = 1024
DEFAULT_SHARD_MB = 256
_DATA_FILE_BUILDERS = {
    ".parquet": "parquet",
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".txt": "text",
}


@dataclass(frozen=True)
class HubSource:
    """What `init --from-hub` materialises; recorded in the workspace meta so a re-run cannot change it."""

    name: str
    config: str | None = None
    split: str = "train"
    max_rows: int | None = None
    shard_rows: int | None = None
    shard_mb: float | None = None

    def __post_init__(self) -> None:
        if self.shard_rows is not None and self.shard_mb is not None:
            raise CorpusError("pass --shard-rows or --shard-mb, not both")
        for key in ("max_rows", "shard_rows", "shard_mb"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise CorpusError(f"--{key.replace('_', '-')} must be positive, got {value}")

    @property
    def shard_bytes(self) -> int | None:
        """Target shard size on disk when sized in MB (the default, 256 MB, when no size is given)."""
        if self.shard_rows is not None:
            return None
        return int((self.shard_mb or DEFAULT_SHARD_MB) * 1e6)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def describe(self) -> str:
        parts = [self.name]
        parts += [f"--hub-config {self.config}"] if self.config else []
        parts += [f"--split {self.split}"]
        parts += [f"--max-rows {self.max_rows}"] if self.max_rows else []
        parts += (
            [f"--shard-rows {self.shard_rows}"]
            if self.shard_rows
            else [f"--shard-mb {self.shard_bytes / 1e6:g}"]
        )
        return " ".join(str(p) for p in parts if p is not None)


@dataclass
class MaterializeReport:
    directory: Path
    shards: list[str]
    rows: int  # rows in all shards
    new_rows: int  # rows written by this run
    resumed_shards: int  # complete shards found from an earlier run


def normalize_name(name: str) -> str:
    """A local dataset path made absolute (so the recorded source does not depend on the cwd); hub names as-is."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def source_slug(name: str) -> str:
    """Directory name of a dataset's shards: `cerebras/SlimPajama-627B` -> `cerebras--SlimPajama-627B`, a local
    directory or file -> its base name."""
    path = Path(name)
    base = path.name if path.is_absolute() or path.exists() else name.replace("/", "--")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.") or "dataset"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def complete_shards(directory: Path) -> list[tuple[Path, int]]:
    """(path, rows) of the complete shards of an earlier run, which must be numbered 0..k-1 without gaps."""
    found = sorted(directory.glob("shard-*.parquet"))
    for i, path in enumerate(found):
        if path.name != shard_name(i):
            raise CorpusError(
                f"{directory}: expected {shard_name(i)}, found {path.name}; remove the directory"
            )
    try:
        return [(p, pq.read_metadata(p).num_rows) for p in found]
    except (OSError, pa.ArrowException) as exc:
        raise CorpusError(f"{directory}: cannot read a complete shard: {exc}") from None


def open_stream(source: HubSource) -> Any:
    """The dataset as a streaming `IterableDataset`, or a one-line CorpusError (unknown dataset, bad split)."""
    require("datasets", "init --from-hub", extra="hf")
    import datasets

    name, kwargs = source.name, {}
    path = Path(name)
    if path.is_file() or any(c in name for c in "*?["):  # data files: pick the builder by extension
        builder = _DATA_FILE_BUILDERS.get("".join(path.suffixes[-1:]).lower())
        if builder is None:
            raise CorpusError(
                f"data files {name}: unknown format; use {', '.join(_DATA_FILE_BUILDERS)} files"
            )
        name, kwargs = builder, {"data_files": source.name}
    try:
        return datasets.load_dataset(name, source.config, split=source.split, streaming=True, **kwargs)
    except ValueError as exc:  # "Bad split: x. Available splits: [...]", an unknown config, ...
        raise CorpusError(f"dataset {source.name}: {one_line(exc)}") from None
    except (FileNotFoundError, ConnectionError, OSError) as exc:
        offline = os.environ.get("HF_DATASETS_OFFLINE", "") not in ("", "0") or os.environ.get(
            "HF_HUB_OFFLINE", ""
        ) not in ("", "0")
        hint = (
            " (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE is set: only local directories and cached datasets load)"
            if offline
            else ""
        )
        raise CorpusError(
            f"dataset {source.name} is neither a local dataset nor available on the hub{hint}: {one_line(exc)}"
        ) from None


def check_text_column(schema: pa.Schema, text_column: str, name: str) -> None:
    """A CorpusError naming the dataset unless `text_column` (dots for nested fields) is a string column."""
    from corpus_agents.scoring.corpus import check_column

    try:
        dtype = check_column(schema, text_column, f"dataset {name}")
    except CorpusError:
        raise CorpusError(
            f"dataset {name} has no text column {text_column!r} (columns: {', '.join(schema.names)}); "
            "pass --text-column"
        ) from None
    if not (pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype)):
        raise CorpusError(f"dataset {name}: text column {text_column!r} is {dtype}, expected strings")


class ShardWriter:
    """Writes a stream of Arrow tables as shards of `shard_rows` rows or about `shard_bytes` bytes each.

    Row groups hold exactly `row_group_rows` rows (the last of a shard fewer) and a shard is only ever closed
    after a row group, so the shard boundaries depend on the data alone, not on how the stream was batched:
    a resumed run that skips the rows of the complete shards writes the same files as an uninterrupted one.
    """

    def __init__(self, directory: Path, first_index: int, shard_rows: int | None, shard_bytes: int | None):
        self.directory = directory
        self.index = first_index
        self.shard_rows = shard_rows
        self.shard_bytes = shard_bytes
        self.row_group_rows = min(ROW_GROUP_ROWS, shard_rows or ROW_GROUP_ROWS)
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.sink: pa.NativeFile | None = None
        self.writer: pq.ParquetWriter | None = None
        self.rows_in_shard = 0
        self.written: list[Path] = []

    def write(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.pending_rows += table.num_rows
        while self.pending_rows >= self._next_group_rows():
            self._write_group(self._next_group_rows())

    def close(self) -> None:
        """Write what is buffered and finish the last (possibly smaller) shard."""
        while self.pending_rows:
            self._write_group(min(self.pending_rows, self._next_group_rows()))
        if self.writer is not None:
            self._finish_shard()

    def _next_group_rows(self) -> int:
        if self.shard_rows is None:
            return self.row_group_rows
        return min(self.row_group_rows, self.shard_rows - self.rows_in_shard)

    def _write_group(self, rows: int) -> None:
        table = pa.concat_tables(self.pending) if len(self.pending) > 1 else self.pending[0]
        group, rest = table.slice(0, rows), table.slice(rows)
        self.pending, self.pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
        if self.writer is None:
            self.sink = pa.OSFile(str(self._tmp_path()), "wb")
            self.writer = pq.ParquetWriter(self.sink, group.schema, compression="zstd")
        self.writer.write_table(group, row_group_size=rows)
        self.rows_in_shard += rows
        full_rows = self.shard_rows is not None and self.rows_in_shard >= self.shard_rows
        full_bytes = self.shard_bytes is not None and self.sink.tell() >= self.shard_bytes
        if full_rows or full_bytes:
            self._finish_shard()

    def _tmp_path(self) -> Path:
        return self.directory / f"{shard_name(self.index)}.tmp-{os.getpid()}"

    def _finish_shard(self) -> None:
        self.writer.close()
        self.sink.close()
        final = self.directory / shard_name(self.index)
        commit_shard(self._tmp_path(), final)
        self.written.append(final)
        self.writer, self.sink, self.rows_in_shard = None, None, 0
        self.index += 1


def commit_shard(tmp: Path, final: Path) -> None:
    """Make a finished shard visible under its final name (atomic rename; fsync first so a crash of the
    machine cannot leave a complete-looking name over an empty file)."""
    publish(tmp, final, fsync=True)


def materialize(
    source: HubSource,
    directory: Path,
    text_column: str,
    *,
    show_progress: bool = True,
    before_write: Callable[[], None] | None = None,
) -> MaterializeReport:
    """Stream `source` into `directory/shard-NNNNN.parquet`, resuming after the complete shards already there.

    `before_write` runs once the stream is open and its first rows passed the checks, before anything is
    written (the workspace records the source then, so a typo in a name does not pin the workspace to it).
    """
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("shard-*.parquet.tmp-*"):  # the workspace lock says no one else writes here
        stale.unlink()
    done = complete_shards(directory)
    rows_done = sum(rows for _, rows in done)
    report = MaterializeReport(directory, [str(p) for p, _ in done], rows_done, 0, len(done))
    remaining = None if source.max_rows is None else source.max_rows - rows_done
    if remaining is not None and remaining <= 0:
        return report
    stream = open_stream(source)
    if rows_done:
        stream = stream.skip(rows_done)
    if remaining is not None:
        stream = stream.take(remaining)
    writer = ShardWriter(directory, len(done), source.shard_rows, source.shard_bytes)
    batches = _arrow_batches(stream, source)
    for table in _with_progress(batches, remaining, rows_done, show_progress, source.name):
        if report.new_rows == 0:
            check_text_column(table.schema, text_column, source.name)
            if before_write is not None:
                before_write()
        writer.write(table)
        report.new_rows += table.num_rows
    writer.close()
    report.shards += [str(p) for p in writer.written]
    report.rows += report.new_rows
    return report


def materialize_into_workspace(
    catalog: Any, source: HubSource, text_column: str, *, show_progress: bool = True
) -> MaterializeReport:
    """Materialise `source` under `WS/corpus/<slug>/`, refusing a source other than the one recorded in the
    workspace meta (its shards would mix two datasets); a finished source is not streamed again."""
    recorded = catalog.get_meta("hub_source")
    if recorded is not None and json.loads(recorded) != json.loads(source.to_json()):
        before = HubSource(**json.loads(recorded))
        raise CorpusError(
            f"workspace {catalog.dir} was initialised from {before.describe()}; re-run with the same "
            "arguments or use a new workspace"
        )
    directory = catalog.dir / "corpus" / source_slug(source.name)
    if catalog.get_meta("hub_complete") == "true":
        shards = complete_shards(directory)
        rows = sum(r for _, r in shards)
        return MaterializeReport(directory, [str(p) for p, _ in shards], rows, 0, len(shards))
    report = materialize(
        source,
        directory,
        text_column,
        show_progress=show_progress,
        before_write=lambda: catalog.set_meta("hub_source", source.to_json()),
    )
    if not report.shards:
        raise CorpusError(f"dataset {source.name} (split {source.split}) has no rows")
    catalog.set_meta("hub_complete", "true")
    return report


def _arrow_batches(stream: Any, source: HubSource) -> Iterator[pa.Table]:
    """The stream's rows as Arrow tables; read errors (a missing file, a bad split found late) as CorpusError."""
    iterator = iter(stream.with_format("arrow").iter(batch_size=READ_BATCH_ROWS))
    while True:
        try:
            table = next(iterator)
        except StopIteration:
            return
        except (ValueError, OSError, pa.ArrowException) as exc:
            raise CorpusError(f"dataset {source.name}: cannot read: {one_line(exc)}") from None
        if table.num_rows:
            yield table


def _with_progress(
    batches: Iterable[pa.Table], total: int | None, already: int, show: bool, name: str
) -> Iterator[pa.Table]:
    """Pass tables through, advancing a rich progress bar with rows and rows/s."""
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [
        TextColumn("[bold]downloading[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows {task.fields[rate]} rows/s"),
        TimeElapsedColumn(),
    ]
    started = time.perf_counter()
    with Progress(*columns, disable=not show) as bar:
        task = bar.add_task(escape(name), total=total, rate="-")  # a name is text, never markup
        done = 0
        for table in batches:
            yield table
            done += table.num_rows
            rate = done / max(time.perf_counter() - started, 1e-9)
            bar.update(task, completed=done, rate=f"{rate:,.0f}")
    if already and show:
        bar.console.print(f"resumed after {already:,} rows already in complete shards")
