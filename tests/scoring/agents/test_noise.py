"""Noise agent: labels a hash of (seed, doc_id), uniform over its labels, the same whatever the batching;
its options go through the one options dataclass; it scores a corpus through the CLI."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from corpus_agents.cli import main
from corpus_agents.config import ConfigError, load_config
from corpus_agents.scoring.agents import AgentContext, AgentError, build_agent, make_options
from corpus_agents.scoring.agents.noise import NoiseAgent, NoiseOptions, noise_labels
from corpus_agents.scoring.corpus import DocBatch, pack_doc_ids

# 99.9% quantile of chi-square with 4 degrees of freedom: a fair 5-label draw exceeds it once in 1000.
CHI2_4DF_999 = 18.47


def agent(tmp_path: Path, **options) -> NoiseAgent:
    return NoiseAgent.create("noise1", options, AgentContext(tmp_path, tmp_path))


def batch(doc_ids: np.ndarray) -> DocBatch:
    return DocBatch(pa.array(["text"] * len(doc_ids)), doc_ids=doc_ids)


def test_labels_do_not_depend_on_batch_boundaries_or_order(tmp_path: Path) -> None:
    noise = agent(tmp_path, labels=4, seed=1)
    ids = pack_doc_ids(np.repeat([0, 7], 500), np.tile(np.arange(500), 2))
    whole = noise.score(batch(ids))
    for cuts in ([1, 2, 999], [333, 334], [10 * k for k in range(1, 100)]):
        parts = [noise.score(batch(part)) for part in np.split(ids, cuts)]
        assert (np.concatenate([p.labels for p in parts]) == whole.labels).all()
        assert (np.concatenate([p.scores for p in parts]) == whole.scores).all()
    order = np.random.default_rng(0).permutation(len(ids))
    shuffled = noise.score(batch(ids[order]))
    assert (shuffled.labels == whole.labels[order]).all() and (shuffled.scores == whole.scores[order]).all()
    rebuilt = build_agent("noise1", "noise", noise.config)  # from the stored config, as a worker gets it
    assert (rebuilt.score(batch(ids)).labels == whole.labels).all()


def test_labels_are_uniform_and_scores_in_unit_interval(tmp_path: Path) -> None:
    noise = agent(tmp_path)  # the defaults: 5 labels, seed 0
    assert noise.labels == ["n0", "n1", "n2", "n3", "n4"]
    ids = pack_doc_ids(np.repeat(np.arange(4), 5000), np.tile(np.arange(5000), 4))  # consecutive rows
    out = noise.score(batch(ids))
    counts = np.bincount(out.labels, minlength=5)
    expected = len(ids) / 5
    assert ((counts - expected) ** 2 / expected).sum() < CHI2_4DF_999, counts
    assert out.labels.dtype == np.int32 and out.labels.min() >= 0 and out.labels.max() <= 4
    assert out.scores.dtype == np.float32 and 0 <= out.scores.min() and out.scores.max() < 1
    assert abs(float(out.scores.mean()) - 0.5) < 0.01 and np.unique(out.scores).size > 0.99 * len(ids)
    # The label does not determine the score: each label's scores spread over [0, 1) alike.
    means = [float(out.scores[out.labels == k].mean()) for k in range(5)]
    assert max(means) - min(means) < 0.03


def test_seeds_relabel_and_change_the_fingerprint(tmp_path: Path) -> None:
    ids = np.arange(2000, dtype=np.int64)
    first, again, other = agent(tmp_path, seed=1), agent(tmp_path, seed=1), agent(tmp_path, seed=2)
    assert first.fingerprint() == again.fingerprint() != other.fingerprint()
    assert agent(tmp_path, labels=6, seed=1).fingerprint() != first.fingerprint()
    same = (first.score(batch(ids)).labels == other.score(batch(ids)).labels).mean()
    assert abs(same - 1 / 5) < 0.05  # two seeds agree as often as two independent draws
    labels, _ = noise_labels(1, ids, 5)
    assert (labels == first.score(batch(ids)).labels).all()


def test_options_are_checked_and_foreign_ones_refused(tmp_path: Path) -> None:
    assert make_options("noise", {"labels": 4, "seed": 1}) == NoiseOptions(labels=4, seed=1)
    from_yaml = load_config(None, ["agents.n={kind: noise, labels: 4, seed: 1}"]).agents["n"].options
    assert from_yaml == NoiseOptions(labels=4, seed=1)
    with pytest.raises(ConfigError, match="--column is not an option of agent kind 'noise'"):
        make_options("noise", {"column": "source"})
    with pytest.raises(ConfigError, match="agents.n.topics is not an option of agent kind 'noise'"):
        load_config(None, ["agents.n={kind: noise, topics: 3}"])
    with pytest.raises(ConfigError, match="--labels must be >= 2, got 1"):
        make_options("noise", {"labels": 1})
    with pytest.raises(AgentError, match="needs the documents' ids"):
        agent(tmp_path).score(DocBatch(pa.array(["a"])))


def test_scoring_a_corpus_through_the_cli(tmp_path: Path, make_corpus) -> None:
    make_corpus(tmp_path / "corpus", 2, 300, row_group_rows=64)
    ws = str(tmp_path / "ws")

    def run(*args: str, code: int = 0) -> str:
        result = CliRunner().invoke(main, list(args))
        assert result.exit_code == code, result.output
        return result.output

    run("init", ws, "--corpus", str(tmp_path / "corpus" / "*.parquet"))
    out = run("agent", "add", ws, "noise1", "--kind", "noise", "--labels", "4", "--seed", "1")
    assert "added agent noise1 (noise) with labels: n0, n1, n2, n3" in out
    out = run("agent", "add", ws, "noise2", "--kind", "noise", "--column", "source", code=2)
    assert "--column is not an option of agent kind 'noise' (its options: --labels, --seed)" in out
    run("score", ws, "--workers", "1")
    con = duckdb.connect(str(tmp_path / "ws" / "catalog.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT doc_id, label, score FROM scores WHERE agent = 'noise1'").fetchall()
    finally:
        con.close()
    assert len(rows) == 600
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    labels, scores = noise_labels(1, ids, 4)
    assert [r[1] for r in rows] == labels.tolist()
    assert np.allclose([r[2] for r in rows], scores)
    assert set(labels.tolist()) == {0, 1, 2, 3}
