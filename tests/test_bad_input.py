"""Bad input (issue 12's hardening cases): every name and number is checked before anything is written, a
bad one is exit 2 and leaves nothing behind, tables print data as text, and the catalog's invariants hold
(score counts = committed part rows; no complete part with 0 rows for a shard that has rows). Property
tests draw option values and names at random. The CLI runs in this process (CliRunner) on tiny corpora."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from helpers import metadata_agent, shard_task, write_shard
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from corpus_agents.cli import main
from corpus_agents.errors import AgentError
from corpus_agents.names import AGENT_NAME, RUN_ID, RunIdError
from corpus_agents.scoring.agents.base import AgentContext
from corpus_agents.scoring.agents.fasttext import FastTextAgent
from corpus_agents.scoring.agents.topic import TopicAgent
from corpus_agents.scoring.catalog import Catalog
from corpus_agents.scoring.driver import RunSummary, commit_results, plan_tasks
from corpus_agents.scoring.parts import PartResult, score_shard
from corpus_agents.training.console import Console
from corpus_agents.training.runs import RunPaths
from corpus_agents.workspace import Workspace

SHARDS, ROWS = 3, 40
#: Few examples on a shared workspace per test (fast); no example database in the working tree.
PROPERTY = settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
#: Names a careless or hostile user might give: paths, markup, SQL, empty, too long, non-ASCII.
HOSTILE = [
    "../../../x",
    "../models/quality",
    "a/b",
    "..",
    ".",
    "",
    "x[/]",
    "[red]x[/red]",
    "a b",
    "x'; DROP TABLE agents; --",
    "é",
    "x" * 101,
    "-x",
    "{root}/evil",  # an absolute path inside the test's directory
]


def invoke(*args: Any, code: int | None = 0) -> Any:
    """The CLI in this process; `code` is the exit status it must end with (None: any). A crash (an
    exception other than a clean exit) always fails the test."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    if code is not None:
        assert result.exit_code == code, f"exit {result.exit_code}\n{result.output}"
    return result


