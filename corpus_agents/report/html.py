"""The report's page: a table of the runs, the final held-out loss per configuration, then the plots."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import polars as pl

from corpus_agents.report.aggregate import final_heldout, run_summary
from corpus_agents.report.collect import ReportData

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


def _signal_section(data: ReportData) -> list[str]:
    """Whether each agent carries signal, per run (console v2 runs; none when the catalog was busy)."""
    if not data.signal.height:
        return []
    rows = [
        [r["run_id"], r["agent"], r["rounds"], f"{r['advantage']:+.4f}",
         "-" if r["t"] is None else f"{r['t']:+.1f}", "-" if r["reliability"] is None else f"{r['reliability']:.2f}"]
        for r in data.signal.iter_rows(named=True)
    ]  # fmt: skip
    return [
        "<h2>Signal per agent</h2>",
        "<p>Each round the console measures every agent's advantage over random selection: how much better its "
        "preferred labels did on the probes than the corpus's own label mix, on the half of the probes its "
        "preferences were not learnt from. <b>t</b> is the rounds' mean advantage over its standard error across "
        "the measured rounds. Under no signal it is about Student's t with (measured rounds &minus; 1) degrees "
        "of freedom, so usually below 2 in size; with 9 measured rounds, t above 2.3 is evidence at the 5% level "
        "that the agent's preferences beat random selection (with many agents and runs on a page, expect some "
        "chance exceedances). <b>reliability</b>, the split-half agreement of its label effects, is a weaker "
        "sign: it is clipped at 0, so even pure noise averages above 0.</p>",
        _table(["run", "agent", "rounds measured", "mean advantage", "t", "reliability"], rows),
    ]


def render_html(data: ReportData, workspace: Path, plots: list[tuple[str, str]]) -> str:
    """The page: runs, final held-out loss per configuration (mean ± std over seeds), then the plots."""
    summary = run_summary(data)
    run_rows = [
        [
            r["run_id"], r["config"], r["status"],
            "-" if r["last_round"] is None else r["last_round"],
            "-" if r["steps"] is None else r["steps"],
            "-" if r["tokens"] is None else r["tokens"],
            "-" if r["compute_flops"] is None else f"{r['compute_flops']:.3g}",
            "-" if r["probe_share"] is None else f"{r['probe_share']:.1%}",
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
        "<p>Compute is the cost so far: training plus the reward probes' per-example gradients and the "
        "reference gradients, 6 &middot; N &middot; tokens each (held-out evaluation is not charged); "
        "random selection measures no rewards, so its compute is its training.</p>",
        _table(
            ["run", "configuration", "status", "last round", "steps", "tokens trained",
             "compute (FLOPs)", "spent on rewards", "last held-out loss (mean of tasks)", "at tokens"],
            run_rows,
        ),
        *_signal_section(data),
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
