"""`train --resume` and `--init-from` check what a run started with (issue 12, cases 5 and 6): the whole
config (a change is refused unless named with --allow-config-change, and then applies to the LR schedule
too) and each agent's fingerprint (a replaced agent is refused unless --reset-agent gives it a fresh memory)."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from helpers import TINY, train

from corpus_agents.config import load_config
from corpus_agents.scoring.agents.metadata import OTHER, MetadataAgent
from corpus_agents.scoring.catalog import Catalog
from corpus_agents.scoring.driver import run_scoring
from corpus_agents.training.runs import RunPaths, read_run_log
from corpus_agents.training.selector import RUN_FILE, config_changes
from corpus_agents.training.trainer import lr_lambda


def run(ws: Path, config: Path, run_id: str, *extra: str) -> tuple[int, str]:
    proc = train(ws, config, run_id, *extra)
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out


def test_config_changes_lists_dotted_keys() -> None:
    assert config_changes(
        {"train": {"lr": 1, "steps": 3}, "x": [1]}, {"train": {"lr": 2, "steps": 3}, "x": [1]}
    ) == {"train.lr": (1, 2)}


@pytest.mark.slow  # in .ci/run's slow line; keeps the default run under 5 minutes
def test_resume_refuses_a_changed_config_unless_allowed_and_rebuilds_the_schedule(
    workspace: tuple[Path, Path],
) -> None:
    ws, config = workspace
    code, out = run(ws, config, "r", "--set", "train.steps=3")
    assert code == 0, out
    recorded = json.loads((RunPaths.of(ws, "r").root / RUN_FILE).read_text())
    assert recorded["config"]["train"]["steps"] == 3 and set(recorded["agents"]) == {"domain", "kind"}

    code, out = run(ws, config, "r", "--resume", "--set", "train.steps=6", "--set", "train.lr=0.002")
    assert code == 2, out
    assert "train.lr: 0.001 recorded, 0.002 given" in out and "train.steps: 3 recorded, 6 given" in out
    assert "--allow-config-change train.lr train.steps" in out
    extra = ["--set", "train.steps=6", "--set", "train.lr=0.002"]
    code, out = run(ws, config, "r", "--resume", *extra, "--allow-config-change", "train.steps")
    assert code == 2 and "(train.lr: 0.001 recorded, 0.002 given)" in out, out
    code, out = run(
        ws, config, "r", "--resume", "--set", "model.seq_len=32", "--allow-config-change", "model.seq_len"
    )
    assert code == 2 and "cannot change on --resume" in out, out

    code, out = run(ws, config, "r", "--resume", *extra, "--allow-config-change", "train.steps,train.lr")
    assert code == 0, out
    new = load_config(config, [*TINY, "train.steps=6", "train.lr=0.002"])
    log = read_run_log(RunPaths.of(ws, "r").log)
    assert log.finished and [s.step for s in log.steps] == [3, 6]
    # Step 6 ran with the new peak rate on the new schedule, not the saved scheduler's.
    assert log.steps[-1].lr == pytest.approx(0.002 * lr_lambda(new)(6))
    assert json.loads((RunPaths.of(ws, "r").root / RUN_FILE).read_text())["config"]["train"]["lr"] == 0.002


@pytest.mark.slow  # in .ci/run's slow line; keeps the default run under 5 minutes
def test_a_replaced_agent_is_refused_by_resume_and_init_from_unless_reset(
    workspace: tuple[Path, Path],
) -> None:
    ws, config = workspace
    code, out = run(ws, config, "a", "--set", "train.steps=6")  # ends in round 1, with a learnt memory
    assert code == 0, out
    memory = "SELECT label_id, w FROM agent_memory WHERE run_id = 'a' AND agent = 'domain' AND round = 1 ORDER BY 1"
    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    try:
        assert any(w != 0 for _, w in con.execute(memory).fetchall())
    finally:
        con.close()
    with Catalog(ws) as cat:  # the same name, its labels in another order: label ids now mean other labels
        cat.add_agent(
            MetadataAgent("domain", {"column": "source", "labels": ["docs", "code", OTHER]}), replace=True
        )
        run_scoring(cat, ["domain"], show_progress=False)

    steps = ["--set", "train.steps=9", "--allow-config-change", "train.steps"]
    code, out = run(ws, config, "a", "--resume", *steps)
    assert code == 2 and "agent 'domain' changed" in out and "--reset-agent domain" in out, out
    code, out = run(ws, config, "b", "--init-from", "a", "--set", "train.steps=3")
    assert code == 2 and "--init-from a: agent 'domain' changed" in out, out
    assert not (RunPaths.of(ws, "b").root / RUN_FILE).exists()

    code, out = run(ws, config, "a", "--resume", *steps, "--reset-agent", "domain")
    assert code == 0, out
    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    try:
        reset = con.execute(memory).fetchall()
        later = con.execute("SELECT count(*) FROM agent_memory WHERE run_id = 'a' AND round = 2").fetchall()
    finally:
        con.close()
    assert later[0][0] > 0  # the resumed run went on to round 2
    assert reset == [(0, 0.0), (1, 0.0), (2, 0.0)]  # round 1, where the run resumed: a fresh memory
    recorded = json.loads((RunPaths.of(ws, "a").root / RUN_FILE).read_text())["agents"]
    with Catalog(ws) as cat:
        assert recorded["domain"] == cat.agents(["domain"])[0].fingerprint()
