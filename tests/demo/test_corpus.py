"""Tests for the offline demo corpus builder (small caps keep each build to about a second)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import corpus_agents.demo.corpus as demo_corpus
from corpus_agents.demo.corpus import DemoCorpusError, build_demo_corpus, describe_demo_corpus

CAP = 50


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Two builds with seed 0 and one with seed 1; the last goes into a directory with leftovers."""
    root = tmp_path_factory.mktemp("demo")
    reused = root / "seed1"
    reused.mkdir()
    (reused / "shard-00007.parquet").write_bytes(b"stale shard from an earlier build")
    (reused / "notes.txt").write_text("not ours")
    return {
        "a": build_demo_corpus(root / "a", num_shards=2, max_docs_per_source=CAP, seed=0),
        "b": build_demo_corpus(root / "b", num_shards=2, max_docs_per_source=CAP, seed=0),
        "seed1": build_demo_corpus(reused, num_shards=2, max_docs_per_source=CAP, seed=1),
    }


def _read_all(paths: list[Path]) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in paths])


def test_shards_exist_with_requested_count(builds: dict[str, list[Path]]) -> None:
    paths = builds["a"]
    assert [p.name for p in paths] == ["shard-00000.parquet", "shard-00001.parquet"]
    assert all(p.is_file() for p in paths)
    assert sorted(p.name for p in paths[0].parent.iterdir()) == [p.name for p in paths]  # no temp files left


def test_schema_is_text_source_path_strings(builds: dict[str, list[Path]]) -> None:
    for path in builds["a"]:
        schema = pq.read_schema(path)
        assert schema.names == ["text", "source", "path"]
        assert all(field.type == pa.string() for field in schema)


def test_documents_are_nonempty_unique_and_bounded(builds: dict[str, list[Path]]) -> None:
    table = _read_all(builds["a"])
    texts = table.column("text").to_pylist()
    assert table.num_rows > 0
    assert all(text.strip() and len(text) >= 200 for text in texts)
    assert all(len(text) <= 6000 for text in texts)
    assert len(set(texts)) == len(texts)
    assert all(table.column("path").to_pylist())


def test_sources_present_and_capped(builds: dict[str, list[Path]]) -> None:
    stats = describe_demo_corpus(builds["a"])
    assert len(stats) >= 3
    assert all(0 < s["docs"] <= CAP and s["chars"] >= 200 * s["docs"] for s in stats.values())
    table = _read_all(builds["a"])
    assert sum(s["docs"] for s in stats.values()) == table.num_rows
    assert set(stats) == set(table.column("source").to_pylist())


def test_same_seed_is_deterministic(builds: dict[str, list[Path]]) -> None:
    for a, b in zip(builds["a"], builds["b"], strict=True):
        assert pq.read_table(a).equals(pq.read_table(b))


def test_different_seed_changes_order(builds: dict[str, list[Path]]) -> None:
    texts0 = _read_all(builds["a"]).column("text").to_pylist()
    texts1 = _read_all(builds["seed1"]).column("text").to_pylist()
    assert texts0 != texts1


def test_rebuild_removes_stale_shards_only(builds: dict[str, list[Path]]) -> None:
    directory = builds["seed1"][0].parent
    assert sorted(p.name for p in directory.iterdir()) == [
        "notes.txt",
        "shard-00000.parquet",
        "shard-00001.parquet",
    ]


def test_too_few_sources_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_corpus, "_SOURCES", demo_corpus._SOURCES[:2])
    with pytest.raises(DemoCorpusError) as excinfo:
        build_demo_corpus(tmp_path / "out", max_docs_per_source=5)
    assert "\n" not in str(excinfo.value)
    assert not (tmp_path / "out").exists()


def test_strip_troff_keeps_text_and_drops_markup() -> None:
    page = '.TH FOO 1\n.SH "NAME"\nfoo \\- do things\n.SH DESCRIPTION\n.B foo\nis \\fIfast\\fR.\n.PP\nIt\\(aqs done.\n'
    assert (
        demo_corpus._strip_troff(page).strip()
        == "NAME\nfoo - do things\n\nDESCRIPTION\nfoo\nis fast.\n\nIt's done."
    )
