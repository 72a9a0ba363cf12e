"""Agent machinery shared by every kind: model file hashes remembered between runs."""

from __future__ import annotations

import os

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

    stat = model.stat()
    model.write_bytes(b"b" * 1000)  # same size, even the same mtime: the ctime still moves
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert FileHashes(store).hash(model) == real(model) != digest and len(calls) == 1


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
