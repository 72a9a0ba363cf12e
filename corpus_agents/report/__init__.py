"""`corpus-agents report`: one HTML page with PNG plots comparing training runs grouped into configurations.

Per run it collects the training loss (the run's log.jsonl), the held-out loss per reference task
(round_metrics), theta and each agent's memory w per round (collab_weights, agent_memory) and the share of
each agent's labels among the documents selected each round (selection snapshots joined with the scores).
Runs that differ only by seed (`method-seed0`, `method-seed1`) form one configuration, plotted as the mean
over seeds with a min-max band. While a training run holds the workspace, the catalog cannot be opened: the
report then falls back to the runs' logs (everything but the selection shares).
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from corpus_agents.errors import CorpusAgentsError, WorkspaceBusyError
from corpus_agents.scoring.catalog import Catalog
from corpus_agents.sqlfiles import statement

SEED_SUFFIX = re.compile(r"[-_.]?seed[-_]?\d+$", re.IGNORECASE)
MAX_LINES = 8  # labels drawn per agent in the w and share plots; the rest are summed as "other" (shares)

_SCHEMAS = {
    "train_loss": {"run_id": pl.String, "step": pl.Int64, "tokens": pl.Int64, "loss": pl.Float64},
    "heldout": {
        "run_id": pl.String, "round": pl.Int64, "step": pl.Int64, "tokens": pl.Int64,
        "task": pl.String, "heldout_loss": pl.Float64,
    },
    "theta": {"run_id": pl.String, "round": pl.Int64, "agent": pl.String, "theta": pl.Float64},
    "memory": {"run_id": pl.String, "round": pl.Int64, "agent": pl.String, "label": pl.String, "w": pl.Float64},
    "shares": {
        "run_id": pl.String, "round": pl.Int64, "agent": pl.String, "label": pl.String,
        "docs": pl.Int64, "share": pl.Float64,
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
class RunLog:
    """What a run's log.jsonl holds: the training loss per logged step and the round records."""

    train_loss: list[tuple[str, int, int, float]] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False
    exists: bool = False


