"""The console by cells selects and probes exactly the documents that the per-document console before it did.

The oracle is that console's SQL, kept verbatim in tests/training/console_oracle.sql (commit 88d35a1): it
builds `console_docs` (every selectable document with its packed labels and seen count), then ranks, buckets
and cuts documents one by one. Its `select_sample` is the one block rewritten since, when `sample` became
sequential Poisson sampling (no length preference): it orders every document by its key and cuts there. It
runs here on the new console's own cursor, with the new console's learnt state, so that any difference is in
how the documents are chosen, never in the state they are chosen by.
"""

# ruff: noqa: F401, F811  (`catalog` is the fixture of test_console.py, imported as such)

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import corpus_agents.training.console as console_module
from corpus_agents.config import ConsoleConfig
from corpus_agents.scoring.catalog import Catalog, quote_literal
from corpus_agents.sqlfiles import split_statements
from corpus_agents.training.console import Console, sample_quotas
from corpus_agents.training.selection import read_snapshot
from tests.training.test_console import catalog, quality_rewards

ORACLE = Path(__file__).with_name("console_oracle.sql")
_ALL_LEVELS = 2**62  # the old console's "every level fits"


@cache
def block(name: str) -> str:
    parts = re.split(r"^-- name: (\w+)\s*$", ORACLE.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2]))[name]


def fragment(name: str) -> str:
    return "\n".join(line for line in block(name).splitlines() if not line.lstrip().startswith("--"))


class OldConsole:
    """The per-document console's selection and probe draws, over a (new) console's run and state, on a
    cursor of its own (its temp tables are private to it)."""

    def __init__(self, console: Console):
        self.console = console
        self.db = console.catalog.cursor()
        self.cfg = console.config

    @contextlib.contextmanager
    def agents(self) -> Iterator[None]:
        """The run's agents (`console_agents`, as the new console has them) for one call; closes the cursor."""
        try:
            with self.db.registered("console_agents", self.console._agents):
                yield
        finally:
            self.db.close()

    def run(self, name: str, sql: str | None = None, **params: Any) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        for stmt in split_statements(sql or block(name)):
            rows = self.db.execute(stmt, {k: params[k] for k in set(re.findall(r"\$(\w+)", stmt))})
        return rows

    def arrow(self, name: str, **params: Any) -> pa.Table:
        (stmt,) = split_statements(block(name))
        return self.db.execute_arrow(stmt, params)

    def build_docs(self) -> None:
        """console_docs as the old `_build_docs` made it (in one range), then its seen counts."""
        terms, joins = [], []
        for i, (agent, num_labels, stride) in enumerate(self.console.agent_labels):
            fill = {"i": i, "agent_lit": quote_literal(agent), "max_label": num_labels - 1, "stride": stride}
            terms.append(fragment("docs_cache_cell_term").format(**fill))
            joins.append(fragment("docs_cache_join").format(**fill))
        tie = "NULL"
        if self.cfg.tie_break != "hash":
            names = [agent for agent, _, _ in self.console.agent_labels]
            i = names.index(self.cfg.tie_break) if self.cfg.tie_break in names else len(names)
            if i == len(names):
                joins.append(
                    fragment("docs_cache_join").format(i=i, agent_lit=quote_literal(self.cfg.tie_break))
                )
            tie = f"s{i}.score"
        insert = fragment("docs_cache_insert").format(cell="\n".join(terms), joins="\n".join(joins), tie=tie)
        self.run("docs_cache_create")
        self.run("", insert, bytes_per_token=self.cfg.bytes_per_token, lo=-(2**63), hi=2**63 - 1)
        self.run("sync_seen", run_id=self.console.run_id)

    def select(self, round: int, budget: int, mode: str) -> pa.Table:
        cfg = self.cfg
        with self.agents():
            self.build_docs()
            cells = {
                "run_id": self.console.run_id,
                "state_round": self.console._state_round(round),
                "decay_lambda": cfg.decay_lambda,
                "mode": mode,
            }
            if cfg.preset == "v2":
                self.run("cells_v2", **cells, temp=cfg.tau if mode == "sample" else cfg.gumbel_tau)
            else:
                self.run("cells", **cells)
            if mode == "sample":
                scores = self.arrow("cell_scores")
                tokens = scores["tokens"].to_numpy().astype(np.float64)
                log_weight = scores["score"].to_numpy() - cfg.tau * np.log1p(
                    cfg.decay_lambda * scores["seen"].to_numpy()
                )
                quota, _ = sample_quotas(
                    tokens, log_weight, budget, tau=cfg.tau, eps=cfg.eps, max_cell_share=cfg.max_cell_share
                )
                quotas = pa.table({"cell": scores["cell"], "seen": scores["seen"], "quota": quota})
                with self.db.registered("console_quotas", quotas):
                    return self.arrow("select_sample", seed=cfg.seed, round=round, budget=budget)
            order = {
                "seed": cfg.seed,
                "round": round,
                "mode": mode,
                "by_score": cfg.tie_break != "hash",
                "gumbel_tau": cfg.gumbel_tau,
            }
            self.run("ranked_macro")
            level, remaining = self.run("boundary_level", budget=budget)[0]
            if level is None:
                level, bucket, remaining = _ALL_LEVELS, 0, 0
            else:
                bucket, remaining = self.run("boundary_bucket", **order, level=level, remaining=remaining)[0]
            return self.arrow("select_docs", **order, level=level, bucket=bucket, remaining=remaining)

    def probes(self, round: int) -> pa.Table:
        cfg = self.cfg
        with self.agents():
            self.build_docs()
            if cfg.preset == "v2":
                self.run("strata_table", seed=cfg.seed, round=round, m=cfg.probes_per_label)
                return self.arrow("draw_strata_probes")
            return self.arrow("draw_probes", seed=cfg.seed, round=round, m=cfg.probes_per_label)

    def strata(self, round: int) -> pa.Table:
        cfg = self.cfg
        with self.agents():
            self.build_docs()
            self.run("strata_table", seed=cfg.seed, round=round, m=cfg.probes_per_label)
            return self.arrow("strata_rows")


