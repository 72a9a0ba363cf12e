"""The worker side of scoring: score one shard for several agents and write each agent's part (no DuckDB).

A worker reads a shard's text once, runs every agent planned for it, and writes each agent's part as Parquet
to a temporary name that it renames when complete. Workers never open the catalog, so nothing here imports
DuckDB: they return `PartResult`s, which the driver (`driver.py`) commits.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from corpus_agents import storage
from corpus_agents.errors import CorpusError, one_line
from corpus_agents.scoring.corpus import (
    ShardChangedError,
    ShardCheck,
    iter_doc_batches,
    numeric_array,
    pack_doc_ids,
)

if TYPE_CHECKING:
    from corpus_agents.scoring.agents import Agent

PART_SCHEMA = pa.schema([("doc_id", pa.int64()), ("label", pa.int16()), ("score", pa.float32())])
DEFAULT_BATCH_ROWS = 2048


@dataclass(frozen=True)
class Shard:
    """A registered Parquet shard, as the catalog records it."""

    shard_id: int
    uri: str
    num_rows: int
    num_bytes: int
    fingerprint: str
    num_row_groups: int
    text_column: str
    row_group_hashes: tuple[str, ...] | None = None  # None: registered before they were recorded

    def check(self) -> ShardCheck:
        """A check of this shard's bytes against its registration, for one reader."""
        return ShardCheck(self.uri, self.fingerprint, self.row_group_hashes)


@dataclass
class PartSpec:
    """One (agent, shard) part to produce."""

    agent: Agent
    fingerprint: str
    path: str  # final Parquet path of the part


@dataclass
class PartResult:
    """What a worker reports for one part: where it wrote it, or why it failed, and how long it took.

    Timings are wall seconds. A shard's text is read and decoded once for every agent that scores it, so
    `read_s` and `decode_s` are this part's equal share of that shared cost; `score_s` (the agent's own
    `score` calls, including its model's first load, without the decoding they triggered) and `write_s`
    (building and writing the part's rows, then renaming it) are its own. `seconds` is their sum: summed
    over the parts of a run, each stage adds up to what the workers spent on it.
    """

    agent: str
    shard_id: int
    fingerprint: str
    path: str | None
    num_rows: int
    complete: bool
    error: str | None = None
    read_s: float = 0.0
    decode_s: float = 0.0
    score_s: float = 0.0
    write_s: float = 0.0

    @property
    def seconds(self) -> float:
        return self.read_s + self.decode_s + self.score_s + self.write_s


@dataclass
class ShardTask:
    """Everything a worker needs to score one shard for several agents (picklable, no catalog)."""

    shard: Shard
    parts: list[PartSpec]
    rows: np.ndarray | None = None  # restrict to these rows (--limit / --sample); None = whole shard
    batch_rows: int = DEFAULT_BATCH_ROWS

    @property
    def num_docs(self) -> int:
        return self.shard.num_rows if self.rows is None else len(self.rows)

    @property
    def complete(self) -> bool:
        return self.rows is None

    def failed(self, reason: str, parts: list[PartSpec] | None = None) -> list[PartResult]:
        """Failed results for `parts` (default: all of this task's), the error naming the shard."""
        error = f"shard {self.shard.uri}: {reason}"
        specs = self.parts if parts is None else parts
        return [
            PartResult(s.agent.name, self.shard.shard_id, s.fingerprint, None, 0, self.complete, error)
            for s in specs
        ]

    def split_by_device(self, gpus: bool) -> list[tuple[str, ShardTask]]:
        """(pool, sub-task) pairs for executors with device pools: the CPU agents together in pool "cpu" (the
        text is read once for all of them) and, when there are `gpus`, each GPU agent alone in "gpu:<agent>"."""
        groups: dict[str, list[PartSpec]] = {}
        for spec in self.parts:
            pool = f"gpu:{spec.agent.name}" if gpus and spec.agent.uses_gpu else "cpu"
            groups.setdefault(pool, []).append(spec)
        return [(pool, replace(self, parts=specs)) for pool, specs in groups.items()]


def part_path(parts_dir: Path | str, agent: str, fingerprint: str, shard_id: int, suffix: str = "") -> str:
    """A part's file: `<parts dir or URL>/<agent>/<fingerprint[:16]>/shard-<id>.parquet`."""
    return f"{str(parts_dir).rstrip('/')}/{agent}/{fingerprint[:16]}/shard-{shard_id:06d}{suffix}.parquet"


def reusable_part(spec: PartSpec, task: ShardTask) -> bool:
    """A part file left renamed but uncommitted by a crashed run is complete (rename is atomic): reuse it."""
    try:
        meta = storage.read_parquet_metadata(spec.path)
    except (OSError, pa.ArrowException):
        return False
    return meta.num_rows == task.num_docs and meta.schema.to_arrow_schema().equals(PART_SCHEMA)


