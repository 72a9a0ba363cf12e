"""A training run's directory and log, and what users ask of runs: list them, make a static selection,
summarise one (training/export.py exports one).

`RunPaths` is where a run keeps its files (WS/runs/<run_id>/); `LogWriter` appends the records of
`log.jsonl` (`StepRecord`, `RoundRecord`, `ResumeRecord`, the one definition of their fields) and
`read_run_log` reads them back for the report, tolerating the torn last line a kill -9 can leave, and
reading logs written before a field with a default was added (a round record's compute).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa

from corpus_agents.errors import CorpusAgentsError
from corpus_agents.names import check_run_id
from corpus_agents.scoring.catalog import Catalog
from corpus_agents.training.compute import KINDS, Compute
from corpus_agents.training.selection import read_snapshot

if TYPE_CHECKING:
    from corpus_agents.training.console import Console

STATE_FILE = "trainer_state.pt"  # in a checkpoint directory: written last, so its presence marks it complete
LOSS_DIGITS = 5  # losses are logged to 5 decimals, theta and w to 4: enough to compare runs, short lines
WEIGHT_DIGITS = 4


# ----- the run directory -------------------------------------------------------------------------------
def runs_dir(workspace: str | os.PathLike) -> Path:
    return Path(workspace) / "runs"


@dataclass(frozen=True)
class RunPaths:
    """Where a run keeps its files inside the workspace: WS/runs/<run_id>/."""

    root: Path

    @classmethod
    def of(cls, workspace: str | os.PathLike, run_id: str) -> RunPaths:
        """The run's directory; `run_id` must be a plain name (`names.check_run_id`), never a path."""
        return cls(runs_dir(workspace) / check_run_id(run_id))

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def selections(self) -> Path:
        return self.root / "selections"

    @property
    def log(self) -> Path:
        return self.root / "log.jsonl"

    def selection(self, round_: int) -> Path:
        return self.selections / f"round-{round_:05d}.parquet"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:08d}"

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint of the highest step whose state file was written (an interrupted save is not one)."""
        done = sorted(p for p in self.checkpoints.glob("step-*") if (p / STATE_FILE).is_file())
        return done[-1] if done else None


def logged_runs(workspace: str | os.PathLike) -> list[str]:
    """The ids of the workspace's runs that have a log, sorted."""
    root = runs_dir(workspace)
    return sorted(p.parent.name for p in root.glob("*/log.jsonl")) if root.is_dir() else []


# ----- the log's records -------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepRecord:
    """A logged training step: its loss (summed over micro-batches), learning rate and throughput."""

    event: ClassVar[str] = "step"
    step: int
    round: int
    loss: float
    lr: float
    tokens: int
    tokens_per_s: int

    def summary(self) -> str:
        return f"loss {self.loss:.4f}  lr {self.lr:.2e}  {self.tokens_per_s:,} tokens/s"