def same_selection(console: Console, path: Path, round: int, budget: int, mode: str) -> None:
    new = read_snapshot(console.select(round, budget, path, mode=mode))[0]
    old = OldConsole(console).select(round, budget, mode)
    assert new["doc_id"].to_pylist() == old["doc_id"].to_pylist(), (mode, budget)
    assert new["row_group"].to_pylist() == old["row_group"].to_pylist()
    np.testing.assert_allclose(new["priority"].to_numpy(), old["priority"].to_numpy(), rtol=1e-9)
    recorded = console.db.execute(
        "SELECT num_docs, tokens FROM selections WHERE run_id = ? AND round = ?", [console.run_id, round]
    )
    assert recorded == [(old.num_rows, sum(old["tokens"].to_pylist()))]


def learnt(cat: Catalog, run: str, rounds: int, **config: Any) -> Console:
    """A console after `rounds` rounds of probes and quality rewards, and round 1's selection consumed
    (twice for a tenth of it): its cells split by seen counts."""
    console = Console(cat, run, ConsoleConfig(**config))
    console.start()
    for r in range(1, rounds + 1):
        probes = console.draw_probes(r)
        old = OldConsole(console).probes(r)
        assert probes.to_pylist() == old.to_pylist(), f"round {r} probes"
        if console.v2:
            assert console.draw_strata(r).to_pylist() == OldConsole(console).strata(r).to_pylist()
        console.update(r, quality_rewards(probes["doc_id"].to_pylist()))
    ids = OldConsole(console).select(1, 20_000, "random")["doc_id"].to_numpy()
    console.record_consumed(np.concatenate([ids, ids[::10]]), round=1)
    return console


BUDGETS = (0, 7, 3_000, 20_000, 10**9)  # nothing, less than a document, a fraction, most, all


