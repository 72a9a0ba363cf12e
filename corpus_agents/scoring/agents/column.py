"""Column agent: an existing numeric score in the shards (FineWeb-Edu's `score`, DCLM's `fasttext_score`)
as an agent, without rewriting the shards: the label is the value's bin, the raw score the value itself.

Bins are given edges (`--bins 0,1,2,3,4,5`) or `--quantiles N` (default 5), equal-count bins whose edges
DuckDB computes once over the whole corpus when the agent is added and that are stored in its config, so
later scoring never depends on which shards it sees. Values outside the edges fall into the end bins;
nulls and NaN have no label (they count as unscored). Nested fields are addressed with dots (`meta.score`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from corpus_agents.config import ConfigError, bounded, key_path
from corpus_agents.scoring.agents.base import (
    Agent,
    AgentContext,
    AgentError,
    AgentOptions,
    ScoreResult,
    bin_labels,
    check_binning,
    digitize,
    quantile_edges,
)
from corpus_agents.scoring.corpus import DocBatch

DEFAULT_QUANTILES = 5
MAX_BINS = 1000


@dataclass
class ColumnOptions(AgentOptions):
    column: str  # a numeric corpus column; dots address nested fields (meta.score)
    bins: list[float] | None = None  # bin edges; values outside them fall into the end bins
    quantiles: int | None = bounded(None, ge=2, le=MAX_BINS)  # equal-count bins over the corpus (default 5)

    def validate(self, where: str) -> None:
        if not self.column.strip():
            raise ConfigError(f"{key_path(where, 'column')} is empty")
        check_binning(self.bins, self.quantiles, where)


def is_numeric(dtype: pa.DataType) -> bool:
    return pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype)


def numeric_values(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """float64 values with NaN for nulls."""
    return np.asarray(pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def binned(values: np.ndarray, edges: list[float]) -> ScoreResult:
    """Label = the value's bin (-1 for NaN), score = the value."""
    return ScoreResult(digitize(values, edges), values.astype(np.float32))


def quantile_fractions(quantiles: int) -> list[float]:
    return [i / quantiles for i in range(quantiles + 1)]


class ColumnAgent(Agent):
    kind = "column"
    options_type = ColumnOptions

    @classmethod
    def create(
        cls, name: str, options: ColumnOptions | Mapping[str, Any], context: AgentContext
    ) -> ColumnAgent:
        options = ColumnOptions.of(options)
        column = options.column
        for uri, dtype in context.column_types(column).items():
            if not is_numeric(dtype):
                raise AgentError(
                    f"column {column!r} is {dtype} in shard {uri}; a column agent needs a numeric column "
                    f"(for labels use --kind metadata)"
                )
        edges, quantiles = options.bins, None
        if edges is None:
            quantiles = options.quantiles or DEFAULT_QUANTILES
            values, count = context.column_quantiles(column, quantile_fractions(quantiles))
            if not count:
                raise AgentError(f"column {column!r} has no values to take quantiles of; give --bins")
            edges = quantile_edges(values, f"column {column!r}")
        return cls(
            name, {"column": column, "bins": edges, "quantiles": quantiles, "labels": bin_labels(edges)}
        )

    @property
    def columns(self) -> list[str]:
        return [self.config["column"]]

    def score(self, batch: DocBatch) -> ScoreResult:
        return binned(numeric_values(batch.column(self.config["column"])), self.config["bins"])


__all__ = ["ColumnAgent", "ColumnOptions"]
