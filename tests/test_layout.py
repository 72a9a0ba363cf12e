"""The package's layout rules: only the catalog touches its DuckDB connection, SQL lives in sql/, the
modules import each other without a cycle, and scoring never imports training."""

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


def module_name(path: Path) -> str:
    """`corpus_agents.scoring.catalog` for corpus_agents/scoring/catalog.py, the package for an __init__.py."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


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


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(tree: ast.Module, *, module_level: bool) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of a module: those run when it is imported (its top level, class bodies,
    if/try/with blocks, but not function bodies nor `if TYPE_CHECKING:`), or with `module_level=False` all."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.append(child)
            elif module_level and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            elif module_level and isinstance(child, ast.If) and is_type_checking(child):
                visit(ast.Module(body=child.orelse, type_ignores=[]))
            else:
                visit(child)

    visit(tree)
    return found


def imported_modules(
    name: str, is_package: bool, node: ast.Import | ast.ImportFrom, known: set[str]
) -> set[str]:
    """The corpus_agents modules an import statement in module `name` imports: `from a.b import c` is a.b.c
    when that is a module, else a.b; relative imports are resolved against `name`."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = name.split(".") if is_package else name.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, base] if base else package)
        targets = [
            f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names
        ]
    out = set()
    for target in targets:
        while target and target not in known:  # `import corpus_agents.x.y` where y is not a module
            target = target.rpartition(".")[0]
        if target:
            out.add(target)
    return out


def import_graph(*, module_level: bool = True) -> dict[str, set[str]]:
    """module -> the corpus_agents modules it imports (module-level imports only, unless told otherwise)."""
    paths = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
    known = set(paths)
    graph = {}
    for name, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_package = path.name == "__init__.py"
        graph[name] = {
            target
            for node in import_nodes(tree, module_level=module_level)
            for target in imported_modules(name, is_package, node, known)
            if target != name
        }
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, nodes in sorted order)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle() -> None:
    graph = import_graph()
    assert "corpus_agents.scoring.catalog" in graph["corpus_agents.scoring.driver"]  # the graph sees imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_scoring_never_imports_training() -> None:
    """The scoring half stands alone: no module under scoring/ imports training, not even in a function."""
    offenders = sorted(
        f"{name} imports {target}"
        for name, targets in import_graph(module_level=False).items()
        if name.startswith("corpus_agents.scoring")
        for target in targets
        if target == "corpus_agents.training" or target.startswith("corpus_agents.training.")
    )
    assert offenders == []


def test_the_import_graph_sees_what_it_looks_for() -> None:
    """Imports are resolved (absolute, relative, `from package import module`), function-level and
    TYPE_CHECKING imports are left out of the module-level graph, and a cycle is found and printed."""
    known = {"corpus_agents", "corpus_agents.scoring", "corpus_agents.scoring.parts", "corpus_agents.errors"}
    tree = ast.parse(
        "from corpus_agents.scoring import parts\n"
        "from ..errors import one_line\n"
        "import corpus_agents.scoring.parts.Shard\n"
        "if TYPE_CHECKING:\n    from corpus_agents import errors\n"
        "def f():\n    import corpus_agents.errors\n"
    )
    resolved = [
        imported_modules("corpus_agents.scoring.catalog", False, node, known)
        for node in import_nodes(tree, module_level=True)
    ]
    assert resolved == [
        {"corpus_agents.scoring.parts"},
        {"corpus_agents.errors"},
        {"corpus_agents.scoring.parts"},
    ]
    assert len(import_nodes(tree, module_level=False)) == 5
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


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
