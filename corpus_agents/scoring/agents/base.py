"""The agent base class: one job, turn a batch of documents into a label and a raw score per document.

Concrete agents implement `create` (build the config when a user adds the agent: fit a model, discover
labels), `labels`, `model_files` and `score`. The base class owns fingerprinting and lazy model loading, so
an agent is cheap to construct and to pickle to worker processes. Batches (`DocBatch`) come from the reading
layer, `corpus`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from corpus_agents.config import ConfigError, Section, key_path
from corpus_agents.errors import AgentError
from corpus_agents.storage import atomic_path

if TYPE_CHECKING:
    from corpus_agents.scoring.corpus import DocBatch


@dataclass
class ScoreResult:
    """Per-document output of an agent: `labels` index into `Agent.labels` (-1 = no label), `scores` raw values.

    `scores` may contain NaN where the agent has no raw score for a document (or none at all).
    """

    labels: np.ndarray  # int32, -1 where the document could not be labelled
    scores: np.ndarray  # float32, NaN where there is no raw score


def hash_path(path: str | os.PathLike, h: hashlib._Hash | None = None) -> str:
    """Content hash of a model file or of every file under a model directory (names + bytes)."""
    h = h or hashlib.blake2b(digest_size=16)
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def file_stamp(path: str | os.PathLike) -> tuple:
    """(name, inode, size, mtime) of a model file or of every file under a model directory: cheap, and
    different once a file is rewritten or replaced at the same path."""
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    stats = [(str(f), f.stat()) for f in files if f.exists()]
    return tuple((name, st.st_ino, st.st_size, st.st_mtime_ns) for name, st in stats)


class FileHashes:
    """Content hashes of model files (`hash_path`) remembered in a JSON file by each file's path, size and
    mtime (to the nanosecond), as `make` and `rsync` judge a file unchanged: a model file is hashed again
    once it is rewritten or replaced, not by every run. Files under `root` (the workspace) are remembered by
    their path inside it, so a moved or copied workspace keeps them. A missing or unreadable file of hashes
    is an empty one."""

    def __init__(self, path: str | os.PathLike, root: str | os.PathLike | None = None):
        self.path = Path(path)
        self.root = None if root is None else Path(root).resolve()
        try:
            known = json.loads(self.path.read_text())
        except (OSError, ValueError):
            known = {}
        self._known: dict[str, Any] = known if isinstance(known, dict) else {}
        self._changed = False

    def _key(self, path: Path) -> str:
        if self.root is not None and path.is_relative_to(self.root):
            return f"$WS/{path.relative_to(self.root).as_posix()}"
        return str(path)

    @staticmethod
    def _stamp(path: Path) -> list[list[Any]]:
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        stats = [(f.relative_to(path).as_posix() if path.is_dir() else f.name, f.stat()) for f in files]
        return [[name, st.st_size, st.st_mtime_ns] for name, st in stats]

    def hash(self, path: str | os.PathLike) -> str:
        """`hash_path(path)`, from memory while the file's size and mtime are unchanged."""
        resolved = Path(path).resolve()
        key, stamp = self._key(resolved), self._stamp(resolved)
        known = self._known.get(key)
        if isinstance(known, dict) and known.get("stamp") == stamp:
            return known["hash"]
        digest = hash_path(resolved)
        self._known[key] = {"stamp": stamp, "hash": digest}
        self._changed = True
        return digest

    def save(self) -> None:
        """Write the hashes back (atomically) if any was added; a cache that cannot be written is skipped."""
        if not self._changed:
            return
        try:
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps(self._known, indent=0, sort_keys=True))
        except OSError:
            return
        self._changed = False


class AgentOptions(Section):
    """Base of each agent kind's options dataclass: the one description of a kind's options that the
    `agent add` flags, a pipeline's `agents:` entries and `Agent.create` all use (checked by config.build)."""

    where = "--"

    @classmethod
    def of(cls, options: AgentOptions | Mapping[str, Any]) -> Any:
        """`options` itself if it is already this kind's options, else built (and checked) from a mapping."""
        return options if isinstance(options, cls) else cls.from_dict(options)


def check_bins(edges: list[float] | None, key: str) -> None:
    """Bin edges must be at least two strictly increasing numbers (None: the kind's default bins)."""
    if edges is not None and (len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:]))):
        raise ConfigError(f"{key} must be at least two strictly increasing numbers, got {edges}")


def bin_labels(edges: list[float]) -> list[str]:
    """Readable names of the bins [e0,e1) [e1,e2) ... [e_{n-1}, e_n]."""

    def fmt(x: float) -> str:
        return f"{x:g}"

    return [f"{fmt(a)}-{fmt(b)}" for a, b in zip(edges, edges[1:])]


def quantile_edges(quantiles: list[float], key: str) -> list[float]:
    """Bin edges from a column's quantiles at 0, 1/q, ..., 1: rounded to 6 significant digits (so each bin's
    name states its edges exactly) with repeated edges merged, which a column with few distinct values has."""
    edges = sorted({float(f"{q:.6g}") for q in quantiles})
    if len(edges) < 2:
        raise AgentError(f"{key}: the values are all equal ({edges[0] if edges else 'none'}); give --bins")
    return edges


