"""The core install (`pip install corpus-agents`, no extras) scores and queries without torch, transformers,
scikit-learn, matplotlib or datasets, and commands that need an extra name it in one line.

The fresh-venv test installs the checkout with its real dependencies (from the network or pip's cache), so
it is marked slow; `.ci/run` runs it as a step of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ["torch", "transformers", "sklearn", "matplotlib", "datasets", "sentence_transformers", "tokenizers"]


def test_the_cli_and_the_scoring_path_import_no_heavy_package() -> None:
    """Importing the CLI, the workspace, the driver, the parts worker and every core agent loads none of the
    packages of the extras (a subprocess: this one has them loaded already)."""
    code = textwrap.dedent(
        f"""
        import json, sys
        import corpus_agents.cli, corpus_agents.workspace, corpus_agents.query
        import corpus_agents.scoring.driver, corpus_agents.scoring.parts, corpus_agents.scoring.executors.local
        from corpus_agents.scoring.agents import agent_class
        for kind in ("fasttext", "metadata", "column", "attributes", "noise"):
            agent_class(kind)
        print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def corpus(directory: Path) -> Path:
    directory.mkdir()
    prose = [f"the river ran past the old mill and the miller sang song number {i}" for i in range(60)]
    code = [f"def f{i}(x): return x * {i} + sum(range({i}))" for i in range(60)]
    table = pa.table({"text": prose + code, "score": [i / 24 for i in range(120)]})
    pq.write_table(table, directory / "a.parquet", row_group_size=40)
    pq.write_table(pa.table({"text": code[:30]}), directory.parent / "positives.parquet")
    return directory / "a.parquet"


@pytest.mark.slow
def test_a_fresh_core_install_scores_without_torch(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    bin_dir = venv / "bin"
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "CORPUS_AGENTS_DEBUG")
    }
    env.update(
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    )

    def run(*args: object, code: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(a) for a in args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1200
        )
        assert done.returncode == code, f"{args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done

    run(bin_dir / "pip", "install", "-q", ROOT)
    missing = "import importlib.util as u, json; print(json.dumps([m for m in {!r} if u.find_spec(m)]))"
    assert json.loads(run(bin_dir / "python", "-c", missing.format(HEAVY)).stdout) == []

    shard, ws, cli = corpus(tmp_path / "corpus"), tmp_path / "ws", bin_dir / "corpus-agents"
    run(cli, "init", ws, "--corpus", shard)
    run(
        cli,
        "agent",
        "add",
        ws,
        "quality",
        "--kind",
        "fasttext",
        "--fit-positive",
        tmp_path / "positives.parquet",
    )
    run(cli, "agent", "add", ws, "edu", "--kind", "column", "--column", "score", "--bins", "0,1,2,3,4,5")
    run(cli, "score", ws, "--workers", "1")
    out = run(cli, "query", ws, "SELECT count(quality), count(edu) FROM doc_labels", "--format", "csv")
    assert out.stdout.splitlines()[1] == "120,120"
    # What needs an extra says which, in one line.
    out = run(cli, "agent", "add", ws, "t", "--kind", "topic", "--topics", "2", code=2)
    assert (
        out.stderr
        == "error: agent kind 'topic' needs the package 'scikit-learn': pip install 'corpus-agents[topic]'\n"
    )
    out = run(cli, "train", ws, code=2)
    assert out.stderr.startswith("error: ") and "pip install 'corpus-agents[train]'" in out.stderr
    assert len(out.stderr.splitlines()) == 1