def error_line(result: Any) -> str:
    """The one line that names the problem: `error: ...` (ours) or click's `Error: ...` usage line."""
    lines = [line for line in result.output.splitlines() if line.lower().startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def tree(root: Path, skip: Path | None = None) -> dict[str, tuple[bool, int, int]]:
    """Every file and directory under `root` (except the `skip` subtree): path -> (is dir, size, mtime)."""
    out = {}
    for path in root.rglob("*"):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        st_ = path.lstat()
        out[str(path.relative_to(root))] = (
            path.is_dir(),
            0 if path.is_dir() else st_.st_size,
            st_.st_mtime_ns,
        )
    return out


def hostile(name: str, root: Path) -> str:
    return name.replace("{root}", str(root))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A directory a few levels below tmp_path, so `../` in a name still lands where `tree` sees it."""
    path = tmp_path / "a" / "b" / "c"
    for s in range(SHARDS):
        write_shard(path / "corpus" / f"shard-{s}.parquet", ROWS)
    return path


@pytest.fixture
def ws(root: Path) -> Path:
    """root/ws over the 3 shards with a metadata agent `domain`."""
    invoke("init", root / "ws", "--corpus", root / "corpus" / "*.parquet", "--quiet")
    invoke("agent", "add", root / "ws", "domain", "--kind", "metadata", "--column", "source")
    return root / "ws"


def catalog_rows(ws: Path, sql: str) -> list[dict[str, Any]]:
    with Catalog(ws) as cat:
        return cat.query(sql).to_pylist()


def check_invariants(ws: Path) -> None:
    """Score counts equal committed part rows; a complete part holds all of its shard's documents."""
    rows = catalog_rows(
        ws,
        "SELECT p.agent, p.shard_id, p.num_rows, p.complete, s.num_rows AS shard_rows, "
        "(SELECT count(*) FROM scores c WHERE c.agent = p.agent AND c.doc_id >> 32 = p.shard_id) AS scored "
        "FROM score_parts p JOIN shards s USING (shard_id)",
    )
    for r in rows:
        assert r["scored"] == r["num_rows"], r
        if r["complete"]:
            assert r["num_rows"] == r["shard_rows"] > 0, r
    orphans = catalog_rows(
        ws,
        "SELECT count(*) AS n FROM scores c WHERE NOT EXISTS (SELECT 1 FROM score_parts p "
        "WHERE p.agent = c.agent AND p.shard_id = c.doc_id >> 32)",
    )
    assert orphans == [{"n": 0}]


# ----- 1. --batch-rows below 1 -----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["-5", "0"])
def test_batch_rows_below_one_is_refused_and_commits_nothing(ws: Path, value: str) -> None:
    result = invoke("score", ws, "--batch-rows", value, "--workers", "1", "--quiet", code=2)
    assert "--batch-rows" in error_line(result)
    assert catalog_rows(ws, "SELECT count(*) AS n FROM score_parts") == [{"n": 0}]
    assert not any(p.is_file() for p in (ws / "parts").rglob("*"))
    invoke("score", ws, "--workers", "1", "--quiet")  # a later run scores everything
    assert catalog_rows(ws, "SELECT count(*) AS n FROM scores") == [{"n": SHARDS * ROWS}]
    check_invariants(ws)


def test_the_library_refuses_batch_rows_below_one(ws: Path, root: Path) -> None:
    with Catalog(ws) as cat:
        with pytest.raises(ValueError, match="batch_rows"):
            plan_tasks(cat, cat.agents(), batch_rows=-5)
    task = shard_task(root / "corpus" / "shard-0.parquet", root / "parts", [metadata_agent()], batch_rows=-5)
    results = score_shard(task)
    assert [r.error for r in results] == [f"shard {task.shard.uri}: batch_rows must be >= 1, not -5"]
    assert not (root / "parts").exists()


def test_a_part_with_fewer_rows_than_planned_is_failed_not_committed(ws: Path) -> None:
    """The last guard: even a worker that wrote an empty part for a shard with rows cannot commit it."""
    with Catalog(ws) as cat:
        task = plan_tasks(cat, cat.agents())[0][0]
        spec = task.parts[0]
        Path(spec.path).parent.mkdir(parents=True)
        pq.write_table(pa.table({"doc_id": pa.array([], pa.int64())}), spec.path)
        empty = PartResult("domain", task.shard.shard_id, spec.fingerprint, spec.path, 0, True)
        summary = RunSummary()
        commit_results(cat, [empty], summary, {("domain", task.shard.shard_id): ROWS})
        assert cat.parts() == {} and len(summary.failed) == 1 and not Path(spec.path).exists()
        assert "0 rows, not the 40 planned" in cat.failures()[0][2]


# ----- 2. agent names that are paths ------------------------------------------------------------------


@pytest.fixture
def reference(root: Path, real_docs) -> Path:
    path = root / "reference.parquet"
    pq.write_table(pa.table({"text": [t for t, src in real_docs[:400] if src == "docs"]}), path)
    return path


@pytest.mark.parametrize("name", ["../../../x", "../models/quality", "{root}/evil"])
def test_agent_add_refuses_a_path_name_before_fitting(
    ws: Path, root: Path, tmp_path: Path, reference: Path, name: str
) -> None:
    invoke("agent", "add", ws, "quality", "--kind", "fasttext", "--fit-positive", reference)
    model = ws / "models" / "quality.fasttext.bin"
    before, model_bytes = tree(tmp_path), model.read_bytes()
    result = invoke(
        "agent", "add", ws, hostile(name, root), "--kind", "fasttext", "--fit-positive", reference, code=2
    )
    assert "must be an identifier" in error_line(result)
    assert tree(tmp_path) == before and model.read_bytes() == model_bytes


@pytest.mark.parametrize("cls", [FastTextAgent, TopicAgent])
def test_agents_that_fit_a_model_check_the_name_before_writing(
    tmp_path: Path, reference: Path, real_docs, cls: type
) -> None:
    """Library callers that skip the workspace's check: the model file is never outside models/."""
    models = tmp_path / "a" / "b" / "models"
    texts = [t for t, _ in real_docs[:300]]
    context = AgentContext(tmp_path / "a" / "b", models, sample_texts=lambda n, seed=0: texts[:n])
    options = {"fit_positive": str(reference)} if cls is FastTextAgent else {"topics": 2, "sample": 300}
    before = tree(tmp_path)
    for name in ("../../x", "../models/quality", str(tmp_path / "evil")):
        with pytest.raises(AgentError, match="must be an identifier"):
            cls.create(name, options, context)
    assert tree(tmp_path) == before
    agent = cls.create("ok", options, context)
    assert Path(agent.config["model"]).parent == models


@PROPERTY
@given(name=st.one_of(st.sampled_from(HOSTILE), st.text("ab_-./[]\\ 0é", max_size=10)))
def test_property_agent_add_names(ws: Path, root: Path, tmp_path: Path, reference: Path, name: str) -> None:
    """Any name: exit 0 (a valid identifier, its model inside WS/models) or 2; nothing outside WS changes."""
    name = hostile(name, root)
    outside = tree(tmp_path, skip=ws)
    result = invoke("agent", "add", ws, name, "--kind", "fasttext", "--fit-positive", reference, code=None)
    assert result.exit_code in (0, 2), result.output
    assert tree(tmp_path, skip=ws) == outside
    if result.exit_code == 0:
        assert AGENT_NAME.fullmatch(name) and (ws / "models" / f"{name}.fasttext.bin").is_file()
    else:
        assert "Traceback" not in result.output and error_line(result)


# ----- 3. run ids that are paths ----------------------------------------------------------------------


@pytest.mark.parametrize("run_id", ["../../x", "{root}/abs", "a/b", "x[/]", ".."])
def test_run_ids_are_checked_before_anything_is_written(
    ws: Path, root: Path, tmp_path: Path, run_id: str
) -> None:
    invoke("score", ws, "--workers", "1", "--quiet")
    run_id = hostile(run_id, root)
    before = tree(tmp_path)
    for args in (
        ("select", ws, "--run", run_id, "--static", "--tokens", "500"),
        ("select", ws, "--run", "ok", "--static", "--init-from", run_id),
        ("train", ws, "--run", run_id),
        ("train", ws, "--run", "ok", "--init-from", run_id),
        ("export", ws, "--run", run_id, "--out", root / "out"),
        ("report", ws, "--runs", run_id),
    ):
        assert "run id" in error_line(invoke(*args, code=2)), args
    assert tree(tmp_path) == before
    with pytest.raises(RunIdError):
        RunPaths.of(ws, run_id)


def test_a_run_named_by_an_older_version_is_listed_as_text(ws: Path) -> None:
    invoke("score", ws, "--workers", "1", "--quiet")
    with Catalog(ws) as cat, Console(cat, "x[/]") as console:  # Console itself takes any key
        console.start()
    out = invoke("runs", ws).output
    assert "x[/]" in out and "domain 1.0" in out


@PROPERTY
@given(run_id=st.one_of(st.sampled_from(HOSTILE), st.text("ab-_./[]0 ", max_size=8)))
def test_property_static_selection_run_ids(ws: Path, root: Path, tmp_path: Path, run_id: str) -> None:
    """Any run id: a valid one selects into WS/runs/<id>/, any other is exit 2; nothing outside WS."""
    if not catalog_rows(ws, "SELECT count(*) AS n FROM scores")[0]["n"]:
        invoke("score", ws, "--workers", "1", "--quiet")
    run_id = hostile(run_id, root)
    outside = tree(tmp_path, skip=ws)
    runs_before = tree(ws / "runs") if (ws / "runs").exists() else {}
    result = invoke("select", ws, "--run", run_id, "--static", "--tokens", "300", code=None)
    assert tree(tmp_path, skip=ws) == outside
    if RUN_ID.fullmatch(run_id):
        assert result.exit_code in (0, 2), result.output  # 2: the same id drawn twice (another config)
        assert (ws / "runs" / run_id).is_dir()
    else:
        assert result.exit_code == 2 and "run id" in error_line(result)
        assert (tree(ws / "runs") if (ws / "runs").exists() else {}) == runs_before


@PROPERTY
@given(run_id=st.one_of(st.sampled_from(HOSTILE), st.from_regex(RUN_ID, fullmatch=True)))
def test_property_train_run_ids_on_a_workspace_that_cannot_train(tmp_path: Path, run_id: str) -> None:
    """`train --run ID` that fails (no shards): exit 2 whatever the id, and no run directory is left."""
    root = tmp_path / "a" / "b" / "c"
    if not (root / "ws").exists():
        Workspace.create(root / "ws").close()  # a workspace without shards: training fails at once
    before = set(tree(tmp_path))  # paths only: opening the catalog rewrites its lock file
    result = invoke("train", root / "ws", "--run", hostile(run_id, root), code=2)
    assert "Traceback" not in result.output and error_line(result)
    assert set(tree(tmp_path)) == before


# ----- 7. tables print data as text -------------------------------------------------------------------


def test_query_tables_print_markup_as_text(ws: Path) -> None:
    out = invoke("query", ws, "SELECT '[red]x[/red]' AS \"[b]h[/b]\", '[/]' AS b, 1.5 AS c, NULL AS d").output
    assert "[red]x[/red]" in out and "[/]" in out and "[b]h[/b]" in out and "1.5" in out


def test_status_names_a_shard_whose_name_looks_like_markup(root: Path) -> None:
    write_shard(root / "odd" / "[abc].parquet", 10)
    ws = root / "ws-odd"
    invoke("init", ws, "--corpus", root / "odd" / "*.parquet", "--quiet")
    invoke("agent", "add", ws, "domain", "--kind", "metadata", "--column", "source")
    (root / "odd" / "[abc].parquet").unlink()
    invoke("score", ws, "--workers", "1", "--quiet", code=1)
    out = invoke("status", ws).output
    assert "[abc].parquet" in out and "failed domain shard 0" in out


def test_the_progress_bar_names_the_agents(ws: Path) -> None:
    out = invoke("score", ws, "--workers", "1").output
    assert "3 shards x [domain]" in out


# ----- 8. typed config: a typo or a wrong type fails at load ------------------------------------------


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("model:\n  overrides:\n    hiden_size: 64\n", "unknown config key model.overrides.hiden_size"),
        ('train:\n  steps: "ten"\n', "train.steps must be an integer, got 'ten'"),
    ],
)
def test_a_config_typo_fails_before_training(ws: Path, root: Path, yaml_text: str, message: str) -> None:
    config = root / "bad.yaml"
    config.write_text(yaml_text)
    result = invoke("train", ws, "--pipeline", config, code=2)
    assert error_line(result).startswith(f"error: {message}")
    assert not (ws / "runs").exists()


