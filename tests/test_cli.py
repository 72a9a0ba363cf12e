"""The CLI end to end on a small real-text corpus: init, agent add/list/remove, score, status, query; every
command's help has an example, `--json` output, `next:` hints and the old spellings of renamed options."""

from __future__ import annotations

import json
import pydoc_data.topics
import sysconfig
from pathlib import Path

import click
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from corpus_agents.cli import main

PROSE = [t for t in pydoc_data.topics.topics.values() if len(t) > 300]
CODE = [
    p.read_text(errors="replace")[:3000]
    for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:120]
]


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, (result.output, result.stderr if result.stderr_bytes else "")
    return result.output


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """Three shards mixing Python docs prose and stdlib code, with small row groups."""
    docs = [(t, "docs") for t in PROSE] + [(t, "code") for t in CODE]
    for i in range(3):
        part = docs[i::3]
        table = pa.table({"text": [d[0] for d in part], "source": [d[1] for d in part]})
        pq.write_table(table, tmp_path / f"shard-{i}.parquet", row_group_size=20)
    return tmp_path


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    path = tmp_path / "ref" / "reference.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"context": PROSE[::2]}), path)
    return path


def scalar(ws: Path, sql: str) -> object:
    out = run("query", str(ws), sql, "--format", "json")
    return next(iter(json.loads(out.splitlines()[0]).values()))


def test_full_flow(corpus: Path, reference: Path) -> None:
    ws = corpus / "ws"
    out = run("init", str(ws), "--corpus", str(corpus / "shard-*.parquet"))
    assert "registered 3 new shards" in out
    assert "0 new shards (3 already known)" in run(
        "init", str(ws), "--corpus", str(corpus / "shard-*.parquet")
    )
    n_docs = len(PROSE) + len(CODE)
    assert scalar(ws, "SELECT count(*) FROM docs") == n_docs
    assert scalar(ws, "SELECT count(*) FROM docs WHERE doc_id <> (shard_id::BIGINT << 32 | row_idx)") == 0

    run("agent", "add", str(ws), "domain", "--kind", "metadata", "--column", "source")
    out = run(
        "agent", "add", str(ws), "quality", "--kind", "fasttext", "--fit-positive", str(reference),
        "--positive-columns", "context", "--bins", "0,0.5,1",
    )  # fmt: skip
    assert "labels: 0-0.5, 0.5-1" in out
    assert "quality\tfasttext\t2 labels" in run("agent", "list", str(ws))

    out = run("score", str(ws), "--workers", "1", "--quiet")
    assert "committed 6 parts, 0 already done, 0 failed" in out
    assert "committed 0 parts, 6 already done" in run("score", str(ws), "--workers", "1", "--quiet")

    rows = run(
        "query",
        str(ws),
        "SELECT domain, quality, count(*) AS n FROM doc_labels GROUP BY ALL",
        "--format",
        "csv",
    )
    assert rows.splitlines()[0] == '"domain","quality","n"'
    assert scalar(ws, "SELECT count(*) FROM doc_labels WHERE domain IS NULL OR quality IS NULL") == 0
    # The fitted classifier scores reference-like prose above code.
    prose = scalar(ws, "SELECT avg(quality_score) FROM doc_labels WHERE domain = 'docs'")
    code = scalar(ws, "SELECT avg(quality_score) FROM doc_labels WHERE domain = 'code'")
    assert prose > code + 0.1  # weak on 35 positives: the negatives are a corpus sample, prose included

    # Texts are one join away: the `documents` view reads them from the shards.
    assert (
        scalar(
            ws, "SELECT count(*) FROM documents d JOIN docs USING (doc_id) WHERE strlen(d.text) = text_bytes"
        )
        == n_docs
    )

    out = run("status", str(ws))
    assert "3 shards" in out and "quality" in out and "domain" in out

    parquet = corpus / "out.parquet"
    run("query", str(ws), "SELECT * FROM doc_labels", "--format", "parquet", "--output", str(parquet))
    assert pq.read_table(parquet).num_rows == n_docs
    assert set(pq.read_table(parquet).column_names) >= {
        "doc_id",
        "domain",
        "domain_score",
        "quality",
        "quality_score",
    }

    run("agent", "remove", str(ws), "quality")
    assert scalar(ws, "SELECT count(*) FROM scores WHERE agent = 'quality'") == 0
    assert "quality" not in run("query", str(ws), "SELECT * FROM doc_labels LIMIT 1", "--format", "csv")


