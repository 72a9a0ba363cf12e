"""The workspace catalog: one DuckDB file per workspace, owned by one process at a time.

The catalog owns its connection: statements run through its methods (`run` and `arrow` for the named
blocks of `sql/`, `transaction`, `registered`, `cursor`), never through the connection itself.

Paths inside the workspace (shards under WS/corpus, parts under WS/parts, fitted models, selection
snapshots) are stored relative to it and resolved against where it is now, so a copied or moved workspace
reads its own files; paths outside it stay absolute. Opening a workspace rewrites absolute paths that point
into it, or into where it was last opened, as relative ones (idempotent).

The owner (a writer) holds an advisory lock on `WS/catalog.lock` (released by the kernel even on kill -9)
that records its pid and command, so a second writer is told who holds the workspace instead of getting a
traceback. Readers (`Catalog(ws, read_only=True)`: query, status, runs, report) never take it.

DuckDB lets one process open the file read-write, or any number read-only, never both at once. So a writer
opens its DuckDB connection only while it works on the catalog (`release()` closes it, the next statement
reopens it; long commands release it between commits and rounds), and a second flock, `WS/catalog.gate`,
orders the two: a writer holds it exclusively while its connection is open (so a waiting writer is not
starved by new readers), a reader holds it shared only while it opens its connection. A reader that finds the
writer inside waits for it (briefly: writers commit in short batches) and then reads a consistent snapshot;
a writer that finds readers inside waits until their queries end (docs/architecture.md, "Reading while a
run is going").
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sys
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from corpus_agents import storage
from corpus_agents.config import TOKEN_BYTES
from corpus_agents.errors import AgentError, CorpusAgentsError, WorkspaceBusyError, WorkspaceError, one_line
from corpus_agents.names import check_agent_name
from corpus_agents.scoring.agents import Agent, build_agent
from corpus_agents.scoring.parts import Shard
from corpus_agents.sqlfiles import fragment, read_sql_file, split_statements, statement
from corpus_agents.storage import atomic_path, temp_path

SCHEMA_VERSION = "1"
CATALOG_FILE = "catalog.duckdb"
LOCK_FILE = "catalog.lock"
GATE_FILE = "catalog.gate"
#: How long a reader waits for a writer's connection to close, and a writer for readers' queries to end.
READ_WAIT_S = 10.0
WRITE_WAIT_S = 600.0
#: The statements a read-only `query` runs (`duckdb.StatementType` names); everything else is refused.
READ_ONLY_STATEMENTS = frozenset({"SELECT", "EXPLAIN", "PRAGMA", "CALL"})
_STATEMENT_NAMES = {"COPY": "file copy (COPY)", "LOAD": "extension (INSTALL, LOAD)"}
_PARAM = re.compile(r"\$(\w+)")
#: How a stored agent config marks a path relative to the workspace (e.g. "$WS/models/quality.fasttext.bin").
WS_PREFIX = "$WS/"
#: Agent config keys holding a list of files (the attributes agent's side files), stored like single paths.
PATH_LISTS = frozenset({"files"})


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


def _holder_name(record: str) -> str:
    """Who holds a workspace, from the record its lock file holds."""
    try:
        info = json.loads(record)
        return f"pid {info['pid']} ({info['command']}, since {info['since']})"
    except (ValueError, KeyError, TypeError):
        return "another process"


def lock_holder(path: Path) -> str | None:
    """Who holds the workspace lock at `path` now, or None when nobody does (checked with a shared lock
    taken and released at once, never held)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_name(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


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
            raise WorkspaceBusyError(
                f"workspace {path.parent} is in use by {_holder_name(holder)}; wait for it to finish or stop it"
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


class _Gate:
    """A flock on `WS/catalog.gate` taken with a deadline: exclusive by a writer while its DuckDB connection is
    open, shared by a reader while it opens one."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = -1

    def acquire(self, *, exclusive: bool, wait_s: float) -> bool:
        """Take the gate, polling until `wait_s` has passed; False if it is still held then. A workspace this
        process cannot write (a reader of someone else's) has no gate to take: True."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return True
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                self.fd = fd
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.005)

    def release(self) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


def _holder(lock_path: Path) -> str:
    """Who holds the workspace lock, as its record names it."""
    try:
        return _holder_name(lock_path.read_text())
    except OSError:
        return "another process"


_SIZE_UNITS = {"bytes": 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "PiB": 2**50}
_SIZE_UNITS.update(KB=10**3, MB=10**6, GB=10**9, TB=10**12, PB=10**15)


def _setting_bytes(value: str) -> float:
    """A DuckDB size setting as DuckDB shows it ('18.8 GiB', '512.0 MiB', '0 bytes') in bytes; an
    unknown form counts as no limit."""
    number, _, unit = value.strip().partition(" ")
    try:
        return float(number) * _SIZE_UNITS[unit or "B"]
    except (KeyError, ValueError):
        return float("inf")


def _setting_midpoint(value: str) -> str:
    """A size setting to give back to DuckDB as it showed it: DuckDB shows it cut down to 0.1 of its unit
    ('18.8 GiB' for anything in [18.8, 18.9) GiB), so the middle of that interval is within 0.05 of the
    unit of what it was and shows as before (setting '18.8 GiB' itself would show '18.7 GiB')."""
    number, _, unit = value.strip().partition(" ")
    if unit in ("", "bytes", "B"):
        return value
    try:
        return f"{float(number) + 0.05:.2f} {unit}"
    except ValueError:
        return value


def _map_paths(config: dict[str, Any], fn: Callable[[Any], Any]) -> dict[str, Any]:
    """An agent config with `fn` applied to each value, and to each item of the lists of paths (PATH_LISTS)."""
    return {
        key: [fn(v) for v in value] if key in PATH_LISTS and isinstance(value, list) else fn(value)
        for key, value in config.items()
    }


class _Sql:
    """The one way to run SQL on a catalog connection: named blocks of `sql/` with `$name` parameters,
    transactions, Arrow tables registered for a statement's duration."""

    _con: duckdb.DuckDBPyConnection
    _user_tables: set[str]  # names `relation` registered for the user's queries

    def run(self, file: str, name: str, /, **params: Any) -> list[tuple[Any, ...]]:
        """Run every statement of the block `-- name: <name>` of `sql/<file>`, each with the `$params` it
        uses; returns the last statement's rows."""
        rows: list[tuple[Any, ...]] = []
        for stmt in split_statements(statement(file, name)):
            rows = self.execute(stmt, {k: params[k] for k in _PARAM.findall(stmt)})
        return rows

    def arrow(self, file: str, name: str, /, **params: Any) -> pa.Table:
        """The result of a one-query block as Arrow, streamed from DuckDB without a row-by-row copy."""
        (query,) = split_statements(statement(file, name))
        return self._con.sql(query, params={k: params[k] for k in _PARAM.findall(query)}).to_arrow_table()

    def execute(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """Run one statement given as text and return its rows: a statement put together from `sql/`
        templates (`sqlfiles.fragment`), or SQL of tests and benchmarks. Package code runs named blocks."""
        return self._con.execute(sql, params).fetchall()

    def table_names(self) -> set[str]:
        """The catalog's tables and views."""
        return {r[0] for r in self.run("catalog.sql", "table_names")}

    def execute_arrow(self, sql: str, params: Mapping[str, Any]) -> pa.Table:
        """Run one query put together from `sql/` templates and return its result as Arrow; `params` may
        hold more than the query's `$names` (those it does not use are left out)."""
        return self._con.sql(sql, params={k: params[k] for k in _PARAM.findall(sql)}).to_arrow_table()

    def query(self, sql: str) -> pa.Table:
        """The user's SQL (the `query` command): one statement, its result as Arrow (empty for a statement
        without one); a DuckDB error becomes a one-line CorpusAgentsError (see `relation`)."""
        try:
            rel = self.relation(sql)
            return rel.to_arrow_table() if rel is not None else pa.table({})
        except duckdb.Error as exc:
            raise CorpusAgentsError(f"SQL error: {one_line(exc)}") from None

    def relation(self, sql: str, tables: Mapping[str, Any] | None = None) -> duckdb.DuckDBPyRelation | None:
        """The user's SQL (a notebook) as a lazy DuckDB relation, read with `.pl()`, `.df()`, `.arrow()` or
        refined with more relational calls; it runs on this connection, so it is valid while the catalog is
        open. `tables` (Arrow tables, Polars or pandas frames) are visible to it under their names; they stay
        registered on this connection (the relation reads them when it runs), each replacing an earlier one of
        its name, and may not hide a catalog table. A statement without a result runs now and gives None; an
        error in it is a one-line CorpusAgentsError. A statement that names the `documents` view first checks
        every shard's size and footer against its registration (DuckDB reads the pages itself, so row-group
        hashes are not checked there)."""
        if isinstance(self, Catalog) and re.search(r"\bdocuments\b", sql, re.IGNORECASE):
            for shard in self.shards():
                with contextlib.suppress(OSError):  # a missing shard: DuckDB's error names it
                    shard.check().check_footer()
        if tables:
            catalog_tables = self.table_names() - self._user_tables
            taken = sorted(set(tables) & catalog_tables)
            if taken:
                raise CorpusAgentsError(
                    f"{taken[0]!r} names a catalog table or view; pass the table as another name"
                )
            for name, table in tables.items():
                self._con.register(name, table)
                self._user_tables.add(name)
        try:
            if isinstance(self, Catalog) and self.read_only:
                for stmt in self._con.extract_statements(sql):
                    kind = stmt.type.name
                    if kind not in READ_ONLY_STATEMENTS:
                        shown = _STATEMENT_NAMES.get(kind, kind)
                        raise CorpusAgentsError(
                            f"query is read-only: {shown} statements are refused "
                            "(`query --writable` runs statements that change the catalog)"
                        )
            return self._con.sql(sql)
        except duckdb.Error as exc:
            raise CorpusAgentsError(f"SQL error: {one_line(exc)}") from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN ... COMMIT, or ROLLBACK if the body raises (including KeyboardInterrupt)."""
        self._con.begin()
        try:
            yield
        except BaseException:
            self._con.rollback()
            raise
        self._con.commit()

    @contextlib.contextmanager
    def memory_capped(self, limit: int) -> Iterator[None]:
        """DuckDB's memory limit at most `limit` bytes for the body, then as it was. The limit is the
        database's (every connection of the catalog's), and DuckDB keeps every block a query read in
        memory until it reaches it (80% of RAM by default): a scan of a large table stays resident. Nothing
        changes where the limit is lower already or the settings are locked (a reader's sandbox)."""
        ((current, locked),) = self.run("catalog.sql", "memory_limit")
        if str(locked).lower() == "true" or _setting_bytes(current) <= limit:
            yield
            return
        self.run("catalog.sql", "set_memory_limit", limit=f"{limit // 2**20} MiB")
        try:
            yield
        finally:
            self.run("catalog.sql", "set_memory_limit", limit=_setting_midpoint(current))

    @contextlib.contextmanager
    def registered(self, name: str, table: pa.Table) -> Iterator[None]:
        """An Arrow table visible to SQL as `name` for the body's duration."""
        self._con.register(name, table)
        try:
            yield
        finally:
            self._con.unregister(name)


class CatalogCursor(_Sql):
    """A cursor of a catalog's connection: the same database, its own transactions and temp tables (the
    console keeps its caches there). Close it when done.

    When the catalog releases its connection the cursor goes with it; its next statement opens a new cursor
    on the reopened connection, without the old one's temp tables: `generation` (the catalog's connection
    count) tells a user of temp tables that they must be made again."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self._cur: duckdb.DuckDBPyConnection | None = None
        self.generation = 0
        self.closed = False
        self._user_tables = set()

    @property
    def _con(self) -> duckdb.DuckDBPyConnection:  # type: ignore[override]
        if self._cur is None or self.generation != self.catalog.generation:
            con = self.catalog._con  # reopens a released catalog
            self._cur, self.generation = con.cursor(), self.catalog.generation
        return self._cur

    def __enter__(self) -> CatalogCursor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def drop(self) -> None:
        """Close the current cursor (the catalog is releasing its connection); the next statement reopens."""
        if self._cur is not None:
            with contextlib.suppress(duckdb.ConnectionException):  # the catalog closed its connection first
                self._cur.close()
            self._cur = None

    def close(self) -> None:
        self.drop()
        self.closed = True
        self.catalog._cursors.discard(self)


class Catalog(_Sql):
    """Open a workspace's catalog. Use as a context manager or call `close()`.

    A writer (the default) locks the workspace for its lifetime and holds a read-write DuckDB connection
    while it works; `release()` closes the connection between pieces of work so readers can look, and the
    next statement reopens it. A reader (`read_only=True`) takes no lock, opens the file read-only (waiting
    up to READ_WAIT_S for a writer's commit) and runs `query` sandboxed: no catalog changes, no files
    written, no ATTACH, no extension installs."""

    def __init__(
        self,
        workspace: str | os.PathLike,
        *,
        create: bool = False,
        command: str | None = None,
        read_only: bool = False,
    ):
        self.dir = Path(workspace).expanduser().resolve()
        self.read_only = read_only
        self.generation = 0
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._cursors: weakref.WeakSet[CatalogCursor] = weakref.WeakSet()
        self._gate = _Gate(self.dir / GATE_FILE)
        self.lock: WorkspaceLock | None = None
        self._user_tables = set()
        db_path = self.dir / CATALOG_FILE
        if read_only and create:
            raise ValueError("a read-only catalog cannot be created")
        if not db_path.exists() and not create:
            raise WorkspaceError(
                f"{self.dir} is not a workspace (no {CATALOG_FILE}); create it with `corpus-agents init`"
            )
        if read_only:
            self._open_reader()
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.parts_dir.mkdir(exist_ok=True)
        self.models_dir.mkdir(exist_ok=True)
        self.lock = WorkspaceLock(self.dir / LOCK_FILE, command or " ".join(["corpus-agents", *sys.argv[1:]]))
        try:
            if not db_path.exists():
                self._create_database(db_path)
            self.connect()
        except duckdb.IOException as exc:
            self.lock.release()
            raise WorkspaceError(f"cannot open {db_path}: {one_line(exc)}") from None
        except BaseException:
            self.lock.release()
            raise
        self._init_schema()
        self.register_filesystems()  # views over shards on object storage are read through fsspec
        self._relocate()

    @property
    def _con(self) -> duckdb.DuckDBPyConnection:  # type: ignore[override]
        if self._conn is None:
            if self.lock is None and not self.read_only:
                raise WorkspaceError(f"the catalog of {self.dir} is closed")
            self.connect()
        assert self._conn is not None
        return self._conn

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def connect(self, wait_s: float | None = None) -> bool:
        """Open the DuckDB connection if it is not open (statements do this themselves). A writer waits up
        to `wait_s` (default WRITE_WAIT_S) for readers inside to finish: False if they are still there then
        (with wait_s=0: a try that never blocks), WorkspaceBusyError when waiting the default."""
        if self._conn is not None:
            return True
        db_path = self.dir / CATALOG_FILE
        if self.read_only:
            wait = READ_WAIT_S if wait_s is None else wait_s
            if not self._gate.acquire(exclusive=False, wait_s=wait):
                raise WorkspaceBusyError(
                    f"workspace {self.dir} is in use by {_holder(self.dir / LOCK_FILE)}, which has held its "
                    f"catalog for over {wait:g}s; try again"
                )
            try:
                self._conn = self._open_duckdb(db_path, read_only=True, wait_s=wait)
            finally:
                self._gate.release()
        else:
            wait = WRITE_WAIT_S if wait_s is None else wait_s
            if not self._gate.acquire(exclusive=True, wait_s=wait):
                if wait_s is not None:
                    return False
                raise WorkspaceBusyError(f"readers of the catalog of {self.dir} did not finish in {wait:g}s")
            try:
                con = self._open_duckdb(db_path, read_only=False, wait_s=wait)
            except BaseException:
                self._gate.release()
                raise
            if con is None:
                self._gate.release()
                if wait_s is not None:
                    return False
                raise WorkspaceBusyError(f"readers of the catalog of {self.dir} did not finish in {wait:g}s")
            self._conn = con
        self.generation += 1
        if self.read_only:
            self.register_filesystems()
            self._sandbox()
        elif (
            self.generation > 1
        ):  # a reopened writer (the first open registers them once the schema is there)
            self.register_filesystems()
        return True

    def _open_duckdb(self, db_path: Path, *, read_only: bool, wait_s: float) -> duckdb.DuckDBPyConnection:
        """Connect, retrying while another process holds a conflicting DuckDB lock (a reader that opened
        before a writer took the gate, or a process that does not use the gate); a reader gets a one-line
        error after `wait_s`, a writer None."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return duckdb.connect(str(db_path), read_only=read_only)
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():
                    raise WorkspaceError(f"cannot open {db_path}: {one_line(exc)}") from None
                if time.monotonic() >= deadline:
                    if read_only:
                        raise WorkspaceBusyError(
                            f"cannot open {db_path} to read it: {one_line(exc)}"
                        ) from None
                    return None  # type: ignore[return-value]
                time.sleep(0.005)
            except duckdb.ConnectionException as exc:  # this process has it open the other way
                raise WorkspaceBusyError(
                    f"cannot open {db_path} {'read-only' if read_only else 'to write'} in this process: "
                    f"{one_line(exc)}; close the other catalog first"
                ) from None

    def release(self) -> None:
        """Close the DuckDB connection (and its cursors), keeping the workspace lock: readers may open the
        catalog until the next statement reopens it. Temp tables do not survive this."""
        for cur in list(self._cursors):
            cur.drop()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            if not self.read_only:
                self._gate.release()

    def _open_reader(self) -> None:
        """Open read-only and sandbox the connection. A workspace that was moved (its views hold the old
        absolute paths) is first brought up to date by a brief writable open, if no writer holds it now."""
        self.connect()
        version = self.get_meta("schema_version") if "meta" in self.table_names() else None
        if version and version != SCHEMA_VERSION:
            self.close()
            raise WorkspaceError(
                f"{self.dir} has catalog schema version {version}; this corpus-agents uses {SCHEMA_VERSION}"
            )
        if self.get_meta("workspace_dir") not in (None, str(self.dir)):
            self.upgrade(lambda writer: None)  # opening relocates; a running writer has done so already
            self.connect()

    def upgrade(self, fn: Any) -> None:
        """For a reader: run `fn(writable catalog)` (creating tables it needs) on a brief writable open of
        the workspace, if no writer holds it now; nothing otherwise. The reader reconnects afterwards."""
        self.release()
        with contextlib.suppress(WorkspaceBusyError):
            with Catalog(self.dir, command="corpus-agents (schema for a reader)") as writer:
                fn(writer)

    def _sandbox(self) -> None:
        """No file writes, ATTACH or extension installs from the user's SQL: external access off, except
        reading the shards' and parts' directories (the views read them), and the settings locked. Shards or
        parts on object storage are read through fsspec, which needs external access: then only the lock."""
        if self.run("catalog.sql", "settings_locked")[0][0]:
            return  # another reader of this process sandboxed the shared instance
        urls = [s.uri for s in self.shards()] + [self.parts_url]
        if any(storage.is_url(u) for u in urls):
            self.run("catalog.sql", "lock_settings")
            return
        dirs = sorted({str(Path(u).parent) + os.sep for u in urls[:-1]} | {urls[-1].rstrip(os.sep) + os.sep})
        self.run("catalog.sql", "sandbox", dirs=dirs)

    def _create_database(self, db_path: Path) -> None:
        """Create an empty database under a temporary name, then rename it: a kill -9 while DuckDB writes
        a new file's headers must not leave a file that every later command fails to open (we hold the lock)."""
        for stale in self.dir.glob(f"{temp_path(db_path).name.rsplit('-', 1)[0]}-*"):
            stale.unlink()
        with atomic_path(db_path) as tmp:
            duckdb.connect(str(tmp)).close()

    @property
    def parts_dir(self) -> Path:
        return self.dir / "parts"

    @property
    def parts_url(self) -> str:
        """Where score parts go: `init --parts-url` (a directory or an fsspec URL), else WS/parts."""
        stored = self.get_meta("parts_url")
        return self.resolve_path(stored) if stored else str(self.parts_dir)

    def set_parts_url(self, url: str) -> None:
        """Record where parts go: a local path (made absolute) or a URL; fixed once a part is committed."""
        url = url.rstrip("/") if "://" in url else str(Path(url).expanduser().resolve())
        if url != self.parts_url and self.parts():
            raise WorkspaceError(
                f"workspace {self.dir} has committed parts under {self.parts_url}; "
                f"use a new workspace to write parts to {url}"
            )
        self.set_meta("parts_url", self.stored_path(url))
        self.register_filesystems()  # parts on object storage: DuckDB reads them through fsspec

    @property
    def models_dir(self) -> Path:
        return self.dir / "models"

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.release()
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        self.read_only = False  # a closed reader does not reopen either

    def cursor(self) -> CatalogCursor:
        """A cursor with its own transactions and temp tables on this catalog's connection."""
        cur = CatalogCursor(self)
        self._cursors.add(cur)
        return cur

    # ----- schema ------------------------------------------------------------------------------------
    def _init_schema(self) -> None:
        tables = self.table_names()
        if "meta" in tables:
            version = self.get_meta("schema_version")
            if version and version != SCHEMA_VERSION:
                raise WorkspaceError(
                    f"{self.dir} has catalog schema version {version}; this corpus-agents uses {SCHEMA_VERSION}"
                )
        with self.transaction():
            for stmt in split_statements(read_sql_file("schema.sql")):
                self.execute(stmt)
            self.run("catalog.sql", "init_meta", version=SCHEMA_VERSION)
        if "doc_labels" not in tables:
            self.refresh_views()

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        rows = self.run("catalog.sql", "get_meta", key=key)
        return rows[0][0] if rows else default

    def set_meta(self, key: str, value: str) -> None:
        self.run("catalog.sql", "set_meta", key=key, value=value)

    # ----- paths relative to the workspace -----------------------------------------------------------
    def stored_path(self, path: str, *, roots: Sequence[Path] = ()) -> str:
        """How a path is stored: relative to the workspace if it lies inside it (or inside one of `roots`,
        where the workspace was before a move), else unchanged."""
        if "://" in path and not path.startswith("file://"):
            return path
        local = Path(path.removeprefix("file://"))
        if not local.is_absolute():
            return path
        for root in (self.dir, *roots):
            if local.is_relative_to(root):
                return local.relative_to(root).as_posix()
        return path

    def resolve_path(self, stored: str) -> str:
        """The path a stored one names now: relative ones against the workspace's current directory."""
        if "://" in stored or Path(stored).is_absolute():
            return stored
        return str(self.dir / stored)

    def _stored_config(self, config: dict[str, Any], roots: Sequence[Path] = ()) -> dict[str, Any]:
        """An agent config with absolute paths inside the workspace written as `$WS/<relative path>`."""

        def stored(value: Any) -> Any:
            if isinstance(value, str) and Path(value).is_absolute():
                rel = self.stored_path(value, roots=roots)
                return value if rel == value else WS_PREFIX + rel
            return value

        return _map_paths(config, stored)

    def _resolved_config(self, config: dict[str, Any]) -> dict[str, Any]:
        def resolved(value: Any) -> Any:
            if isinstance(value, str) and value.startswith(WS_PREFIX):
                return str(self.dir / value.removeprefix(WS_PREFIX))
            return value

        return _map_paths(config, resolved)

    def _relocate(self) -> None:
        """Rewrite absolute paths into this workspace, or into where it was last opened, as relative ones;
        recreate the views (they hold absolute paths) when the workspace has moved. Idempotent."""
        previous = self.get_meta("workspace_dir")
        roots = [Path(previous)] if previous and previous != str(self.dir) else []
        stored_parts_url = self.get_meta("parts_url")
        with self.transaction():
            for shard_id, uri in self.run("catalog.sql", "shard_uris"):
                if (rel := self.stored_path(uri, roots=roots)) != uri:
                    self.run("catalog.sql", "set_shard_uri", shard_id=shard_id, uri=rel)
            for agent, shard_id, path in self.run("catalog.sql", "part_paths"):
                if (rel := self.stored_path(path, roots=roots)) != path:
                    self.run("catalog.sql", "set_part_path", agent=agent, shard_id=shard_id, path=rel)
            if (
                stored_parts_url
                and (rel := self.stored_path(stored_parts_url, roots=roots)) != stored_parts_url
            ):
                self.set_meta("parts_url", rel)
            tables = self.table_names()
            if "selections" in tables:
                for run_id, round_, path in self.run("catalog.sql", "selection_paths"):
                    if (rel := self.stored_path(path, roots=roots)) != path:
                        self.run("catalog.sql", "set_selection_path", run_id=run_id, round=round_, path=rel)
        for name, kind, config in self.agent_rows():
            stored = self._stored_config(config, roots)
            if stored != config:
                # The fingerprint hashes the stored config: carry the committed parts over to the new one.
                old = build_agent(name, kind, config)
                new = build_agent(name, kind, self._resolved_config(stored))
                new.stored_config = stored
                try:
                    fingerprints = {"old": old.fingerprint(), "new": new.fingerprint()}
                except CorpusAgentsError:  # a missing model file: the parts are rescored anyway
                    fingerprints = {"old": "", "new": ""}
                self.run(
                    "catalog.sql", "set_agent_config", agent=name, config=json.dumps(stored), **fingerprints
                )
        if previous != str(self.dir):
            self.set_meta("workspace_dir", str(self.dir))
            self.refresh_views()

    # ----- shards and documents --------------------------------------------------------------------
    def shards(self) -> list[Shard]:
        """The registered shards, their URIs resolved against where the workspace is now."""
        return [
            Shard(sid, self.resolve_path(uri), *rest, None if hashes is None else tuple(hashes))
            for sid, uri, *rest, hashes in self.run("catalog.sql", "shards")
        ]

    def corpus_size(self) -> tuple[int, int, int]:
        """(shards, documents, bytes on disk) of the registered corpus."""
        return self.run("catalog.sql", "corpus_size")[0]

    def add_shard(self, info: dict[str, Any], docs: pa.Table) -> int:
        """Register one shard and its documents in one transaction; returns the new shard_id."""
        with self.transaction():
            shard_id = self.run("catalog.sql", "next_shard_id")[0][0]
            self._insert_shard(shard_id, info, docs)
        return shard_id

    def replace_shard(self, shard_id: int, info: dict[str, Any], docs: pa.Table) -> None:
        """Register a changed shard again under its id, in one transaction: its documents are replaced and
        every agent's parts and scores of it dropped (the next `score` rescores this shard alone)."""
        with self.transaction():
            self.run("catalog.sql", "forget_shard", shard_id=shard_id)
            self._insert_shard(shard_id, info, docs)

    def _insert_shard(self, shard_id: int, info: dict[str, Any], docs: pa.Table) -> None:
        columns = (
            "num_rows",
            "num_bytes",
            "fingerprint",
            "num_row_groups",
            "row_group_rows",
            "row_group_hashes",
        )
        self.run(
            "catalog.sql",
            "insert_shard",
            shard_id=shard_id,
            uri=self.stored_path(info["uri"]),
            text_column=info["text_column"],
            **{c: info[c] for c in columns},
        )
        new_docs = docs.append_column("shard_id", pa.array([shard_id] * len(docs), pa.int32()))
        with self.registered("new_docs", new_docs):
            self.run("catalog.sql", "insert_docs")
        self._recount_cells([shard_id])

    def set_row_group_hashes(self, shard_id: int, hashes: list[str]) -> None:
        """Record the row-group hashes of a shard registered before they were (its footer is unchanged)."""
        self.run("catalog.sql", "set_row_group_hashes", shard_id=shard_id, row_group_hashes=hashes)

    def sample_documents(self, n: int, seed: int) -> list[tuple[int, int]]:
        """(shard_id, row_idx) of a seeded uniform sample of n documents with text."""
        return self.execute(fragment("catalog.sql", "sample_rows").format(rows=int(n), seed=int(seed)))

    def column_quantiles(self, column: str, fractions: list[float]) -> tuple[list[float], int]:
        """(quantiles at `fractions`, documents with a value) of a numeric column (dots address nested
        fields) over every registered shard, computed by DuckDB in one pass; each shard's footer is checked
        against its registration first."""
        shards = self.shards()
        for shard in shards:
            shard.check().check_footer()
        self.register_filesystems()
        uris = "[" + ", ".join(quote_literal(s.uri.removeprefix("file://")) for s in shards) + "]"
        path = ".".join(quote_ident(c) for c in column.split("."))
        sql = fragment("catalog.sql", "column_quantiles").format(uris=uris, column=path)
        try:
            ((edges, n),) = self.execute(sql, {"fractions": list(fractions)})
        except duckdb.Error as exc:
            raise CorpusAgentsError(
                f"cannot compute quantiles of column {column!r}: {one_line(exc)}"
            ) from None
        return list(edges or []), int(n)

    # ----- agents ------------------------------------------------------------------------------------
    def agent_rows(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(name, kind, stored config): paths inside the workspace as `$WS/...` (see `agents`)."""
        return [(n, k, json.loads(c)) for n, k, c in self.run("catalog.sql", "agent_rows")]

    def _build_agent(self, name: str, kind: str, stored: dict[str, Any]) -> Agent:
        """An agent whose config names files where they are now; its fingerprint hashes the stored config."""
        agent = build_agent(name, kind, self._resolved_config(stored))
        agent.stored_config = stored
        return agent

    def agents(self, names: list[str] | None = None) -> list[Agent]:
        """The registered agents (all, or the named ones in the given order), rebuilt from their configs."""
        by_name = {n: self._build_agent(n, k, c) for n, k, c in self.agent_rows()}
        if names is None:
            return list(by_name.values())
        unknown = [n for n in names if n not in by_name]
        if unknown:
            known = ", ".join(by_name) or "none yet"
            raise AgentError(f"no agent named {unknown[0]!r} in {self.dir} (agents: {known})")
        return [by_name[n] for n in names]

    def check_agent_name(self, name: str, *, replace: bool = False) -> bool:
        """Raise AgentError if `name` cannot name a new agent (before anything is fitted); returns whether an
        agent of that name exists (and is to be replaced)."""
        check_agent_name(name)
        exists = bool(self.run("catalog.sql", "agent_exists", agent=name))
        if exists and not replace:
            raise AgentError(f"agent {name!r} exists; pass --replace to redefine it (its scores are dropped)")
        if name in {"doc_id", "shard_id", "row_idx", "text_bytes"} or name.endswith("_score"):
            raise AgentError(f"agent name {name!r} collides with a doc_labels column; choose another")
        return exists

    def add_agent(self, agent: Agent, *, replace: bool = False) -> None:
        exists = self.check_agent_name(agent.name, replace=replace)
        agent.stored_config = self._stored_config(agent.config)
        with self.transaction():
            added_at = None
            if exists:
                added_at = self.run("catalog.sql", "agent_added_at", agent=agent.name)[0][0]
                self.run("catalog.sql", "drop_agent", agent=agent.name)
            self.run(
                "catalog.sql",
                "insert_agent",
                added_at=added_at,
                agent=agent.name,
                kind=agent.kind,
                config=json.dumps(agent.stored_config),
                labels=list(agent.labels),
            )
            self._recount_cells(None if exists else [])
        self.refresh_views()

    def remove_agent(self, name: str) -> None:
        self.agents([name])
        with self.transaction():
            self.run("catalog.sql", "drop_agent", agent=name)
            self._recount_cells(None)
        self.refresh_views()

    # ----- score parts -------------------------------------------------------------------------------
    def parts(self) -> dict[tuple[str, int], Part]:
        """Committed parts by (agent, shard_id), their paths resolved against where the workspace is now."""
        return {
            (a, sid): Part(a, sid, fp, self.resolve_path(path), *rest)
            for a, sid, fp, path, *rest in self.run("catalog.sql", "parts")
        }

    def failures(self) -> list[tuple[str, int, str]]:
        return self.run("catalog.sql", "failures")

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
        self.commit_parts(
            [Part(agent, shard_id, fingerprint, path, num_rows, complete, read_s, decode_s, score_s, write_s)]
        )

    def commit_parts(self, parts: Sequence[Part]) -> None:
        """Load finished parts' scores and manifest rows (with their per-stage seconds) in one transaction,
        their shards' cells recounted once at its end: all committed exactly once, or none. One transaction
        for several parts pays the catalog's per-commit costs (the write to disk, the cell statistics' key)
        once."""
        if not parts:
            return
        with self.transaction():
            for part in parts:
                self.run(
                    "catalog.sql",
                    "commit_part",
                    agent=part.agent,
                    shard_id=part.shard_id,
                    fingerprint=part.fingerprint,
                    path=self.stored_path(part.path),
                    read_path=part.path,
                    num_rows=part.num_rows,
                    complete=part.complete,
                    read_s=part.read_s,
                    decode_s=part.decode_s,
                    score_s=part.score_s,
                    write_s=part.write_s,
                )
            self._recount_cells(sorted({part.shard_id for part in parts}))

    def drop_parts(self, keys: list[tuple[str, int]]) -> None:
        """Remove committed (agent, shard_id) parts and their scores, all in one transaction."""
        if not keys:
            return
        by_agent: dict[str, list[int]] = {}
        for agent, shard_id in keys:
            by_agent.setdefault(agent, []).append(shard_id)
        with self.transaction():
            for agent, shard_ids in by_agent.items():
                self.run("catalog.sql", "drop_parts", agent=agent, shard_ids=sorted(shard_ids))
            self._recount_cells(sorted({shard_id for _, shard_id in keys}))

    # ----- cell statistics ---------------------------------------------------------------------------
    def _recount_cells(self, shard_ids: list[int] | None) -> None:
        """Bring `doc_cells` and `cell_stats` up to date after a change to the given shards (None: every
        shard), inside the caller's transaction: each shard's documents' cells recounted, its statistics
        grouped from them. The agents' strides are synced first; if an agent's stride changed or an agent
        went away, every shard is recounted whatever was asked."""
        stored = {a: (n, int(s)) for a, n, s in self.run("catalog.sql", "stored_strides")}
        strides, stride = {}, 1
        for agent, num_labels in self.run("catalog.sql", "cell_strides"):
            strides[agent] = (num_labels, stride)
            stride *= num_labels + 1
        if stride > 2**126:
            raise WorkspaceError(f"the agents of {self.dir} have too many label combinations (> 2**126)")
        if strides != stored:
            if any(strides.get(a) != v for a, v in stored.items()):
                shard_ids = None
            new = pa.table(
                {
                    "agent": list(strides),
                    "num_labels": pa.array([n for n, _ in strides.values()], pa.int64()),
                    "stride": pa.array([str(s) for _, s in strides.values()], pa.string()),
                }
            )
            with self.registered("new_strides", new):
                self.run("catalog.sql", "set_strides")
        # Packed cells summed as BIGINT when they all fit in one: a shard's recount is ~40% faster than in HUGEINT.
        cell_type = "BIGINT" if stride < 2**63 else "HUGEINT"
        params = {"bytes_per_token": TOKEN_BYTES}
        for shard_id in [None] if shard_ids is None else shard_ids:
            block = fragment("catalog.sql", "recount_all" if shard_id is None else "recount_shard")
            for stmt in split_statements(block.format(cell_type=cell_type)):
                self.execute(stmt, {k: {**params, "shard_id": shard_id}[k] for k in _PARAM.findall(stmt)})
        self.set_meta("cells_key", self.cells_key())

    def cells_key(self) -> str:
        """What the cell statistics are counted from now (documents, scores, labels, parts): equal to the
        `cells_key` meta when `doc_cells` and `cell_stats` are current."""
        return self.run("catalog.sql", "cells_key")[0][0]

    def ensure_cells(self) -> bool:
        """Recount every shard's cells if they are stale (a catalog made before cell statistics or before
        `doc_cells`, or scores changed by SQL behind the catalog's back); whether `doc_cells` and
        `cell_stats` are now current. A catalog opened read-only (a true `read_only` attribute) never
        writes: stale statistics stay as they are and it returns False, and the caller counts the cells
        itself (the console: one pass over every agent's scores)."""
        if self.get_meta("cells_key") == self.cells_key():
            return True
        if getattr(self, "read_only", False):
            return False
        with self.transaction():
            self._recount_cells(None)
        return True

    def repoint_parts(self, agent: str, shard_ids: list[int], path: str) -> None:
        """Name `path` (a compacted file holding these parts' rows) as the file of an agent's parts, in one
        transaction (`compaction.compact_parts`)."""
        with self.transaction():
            rows = self.run(
                "catalog.sql", "repoint_parts", agent=agent, shard_ids=shard_ids, path=self.stored_path(path)
            )
            if rows[0][0] != len(shard_ids):
                raise WorkspaceError(
                    f"agent {agent}: {rows[0][0]} of {len(shard_ids)} parts to compact exist"
                )

    def inconsistent_parts(self) -> list[tuple[str, int, str]]:
        """(agent, shard_id, what is wrong) of every part whose manifest row, scores and file disagree: its
        scores rows are not the part's documents, scores exist without a part, or the part's file is gone
        (local parts; deleted behind the catalog's back). `score` rescores these (`drop_parts` first)."""
        found = {}
        for agent, shard_id, num_rows, scored in self.run("catalog.sql", "part_consistency"):
            found[agent, shard_id] = (
                f"{scored:,} scores without a committed part"
                if num_rows is None
                else f"{scored:,} rows of scores for a part of {num_rows:,} documents"
            )
        for key, part in self.parts().items():
            if key not in found and not storage.is_url(part.path) and not os.path.exists(part.path):
                found[key] = f"its part file is missing ({part.path})"
        return [(agent, shard_id, why) for (agent, shard_id), why in sorted(found.items())]

    def record_failure(self, agent: str, shard_id: int, error: str) -> None:
        self.run("catalog.sql", "record_failure", agent=agent, shard_id=shard_id, error=error[:2000])

    # ----- views -------------------------------------------------------------------------------------
    def refresh_views(self) -> None:
        """(Re)create `doc_labels`: one row per document, `<agent>` (label name) and `<agent>_score` columns."""
        head = fragment("catalog.sql", "doc_labels_head")
        columns, joins = [], []
        for i, (name, _, _) in enumerate(self.agent_rows()):
            fill = {
                "i": i,
                "agent_lit": quote_literal(name),
                "label_col": quote_ident(name),
                "score_col": quote_ident(f"{name}_score"),
            }
            columns.append(fragment("catalog.sql", "doc_labels_agent_columns").format(**fill))
            joins.append(fragment("catalog.sql", "doc_labels_agent_join").format(**fill))
        self.execute("\n".join([head, *columns, fragment("catalog.sql", "doc_labels_from"), *joins]))
        self._refresh_documents_view()

    def register_filesystems(self) -> None:
        """Let DuckDB read non-local shards through fsspec (needed by the `documents` view)."""
        import fsspec

        if self.run("catalog.sql", "settings_locked")[0][0]:
            return  # another reader of this process sandboxed the shared instance
        urls = [s.uri for s in self.shards()] + [self.parts_url]
        protocols = {u.split("://", 1)[0] for u in urls if "://" in u}
        for protocol in sorted(protocols - {"file"}):
            if not self._con.filesystem_is_registered(protocol):
                self._con.register_filesystem(fsspec.filesystem(protocol))

    def _refresh_documents_view(self) -> None:
        """`documents` (doc_id, shard_id, row_idx, text): the texts, read from the shards when queried."""
        shards = self.shards()
        if not shards:
            self.run("catalog.sql", "documents_view_empty")
            return
        self.register_filesystems()
        paths = [quote_literal(s.uri.removeprefix("file://")) for s in shards]
        uris = "[" + ", ".join(paths) + "]"
        shard_uris = ", ".join(f"({int(s.shard_id)}, {p})" for s, p in zip(shards, paths))
        try:
            text_column = ".".join(quote_ident(c) for c in shards[0].text_column.split("."))
            (view,) = split_statements(
                fragment("catalog.sql", "documents_view").format(
                    uris=uris, shard_uris=shard_uris, text_column=text_column
                )
            )
            self.execute(view)
        except duckdb.Error:
            # Creating the view reads every shard's schema: a missing or unreadable shard must not fail
            # `init` or `agent add`. The previous definition stays; querying it names the bad shard.
            pass
