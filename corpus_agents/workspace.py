"""A workspace and what one does with it: register a corpus, add agents, score, summarise, query.

The `corpus-agents` commands and the demo are thin layers over these operations, so a notebook can do the
same: `with Workspace.create("ws") as ws: ws.add_corpus(["shards/*.parquet"]); ws.add_agent(...)`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from corpus_agents import storage
from corpus_agents.errors import CorpusAgentsError, WorkspaceError
from corpus_agents.scoring.agents import Agent, AgentContext, AgentOptions, agent_class
from corpus_agents.scoring.catalog import CATALOG_FILE, GATE_FILE, LOCK_FILE, Catalog
from corpus_agents.scoring.corpus import RegisterReport, distinct_values, register_corpus, sample_texts
from corpus_agents.scoring.driver import RunSummary, remove_stale_files, run_scoring
from corpus_agents.scoring.hub import HubSource, MaterializeReport, materialize_into_workspace


@dataclass(frozen=True)
class CorpusSize:
    shards: int
    documents: int
    bytes: int


@dataclass(frozen=True)
class AgentStatus:
    """One agent's parts: committed (complete / partial), pending for its current config, failed."""

    name: str
    kind: str
    labels: int
    committed: int
    partial: int
    pending: int | None  # None when the agent's fingerprint cannot be computed (see `pending_error`)
    failed: int
    docs_scored: int
    pending_error: str | None = None


@dataclass(frozen=True)
class WorkspaceStatus:
    directory: Path
    corpus: CorpusSize
    agents: list[AgentStatus]
    failures: list[tuple[str, int, str]]  # (agent, shard_id, error) of the parts that failed last
    inconsistent: list[tuple[str, int, str]] = field(default_factory=list)  # rescored by `score`