@dataclass(frozen=True)
class RoundRecord:
    """The state after a round (`round`) or at the end of training (`final`): held-out loss per reference
    task, the console's theta per agent and w per agent and label, and the compute spent since the previous
    record (`compute`: the training steps since it, this round's probes and reference gradients, this
    record's held-out evaluation) and since the start of the run (`compute_total`). Logs written before
    compute was counted read with None there."""

    event: Literal["round", "final"]
    step: int
    round: int
    tokens: int
    heldout_loss: dict[str, float]
    heldout_loss_mean: float
    theta: dict[str, float]
    w: dict[str, dict[str, float]]
    compute: Compute | None = None
    compute_total: Compute | None = None

    def __post_init__(self) -> None:
        for name in ("compute", "compute_total"):  # read back from JSON as dicts
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, Compute.from_dict(value))

    @classmethod
    def measured(
        cls,
        event: Literal["round", "final"],
        step: int,
        round_: int,
        tokens: int,
        losses: dict[str, float],
        theta: dict[str, float],
        w: dict[str, dict[str, float]],
        compute: Compute | None = None,
        compute_total: Compute | None = None,
    ) -> RoundRecord:
        """A record of measured values, rounded as the log keeps them."""
        return cls(
            event=event, step=step, round=round_, tokens=tokens,
            heldout_loss={k: round(float(v), LOSS_DIGITS) for k, v in losses.items()},
            heldout_loss_mean=round(float(np.mean(list(losses.values()))), LOSS_DIGITS),
            theta={k: round(float(v), WEIGHT_DIGITS) for k, v in theta.items()},
            w={a: {k: round(float(v), WEIGHT_DIGITS) for k, v in ws.items()} for a, ws in w.items()},
            compute=compute, compute_total=compute_total,
        )  # fmt: skip

    def summary(self) -> str:
        losses = " ".join(f"{k} {v:.4f}" for k, v in self.heldout_loss.items())
        theta = " ".join(f"{k} {v:.3f}" for k, v in self.theta.items())
        line = f"round {self.round}  held-out loss: {losses}  theta: {theta}"
        if self.compute_total is not None:
            total = self.compute_total
            line += f"  compute: {total.total_flops:.3g} FLOPs ({total.probe_share:.0%} on rewards)"
        return line


@dataclass(frozen=True)
class ResumeRecord:
    """A run continued from a checkpoint (the records after it replace those of the same step or round)."""

    event: ClassVar[str] = "resume"
    step: int
    round: int
    checkpoint: str

    def summary(self) -> str:
        return f"round={self.round} checkpoint={self.checkpoint}"


Record = StepRecord | RoundRecord | ResumeRecord
_RECORDS: dict[str, type[Record]] = {
    "step": StepRecord, "round": RoundRecord, "final": RoundRecord, "resume": ResumeRecord
}  # fmt: skip


def record_json(record: Record) -> dict[str, Any]:
    """A record's fields in log order: event first, then the dataclass's fields."""
    return {"event": record.event, **{k: v for k, v in asdict(record).items() if k != "event"}}


def parse_record(line: str) -> Record | None:
    """The record on one log line, or None for a line that is not a whole known record (a torn write, an
    event this version does not know)."""
    try:
        data = json.loads(line)
        cls = _RECORDS[data["event"]]
        optional = {f.name for f in fields(cls) if f.default is not MISSING}
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data or f.name not in optional})
    except (ValueError, KeyError, TypeError):
        return None


def summary_line(run_id: str, record: Record) -> str:
    """A record as one readable console line."""
    return f"[{run_id}] {record.event:<6} step {record.step:>6}  {record.summary()}"


