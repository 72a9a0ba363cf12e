"""Writes a query result (`Catalog.query`) as a table, CSV, JSON or Parquet; tables show data as plain text."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence

import pyarrow as pa
from rich.console import Console
from rich.table import Table
from rich.text import Text

from corpus_agents.errors import CorpusAgentsError


def write_result(table: pa.Table, fmt: str, output: str | None, max_rows: int = 100) -> None:
    if fmt == "parquet":
        if not output:
            raise CorpusAgentsError("--format parquet needs --output FILE")
        import pyarrow.parquet as pq

        pq.write_table(table, output)
        return
    out = open(output, "w", encoding="utf-8", newline="") if output else sys.stdout
    try:
        if fmt == "csv":
            import pyarrow.csv as pacsv

            buf = pa.BufferOutputStream()
            pacsv.write_csv(table, buf)
            out.write(buf.getvalue().to_pybytes().decode("utf-8"))
        elif fmt == "json":
            for row in table.to_pylist():
                out.write(json.dumps(row, default=str, ensure_ascii=False) + "\n")
        else:
            _print_table(table, out, max_rows)
    finally:
        if output:
            out.close()


def make_console(file: object = None) -> Console:
    """A rich console; output that is not a terminal (a pipe, a file) gets a wide fixed width, not 80."""
    stream = file or sys.stdout
    return Console(file=stream, width=None if stream.isatty() else 160)


def text_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> Table:
    """A Rich table whose header and cells are plain text, never markup: a value `[red]x[/red]` prints as
    itself and `[/]` is no error. Floats show 4 significant digits, None an empty cell."""
    shown = Table()
    for name in header:
        shown.add_column(Text(str(name)))
    for row in rows:
        shown.add_row(
            *(Text("" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)) for v in row)
        )
    return shown


def _print_table(table: pa.Table, out: object, max_rows: int) -> None:
    console = make_console(out)
    console.print(text_table(table.column_names, (r.values() for r in table.slice(0, max_rows).to_pylist())))
    if table.num_rows > max_rows:
        console.print(
            f"({table.num_rows:,} rows, {max_rows} shown; --show-rows or --format csv for all)", markup=False
        )
