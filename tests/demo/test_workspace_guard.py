"""`demo --workspace DIR` replaces only a directory the demo made, never a user's workspace."""

from __future__ import annotations

from pathlib import Path

import pytest

from corpus_agents.demo.run import DEMO_MARKER, run_demo
from corpus_agents.errors import CorpusAgentsError
from corpus_agents.scoring.catalog import Catalog


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_a_users_workspace_is_refused_and_left_whole(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    Catalog(ws, create=True).close()  # a real workspace: a catalog, parts/ and models/
    (ws / "models" / "quality.bin").write_bytes(b"a fitted model")
    before = tree(ws)
    with pytest.raises(CorpusAgentsError, match="is not a demo workspace"):
        run_demo(ws, workers=1, train=False)
    assert tree(ws) == before and (ws / "models" / "quality.bin").read_bytes() == b"a fitted model"


def test_any_other_non_empty_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CorpusAgentsError, match="is not a demo workspace"):
        run_demo(tmp_path, workers=1, train=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_the_marker_is_what_lets_a_rerun_replace_the_directory(tmp_path: Path, monkeypatch) -> None:
    import corpus_agents.demo.run as demo

    ws = tmp_path / "demo"
    ws.mkdir()
    (ws / DEMO_MARKER).write_text("")
    (ws / "stale.txt").write_text("from an earlier demo")

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(demo, "build_demo_corpus", stop)  # stop right after the directory is replaced
    with pytest.raises(Stop):
        run_demo(ws, workers=1, train=False)
    assert tree(ws) == {DEMO_MARKER}
