"""Reading a workspace while `train` runs in another process (see tests/test_live.py for `score`)."""

from __future__ import annotations

import pytest

from tests.helpers import run_cli, train
from tests.test_live import _reads_while_running


@pytest.mark.slow
def test_query_status_and_runs_work_while_train_runs(workspace) -> None:
    ws, config = workspace
    proc = train(ws, config, "live", "--set", "train.steps=60", "--set", "rounds.every=20")
    seen = _reads_while_running(proc, ws, [("runs", ws), ("status", ws), ("query", ws, "SELECT 1")])
    output = proc.stdout.read()
    assert proc.returncode == 0, output
    for name, (code, _, out) in seen["cli"].items():
        assert code == 0, (name, out)
    assert len(seen["waits"]) >= 3 and max(seen["waits"]) < 5, seen["waits"]
    assert "live" in run_cli("runs", ws).stdout
    print(f"train: {len(seen['waits'])} reads, max {max(seen['waits']):.3f}s, cli {seen['cli']}")
