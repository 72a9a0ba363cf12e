"""Batch scoring: plan (agent, shard) parts, score each shard once for all its agents, commit parts exactly once.

Workers never open the catalog. A worker reads a shard's text once, runs every agent planned for it, and
writes each agent's part as Parquet to a temporary name that it renames when complete. Only the catalog
owner commits a part (its rows and manifest row in one transaction), so a crash at any moment leaves
either a committed part or nothing that counts; a renamed but uncommitted part is reused by the next run.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from corpus_agents import storage
from corpus_agents.errors import CorpusError
from corpus_agents.scoring.agents import Agent
from corpus_agents.scoring.catalog import Catalog, Shard
from corpus_agents.scoring.corpus import iter_doc_batches, shard_fingerprint

PART_SCHEMA = pa.schema([("doc_id", pa.int64()), ("label", pa.int16()), ("score", pa.float32())])
DEFAULT_BATCH_ROWS = 2048


@dataclass
class PartSpec:
    """One (agent, shard) part to produce."""

    agent: Agent
    fingerprint: str
    path: str  # final Parquet path of the part


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


@dataclass
class PartResult:
    agent: str
    shard_id: int
    fingerprint: str
    path: str | None
    num_rows: int
    complete: bool
    seconds: float
    error: str | None = None


@dataclass
class RunSummary:
    committed: list[PartResult] = field(default_factory=list)
    reused: list[PartResult] = field(default_factory=list)
    failed: list[PartResult] = field(default_factory=list)
    skipped: int = 0
    docs: int = 0
    seconds: float = 0.0


def part_path(parts_dir: Path | str, agent: str, fingerprint: str, shard_id: int, suffix: str = "") -> str:
    """A part's file: `<parts dir or URL>/<agent>/<fingerprint[:16]>/shard-<id>.parquet`."""
    return f"{str(parts_dir).rstrip('/')}/{agent}/{fingerprint[:16]}/shard-{shard_id:06d}{suffix}.parquet"


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def plan_tasks(
    catalog: Catalog,
    agents: list[Agent],
    *,
    limit: int | None = None,
    sample: float | None = None,
    seed: int = 0,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    fingerprints: dict[str, str] | None = None,
) -> tuple[list[ShardTask], int]:
    """Tasks for every shard with at least one part missing or stale; returns (tasks, parts skipped).

    A part is done when it is committed, complete, and has the agent's current fingerprint. With `limit`
    (documents in total, first rows of the first shards) or `sample` (fraction of each shard's rows,
    seeded) parts are partial: they are committed for a look at the scores and rescored by a full run.
    `fingerprints` (agent name -> current fingerprint) saves hashing the model files again.
    """
    fingerprints = fingerprints or {a.name: a.fingerprint() for a in agents}
    done = catalog.parts()
    tasks, skipped = [], 0
    remaining = limit
    for shard in catalog.shards():
        rows = None
        suffix = ""
        if remaining is not None:
            if remaining <= 0:
                break
            take = min(remaining, shard.num_rows)
            remaining -= take
            rows = np.arange(take, dtype=np.int64)
            suffix = f"-limit{take}"
        elif sample is not None:
            rng = np.random.default_rng([seed, shard.shard_id])
            rows = np.flatnonzero(rng.random(shard.num_rows) < sample).astype(np.int64)
            suffix = f"-sample{sample:g}-seed{seed}"
        specs = []
        for agent in agents:
            fp = fingerprints[agent.name]
            part = done.get((agent.name, shard.shard_id))
            if part is not None and part.fingerprint == fp and (part.complete or rows is not None):
                skipped += 1
                continue
            specs.append(
                PartSpec(agent, fp, part_path(catalog.parts_url, agent.name, fp, shard.shard_id, suffix))
            )
        if specs:
            tasks.append(ShardTask(shard, specs, rows, batch_rows))
    return tasks, skipped


def reusable_part(spec: PartSpec, task: ShardTask) -> bool:
    """A part file left renamed but uncommitted by a crashed run is complete (rename is atomic): reuse it."""
    try:
        meta = storage.read_parquet_metadata(spec.path)
    except (OSError, pa.ArrowException):
        return False
    return meta.num_rows == task.num_docs and meta.schema.to_arrow_schema().equals(PART_SCHEMA)


