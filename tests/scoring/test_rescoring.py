"""Rescoring (docs/architecture.md#exactly-once-parts): a changed model file or agent config rescores that
agent only, and a rescore that fails half-way leaves no old score beside the new ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from helpers import assert_fully_scored, corrupt_overwrite, invoke, query, setup_workspace


def parts_by_agent(ws: Path) -> dict[str, dict[int, tuple]]:
    out: dict[str, dict[int, tuple]] = {}
    for agent, shard_id, fingerprint, committed_at in query(
        ws, "SELECT agent, shard_id, fingerprint, committed_at FROM score_parts"
    ):
        out.setdefault(agent, {})[shard_id] = (fingerprint, committed_at)
    return out


def expected_code_probability(model_path: Path, shards: list[Path]) -> np.ndarray:
    """P(code) per document straight from the fastText library, in doc_id order (fastText's values can
    exceed 1 by 1e-5, which the agent clips: compare with atol 2e-5)."""
    from corpus_agents.scoring.agents.fasttext import load_fasttext

    model = load_fasttext(str(model_path))
    probs = []
    for shard in shards:
        texts = pq.read_table(shard, columns=["text"]).column("text").to_pylist()
        labels, p = model.predict([t.replace("\n", " ").replace("\r", " ") for t in texts], k=2)
        probs += [dict(zip(lab, pp))["__label__code"] for lab, pp in zip(labels, p)]
    return np.array(probs, dtype=np.float32)


def test_changed_model_or_config_rescores_that_agent_only(tmp_path, make_corpus, real_docs, fit_fasttext):
    corpus = tmp_path / "corpus"
    shards = make_corpus(corpus, num_shards=4, rows_per_shard=100)
    model = fit_fasttext(tmp_path / "models" / "ft.bin", real_docs[:1500])
    ws = tmp_path / "ws"
    setup_workspace(ws, corpus, model)
    first = invoke("score", ws, "--workers", "1", "--quiet")
    assert "committed 8 parts, 0 already done" in first.stdout
    before = parts_by_agent(ws)
    old_scores = np.array(query(ws, "SELECT score FROM scores WHERE agent = 'quality' ORDER BY doc_id"))[:, 0]
    np.testing.assert_allclose(old_scores, expected_code_probability(model, shards), atol=2e-5)

    # Same path, new content: a model that learnt the opposite (labels swapped).
    swap = {"code": "docs", "docs": "code"}
    fit_fasttext(model, [(t, swap[s]) for t, s in real_docs[:1500]])
    domain_only = invoke("score", ws, "--agents", "domain", "--workers", "1", "--quiet")
    assert "committed 0 parts, 4 already done, 0 failed" in domain_only.stdout
    assert parts_by_agent(ws) == before  # a run without the changed agent leaves its scores alone

    # A rescore that fails half-way (shard 2 unreadable) leaves no old score beside the new ones.
    original = shards[2].read_bytes()
    corrupt_overwrite(shards[2])
    broken = invoke("score", ws, "--workers", "1", "--quiet", expect=1)
    assert "committed 3 parts, 4 already done, 1 failed" in broken.stdout
    partly = query(ws, "SELECT doc_id, score FROM scores WHERE agent = 'quality' ORDER BY doc_id")
    assert [d for d, _ in partly] == [(s << 32) | r for s in (0, 1, 3) for r in range(100)]
    expected = expected_code_probability(model, [shards[0], shards[1], shards[3]])
    np.testing.assert_allclose(np.array([x for _, x in partly]), expected, atol=2e-5)
    assert query(ws, "SELECT count(*) FROM doc_labels WHERE shard_id = 2 AND quality IS NULL")[0][0] == 100
    shards[2].write_bytes(original)

    second = invoke("score", ws, "--workers", "1", "--quiet")
    assert "committed 1 parts, 7 already done, 0 failed" in second.stdout
    after = parts_by_agent(ws)
    assert after["domain"] == before["domain"]
    for s in range(4):
        assert after["quality"][s][0] != before["quality"][s][0]
        assert after["quality"][s][1] > before["quality"][s][1]
    assert_fully_scored(ws)
    new_scores = np.array(query(ws, "SELECT score FROM scores WHERE agent = 'quality' ORDER BY doc_id"))[:, 0]
    np.testing.assert_allclose(new_scores, expected_code_probability(model, shards), atol=2e-5)
    assert np.mean(np.abs(new_scores - old_scores)) > 0.3
    assert "committed 0 parts, 8 already done" in invoke("score", ws, "--workers", "1", "--quiet").stdout

    # Same model, new config: other bins.
    invoke(
        "agent", "add", ws, "quality", "--kind", "fasttext", "--model", model, "--label", "code",
        "--bins", "0,0.5,1", "--replace",
    )  # fmt: skip
    third = invoke("score", ws, "--workers", "1", "--quiet")
    assert "committed 4 parts, 4 already done, 0 failed" in third.stdout
    latest = parts_by_agent(ws)
    assert latest["domain"] == before["domain"]
    assert all(latest["quality"][s][0] != after["quality"][s][0] for s in range(4))
    assert_fully_scored(ws)
    assert query(ws, "SELECT label_id, name FROM agent_labels WHERE agent = 'quality' ORDER BY 1") == [
        (0, "0-0.5"),
        (1, "0.5-1"),
    ]
    wrong_bin = "SELECT count(*) FROM scores WHERE agent = 'quality' AND label <> (score >= 0.5)::INT"
    assert query(ws, wrong_bin)[0][0] == 0
    rescored = np.array(query(ws, "SELECT score FROM scores WHERE agent = 'quality' ORDER BY doc_id"))[:, 0]
    np.testing.assert_array_equal(rescored, new_scores)