# ----- 9. smaller cases -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("--limit", "-1"),
        ("--limit", "0"),
        ("--workers", "0"),
        ("--workers", "-1"),
        ("--agents", ",,"),
        ("--agents", "domain,,"),
        ("--sample-fraction", "0"),
        ("--sample-fraction", "1.5"),
        ("--seed", "-1"),
    ],
)
def test_score_options_out_of_range_are_refused(ws: Path, args: tuple[str, str]) -> None:
    result = invoke("score", ws, *args, "--quiet", code=2)
    assert args[0] in error_line(result)
    assert catalog_rows(ws, "SELECT count(*) AS n FROM score_parts") == [{"n": 0}]


@pytest.mark.parametrize(
    "args",
    [
        ("init", "{ws}", "--corpus", "x", "--threads", "0"),
        ("query", "{ws}", "SELECT 1", "--show-rows", "-1"),
        ("select", "{ws}", "--run", "r", "--static", "--tokens", "0"),
        ("select", "{ws}", "--run", "r", "--round", "-1"),
        ("export", "{ws}", "--run", "r", "--out", "{ws}/o", "--shard-docs", "0"),
        ("agent", "add", "{ws}", "t", "--kind", "topic", "--topics", "1"),
        ("demo", "--workspace", "{ws}/demo", "--workers", "0"),
    ],
)
def test_other_numeric_options_have_ranges(ws: Path, args: tuple[str, ...]) -> None:
    before = tree(ws)
    result = invoke(*(a.replace("{ws}", str(ws)) for a in args), code=2)
    assert error_line(result)
    assert {k for k in tree(ws) if k != "catalog.lock"} == {k for k in before if k != "catalog.lock"}


