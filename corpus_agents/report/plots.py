"""The report's PNG figures (matplotlib, Agg, no pyplot state). Every figure is a grid of panels drawn by
`panels`, which owns the axes, labels, limits and legend; each plot only draws its lines or bars."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import polars as pl

from corpus_agents.report.aggregate import heldout_vs_compute, mean_shares, over_seeds, over_seeds_at_step
from corpus_agents.report.collect import ReportData

MAX_LINES = 8  # labels drawn per agent in the w and share plots; the rest are summed as "other" (shares)
T = TypeVar("T")


def panels(
    out: Path,
    name: str,
    items: Sequence[T],
    draw: Callable[[Any, T], str],
    *,
    x: Literal["tokens", "compute", "round"],
    ylabel: str | None = None,
    ylim: tuple[float, float] | None = None,
    zero_line: bool = False,
    legend: str = "small",
    legend_outside: bool = False,
    title_size: str | None = None,
    suptitle: str | None = None,
    width: float = 5.2,
    height: float = 3.6,
) -> str:
    """Save `out/name`: a panel per item (up to 3 a row), where `draw(ax, item)` plots and returns the
    panel's title. The x axis is tokens or compute in FLOPs (engineering notation, from 0) or rounds
    (integers); the legend is in the panel or, with `legend_outside`, to its right. Returns `name`."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter, MaxNLocator

    cols = min(3, len(items))
    fig = Figure(figsize=(width * cols, height * math.ceil(len(items) / cols)), layout="constrained")
    axes = [ax for row in fig.subplots(math.ceil(len(items) / cols), cols, squeeze=False) for ax in row]
    for ax, item in zip(axes, items):
        ax.set_title(draw(ax, item), **({"fontsize": title_size} if title_size else {}))
        if ylabel:
            ax.set_ylabel(ylabel)
        if x in ("tokens", "compute"):
            ax.xaxis.set_major_formatter(EngFormatter())
            ax.set_xlim(left=0)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_axisbelow(True)
        ax.set_xlabel("compute (FLOPs: training + probes + reference gradients)" if x == "compute" else x)
        ax.grid(alpha=0.3)
        if ylim:
            ax.set_ylim(*ylim)
        if zero_line:
            ax.axhline(0, color="grey", lw=0.8)
        where = {"loc": "upper left", "bbox_to_anchor": (1.0, 1.0)} if legend_outside else {}
        ax.legend(fontsize=legend, **where)
    for ax in axes[len(items) :]:
        ax.set_visible(False)
    if suptitle:
        fig.suptitle(suptitle)
    fig.savefig(out / name, dpi=100)
    return name


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


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


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def plot_losses(data: ReportData, out: Path) -> list[tuple[str, str]]:
    """Training loss and held-out loss per task (and their mean) vs tokens, and the held-out losses vs total
    compute (the cost of training plus probes, for comparisons at equal compute), one line per
    configuration."""
    configs = data.config_order
    colors = _colors(len(configs))

    def by_config(ax: Any, item: tuple[str, pl.DataFrame, str]) -> str:
        title, frame, value = item
        _band_lines(ax, over_seeds(frame, data, ["tokens"], value), "tokens", "config", configs, colors)
        return title

    plots: list[tuple[str, str]] = []
    if data.train_loss.height:
        item = ("training loss (mean over runs, band: min-max)", data.train_loss, "loss")
        name = panels(
            out, "train_loss.png", [item], by_config, x="tokens", ylabel="loss", width=7.5, height=4.2
        )
        plots.append((name, "Training loss vs tokens"))
    if data.heldout.height:
        tasks = sorted(data.heldout["task"].unique().to_list())
        frames = [(t, data.heldout.filter(pl.col("task") == t)) for t in tasks]
        if len(tasks) > 1:
            mean = data.heldout.group_by(["run_id", "round", "step", "tokens"]).agg(
                pl.col("heldout_loss").mean()
            )
            frames.append(("mean over tasks", mean))
        items = [(f"held-out loss: {title}", frame, "heldout_loss") for title, frame in frames]
        name = panels(out, "heldout_loss.png", items, by_config, x="tokens", ylabel="loss")
        plots.append((name, "Held-out reference loss vs tokens, per task"))
    at_compute = heldout_vs_compute(data)
    if at_compute.height:

        def by_compute(ax: Any, task: str) -> str:
            frame = at_compute.filter(pl.col("task") == task)
            agg = over_seeds_at_step(frame, data, "compute_flops", "heldout_loss")
            _band_lines(ax, agg, "compute_flops", "config", configs, colors)
            return f"held-out loss: {task}"

        tasks = sorted(t for t in at_compute["task"].unique().to_list() if t != "mean over tasks")
        tasks += ["mean over tasks"] if len(tasks) > 1 else []
        name = panels(out, "heldout_compute.png", tasks, by_compute, x="compute", ylabel="loss")
        plots.append((name, "Held-out reference loss vs total compute (training + probes), per task"))
    return plots