def read_run_log(path: Path, run_id: str) -> RunLog:
    """Parse a run's log; a step or round logged again after a resume replaces the earlier record, and a
    truncated last line (a run killed mid-write, or still writing) is skipped."""
    log = RunLog()
    if not path.is_file():
        return log
    log.exists = True
    steps: dict[int, tuple[str, int, int, float]] = {}
    rounds: dict[tuple[int, int], dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        event = record.get("event")
        if event == "step":
            steps[int(record["step"])] = (
                run_id,
                int(record["step"]),
                int(record["tokens"]),
                float(record["loss"]),
            )
        elif event in ("round", "final"):
            rounds[(int(record["round"]), int(record["step"]))] = record
            log.finished = log.finished or event == "final"
    log.train_loss = [steps[s] for s in sorted(steps)]
    log.rounds = [rounds[k] for k in sorted(rounds, key=lambda k: (k[1], k[0]))]
    return log


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


def _log_frames(run_id: str, log: RunLog) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """Held-out, theta and memory rows from a run's log records (used when the catalog is busy)."""
    heldout, theta, memory = [], [], []
    for r in log.rounds:
        round_, step, tokens = int(r["round"]), int(r["step"]), int(r.get("tokens", 0))
        heldout += [(run_id, round_, step, tokens, t, float(v)) for t, v in r.get("heldout_loss", {}).items()]
        if r["event"] == "round":  # a final record repeats the last round's console state
            theta += [(run_id, round_, a, float(v)) for a, v in r.get("theta", {}).items()]
            memory += [
                (run_id, round_, a, label, float(v))
                for a, ws in r.get("w", {}).items()
                for label, v in ws.items()
            ]
    return heldout, theta, memory


def collect(
    workspace: str | os.PathLike, run_ids: list[str] | None = None, group: str | None = None
) -> ReportData:
    """Everything the report plots, for `run_ids` (default: every run of the workspace)."""
    ws = Path(workspace).expanduser().resolve()
    runs_dir = ws / "runs"
    try:
        catalog = Catalog(ws, command="corpus-agents report")
    except WorkspaceBusyError as exc:
        return _collect_from_logs(ws, runs_dir, run_ids, group, str(exc))
    with catalog:
        from corpus_agents.training.runs import ensure_schema

        ensure_schema(catalog)
        con = catalog.con
        known = [r for r, _ in con.execute(statement("report.sql", "known_runs")).fetchall()]
        runs = _resolve_runs(known, run_ids, ws)
        logs = {r: read_run_log(runs_dir / r / "log.jsonl", r) for r in runs}
        params = {"runs": runs}
        heldout = _frame("heldout", con.execute(statement("report.sql", "heldout"), params).fetchall())
        theta = _frame("theta", con.execute(statement("report.sql", "theta"), params).fetchall())
        memory = _frame("memory", con.execute(statement("report.sql", "memory"), params).fetchall())
        notes: list[str] = []
        share_rows: list[tuple] = []
        for run_id, round_, path, *_ in con.execute(statement("report.sql", "selections"), params).fetchall():
            if not Path(path).is_file():
                notes.append(f"run {run_id}: the selection snapshot of round {round_} is missing ({path})")
                continue
            con.register("report_selected", pq.read_table(path, columns=["doc_id"]))
            try:
                rows = con.execute(statement("report.sql", "label_shares")).fetchall()
            finally:
                con.unregister("report_selected")
            share_rows += [(run_id, round_, *row) for row in rows]
    train_loss = _frame("train_loss", [row for r in runs for row in logs[r].train_loss])
    return ReportData(
        runs=runs,
        configs={r: configuration_of(r, group) for r in runs},
        train_loss=train_loss,
        heldout=heldout,
        theta=theta,
        memory=memory,
        shares=_frame("shares", share_rows),
        status={r: _status(logs[r], heldout.filter(pl.col("run_id") == r).height > 0) for r in runs},
        notes=notes,
    )


def _collect_from_logs(
    ws: Path, runs_dir: Path, run_ids: list[str] | None, group: str | None, busy: str
) -> ReportData:
    """The report's data from the runs' logs alone, while another process holds the catalog."""
    known = sorted(p.parent.name for p in runs_dir.glob("*/log.jsonl")) if runs_dir.is_dir() else []
    runs = _resolve_runs(known, run_ids, ws)
    logs = {r: read_run_log(runs_dir / r / "log.jsonl", r) for r in runs}
    heldout, theta, memory = [], [], []
    for r in runs:
        h, t, m = _log_frames(r, logs[r])
        heldout, theta, memory = heldout + h, theta + t, memory + m
    return ReportData(
        runs=runs,
        configs={r: configuration_of(r, group) for r in runs},
        train_loss=_frame("train_loss", [row for r in runs for row in logs[r].train_loss]),
        heldout=_frame("heldout", heldout),
        theta=_frame("theta", theta),
        memory=_frame("memory", memory),
        shares=_frame("shares", []),
        status={r: _status(logs[r], bool(logs[r].rounds)) for r in runs},
        notes=[
            f"read from the runs' logs ({busy}); the selection shares need the catalog: re-run when it is free"
        ],
    )


def _status(log: RunLog, has_metrics: bool) -> str:
    if log.finished:
        return "finished"
    if log.exists or has_metrics:
        return "in progress or stopped"
    return "selection only (no training)"


# ----- aggregation over seeds ------------------------------------------------------------------------------
def over_seeds(frame: pl.DataFrame, data: ReportData, keys: list[str], value: str) -> pl.DataFrame:
    """Mean, sample std, min, max and number of runs of `value` per configuration and `keys`."""
    return (
        data.with_config(frame)
        .group_by(["config", *keys], maintain_order=True)
        .agg(
            pl.col(value).mean().alias("mean"),
            pl.col(value).std().alias("std"),
            pl.col(value).min().alias("min"),
            pl.col(value).max().alias("max"),
            pl.col("run_id").n_unique().alias("runs"),
        )
        .sort(["config", *keys])
    )


def mean_shares(data: ReportData) -> pl.DataFrame:
    """Per configuration, agent, label and round: the label's share averaged over the configuration's runs
    with a selection at that round, a run that selected no document of the label counting 0 (so the
    shares of a round still sum to 1)."""
    shares = data.with_config(data.shares)
    runs = shares.group_by(["config", "agent", "round"]).agg(pl.col("run_id").n_unique().alias("runs"))
    return (
        shares.group_by(["config", "agent", "label", "round"])
        .agg(pl.col("share").sum())
        .join(runs, on=["config", "agent", "round"])
        .with_columns((pl.col("share") / pl.col("runs")).alias("mean"))
        .sort(["config", "agent", "label", "round"])
    )


def final_heldout(data: ReportData) -> pl.DataFrame:
    """Per configuration and task: the held-out loss at each run's last evaluation, mean and std over the
    runs (seeds), with the runs' token counts there."""
    last = data.heldout.group_by("run_id").agg(pl.col("step").max().alias("step"))
    final = data.heldout.join(last, on=["run_id", "step"])
    return (
        data.with_config(final)
        .group_by(["config", "task"])
        .agg(
            pl.col("heldout_loss").mean().alias("mean"),
            pl.col("heldout_loss").std().alias("std"),
            pl.col("run_id").n_unique().alias("runs"),
            pl.col("tokens").min().alias("tokens_min"),
            pl.col("tokens").max().alias("tokens_max"),
        )
        .sort(["task", "config"])
    )


def run_summary(data: ReportData) -> pl.DataFrame:
    """One row per run: configuration, status, last round, steps and tokens, mean final held-out loss."""
    last = data.heldout.group_by("run_id").agg(pl.col("step").max().alias("step"))
    final = (
        data.heldout.join(last, on=["run_id", "step"])
        .group_by("run_id")
        .agg(
            pl.col("tokens").max().alias("eval_tokens"),
            pl.col("heldout_loss").mean().alias("final_heldout_mean"),
        )
    )
    rounds = (
        pl.concat([data.heldout.select("run_id", "round"), data.theta.select("run_id", "round")])
        .group_by("run_id")
        .agg(pl.col("round").max().alias("last_round"))
    )
    steps = data.train_loss.group_by("run_id").agg(
        pl.col("step").max().alias("steps"), pl.col("tokens").max()
    )
    base = pl.DataFrame(
        {
            "run_id": data.runs,
            "config": [data.configs[r] for r in data.runs],
            "status": [data.status[r] for r in data.runs],
        }
    )
    return (
        base.join(rounds, on="run_id", how="left")
        .join(steps, on="run_id", how="left")
        .join(final, on="run_id", how="left")
    )


# ----- plots ---------------------------------------------------------------------------------------------
def _figure(rows: int, cols: int, width: float = 5.2, height: float = 3.6) -> tuple[Any, list[Any]]:
    """A matplotlib Figure (Agg, no pyplot state) with a flat list of its axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _tokens_axis(ax: Any) -> None:
    from matplotlib.ticker import EngFormatter

    ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_xlim(left=0)
    ax.set_xlabel("tokens")
    ax.grid(alpha=0.3)


def _rounds_axis(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_axisbelow(True)
    ax.set_xlabel("round")
    ax.grid(alpha=0.3)


def _band_lines(ax: Any, agg: pl.DataFrame, x: str, series: str, names: list[str], colors: list[Any]) -> None:
    """One line per `series` value (the mean) with a min-max band where more than one run contributes."""
    for name, color in zip(names, colors):
        part = agg.filter(pl.col(series) == name).sort(x)
        if part.height == 0:
            continue
        runs = int(part["runs"].max())
        xs = part[x].to_numpy()
        label = f"{name} ({runs} runs)" if runs > 1 else name
        ax.plot(
            xs, part["mean"].to_numpy(), color=color, label=label, marker="." if part.height < 30 else None
        )
        if runs > 1:
            ax.fill_between(xs, part["min"].to_numpy(), part["max"].to_numpy(), color=color, alpha=0.2, lw=0)


def _save(fig: Any, out: Path, name: str) -> str:
    fig.savefig(out / name, dpi=100)
    return name


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def plot_losses(data: ReportData, out: Path) -> list[tuple[str, str]]:
    """Training loss and held-out loss per task (and their mean) vs tokens, one line per configuration."""
    configs = data.config_order
    colors = _colors(len(configs))
    plots: list[tuple[str, str]] = []
    if data.train_loss.height:
        fig, (ax,) = _figure(1, 1, width=7.5, height=4.2)
        _band_lines(
            ax, over_seeds(data.train_loss, data, ["tokens"], "loss"), "tokens", "config", configs, colors
        )
        ax.set_title("training loss (mean over runs, band: min-max)")
        ax.set_ylabel("loss")
        _tokens_axis(ax)
        ax.legend(fontsize="small")
        plots.append((_save(fig, out, "train_loss.png"), "Training loss vs tokens"))
    if data.heldout.height:
        tasks = sorted(data.heldout["task"].unique().to_list())
        panels = [(t, data.heldout.filter(pl.col("task") == t)) for t in tasks]
        if len(tasks) > 1:
            mean = data.heldout.group_by(["run_id", "round", "step", "tokens"]).agg(
                pl.col("heldout_loss").mean()
            )
            panels.append(("mean over tasks", mean))
        cols = min(3, len(panels))
        fig, axes = _figure(math.ceil(len(panels) / cols), cols)
        for ax, (title, frame) in zip(axes, panels):
            agg = over_seeds(frame, data, ["tokens"], "heldout_loss")
            _band_lines(ax, agg, "tokens", "config", configs, colors)
            ax.set_title(f"held-out loss: {title}")
            ax.set_ylabel("loss")
            _tokens_axis(ax)
            ax.legend(fontsize="small")
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        plots.append((_save(fig, out, "heldout_loss.png"), "Held-out reference loss vs tokens, per task"))
    return plots


def plot_theta(data: ReportData, out: Path) -> list[tuple[str, str]]:
    """theta per agent over rounds, one panel per configuration."""
    if not data.theta.height:
        return []
    agg = over_seeds(data.theta, data, ["agent", "round"], "theta")
    configs = [c for c in data.config_order if c in set(agg["config"].to_list())]
    agents = sorted(data.theta["agent"].unique().to_list())
    colors = _colors(len(agents))
    cols = min(3, len(configs))
    fig, axes = _figure(math.ceil(len(configs) / cols), cols, width=4.6)
    for ax, config in zip(axes, configs):
        _band_lines(ax, agg.filter(pl.col("config") == config), "round", "agent", agents, colors)
        ax.set_title(f"theta: {config}")
        _rounds_axis(ax)
        ax.set_ylim(0, 1)
        ax.legend(fontsize="small")
    for ax in axes[len(configs) :]:
        ax.set_visible(False)
    return [(_save(fig, out, "theta.png"), "Collaboration weights theta per agent over rounds")]


def _top_labels(frame: pl.DataFrame, value: str, n: int) -> list[str]:
    """The `n` labels with the largest |value| anywhere in `frame` (the rest would be clutter)."""
    ranked = (
        frame.group_by("label")
        .agg(pl.col(value).abs().max().alias("key"))
        .sort(["key", "label"], descending=[True, False])
    )
    return ranked["label"].head(n).to_list()


def plot_memory(data: ReportData, out: Path) -> list[tuple[str, str]]:
    """Each agent's w per label over rounds (mean over runs; the labels with the largest |w|), one figure
    per configuration with a panel per agent."""
    if not data.memory.height:
        return []
    plots = []
    agg = over_seeds(data.memory, data, ["agent", "label", "round"], "w")
    for i, config in enumerate(data.config_order):
        part = agg.filter(pl.col("config") == config)
        if not part.height:
            continue
        agents = sorted(part["agent"].unique().to_list())
        cols = min(3, len(agents))
        fig, axes = _figure(math.ceil(len(agents) / cols), cols, width=4.6)
        for ax, agent in zip(axes, agents):
            rows = part.filter(pl.col("agent") == agent)
            labels = sorted(_top_labels(rows, "mean", MAX_LINES))  # label order: bins read in order
            total = rows["label"].n_unique()
            for label, color in zip(labels, _colors(len(labels))):
                line = rows.filter(pl.col("label") == label).sort("round")
                ax.plot(
                    line["round"].to_numpy(), line["mean"].to_numpy(), color=color, label=label, marker="."
                )
            shown = f" (top {len(labels)} of {total} by |w|)" if total > len(labels) else ""
            ax.set_title(f"w of {agent}{shown}", fontsize="medium")
            _rounds_axis(ax)
            ax.axhline(0, color="grey", lw=0.8)
            ax.legend(fontsize="x-small")
        for ax in axes[len(agents) :]:
            ax.set_visible(False)
        fig.suptitle(f"agent memory w: {config}")
        plots.append(
            (_save(fig, out, f"w-{i:02d}-{_slug(config)}.png"), f"Agent memory w over rounds: {config}")
        )
    return plots


def plot_shares(data: ReportData, out: Path) -> list[tuple[str, str]]:
    """Share of the selected documents per label of each agent over rounds (stacked; mean over runs; the
    largest labels, the rest as "other"), one figure per configuration with a panel per agent."""
    if not data.shares.height:
        return []
    plots = []
    agg = mean_shares(data)
    for i, config in enumerate(data.config_order):
        part = agg.filter(pl.col("config") == config)
        if not part.height:
            continue
        agents = sorted(part["agent"].unique().to_list())
        cols = min(3, len(agents))
        fig, axes = _figure(math.ceil(len(agents) / cols), cols, width=4.6)
        for ax, agent in zip(axes, agents):
            rows = part.filter(pl.col("agent") == agent)
            rounds = sorted(rows["round"].unique().to_list())
            top = sorted(_top_labels(rows, "mean", MAX_LINES - 1))
            if rows["label"].n_unique() == len(top) + 1:  # one left over: show it rather than "other"
                top = sorted(_top_labels(rows, "mean", MAX_LINES))
            grid = (
                rows.with_columns(
                    pl.when(pl.col("label").is_in(top))
                    .then(pl.col("label"))
                    .otherwise(pl.lit("other"))
                    .alias("label")
                )
                .group_by(["label", "round"])
                .agg(pl.col("mean").sum())
            )
            names = [*top, *(["other"] if "other" in set(grid["label"].to_list()) else [])]
            stacks = []
            for name in names:
                by_round = dict(grid.filter(pl.col("label") == name).select("round", "mean").iter_rows())
                stacks.append([by_round.get(r, 0.0) for r in rounds])
            colors = [*_colors(len(top)), (0.8, 0.8, 0.8, 1.0)][: len(names)]
            bottom = np.zeros(len(rounds))
            for name, values, color in zip(names, stacks, colors):  # rounds are discrete: stacked bars
                ax.bar(rounds, values, bottom=bottom, color=color, label=name, width=0.8)
                bottom += np.asarray(values)
            _rounds_axis(ax)
            ax.set_title(f"selected docs by {agent}", fontsize="medium")
            ax.set_ylabel("share of documents")
            ax.set_ylim(0, 1)
            ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
        for ax in axes[len(agents) :]:
            ax.set_visible(False)
        fig.suptitle(f"selection by label: {config}")
        plots.append(
            (
                _save(fig, out, f"shares-{i:02d}-{_slug(config)}.png"),
                f"Selected documents per label: {config}",
            )
        )
    return plots


# ----- the page ----------------------------------------------------------------------------------------
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f2f2f2; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.3em 0 1.5em; }
.note { color: #8a5300; }
"""


class Bold(str):
    """A table cell shown in bold (the best configuration of a task)."""


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, Bold):
            return f"<td><strong>{html.escape(value)}</strong></td>"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"<td>{html.escape(str(value))}</td>"
        return (
            f'<td class="num">{value:,}</td>'
            if isinstance(value, int)
            else f'<td class="num">{value:.4f}</td>'
        )

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _mean_std(mean: float | None, std: float | None, runs: int) -> str:
    if mean is None:
        return "-"
    if runs < 2 or std is None:
        return f"{mean:.4f} (1 run)"
    return f"{mean:.4f} ± {std:.4f} ({runs} runs)"


