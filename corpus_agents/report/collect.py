"""The report's data: catalog tables (sql/report.sql) and run logs (training/runs.py) read into tidy frames.

Per run: the training loss (the run's log), the held-out loss per reference task (round_metrics), the
cumulative compute at each round (round_compute), theta and each agent's memory w per round
(collab_weights, agent_memory), whether each agent carries signal (runs.sql's agent_signal) and the share
of each agent's labels among the documents selected each round. While a training run holds the workspace
the catalog cannot be opened: everything but the selection shares and the signal is then read from the
runs' logs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from corpus_agents.errors import CorpusAgentsError, WorkspaceBusyError
from corpus_agents.scoring.catalog import Catalog
from corpus_agents.training.runs import (
    RunLog,
    RunPaths,
    agent_signal,
    ensure_schema,
    label_shares,
    logged_runs,
    read_run_log,
)

SEED_SUFFIX = re.compile(r"[-_.]?seed[-_]?\d+$", re.IGNORECASE)

_SCHEMAS = {
    "train_loss": {"run_id": pl.String, "step": pl.Int64, "tokens": pl.Int64, "loss": pl.Float64},
    "heldout": {
        "run_id": pl.String, "round": pl.Int64, "step": pl.Int64, "tokens": pl.Int64,
        "task": pl.String, "heldout_loss": pl.Float64,
    },
    "compute": {
        "run_id": pl.String, "round": pl.Int64, "step": pl.Int64, "train_tokens": pl.Int64,
        "compute_flops": pl.Float64, "reward_flops": pl.Float64,
    },
    "theta": {"run_id": pl.String, "round": pl.Int64, "agent": pl.String, "theta": pl.Float64},
    "memory": {"run_id": pl.String, "round": pl.Int64, "agent": pl.String, "label": pl.String, "w": pl.Float64},
    "shares": {
        "run_id": pl.String, "round": pl.Int64, "agent": pl.String, "label": pl.String,
        "docs": pl.Int64, "share": pl.Float64,
    },
    "signal": {
        "run_id": pl.String, "agent": pl.String, "rounds": pl.Int64, "advantage": pl.Float64, "t": pl.Float64,
        "reliability": pl.Float64,
    },
}  # fmt: skip


def configuration_of(run_id: str, group: str | None = None) -> str:
    """The configuration a run belongs to: with `group`, the regex's first group (or whole match) in the run
    id; else the run id without a `-seedN` suffix. A run the regex does not match is its own configuration."""
    if group:
        match = re.search(group, run_id)
        if match is None:
            return run_id
        return (match.group(1) if match.groups() and match.group(1) else match.group(0)) or run_id
    return SEED_SUFFIX.sub("", run_id) or run_id


def _frame(name: str, rows: list[dict[str, Any]] | list[tuple[Any, ...]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=_SCHEMAS[name], orient="row")


@dataclass
class ReportData:
    """Tidy frames (one row per run and point) of the runs a report covers, and notes for the page."""

    runs: list[str]
    configs: dict[str, str]
    train_loss: pl.DataFrame
    heldout: pl.DataFrame
    theta: pl.DataFrame
    memory: pl.DataFrame
    shares: pl.DataFrame
    status: dict[str, str]
    notes: list[str] = field(default_factory=list)
    #: cumulative training tokens, cost and reward FLOPs per round record (none for runs logged before)
    compute: pl.DataFrame = field(default_factory=lambda: _frame("compute", []))
    #: per run and agent: rounds with a measured advantage over random, its mean, t over the rounds, reliability
    signal: pl.DataFrame = field(default_factory=lambda: _frame("signal", []))

    def with_config(self, frame: pl.DataFrame) -> pl.DataFrame:
        """`frame` with a `config` column (the run's configuration)."""
        return frame.with_columns(pl.col("run_id").replace_strict(self.configs, default=None).alias("config"))

    @property
    def config_order(self) -> list[str]:
        return list(dict.fromkeys(self.configs[r] for r in self.runs))


def _resolve_runs(known: list[str], wanted: list[str] | None, workspace: Path) -> list[str]:
    if not known:
        raise CorpusAgentsError(
            f"workspace {workspace} has no training runs; start one with `corpus-agents train`"
        )
    if not wanted:
        return known
    unknown = [r for r in wanted if r not in known]
    if unknown:
        raise CorpusAgentsError(
            f"unknown run {', '.join(map(repr, unknown))} in {workspace}; known runs: {', '.join(known)}"
        )
    return list(dict.fromkeys(wanted))


def _read_logs(ws: Path, runs: list[str]) -> dict[str, RunLog]:
    return {r: read_run_log(RunPaths.of(ws, r).log) for r in runs}


def _train_loss(logs: dict[str, RunLog]) -> pl.DataFrame:
    return _frame("train_loss", [(r, s.step, s.tokens, s.loss) for r, log in logs.items() for s in log.steps])


def _log_frames(run_id: str, log: RunLog) -> tuple[list[tuple], list[tuple], list[tuple], list[tuple]]:
    """Held-out, theta, memory and compute rows from a run's log records (used when the catalog is busy)."""
    heldout, theta, memory, compute = [], [], [], []
    for r in log.rounds:
        heldout += [(run_id, r.round, r.step, r.tokens, t, v) for t, v in r.heldout_loss.items()]
        if (c := r.compute_total) is not None:
            reward = c.probe_flops + c.reference_flops
            compute.append((run_id, r.round, r.step, c.train_tokens, c.total_flops, reward))
        if r.event == "round":  # a final record repeats the last round's console state
            theta += [(run_id, r.round, a, v) for a, v in r.theta.items()]
            memory += [(run_id, r.round, a, label, v) for a, ws in r.w.items() for label, v in ws.items()]
    return heldout, theta, memory, compute


def collect(
    workspace: str | os.PathLike, run_ids: list[str] | None = None, group: str | None = None
) -> ReportData:
    """Everything the report plots, for `run_ids` (default: every run of the workspace)."""
    ws = Path(workspace).expanduser().resolve()
    try:
        catalog = Catalog(ws, read_only=True)
    except WorkspaceBusyError as exc:
        return _collect_from_logs(ws, run_ids, group, str(exc))
    with catalog:
        ensure_schema(catalog)
        known = [r for r, _ in catalog.run("report.sql", "known_runs")]
        runs = _resolve_runs(known, run_ids, ws)
        logs = _read_logs(ws, runs)
        heldout = _frame("heldout", catalog.run("report.sql", "heldout", runs=runs))
        compute = _frame("compute", catalog.run("report.sql", "compute", runs=runs))
        theta = _frame("theta", catalog.run("report.sql", "theta", runs=runs))
        memory = _frame("memory", catalog.run("report.sql", "memory", runs=runs))
        signal = _frame("signal", [row for row in agent_signal(catalog) if row[0] in runs])
        notes: list[str] = []
        share_rows: list[tuple] = []
        for run_id, round_, stored, *_ in catalog.run("report.sql", "selections", runs=runs):
            path = catalog.resolve_path(stored)  # relative to the workspace
            if not Path(path).is_file():
                notes.append(f"run {run_id}: the selection snapshot of round {round_} is missing ({path})")
                continue
            doc_ids = pq.read_table(path, columns=["doc_id"])["doc_id"]
            share_rows += [(run_id, round_, *row) for row in label_shares(catalog, doc_ids)]
    return ReportData(
        runs=runs,
        configs={r: configuration_of(r, group) for r in runs},
        train_loss=_train_loss(logs),
        heldout=heldout,
        theta=theta,
        memory=memory,
        shares=_frame("shares", share_rows),
        status={r: _status(logs[r], heldout.filter(pl.col("run_id") == r).height > 0) for r in runs},
        notes=notes,
        compute=compute,
        signal=signal,
    )


def _collect_from_logs(ws: Path, run_ids: list[str] | None, group: str | None, busy: str) -> ReportData:
    """The report's data from the runs' logs alone, while another process holds the catalog."""
    runs = _resolve_runs(logged_runs(ws), run_ids, ws)
    logs = _read_logs(ws, runs)
    heldout, theta, memory, compute = [], [], [], []
    for r in runs:
        h, t, m, c = _log_frames(r, logs[r])
        heldout, theta, memory, compute = heldout + h, theta + t, memory + m, compute + c
    return ReportData(
        runs=runs,
        configs={r: configuration_of(r, group) for r in runs},
        train_loss=_train_loss(logs),
        heldout=_frame("heldout", heldout),
        theta=_frame("theta", theta),
        memory=_frame("memory", memory),
        shares=_frame("shares", []),
        status={r: _status(logs[r], bool(logs[r].rounds)) for r in runs},
        notes=[
            f"read from the runs' logs ({busy}); the selection shares and the agents' signal need the catalog: "
            "re-run when it is free"
        ],
        compute=_frame("compute", compute),
    )


def _status(log: RunLog, has_metrics: bool) -> str:
    if log.finished:
        return "finished"
    if log.exists or has_metrics:
        return "in progress or stopped"
    return "selection only (no training)"
