"""A workspace and what one does with it: register a corpus, add agents, score, summarise, query, look at
training runs and their selections.

This is the Python API (`corpus_agents.open`); the `corpus-agents` commands and the demo are thin layers
over the same operations:

    import corpus_agents
    with corpus_agents.open("ws", read_only=False) as ws:
        ws.add_agent("domain", "metadata", column="source")
        ws.score()
        df = ws.sql("SELECT domain, count(*) AS n FROM doc_labels GROUP BY ALL").pl()
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from corpus_agents import storage
from corpus_agents.config import SelectionMode
from corpus_agents.errors import CorpusAgentsError, WorkspaceError
from corpus_agents.names import check_run_id
from corpus_agents.scoring.agents import Agent, AgentContext, AgentOptions, agent_class, make_options
from corpus_agents.scoring.catalog import CATALOG_FILE, GATE_FILE, LOCK_FILE, Catalog
from corpus_agents.scoring.corpus import (
    RegisterReport,
    column_types,
    distinct_values,
    register_corpus,
    sample_texts,
)
from corpus_agents.scoring.driver import RunSummary, model_hashes, remove_stale_files, run_scoring
from corpus_agents.scoring.hub import HubSource, MaterializeReport, materialize_into_workspace

if TYPE_CHECKING:
    import duckdb


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

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (`status --json`): the directory as a string, failures as objects."""
        out = asdict(self)
        out["directory"] = str(self.directory)
        out["failures"] = [{"agent": a, "shard_id": s, "error": e} for a, s, e in self.failures]
        out["inconsistent"] = [{"agent": a, "shard_id": s, "why": w} for a, s, w in self.inconsistent]
        return out


@dataclass(frozen=True)
class AgentInfo:
    """A registered agent: its kind, label names and stored config (paths inside the workspace written as
    `$WS/...`; the labels are not repeated in `config`)."""

    name: str
    kind: str
    labels: list[str]
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def open_workspace(path: str | os.PathLike, read_only: bool = True) -> Workspace:
    """`corpus_agents.open`: an existing workspace. Read-only by default: no lock is taken, so several
    readers (notebooks, `query`) can share it, and every write is refused; `read_only=False` locks it for
    this process (add agents, score). Close it (or use `with`) to let a writer in."""
    return Workspace.open(path, read_only=read_only, command="python: corpus_agents.open")


