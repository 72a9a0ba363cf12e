"""A shard changed after registration is refused wherever its text is read (issue 12, case 4): an in-place
edit that keeps the Parquet footer byte for byte is caught by the row-group hashes, a replaced file by its
footer, and `init --refresh` re-registers it, rescoring only that shard."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, models

from corpus_agents.scoring.catalog import Catalog
from corpus_agents.scoring.corpus import ShardChangedError, register_corpus, shard_fingerprint
from corpus_agents.scoring.driver import run_scoring
from corpus_agents.training.reader import SelectionReader
from corpus_agents.training.selection import ShardRef, write_snapshot
from tests.helpers import SOURCES, metadata_agent

ROWS = 40
GROUP_ROWS = 10


def plain_shard(path: Path, tag: str = "document") -> Path:
    """An uncompressed shard without dictionary or statistics: editing a text in place keeps the footer."""
    texts = [f"{tag} {i:03d} about {SOURCES[i % 3]}" for i in range(ROWS)]
    table = pa.table({"text": texts, "source": [SOURCES[i % 3] for i in range(ROWS)]})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        table,
        path,
        row_group_size=GROUP_ROWS,
        compression="NONE",
        use_dictionary=False,
        write_statistics=False,
    )
    return path


def edit_in_place(path: Path, old: bytes, new: bytes) -> None:
    """Overwrite one text with another of the same length: the size and the footer stay the same."""
    assert len(old) == len(new)
    data = path.read_bytes()
    assert data.count(old) == 1
    fingerprint = shard_fingerprint(str(path))
    path.write_bytes(data.replace(old, new))
    assert shard_fingerprint(str(path)) == fingerprint  # the old fingerprint cannot see this edit


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    """A workspace over two plain shards with a metadata agent, fully scored."""
    for s in range(2):
        plain_shard(tmp_path / "corpus" / f"shard-{s}.parquet")
    with Catalog(tmp_path / "ws", create=True) as cat:
        report = register_corpus(cat, [str(tmp_path / "corpus" / "*.parquet")], "text")
        assert len(report.added) == 2 and not report.errors
        cat.add_agent(metadata_agent("domain"))
        summary = run_scoring(cat, show_progress=False)
        assert len(summary.committed) == 2 and not summary.failed
    return tmp_path / "ws"


def test_registration_records_a_hash_per_row_group(ws: Path) -> None:
    with Catalog(ws) as cat:
        for shard in cat.shards():
            assert shard.row_group_hashes is not None and len(shard.row_group_hashes) == ROWS // GROUP_ROWS
            assert len(set(shard.row_group_hashes)) == len(shard.row_group_hashes)


def test_an_in_place_edit_is_refused_by_scoring_and_refresh_rescores_that_shard(ws: Path) -> None:
    shard = ws.parent / "corpus" / "shard-1.parquet"
    edit_in_place(shard, b"document 025 about code", b"DOCUMENT 025 about code")
    with Catalog(ws) as cat:
        cat.add_agent(metadata_agent("second"))  # a new agent must not score the new text beside old scores
        summary = run_scoring(cat, ["second"], show_progress=False)
        assert [r.shard_id for r in summary.committed] == [0]
        (failed,) = summary.failed
        assert failed.error.startswith(
            f"shard {shard}: changed since it was registered (row group 2 differs)"
        )
        assert "init WORKSPACE --refresh" in failed.error

        report = register_corpus(cat, [str(shard)], "text")  # a plain init sees the same footer
        assert report.unchanged == [str(shard)] and not report.refreshed
        report = register_corpus(cat, [str(ws.parent / "corpus" / "*.parquet")], "text", refresh=True)
        assert report.refreshed == [str(shard)] and report.unchanged == [
            str(ws.parent / "corpus" / "shard-0.parquet")
        ]
        parts = cat.parts()
        assert sorted(parts) == [("domain", 0), ("second", 0)]  # shard 1's parts went, shard 0's stay
        summary = run_scoring(cat, show_progress=False)
        assert sorted((r.agent, r.shard_id) for r in summary.committed) == [("domain", 1), ("second", 1)]
        assert not summary.failed
        (count,) = cat.execute("SELECT count(*) FROM scores WHERE doc_id >> 32 = 1 AND agent = 'domain'")[0]
        assert count == ROWS


def test_a_replaced_shard_is_refused_by_documents_and_export_reads(ws: Path) -> None:
    shard = ws.parent / "corpus" / "shard-0.parquet"
    plain_shard(shard, tag="a longer text")  # another file under the same name: the footer differs
    with Catalog(ws) as cat:
        with pytest.raises(ShardChangedError, match=r"shard-0.parquet: changed since it was registered"):
            cat.query("SELECT count(*) FROM documents")
        assert cat.query("SELECT count(*) AS n FROM doc_labels").column("n").to_pylist() == [2 * ROWS]
        from corpus_agents.scoring.corpus import read_doc_texts

        shards = {s.shard_id: s for s in cat.shards()}
        with pytest.raises(ShardChangedError, match="size or footer differs"):
            read_doc_texts(shards, np.array([3], dtype=np.int64))
        assert read_doc_texts(shards, np.array([1 << 32 | 3], dtype=np.int64)) == ["document 003 about web"]


def test_the_training_reader_checks_each_row_group_it_reads(ws: Path, tmp_path: Path) -> None:
    with Catalog(ws) as cat:
        shard = cat.shards()[1]
    rows = pa.table(
        {
            "doc_id": [1 << 32 | r for r in (2, 35)],
            "shard_id": [1, 1],
            "row_idx": [2, 35],
            "row_group": [0, 3],
            "priority": [1.0, 1.0],
        }
    )
    snapshot = write_snapshot(tmp_path / "snap.parquet", rows, {1: ShardRef.of(shard)}, root=ws.parent)
    tokenizer = Tokenizer(models.WordLevel({"<eos>": 0, "[UNK]": 1}, unk_token="[UNK]"))
    assert len(list(SelectionReader(snapshot, tokenizer, 2, 0))) > 0
    edit_in_place(Path(shard.uri), b"document 036 about web", b"document 036 about WEB")
    with pytest.raises(ShardChangedError, match="row group 3 differs"):
        list(SelectionReader(snapshot, tokenizer, 2, 0))


def test_an_older_workspace_gets_its_hashes_at_the_next_init(ws: Path) -> None:
    with Catalog(ws) as cat:
        cat.execute("UPDATE shards SET row_group_hashes = NULL")
        before = cat.parts()
        report = register_corpus(cat, [str(ws.parent / "corpus" / "*.parquet")], "text")
        assert len(report.unchanged) == 2 and not report.added and not report.errors
        assert all(s.row_group_hashes and len(s.row_group_hashes) == 4 for s in cat.shards())
        assert cat.parts() == before  # nothing to rescore


def test_a_copied_corpus_keeps_its_hashes(tmp_path: Path) -> None:
    """The hashes cover the bytes of the row groups, not the file's name or place."""
    a = plain_shard(tmp_path / "a.parquet")
    shutil.copy(a, tmp_path / "b.parquet")
    with Catalog(tmp_path / "ws", create=True) as cat:
        register_corpus(cat, [str(tmp_path / "*.parquet")], "text")
        first, second = cat.shards()
        assert first.row_group_hashes == second.row_group_hashes
