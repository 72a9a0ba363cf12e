"""Metadata agent: labels from a column, discovered at add time; nested fields; unknown values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from corpus_agents.config import ConfigError
from corpus_agents.scoring.agents import AgentContext, AgentError
from corpus_agents.scoring.agents.metadata import OTHER, MetadataAgent
from corpus_agents.scoring.corpus import DocBatch


def context(tmp_path: Path, values: list) -> AgentContext:
    return AgentContext(workspace_dir=tmp_path, models_dir=tmp_path, distinct_values=lambda column: values)


def test_labels_are_discovered_values_plus_other(tmp_path: Path) -> None:
    agent = MetadataAgent.create(
        "domain", {"column": "source"}, context(tmp_path, ["web", None, "code", "books"])
    )
    assert agent.labels == ["books", "code", "web", OTHER]
    batch = DocBatch(pa.array(["a", "b", "c", "d"]), {"source": pa.array(["web", None, "new", "code"])})
    out = agent.score(batch)
    assert [agent.labels[i] for i in out.labels] == ["web", OTHER, OTHER, "code"]
    assert np.isnan(out.scores).all()


def test_non_string_column_values(tmp_path: Path) -> None:
    agent = MetadataAgent.create("year", {"column": "year"}, context(tmp_path, [2020, 2021]))
    out = agent.score(DocBatch(pa.array(["a", "b"]), {"year": pa.array([2021, 1999])}))
    assert [agent.labels[i] for i in out.labels] == ["2021", OTHER]


def test_needs_a_column_and_bounded_labels(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--column is required"):
        MetadataAgent.create("d", {}, context(tmp_path, []))
    with pytest.raises(AgentError, match="distinct values"):
        MetadataAgent.create("d", {"column": "id"}, context(tmp_path, list(range(20_000))))


def test_a_value_named_other_keeps_its_own_label(tmp_path: Path) -> None:
    """A column value literally `(other)` is not merged with the catch-all of unseen values and nulls."""
    agent = MetadataAgent.create("d", {"column": "source"}, context(tmp_path, ["web", OTHER, f"({OTHER})"]))
    assert len(set(agent.labels)) == len(agent.labels) == 4
    assert agent.labels[-1] == f"(({OTHER}))"
    batch = DocBatch(pa.array(["a"] * 4), {"source": pa.array([OTHER, "web", "new", None])})
    labels = agent.score(batch).labels.tolist()
    assert [agent.labels[i] for i in labels] == [OTHER, "web", f"(({OTHER}))", f"(({OTHER}))"]
    assert labels[0] != labels[2]