class Workspace:
    """An open workspace: its catalog, locked while open unless read-only. Use as a context manager or call
    `close()`."""

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
    def read_only(self) -> bool:
        return self.catalog.read_only

    def _check_writable(self, action: str) -> None:
        if self.read_only:
            raise WorkspaceError(
                f"workspace {self.dir} is open read-only; open it with "
                f"corpus_agents.open(path, read_only=False) to {action}"
            )

    def __repr__(self) -> str:
        return f"<Workspace {self.dir}{' (read-only)' if self.read_only else ''}>"

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
        self._check_writable("register shards")
        if refresh and not patterns:
            patterns = [s.uri for s in self.catalog.shards()]
        return register_corpus(self.catalog, list(patterns), self.text_column, threads, refresh=refresh)

    def stream_from_hub(self, source: HubSource, *, show_progress: bool = True) -> MaterializeReport:
        """Stream a dataset into Parquet shards under WS/corpus/ (a re-run resumes after the last complete
        shard); register them with `add_corpus([str(report.directory)])`."""
        self._check_writable("stream a dataset into it")
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
    @property
    def agents(self) -> dict[str, AgentInfo]:
        """The registered agents by name, in the order they were added."""
        return {
            name: AgentInfo(
                name, kind, list(config.get("labels", [])), {k: v for k, v in config.items() if k != "labels"}
            )
            for name, kind, config in self.catalog.agent_rows()
        }

    def agent_names(self) -> list[str]:
        return [name for name, _, _ in self.catalog.agent_rows()]

    def agent_context(self) -> AgentContext:
        """What an agent being created may use: where models go, and samples of this workspace's corpus."""
        return AgentContext(
            workspace_dir=self.dir,
            models_dir=self.catalog.models_dir,
            sample_texts=lambda n, seed=0: sample_texts(self.catalog, n, seed),
            distinct_values=lambda column: distinct_values(self.catalog, column),
            column_types=lambda column: column_types(self.catalog, column),
            column_quantiles=self.catalog.column_quantiles,
        )

    def add_agent(
        self,
        name: str,
        kind: str,
        options: AgentOptions | Mapping[str, Any] | None = None,
        *,
        replace: bool = False,
        **values: Any,
    ) -> Agent:
        """Create an agent (fitting what needs fitting, discovering its labels) and register it; an existing
        agent of that name is an error unless `replace` (its scores are then dropped). Options are an
        `AgentOptions`, or a mapping and/or keywords named as `agent add`'s flags with underscores
        (`ws.add_agent("quality", "fasttext", fit_positive="ref.parquet")`), checked against the kind."""
        self._check_writable("add an agent")
        cls = agent_class(kind)
        if options is None or isinstance(options, Mapping):
            options = make_options(kind, {**(options or {}), **values}, where="")
        elif values:
            raise TypeError("give the options as an AgentOptions or as keywords, not both")
        cls.check_requirements()
        self.catalog.check_agent_name(name, replace=replace)
        agent = cls.create(name, options, self.agent_context())
        self.catalog.add_agent(agent, replace=replace)
        hashes = model_hashes(self.catalog)  # its model files hashed now, not by the first `score`
        self.catalog.agents([name])[0].fingerprint(hashes)
        hashes.save()
        return agent

    def remove_agent(self, name: str) -> None:
        """Remove an agent, its scores and its part files."""
        self._check_writable("remove an agent")
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
        CPU cores (local) or the cluster's CPUs (ray); `options` are those of `driver.run_scoring` (limit,
        sample: a fraction of each shard, seed, batch_rows, show_progress, address)."""
        self._check_writable("score")
        if executor == "local":
            workers = workers or os.cpu_count() or 1
        return run_scoring(self.catalog, agents, workers=workers, executor=executor, **options)

    def status(self) -> WorkspaceStatus:
        """The corpus, each agent's parts (pending = shards without a complete part for its current config)
        and the parts that failed."""
        corpus = self.corpus_size()
        parts = self.catalog.parts()
        hashes = model_hashes(self.catalog)
        agents = []
        for name, kind, labels, committed, partial, failed, scored in self.catalog.run(
            "catalog.sql", "status_agents"
        ):
            pending, error = None, None
            try:
                fp = self.catalog.agents([name])[0].fingerprint(hashes)
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

    def sql(self, query: str, **tables: Any) -> duckdb.DuckDBPyRelation | None:
        """SQL on the catalog as a lazy DuckDB relation: `.pl()` (Polars), `.df()` (pandas), `.arrow()`, or
        more relational calls (`.filter`, `.aggregate`, `.limit`). It runs on the workspace's connection, so
        read it before the workspace is closed. Keywords name Arrow tables or data frames the query may join
        (`ws.sql("SELECT ... JOIN picked USING (doc_id)", picked=ws.selection("demo"))`). A statement without
        a result runs now and gives None."""
        return self.catalog.relation(query, tables)

    # ----- training runs -----------------------------------------------------------------------------
    def runs(self) -> pa.Table:
        """One row per training run: rounds, steps, training tokens, compute, held-out loss, theta, and
        whether each agent carries signal (the `runs` command)."""
        from corpus_agents.training.runs import list_runs

        return list_runs(self.catalog)

    def selection(self, run: str, round: int | None = None) -> pa.Table:
        """The documents a run selected at a round (default: its last): the selection snapshot, one row per
        document (`doc_id`, `shard_id`, `row_idx`, ...). Join it to `doc_labels` or `documents` by doc_id."""
        from corpus_agents.training.runs import selection_path
        from corpus_agents.training.selection import read_snapshot

        _, path = selection_path(self.catalog, check_run_id(run), round)
        return read_snapshot(path)[0]

    def describe_selection(self, run: str, round: int | None = None) -> str:
        """A round's selection in words: documents, and each agent's label shares (the `select` command)."""
        from corpus_agents.training.runs import summarize_selection

        return summarize_selection(self.catalog, check_run_id(run), round)

    def static_selection(
        self,
        run: str,
        tokens: int,
        *,
        mode: SelectionMode | None = None,
        console: Mapping[str, Any] | None = None,
        init_from: str | None = None,
        tokenizer: str | None = None,
    ) -> Path:
        """Fuse the agents with the console's round-0 state (the `console` section of a pipeline, or the
        learnt weights of run `init_from`) and select `tokens` without training: round 0 of run `run`.
        `tokens` are real tokens of `tokenizer` (a directory or hub name; default: the tokenizer run
        `init_from` trained with), each document's EOS included, counted through the workspace's token
        cache; with no tokenizer, the catalog's bytes-per-token estimate. `mode` overrides the console's
        (default: its preset's, `sample` for v2). Returns the snapshot's path; `selection(run, 0)` reads it."""
        from corpus_agents.training.export import run_tokenizer
        from corpus_agents.training.reader import snapshot_tokens
        from corpus_agents.training.runs import static_selection
        from corpus_agents.training.token_cache import token_cache_dir

        self._check_writable("make a selection")
        check_run_id(run)
        if init_from is not None:
            check_run_id(init_from)
        tok = run_tokenizer(self.catalog.dir, init_from, tokenizer) if tokenizer or init_from else None
        real_tokens = (
            None
            if tok is None
            else lambda snapshot: snapshot_tokens(snapshot, tok.tokenizer, token_cache_dir(self.catalog.dir))
        )
        return static_selection(self.catalog, run, tokens, mode, dict(console or {}), init_from, real_tokens)
