"""What users ask of training runs: list them, make a static selection, summarise one, export it as Parquet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from corpus_agents.errors import CorpusAgentsError
from corpus_agents.scoring.catalog import Catalog, quote_ident
from corpus_agents.scoring.corpus import iter_doc_batches, pack_doc_ids
from corpus_agents.sqlfiles import statement
from corpus_agents.training.selection import read_snapshot


def ensure_schema(catalog: Catalog) -> None:
    """The console's and the trainer's tables, created on first use."""
    catalog.run_block("console.sql", "schema", {})
    catalog.run_block("runs.sql", "schema", {})


def list_runs(catalog: Catalog) -> pa.Table:
    """One row per run: rounds, latest theta per agent, selection size and held-out loss of its last round."""
    ensure_schema(catalog)
    return catalog.con.sql(statement("runs.sql", "list_runs")).to_arrow_table()


def selection_path(catalog: Catalog, run_id: str, round_: int | None) -> tuple[int, Path]:
    ensure_schema(catalog)
    rows = catalog.con.execute(statement("runs.sql", "selection_of"), [run_id, round_]).fetchall()
    if not rows:
        at = f"round {round_}" if round_ is not None else "any round"
        raise CorpusAgentsError(f"run {run_id!r} has no selection at {at} (see `corpus-agents runs`)")
    return int(rows[0][0]), Path(rows[0][1])


def static_selection(
    catalog: Catalog, run_id: str, tokens: int, mode: str, console: dict, init_from: str | None
) -> Path:
    """Fuse the agents with the console's round-0 state (config prior, or a run's learnt w and theta) and
    select `tokens` without any training feedback: round 0 of run `run_id`."""
    from corpus_agents.training.console import Console, ConsoleConfig

    with Console(catalog, run_id, ConsoleConfig.from_dict({**console, "mode": mode})) as con:
        con.start(init_from=init_from)
        return con.select(0, tokens, catalog.dir / "runs" / run_id / "selections" / "round-00000.parquet")


def summarize_selection(catalog: Catalog, run_id: str, round_: int | None) -> str:
    """Documents, tokens and the share of each agent's labels in a round's selection."""
    round_, path = selection_path(catalog, run_id, round_)
    table, _ = read_snapshot(path)
    lines = [f"run {run_id} round {round_}: {table.num_rows:,} documents in {path}"]
    catalog.con.register("selected", table.select(["doc_id"]))
    try:
        for name, _, _ in catalog.agent_rows():
            rows = catalog.con.execute(
                statement("runs.sql", "label_shares").format(agent=quote_ident(name))
            ).fetchall()
            shares = ", ".join(f"{label} {share:.0%}" for label, share in rows[:8])
            lines.append(f"  {name}: {shares}{', ...' if len(rows) > 8 else ''}")
    finally:
        catalog.con.unregister("selected")
    return "\n".join(lines)


def export_selection(
    catalog: Catalog, run_id: str, round_: int | None, out: Path, shard_docs: int
) -> tuple[list[Path], int]:
    """Write a round's selected documents (text, doc_id, every agent's label and score) as Parquet shards."""
    round_, path = selection_path(catalog, run_id, round_)
    table, shards = read_snapshot(path)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    buffer: list[pa.Table] = []
    pending = 0

    def flush() -> None:
        nonlocal buffer, pending
        if buffer:
            target = out / f"part-{len(written):05d}.parquet"
            pq.write_table(pa.concat_tables(buffer).combine_chunks(), target)
            written.append(target)
        buffer, pending = [], 0

    total = 0
    for shard_id in sorted(shards):
        rows = table.filter(pc.equal(table["shard_id"], shard_id))
        row_idx = np.sort(rows["row_idx"].to_numpy().astype(np.int64))
        ref = shards[shard_id]
        for batch_rows, batch in iter_doc_batches(ref.uri, ref.text_column, [], 8192, row_idx):
            doc_ids = pa.array(pack_doc_ids(shard_id, batch_rows), pa.int64())
            catalog.con.register("exported", pa.table({"doc_id": doc_ids}))
            labels = catalog.con.sql(statement("runs.sql", "export_labels")).to_arrow_table()
            catalog.con.unregister("exported")
            part = labels.append_column("text", pa.array(batch.texts, pa.string()))
            buffer.append(part)
            pending += part.num_rows
            total += part.num_rows
            if pending >= shard_docs:
                flush()
    flush()
    return written, total