def score_shard(task: ShardTask, progress: Callable[[int], None] | None = None) -> list[PartResult]:
    """Worker entry point: score one shard for all its planned agents; never raises, failures are results."""
    started = time.perf_counter()
    shard = task.shard

    def result(spec: PartSpec, error: str | None = None, num_rows: int = 0) -> PartResult:
        return PartResult(
            spec.agent.name,
            shard.shard_id,
            spec.fingerprint,
            None if error else spec.path,
            num_rows,
            task.complete,
            time.perf_counter() - started,
            error,
        )

    todo = [s for s in task.parts if not reusable_part(s, task)]
    results = [result(s, num_rows=task.num_docs) for s in task.parts if s not in todo]
    if not todo:
        if progress:
            progress(task.num_docs)
        return results
    try:
        fingerprint, _ = shard_fingerprint(shard.uri)
        if fingerprint != shard.fingerprint:
            raise RuntimeError(
                "the shard changed since it was registered (fingerprint differs); shards are never rewritten"
            )
    except CorpusError as exc:  # already one line naming the shard
        return results + [result(s, str(exc)) for s in todo]
    except Exception as exc:  # noqa: BLE001 - any read failure fails this shard, not the run
        return results + [result(s, f"shard {shard.uri}: {one_line(exc)}") for s in todo]

    writers: dict[str, pq.ParquetWriter] = {}
    tmp_paths: dict[str, str] = {}
    errors: dict[str, str] = {}
    columns = list(dict.fromkeys(c for s in todo for c in s.agent.columns))
    written = 0
    try:
        for spec in todo:
            storage.make_parent_dirs(spec.path)
            tmp_paths[spec.agent.name] = f"{spec.path}.tmp-{os.getpid()}"
            writers[spec.agent.name] = storage.parquet_writer(tmp_paths[spec.agent.name], PART_SCHEMA)
        for rows, batch in iter_doc_batches(
            shard.uri, shard.text_column, columns, task.batch_rows, task.rows
        ):
            doc_ids = pa.array((np.int64(shard.shard_id) << 32) | rows.astype(np.int64), pa.int64())
            for spec in todo:
                name = spec.agent.name
                if name in errors:
                    continue
                try:
                    out = spec.agent.score(batch)
                    labels = pa.array(out.labels.astype(np.int16), pa.int16(), mask=out.labels < 0)
                    scores = pa.array(out.scores.astype(np.float32), pa.float32(), mask=np.isnan(out.scores))
                    if len(labels) != len(batch):
                        raise RuntimeError(f"agent returned {len(labels)} labels for {len(batch)} documents")
                    writers[name].write_batch(pa.record_batch([doc_ids, labels, scores], schema=PART_SCHEMA))
                except Exception as exc:  # noqa: BLE001 - one agent failing must not stop the others
                    errors[name] = f"agent {name} on shard {shard.uri}: {one_line(exc)}"
                    if os.environ.get("CORPUS_AGENTS_DEBUG"):
                        traceback.print_exc()
            written += len(batch)
            if progress:
                progress(len(batch))
    except Exception as exc:  # noqa: BLE001 - a read failure fails every agent of this shard
        for spec in todo:
            errors.setdefault(spec.agent.name, f"shard {shard.uri}: {one_line(exc)}")
    for spec in todo:
        name = spec.agent.name
        if name in writers:
            writers[name].close()
        if name in errors:
            if name in tmp_paths:
                storage.remove_if_exists(tmp_paths[name])
            results.append(result(spec, errors[name]))
        else:
            storage.move(tmp_paths[name], spec.path)
            results.append(result(spec, num_rows=written))
    return results


def commit_results(catalog: Catalog, results: list[PartResult], summary: RunSummary) -> None:
    """Commit finished parts (each in its own transaction) and record failures."""
    for r in results:
        if r.error:
            catalog.record_failure(r.agent, r.shard_id, r.error)
            summary.failed.append(r)
        else:
            catalog.commit_part(r.agent, r.shard_id, r.fingerprint, r.path, r.num_rows, r.complete, r.seconds)
            summary.committed.append(r)