class LogWriter:
    """Appends records to a run's log.jsonl, one JSON object per line with the run id and the time.

    Each line goes out in one write() of an O_APPEND file. A process killed mid-line leaves a torn last
    line: the first write of the next writer ends it with a newline, so it stays one unreadable line (which
    `read_run_log` skips) instead of swallowing the next record.
    """

    def __init__(self, path: Path, run_id: str):
        self.path = path
        self.run_id = run_id
        self._checked = False

    def clear(self) -> None:
        """Start the log afresh (a new run, not a resume)."""
        self.path.unlink(missing_ok=True)
        self._checked = True

    def write(self, record: Record) -> dict[str, Any]:
        """Append `record`; returns the object written."""
        data = {"run": self.run_id, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **record_json(record)}
        line = (json.dumps(data, default=float) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if not self._checked:
                self._checked = True
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line
            os.write(fd, line)
        finally:
            os.close(fd)
        return data


@dataclass
class RunLog:
    """A run's log as read back: the steps and the round records, each once and in order."""

    exists: bool = False
    steps: list[StepRecord] = field(default_factory=list)
    rounds: list[RoundRecord] = field(default_factory=list)
    resumes: list[ResumeRecord] = field(default_factory=list)
    finished: bool = False
    skipped: int = 0  # lines that are not a whole record (torn by a kill, or written while we read)


def read_run_log(path: Path) -> RunLog:
    """Read a run's log (an empty RunLog if there is none). A step or round logged again after a resume
    replaces the earlier record; steps come in step order, rounds in (step, round) order."""
    log = RunLog()
    if not path.is_file():
        return log
    log.exists = True
    steps: dict[int, StepRecord] = {}
    rounds: dict[tuple[int, int], RoundRecord] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        record = parse_record(line)
        if isinstance(record, StepRecord):
            steps[record.step] = record
        elif isinstance(record, RoundRecord):
            rounds[(record.step, record.round)] = record
            log.finished = log.finished or record.event == "final"
        elif isinstance(record, ResumeRecord):
            log.resumes.append(record)
        else:
            log.skipped += 1
    log.steps = [steps[s] for s in sorted(steps)]
    log.rounds = [rounds[k] for k in sorted(rounds)]
    return log


# ----- what users ask of runs --------------------------------------------------------------------------
def ensure_schema(catalog: Catalog) -> bool:
    """The console's and the trainer's tables, created on first use; returns whether they exist. A reader
    cannot create them: it has them made by a brief writable open when no writer holds the workspace (a
    running `train` made them already); it has none when no run has used the workspace."""
    if catalog.read_only:
        needed = {"runs", "round_compute"}  # the first of console.sql's, the last of runs.sql's
        if not needed <= catalog.table_names():
            catalog.upgrade(ensure_schema)
        return needed <= catalog.table_names()
    catalog.run("console.sql", "schema")
    catalog.run("runs.sql", "schema")
    return True


def record_compute(
    catalog: Catalog, run_id: str, round_: int, step: int, spent: Compute, total: Compute
) -> None:
    """Store a round record's compute in `round_compute`: per kind of work, the round's and the cumulative
    tokens and FLOPs."""
    for kind in KINDS:
        catalog.run(
            "runs.sql", "record_compute", run_id=run_id, round=round_, step=step, kind=kind,
            tokens=getattr(spent, f"{kind}_tokens"), flops=getattr(spent, f"{kind}_flops"),
            total_tokens=getattr(total, f"{kind}_tokens"), total_flops=getattr(total, f"{kind}_flops"),
        )  # fmt: skip


def list_runs(catalog: Catalog) -> pa.Table:
    """One row per run: rounds, training steps and tokens, total compute (training, probes and reference
    gradients, in FLOPs) and the share of it spent on rewards, held-out loss of its last evaluation, the
    latest theta per agent and whether each agent carries signal (`agent_signal`: per agent, `t` over the
    rounds, the number of rounds it rests on and the mean reliability `rel`). A read-only catalog of a
    workspace that never trained: no rows, no columns."""
    if not ensure_schema(catalog):
        return pa.table({})
    table = catalog.arrow("runs.sql", "list_runs")
    signal: dict[str, list[str]] = {}
    for run_id, agent, rounds, _, t, rel in agent_signal(catalog):
        signal.setdefault(run_id, []).append(f"{agent} t {_num(t, 1)} ({rounds}) rel {_num(rel, 2)}")
    column = [", ".join(signal[r]) if r in signal else None for r in table["run_id"].to_pylist()]
    return table.append_column("signal", pa.array(column, pa.string()))


def agent_signal(catalog: Catalog) -> list[tuple[str, str, int, float, float | None, float | None]]:
    """(run_id, agent, rounds, mean advantage over random, t over the rounds, mean reliability) of every
    console v2 run's agents; runs.sql's `agent_signal` says how to read them."""
    return catalog.run("runs.sql", "agent_signal")


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def selection_path(catalog: Catalog, run_id: str, round_: int | None) -> tuple[int, Path]:
    """(round, snapshot path) of a run's selection at `round_`, or at its last round when None."""
    rows = (
        catalog.run("runs.sql", "selection_of", run_id=run_id, round=round_) if ensure_schema(catalog) else []
    )
    if not rows:
        at = f"round {round_}" if round_ is not None else "any round"
        raise CorpusAgentsError(f"run {run_id!r} has no selection at {at} (see `corpus-agents runs`)")
    return int(rows[0][0]), Path(catalog.resolve_path(rows[0][1]))


def select_real_tokens(
    console: Console,
    round_: int,
    budget: int,
    path: Path,
    real_tokens: Callable[[Path], int] | None,
    *,
    mode: str | None = None,
    ratio: float | None = None,
) -> Path:
    """Select `budget` real tokens (as `real_tokens(snapshot)` counts a snapshot: its documents' tokens
    under a tokenizer, each with its EOS) into `path`. The console
    counts the catalog's estimate, so it is given `budget / ratio`; with `ratio` None it selects once by the
    estimate, measures that selection's ratio and selects again. Without `real_tokens`: by the estimate."""
    given = budget if not ratio else max(1, round(budget / ratio))
    path = console.select(round_, given, path, mode=mode)
    if real_tokens is None or ratio is not None:
        return path
    ratio = token_ratio(console.catalog, console.run_id, round_, real_tokens(path))
    if ratio != 1.0:
        path = console.select(round_, max(1, round(budget / ratio)), path, mode=mode)
    return path


def token_ratio(catalog: Catalog, run_id: str, round_: int, real: int) -> float:
    """`real` tokens of a round's selection over the tokens the console counted for it (its estimate)."""
    estimated = catalog.run("runs.sql", "selection_tokens", run_id=run_id, round=round_)[0][0]
    return real / estimated if estimated else 1.0


def static_selection(
    catalog: Catalog,
    run_id: str,
    tokens: int,
    mode: str | None,
    console: dict,
    init_from: str | None,
    real_tokens: Callable[[Path], int] | None = None,
) -> Path:
    """Fuse the agents with the console's round-0 state (config prior, or a run's learnt w and theta) and
    select `tokens` without any training feedback: round 0 of run `run_id`. `tokens` are real tokens as
    `real_tokens` counts a snapshot (`select_real_tokens`), estimated ones without it."""
    from corpus_agents.training.console import Console, ConsoleConfig

    paths = RunPaths.of(catalog.dir, run_id)  # the run id is checked before the run is recorded
    ensure_schema(catalog)
    config = ConsoleConfig.from_dict({**console, **({"mode": mode} if mode else {})})
    with Console(catalog, run_id, config) as con:
        con.start(init_from=init_from)
        return select_real_tokens(con, 0, tokens, paths.selection(0), real_tokens)


def label_shares(catalog: Catalog, doc_ids: pa.Array) -> list[tuple[str, str, int, float]]:
    """(agent, label, documents, share) of the given documents for every agent, by agent then share
    (descending); a document an agent has not labelled counts as '(none)'."""
    with catalog.registered("selected", pa.table({"doc_id": doc_ids})):
        return catalog.run("runs.sql", "label_shares")


def summarize_selection(catalog: Catalog, run_id: str, round_: int | None) -> str:
    """Documents, tokens and the share of each agent's labels in a round's selection."""
    round_, path = selection_path(catalog, run_id, round_)
    table, _ = read_snapshot(path)
    lines = [f"run {run_id} round {round_}: {table.num_rows:,} documents in {path}"]
    by_agent: dict[str, list[tuple[str, float]]] = {}
    for agent, label, _, share in label_shares(catalog, table["doc_id"]):
        by_agent.setdefault(agent, []).append((label, share))
    for name, _, _ in catalog.agent_rows():
        rows = by_agent.get(name, [])
        shares = ", ".join(f"{label} {share:.0%}" for label, share in rows[:8])
        lines.append(f"  {name}: {shares}{', ...' if len(rows) > 8 else ''}")
    return "\n".join(lines)
