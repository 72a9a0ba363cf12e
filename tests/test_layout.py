"""The package's layout rules: only the catalog touches its DuckDB connection, and SQL lives in sql/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "corpus_agents"

# SQL statements that may stay in Python: trivial pragmas only.
ALLOWED_SQL = re.compile(r"(SET|PRAGMA|RESET)\s", re.IGNORECASE)
SQL_START = re.compile(
    r"(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|WITH|COPY|BEGIN|COMMIT|ROLLBACK|PIVOT|MERGE)\b",
    re.IGNORECASE,
)


def modules() -> dict[str, ast.Module]:
    return {
        str(path.relative_to(PACKAGE)): ast.parse(path.read_text(encoding="utf-8"), str(path))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def not_statements(tree: ast.Module) -> set[int]:
    """ids of the string constants that are docstrings (prose may start with "With" or "Select") or pieces
    of an f-string (the f-string is checked as a whole)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
        elif isinstance(node, ast.JoinedStr):
            found.update(id(value) for value in node.values)
    return found


def sql_literals(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, text) of string constants and f-strings that read as an SQL statement: an upper-case statement
    keyword (as SQL is written here) followed by more text, so that prose such as "with --pipeline" passes."""
    skip = not_statements(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value
        elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            text = str(node.values[0].value)
        else:
            continue
        text = text.strip()
        words = text.split(None, 1)
        # A statement is its keyword followed by more SQL, never a lone word or prose.
        if SQL_START.match(text) and len(words) == 2 and words[0].isupper() and not ALLOWED_SQL.match(text):
            out.append((node.lineno, text.splitlines()[0][:60]))
    return out


def test_only_the_catalog_touches_its_connection() -> None:
    offenders = []
    for name, tree in modules().items():
        if name == "scoring/catalog.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("con", "_con"):
                offenders.append(f"{name}:{node.lineno} .{node.attr}")
    assert offenders == [], "use the Catalog's methods (run, arrow, transaction, registered, cursor)"


def test_no_sql_statements_outside_sql_dir() -> None:
    found = {f"{name}:{line} {text}" for name, tree in modules().items() for line, text in sql_literals(tree)}
    assert found == set(), "move these statements into a named block of sql/*.sql"


def test_the_checks_see_what_they_look_for() -> None:
    """The scans above find a connection access and an SQL statement when there is one."""
    tree = ast.parse(
        'rows = catalog.con.execute("SELECT count(*) FROM docs")\n'
        'cat._con.execute(f"INSERT INTO t VALUES ({x})")\n'
        'cat.execute("SET threads = 4")\n'
        'def f():\n    """With a docstring that reads like SQL."""\n    return "Select the documents"\n'
    )
    assert sql_literals(tree) == [(1, "SELECT count(*) FROM docs"), (2, "INSERT INTO t VALUES (")]
    assert sorted(n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and "con" in n.attr) == [
        "_con",
        "con",
    ]
