"""The README's test command is what CI runs (`.ci/run` must carry the same command line), and its Python API
example runs as written."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if line.startswith("python3 -m venv"))
    assert command in readme
    assert "corpus-agents demo" in readme


def python_api_example() -> str:
    """The Python code block of the README's "Python API" section."""
    section = (ROOT / "README.md").read_text().split("### Python API", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_python_api_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's notebook example, run as written on a workspace of shards with a `source` column."""
    from helpers import write_shard

    from corpus_agents.workspace import Workspace

    for s in range(2):
        write_shard(tmp_path / "corpus" / f"shard-{s}.parquet", 60)
    with Workspace.create(tmp_path / "ws") as ws:
        ws.add_corpus([str(tmp_path / "corpus" / "*.parquet")])
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(python_api_example(), "README.md: Python API", "exec"), scope)
    counts = scope["counts"]
    assert counts.columns == ["domain", "n"] and counts["n"].sum() == 120
    assert set(counts["domain"]) == {"books", "code", "web"}
    assert len(scope["low"]) > 0 and (scope["low"]["noise1_score"] < 0.1).all()
    assert scope["runs"].column("run_id").to_pylist() == ["static"]
    picked, texts = scope["picked"], scope["texts"]
    assert 0 < picked.num_rows < 120 and texts.height == picked.num_rows
    with Workspace.open(tmp_path / "ws"):  # the example closed its reader: a writer gets in
        pass
