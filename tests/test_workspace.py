"""The Python API (`corpus_agents.open`, `Workspace`): cheap to import, read-only opens that take no lock and
refuse writes, `sql` relations, agents, runs and selections."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from helpers import write_shard

import corpus_agents
from corpus_agents.config import ConfigError
from corpus_agents.errors import CorpusAgentsError, WorkspaceBusyError, WorkspaceError
from corpus_agents.scoring.catalog import LOCK_FILE, lock_holder
from corpus_agents.workspace import Workspace

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    """A scored workspace: 2 shards x 30 documents, a metadata agent `domain` over `source`."""
    for s in range(2):
        write_shard(tmp_path / "corpus" / f"shard-{s}.parquet", 30)
    with Workspace.create(tmp_path / "ws") as w:
        w.add_corpus([str(tmp_path / "corpus" / "*.parquet")])
        w.add_agent("domain", "metadata", column="source")
        w.score(workers=1, show_progress=False)
    return tmp_path / "ws"


def test_import_is_cheap_and_every_public_name_resolves() -> None:
    code = (
        "import sys, corpus_agents\n"
        "heavy = [m for m in ('duckdb', 'torch', 'transformers', 'pyarrow') if m in sys.modules]\n"
        "names = {n: type(getattr(corpus_agents, n)).__name__ for n in corpus_agents.__all__}\n"
        "print(heavy, 'torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["[]", "False"], out.stdout  # nothing heavy; the API itself needs no torch
    assert corpus_agents.open is corpus_agents.workspace.open_workspace
    assert {"open", "Workspace", "WorkspaceStatus", "AgentInfo"} <= set(corpus_agents.__all__)
    with pytest.raises(AttributeError):
        _ = corpus_agents.no_such_name


def test_sql_returns_a_relation_read_as_polars_pandas_or_arrow(ws: Path) -> None:
    with corpus_agents.open(ws) as w:
        rel = w.sql("SELECT domain, count(*) AS n FROM doc_labels GROUP BY ALL ORDER BY domain")
        assert rel.pl().to_dicts() == [{"domain": "books", "n": 20}, {"domain": "code", "n": 20}, {"domain": "web", "n": 20}]  # fmt: skip
        assert rel.df()["n"].sum() == 60
        arrow = rel.arrow()
        table = arrow if isinstance(arrow, pa.Table) else arrow.read_all()  # DuckDB >= 1.4 gives a reader
        assert table.column_names == ["domain", "n"] and table.num_rows == 3
        assert rel.filter("n > 0").aggregate("sum(n) AS total").fetchall() == [(60,)]  # still relational
        picked = pa.table({"doc_id": [0, 1, 2]})
        joined = w.sql("SELECT count(*) AS n FROM documents JOIN picked USING (doc_id)", picked=picked)
        assert joined.fetchall() == [(3,)]
        with pytest.raises(CorpusAgentsError, match="names a catalog table"):
            w.sql("SELECT 1", scores=picked)
        with pytest.raises(CorpusAgentsError, match=r"^SQL error: .*no_such_table"):
            w.sql("SELECT * FROM no_such_table")


@pytest.mark.slow  # in .ci/run's slow line; keeps the default run under 5 minutes
def test_read_only_takes_no_lock_and_refuses_writes(ws: Path) -> None:
    reader = corpus_agents.open(ws)
    other = corpus_agents.open(ws)  # readers share a workspace
    try:
        assert reader.read_only and lock_holder(ws / LOCK_FILE) is None
        assert reader.agents["domain"].labels == ["books", "code", "web", "(other)"]
        assert reader.agents["domain"].config == {"column": "source"}
        assert reader.status().agents[0].docs_scored == 60
        assert other.runs().num_rows == 0  # a workspace that never trained: no runs
        for write in (
            lambda: reader.add_agent("n", "noise"),
            lambda: reader.remove_agent("domain"),
            lambda: reader.score(),
            lambda: reader.add_corpus(["x.parquet"]),
            lambda: reader.static_selection("s", 100),
        ):
            with pytest.raises(WorkspaceError, match=r"is open read-only; open it with .*read_only=False"):
                write()
        with pytest.raises(CorpusAgentsError, match="read-only"):
            reader.sql("DELETE FROM scores")
        with pytest.raises(WorkspaceError, match="close the other catalog first"):
            Workspace.open(ws)  # a writer waits for the readers
    finally:
        reader.close()
        other.close()
    with Workspace.open(ws) as writer:
        assert writer.catalog.execute("SELECT count(*) FROM scores") == [(60,)]
        with pytest.raises(WorkspaceBusyError, match=r"is in use by pid \d+"):
            corpus_agents.open(ws)  # and a reader for the writer


def test_add_agent_takes_options_as_keywords_checked_against_the_kind(ws: Path) -> None:
    with corpus_agents.open(ws, read_only=False) as w:
        agent = w.add_agent("noise1", "noise", labels=3, seed=1)
        assert agent.labels == ["n0", "n1", "n2"] and list(w.agents) == ["domain", "noise1"]
        with pytest.raises(ConfigError, match="topics is not an option of agent kind 'noise'"):
            w.add_agent("noise2", "noise", topics=3)
        assert w.score(["noise1"], workers=1, show_progress=False).docs == 60
        status = w.status().to_dict()
    assert json.loads(json.dumps(status))["agents"][1]["name"] == "noise1"


def test_a_static_selection_is_read_back_as_arrow(ws: Path) -> None:
    with corpus_agents.open(ws, read_only=False) as w:
        path = w.static_selection("static", 200)
    with corpus_agents.open(ws) as w:
        picked = w.selection("static")
        assert picked.num_rows > 0 and {"doc_id", "shard_id", "row_idx"} <= set(picked.column_names)
        assert w.selection("static", round=0).equals(picked) and path.is_file()
        assert w.runs().column("run_id").to_pylist() == ["static"]
        assert w.describe_selection("static").startswith(f"run static round 0: {picked.num_rows} documents")
        with pytest.raises(CorpusAgentsError, match="has no selection at round 4"):
            w.selection("static", round=4)


def test_a_moved_workspace_is_updated_by_its_first_reader(ws: Path, tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    shutil.move(ws, moved)
    # no writer holds it: the reader brings its stored paths up to date with a brief writable open
    with corpus_agents.open(moved) as w:
        assert w.sql("SELECT count(text) FROM documents").fetchall() == [(58,)]  # one null text per shard
        assert w.catalog.get_meta("workspace_dir") == str(moved.resolve())