class Workspace:
    """An open workspace: its catalog, locked while open. Use as a context manager or call `close()`."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    @classmethod
    def open(
        cls, path: str | os.PathLike, *, command: str | None = None, read_only: bool = False
    ) -> Workspace:
        """Open an existing workspace: to change it (locked while open), or `read_only` to look at it, also
        while a run is going (`status`, `query`)."""
        return cls(Catalog(path, command=command, read_only=read_only))

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        text_column: str = "text",
        parts_url: str | None = None,
        command: str | None = None,
    ) -> Workspace:
        """Create a workspace, or open an existing one to register more shards. The text column is fixed once
        a shard is registered, the parts URL once a part is committed."""
        catalog = Catalog(path, create=True, command=command)
        try:
            stored = catalog.get_meta("text_column")
            if stored and stored != text_column and catalog.shards():
                raise WorkspaceError(
                    f"workspace {catalog.dir} uses text column {stored!r}, not {text_column!r}"
                )
            catalog.set_meta("text_column", text_column)
            if parts_url:
                catalog.set_parts_url(parts_url)
        except BaseException:
            catalog.close()
            raise
        return cls(catalog)

    @classmethod
    @contextlib.contextmanager
    def init(
        cls,
        path: str | os.PathLike,
        *,
        text_column: str = "text",
        parts_url: str | None = None,
        command: str | None = None,
    ) -> Iterator[Workspace]:
        """`create` for the `init` command: a workspace this call creates and that ends with no shard
        registered (a glob that matches nothing, only unreadable shards, an error) is removed again, so a
        failed init leaves nothing behind. Only what this call created goes, and nothing once a dataset
        streamed into WS/corpus (a re-run resumes it)."""
        target = Path(path).expanduser().absolute()
        existed = target.exists()
        before = {p.name for p in target.iterdir()} if existed and target.is_dir() else set()
        ws = cls.create(target, text_column=text_column, parts_url=parts_url, command=command)
        registered = False
        try:
            yield ws
        finally:
            with contextlib.suppress(Exception):  # a broken catalog counts as empty: nothing to keep
                registered = bool(ws.catalog.shards())
            ws.close()
            if not registered and not (target / "corpus").exists():
                for name in (CATALOG_FILE, f"{CATALOG_FILE}.wal", LOCK_FILE, GATE_FILE, "parts", "models"):
                    if name not in before:
                        storage.remove_path(target / name)
                if not existed and not any(target.iterdir()):
                    target.rmdir()

    @property
    def dir(self) -> Path:
        return self.catalog.dir

    @property
    def text_column(self) -> str:
        return self.catalog.get_meta("text_column") or "text"

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.catalog.close()

    # ----- corpus ------------------------------------------------------------------------------------
    def add_corpus(self, patterns: list[str], *, threads: int = 4, refresh: bool = False) -> RegisterReport:
        """Register the Parquet shards that `patterns` (paths, globs, URLs) match; known ones are skipped.
        With `refresh`, known shards are checked byte for byte and changed ones re-registered (their parts are
        rescored by the next `score`); no patterns then means every known shard."""
        if refresh and not patterns:
            patterns = [s.uri for s in self.catalog.shards()]
        return register_corpus(self.catalog, list(patterns), self.text_column, threads, refresh=refresh)

    def stream_from_hub(self, source: HubSource, *, show_progress: bool = True) -> MaterializeReport:
        """Stream a dataset into Parquet shards under WS/corpus/ (a re-run resumes after the last complete
        shard); register them with `add_corpus([str(report.directory)])`."""
        return materialize_into_workspace(self.catalog, source, self.text_column, show_progress=show_progress)

    def missing_shards(self) -> list[str]:
        """Registered local shards whose file is gone (deleted or moved): scoring and reading them fail.
        Shards on object storage are not checked (a request each)."""
        return [
            s.uri for s in self.catalog.shards() if not storage.is_url(s.uri) and not os.path.exists(s.uri)
        ]

    def corpus_size(self) -> CorpusSize:
        return CorpusSize(*self.catalog.corpus_size())

    # ----- agents ------------------------------------------------------------------------------------
    def agent_names(self) -> list[str]:
        return [name for name, _, _ in self.catalog.agent_rows()]

    def agent_context(self) -> AgentContext:
        """What an agent being created may use: where models go, and samples of this workspace's corpus."""
        return AgentContext(
            workspace_dir=self.dir,
            models_dir=self.catalog.models_dir,
            sample_texts=lambda n, seed=0: sample_texts(self.catalog, n, seed),
            distinct_values=lambda column: distinct_values(self.catalog, column),
        )

    def add_agent(
        self, name: str, kind: str, options: AgentOptions | Mapping[str, Any], *, replace: bool = False
    ) -> Agent:
        """Create an agent (fitting what needs fitting, discovering its labels) and register it; an existing
        agent of that name is an error unless `replace` (its scores are then dropped)."""
        self.catalog.check_agent_name(name, replace=replace)
        agent = agent_class(kind).create(name, options, self.agent_context())
        self.catalog.add_agent(agent, replace=replace)
        return agent

    def remove_agent(self, name: str) -> None:
        """Remove an agent, its scores and its part files."""
        self.catalog.remove_agent(name)
        remove_stale_files(self.catalog, keep_uncommitted=False)

    # ----- scoring and status -------------------------------------------------------------------------
    def score(
        self,
        agents: list[str] | None = None,
        *,
        workers: int | None = None,
        executor: str = "local",
        **options: Any,
    ) -> RunSummary:
        """Score every pending (agent, shard) part (all agents, or the named ones). `workers` defaults to the
        CPU cores (local) or the cluster's CPUs (ray); `options` are those of `driver.run_scoring`."""
        if executor == "local":
            workers = workers or os.cpu_count() or 1
        return run_scoring(self.catalog, agents, workers=workers, executor=executor, **options)

    def status(self) -> WorkspaceStatus:
        """The corpus, each agent's parts (pending = shards without a complete part for its current config)
        and the parts that failed."""
        corpus = self.corpus_size()
        parts = self.catalog.parts()
        agents = []
        for name, kind, labels, committed, partial, failed, scored in self.catalog.run(
            "catalog.sql", "status_agents"
        ):
            pending, error = None, None
            try:
                fp = self.catalog.agents([name])[0].fingerprint()
                current = sum(
                    1 for (a, _), p in parts.items() if a == name and p.complete and p.fingerprint == fp
                )
                pending = corpus.shards - current
            except CorpusAgentsError as exc:
                error = str(exc)
            agents.append(AgentStatus(name, kind, labels, committed, partial, pending, failed, scored, error))
        return WorkspaceStatus(
            self.dir, corpus, agents, self.catalog.failures(), self.catalog.inconsistent_parts()
        )

    def query(self, sql: str) -> pa.Table:
        """Run SQL on the catalog (tables, and the `doc_labels` and `documents` views); the result as Arrow.
        A read-only workspace runs only statements that read (SELECT, EXPLAIN, ...)."""
        return self.catalog.query(sql)
