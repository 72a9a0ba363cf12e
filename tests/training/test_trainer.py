"""The selection-driven training loop end to end on a tiny model: rounds, console state, resume after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TINY, console_tables, final_weights, train

from corpus_agents.scoring.catalog import Catalog
from corpus_agents.training.runs import RunPaths, read_run_log


@pytest.mark.slow  # in .ci/run's slow line; keeps the default run under 5 minutes
def test_training_rounds_move_the_console_and_resume_after_kill_9_matches(
    workspace: tuple[Path, Path],
) -> None:
    ws, config = workspace
    clean = train(ws, config, "clean")
    out, _ = clean.communicate(timeout=600)
    assert clean.returncode == 0, out
    assert "run clean: 9 steps" in out
    tables = console_tables(ws, "clean")
    rounds = {r for r, _, _ in tables["theta"]}
    assert rounds == {0, 1, 2}  # round 0 = the random warm-up, then a round every 3 steps
    theta_last = {a: t for r, a, t in tables["theta"] if r == 2}
    assert abs(sum(theta_last.values()) - 1) < 1e-9 and min(theta_last.values()) >= 0.02
    # Rewards reached the agents' memory (theta moving toward the better agent is pinned in test_console).
    assert any(abs(w) > 0 for r, _, _, w in tables["w"] if r == 2) and len(tables["probes"]) > 0
    assert all(count >= 1 for _, count in tables["seen"]) and tables["seen"]
    assert len(tables["selections"]) == 3 and all(n > 0 for _, n, _ in tables["selections"])
    # The reader kept the tokens it read (runs with the same tokenizer read them); the runs below still match.
    assert list((ws / "cache" / "tokens").rglob("rg-*.npz"))

    # The same run killed with SIGKILL in round 2's work (rewards, console update, selection), then resumed.
    # Its log shows step 6, the last step of round 1 (log_every = rounds.every = 3), once round 2 begins:
    # the round-1 checkpoint exists, the round-2 one most likely not yet, the end of the run is far.
    killed = train(ws, config, "killed")
    paths = RunPaths.of(ws, "killed")
    deadline = time.monotonic() + 300
    while not any(s.step >= 6 for s in read_run_log(paths.log).steps):
        assert killed.poll() is None and time.monotonic() < deadline, killed.communicate()[0]
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert paths.latest_checkpoint() in (paths.checkpoint(3), paths.checkpoint(6))
    assert not read_run_log(paths.log).finished
    resumed = train(ws, config, "killed", "--resume")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out

    assert console_tables(ws, "killed") == tables
    again = train(ws, config, "clean")  # an existing run is continued with --resume, never restarted over
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 2 and "continue it with --resume" in out
    clean_weights, resumed_weights = final_weights(ws, "clean"), final_weights(ws, "killed")
    assert clean_weights.keys() == resumed_weights.keys()
    for name, tensor in clean_weights.items():
        assert (tensor == resumed_weights[name]).all(), name

    with Catalog(ws) as cat:
        runs = cat.execute("SELECT run_id, count(DISTINCT round) FROM round_metrics GROUP BY 1 ORDER BY 1")
        compute = cat.execute(
            "SELECT run_id, round, step, kind, total_tokens, total_flops FROM round_compute"
        )
    assert runs == [("clean", 3), ("killed", 3)]
    # The resumed run's compute, cumulative across the kill, is the uninterrupted run's.
    assert sorted(r[1:] for r in compute if r[0] == "killed") == sorted(
        r[1:] for r in compute if r[0] == "clean"
    )
    assert len(compute) == 2 * 4 * 4  # two runs, 4 records (rounds 0-2 and the final), 4 kinds of work
    log = read_run_log(paths.log)  # the resumed run's records replace those the kill left behind
    assert [s.step for s in log.steps] == [3, 6, 9] and [r.round for r in log.rounds] == [0, 1, 2, 2]
    assert log.finished and len(log.resumes) == 1

    # Checkpoints every 2 steps as well: killed with SIGKILL right after the step-4 checkpoint, in the middle
    # of round 1 (steps 4-6), the run resumes at step 4 from the saved reader position, not at round 1's start.
    mid = ["--set", "train.checkpoint_every=2"]
    killed = train_killed_after_checkpoint(ws, config, "mid", 4, *mid)
    assert killed.wait(timeout=600) == -signal.SIGKILL, killed.communicate()[0]
    mid_paths = RunPaths.of(ws, "mid")
    assert mid_paths.latest_checkpoint() == mid_paths.checkpoint(4)
    resumed = train(ws, config, "mid", "--resume", *mid)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    mid_log, clean_log = read_run_log(mid_paths.log), read_run_log(RunPaths.of(ws, "clean").log)
    assert [r.step for r in mid_log.resumes] == [4]
    assert [(s.step, s.loss) for s in mid_log.steps] == [(s.step, s.loss) for s in clean_log.steps]
    assert mid_log.rounds[-1].heldout_loss == clean_log.rounds[-1].heldout_loss
    assert console_tables(ws, "mid") == tables
    mid_weights = final_weights(ws, "mid")
    for name, tensor in clean_weights.items():
        assert (tensor == mid_weights[name]).all(), name


def train_killed_after_checkpoint(
    ws: Path, config: Path, run: str, step: int, *extra: str
) -> subprocess.Popen:
    """`corpus-agents train` (TINY) that kills itself with SIGKILL once its checkpoint of `step` is written."""
    code = (
        "import os, signal, sys\n"
        "from corpus_agents.training.trainer import Trainer\n"
        "save = Trainer.save_checkpoint\n"
        "def killing(self, *args):\n"
        "    path = save(self, *args)\n"
        f"    if args[-1] == {step}: os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return path\n"
        "Trainer.save_checkpoint = killing\n"
        "from corpus_agents.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    args = [sys.executable, "-c", code, "train", str(ws), "--config", str(config), "--run", run]
    for item in TINY:
        args += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        [*args, *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.slow  # in .ci/run's slow line; keeps the default run under 5 minutes
def test_random_selection_measures_no_rewards(workspace: tuple[Path, Path]) -> None:
    """Random selection ignores rewards, so the baseline spends no compute on probes; its rounds still run."""
    ws, config = workspace
    proc = train(ws, config, "random", "--set", "console.mode=random")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert (
        f"next: corpus-agents runs {ws}; corpus-agents report {ws}; corpus-agents export {ws} --run random"
        in out
    )
    tables = console_tables(ws, "random")
    assert tables["probes"] == [] and len(tables["selections"]) == 3
    assert {r for r, _, _ in tables["theta"]} == {0, 1, 2}
    assert all(w == 0 for _, _, _, w in tables["w"])
