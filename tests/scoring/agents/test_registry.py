"""The agent registry: options of another kind are refused in one line (CLI and pipeline YAML), and agent
kinds of other packages are found through the `corpus_agents.agents` entry points (the README's package,
installed for real)."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import corpus_agents.scoring.agents as registry
from corpus_agents.config import ConfigError, load_config
from corpus_agents.scoring.agents import ENTRY_POINT_GROUP, AgentError, agent_class
from tests.helpers import CLI, cli_env, invoke, query

ROOT = Path(__file__).resolve().parents[3]


def small_corpus(directory: Path) -> Path:
    directory.mkdir()
    texts = ["short", "a" * 30, "b" * 55, "c" * 12, ""]
    pq.write_table(pa.table({"text": texts, "source": ["x", "y", "x", "y", "x"]}), directory / "a.parquet")
    return directory / "a.parquet"


def test_options_of_other_kinds_are_named_together_on_one_line(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    invoke("init", ws, "--corpus", small_corpus(tmp_path / "corpus"))
    args = ("--column", "source", "--topics", "5", "--bins", "0,1")
    out = invoke("agent", "add", ws, "d", "--kind", "metadata", *args, expect=2)
    assert out.stderr == (
        "error: --topics, --bins are not options of agent kind 'metadata' (its options: --column)\n"
    )
    out = invoke("agent", "add", ws, "d", "--kind", "metadata", "--column", "source", "--option", "seed=3",
                 expect=2)  # fmt: skip
    assert out.stderr == "error: --seed is not an option of agent kind 'metadata' (its options: --column)\n"
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("agents:\n  d: {kind: metadata, column: source, topics: 5, bins: '0,1'}\n")
    out = invoke("agent", "add", ws, "--pipeline", pipeline, expect=2)
    assert out.stderr == (
        "error: agents.d.topics, agents.d.bins are not options of agent kind 'metadata' (its options: column)\n"
    )
    with pytest.raises(ConfigError, match=r"^agents\.d\.topics, agents\.d\.bins are not options"):
        load_config(pipeline)  # what `train --config` loads
    assert query(ws, "SELECT count(*) FROM agents") == [(0,)]


def readme_package(directory: Path) -> Path:
    """The README's example package (pyproject.toml and module), written out as a user would."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("#### Agents from other packages", 1)[1]
    blocks = re.findall(r"```(?:toml|python)\n# (\S+)\n(.*?)```", section, re.DOTALL)
    assert [name for name, _ in blocks] == ["pyproject.toml", "corpus_agents_length.py"]
    directory.mkdir()
    for name, body in blocks:
        (directory / name).write_text(body, encoding="utf-8")
    return directory


def test_an_agent_from_another_package_is_installed_and_scores(tmp_path: Path) -> None:
    package, site = readme_package(tmp_path / "corpus-agents-length"), tmp_path / "site"
    install = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
    ]
    subprocess.run(
        [*install, "--target", str(site), str(package)], check=True, capture_output=True, timeout=300
    )
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)

    def cli(*args: object) -> str:
        done = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout

    ws = tmp_path / "ws"
    cli("init", ws, "--corpus", small_corpus(tmp_path / "corpus"))
    out = cli("agent", "add", ws, "length", "--kind", "length", "--option", "bins=[0, 10, 40, 100]")
    assert "added agent length (length) with labels: 0-10, 10-40, 40-100" in out
    assert "length" in cli("agent", "add", "--help")  # the kinds an installed package adds are listed
    cli("score", ws, "--workers", "2")
    rows = query(ws, "SELECT length, length_score FROM doc_labels ORDER BY doc_id")
    assert rows == [("0-10", 5.0), ("10-40", 30.0), ("40-100", 55.0), ("10-40", 12.0), ("0-10", 0.0)]


def test_a_broken_entry_point_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def entry(name: str, value: str) -> importlib.metadata.EntryPoint:
        return importlib.metadata.EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)

    plugins = {
        "missing": entry("missing", "no_such_module_here:Agent"),
        "notagent": entry("notagent", "collections:OrderedDict"),
        "wrongkind": entry("wrongkind", "corpus_agents.scoring.agents.noise:NoiseAgent"),
    }
    monkeypatch.setattr(registry, "plugin_kinds", lambda: plugins)
    agent_class.cache_clear()
    try:
        assert registry.kinds()[-3:] == ["missing", "notagent", "wrongkind"]
        with pytest.raises(AgentError, match="'missing' .* cannot be loaded: ModuleNotFoundError"):
            agent_class("missing")
        with pytest.raises(AgentError, match="is not a subclass of corpus_agents.scoring.agents.Agent"):
            agent_class("notagent")
        with pytest.raises(AgentError, match="must set kind = 'wrongkind'"):
            agent_class("wrongkind")
        with pytest.raises(
            AgentError, match="unknown agent kind 'nope'; known kinds: attributes, column, fasttext, "
        ):
            agent_class("nope")
    finally:
        agent_class.cache_clear()
