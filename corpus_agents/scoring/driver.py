"""The scoring driver: plan the missing (agent, shard) parts, run them on an executor, commit each part once.

Workers (`parts.score_shard`) never open the catalog: they write parts under temporary names that they
rename when complete, and return results. Only the catalog owner, this driver, commits a part (its rows and
manifest row in one transaction), so a crash at any moment leaves either a committed part or nothing that
counts; a renamed but uncommitted part is reused by the next run.

While the workers score, the driver does not hold the catalog's DuckDB connection: it commits finished parts
in batches at most every COMMIT_EVERY_S (or as soon as a pool worker has no task left: its core is free),
each batch at most COMMIT_BATCH_S long, then releases the connection, so `query`, `status` and `runs` can
read the catalog meanwhile. A batch whose turn comes while a reader is inside waits for the next one (the
workers keep scoring); the last batch waits for the readers. A batch commits several parts per transaction
(sized by `CommitPace` to fit the batch's time): the catalog's per-transaction costs are paid once for them.
A pool takes the largest tasks first (`balanced`), and its fork server starts before the planning.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from corpus_agents import storage
from corpus_agents.scoring.agents import Agent
from corpus_agents.scoring.agents.base import FileHashes
from corpus_agents.scoring.catalog import Catalog, Part
from corpus_agents.scoring.parts import (
    DEFAULT_BATCH_ROWS,
    PartResult,
    PartSpec,
    ShardTask,
    part_path,
    score_shard,
)

#: Seconds between commit batches, and the longest a batch holds the catalog before it lets readers in.
COMMIT_EVERY_S = 1.0
COMMIT_BATCH_S = 0.5
#: The pause between two batches of the final commits, for readers waiting to open the catalog.
READER_TURN_S = 0.05


@dataclass
class RunSummary:
    """What a scoring run did: parts committed and failed, parts already done (skipped), documents, time."""

    committed: list[PartResult] = field(default_factory=list)
    failed: list[PartResult] = field(default_factory=list)
    skipped: int = 0
    docs: int = 0
    seconds: float = 0.0


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
    check_scoring_options(limit=limit, sample=sample, seed=seed, batch_rows=batch_rows)
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
            path = part_path(catalog.parts_url, agent.name, fp, shard.shard_id, suffix)
            part = done.get((agent.name, shard.shard_id))
            if part is not None and part.fingerprint == fp and covers(part, path, rows):
                skipped += 1
                continue
            specs.append(PartSpec(agent, fp, path))
        if specs:
            tasks.append(ShardTask(shard, specs, rows, batch_rows))
    return tasks, skipped


def balanced(tasks: list[ShardTask]) -> list[ShardTask]:
    """Tasks in the order a pool should take them: the largest first (bytes of the rows to read, in
    proportion to a shard's size), so the run does not end with one worker on a large shard while the others
    idle. The plan's order among tasks of the same size."""

    def size(task: ShardTask) -> float:
        return task.shard.num_bytes * task.num_docs / max(1, task.shard.num_rows)

    return sorted(tasks, key=size, reverse=True)


def check_scoring_options(
    *,
    limit: int | None = None,
    sample: float | None = None,
    seed: int = 0,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> None:
    """Refuse option values that would score nothing yet commit parts as done (`batch_rows` < 1 once
    committed every part complete with 0 rows) or that have no meaning; the CLI checks the same ranges."""
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, not {batch_rows!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 (documents), not {limit!r}")
    if sample is not None and not 0 < sample <= 1:
        raise ValueError(f"sample must be a fraction in (0, 1], not {sample!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, not {seed!r}")


_LIMIT_SUFFIX = re.compile(r"-limit(\d+)\.parquet$")


def covers(part: Part, path: str, rows: np.ndarray | None) -> bool:
    """Whether a committed part (of the agent's current fingerprint) holds the scores a task for `rows`
    (None: the whole shard) at `path` would write: a complete part covers everything; a partial one covers
    the same partial request (same path), and a --limit prefix covers a shorter prefix. So `--limit 10`
    then `--limit 1200` scores the first 1,200 documents, not 10 of the first shard's."""
    if part.complete:
        return True
    if rows is None:
        return False
    if part.path == path:
        return True
    wanted, have = _LIMIT_SUFFIX.search(path), _LIMIT_SUFFIX.search(part.path)
    return bool(wanted and have and int(have.group(1)) >= int(wanted.group(1)))


def commit_results(
    catalog: Catalog,
    results: list[PartResult],
    summary: RunSummary,
    expected_rows: dict[tuple[str, int], int] | None = None,
) -> None:
    """Commit finished parts (all in one transaction: `Catalog.commit_parts`) and record failures.

    `expected_rows` ((agent, shard_id) -> documents planned) guards the catalog: a part that does not hold
    exactly the planned documents is recorded as failed, never committed (an empty part committed as
    complete would be skipped by every later run)."""
    done = []
    for r in results:
        expected = (expected_rows or {}).get((r.agent, r.shard_id))
        if not r.error and expected is not None and r.num_rows != expected:
            r.error = f"agent {r.agent}: the part has {r.num_rows} rows, not the {expected} planned"
            if r.path:
                storage.remove_if_exists(r.path)
        if r.error:
            catalog.record_failure(r.agent, r.shard_id, r.error)
            summary.failed.append(r)
        else:
            done.append(r)
    catalog.commit_parts(
        [
            Part(
                r.agent,
                r.shard_id,
                r.fingerprint,
                r.path,
                r.num_rows,
                r.complete,
                r.read_s,
                r.decode_s,
                r.score_s,
                r.write_s,
            )  # fmt: skip
            for r in done
        ]
    )
    summary.committed += done


def model_hashes(catalog: Catalog) -> FileHashes:
    """The workspace's remembered model file hashes (`WS/cache/model-hashes.json`)."""
    return FileHashes(Path(catalog.dir) / "cache" / "model-hashes.json", root=catalog.dir)


@dataclass
class CommitPace:
    """Seconds a commit transaction took per document on this run's commits so far, to size the next one to
    fit a batch's time; None until one was measured (the first transaction commits a single result)."""

    s_per_doc: float | None = None

    def take(self, results: list[PartResult], budget_s: float) -> int:
        """How many of `results` (at least one) one transaction should commit to end within `budget_s`."""
        if self.s_per_doc is None:
            return 1
        n, cost = 0, 0.0
        for r in results:
            cost += max(r.num_rows, 1) * self.s_per_doc
            if n and cost > budget_s:
                break
            n += 1
        return n

    def record(self, results: list[PartResult], seconds: float) -> None:
        self.s_per_doc = seconds / max(1, sum(r.num_rows for r in results))


def commit_batch(
    catalog: Catalog,
    results: list[PartResult],
    summary: RunSummary,
    expected_rows: dict[tuple[str, int], int] | None,
    *,
    max_s: float,
    pace: CommitPace | None = None,
) -> list[PartResult]:
    """Commit results (`commit_results`, in transactions that `pace` sizes to the time left) until `max_s`
    has passed, then release the catalog's connection; returns the results left for the next batch (at least
    one is committed)."""
    pace = pace or CommitPace()
    started = time.monotonic()
    done = 0
    try:
        while done < len(results):
            left = max_s - (time.monotonic() - started)
            if done and left <= 0:
                break
            chunk = results[done : done + pace.take(results[done:], left)]
            before = time.monotonic()
            commit_results(catalog, chunk, summary, expected_rows)
            pace.record(chunk, time.monotonic() - before)
            done += len(chunk)
    finally:
        catalog.release()
    return results[done:]


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
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from corpus_agents.scoring.executors.local import run_local, start_pool_server

    if executor not in ("local", "ray"):
        raise ValueError(f"unknown executor {executor!r}: local or ray")
    check_scoring_options(limit=limit, sample=sample, seed=seed, batch_rows=batch_rows)
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, not {workers!r}")
    if agent_names is not None and not agent_names:
        raise ValueError("agent_names is empty: name at least one agent, or pass None for all")
    if executor == "local" and (workers or 1) > 1:
        start_pool_server()  # its imports overlap the planning below
    if executor == "ray":
        from corpus_agents.scoring.executors.ray import check_ray, run_ray

        check_ray()
    agents = catalog.agents(agent_names)
    for agent in agents:
        agent.check_requirements()
    remove_stale_files(catalog, keep_uncommitted=True)
    hashes = model_hashes(catalog)
    fingerprints = {a.name: a.fingerprint(hashes) for a in agents}
    hashes.save()
    # Scores of a changed agent (model file or config) go before its new ones come: a run that fails or is
    # killed half-way leaves some documents without its scores, never old and new scores mixed. Parts whose
    # scores or file disagree with the manifest (`Catalog.inconsistent_parts`) are dropped and rescored too.
    names = {a.name for a in agents}
    catalog.drop_parts(
        [k for k, p in catalog.parts().items() if p.fingerprint != fingerprints.get(k[0], p.fingerprint)]
        + [(a, shard_id) for a, shard_id, _ in catalog.inconsistent_parts() if a in names]
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
    expected_rows = {(s.agent.name, t.shard.shard_id): t.num_docs for t in tasks for s in t.parts}
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
        bar_id = bar.add_task(escape(f"{len(tasks)} shards x [{names}]"), total=total, rate="-")

        def on_progress(n: int) -> None:
            elapsed = max(time.perf_counter() - started, 1e-9)
            completed = bar.tasks[0].completed + n
            bar.update(bar_id, completed=completed, rate=f"{completed / elapsed:,.0f}")

        pool = min(workers or 1, max(1, len(tasks)))
        if executor == "ray":
            stream = run_ray(tasks, score_shard, on_progress, address=address, workers=workers)
        else:
            stream = run_local(balanced(tasks) if pool > 1 else tasks, score_shard, on_progress, workers=pool)
        catalog.release()  # planned: readers may look while the workers score
        pending: list[PartResult] = []
        pace = CommitPace()
        last_commit = time.monotonic()
        unfinished = len(tasks)
        for results in stream:
            pending += results
            unfinished -= 1
            # A pool worker with no task left leaves its core to the commits: no reason to wait for the next
            # batch's turn, and the commits left for the end shrink to the last task's.
            idle_core = executor == "local" and 1 < pool and unfinished < pool
            due = idle_core or time.monotonic() - last_commit >= COMMIT_EVERY_S
            if due and catalog.connect(wait_s=0):
                pending = commit_batch(
                    catalog, pending, summary, expected_rows, max_s=COMMIT_BATCH_S, pace=pace
                )
                last_commit = time.monotonic()
        while pending:  # the rest, waiting for readers if need be, and letting waiting ones in between
            pending = commit_batch(catalog, pending, summary, expected_rows, max_s=COMMIT_BATCH_S, pace=pace)
            if pending:
                time.sleep(READER_TURN_S)
    summary.docs = total
    summary.seconds = time.perf_counter() - started
    if not summary.failed and limit is None and sample is None:
        remove_stale_files(catalog, keep_uncommitted=False)
    return summary