def test_limit_and_sample_make_partial_parts_that_a_full_run_completes(corpus: Path) -> None:
    ws = corpus / "ws"
    run("init", str(ws), "--corpus", str(corpus / "*.parquet"))
    run("agent", "add", str(ws), "domain", "--kind", "metadata", "--column", "source")
    run("score", str(ws), "--limit", "30", "--quiet")
    assert scalar(ws, "SELECT count(*) FROM scores") == 30
    assert scalar(ws, "SELECT bool_and(NOT complete) FROM score_parts") is True
    run("score", str(ws), "--sample-fraction", "0.5", "--quiet")
    sampled = scalar(ws, "SELECT count(*) FROM scores")
    assert 0 < sampled < len(PROSE) + len(CODE)
    run("score", str(ws), "--quiet")
    assert scalar(ws, "SELECT count(*) FROM scores") == len(PROSE) + len(CODE)
    assert scalar(ws, "SELECT count(*) - count(DISTINCT doc_id) FROM scores") == 0
    assert scalar(ws, "SELECT bool_and(complete) FROM score_parts") is True


def test_readable_errors(corpus: Path) -> None:
    ws = corpus / "ws"
    out = run("status", str(corpus / "nope"), code=2)
    assert "does not exist" in out
    run("init", str(ws), "--corpus", str(corpus / "shard-0.parquet"))
    out = run("query", str(ws), "SELEC 1", code=2)
    assert out.startswith("error: SQL error:") and len(out.strip().splitlines()) == 1
    out = run("agent", "add", str(ws), "x", "--kind", "nope", code=2)
    assert "unknown agent kind 'nope'" in out
    out = run("agent", "add", str(ws), "bad-name", "--kind", "metadata", "--column", "source", code=2)
    assert "must be an identifier" in out
    out = run("agent", "add", str(ws), "domain", "--kind", "metadata", "--column", "missing", code=2)
    assert "no column 'missing'" in out
    out = run("score", str(ws), "--agents", "ghost", code=2)
    assert "no agent named 'ghost'" in out
    out = run("init", str(ws), "--corpus", str(corpus / "none-*.parquet"), code=2)
    assert "no files match" in out
    out = run("query", str(ws), "SELECT 1", "--format", "parquet", code=2)
    assert "--output" in out


def test_text_column_option_and_nested_metadata(tmp_path: Path) -> None:
    table = pa.table(
        {
            "content": PROSE[:40],
            "meta": pa.array([{"set": "a" if i % 2 else "b", "n": i} for i in range(40)]),
        }
    )
    pq.write_table(table, tmp_path / "s.parquet")
    ws = tmp_path / "ws"
    out = run("init", str(ws), "--corpus", str(tmp_path / "s.parquet"), code=1)  # no `text` column
    assert "no column 'text'" in out
    run("init", str(ws), "--corpus", str(tmp_path / "s.parquet"), "--text-column", "content")
    out = run("init", str(ws), "--corpus", str(tmp_path / "s.parquet"), code=2)
    assert "uses text column 'content'" in out
    run("agent", "add", str(ws), "subset", "--kind", "metadata", "--column", "meta.set")
    run("score", str(ws), "--quiet")
    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    assert con.sql("SELECT subset, count(*) FROM doc_labels GROUP BY ALL ORDER BY 1").fetchall() == [
        ("a", 20),
        ("b", 20),
    ]


def invoke(*args: str, code: int = 0) -> Result:
    """The CLI with stdout and stderr apart."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    return result


def commands(cmd: click.Command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group under `cmd`, as the words that invoke it."""
    found = [path]
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            found += commands(sub, (*path, name))
    return found


@pytest.mark.parametrize("path", commands(main), ids=lambda p: " ".join(p) or "corpus-agents")
def test_every_command_has_an_example_in_its_help(path: tuple[str, ...]) -> None:
    out = run(*path, "--help")
    assert "Example" in out and "corpus-agents " in out.split("Example", 1)[1]