def score_shard(task: ShardTask, progress: Callable[[int], None] | None = None) -> list[PartResult]:
    """Worker entry point: score one shard for all its planned agents; never raises, failures are results.

    Times each stage (see `PartResult`): reading the shard (its footer and row-group hash checks included),
    decoding its text, each agent's scoring and each part's write.
    """
    shard = task.shard
    if task.batch_rows < 1:  # would write empty parts that count as done
        return task.failed(f"batch_rows must be >= 1, not {task.batch_rows!r}")
    todo = [s for s in task.parts if not reusable_part(s, task)]
    results = [
        PartResult(s.agent.name, shard.shard_id, s.fingerprint, s.path, task.num_docs, task.complete)
        for s in task.parts
        if s not in todo
    ]
    if not todo:
        if progress:
            progress(task.num_docs)
        return results
    started = time.perf_counter()
    check = shard.check()
    try:
        check.check_footer()
    except CorpusError as exc:  # already one line naming the shard
        return results + task.failed(str(exc).removeprefix(f"shard {shard.uri}: "), todo)
    except Exception as exc:  # noqa: BLE001 - any read failure fails this shard, not the run
        return results + task.failed(one_line(exc, with_type=True), todo)
    read_s = time.perf_counter() - started
    decode_s = 0.0
    score_s = dict.fromkeys((s.agent.name for s in todo), 0.0)
    write_s = dict.fromkeys(score_s, 0.0)

    writers: dict[str, pq.ParquetWriter] = {}
    tmp_paths: dict[str, str] = {}
    errors: dict[str, str] = {}
    columns = list(dict.fromkeys(c for s in todo for c in s.agent.columns))
    written = 0
    try:
        for spec in todo:
            started = time.perf_counter()
            storage.make_parent_dirs(spec.path)
            tmp_paths[spec.agent.name] = f"{spec.path}.tmp-{os.getpid()}"
            writers[spec.agent.name] = storage.parquet_writer(tmp_paths[spec.agent.name], PART_SCHEMA)
            write_s[spec.agent.name] += time.perf_counter() - started
        batches = iter_doc_batches(shard.uri, shard.text_column, columns, task.batch_rows, task.rows, check)
        while True:
            started = time.perf_counter()
            item = next(batches, None)
            read_s += time.perf_counter() - started
            if item is None:
                break
            rows, batch = item
            batch.doc_ids = pack_doc_ids(shard.shard_id, rows)
            doc_ids = numeric_array(batch.doc_ids.astype(np.int64))
            for spec in todo:
                name = spec.agent.name
                if name in errors:
                    continue
                try:
                    decoded, started = batch.decode_s, time.perf_counter()
                    try:
                        out = spec.agent.score(batch)
                    finally:  # the lazy decoding an agent triggers is shared, not its own work
                        decode_s += batch.decode_s - decoded
                    after_score = time.perf_counter()
                    score_s[name] += after_score - started - (batch.decode_s - decoded)
                    labels = numeric_array(out.labels.astype(np.int16), mask=out.labels < 0)
                    scores = numeric_array(out.scores.astype(np.float32), mask=np.isnan(out.scores))
                    if len(labels) != len(batch):
                        raise RuntimeError(f"agent returned {len(labels)} labels for {len(batch)} documents")
                    writers[name].write_batch(pa.record_batch([doc_ids, labels, scores], schema=PART_SCHEMA))
                    write_s[name] += time.perf_counter() - after_score
                except Exception as exc:  # noqa: BLE001 - one agent failing must not stop the others
                    errors[name] = f"agent {name}: {one_line(exc, with_type=True)}"
                    if os.environ.get("CORPUS_AGENTS_DEBUG"):
                        traceback.print_exc()
            written += len(batch)
            if progress:
                progress(len(batch))
    except Exception as exc:  # noqa: BLE001 - a read failure fails every agent of this shard
        if isinstance(exc, ShardChangedError):  # already one line naming the shard
            reason = str(exc).removeprefix(f"shard {shard.uri}: ")
        else:
            reason = one_line(exc, with_type=True)
        for spec in todo:
            errors.setdefault(spec.agent.name, reason)
    shared = {"read_s": read_s / len(todo), "decode_s": decode_s / len(todo)}
    for spec in todo:
        name = spec.agent.name
        started = time.perf_counter()
        if name in writers:
            writers[name].close()
        if name in errors:
            if name in tmp_paths:
                storage.remove_if_exists(tmp_paths[name])
            results += task.failed(errors[name], [spec])
            continue
        storage.move(tmp_paths[name], spec.path)
        write_s[name] += time.perf_counter() - started
        results.append(
            PartResult(
                name,
                shard.shard_id,
                spec.fingerprint,
                spec.path,
                written,
                task.complete,
                score_s=score_s[name],
                write_s=write_s[name],
                **shared,
            )
        )
    return results
