"""Column agent: an existing numeric score of the shards (shaped like FineWeb-Edu's `score` and
`int_score`) binned by given edges or by corpus quantiles, the raw value kept as the score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus_agents.scoring.agents import AgentContext, AgentError
from corpus_agents.scoring.agents.metadata import MetadataAgent
from tests.helpers import invoke, query


def fineweb_edu_shards(directory: Path, shards: int = 2, rows: int = 250) -> np.ndarray:
    """Shards with FineWeb-Edu's columns: `text`, `id`, `score` (a float in [0, 5]), `int_score` (rounded),
    and a nested copy `meta.score`; a few scores are null. Returns every document's score in doc order."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    everything = []
    for s in range(shards):
        score = np.clip(rng.normal(2.5, 1.0, rows), 0, 5)
        null = np.zeros(rows, bool)
        null[[3, 17]] = True
        score_arr = pa.array(score, pa.float64(), mask=null)
        table = pa.table(
            {
                "text": [f"document {s}-{i}" for i in range(rows)],
                "id": [f"<urn:uuid:{s}-{i}>" for i in range(rows)],
                "score": score_arr,
                "int_score": pa.array(np.round(score).astype(np.int64), mask=null),
                "meta": pa.StructArray.from_arrays([score_arr], ["score"]),
            }
        )
        pq.write_table(table, directory / f"{s:03d}.parquet", row_group_size=64)
        everything.append(np.where(null, np.nan, score))
    return np.concatenate(everything)


@pytest.fixture
def edu_ws(tmp_path: Path) -> tuple[Path, np.ndarray]:
    scores = fineweb_edu_shards(tmp_path / "corpus")
    ws = tmp_path / "ws"
    invoke("init", ws, "--corpus", tmp_path / "corpus" / "*.parquet")
    return ws, scores


def labels_and_scores(ws: Path, agent: str) -> tuple[list, np.ndarray]:
    rows = query(ws, f'SELECT "{agent}", "{agent}_score" FROM doc_labels ORDER BY doc_id')
    return [r[0] for r in rows], np.array([np.nan if r[1] is None else r[1] for r in rows])


def test_given_edges_bin_the_score_and_keep_the_raw_value(edu_ws) -> None:
    ws, scores = edu_ws
    out = invoke("agent", "add", ws, "edu", "--kind", "column", "--column", "score", "--bins", "0,1,2,3,4,5")
    assert "added agent edu (column) with labels: 0-1, 1-2, 2-3, 3-4, 4-5" in out.stdout
    invoke("score", ws, "--workers", "1")
    labels, raw = labels_and_scores(ws, "edu")
    names = ["0-1", "1-2", "2-3", "3-4", "4-5"]
    expected = [None if np.isnan(v) else names[min(int(v), 4)] for v in scores]
    assert labels == expected
    assert np.allclose(raw, scores.astype(np.float32), equal_nan=True)
    assert sum(label is None for label in labels) == 4  # null scores have no label: unscored


def test_quantiles_are_taken_over_the_whole_corpus(edu_ws) -> None:
    ws, scores = edu_ws
    invoke("agent", "add", ws, "edu", "--kind", "column", "--column", "meta.score", "--quantiles", "4")
    config = json.loads(query(ws, "SELECT config FROM agents WHERE name = 'edu'")[0][0])
    known = scores[~np.isnan(scores)]
    assert config["quantiles"] == 4
    assert config["bins"] == [float(f"{q:.6g}") for q in np.quantile(known, [0, 0.25, 0.5, 0.75, 1])]
    invoke("score", ws, "--workers", "1")
    labels, _ = labels_and_scores(ws, "edu")
    counts = np.unique([label for label in labels if label is not None], return_counts=True)[1]
    assert len(counts) == 4 and counts.min() >= 0.23 * len(known)  # equal-count bins


def test_a_column_with_few_values_merges_repeated_quantiles(edu_ws) -> None:
    ws, _ = edu_ws
    out = invoke(
        "agent", "add", ws, "iscore", "--kind", "column", "--column", "int_score", "--quantiles", "20"
    )
    labels = out.stdout.split("labels: ")[1].splitlines()[0].strip().split(", ")
    edges = [float(x) for x in labels[0].split("-")] + [float(label.split("-")[1]) for label in labels[1:]]
    assert edges == sorted(set(edges)) and len(labels) <= 5  # int_score takes at most 6 values


def test_bad_columns_and_options_are_one_line(edu_ws) -> None:
    ws, _ = edu_ws
    out = invoke("agent", "add", ws, "t", "--kind", "column", "--column", "id", expect=2)
    assert "column 'id' is string in shard" in out.stderr and "needs a numeric column" in out.stderr
    out = invoke("agent", "add", ws, "t", "--kind", "column", "--column", "nope", expect=2)
    assert "no column 'nope'" in out.stderr
    both = ("--column", "score", "--bins", "0,1", "--quantiles", "3")
    out = invoke("agent", "add", ws, "t", "--kind", "column", *both, expect=2)
    assert out.stderr == "error: give --bins or --quantiles, not both\n"
    out = invoke("agent", "add", ws, "t", "--kind", "column", "--column", "score", "--bins", "1,0", expect=2)
    assert "--bins must be at least two strictly increasing numbers" in out.stderr
    assert query(ws, "SELECT count(*) FROM agents") == [(0,)]


def test_metadata_on_a_numeric_column_points_to_the_column_agent(tmp_path: Path) -> None:
    context = AgentContext(tmp_path, tmp_path, distinct_values=lambda column: [i / 7 for i in range(20_000)])
    with pytest.raises(AgentError, match="binned by --kind column --column score"):
        MetadataAgent.create("m", {"column": "score"}, context)
