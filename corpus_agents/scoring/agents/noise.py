"""Noise agent: a control that labels documents at random, uniformly over `labels` labels.

It carries no signal by construction, so it shows what a console does with an agent that has none: dynamic
collaboration weights should push it to the floor, fixed weights keep giving it its share. A document's
label and score are a hash of (seed, doc_id), not draws from a random stream, so they do not depend on batch
boundaries, shard order or which worker scores the shard.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from corpus_agents.config import bounded
from corpus_agents.scoring.agents.base import (
    Agent,
    AgentContext,
    AgentError,
    AgentOptions,
    ScoreResult,
)
from corpus_agents.scoring.corpus import DocBatch

MAX_LABELS = 1000


@dataclass
class NoiseOptions(AgentOptions):
    labels: int = bounded(5, ge=2, le=MAX_LABELS)  # number of labels, each drawn with probability 1/labels
    seed: int = bounded(0, ge=0, lt=2**63)  # a different seed labels every document anew


def _mix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 (wrapping arithmetic): a bijection whose outputs look uniform even
    for consecutive inputs such as the doc ids of one shard."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def noise_hash(seed: int, doc_ids: np.ndarray) -> np.ndarray:
    """A uint64 hash of each (seed, doc_id) pair."""
    key = _mix(np.array([seed], dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15))
    return _mix(np.asarray(doc_ids, dtype=np.int64).view(np.uint64) ^ key)


def noise_labels(seed: int, doc_ids: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) of the documents: the label from the hash's high 32 bits (Lemire's multiply-shift,
    uniform over `n_labels` up to 2^-32), the score in [0, 1) from its low 32 bits."""
    h = noise_hash(seed, doc_ids)
    high, low = h >> np.uint64(32), h & np.uint64(0xFFFFFFFF)
    labels = ((high * np.uint64(n_labels)) >> np.uint64(32)).astype(np.int32)
    return labels, (low.astype(np.float64) / 2**32).astype(np.float32)


class NoiseAgent(Agent):
    kind = "noise"
    options_type = NoiseOptions

    @classmethod
    def create(
        cls, name: str, options: NoiseOptions | Mapping[str, Any], context: AgentContext
    ) -> NoiseAgent:
        options = NoiseOptions.of(options)
        width = len(str(options.labels - 1))
        labels = [f"n{i:0{width}d}" for i in range(options.labels)]
        return cls(name, {"labels": labels, "seed": options.seed})

    def score(self, batch: DocBatch) -> ScoreResult:
        if batch.doc_ids is None:
            raise AgentError(f"agent {self.name!r}: a noise agent needs the documents' ids")
        labels, scores = noise_labels(self.config["seed"], batch.doc_ids, len(self.labels))
        return ScoreResult(labels, scores)


__all__ = ["NoiseAgent", "NoiseOptions", "noise_labels"]
