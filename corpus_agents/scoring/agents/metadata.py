"""Metadata agent: the label is the value of a corpus column (e.g. the source domain); no raw score.

The label set is discovered over the whole corpus when the agent is added. Values seen later that were
not there then, and nulls, get the label `(other)` (the last label). A column with a value literally equal to
`(other)` keeps that value as a label of its own, and the catch-all becomes `((other))` (parenthesised until
it names no value). Nested fields are addressed with dots (`meta.source`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from corpus_agents.config import ConfigError, key_path
from corpus_agents.scoring.agents.base import (
    Agent,
    AgentContext,
    AgentError,
    AgentOptions,
    ScoreResult,
)
from corpus_agents.scoring.corpus import DocBatch

OTHER = "(other)"
MAX_LABELS = 10_000


@dataclass
class MetadataOptions(AgentOptions):
    column: str  # the corpus column whose values are the labels; dots address nested fields (meta.source)

    def validate(self, where: str) -> None:
        if not self.column.strip():
            raise ConfigError(f"{key_path(where, 'column')} is empty")


def other_label(values: list[str]) -> str:
    """The catch-all label's name: `(other)`, parenthesised again while a column value has that name."""
    label, taken = OTHER, set(values)
    while label in taken:
        label = f"({label})"
    return label


class MetadataAgent(Agent):
    kind = "metadata"
    options_type = MetadataOptions

    @classmethod
    def create(
        cls, name: str, options: MetadataOptions | Mapping[str, Any], context: AgentContext
    ) -> MetadataAgent:
        column = MetadataOptions.of(options).column
        values = [v for v in context.distinct_values(column) if v is not None]
        if len(values) > MAX_LABELS:
            numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
            hint = (
                f"a numeric column is binned by --kind column --column {column} (--bins EDGES or --quantiles N)"
                if numeric
                else "map the column to fewer values first"
            )
            raise AgentError(
                f"column {column!r} has {len(values):,} distinct values; a metadata agent takes at most "
                f"{MAX_LABELS:,}: {hint}"
            )
        values = sorted(str(v) for v in values)
        return cls(name, {"column": column, "labels": values + [other_label(values)]})

    @property
    def columns(self) -> list[str]:
        return [self.config["column"]]

    def score(self, batch: DocBatch) -> ScoreResult:
        values = batch.column(self.config["column"])
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            values = values.cast(pa.string())
        known = pa.array(self.config["labels"][:-1], pa.string())
        index = pc.index_in(values, value_set=known).fill_null(len(known))
        labels = np.asarray(index.to_numpy(zero_copy_only=False), dtype=np.int32)
        return ScoreResult(labels, np.full(len(labels), np.nan, dtype=np.float32))
