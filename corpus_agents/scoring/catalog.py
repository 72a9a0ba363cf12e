"""The workspace catalog: one DuckDB file per workspace, owned by one process at a time.

The owner holds an advisory lock on `WS/catalog.lock` (released by the kernel even on kill -9) that records
its pid and command, so a second process is told who holds the workspace instead of getting a traceback.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from corpus_agents.errors import AgentError, WorkspaceBusyError, WorkspaceError
from corpus_agents.scoring.agents import Agent, build_agent
from corpus_agents.scoring.parts import Shard
from corpus_agents.sqlfiles import read_sql_file, split_statements, statement

SCHEMA_VERSION = "1"
CATALOG_FILE = "catalog.duckdb"
LOCK_FILE = "catalog.lock"
_PARAM = re.compile(r"\$(\w+)")


@dataclass(frozen=True)
class Part:
    agent: str
    shard_id: int
    fingerprint: str
    path: str
    num_rows: int
    complete: bool
    # wall seconds per stage (see `parts.PartResult`); None for parts committed before they were recorded
    read_s: float | None = None
    decode_s: float | None = None
    score_s: float | None = None
    write_s: float | None = None


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class WorkspaceLock:
    """Exclusive, non-blocking advisory lock naming its holder."""

    def __init__(self, path: Path, command: str):
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 4096, 0).decode("utf-8", "replace")
            os.close(self.fd)
            try:
                info = json.loads(holder)
                who = f"pid {info['pid']} ({info['command']}, since {info['since']})"
            except (ValueError, KeyError):
                who = "another process"
            raise WorkspaceBusyError(
                f"workspace {path.parent} is in use by {who}; wait for it to finish or stop it"
            ) from None
        record = json.dumps({"pid": os.getpid(), "command": command, "since": time.strftime("%H:%M:%S")})
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, record.encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


class Catalog:
    """Open (and lock) a workspace's catalog. Use as a context manager or call `close()`."""

    def __init__(self, workspace: str | os.PathLike, *, create: bool = False, command: str | None = None):
        self.dir = Path(workspace).expanduser().resolve()
        db_path = self.dir / CATALOG_FILE
        if not db_path.exists() and not create:
            raise WorkspaceError(
                f"{self.dir} is not a workspace (no {CATALOG_FILE}); create it with `corpus-agents init`"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        self.parts_dir.mkdir(exist_ok=True)
        self.models_dir.mkdir(exist_ok=True)
        self.lock = WorkspaceLock(self.dir / LOCK_FILE, command or " ".join(["corpus-agents", *sys.argv[1:]]))
        try:
            if not db_path.exists():
                self._create_database(db_path)
            self.con = duckdb.connect(str(db_path))
        except duckdb.IOException as exc:
            self.lock.release()
            raise WorkspaceError(f"cannot open {db_path}: {str(exc).splitlines()[0]}") from None
        self._init_schema()
        self.register_filesystems()  # views over shards on object storage are read through fsspec

    def _create_database(self, db_path: Path) -> None:
        """Create an empty database under a temporary name, then rename it: a kill -9 while DuckDB writes
        a new file's headers must not leave a file that every later command fails to open (we hold the lock)."""
        for stale in self.dir.glob(f"{CATALOG_FILE}.new-*"):
            stale.unlink()
        tmp = db_path.with_name(f"{CATALOG_FILE}.new-{os.getpid()}")
        duckdb.connect(str(tmp)).close()
        os.replace(tmp, db_path)

    @property
    def parts_dir(self) -> Path:
        return self.dir / "parts"

    @property
    def parts_url(self) -> str:
        """Where score parts go: `init --parts-url` (a directory or an fsspec URL), else WS/parts."""
        rows = self.con.execute("SELECT value FROM meta WHERE key = 'parts_url'").fetchall()  # no open result
        return rows[0][0] if rows else str(self.parts_dir)

    def set_parts_url(self, url: str) -> None:
        """Record where parts go: a local path (made absolute) or a URL; fixed once a part is committed."""
        url = url.rstrip("/") if "://" in url else str(Path(url).expanduser().resolve())
        if url != self.parts_url and self.parts():
            raise WorkspaceError(
                f"workspace {self.dir} has committed parts under {self.parts_url}; "
                f"use a new workspace to write parts to {url}"
            )
        self.set_meta("parts_url", url)
        self.register_filesystems()  # parts on object storage: DuckDB reads them through fsspec

    @property
    def models_dir(self) -> Path:
        return self.dir / "models"

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "con", None) is not None:
            self.con.close()
            self.con = None
        self.lock.release()

    # ----- schema ------------------------------------------------------------------------------------
    def _init_schema(self) -> None:
        tables = {
            r[0] for r in self.con.execute("SELECT table_name FROM information_schema.tables").fetchall()
        }
        if "meta" in tables:
            row = self.con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row and row[0] != SCHEMA_VERSION:
                raise WorkspaceError(
                    f"{self.dir} has catalog schema version {row[0]}; this corpus-agents uses {SCHEMA_VERSION}"
                )
        self.con.execute("BEGIN")
        for stmt in split_statements(read_sql_file("schema.sql")):
            self.con.execute(stmt)
        self.con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", [SCHEMA_VERSION])
        self.con.execute("COMMIT")
        if "doc_labels" not in tables:
            self.refresh_views()

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])

    # ----- running SQL: every statement lives in sql/; these are the only ways to run one ------------
    def run(self, file: str, name: str, **params: Any) -> list[tuple[Any, ...]]:
        """Run every statement of the block `-- name: <name>` of `sql/<file>`, each with the `$params` it
        uses; returns the last statement's rows."""
        rows: list[tuple[Any, ...]] = []
        for stmt in split_statements(statement(file, name)):
            rows = self.con.execute(stmt, {k: params[k] for k in _PARAM.findall(stmt)}).fetchall()
        return rows

    def arrow(self, file: str, name: str, **params: Any) -> pa.Table:
        """The result of a one-query block as Arrow, streamed from DuckDB without a row-by-row copy."""
        (query,) = split_statements(statement(file, name))
        return self.con.sql(query, params={k: params[k] for k in _PARAM.findall(query)}).to_arrow_table()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN ... COMMIT, or ROLLBACK if the body raises (including KeyboardInterrupt)."""
        self.con.execute("BEGIN")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    @contextlib.contextmanager
    def registered(self, name: str, table: pa.Table) -> Iterator[None]:
        """An Arrow table visible to SQL as `name` for the body's duration."""
        self.con.register(name, table)
        try:
            yield
        finally:
            self.con.unregister(name)

    def run_block(self, file: str, name: str, params: dict[str, Any]) -> None:
        """Run every statement of a named SQL block with the named parameters each one uses."""
        self.run(file, name, **params)

    # ----- shards and documents --------------------------------------------------------------------
    def shards(self) -> list[Shard]:
        rows = self.con.execute(
            "SELECT shard_id, uri, num_rows, num_bytes, fingerprint, num_row_groups, text_column "
            "FROM shards ORDER BY shard_id"
        ).fetchall()
        return [Shard(*r) for r in rows]

    def add_shard(self, info: dict[str, Any], docs: pa.Table) -> int:
        """Register one shard and its documents in one transaction; returns the new shard_id."""
        self.con.execute("BEGIN")
        try:
            shard_id = self.con.execute("SELECT coalesce(max(shard_id) + 1, 0) FROM shards").fetchone()[0]
            self.con.execute(
                statement("catalog.sql", "insert_shard"),
                [
                    shard_id,
                    info["uri"],
                    info["num_rows"],
                    info["num_bytes"],
                    info["fingerprint"],
                    info["num_row_groups"],
                    info["row_group_rows"],
                    info["text_column"],
                ],
            )
            new_docs = docs.append_column("shard_id", pa.array([shard_id] * len(docs), pa.int32()))
            self.con.register("new_docs", new_docs)
            self.con.execute(statement("catalog.sql", "insert_docs"))
            self.con.unregister("new_docs")
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        return shard_id

    # ----- agents ------------------------------------------------------------------------------------
    def agent_rows(self) -> list[tuple[str, str, dict[str, Any]]]:
        rows = self.con.execute("SELECT name, kind, config FROM agents ORDER BY added_at, name").fetchall()
        return [(n, k, json.loads(c)) for n, k, c in rows]

    def agents(self, names: list[str] | None = None) -> list[Agent]:
        """The registered agents (all, or the named ones in the given order), rebuilt from their configs."""
        by_name = {n: build_agent(n, k, c) for n, k, c in self.agent_rows()}
        if names is None:
            return list(by_name.values())
        unknown = [n for n in names if n not in by_name]
        if unknown:
            known = ", ".join(by_name) or "none yet"
            raise AgentError(f"no agent named {unknown[0]!r} in {self.dir} (agents: {known})")
        return [by_name[n] for n in names]

    def add_agent(self, agent: Agent, *, replace: bool = False) -> None:
        exists = self.con.execute("SELECT 1 FROM agents WHERE name = ?", [agent.name]).fetchone()
        if exists and not replace:
            raise AgentError(
                f"agent {agent.name!r} exists; pass --replace to redefine it (its scores are dropped)"
            )
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", agent.name):
            raise AgentError(
                f"agent name {agent.name!r} must be an identifier (letters, digits, _), used as a column"
            )
        if agent.name in {"doc_id", "shard_id", "row_idx", "text_bytes"} or agent.name.endswith("_score"):
            raise AgentError(f"agent name {agent.name!r} collides with a doc_labels column; choose another")
        self.con.execute("BEGIN")
        try:
            if exists:
                self.run_block("catalog.sql", "drop_agent", {"agent": agent.name})
            self.con.execute(
                "INSERT INTO agents (name, kind, config) VALUES (?, ?, ?)",
                [agent.name, agent.kind, json.dumps(agent.config)],
            )
            self.con.executemany(
                "INSERT INTO agent_labels VALUES (?, ?, ?)",
                [[agent.name, i, label] for i, label in enumerate(agent.labels)],
            )
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.refresh_views()

    def remove_agent(self, name: str) -> None:
        self.agents([name])
        self.con.execute("BEGIN")
        self.run_block("catalog.sql", "drop_agent", {"agent": name})
        self.con.execute("COMMIT")
        self.refresh_views()

    # ----- score parts -------------------------------------------------------------------------------
    def parts(self) -> dict[tuple[str, int], Part]:
        rows = self.con.execute(
            "SELECT agent, shard_id, fingerprint, path, num_rows, complete, read_s, decode_s, score_s, write_s "
            "FROM score_parts"
        ).fetchall()
        return {(r[0], r[1]): Part(*r) for r in rows}

    def failures(self) -> list[tuple[str, int, str]]:
        return self.con.execute("SELECT agent, shard_id, error FROM part_failures ORDER BY 1, 2").fetchall()

    def commit_part(
        self,
        agent: str,
        shard_id: int,
        fingerprint: str,
        path: str,
        num_rows: int,
        complete: bool,
        *,
        read_s: float,
        decode_s: float,
        score_s: float,
        write_s: float,
    ) -> None:
        """Load a finished part's scores and its manifest row (with its per-stage seconds) in one transaction:
        committed exactly once."""
        params = {
            "agent": agent,
            "shard_id": shard_id,
            "fingerprint": fingerprint,
            "path": path,
            "num_rows": num_rows,
            "complete": complete,
            "read_s": read_s,
            "decode_s": decode_s,
            "score_s": score_s,
            "write_s": write_s,
        }
        self.con.execute("BEGIN")
        try:
            self.run_block("catalog.sql", "commit_part", params)
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    def drop_parts(self, keys: list[tuple[str, int]]) -> None:
        """Remove committed (agent, shard_id) parts and their scores, all in one transaction."""
        if not keys:
            return
        by_agent: dict[str, list[int]] = {}
        for agent, shard_id in keys:
            by_agent.setdefault(agent, []).append(shard_id)
        self.con.execute("BEGIN")
        try:
            for agent, shard_ids in by_agent.items():
                self.run_block("catalog.sql", "drop_parts", {"agent": agent, "shard_ids": sorted(shard_ids)})
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    def record_failure(self, agent: str, shard_id: int, error: str) -> None:
        self.con.execute(statement("catalog.sql", "record_failure"), [agent, shard_id, error[:2000]])

    # ----- views -------------------------------------------------------------------------------------
    def refresh_views(self) -> None:
        """(Re)create `doc_labels`: one row per document, `<agent>` (label name) and `<agent>_score` columns."""
        head = statement("catalog.sql", "doc_labels_head")
        columns, joins = [], []
        for i, (name, _, _) in enumerate(self.agent_rows()):
            fill = {
                "i": i,
                "agent_lit": quote_literal(name),
                "label_col": quote_ident(name),
                "score_col": quote_ident(f"{name}_score"),
            }
            columns.append(statement("catalog.sql", "doc_labels_agent_columns").format(**fill))
            joins.append(statement("catalog.sql", "doc_labels_agent_join").format(**fill))
        body = "\n".join([head, *columns, "FROM docs d", *joins])
        self.con.execute(f"CREATE OR REPLACE VIEW doc_labels AS {body}")
        self._refresh_documents_view()

    def register_filesystems(self) -> None:
        """Let DuckDB read non-local shards through fsspec (needed by the `documents` view)."""
        import fsspec

        urls = [s.uri for s in self.shards()] + [self.parts_url]
        protocols = {u.split("://", 1)[0] for u in urls if "://" in u}
        for protocol in sorted(protocols - {"file"}):
            if not self.con.filesystem_is_registered(protocol):
                self.con.register_filesystem(fsspec.filesystem(protocol))

    def _refresh_documents_view(self) -> None:
        """`documents` (doc_id, shard_id, row_idx, text): the texts, read from the shards when queried."""
        shards = self.shards()
        if not shards:
            self.con.execute(
                "CREATE OR REPLACE VIEW documents AS "
                "SELECT NULL::BIGINT AS doc_id, NULL::INTEGER AS shard_id, NULL::INTEGER AS row_idx, "
                "NULL::VARCHAR AS text WHERE false"
            )
            return
        self.register_filesystems()
        uris = "[" + ", ".join(quote_literal(s.uri.removeprefix("file://")) for s in shards) + "]"
        try:
            self.con.execute(
                statement("catalog.sql", "documents_view").format(
                    uris=uris, text_column=".".join(quote_ident(c) for c in shards[0].text_column.split("."))
                )
            )
        except duckdb.Error:
            # Creating the view reads every shard's schema: a missing or unreadable shard must not fail
            # `init` or `agent add`. The previous definition stays; querying it names the bad shard.
            pass
