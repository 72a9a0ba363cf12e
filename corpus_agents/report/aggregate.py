"""Aggregates of the report's frames over the runs (seeds) of each configuration, for plots and tables."""

from __future__ import annotations

import polars as pl

from corpus_agents.report.collect import ReportData


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


def over_seeds_at_step(frame: pl.DataFrame, data: ReportData, x: str, value: str) -> pl.DataFrame:
    """`over_seeds` of `value` per configuration and step, with `x` (a quantity that can differ between a
    configuration's runs at the same step, such as compute) averaged over the runs."""
    return (
        data.with_config(frame)
        .group_by(["config", "step"], maintain_order=True)
        .agg(
            pl.col(x).mean(),
            pl.col(value).mean().alias("mean"),
            pl.col(value).std().alias("std"),
            pl.col(value).min().alias("min"),
            pl.col(value).max().alias("max"),
            pl.col("run_id").n_unique().alias("runs"),
        )
        .sort(["config", "step"])
    )


def heldout_vs_compute(data: ReportData) -> pl.DataFrame:
    """Held-out loss per task, and its mean over tasks (task "mean over tasks" when there are several), at
    every round record that has compute, with the run's cumulative cost there (`compute_flops`)."""
    heldout = data.heldout
    if heldout["task"].n_unique() > 1:
        mean = heldout.group_by(["run_id", "round", "step", "tokens"]).agg(
            pl.lit("mean over tasks").alias("task"), pl.col("heldout_loss").mean()
        )
        heldout = pl.concat([heldout, mean.select(heldout.columns)])
    cost = data.compute.select("run_id", "round", "step", "compute_flops").drop_nulls()
    return heldout.join(cost, on=["run_id", "round", "step"])


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
    """One row per run: configuration, status, last round, steps and tokens, cost in FLOPs and the share
    spent on rewards at its last round record, mean final held-out loss."""
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
    cost = (
        data.compute.sort("step")
        .group_by("run_id")
        .agg(pl.col("compute_flops").last(), pl.col("reward_flops").last())
        .with_columns((pl.col("reward_flops") / pl.col("compute_flops")).alias("probe_share"))
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
        .join(cost.select("run_id", "compute_flops", "probe_share"), on="run_id", how="left")
    )