def test_a_longer_limit_extends_the_partial_parts(ws: Path) -> None:
    """--limit 10 then --limit 100 scores the first 100 documents (the 10 are rescored with the rest)."""
    invoke("score", ws, "--limit", "10", "--workers", "1", "--quiet")
    invoke("score", ws, "--limit", "100", "--workers", "1", "--quiet")
    assert catalog_rows(ws, "SELECT count(*) AS n FROM scores") == [{"n": 100}]
    assert catalog_rows(ws, "SELECT shard_id, num_rows FROM score_parts ORDER BY 1") == [
        {"shard_id": 0, "num_rows": 40},
        {"shard_id": 1, "num_rows": 40},
        {"shard_id": 2, "num_rows": 20},
    ]
    invoke("score", ws, "--limit", "30", "--workers", "1", "--quiet")  # a shorter limit keeps them
    assert catalog_rows(ws, "SELECT count(*) AS n FROM scores") == [{"n": 100}]
    check_invariants(ws)


def test_init_with_a_glob_that_matches_nothing_leaves_no_workspace(root: Path) -> None:
    result = invoke("init", root / "new-ws", "--corpus", root / "none-*.parquet", code=2)
    assert "no files match" in error_line(result) and not (root / "new-ws").exists()
    kept = root / "mine"  # an existing directory: only what init created goes
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    invoke("init", kept, "--corpus", root / "none-*.parquet", code=2)
    assert sorted(os.listdir(kept)) == ["notes.txt"]