@pytest.mark.parametrize("tie_break", ["hash", "domain"])
def test_paper_console_selects_as_the_per_document_one(
    catalog: Catalog, tmp_path: Path, tie_break: str
) -> None:
    console = learnt(catalog, f"paper-{tie_break}", 2, preset="paper", tie_break=tie_break, decay_lambda=0.7)
    for mode in ("topk", "gumbel", "random"):
        for budget in BUDGETS:
            same_selection(console, tmp_path / f"{mode}-{budget}.parquet", 3, budget, mode)


def test_v2_console_selects_and_probes_as_the_per_document_one(catalog: Catalog, tmp_path: Path) -> None:
    console = learnt(catalog, "v2", 2, preset="v2", probes_per_label=12, decay_lambda=0.5)
    for mode in ("sample", "topk", "gumbel", "random"):
        for budget in BUDGETS:
            same_selection(console, tmp_path / f"{mode}-{budget}.parquet", 3, budget, mode)


def test_large_probe_draws_agree(catalog: Catalog) -> None:
    """Strata larger than some labels (every document of a small label drawn) and a widened second pass."""
    for preset in ("paper", "v2"):
        console = Console(catalog, f"probes-{preset}", ConsoleConfig(preset=preset, probes_per_label=150))
        console.start()
        for r in (1, 5):
            assert console.draw_probes(r).to_pylist() == OldConsole(console).probes(r).to_pylist()


def test_passes_that_fall_short_are_widened_to_the_same_result(
    catalog: Catalog,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hash thresholds made far too tight: every first pass falls short and is run again, wider. And uneven:
    some cells' thresholds hold more than asked, so a pass returns documents of those cells past where the
    others' stop (sample keeps only the documents below the least key a left-out one can have)."""
    threshold = console_module._h_threshold
    monkeypatch.setattr(
        console_module, "_h_threshold", lambda f: threshold(np.minimum(1.0, f * (1 + np.arange(len(f)) % 3)))
    )
    monkeypatch.setattr(
        console_module, "_fraction", lambda quota, tokens, docs: np.minimum(1.0, 0.3 * quota / tokens)
    )
    monkeypatch.setattr(console_module, "_probe_fraction", lambda m, docs: np.minimum(1.0, 0.3 * m / docs))
    monkeypatch.setattr(console_module, "_key_bound", lambda p, tokens, docs, budget: 0.3)  # sample's
    console = learnt(catalog, "tight", 1, preset="v2", probes_per_label=40, decay_lambda=0.5)
    passes: list[str] = []
    select_pass = console_module.Console._select_pass
    monkeypatch.setattr(
        console_module.Console,
        "_select_pass",
        lambda self, quotas, round, mode: passes.append(mode) or select_pass(self, quotas, round, mode),
    )
    for mode in ("sample", "gumbel", "random"):
        same_selection(console, tmp_path / f"{mode}.parquet", 2, 9_000, mode)
        assert passes.count(mode) > 1 or mode == "gumbel", passes  # gumbel's threshold is not made tight


def test_runs_whose_cells_are_not_the_catalogs_agree(catalog: Catalog, tmp_path: Path) -> None:
    """A subset of the catalog's agents in another order (its cells re-packed through `console_cellmap`) and
    another bytes_per_token (its cells counted in a pass over `doc_cells`), alone and together."""
    runs = {
        "subset": {"agents": ["domain", "quality"]},
        "bytes": {"bytes_per_token": 3.0},
        "both": {"agents": ["noise", "domain"], "bytes_per_token": 5.5},
    }
    for run, config in runs.items():
        console = learnt(catalog, run, 1, preset="v2", probes_per_label=12, decay_lambda=0.5, **config)
        for mode in ("sample", "topk", "gumbel"):
            for budget in (3_000, 20_000):
                same_selection(console, tmp_path / f"{run}-{mode}-{budget}.parquet", 2, budget, mode)