def test_json_output_of_status_runs_and_agent_list(corpus: Path) -> None:
    ws = corpus / "ws"
    run("init", str(ws), "--corpus", str(corpus / "shard-*.parquet"), "--quiet")
    run("agent", "add", str(ws), "domain", "--kind", "metadata", "--column", "source")
    assert json.loads(invoke("runs", ws, "--json").stdout) == []
    run("score", str(ws), "--workers", "1", "--quiet")
    status = json.loads(invoke("status", ws, "--json").stdout)
    assert {"directory", "corpus", "agents", "failures"} <= set(status) and status["failures"] == []
    assert status["corpus"] == {
        "shards": 3,
        "documents": len(PROSE) + len(CODE),
        "bytes": status["corpus"]["bytes"],
    }
    (domain,) = status["agents"]
    assert {"name", "kind", "labels", "committed", "partial", "pending", "failed", "docs_scored"} <= set(
        domain
    )
    assert (domain["name"], domain["committed"], domain["pending"]) == ("domain", 3, 0)
    assert json.loads(invoke("agent", "list", ws, "--json").stdout) == [
        {"name": "domain", "kind": "metadata", "labels": ["code", "docs", "(other)"], "config": {"column": "source"}}
    ]  # fmt: skip
    run("select", str(ws), "--run", "static", "--static", "--tokens", "20000")
    (row,) = json.loads(invoke("runs", ws, "--json").stdout)
    assert set(row) == {
        "run_id", "init_from", "rounds", "steps", "train_tokens", "compute_flops", "probe_share",
        "heldout_loss", "theta", "signal",
    }  # fmt: skip
    assert (row["run_id"], row["rounds"]) == ("static", 0)
    # a static selection uses the console preset's mode (v2: sample) unless --mode names another
    run("select", str(ws), "--run", "static-topk", "--static", "--tokens", "20000", "--mode", "topk")
    modes = invoke("query", ws, "SELECT run_id, mode FROM selections ORDER BY run_id", "--format", "json")
    rows = [json.loads(line) for line in modes.stdout.splitlines()]  # JSON lines
    assert [(r["run_id"], r["mode"]) for r in rows] == [("static", "sample"), ("static-topk", "topk")]


def test_next_hints_after_commands_that_change_the_workspace(corpus: Path) -> None:
    ws = corpus / "my ws"
    out = invoke("init", ws, "--corpus", corpus / "shard-0.parquet", "--quiet").stdout
    assert f"next: corpus-agents agent add '{ws}' NAME --kind KIND" in out
    out = invoke("agent", "add", ws, "domain", "--kind", "metadata", "--column", "source").stdout
    assert out.splitlines()[-1] == f"next: corpus-agents score '{ws}'"
    out = invoke("score", ws, "--workers", "1", "--quiet").stdout
    assert out.splitlines()[-1].startswith(f"next: corpus-agents query '{ws}' \"SELECT * FROM doc_labels")
    out = invoke("init", ws, "--corpus", corpus / "shard-1.parquet", "--quiet").stdout  # agents: score next
    assert out.splitlines()[-1] == f"next: corpus-agents score '{ws}'"


def test_old_option_spellings_work_for_a_release_with_one_deprecation_line(corpus: Path) -> None:
    ws = corpus / "ws"
    result = invoke("init", ws, "--corpus", corpus / "shard-*.parquet", "--config", "en", "--quiet")
    assert result.stderr.splitlines() == [
        "warning: --config is deprecated, use --hub-config (--config goes in the next release)"
    ]
    run("agent", "add", str(ws), "domain", "--kind", "metadata", "--column", "source")
    result = invoke("score", ws, "--sample", "0.5", "--workers", "1", "--quiet")
    assert result.stderr.count("deprecated") == 1 and "use --sample-fraction" in result.stderr
    assert scalar(ws, "SELECT bool_and(NOT complete) FROM score_parts") is True  # the old spelling's value
    result = invoke("query", ws, "SELECT * FROM range(5)", "--max-rows", "2")
    assert "(5 rows, 2 shown; --show-rows" in result.stdout and "use --show-rows" in result.stderr
    result = invoke("query", ws, "SELECT 1", "--max-rows", "2", "--show-rows", "3", code=2)
    assert "--max-rows is the old spelling of --show-rows; give --show-rows only" in result.stderr
    pipeline = Path(__file__).resolve().parent.parent / "pipelines" / "demo.yaml"
    for command in ("train", "select"):
        extra = ["--run", "r"] if command == "select" else []
        old = invoke(command, ws, *extra, "--config", pipeline, "--print-config")
        new = invoke(command, ws, *extra, "--pipeline", pipeline, "--print-config")
        assert old.stdout == new.stdout and "use --pipeline" in old.stderr and not new.stderr
        assert "--config" not in invoke(command, "--help").stdout  # hidden
