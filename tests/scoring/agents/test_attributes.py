"""Attributes agent: labels and scores from side files joined by document id, shards untouched: Dolma
attribute files (JSONL.gz, `attributes: {name: [[start, end, value]]}`) and NeMo-Curator-style Parquet
classifier output; documents missing from the side files have no label."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus_agents.config import ConfigError
from corpus_agents.scoring.agents import AgentContext, AgentError
from corpus_agents.scoring.agents.attributes import AttributesAgent, span_values
from corpus_agents.scoring.corpus import DocBatch
from tests.helpers import invoke, query

QUALITY = "dolma_quality__fasttext__hq"  # a Dolma-style attribute name
PARAGRAPHS = "paragraph_lang__en"


def dolma(tmp_path: Path, shards: int = 2, rows: int = 120) -> dict[str, tuple[float, float]]:
    """Dolma-shaped documents (`id`, `text`, `source`) and one attributes JSONL.gz per shard covering every
    document but each fifth: a document-level attribute (one span over the whole text) and a paragraph-level
    one (two spans, the second longer). Returns id -> (document value, longest paragraph's value)."""
    (tmp_path / "documents").mkdir()
    (tmp_path / "attributes").mkdir()
    rng = np.random.default_rng(1)
    truth = {}
    for s in range(shards):
        ids = [f"doc-{s}-{i:04d}" for i in range(rows)]
        texts = [f"text of {d} " * 3 for d in ids]
        table = pa.table({"id": ids, "text": texts, "source": ["common-crawl"] * rows})
        pq.write_table(table, tmp_path / "documents" / f"part-{s}.parquet", row_group_size=50)
        with gzip.open(tmp_path / "attributes" / f"part-{s}.jsonl.gz", "wt") as f:
            for i, (doc_id, text) in enumerate(zip(ids, texts)):
                if i % 5 == 4:
                    continue
                value, short, long = float(rng.uniform()), float(rng.uniform()), float(rng.uniform())
                cut = len(text) // 4
                attrs = {
                    QUALITY: [[0, len(text), value]],
                    PARAGRAPHS: [[0, cut, short], [cut, len(text), long]],
                }
                f.write(json.dumps({"id": doc_id, "attributes": attrs, "source": "common-crawl"}) + "\n")
                truth[doc_id] = (value, long)
    return truth


def scored(ws: Path, agent: str) -> dict[str, tuple]:
    """shard-order document ids (read back from the shards) -> (label, score)."""
    rows = query(ws, f'SELECT "{agent}", "{agent}_score" FROM doc_labels ORDER BY doc_id')
    ids = []
    for path in sorted((ws.parent / "documents").glob("*.parquet")):
        ids += pq.read_table(path, columns=["id"]).column("id").to_pylist()
    return dict(zip(ids, rows))


def test_dolma_attributes_binned_with_missing_documents_unscored(tmp_path: Path) -> None:
    truth = dolma(tmp_path)
    ws = tmp_path / "ws"
    invoke("init", ws, "--corpus", tmp_path / "documents" / "*.parquet")
    files = str(tmp_path / "attributes" / "*.jsonl.gz")
    field = f"attributes.{QUALITY}"
    out = invoke("agent", "add", ws, "hq", "--kind", "attributes", "--files", files, "--field", field,
                 "--bins", "0,0.5,1")  # fmt: skip
    assert "added agent hq (attributes) with labels: 0-0.5, 0.5-1" in out.stdout
    invoke("agent", "add", ws, "para", "--kind", "attributes", "--files", files,
           "--field", f"attributes.{PARAGRAPHS}", "--quantiles", "3")  # fmt: skip
    invoke("score", ws, "--workers", "1")
    hq, para = scored(ws, "hq"), scored(ws, "para")
    assert len(hq) == 240
    for doc_id, (label, score) in hq.items():
        if doc_id not in truth:
            assert (label, score) == (None, None) and para[doc_id] == (None, None)
            continue
        value, long = truth[doc_id]
        assert label == ("0-0.5" if value < 0.5 else "0.5-1")
        assert score == pytest.approx(value, rel=1e-6)
        assert para[doc_id][1] == pytest.approx(long, rel=1e-6)  # the longest span's value
    para_labels = [label for label, _ in para.values() if label is not None]
    assert len(set(para_labels)) == 3 and min(np.unique(para_labels, return_counts=True)[1]) >= 60
    # The shards were not rewritten; the side files are part of the fingerprint: changing one rescores.
    assert query(ws, "SELECT count(*) FROM scores WHERE agent = 'hq' AND label IS NULL") == [(48,)]
    before = query(ws, "SELECT fingerprint FROM score_parts WHERE agent = 'hq' ORDER BY shard_id")
    with gzip.open(tmp_path / "attributes" / "part-0.jsonl.gz", "at") as f:
        f.write(json.dumps({"id": "doc-0-0004", "attributes": {QUALITY: [[0, 5, 0.9]]}}) + "\n")
    invoke("score", ws, "--workers", "1", "--agents", "hq")
    after = query(ws, "SELECT fingerprint FROM score_parts WHERE agent = 'hq' ORDER BY shard_id")
    assert before != after
    assert scored(ws, "hq")["doc-0-0004"] == ("0.5-1", pytest.approx(0.9))


def test_classifier_labels_from_parquet_joined_on_another_id_column(tmp_path: Path) -> None:
    """NeMo-Curator-style output: `quality_pred` labels in Parquet keyed by an integer id that the shards
    call `doc_num`; a label that appears in the side files only after the agent was added is `(other)`."""
    (tmp_path / "corpus").mkdir()
    n = 60
    pq.write_table(
        pa.table({"text": [f"t{i}" for i in range(n)], "doc_num": pa.array(range(n), pa.int32())}),
        tmp_path / "corpus" / "a.parquet",
    )
    preds = ["High", "Medium", "Low"]
    side = pa.table({"uid": list(range(0, n, 2)), "quality_pred": [preds[i % 3] for i in range(0, n, 2)]})
    pq.write_table(side, tmp_path / "preds.parquet")
    ws = tmp_path / "ws"
    invoke("init", ws, "--corpus", tmp_path / "corpus" / "a.parquet")
    out = invoke("agent", "add", ws, "quality", "--kind", "attributes", "--files", tmp_path / "preds.parquet",
                 "--field", "quality_pred", "--id-column", "uid", "--doc-id-column", "doc_num")  # fmt: skip
    assert "with labels: High, Low, Medium, (other)" in out.stdout
    invoke("score", ws, "--workers", "1")
    rows = query(ws, "SELECT quality, quality_score FROM doc_labels ORDER BY doc_id")
    assert [r[0] for r in rows] == [preds[i % 3] if i % 2 == 0 else None for i in range(n)]
    assert all(r[1] is None for r in rows)
    agent = AttributesAgent("q", json.loads(query(ws, "SELECT config FROM agents")[0][0]))
    pq.write_table(pa.table({"uid": [0, 1], "quality_pred": ["High", "Unknown"]}), tmp_path / "preds.parquet")
    out = agent.score(DocBatch(pa.array(["a", "b", "c"]), {"doc_num": pa.array([1, 0, None], pa.int32())}))
    assert out.labels.tolist() == [3, 0, -1]


def test_bad_side_files_are_one_line(tmp_path: Path) -> None:
    ctx = AgentContext(tmp_path, tmp_path)
    path = tmp_path / "side.jsonl"
    path.write_text('{"id": "a", "label": "x", "v": 1.5}\n{"id": "a", "label": "y", "v": 2.5}\n')
    with pytest.raises(AgentError, match="document id 'a' appears twice"):
        AttributesAgent.create("a", {"files": [str(path)], "field": "label"}, ctx)
    path.write_text('{"id": "a", "label": "x"}\n{"id": "b", "label": "y"}\n')
    with pytest.raises(ConfigError, match="holds labels"):
        AttributesAgent.create("a", {"files": [str(path)], "field": "label", "bins": [0, 1]}, ctx)
    with pytest.raises(AgentError, match="no side files match"):
        AttributesAgent.create("a", {"files": [str(tmp_path / "*.parquet")], "field": "label"}, ctx)
    with pytest.raises(AgentError, match="side file .* has no column 'score'"):
        AttributesAgent.create("a", {"files": [str(path)], "field": "score.x"}, ctx)
    with pytest.raises(ConfigError, match="--field is required"):
        AttributesAgent.create("a", {"files": [str(path)]}, ctx)


def test_span_values_take_the_longest_span() -> None:
    spans = pa.array([[[0, 10, 0.2], [10, 50, 0.7]], [], None, [[0, 5, 1]], [[0, 5, 0.3], [5, 10, 0.4]]])
    assert span_values(spans).to_pylist() == [0.7, None, None, 1.0, 0.3]
