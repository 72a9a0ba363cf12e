"""fastText agent: any fastText `.bin`/`.ftz` model, or a DCLM-style quality classifier fitted in the workspace.

Label modes: the predicted class (labels = the model's classes), or, with `label`, a bin of that class's
probability (labels = the bins). Fitting trains positives (a reference set) against negatives (a random
corpus sample) and keeps the model under the workspace's `models/` directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from corpus_agents.config import ConfigError, bounded, key_path
from corpus_agents.names import check_agent_name, inside
from corpus_agents.scoring.agents.base import (
    Agent,
    AgentContext,
    AgentError,
    AgentOptions,
    ScoreResult,
    bin_labels,
    check_bins,
    digitize,
)
from corpus_agents.scoring.corpus import DocBatch
from corpus_agents.storage import atomic_path

PREFIX = "__label__"
DEFAULT_PROBABILITY_BINS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
#: fastText training parameters for fitted classifiers: a bigram model as in DCLM's quality filter, with
#: 200k hash buckets (the default 2M makes a 500 MB model) and more epochs at a higher rate on small sets.
FIT_PARAMS = {"wordNgrams": 2, "dim": 64, "minCount": 2, "bucket": 200_000}
SMALL_FIT = 20_000  # fewer examples than this train longer at a higher rate


def fit_params(num_examples: int) -> dict[str, Any]:
    schedule = {"epoch": 25, "lr": 0.5} if num_examples < SMALL_FIT else {"epoch": 5, "lr": 0.1}
    return {**FIT_PARAMS, **schedule}


M_PERTURB = -6  # glibc mallopt parameter
_MALLOC_LOCK = threading.Lock()


@contextlib.contextmanager
def zeroed_allocations() -> Iterator[None]:
    """Make glibc's malloc hand out zero-filled memory while fastText trains.

    fastText 0.9.2 with thread=1 initialises only the first tenth of its input matrix and leaves the rest as
    allocated: fresh pages are zero, but reused heap memory (after torch ran in the process, say) is garbage
    that makes training diverge ("Encountered NaN") or irreproducible. M_PERTURB=0xff memsets new blocks to 0
    (and freed ones to 0xff); a no-op where libc has no mallopt.
    """
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None) if sys.platform.startswith("linux") else None
    with _MALLOC_LOCK:
        if mallopt:
            mallopt(M_PERTURB, 0xFF)
        try:
            yield
        finally:
            if mallopt:
                mallopt(M_PERTURB, 0)


def load_fasttext(path: str) -> Any:
    """Load a fastText model quietly (the library prints a deprecation warning on every load)."""
    import fasttext

    fasttext.FastText.eprint = lambda *args, **kwargs: None
    try:
        return fasttext.load_model(path)
    except ValueError as exc:
        raise AgentError(f"cannot load fastText model {path}: {exc}") from None


def train_fasttext(texts: Sequence[str], labels: Sequence[str], path: Path, **params: Any) -> None:
    """Train a supervised fastText classifier on (text, label) pairs and save it to `path` atomically."""
    import fasttext

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", suffix=".txt", dir=path.parent, delete=False, encoding="utf-8"
    ) as fh:
        train_file = fh.name
        for text, label in zip(texts, labels):
            line = " ".join(text.split())
            if line:
                fh.write(f"{PREFIX}{label} {line}\n")
    try:
        # thread=1 for reproducible models; zeroed allocations because this fastText build then initialises
        # only a tenth of the input matrix and leaves the rest as allocated (see zeroed_allocations).
        with zeroed_allocations():
            model = fasttext.train_supervised(
                train_file, verbose=0, seed=0, thread=1, **{**fit_params(len(texts)), **params}
            )
        with atomic_path(path) as tmp:
            model.save_model(str(tmp))
    finally:
        os.unlink(train_file)


def model_file(context: AgentContext, name: str, suffix: str) -> Path:
    """Where agent `name` keeps a model it fits: `models/<name><suffix>`, the name checked and the path kept
    inside the models directory before anything is fitted or written."""
    path = Path(context.models_dir) / f"{check_agent_name(name)}{suffix}"
    inside(context.models_dir, path)
    return path


def read_reference_texts(path: str, columns: list[str] | None) -> list[str]:
    """Texts of a reference Parquet file: the given columns joined, or `text`, or all string columns."""
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise AgentError(f"cannot read reference set {path}: {exc}") from None
    import pyarrow as pa

    if columns:
        names = columns
        missing = [c for c in names if c not in table.column_names]
        if missing:
            raise AgentError(
                f"reference set {path} has no column {missing[0]!r}; columns: {table.column_names}"
            )
    elif "text" in table.column_names:
        names = ["text"]
    else:
        names = [
            f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
        ]
        if not names:
            raise AgentError(f"reference set {path} has no string column; pass the columns to use")
    rows = zip(*(table.column(c).to_pylist() for c in names))
    return [" ".join(str(v) for v in row if v) for row in rows]


@dataclass
class FastTextOptions(AgentOptions):
    """A given fastText model (`model`), or one fitted DCLM-style on a reference set (`fit_positive`)."""

    model: str | None = None  # a .bin/.ftz file
    label: str | None = None  # the class whose probability is the score, binned into labels by `bins`
    bins: list[float] | None = None  # bin edges of that probability (default 0, 0.2, ..., 1)
    fit_positive: str | None = None  # fit on this reference Parquet as positives (label `hq`)
    positive_columns: list[str] | None = None  # columns joined as text (default: text or all strings)
    fit_negative: str = "sample"  # negatives: `sample` (random corpus documents) or a Parquet file
    negative_columns: list[str] | None = None
    fit_samples: int = bounded(20_000, gt=0)  # at most this many positives (and as many negatives)

    def validate(self, where: str) -> None:
        if (self.model is None) == (self.fit_positive is None):
            raise ConfigError(
                f"a fasttext agent needs exactly one of {key_path(where, 'model')} (a model file) or "
                f"{key_path(where, 'fit_positive')} (a reference Parquet to fit on)"
            )
        check_bins(self.bins, key_path(where, "bins"))
        if self.bins is not None and self.label is None and self.fit_positive is None:
            raise ConfigError(
                f"{key_path(where, 'bins')} needs {key_path(where, 'label')} (the class whose probability is binned)"
            )


class FastTextAgent(Agent):
    kind = "fasttext"
    requires = {"fasttext": "fasttext-numpy2-wheel"}
    options_type = FastTextOptions

    @classmethod
    def create(
        cls, name: str, options: FastTextOptions | Mapping[str, Any], context: AgentContext
    ) -> FastTextAgent:
        options = FastTextOptions.of(options)
        if options.fit_positive is not None:
            model_path = cls._fit(name, options, context)
            label = options.label or "hq"
        else:
            model_path = Path(options.model).expanduser().resolve()
            if not model_path.is_file():
                raise AgentError(f"fastText model {options.model} does not exist")
            label = options.label
        model = load_fasttext(str(model_path))
        classes = [lab.removeprefix(PREFIX) for lab in model.get_labels()]
        config: dict[str, Any] = {"model": str(model_path), "classes": classes}
        if label:
            label = label.removeprefix(PREFIX)
            if label not in classes:
                raise AgentError(
                    f"model {model_path} has no class {label!r}; classes: {', '.join(classes[:20])}"
                )
            edges = options.bins or DEFAULT_PROBABILITY_BINS
            config.update(label=label, bins=edges, labels=bin_labels(edges))
        else:
            config["labels"] = classes
        return cls(name, config)

    @staticmethod
    def _fit(name: str, options: FastTextOptions, context: AgentContext) -> Path:
        """DCLM-style: reference texts are positives (`hq`), a random corpus sample (or a file) negatives (`cc`)."""
        path = model_file(context, name, ".fasttext.bin")
        positives = read_reference_texts(options.fit_positive, options.positive_columns)
        limit = options.fit_samples
        rng = np.random.default_rng(0)
        if len(positives) > limit:
            positives = [positives[i] for i in sorted(rng.choice(len(positives), limit, replace=False))]
        if options.fit_negative == "sample":
            negatives = context.sample_texts(len(positives), seed=0)
        else:
            negatives = read_reference_texts(options.fit_negative, options.negative_columns)
        if not positives or not negatives:
            raise AgentError(f"agent {name!r}: cannot fit a classifier without positive and negative texts")
        texts = positives + negatives
        labels = ["hq"] * len(positives) + ["cc"] * len(negatives)
        order = rng.permutation(len(texts))
        train_fasttext([texts[i] for i in order], [labels[i] for i in order], path)
        return path

    def model_files(self) -> list[str]:
        return [self.config["model"]]

    def load_model(self) -> Any:
        return load_fasttext(self.config["model"])

    def score(self, batch: DocBatch) -> ScoreResult:
        """Blank (null, empty, whitespace) documents get no label and no score: fastText would only return
        its class prior for them."""
        texts = batch.single_line_texts
        n = len(texts)
        labels = np.full(n, -1, dtype=np.int32)
        scores = np.full(n, np.nan, dtype=np.float32)
        keep = [i for i, t in enumerate(texts) if t and not t.isspace()]
        if not keep:
            return ScoreResult(labels, scores)
        texts = [texts[i] for i in keep] if len(keep) < n else texts
        if "label" in self.config:
            target = PREFIX + self.config["label"]
            classes = len(self.config["classes"])
            # k = all classes: the target's probability is exact even when it is not among the top ones.
            predicted, probs = self.model.predict(texts, k=-1 if classes > 2 else classes)
            values = [p[labs.index(target)] if target in labs else 0.0 for labs, p in zip(predicted, probs)]
            scores[keep] = np.minimum(values, 1.0)  # fastText's softmax can exceed 1 by a rounding error
            labels[keep] = digitize(scores[keep], self.config["bins"])
            return ScoreResult(labels, scores)
        predicted, probs = self.model.predict(texts, k=1)
        index = {PREFIX + c: i for i, c in enumerate(self.config["classes"])}
        for i, labs, p in zip(keep, predicted, probs):
            if labs:
                labels[i] = index[labs[0]]
                scores[i] = min(p[0], 1.0)
        return ScoreResult(labels, scores)


__all__ = ["FastTextAgent", "FastTextOptions", "fit_params", "load_fasttext", "train_fasttext"]
