"""The SelectionCallback in a real `transformers.Trainer` (tiny Llama, CPU): rounds reach the catalog and the
run log, and a run killed with SIGKILL after a mid-round checkpoint resumes to the uninterrupted run's result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import console_tables

from corpus_agents.training.runs import RunPaths, read_run_log

pytest.importorskip("accelerate")  # transformers.Trainer needs it (the `hf` extra)

SCRIPT = Path(__file__).with_name("hf_train.py")


def hf_train(ws: Path, config: Path, out: Path, run: str, *extra: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(SCRIPT.parent.parent), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    args = [sys.executable, str(SCRIPT), str(ws), str(config), str(out), run, *extra]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)


def safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


@pytest.mark.slow
def test_hf_trainer_runs_rounds_and_resumes_mid_round_after_kill_9(
    tmp_path: Path, workspace: tuple[Path, Path]
) -> None:
    ws, config = workspace
    clean = hf_train(ws, config, tmp_path / "clean", "clean")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    tables = console_tables(ws, "clean")
    assert {r for r, _, _ in tables["theta"]} == {0, 1, 2}  # warm-up, then rounds after steps 4 and 8
    assert len(tables["selections"]) == 3 and all(n > 0 for _, n, _ in tables["selections"])
    assert tables["probes"] and any(abs(w) > 0 for r, _, _, w in tables["w"] if r == 2)
    # Every step's sequences were counted: 10 steps x 2 sequences of 64 tokens, each ending >= 0 documents.
    assert tables["seen"] and all(count >= 1 for _, count in tables["seen"])
    log = read_run_log(RunPaths.of(ws, "clean").log)
    assert [r.round for r in log.rounds] == [0, 1, 2, 2] and log.finished
    assert [(s.step, s.round) for s in log.steps] == [(i, (i - 1) // 4) for i in range(1, 11)]

    # Killed with SIGKILL at the end of step 7: the latest checkpoint is step 6, in the middle of round 1.
    killed = hf_train(ws, config, tmp_path / "killed", "killed", "--kill-at", "7")
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert (tmp_path / "killed" / "checkpoint-6" / "selector.pt").is_file()
    assert not (tmp_path / "killed" / "checkpoint-9").exists()
    resumed = hf_train(ws, config, tmp_path / "killed", "killed", "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    clean_losses = json.loads((tmp_path / "clean" / "result.json").read_text())["losses"]
    resumed_losses = json.loads((tmp_path / "killed" / "result.json").read_text())["losses"]
    assert resumed_losses == clean_losses  # every step's loss, the final one included, exactly
    assert console_tables(ws, "killed") == tables
    a, b = (
        safetensors(tmp_path / "clean" / "checkpoint-10"),
        safetensors(tmp_path / "killed" / "checkpoint-10"),
    )
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert len(read_run_log(RunPaths.of(ws, "killed").log).resumes) == 1