def check_binning(bins: list[float] | None, quantiles: int | None, where: str) -> None:
    """`bins` (edges) or `quantiles` (a count), not both (neither: the kind's default quantiles)."""
    check_bins(bins, key_path(where, "bins"))
    if bins is not None and quantiles is not None:
        raise ConfigError(f"give {key_path(where, 'bins')} or {key_path(where, 'quantiles')}, not both")


def digitize(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Bin index of each value; values below/above the range clamp into the end bins, NaN -> -1."""
    idx = np.searchsorted(np.asarray(edges[1:-1]), values, side="right").astype(np.int32)
    idx[np.isnan(values)] = -1
    return idx


#: Models loaded in this process, by agent kind and config: agents arrive pickled (without their model)
#: with every task, and a worker process must not reload the same model for each shard.
_LOADED_MODELS: dict[tuple[str, str], Any] = {}


class Agent:
    """Base class. Subclasses set `kind`, implement `create`, `labels`, `score` and, if they use models,
    `model_files` and `load_model`."""

    kind: ClassVar[str] = ""
    #: Python modules this agent needs beyond the core dependencies, with the pip package to install.
    requires: ClassVar[dict[str, str]] = {}
    #: The extra of corpus-agents that brings them (`pip install 'corpus-agents[EXTRA]'`), if any.
    extra: ClassVar[str | None] = None
    #: True if the agent benefits from a GPU (executors place it accordingly).
    uses_gpu: ClassVar[bool] = False
    #: Config keys that change how fast an agent runs, not what it outputs: left out of the fingerprint.
    runtime_keys: ClassVar[frozenset[str]] = frozenset()
    #: The kind's options dataclass (what `create` takes).
    options_type: ClassVar[type[AgentOptions]]

    def __init__(self, name: str, config: dict[str, Any]):
        self.name = name
        self.config = dict(config)
        #: The config as the catalog stores it (workspace paths relative), which the fingerprint hashes so
        #: that a moved workspace keeps its scores; None until the catalog sets it.
        self.stored_config: dict[str, Any] | None = None
        self._model: Any = None

    # ----- what subclasses implement -------------------------------------------------------------
    @classmethod
    def create(cls, name: str, options: AgentOptions | Mapping[str, Any], context: AgentContext) -> Agent:
        """Build an agent from its options when a user adds it (may fit a model into the workspace); the
        config it stores is a plain JSON dict."""
        raise NotImplementedError

    @property
    def labels(self) -> list[str]:
        """Declared label names; `ScoreResult.labels` index into this list."""
        return list(self.config["labels"])

    @property
    def columns(self) -> list[str]:
        """Extra corpus columns the agent reads besides the text column."""
        return []

    def model_files(self) -> list[str]:
        """Files or directories whose content is part of the fingerprint."""
        return []

    def load_model(self) -> Any:
        """Load the model (called once per process, on first use)."""
        return None

    def score(self, batch: DocBatch) -> ScoreResult:
        raise NotImplementedError

    # ----- shared machinery ----------------------------------------------------------------------
    @property
    def model(self) -> Any:
        """The loaded model, shared by every copy of this agent in the process (a worker loads it once)."""
        if self._model is None:
            stamps = tuple(file_stamp(f) for f in self.model_files())  # a replaced model file is reloaded
            key = (self.kind, json.dumps(self.config, sort_keys=True, default=str), stamps)
            if key not in _LOADED_MODELS:
                _LOADED_MODELS[key] = self.load_model()
            self._model = _LOADED_MODELS[key]
        return self._model

    def fingerprint(self, hashes: FileHashes | None = None) -> str:
        """Hash of kind + config + model file contents: any change forces this agent to rescore. `hashes`
        remembers model files' hashes between runs (the driver keeps one in the workspace)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(self.kind.encode())
        config = self.config if self.stored_config is None else self.stored_config
        output_config = {k: v for k, v in config.items() if k not in self.runtime_keys}
        h.update(json.dumps(output_config, sort_keys=True, default=str).encode())
        for f in self.model_files():
            if not os.path.exists(f):
                raise AgentError(f"agent {self.name!r}: model file {f} is missing")
            h.update((hashes.hash(f) if hashes is not None else hash_path(f)).encode())
        return h.hexdigest()

    @classmethod
    def check_requirements(cls) -> None:
        """A one-line install hint if a package this kind needs is missing (checked before any import)."""
        import importlib.util

        for module, package in cls.requires.items():
            if importlib.util.find_spec(module) is None:
                install = (
                    f"pip install 'corpus-agents[{cls.extra}]'" if cls.extra else f"pip install {package}"
                )
                raise AgentError(f"agent kind {cls.kind!r} needs the package {package!r}: {install}")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_model"] = None  # models are reloaded lazily in the receiving process
        return state


@dataclass
class AgentContext:
    """What `Agent.create` may use: where to keep fitted models and how to sample the corpus."""

    workspace_dir: Path
    models_dir: Path
    sample_texts: Any = None  # callable (n, seed) -> list[str]: a seeded random sample of corpus texts
    sample_columns: Any = None  # callable (columns, n, seed) -> pa.Table: sample of metadata columns
    distinct_values: Any = None  # callable (column) -> list of distinct values over the whole corpus
    column_types: Any = None  # callable (column) -> {shard uri: Arrow type of the column}
    column_quantiles: Any = None  # callable (column, fractions) -> (quantiles over the corpus, values)
    extra: dict[str, Any] = field(default_factory=dict)