def render_html(data: ReportData, workspace: Path, plots: list[tuple[str, str]]) -> str:
    """The page: runs, final held-out loss per configuration (mean ± std over seeds), then the plots."""
    summary = run_summary(data)
    run_rows = [
        [
            r["run_id"], r["config"], r["status"],
            "-" if r["last_round"] is None else r["last_round"],
            "-" if r["steps"] is None else r["steps"],
            "-" if r["tokens"] is None else r["tokens"],
            "-" if r["final_heldout_mean"] is None else r["final_heldout_mean"],
            "-" if r["eval_tokens"] is None else r["eval_tokens"],
        ]
        for r in summary.iter_rows(named=True)
    ]  # fmt: skip
    final = final_heldout(data)
    best = dict(
        final.sort("mean").group_by("task", maintain_order=True).agg(pl.col("config").first()).iter_rows()
    )
    final_rows = [
        [
            r["task"], r["config"],
            (Bold if final["config"].n_unique() > 1 and best[r["task"]] == r["config"] else str)(
                _mean_std(r["mean"], r["std"], r["runs"])
            ),
            f"{r['tokens_min']:,}" if r["tokens_min"] == r["tokens_max"] else f"{r['tokens_min']:,}-{r['tokens_max']:,}",
        ]
        for r in final.iter_rows(named=True)
    ]  # fmt: skip
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>corpus-agents report: {html.escape(workspace.name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Training runs</h1>",
        f"<p>Workspace <code>{html.escape(str(workspace))}</code>. Runs are grouped into configurations; "
        "curves are the mean over a configuration's runs (seeds) with a min-max band.</p>",
    ]
    parts += [f'<p class="note">{html.escape(note)}</p>' for note in data.notes]
    parts += [
        "<h2>Runs</h2>",
        _table(
            ["run", "configuration", "status", "last round", "steps", "tokens trained",
             "last held-out loss (mean of tasks)", "at tokens"],
            run_rows,
        ),
        "<h2>Final held-out loss</h2>",
        "<p>At each run's last evaluation; mean ± sample standard deviation over the configuration's runs; "
        "the lowest mean of each task in bold.</p>",
        _table(["task", "configuration", "held-out loss", "tokens"], final_rows) if final_rows else "<p>No held-out evaluations yet.</p>",
    ]  # fmt: skip
    parts.append("<h2>Plots</h2>")
    for name, title in plots:
        parts += [
            f"<h3>{html.escape(title)}</h3>",
            f'<img src="{html.escape(name)}" alt="{html.escape(title)}">',
        ]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(
    workspace: str | os.PathLike,
    run_ids: list[str] | None = None,
    out: str | os.PathLike | None = None,
    group: str | None = None,
) -> Path:
    """Collect the runs, draw the PNGs and write `index.html` (default directory: WORKSPACE/report)."""
    if group:
        try:
            re.compile(group)
        except re.error as exc:
            raise CorpusAgentsError(f"--group {group!r} is not a valid regular expression: {exc}") from None
    data = collect(workspace, run_ids, group)
    ws = Path(workspace).expanduser().resolve()
    out_dir = Path(out).expanduser() if out else ws / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = [*plot_losses(data, out_dir), *plot_theta(data, out_dir)]
    plots += [*plot_memory(data, out_dir), *plot_shares(data, out_dir)]
    index = out_dir / "index.html"
    tmp = out_dir / f".index.html.tmp-{os.getpid()}"
    tmp.write_text(render_html(data, ws, plots), encoding="utf-8")
    os.replace(tmp, index)
    return index