def test_init_again_names_a_registered_shard_that_was_deleted(ws: Path, root: Path) -> None:
    (root / "corpus" / "shard-1.parquet").unlink()
    result = invoke("init", ws, "--corpus", root / "corpus" / "*.parquet", "--quiet", code=1)
    assert re.search(r"error: registered shard \S*shard-1\.parquet is missing", result.output), result.output


def test_a_failed_new_run_leaves_no_directory_but_a_resumed_one_keeps_its_files(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    Workspace.create(ws).close()  # no shards: training fails before its first checkpoint
    result = invoke("train", ws, "--run", "fresh", code=2)
    assert "has no shards" in error_line(result) and not (ws / "runs").exists()
    old = ws / "runs" / "old"
    old.mkdir(parents=True)
    (old / "log.jsonl").write_text("")
    invoke("train", ws, "--run", "old", "--resume", code=2)
    assert (old / "log.jsonl").is_file()


# ----- properties of score options ---------------------------------------------------------------------


@PROPERTY
@given(  # each option is mostly valid, so that about a quarter of the runs score
    batch_rows=st.integers(-3, 50),
    limit=st.one_of(st.none(), st.integers(-3, SHARDS * ROWS + 10)),
    sample=st.one_of(st.none(), st.floats(-0.5, 1.5, allow_nan=False)),
    workers=st.integers(-1, 8).map(lambda w: min(w, 1)),  # one worker: scoring in this process
    agents=st.sampled_from([None, "domain", " domain ", ",,", "domain,", "ghost", "../x", "[/]"]),
)
def test_property_score_options_keep_the_catalog_consistent(
    ws: Path,
    tmp_path: Path,
    batch_rows: int,
    limit: int | None,
    sample: float | None,
    workers: int,
    agents: str | None,
) -> None:
    outside = tree(tmp_path, skip=ws)
    args = ["score", ws, "--quiet", "--batch-rows", batch_rows, "--workers", workers]
    args += ["--limit", limit] if limit is not None else []
    args += ["--sample-fraction", sample] if sample is not None else []
    args += ["--agents", agents] if agents is not None else []
    result = invoke(*args, code=None)
    valid = (
        batch_rows >= 1
        and workers >= 1
        and (limit is None or limit >= 1)
        and (sample is None or 0 < sample <= 1)
        and agents in (None, "domain", " domain ")
    )
    event("scored" if valid else "refused")  # --hypothesis-show-statistics: how many runs scored
    assert result.exit_code == (0 if valid else 2), (args, result.output)
    assert tree(tmp_path, skip=ws) == outside
    check_invariants(ws)
