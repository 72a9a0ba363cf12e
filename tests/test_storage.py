"""storage.atomic_path: a file or directory appears whole under its final name, or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from corpus_agents.storage import atomic_path, temp_path


def test_a_file_is_published_whole_and_its_temporary_name_is_hidden(tmp_path: Path) -> None:
    final = tmp_path / "sub" / "x.parquet"
    with atomic_path(final) as tmp:
        assert tmp.parent == final.parent and tmp.name.startswith(".x.parquet.tmp-")
        assert not list(final.parent.glob("*.parquet"))  # a glob of final names never sees the temporary
        tmp.write_text("new")
        assert not final.exists()
    assert final.read_text() == "new" and [p.name for p in final.parent.iterdir()] == ["x.parquet"]


def test_a_failing_body_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    final = tmp_path / "x.txt"
    final.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash while writing")
    assert final.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_a_directory_replaces_the_old_one(tmp_path: Path) -> None:
    final = tmp_path / "step-3"
    (final / "model").mkdir(parents=True)
    (final / "model" / "old.bin").write_text("old")
    with atomic_path(final) as tmp:
        (tmp / "model").mkdir(parents=True)
        (tmp / "model" / "new.bin").write_text("new")
    assert [p.name for p in (final / "model").iterdir()] == ["new.bin"]
    assert not temp_path(final).exists()
