"""A workspace stores the paths inside it relative to it (issue 12, case 9): a copy works in its new place
with the original deleted, keeps its scores (no rescoring), and shards outside it stay absolute."""

from __future__ import annotations

import shutil
from pathlib import Path

from click.testing import CliRunner

from corpus_agents.cli import main
from corpus_agents.scoring.catalog import Catalog
from corpus_agents.scoring.driver import run_scoring
from tests.helpers import write_shard


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_a_copied_workspace_works_without_the_original(tmp_path: Path, fasttext_model: Path) -> None:
    ws = tmp_path / "ws"
    inside = [write_shard(ws / "corpus" / f"shard-{s}.parquet", 40) for s in range(2)]
    outside = write_shard(tmp_path / "data" / "outside.parquet", 40)
    cli("init", str(ws), "--corpus", str(ws / "corpus" / "*.parquet"), "--corpus", str(outside))
    model = ws / "models" / "kind.ftz"
    shutil.copy(fasttext_model, model)
    cli("agent", "add", str(ws), "kind", "--kind", "fasttext", "--model", str(model))
    cli("agent", "add", str(ws), "domain", "--kind", "metadata", "--column", "source")
    cli("score", str(ws), "--workers", "1", "--quiet")
    with Catalog(ws) as cat:
        stored = dict(cat.execute("SELECT shard_id, uri FROM shards"))
        assert stored == {0: str(outside), 1: "corpus/shard-0.parquet", 2: "corpus/shard-1.parquet"}
        assert all(not p.startswith("/") for (p,) in cat.execute("SELECT path FROM score_parts"))
        assert cat.agent_rows()[0][2]["model"] == "$WS/models/kind.ftz"
        scores = cat.execute("SELECT agent, doc_id, label, score FROM scores ORDER BY ALL")

    copy = tmp_path / "elsewhere" / "ws2"
    copy.parent.mkdir()
    shutil.copytree(ws, copy)
    shutil.rmtree(ws)
    with Catalog(copy) as cat:
        assert [s.uri for s in cat.shards()] == [
            str(outside),
            str(copy / "corpus" / "shard-0.parquet"),
            str(copy / "corpus" / "shard-1.parquet"),
        ]
        assert all(Path(p.path).is_file() and p.path.startswith(str(copy)) for p in cat.parts().values())
        (kind,) = cat.agents(["kind"])
        assert kind.config["model"] == str(copy / "models" / "kind.ftz")
        summary = run_scoring(cat, show_progress=False)  # the same fingerprints: nothing to rescore
        assert not summary.committed and not summary.failed and summary.skipped == 6
        assert cat.execute("SELECT agent, doc_id, label, score FROM scores ORDER BY ALL") == scores
        texts = cat.query("SELECT count(*) AS n, count(text) AS t FROM documents")
        assert texts.to_pylist() == [{"n": 120, "t": 117}]  # each shard has one null text
    assert inside[0].exists() is False


def test_absolute_paths_into_the_workspace_are_migrated_when_it_opens(tmp_path: Path) -> None:
    """Workspaces written before relative paths: their absolute paths become relative (idempotently)."""
    ws = tmp_path / "ws"
    shard = write_shard(ws / "corpus" / "shard-0.parquet", 20)
    cli("init", str(ws), "--corpus", str(shard))
    cli("agent", "add", str(ws), "domain", "--kind", "metadata", "--column", "source")
    cli("score", str(ws), "--workers", "1", "--quiet")
    with Catalog(ws) as cat:
        cat.execute("UPDATE shards SET uri = ?", [str(shard)])
        cat.execute("UPDATE score_parts SET path = ? || '/' || path", [str(ws)])
        cat.execute("DELETE FROM meta WHERE key = 'workspace_dir'")
    for _ in range(2):
        with Catalog(ws) as cat:
            assert cat.execute("SELECT uri FROM shards") == [("corpus/shard-0.parquet",)]
            (path,) = cat.execute("SELECT path FROM score_parts")[0]
            assert path.startswith("parts/domain/")
            assert run_scoring(cat, show_progress=False).skipped == 1