def remove_stale_files(catalog: Catalog, keep_uncommitted: bool) -> int:
    """Delete temporary files of crashed runs and part files no committed part refers to.

    The lock guarantees no other process of ours writes here now. With `keep_uncommitted`, complete but
    uncommitted parts (renamed just before a crash) stay, so the run about to start can commit them.
    """
    committed = {p.path for p in catalog.parts().values()}
    removed = 0
    if storage.is_url(catalog.parts_url):  # object storage: no directories to tidy
        for url in storage.list_files(catalog.parts_url):
            name = url.rsplit("/", 1)[-1]
            orphan = name.endswith(".parquet") and url not in committed and not keep_uncommitted
            if ".parquet.tmp-" in name or orphan:
                storage.remove_if_exists(url)
                removed += 1
        return removed
    for f in Path(catalog.parts_url).rglob("*"):
        if not f.is_file():
            continue
        stale_tmp = ".parquet.tmp-" in f.name
        orphan = f.suffix == ".parquet" and str(f) not in committed and not keep_uncommitted
        if stale_tmp or orphan:
            f.unlink()
            removed += 1
    for d in sorted((p for p in Path(catalog.parts_url).rglob("*") if p.is_dir()), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()
    return removed


def run_scoring(
    catalog: Catalog,
    agent_names: list[str] | None = None,
    *,
    workers: int | None = 1,
    limit: int | None = None,
    sample: float | None = None,
    seed: int = 0,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    show_progress: bool = True,
    executor: str = "local",
    address: str | None = None,
) -> RunSummary:
    """Score every pending (agent, shard) part and commit the results as they arrive.

    `executor` is "local" (a process pool of `workers`) or "ray" (Ray Data actor pools on the cluster at
    `address`, auto|HOST:PORT, or on a local Ray instance; `workers` CPU actors, or the cluster's CPUs).
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from corpus_agents.scoring.executors.local import run_local

    if executor not in ("local", "ray"):
        raise ValueError(f"unknown executor {executor!r}: local or ray")
    if executor == "ray":
        from corpus_agents.scoring.executors.ray import check_ray, run_ray

        check_ray()
    agents = catalog.agents(agent_names)
    for agent in agents:
        agent.check_requirements()
    remove_stale_files(catalog, keep_uncommitted=True)
    fingerprints = {a.name: a.fingerprint() for a in agents}
    # Scores of a changed agent (model file or config) go before its new ones come: a run that fails or is
    # killed half-way leaves some documents without its scores, never old and new scores mixed.
    catalog.drop_parts(
        [k for k, p in catalog.parts().items() if p.fingerprint != fingerprints.get(k[0], p.fingerprint)]
    )
    tasks, skipped = plan_tasks(
        catalog,
        agents,
        limit=limit,
        sample=sample,
        seed=seed,
        batch_rows=batch_rows,
        fingerprints=fingerprints,
    )
    summary = RunSummary(skipped=skipped)
    total = sum(t.num_docs for t in tasks)
    started = time.perf_counter()
    columns = [
        TextColumn("[bold]scoring[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("docs"),
        TextColumn("{task.fields[rate]} docs/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, disable=not show_progress, transient=False) as bar:
        names = ",".join(a.name for a in agents)
        bar_id = bar.add_task(f"{len(tasks)} shards x [{names}]", total=total, rate="-")

        def on_progress(n: int) -> None:
            elapsed = max(time.perf_counter() - started, 1e-9)
            completed = bar.tasks[0].completed + n
            bar.update(bar_id, completed=completed, rate=f"{completed / elapsed:,.0f}")

        if executor == "ray":
            stream = run_ray(tasks, address, on_progress, workers)
        else:
            stream = run_local(tasks, min(workers or 1, max(1, len(tasks))), on_progress)
        for results in stream:
            commit_results(catalog, results, summary)
    summary.docs = total
    summary.seconds = time.perf_counter() - started
    if not summary.failed and limit is None and sample is None:
        remove_stale_files(catalog, keep_uncommitted=False)
    return summary
