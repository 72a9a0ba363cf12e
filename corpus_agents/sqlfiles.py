"""Loads the SQL statements in `sql/` (every statement the catalog runs lives there, readable by hand)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

_BLOCK = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def resource_dir(name: str) -> Path:
    """`corpus_agents/<name>` in an installed wheel, the repository's top-level `<name>/` in a checkout
    (`sql`, `pipelines`)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / name, here.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"cannot find the {name}/ directory next to {here}")


def sql_dir() -> Path:
    return resource_dir("sql")


@functools.cache
def read_sql_file(name: str) -> str:
    return (sql_dir() / name).read_text(encoding="utf-8")


@functools.cache
def statement(file: str, name: str) -> str:
    """The block `-- name: <name>` of `sql/<file>`, up to the next block."""
    text = read_sql_file(file)
    parts = _BLOCK.split(text)
    blocks = dict(zip(parts[1::2], parts[2::2]))
    if name not in blocks:
        raise KeyError(f"no statement {name!r} in sql/{file}")
    return blocks[name].strip()


def fragment(file: str, name: str) -> str:
    """A block used as a template or as a piece of a larger statement, its comment lines dropped."""
    return "\n".join(
        line for line in statement(file, name).splitlines() if not line.lstrip().startswith("--")
    )


def split_statements(sql: str) -> list[str]:
    """Split a block into statements at `;` line ends, dropping comment-only lines."""
    body = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in re.split(r";\s*$", body, flags=re.MULTILINE) if s.strip()]