def plot_theta(data: ReportData, out: Path) -> list[tuple[str, str]]:
    """theta per agent over rounds, one panel per configuration."""
    if not data.theta.height:
        return []
    agg = over_seeds(data.theta, data, ["agent", "round"], "theta")
    configs = [c for c in data.config_order if c in set(agg["config"].to_list())]
    agents = sorted(data.theta["agent"].unique().to_list())
    colors = _colors(len(agents))

    def theta(ax: Any, config: str) -> str:
        _band_lines(ax, agg.filter(pl.col("config") == config), "round", "agent", agents, colors)
        return f"theta: {config}"

    name = panels(out, "theta.png", configs, theta, x="round", ylim=(0, 1), width=4.6)
    return [(name, "Collaboration weights theta per agent over rounds")]


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

    def memory(ax: Any, agent: str, rows: pl.DataFrame) -> str:
        labels = sorted(_top_labels(rows, "mean", MAX_LINES))  # label order: bins read in order
        total = rows["label"].n_unique()
        for label, color in zip(labels, _colors(len(labels))):
            line = rows.filter(pl.col("label") == label).sort("round")
            ax.plot(line["round"].to_numpy(), line["mean"].to_numpy(), color=color, label=label, marker=".")
        shown = f" (top {len(labels)} of {total} by |w|)" if total > len(labels) else ""
        return f"w of {agent}{shown}"

    agg = over_seeds(data.memory, data, ["agent", "label", "round"], "w")
    return _agent_figures(
        data, out, agg, "w", memory, "Agent memory w over rounds", suptitle="agent memory w", zero_line=True
    )


def _stacked_shares(ax: Any, rows: pl.DataFrame) -> None:
    """Stacked bars of a label's mean share per round: the largest labels, the rest summed as "other"."""
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


def plot_shares(data: ReportData, out: Path) -> list[tuple[str, str]]:
    """Share of the selected documents per label of each agent over rounds (stacked; mean over runs; the
    largest labels, the rest as "other"), one figure per configuration with a panel per agent."""
    if not data.shares.height:
        return []

    def shares(ax: Any, agent: str, rows: pl.DataFrame) -> str:
        _stacked_shares(ax, rows)
        return f"selected docs by {agent}"

    return _agent_figures(
        data, out, mean_shares(data), "shares", shares, "Selected documents per label",
        suptitle="selection by label", ylabel="share of documents", ylim=(0, 1), legend_outside=True,
    )  # fmt: skip


def _agent_figures(
    data: ReportData,
    out: Path,
    agg: pl.DataFrame,
    prefix: str,
    panel: Callable[[Any, str, pl.DataFrame], str],
    title: str,
    *,
    suptitle: str,
    **options: Any,
) -> list[tuple[str, str]]:
    """One figure per configuration (`PREFIX-NN-CONFIG.png`) with a panel per agent, drawn by
    `panel(ax, agent, that agent's rows of agg)`; returns (file name, title) of each."""
    plots = []
    for i, config in enumerate(data.config_order):
        part = agg.filter(pl.col("config") == config)
        if not part.height:
            continue

        def draw(ax: Any, agent: str, part: pl.DataFrame = part) -> str:
            return panel(ax, agent, part.filter(pl.col("agent") == agent))

        name = panels(
            out, f"{prefix}-{i:02d}-{_slug(config)}.png", sorted(part["agent"].unique().to_list()), draw,
            x="round", legend="x-small", title_size="medium", suptitle=f"{suptitle}: {config}", width=4.6,
            **options,
        )  # fmt: skip
        plots.append((name, f"{title}: {config}"))
    return plots


def draw_all(data: ReportData, out: Path) -> list[tuple[str, str]]:
    """Every figure of the report, as (file name, title) in page order."""
    return [*plot_losses(data, out), *plot_theta(data, out), *plot_memory(data, out), *plot_shares(data, out)]
