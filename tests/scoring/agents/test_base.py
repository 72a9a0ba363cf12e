"""Agent machinery shared by every kind: model file hashes remembered between runs."""

from __future__ import annotations

import os
import shutil

import pytest

from corpus_agents.scoring.agents import base
from corpus_agents.scoring.agents.base import FileHashes, hash_path


def test_file_hashes_are_remembered_until_the_file_changes(tmp_path, monkeypatch):
    model = tmp_path / "model.bin"
    model.write_bytes(b"a" * 1000)
    store = tmp_path / "cache" / "model-hashes.json"
    first = FileHashes(store)
    digest = first.hash(model)
    assert digest == hash_path(model)
    first.save()
    assert store.is_file()

    calls: list[str] = []
    real = base.hash_path
    monkeypatch.setattr(base, "hash_path", lambda p: calls.append(str(p)) or real(p))
    assert FileHashes(store).hash(model) == digest and not calls  # a later run reads it back

    model.write_bytes(b"b" * 1000)  # rewritten: same size, a later mtime
    os.utime(model, ns=(model.stat().st_atime_ns, model.stat().st_mtime_ns + 1))
    assert FileHashes(store).hash(model) == real(model) != digest and len(calls) == 1


def test_a_copied_workspace_keeps_its_model_hashes(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    (ws / "models").mkdir(parents=True)
    (ws / "models" / "m.bin").write_bytes(b"model")
    hashes = FileHashes(ws / "cache" / "model-hashes.json", root=ws)
    digest = hashes.hash(ws / "models" / "m.bin")
    hashes.save()
    shutil.copytree(ws, tmp_path / "copy")  # copies keep mtimes (copy2)
    monkeypatch.setattr(base, "hash_path", lambda p: pytest.fail(f"hashed {p} again"))
    copy = FileHashes(tmp_path / "copy" / "cache" / "model-hashes.json", root=tmp_path / "copy")
    assert copy.hash(tmp_path / "copy" / "models" / "m.bin") == digest


@pytest.mark.parametrize("content", ["{not json", '{"x": 1}', ""])
def test_an_unreadable_file_of_hashes_is_empty(tmp_path, content):
    model = tmp_path / "model.bin"
    model.write_bytes(b"m")
    store = tmp_path / "hashes.json"
    store.write_text(content)
    hashes = FileHashes(store)
    assert hashes.hash(model) == hash_path(model)
    hashes.save()
    assert FileHashes(store).hash(model) == hash_path(model)


def test_fingerprint_with_remembered_hashes_is_the_same(tmp_path, fasttext_model):
    from corpus_agents.scoring.agents.base import AgentContext
    from corpus_agents.scoring.agents.fasttext import FastTextAgent

    agent = FastTextAgent.create("ft", {"model": str(fasttext_model)}, AgentContext(tmp_path, tmp_path))
    hashes = FileHashes(tmp_path / "h.json")
    assert agent.fingerprint(hashes) == agent.fingerprint() == agent.fingerprint(hashes)


def test_score_reads_the_model_hashes_agent_add_wrote(tmp_path, make_corpus, fasttext_model, monkeypatch):
    """`agent add` hashes the model file; `score` and `status` then take its hash from WS/cache."""
    from corpus_agents.workspace import Workspace

    make_corpus(tmp_path / "corpus", num_shards=2, rows_per_shard=30)
    with Workspace.create(tmp_path / "ws") as ws:
        ws.add_corpus([str(tmp_path / "corpus" / "*.parquet")])
        ws.add_agent("ft", "fasttext", {"model": str(fasttext_model)})
        assert str(fasttext_model.resolve()) in (tmp_path / "ws" / "cache" / "model-hashes.json").read_text()
        monkeypatch.setattr(base, "hash_path", lambda p: pytest.fail(f"hashed {p} again"))
        summary = ws.score(workers=1, show_progress=False)
        assert len(summary.committed) == 2 and not summary.failed
        assert [a.pending for a in ws.status().agents] == [0]
