"""`corpus-agents report`: one HTML page with PNG plots comparing training runs grouped into configurations.

Runs that differ only by seed (`method-seed0`, `method-seed1`) form one configuration, plotted as the mean
over seeds with a min-max band. What lives where:

- `collect`: the catalog's tables (sql/report.sql) and the runs' logs (training/runs.py) read into tidy
  frames (`ReportData`); from the logs alone while a training run holds the workspace.
- `aggregate`: means, spreads and final values over each configuration's runs.
- `plots`: the PNG figures, each a grid drawn by the one panel helper `plots.panels`.
- `html`: the page.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from corpus_agents.errors import CorpusAgentsError
from corpus_agents.report.collect import collect
from corpus_agents.report.html import render_html
from corpus_agents.report.plots import draw_all
from corpus_agents.storage import atomic_path

__all__ = ["write_report"]


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
    plots = draw_all(data, out_dir)
    index = out_dir / "index.html"
    with atomic_path(index) as tmp:
        tmp.write_text(render_html(data, ws, plots), encoding="utf-8")
    return index
