"""Shared fixtures: a small corpus of real text (Python stdlib source and the Python docs' prose) as Parquet
shards with a `source` column, and a small fastText classifier (code vs docs) fitted on it."""

from __future__ import annotations

import sysconfig
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

CHUNK_CHARS = 600


def text_chunks(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """Split on line boundaries into pieces of about `size` characters (blank pieces dropped)."""
    out, current = [], ""
    for line in text.splitlines(keepends=True):
        current += line
        if len(current) >= size:
            out.append(current)
            current = ""
    if current.strip():
        out.append(current)
    return [c for c in out if c.strip()]


@pytest.fixture(scope="session")
def real_docs() -> list[tuple[str, str]]:
    """(text, source) pairs alternating Python stdlib source ("code") and Python docs prose ("docs")."""
    from pydoc_data.topics import topics

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code: list[str] = []
    for path in sorted(stdlib.glob("*.py")):
        code += text_chunks(path.read_text(encoding="utf-8", errors="replace"))
    prose = [c for name in sorted(topics) for c in text_chunks(topics[name])]
    assert len(code) > 2000 and len(prose) > 500, "the stdlib sources or pydoc topics look incomplete"
    n = min(len(code), len(prose))
    docs: list[tuple[str, str]] = []
    for c, p in zip(code[:n], prose[:n]):
        docs += [(c, "code"), (p, "docs")]
    return docs


def write_shards(
    directory: Path,
    docs: list[tuple[str, str]],
    num_shards: int,
    rows_per_shard: int,
    row_group_rows: int = 0,
) -> list[Path]:
    """Write `num_shards` Parquet shards of `rows_per_shard` documents each (docs reused cyclically)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(num_shards):
        rows = [docs[(s * rows_per_shard + i) % len(docs)] for i in range(rows_per_shard)]
        table = pa.table({"text": [t for t, _ in rows], "source": [src for _, src in rows]})
        path = directory / f"shard-{s:03d}.parquet"
        pq.write_table(table, path, row_group_size=row_group_rows or max(1, rows_per_shard // 4))
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def make_corpus(real_docs) -> Callable[..., list[Path]]:
    """Factory: make_corpus(directory, num_shards, rows_per_shard, row_group_rows=0) -> shard paths."""

    def make(directory: Path, num_shards: int, rows_per_shard: int, row_group_rows: int = 0) -> list[Path]:
        return write_shards(directory, real_docs, num_shards, rows_per_shard, row_group_rows)

    return make


def fit_code_vs_docs(path: Path, docs: list[tuple[str, str]], **params) -> Path:
    """Fit a fastText classifier with classes `code` and `docs` with the parameters `agent add` uses."""
    from corpus_agents.scoring.agents.fasttext import train_fasttext

    train_fasttext([t for t, _ in docs], [s for _, s in docs], path, **params)
    return path


@pytest.fixture(scope="session")
def fit_fasttext() -> Callable[..., Path]:
    """Factory: fit_fasttext(path, [(text, label), ...], **fastText params) -> path (written atomically)."""
    return fit_code_vs_docs


@pytest.fixture(scope="session")
def fasttext_model(tmp_path_factory, real_docs) -> Path:
    """A fastText model file (classes `code`, `docs`) fitted on the first 2,000 real documents."""
    return fit_code_vs_docs(tmp_path_factory.mktemp("fasttext") / "code_vs_docs.bin", real_docs[:2000])


@pytest.fixture(scope="session")
def scored_workspace(make_corpus, fasttext_model: Path) -> Callable[[Path, int], Path]:
    """Factory: scored_workspace(root, num_prose) -> root/ws, a workspace of 2 shards x 150 real documents
    scored by a `domain` (metadata) and a `kind` (fastText) agent, with `reference.parquet`: `num_prose`
    Python-docs passages cut into (prompt, answer) pairs, for training tests."""
    from pydoc_data.topics import topics

    from click.testing import CliRunner

    from corpus_agents.cli import main

    def build(root: Path, num_prose: int) -> Path:
        make_corpus(root / "corpus", num_shards=2, rows_per_shard=150, row_group_rows=50)
        ws = root / "ws"
        runner = CliRunner()
        for args in (
            ["init", str(ws), "--corpus", str(root / "corpus" / "*.parquet")],
            ["agent", "add", str(ws), "domain", "--kind", "metadata", "--column", "source"],
            ["agent", "add", str(ws), "kind", "--kind", "fasttext", "--model", str(fasttext_model)],
            ["score", str(ws), "--workers", "1", "--quiet"],
        ):
            result = runner.invoke(main, args)
            assert result.exit_code == 0, result.output
        prose = [" ".join(t.split()) for t in topics.values() if len(t) > 400][:num_prose]
        pq.write_table(
            pa.table({"prompt": [p[:150] for p in prose], "answer": [" " + p[150:230] for p in prose]}),
            ws / "reference.parquet",
        )
        return ws

    return build
